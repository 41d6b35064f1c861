#!/usr/bin/env python3
"""AMQP message benchmark: messages/s and router CPU per message.

Builds nothing of tether: it runs the release binary (target/release/tether
or $TETHER_BIN), so build it first:

    cargo build --release -p tether-router && python3 benches/amqp/run.py

Paths, all on 127.0.0.1, each measured in the same run:

    direct:  sender ───────────────────────► receiver (listening itself)
    east:    sender ──► east ──────────────► receiver      (one router)
    east-west: sender ──► east ──► west ───► receiver      (two routers)

The sender sends --count messages with a Data body of --size bytes (1 KiB),
unsettled, keeping at most --window (1000) unsettled; the receiver gives
--credit (1000) and accepts and settles each. Figures per path (median of
--runs after one warm-up run): messages/s from the sender's first send to
its last outcome; router CPU per message (utime + stime of each router
process from /proc/PID/stat, before the receiver attaches and after both
clients are done, divided by the messages); client CPU per message.

The client: benches/amqp/client.c on the Proton C proactor, compiled here
with cc when the Proton C headers are installed (Debian:
libqpid-proton11-dev). Otherwise the Python clients of tests/amqp/
(python3-qpid-proton) are used and the output says so: they are slow
enough to be the bottleneck, so then read the router CPU per message and
the client CPU, not the rate.

For scale: one Qpid Dispatch 1.19 router moved 68-91k msg/s with Proton C
clients at 8-11 us of router CPU per message on this kind of machine.

Every process it starts is killed by PID on exit, every wait is bounded.
Python 3 standard library only (the Python fallback needs proton).
"""

import argparse
import json
import os
import resource
import selectors
import shutil
import signal
import socket
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
SCRIPTS = os.path.join(REPO, "tests", "amqp")
PYTHON = "/usr/bin/python3"
READY_TIMEOUT = 20.0


def log(msg):
    print(f"[amqp-bench] {msg}", file=sys.stderr, flush=True)


class Procs:
    """Every process this script starts; stop() kills each by PID."""

    def __init__(self):
        self.procs = []

    def start(self, name, argv, log_path=None, **kw):
        out = open(log_path, "ab") if log_path else subprocess.PIPE
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                             stderr=out if log_path else subprocess.DEVNULL, **kw)
        self.procs.append((name, p, out if log_path else None))
        return p

    def stop(self):
        for _n, p, _f in self.procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for name, p, f in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log(f"warning: {name} pid {p.pid} did not exit")
            if f:
                f.close()
        self.procs = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_log(path, pattern, timeout, proc):
    common.wait_log(path, pattern, timeout, proc, who="router")


def wait_connectable(port, timeout):
    if not common.wait_connectable(port, timeout):
        raise RuntimeError(f"127.0.0.1:{port} did not accept within {timeout}s")


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def read_json_line(proc, want, timeout):
    """Reads stdout lines of proc (bounded) until one is JSON with
    event == want; returns it."""
    end = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = getattr(proc, "pending_stdout", b"")
    try:
        while time.monotonic() < end:
            if not sel.select(timeout=max(0.0, end - time.monotonic())):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    v = json.loads(line)
                except ValueError:
                    continue
                if isinstance(v, dict) and v.get("event") == want:
                    proc.pending_stdout = buf
                    return v
    finally:
        sel.close()
    raise RuntimeError(f"no {want!r} line from {proc.args[:3]}... within {timeout}s")


# --------------------------------------------------------------------------
# clients
# --------------------------------------------------------------------------

class CClient:
    name = "Proton C (benches/amqp/client.c)"

    def __init__(self, path):
        self.path = path

    def receiver(self, procs, where, address, n, a):
        kind = "--listen" if where.startswith("listen:") else "--connect"
        hostport = where.split(":", 1)[1] if kind == "--listen" else where
        return procs.start("recv", [self.path, "recv", kind, hostport, "--address", address,
                                    "--count", str(n), "--credit", str(a.credit),
                                    "--timeout", str(int(a.timeout))])

    def sender(self, procs, where, address, n, a):
        return procs.start("send", [self.path, "send", "--connect", where, "--address", address,
                                    "--count", str(n), "--size", str(a.size),
                                    "--window", str(a.window), "--timeout", str(int(a.timeout))])

    ready_event = "ready"
    can_listen = True


