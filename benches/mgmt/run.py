#!/usr/bin/env python3
"""Management benchmark: QUERY time for 10,000 addresses, and what 100
management requests/s cost the data path.

Runs the release binary (target/release/tether or $TETHER_BIN), so build
it first:

    cargo build --release -p tether-router -p tether-benches && python3 benches/mgmt/run.py

Set-up, all on 127.0.0.1: two routers, east -> west. West has a
tcp_connector `svc` (perfanchor's backend) and --addresses more
tcp_connectors (`addr-00000`...; advertised, never dialled), so both
routers hold --addresses + 1 addresses (+ their management addresses);
east has a tcp_listener for `svc`.

1. QUERY of router.address on east (remote addresses) and on west (local
   ones): the whole table paged by 500 (as skstat/skmanage page), and in
   --query-runs runs each, min / median / max of the time from the first
   request sent to the last answer decoded by the client
   (target/release/mgmt_query, the Rust management client on fe2o3-amqp;
   its decoding included. The Python Proton client decodes ~15 ms per
   500-row page itself, so it would time the client, not the router; and
   Proton's pn_data caps one message at 65,535 values, which is why
   skstat pages by 500).
2. What one request costs: with no data traffic, the load client sends
   --rate requests/s for --cost-seconds to east; east's CPU time (from
   /proc) and the client's own, per request. Twice: QUERY router.address
   --page rows (all attributes), and QUERY of the one `router` entity.
3. Data path with and without management load: perfanchor (shared/tools)
   through east -> west, bulk throughput in --pairs pairs of runs and
   request/response latency in --rr-pairs pairs, each pair one quiet and
   one loaded run, the order alternating from pair to pair (ABBA) so
   drift on this shared VM falls on both conditions alike; each run waits
   the same settle time first. Loaded: the load client sends --rate (100)
   QUERY requests/s to east (router.address, the first --page (100) rows
   of the 10,001-entry table, every attribute) from before the run starts
   to after it ends. The impact is computed per pair (bulk: 1 - loaded /
   quiet; latency: loaded / quiet - 1) and reported as the median over
   pairs with a bootstrap 95% interval of that median, and as the ratio of
   the conditions' medians. Single bulk runs here vary by +-10% or more
   (placement of four busy processes on two cores), hence many pairs. The
   load client runs on the same two cores as everything else, so its own
   CPU is part of the measured impact.

   The load client (--load-client): `c` (default) is load.c, on the
   Qpid Proton C proactor (the library qdstat/skstat use), compiled here
   with cc: it decodes every answer whole (pn_message_decode) and checks
   status, correlation and row count, at ~0.2 ms of its own CPU per
   100-row answer. `rust` is target/release/mgmt_query (fe2o3-amqp),
   which costs about 2.5 times that itself.

Every process it starts is killed by PID on exit; every wait is bounded.
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # benches/, for common.py
import common  # noqa: E402

REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
DEFAULT_TETHER = os.path.join(REPO, "target", "release", "tether")
DEFAULT_QUERY = os.path.join(REPO, "target", "release", "mgmt_query")
PERFANCHOR = os.path.abspath(os.path.join(REPO, "..", "shared", "tools", "perfanchor.py"))
CLIENT = os.path.join(HERE, "client.py")
LOAD_C = os.path.join(HERE, "load.c")
PYTHON = "/usr/bin/python3"
READY_TIMEOUT = 60.0


def log(msg):
    print(f"[mgmt] {msg}", file=sys.stderr, flush=True)


def tls(name):
    return f'\n[tls.site]\nca = "ca.pem"\ncert = "{name}.pem"\nkey = "{name}-key.pem"\n'


def west_config(listen, amqp, backend, n):
    lines = ['[router]', 'id = "west"', '',
             '[[listener]]', 'role = "inter-router"', 'host = "127.0.0.1"', f'port = {listen}',
             'tls = "site"', '',
             '[[listener]]', 'role = "normal"', 'host = "127.0.0.1"', f'port = {amqp}', '',
             '[[tcp_connector]]', 'address = "svc"', 'host = "127.0.0.1"', f'port = {backend}']
    for i in range(n):
        lines += ['', '[[tcp_connector]]', f'address = "addr-{i:05d}"', 'host = "127.0.0.1"',
                  'port = 9']
    return "\n".join(lines) + tls("west")


def east_config(connect, amqp, svc):
    return "\n".join([
        '[router]', 'id = "east"', '',
        '[[connector]]', 'role = "inter-router"', 'host = "127.0.0.1"', f'port = {connect}',
        'tls = "site"', '',
        '[[listener]]', 'role = "normal"', 'host = "127.0.0.1"', f'port = {amqp}', '',
        '[[tcp_listener]]', 'address = "svc"', 'host = "127.0.0.1"', f'port = {svc}',
    ]) + tls("east")


def run_json_lines(argv, timeout):
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {p.returncode}: {p.stderr[-800:]}")
    return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


def count_addresses(port):
    rows = run_json_lines([PYTHON, CLIENT, "query", "--url", f"127.0.0.1:{port}",
                           "--repeat", "1"], 60)
    return rows[0]["rows"]


def perfanchor(a, svc, backend, label, test):
    argv = [sys.executable, PERFANCHOR, "measure", "--target", f"127.0.0.1:{svc}",
            "--server", f"127.0.0.1:{backend}", "--label", label, "--tests", test,
            "--bulk-seconds", str(a.bulk_seconds), "--rr-count", str(a.rr_count),
            "--max-seconds", "120"]
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=200)
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("PERFANCHOR_RESULT "):
            res = json.loads(line[len("PERFANCHOR_RESULT "):])
            if not res.get("ok"):
                raise RuntimeError(f"perfanchor: {res.get('error')}")
            return res
    raise RuntimeError(f"perfanchor printed no result: {p.stderr[-800:]}")


def pick(res, *keys):
    for k in keys:
        v = res
        for part in k.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        if v is not None:
            return float(v)
    return None


class LoadClient:
    """The management load: `rate` QUERY requests/s of `page` rows of
    `entity` for `seconds`, one outstanding at a time, on a schedule."""

    def __init__(self, kind, binary, port):
        self.kind, self.binary, self.port = kind, binary, port

    def argv(self, entity, page, rate, seconds):
        if self.kind == "c":
            return [self.binary, "--connect", f"127.0.0.1:{self.port}", "--type", entity,
                    "--count", str(page), "--rate", str(rate), "--seconds", str(seconds),
                    "--timeout", str(seconds + 30)]
        return [self.binary, f"127.0.0.1:{self.port}", entity, str(page), "load",
                str(rate), str(seconds)]

    def start(self, entity, page, rate, seconds):
        self.proc = subprocess.Popen(self.argv(entity, page, rate, seconds),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)

    def finish(self, timeout):
        """Waits (bounded) for the client to end; its summary."""
        out = ""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return summary(out, self.proc.returncode)

    def start_and_wait(self, entity, page, rate, seconds):
        """Runs the client to its end; its summary with its own CPU seconds
        (the kernel's accounting of it, from wait4)."""
        argv = self.argv(entity, page, rate, seconds)
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
        out = p.stdout.read()
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        res = summary(out, p.returncode)
        res["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 4)
        return res


def summary(out, exit_code):
    """The load client's last JSON line, with its exit status."""
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    res = lines[-1] if lines else {}
    res["exit"] = exit_code
    return res


def bootstrap_median_ci(values, n=4000, seed=1):
    """A 95% bootstrap interval of the median of values."""
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(n))
    return meds[int(0.025 * n)], meds[int(0.975 * n) - 1]


def datapath_pairs(a, load, ports, entity, test, pairs):
    """`pairs` quiet/loaded pairs of one perfanchor test (bulk or rr), the
    order alternating; medians per condition and of the per-pair ratios."""
    keys = ("bulk_gbps",) if test == "bulk" else ("rr_p50_us", "rr_p99_us")
    length = a.bulk_seconds + 1.5 if test == "bulk" else a.rr_count / 2500.0 + 1.5
    runs = {"quiet": [], "loaded": []}
    for i in range(pairs):
        order = ("quiet", "loaded") if i % 2 == 0 else ("loaded", "quiet")
        for cond in order:
            if cond == "loaded":
                # Runs through the settle time and the measurement.
                load.start(entity, a.page, a.rate, a.settle + length + 1)
            time.sleep(a.settle)
            lres = None
            try:
                res = perfanchor(a, ports["svc"], ports["backend"], f"{cond}-{i}", test)
            finally:
                if cond == "loaded":
                    lres = load.finish(length + 60)
            entry = {"pair": i, **{k: pick(res, k) for k in keys}}
            if lres is not None:
                entry["load"] = {k: lres.get(k) for k in ("sent", "answered", "errors",
                                                          "p50_ms", "p99_ms", "exit")}
                if lres.get("errors") or lres.get("exit"):
                    raise RuntimeError(f"the load client failed: {lres}")
            runs[cond].append(entry)
            log(f"{test} {cond} run {i}: {entry}")
    summary = {cond: {k: statistics.median([e[k] for e in entries]) for k in keys}
               for cond, entries in runs.items()}
    for k in keys:
        ratios = [l[k] / q[k] for q, l in zip(runs["quiet"], runs["loaded"])]
        # Bulk: the share of throughput lost; latency: the share added.
        sign = -1 if test == "bulk" else 1
        change = [sign * (r - 1) for r in ratios]
        lo, hi = bootstrap_median_ci(change)
        summary[f"{k}_impact"] = {"median_of_pairs": round(statistics.median(change), 4),
                                  "ci95": [round(lo, 4), round(hi, 4)],
                                  "of_medians": round(sign * (summary["loaded"][k]
                                                              / summary["quiet"][k] - 1), 4)}
    log(f"{test}: {json.dumps(summary)}")
    return {"runs": runs, "summary": summary}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tether", default=os.environ.get("TETHER_BIN", DEFAULT_TETHER))
    ap.add_argument("--query-bin", default=DEFAULT_QUERY,
                    help="cargo build --release -p tether-benches --bin mgmt_query")
    ap.add_argument("--load-client", choices=("c", "rust"), default="c")
    ap.add_argument("--addresses", type=int, default=10_000)
    ap.add_argument("--query-runs", type=int, default=7)
    ap.add_argument("--pairs", type=int, default=30, help="quiet/loaded bulk run pairs")
    ap.add_argument("--rr-pairs", type=int, default=8, help="quiet/loaded RR run pairs")
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--page", type=int, default=100, help="rows per load request")
    ap.add_argument("--cost-seconds", type=float, default=10.0)
    ap.add_argument("--bulk-seconds", type=float, default=3.0)
    ap.add_argument("--rr-count", type=int, default=10000)
    ap.add_argument("--settle", type=float, default=1.0,
                    help="seconds each data-path run waits before measuring")
    ap.add_argument("--skip-datapath", action="store_true")
    ap.add_argument("--out", help="write the results as JSON here")
    a = ap.parse_args()
    common.raise_on_signals()
    if not os.path.exists(a.tether):
        raise SystemExit(f"{a.tether} not found: cargo build --release -p tether-router")
    work = tempfile.mkdtemp(prefix="tether-mgmt-bench-")
    procs = common.Procs(log)
    results = {"addresses": a.addresses, "load_client": a.load_client, "rate": a.rate,
               "page": a.page}
    try:
        if a.load_client == "c":
            load_bin = os.path.join(work, "mgmt-load")
            why = common.build_proton_c(LOAD_C, load_bin)
            if why:
                raise SystemExit(f"cannot build the load client: {why} (or use --load-client rust)")
        else:
            load_bin = a.query_bin
        r = subprocess.run([a.tether, "certs", "--out", work, "east", "west"],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise SystemExit(f"`tether certs` failed: {r.stderr}")
        taken = set()
        ports = {}
        for k in ("west_listen", "west_amqp", "east_amqp", "svc", "backend"):
            ports[k] = common.free_port(taken)
            taken.add(ports[k])
        with open(os.path.join(work, "west.toml"), "w") as f:
            f.write(west_config(ports["west_listen"], ports["west_amqp"], ports["backend"],
                                a.addresses))
        with open(os.path.join(work, "east.toml"), "w") as f:
            f.write(east_config(ports["west_listen"], ports["east_amqp"], ports["svc"]))
        env = dict(os.environ, NO_COLOR="1", RUST_LOG="warn")
        pids = {}
        for name in ("west", "east"):
            p = procs.start(name, [a.tether, "router", "--config", f"{name}.toml"],
                            os.path.join(work, f"{name}.log"), cwd=work, env=env)
            pids[name] = p.pid
        for port in (ports["west_amqp"], ports["east_amqp"]):
            common.wait_connectable(port, READY_TIMEOUT)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            n = count_addresses(ports["east_amqp"])
            if n >= a.addresses + 1 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        log(f"east holds {n} addresses")
        results["east_rows"] = n
        load = LoadClient(a.load_client, load_bin, ports["east_amqp"])
        address_type = "io.tether.router.router.address"

        # 1. QUERY timing.
        for router in ("east", "west"):
            for page in (500,):
                rows = run_json_lines([a.query_bin, f"127.0.0.1:{ports[router + '_amqp']}",
                                       address_type, str(page), str(a.query_runs)], 300)
                ms = sorted(r["ms"] for r in rows)
                key = f"{router}_paged{page}"
                results[key] = {"rows": rows[0]["rows"], "pages": rows[0]["pages"],
                                "min_ms": ms[0], "median_ms": statistics.median(ms),
                                "max_ms": ms[-1]}
                log(f"QUERY router.address on {router}, page {page}: {results[key]}")

        # 2. CPU per request, without data traffic.
        cost = {}
        for label, entity, page in (("address_page", address_type, a.page),
                                    ("router_entity", "io.tether.router.router", 1)):
            east0 = common.cpu_seconds(pids["east"])
            res = load.start_and_wait(entity, page, a.rate, a.cost_seconds)
            east_s = common.cpu_seconds(pids["east"]) - east0
            answered = max(1, int(res.get("answered", 0)))
            cost[label] = {
                "answered": res.get("answered"), "errors": res.get("errors"),
                "router_ms_per_request": round(east_s * 1000 / answered, 3),
                "client_ms_per_request": round(res["cpu_s"] * 1000 / answered, 3),
                "p50_ms": res.get("p50_ms"), "p99_ms": res.get("p99_ms"),
            }
            log(f"cost of one request ({label}): {cost[label]}")
        results["cost"] = cost

        # 3. Data path with and without management load.
        if not a.skip_datapath:
            results["datapath"] = {
                test: datapath_pairs(a, load, ports, address_type, test, pairs)
                for test, pairs in (("bulk", a.pairs), ("rr", a.rr_pairs)) if pairs > 0
            }
        print(json.dumps(results, indent=2))
        if a.out:
            with open(a.out, "w") as f:
                json.dump(results, f, indent=2)
    finally:
        procs.stop()


if __name__ == "__main__":
    main()
