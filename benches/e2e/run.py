#!/usr/bin/env python3
"""End-to-end benchmark of Tether against the direct path and plain proxies.

Builds nothing: it runs the release binary `target/release/tether` (or
$TETHER_BIN), so build it first:

    cargo build --release -p tether-router && python3 benches/e2e/run.py

What it does, all on 127.0.0.1:
  1. `tether certs` makes a CA and leaves for routers `east` and `west`.
  2. Starts two routers linked by mutual TLS: east has a tcp_listener,
     west a tcp_connector to the perfanchor backend port.
  3. Starts a plain `socat` forwarder (TCP-LISTEN,fork -> backend) if socat
     is installed, and a one-hop `haproxy` (mode tcp) if haproxy is.
  4. Runs ../shared/tools/perfanchor.py (it starts its own backend with
     --server) for every path: direct, tether, socat, haproxy:
       - unpinned: bulk (single-flow Gbit/s), conn (new connections/s) and
         hold (100 flows open; RSS/PSS of --watch-pids = the path's processes);
       - pinned: rr (request/response latency p50/p99) with perfanchor, its
         backend and the path's processes all on CPU 0 (`taskset -c 0` for
         perfanchor, `taskset -a -cp 0 PID` for running processes; restored
         afterwards).
  5. Prints a table (absolute figures and ratios to direct) and writes JSON
     to benches/e2e/last-result.json (or --out).

Every process it starts is killed by PID on exit (try/finally plus SIGINT /
SIGTERM handlers), and every wait is bounded. Only loopback addresses are
used. Python 3 standard library only.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # benches/, for common.py
from common import (Procs, children_of, free_port, raise_on_signals, tail,  # noqa: E402
                    wait_connectable, wait_log)

REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
DEFAULT_TETHER = os.path.join(REPO, "target", "release", "tether")
DEFAULT_PERFANCHOR = os.path.abspath(os.path.join(REPO, "..", "shared", "tools", "perfanchor.py"))
DEFAULT_OUT = os.path.join(HERE, "last-result.json")
LINK_UP_TIMEOUT = 30.0


def log(msg):
    print(f"[e2e] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def cpu_list():
    return ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))


def pin(pids, cpus):
    """taskset -a -cp CPUS PID for each PID and its descendants (all threads)."""
    for pid in pids:
        for p in [pid] + children_of(pid):
            subprocess.run(["taskset", "-a", "-cp", cpus, str(p)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=10, check=False)


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def run_perfanchor(args, label, target, backend, tests, watch, pinned):
    argv = [sys.executable, args.perfanchor, "measure",
            "--target", f"127.0.0.1:{target}",
            "--server", f"127.0.0.1:{backend}",
            "--label", label, "--tests", tests,
            "--bulk-seconds", str(args.bulk_seconds),
            "--conn-seconds", str(args.conn_seconds),
            "--rr-count", str(args.rr_count),
            "--idle-wait", str(args.idle_wait),
            "--max-seconds", str(args.perfanchor_max_seconds)]
    if watch:
        argv += ["--watch-pids", ",".join(str(p) for p in watch)]
    if pinned:
        argv = ["taskset", "-c", "0"] + argv
    log(f"measure {label}: {tests}{' (pinned to CPU 0)' if pinned else ''}")
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=args.perfanchor_max_seconds + 60)
    except subprocess.TimeoutExpired:
        # subprocess.run kills the child (by PID) on timeout.
        return {"label": label, "ok": False, "error": "perfanchor timed out"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("PERFANCHOR_RESULT "):
            res = json.loads(line[len("PERFANCHOR_RESULT "):])
            if not res.get("ok"):
                log(f"{label}: perfanchor reported an error: {res.get('error')}")
            return res
    return {"label": label, "ok": False,
            "error": f"no PERFANCHOR_RESULT line (exit {p.returncode}): {p.stderr[-500:]}"}


# --------------------------------------------------------------------------
# systems under test
# --------------------------------------------------------------------------

TLS_PROFILE = """
[tls.site]
ca = "ca.pem"
cert = "{name}.pem"
key = "{name}-key.pem"
"""


def start_tether(args, procs, work, backend, taken, transit=False):
    """Two routers east <- west, or with `transit` three in a line
    east <- hub <- west (east and west not linked: every byte is relayed by
    hub). Clients connect to east; the service is behind west."""
    names = ["east", "hub", "west"] if transit else ["east", "west"]
    sub = os.path.join(work, "line" if transit else "pair")
    os.makedirs(sub, exist_ok=True)
    out = subprocess.run([args.tether, "certs", "--out", sub, *names],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"`tether certs` failed ({out.returncode}): {out.stderr}")
    client = free_port(taken)
    links = {n: free_port(taken) for n in names[:-1]}  # inter-router listener per router but the last
    texts = {}
    for i, n in enumerate(names):
        t = f'[router]\nid = "{n}"\n'
        if n in links:
            t += (f'\n[[listener]]\nrole = "inter-router"\nhost = "127.0.0.1"\n'
                  f'port = {links[n]}\ntls = "site"\n')
        if i > 0:
            t += (f'\n[[connector]]\nrole = "inter-router"\nhost = "127.0.0.1"\n'
                  f'port = {links[names[i - 1]]}\ncost = 1\ntls = "site"\n')
        if n == "east":
            t += (f'\n[[tcp_listener]]\naddress = "perf"\nhost = "127.0.0.1"\n'
                  f'port = {client}\n')
        if n == "west":
            t += (f'\n[[tcp_connector]]\naddress = "perf"\nhost = "127.0.0.1"\n'
                  f'port = {backend}\n')
        texts[n] = t + TLS_PROFILE.format(name=n)
    paths = {}
    for name, text in texts.items():
        cfg = os.path.join(sub, f"{name}.toml")
        with open(cfg, "w") as f:
            f.write(text)
        chk = subprocess.run([args.tether, "router", "--check", cfg],
                             capture_output=True, text=True, timeout=30)
        if chk.returncode != 0:
            raise RuntimeError(f"--check {cfg} failed: {chk.stdout}{chk.stderr}")
        paths[name] = cfg
    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"), NO_COLOR="1")
    pids = []
    first = None
    for n in names:
        p = procs.start(f"tether-{n}{'-3' if transit else ''}",
                        [args.tether, "router", "--config", paths[n]],
                        os.path.join(sub, f"{n}.log"), env=env, cwd=sub)
        pids.append(p.pid)
        first = first or p
    line = wait_log(os.path.join(sub, "east.log"), r"address reachable.*perf",
                    LINK_UP_TIMEOUT, first)
    log(f"east ({len(names)} routers): {line}")
    return client, pids


def start_socat(procs, work, backend, taken):
    port = free_port(taken)
    p = procs.start("socat", ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr",
                              f"TCP:127.0.0.1:{backend}"], os.path.join(work, "socat.log"))
    return port, [p.pid]


def start_haproxy(procs, work, backend, taken):
    port = free_port(taken)
    cfg = os.path.join(work, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(f"""global
    maxconn 4096

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend fe
    bind 127.0.0.1:{port}
    default_backend be