class PyClient:
    name = "Python Proton (tests/amqp/send.py, receive.py): may be the bottleneck"

    def receiver(self, procs, where, address, n, a):
        _host, port = where.rsplit(":", 1)
        return procs.start("recv", [PYTHON, "-u", os.path.join(SCRIPTS, "receive.py"),
                                    "--port", port, "--address", address, "--count", str(n),
                                    "--credit", str(a.credit), "--quiet",
                                    "--timeout", str(a.timeout)])

    def sender(self, procs, where, address, n, a):
        _host, port = where.rsplit(":", 1)
        return procs.start("send", [PYTHON, "-u", os.path.join(SCRIPTS, "send.py"),
                                    "--port", port, "--address", address, "--count", str(n),
                                    "--size", str(a.size), "--window", str(a.window),
                                    "--timeout", str(a.timeout)])

    ready_event = "attached"
    can_listen = False


def build_c_client(work):
    out = os.path.join(work, "amqp-client")
    why = common.build_proton_c(os.path.join(HERE, "client.c"), out)
    if why:
        return None, why
    return CClient(out), None


# --------------------------------------------------------------------------
# one measured run
# --------------------------------------------------------------------------

def run_once(client, procs, recv_at, send_at, address, n, a, routers):
    """Receiver at recv_at, sender to send_at; returns figures."""
    rx = client.receiver(procs, recv_at, address, n, a)
    read_json_line(rx, client.ready_event, READY_TIMEOUT)
    cpu0 = {name: common.cpu_seconds(pid) for name, pid in routers}
    ch0 = children_cpu()
    tx = client.sender(procs, send_at, address, n, a)
    sent = read_json_line(tx, "done", a.timeout + 5)
    got = read_json_line(rx, "done", 30)
    for p in (tx, rx):
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=5)
    cpu1 = {name: common.cpu_seconds(pid) for name, pid in routers}
    client_cpu = children_cpu() - ch0
    ok = sent.get("ok", True) and (sent.get("other", 0) == 0) and got.get("ok", True)
    count = sent.get("count", sent.get("settled", n))
    ok = ok and got.get("count", got.get("received")) == n
    rate = sent.get("msgs_per_s")
    router_us = {name: (cpu1[name] - cpu0[name]) * 1e6 / n for name, _ in routers}
    return {
        "ok": bool(ok) and count == n,
        "msgs_per_s": rate,
        "router_cpu_us_per_msg": router_us,
        "router_cpu_us_per_msg_total": sum(router_us.values()),
        "client_cpu_us_per_msg": client_cpu * 1e6 / n,
        "received": got.get("count", got.get("received")),
    }


def measure(name, client, procs, recv_at, send_at, a, routers):
    log(f"{name}: warm-up ({a.warmup} messages)")
    run_once(client, procs, recv_at, send_at, f"bench.{name}.warm", a.warmup, a, routers)
    runs = []
    for i in range(a.runs):
        r = run_once(client, procs, recv_at, send_at, f"bench.{name}.{i}", a.count, a, routers)
        log(f"{name} run {i + 1}: {r['msgs_per_s']:.0f} msg/s, router CPU "
            f"{r['router_cpu_us_per_msg_total']:.2f} us/msg, client CPU "
            f"{r['client_cpu_us_per_msg']:.2f} us/msg{'' if r['ok'] else ' (NOT OK)'}")
        runs.append(r)
    good = [r for r in runs if r["ok"]] or runs
    med = lambda k: statistics.median(r[k] for r in good)  # noqa: E731
    return {
        "runs": runs,
        "msgs_per_s": med("msgs_per_s"),
        "msgs_per_s_min": min(r["msgs_per_s"] for r in good),
        "msgs_per_s_max": max(r["msgs_per_s"] for r in good),
        "router_cpu_us_per_msg_total": med("router_cpu_us_per_msg_total"),
        "router_cpu_us_per_msg": {k: statistics.median(r["router_cpu_us_per_msg"][k] for r in good)
                                  for k in good[0]["router_cpu_us_per_msg"]},
        "client_cpu_us_per_msg": med("client_cpu_us_per_msg"),
        "ok": all(r["ok"] for r in runs),
    }


# --------------------------------------------------------------------------
# routers
# --------------------------------------------------------------------------

def router_config(name, listen, amqp, connect=None):
    lines = ["[router]", f'id = "{name}"', "",
             "[[listener]]", 'role = "inter-router"', 'host = "127.0.0.1"', f"port = {listen}",
             'tls = "site"', "",
             "[[listener]]", 'role = "normal"', 'host = "127.0.0.1"', f"port = {amqp}"]
    if connect:
        lines += ["", "[[connector]]", 'role = "inter-router"', 'host = "127.0.0.1"',
                  f"port = {connect}", 'tls = "site"']
    lines += ["", "[tls.site]", 'ca = "ca.pem"', f'cert = "{name}.pem"',
              f'key = "{name}-key.pem"', ""]
    return "\n".join(lines)


