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
2. Data path with and without management load: perfanchor (shared/tools)
   bulk throughput and request/response latency through east -> west,
   alternating runs without load and with mgmt_query sending --rate
   (100) QUERY requests/s to east (router.address, first 100 rows of the
   10,001-entry address table). Medians of --runs each; the impact is
   1 - loaded / quiet. The load client runs on the same two cores as
   everything else, so its own CPU is part of the measured impact.

Every process it starts is killed by PID on exit; every wait is bounded.
"""

import argparse
import json
import os
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


def perfanchor(a, svc, backend, label):
    argv = [sys.executable, PERFANCHOR, "measure", "--target", f"127.0.0.1:{svc}",
            "--server", f"127.0.0.1:{backend}", "--label", label, "--tests", "bulk,rr",
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tether", default=os.environ.get("TETHER_BIN", DEFAULT_TETHER))
    ap.add_argument("--query-bin", default=DEFAULT_QUERY,
                    help="cargo build --release -p tether-benches --bin mgmt_query")
    ap.add_argument("--addresses", type=int, default=10_000)
    ap.add_argument("--query-runs", type=int, default=7)
    ap.add_argument("--runs", type=int, default=3, help="data-path runs per condition")
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--bulk-seconds", type=float, default=5.0)
    ap.add_argument("--rr-count", type=int, default=20000)
    ap.add_argument("--skip-datapath", action="store_true")
    ap.add_argument("--out", help="write the results as JSON here")
    a = ap.parse_args()
    common.raise_on_signals()
    if not os.path.exists(a.tether):
        raise SystemExit(f"{a.tether} not found: cargo build --release -p tether-router")
    work = tempfile.mkdtemp(prefix="tether-mgmt-bench-")
    procs = common.Procs(log)
    results = {"addresses": a.addresses}
    try:
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

        # 1. QUERY timing.
        for router in ("east", "west"):
            for page in (500,):
                rows = run_json_lines([a.query_bin, f"127.0.0.1:{ports[router + '_amqp']}",
                                       "io.tether.router.router.address", str(page),
                                       str(a.query_runs)], 300)
                ms = sorted(r["ms"] for r in rows)
                key = f"{router}_paged{page}"
                results[key] = {"rows": rows[0]["rows"], "pages": rows[0]["pages"],
                                "min_ms": ms[0], "median_ms": statistics.median(ms),
                                "max_ms": ms[-1]}
                log(f"QUERY router.address on {router}, page {page}: {results[key]}")

        # 2. Data path with and without management load.
        if not a.skip_datapath:
            runs = {"quiet": [], "loaded": []}
            for i in range(a.runs):
                for cond in ("quiet", "loaded"):
                    load = None
                    if cond == "loaded":
                        load = subprocess.Popen(
                            [a.query_bin, f"127.0.0.1:{ports['east_amqp']}",
                             "io.tether.router.router.address", "100", "load", str(a.rate),
                             str(a.bulk_seconds + a.rr_count / 2000.0 + 10)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
                        time.sleep(1.0)
                    try:
                        res = perfanchor(a, ports["svc"], ports["backend"], f"{cond}-{i}")
                    finally:
                        if load is not None:
                            try:
                                out, _ = load.communicate(timeout=120)
                            except subprocess.TimeoutExpired:
                                load.kill()
                                out, _ = load.communicate()
                    entry = {
                        "bulk_gbps": pick(res, "bulk.gbps", "bulk_gbps"),
                        "rr_p50_us": pick(res, "rr.p50_us", "rr_p50_us"),
                        "rr_p99_us": pick(res, "rr.p99_us", "rr_p99_us"),
                    }
                    if load is not None:
                        lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
                        entry["load"] = lines[-1] if lines else None
                    runs[cond].append(entry)
                    log(f"{cond} run {i}: {entry}")
            summary = {}
            for cond, entries in runs.items():
                summary[cond] = {k: statistics.median([e[k] for e in entries if e[k] is not None])
                                 for k in ("bulk_gbps", "rr_p50_us", "rr_p99_us")}
            summary["bulk_impact"] = 1 - summary["loaded"]["bulk_gbps"] / summary["quiet"]["bulk_gbps"]
            summary["rr_p50_impact"] = summary["loaded"]["rr_p50_us"] / summary["quiet"]["rr_p50_us"] - 1
            results["datapath"] = {"runs": runs, "summary": summary}
            log(f"data path: {json.dumps(summary)}")
        print(json.dumps(results, indent=2))
        if a.out:
            with open(a.out, "w") as f:
                json.dump(results, f, indent=2)
    finally:
        procs.stop()


if __name__ == "__main__":
    main()