backend be
    server s1 127.0.0.1:{backend}
""")
    p = procs.start("haproxy", ["haproxy", "-db", "-f", cfg], os.path.join(work, "haproxy.log"))
    return port, [p.pid]


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------

METRICS = [
    # key, label, unit/scale, which run, higher is better
    ("bulk_gbps", "bulk, 1 flow", "Gbit/s", "unpinned", True),
    ("conn_per_s", "new connections", "conn/s", "unpinned", True),
    ("rr_p50_us", "RR p50, all on CPU 0", "us", "pinned", False),
    ("rr_p99_us", "RR p99, all on CPU 0", "us", "pinned", False),
    ("sut_rss_idle_kb", "RSS idle (all procs)", "MiB", "unpinned", False),
    ("sut_rss_hold_kb", "RSS, 100 flows open", "MiB", "unpinned", False),
    ("sut_pss_hold_kb", "PSS, 100 flows open", "MiB", "unpinned", False),
]


def value(results, path, key, run):
    r = results.get(path, {}).get(run) or {}
    v = r.get(key)
    if v is None:
        return None
    if key.endswith("_kb"):
        return v / 1024.0
    return float(v)


def print_table(results, order):
    cols = [p for p in order if p in results]
    w0 = 26
    head = f"{'metric':<{w0}}" + "".join(f"{p:>22}" for p in cols)
    print()
    print(head)
    print("-" * len(head))
    summary = {}
    for key, label, unit, run, _higher in METRICS:
        direct = value(results, "direct", key, run)
        cells = []
        for p in cols:
            v = value(results, p, key, run)
            if v is None:
                cells.append(f"{'-':>22}")
                continue
            txt = f"{v:,.1f}" if v >= 10 else f"{v:.2f}"
            if p != "direct" and direct not in (None, 0.0):
                ratio = v / direct
                summary.setdefault(p, {})[f"{key}_x_direct"] = round(ratio, 3)
                txt += f" ({ratio:.2f}x)"
            cells.append(f"{txt:>22}")
        print(f"{label + ' [' + unit + ']':<{w0}}" + "".join(cells))
    # Noise indicator: the highest foreign CPU seen in any phase.
    cells = []
    for p in cols:
        fc = []
        for run in ("unpinned", "pinned"):
            fc += list(((results[p].get(run) or {}).get("foreign_cpu") or {}).values())
        cells.append(f"{(max(fc) if fc else 0):>22.2f}")
    print(f"{'foreign CPU, max [cores]':<{w0}}" + "".join(cells))
    worst = max((float(c) for c in cells), default=0.0)
    if worst > 0.2:
        print(f"\nwarning: other processes used up to {worst:.2f} cores during a phase; these figures "
              "are disturbed. Re-run on a quiet machine, or with --idle-wait 30.")
    print("\nratios are path / direct: higher is better for bulk and conn/s, lower for latency.")
    print("RSS/PSS: the path's processes (both routers for tether; socat and its forks; haproxy).")
    return summary


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tether", default=os.environ.get("TETHER_BIN", DEFAULT_TETHER),
                    help="tether binary (default target/release/tether or $TETHER_BIN)")
    ap.add_argument("--perfanchor", default=os.environ.get("PERFANCHOR", DEFAULT_PERFANCHOR),
                    help="perfanchor.py (default <repo>/../shared/tools/perfanchor.py)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="JSON result file")
    ap.add_argument("--paths", default="direct,tether,tether3,socat,haproxy",
                    help="comma list of paths to measure (socat/haproxy skipped if not installed)")
    ap.add_argument("--bulk-seconds", type=float, default=5)
    ap.add_argument("--conn-seconds", type=float, default=3)
    ap.add_argument("--rr-count", type=int, default=20000)
    ap.add_argument("--idle-wait", type=float, default=0,
                    help="perfanchor --idle-wait: wait up to N s for a quiet machine per run")
    ap.add_argument("--perfanchor-max-seconds", type=float, default=180)
    ap.add_argument("--quick", action="store_true",
                    help="short runs (bulk 2 s, conn 1 s, rr 3000) for a smoke test")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (configs, logs)")
    args = ap.parse_args()
    if args.quick:
        args.bulk_seconds, args.conn_seconds, args.rr_count = 2, 1, 3000

    if not os.path.isfile(args.tether):
        raise SystemExit(f"tether binary not found at {args.tether}; build it first:\n"
                         f"  cargo build --release -p tether-router")
    if not os.path.isfile(args.perfanchor):
        raise SystemExit(f"perfanchor.py not found at {args.perfanchor} (set PERFANCHOR)")
    if shutil.which("taskset") is None:
        raise SystemExit("taskset (util-linux) is needed for the pinned runs")

    wanted = [p.strip() for p in args.paths.split(",") if p.strip()]
    for tool in ("socat", "haproxy"):
        if tool in wanted and shutil.which(tool) is None:
            log(f"{tool} not installed: skipping that path (apt-get install {tool})")
            wanted.remove(tool)

    procs = Procs(log, grace=5.0, tree=True, announce=True)
    raise_on_signals()

    work = tempfile.mkdtemp(prefix="tether-e2e-")
    all_cpus = cpu_list()
    results = {}
    taken = set()
    try:
        backend = free_port(taken)
        targets = {}  # path -> (port, pids)
        if "direct" in wanted:
            targets["direct"] = (backend, [])
        if "tether" in wanted:
            targets["tether"] = start_tether(args, procs, work, backend, taken)
        if "tether3" in wanted:
            targets["tether3"] = start_tether(args, procs, work, backend, taken, transit=True)
        if "socat" in wanted:
            targets["socat"] = start_socat(procs, work, backend, taken)
        if "haproxy" in wanted:
            targets["haproxy"] = start_haproxy(procs, work, backend, taken)
        for name in ("socat", "haproxy"):
            if name in targets and not wait_connectable(targets[name][0], 10):
                log(f"{name} did not listen, skipping it:\n{tail(os.path.join(work, name + '.log'))}")
                del targets[name]

        # Unpinned: bulk, conn, hold (RSS idle and with 100 flows). Each
        # process's own RSS is also sampled (perfanchor reports the sum).
        for name, (port, pids) in targets.items():
            idle = {p: rss_kib(p) for p in pids}
            peak = dict(idle)
            stop = threading.Event()

            def sample(pids=pids, peak=peak, stop=stop):
                while not stop.wait(0.05):
                    for p in pids:
                        r = rss_kib(p)
                        if r is not None and (peak.get(p) is None or r > peak[p]):
                            peak[p] = r

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                results.setdefault(name, {})["unpinned"] = run_perfanchor(
                    args, f"{name}", port, backend, "bulk,conn,hold", pids, pinned=False)
            finally:
                stop.set()
                sampler.join(timeout=5)
            results[name]["rss_per_process_kib"] = {
                str(p): {"idle": idle.get(p), "peak": peak.get(p)} for p in pids}
        # Pinned: everything on CPU 0 for request/response latency.
        for name, (port, pids) in targets.items():
            pin(pids, "0")
            try:
                results[name]["pinned"] = run_perfanchor(
                    args, f"{name}-pinned", port, backend, "rr", pids, pinned=True)
            finally:
                pin(pids, all_cpus)
        for name, (_port, pids) in targets.items():
            results[name]["pids"] = pids
            results[name]["rss_after_kib"] = {str(p): rss_kib(p) for p in pids}
    finally:
        # No second signal may interrupt the cleanup.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        procs.stop()
        if args.keep:
            log(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    order = ["direct", "tether", "tether3", "socat", "haproxy"]
    summary = print_table(results, order)
    for name in order:
        per = results.get(name, {}).get("rss_per_process_kib")
        if per:
            cells = ", ".join(
                f"pid {p}: {v['idle'] / 1024:.1f} MiB idle, {v['peak'] / 1024:.1f} MiB peak"
                for p, v in per.items() if v.get("idle") is not None and v.get("peak") is not None)
            print(f"RSS per process, {name} (idle -> peak during bulk/conn/100 flows): {cells}")
    doc = {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "kernel": platform.release(),
                 "python": platform.python_version()},
        "tether": args.tether,
        "git_rev": git_rev(),
        "settings": {"bulk_seconds": args.bulk_seconds, "conn_seconds": args.conn_seconds,
                     "rr_count": args.rr_count, "idle_wait": args.idle_wait},
        "paths": results,
        "summary": summary,
    }
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.write("\n")
    log(f"wrote {args.out}")
    failed = [f"{p}/{run}" for p, r in results.items() for run in ("unpinned", "pinned")
              if isinstance(r.get(run), dict) and not r[run].get("ok")]
    if failed:
        log(f"some runs failed: {', '.join(failed)}")
        return 1
    return 0


def git_rev():
    try:
        out = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


if __name__ == "__main__":
    sys.exit(main())