def start_routers(a, work, procs):
    r = subprocess.run([a.tether, "certs", "--out", work, "east", "west"],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise SystemExit(f"`tether certs` failed: {r.stderr}")
    ports = {n: (free_port(), free_port()) for n in ("east", "west")}
    started = {}
    for name, connect in (("west", None), ("east", ports["west"][0])):
        cfg = os.path.join(work, f"{name}.toml")
        with open(cfg, "w") as f:
            f.write(router_config(name, ports[name][0], ports[name][1], connect))
        env = dict(os.environ, NO_COLOR="1", RUST_LOG=os.environ.get("RUST_LOG", "info"))
        started[name] = procs.start(name, [a.tether, "router", "--config", cfg],
                                    os.path.join(work, f"{name}.log"), cwd=work, env=env)
    for x, y in (("east", "west"), ("west", "east")):
        wait_log(os.path.join(work, f"{x}.log"), rf'link up.*peer="?{y}\b', READY_TIMEOUT,
                 started[x])
    for name in ("east", "west"):
        wait_connectable(ports[name][1], READY_TIMEOUT)
    return {n: started[n].pid for n in started}, {n: ports[n][1] for n in ports}


# --------------------------------------------------------------------------

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tether", default=os.environ.get("TETHER_BIN", DEFAULT_TETHER))
    p.add_argument("--count", type=int, default=200_000)
    p.add_argument("--warmup", type=int, default=20_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--window", type=int, default=1000)
    p.add_argument("--credit", type=int, default=1000)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--client", choices=["auto", "c", "python"], default="auto")
    p.add_argument("--paths", default="direct,east,east-west")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    a = p.parse_args()
    if not os.path.exists(a.tether):
        raise SystemExit(f"{a.tether} not found: cargo build --release -p tether-router")

    work = tempfile.mkdtemp(prefix="tether-amqp-bench-")
    procs = Procs()

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    results = {}
    try:
        client, why = (None, "python requested") if a.client == "python" else build_c_client(work)
        if client is None:
            if a.client == "c":
                raise SystemExit(f"C client unavailable: {why}")
            log(f"C client unavailable ({why}); using the Python clients")
            client = PyClient()
            if a.count == p.get_default("count"):
                a.count, a.warmup = 20_000, 2_000
        log(f"client: {client.name}")
        pids, amqp = start_routers(a, work, procs)
        routers = [("east", pids["east"]), ("west", pids["west"])]
        east, west = f"127.0.0.1:{amqp['east']}", f"127.0.0.1:{amqp['west']}"
        for path in a.paths.split(","):
            if path == "direct":
                if not client.can_listen:
                    log("direct: skipped (the Python receiver cannot listen)")
                    continue
                port = free_port()
                results[path] = measure(path, client, procs, f"listen:127.0.0.1:{port}",
                                        f"127.0.0.1:{port}", a, routers)
            elif path == "east":
                results[path] = measure(path, client, procs, east, east, a, routers)
            elif path == "east-west":
                results[path] = measure(path, client, procs, west, east, a, routers)
            else:
                raise SystemExit(f"unknown path {path}")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        procs.stop()
        if a.keep:
            log(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\nAMQP messages, {a.size} B bodies, unsettled, window {a.window}, "
          f"credit {a.credit}, {a.count} messages x {a.runs} runs (median); "
          f"client: {client.name}")
    print(f"{'path':<10} {'msg/s':>10} {'min':>10} {'max':>10} "
          f"{'router CPU us/msg':>18} {'(east / west)':>16} {'client CPU us/msg':>18}")
    for path, r in results.items():
        per = r["router_cpu_us_per_msg"]
        print(f"{path:<10} {r['msgs_per_s']:>10.0f} {r['msgs_per_s_min']:>10.0f} "
              f"{r['msgs_per_s_max']:>10.0f} {r['router_cpu_us_per_msg_total']:>18.2f} "
              f"{per['east']:>7.2f} / {per['west']:<6.2f} {r['client_cpu_us_per_msg']:>18.2f}"
              f"{'' if r['ok'] else '  (some runs NOT OK)'}")
    print("(router CPU on the direct path is the routers idling: the noise floor)")
    print("For scale: one Qpid Dispatch 1.19 router, Proton C clients: 68-91k msg/s, "
          "8-11 us router CPU per message.")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"settings": vars(a), "client": client.name, "paths": results}, f,
                      indent=2, sort_keys=True)
            f.write("\n")
        log(f"wrote {a.out}")
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
