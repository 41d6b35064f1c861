#!/usr/bin/env python3
"""Reroute benchmark: how long new flows take to find another path when a
link breaks.

Builds nothing: it runs the release binary `target/release/tether` (or
$TETHER_BIN), so build it first:

    cargo build --release -p tether-router && python3 benches/reroute/run.py

Topology, all on 127.0.0.1 (a link `a -> b` is a connector on `a` dialling
`b`'s inter-router listener):

    client -> east --[relay]--------> west -> echo service    (cost 1)
                \\--> hub ------------/                          (cost 1 + 1)

The direct link goes through a relay inside this script, so the script can
break that one link in two ways:
  - closed: the relay shuts down both TCP connections and refuses new ones
    (the routers see EOF at once);
  - silent: the relay stops forwarding but keeps every socket open (no FIN):
    only the routers' dead interval can tell.

For every run the script starts three fresh routers (`tether certs` makes
the PKI once), waits for the three links (both ends log `link up`), for
east's tcp_listener, and until a 256 KiB echo flow crosses the relay (new
flows take the direct path); lets the routers settle for 1 s; breaks the
link; and then starts a new echo flow every 5 ms (each on its own thread,
250 ms timeout) until one completes. The figure is the time from the break
to the completion of the first successful new flow.

Cases: closed (router default timers), silent with the default timers
(hello 1 s / dead 3 s) and silent with hello 100 ms / dead 300 ms. It prints
min / median / max per case against the targets: closed <= 100 ms, silent
<= dead interval + 200 ms. Exit status 0 if every run recovered within its
target, 1 otherwise.

Every process it starts is killed by PID on exit (try/finally plus SIGINT /
SIGTERM handlers), and every wait is bounded. Python 3 standard library only.
"""

import argparse
import json
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # benches/, for common.py
import common  # noqa: E402
from common import Procs, raise_on_signals, tail  # noqa: E402

REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
DEFAULT_TETHER = os.path.join(REPO, "target", "release", "tether")
ROUTERS = ("east", "hub", "west")
# The router's defaults (router/src/config.rs) when the config sets no timers.
DEFAULT_HELLO_MS = 1000
DEFAULT_DEAD_MS = 3000
CLOSED_TARGET_MS = 100
SILENT_MARGIN_MS = 200
READY_TIMEOUT = 20.0
PATH_FLOW = 256 * 1024
SETTLE = 1.0


def log(msg):
    print(f"[reroute] {msg}", file=sys.stderr, flush=True)


def free_port(taken):
    return common.free_port(taken, stride=104729)


def wait_log(path, pattern, timeout, proc):
    return common.wait_log(path, pattern, timeout, proc, who="router", poll=0.025)


def wait_connectable(port, timeout):
    return common.wait_connectable(port, timeout, poll=0.025)


# --------------------------------------------------------------------------
# the relay on the direct link
# --------------------------------------------------------------------------

class Relay:
    """Forwards 127.0.0.1:port <-> 127.0.0.1:target byte-exact, one thread
    per direction per connection. kill(): shut every connection down on
    both sides and refuse new ones (final). freeze(): forward nothing,
    keep every socket open; new connections are accepted but the target is
    not dialled for them until thaw(). stop(): kill and join the threads."""

    SLICE = 0.05

    def __init__(self, target, taken):
        self.target = target
        self.port = free_port(taken)
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", self.port))
        self.lsock.listen(64)
        self.cond = threading.Condition()
        self.mode = "forwarding"  # guarded by cond: forwarding, frozen, killed
        self.writing = 0          # pumps inside send() that saw "forwarding"
        self.bytes = 0
        self.conns = {}           # id -> [socket, ...], for kill
        self.threads = []
        self.stopped = False
        self.deadline = time.monotonic() + 3600
        t = threading.Thread(target=self._accept_loop, name=f"relay-{self.port}", daemon=True)
        t.start()
        self.threads.append(t)

    def _ending(self):
        return self.stopped or time.monotonic() >= self.deadline

    def _accept_loop(self):
        next_id = 0
        while not self._ending():
            with self.cond:
                if self.mode == "killed":
                    return
            try:
                ready, _, _ = select.select([self.lsock], [], [], 0.1)
            except (OSError, ValueError):
                return
            if not ready:
                continue
            try:
                conn, _ = self.lsock.accept()
            except OSError:
                with self.cond:
                    if self.mode == "killed":
                        return
                time.sleep(0.01)
                continue
            t = threading.Thread(target=self._relay, args=(next_id, conn), daemon=True)
            next_id += 1
            t.start()
            self.threads = [x for x in self.threads if x.is_alive()] + [t]

    def _register(self, cid, sock):
        with self.cond:
            if self.mode == "killed" or self._ending():
                _shutdown(sock)
                return False
            self.conns.setdefault(cid, []).append(sock)
            return True

    def _wait_forwarding(self):
        with self.cond:
            while self.mode == "frozen" and not self._ending():
                self.cond.wait(self.SLICE)
            return self.mode == "forwarding" and not self._ending()

    def _relay(self, cid, down):
        try:
            if not self._register(cid, down) or not self._wait_forwarding():
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                return
            if not self._register(cid, up):
                up.close()
                return
            for s in (down, up):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.settimeout(self.SLICE)
            back = threading.Thread(target=self._pump, args=(up, down), daemon=True)
            back.start()
            self._pump(down, up)
            back.join(timeout=5)
            up.close()
        finally:
            with self.cond:
                self.conns.pop(cid, None)
            down.close()

    def _pump(self, src, dst):
        while self._wait_forwarding():
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                _shutdown(src)
                _shutdown(dst)
                return
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            off = 0
            while off < len(data):
                if not self._wait_forwarding():
                    return
                with self.cond:
                    if self.mode != "forwarding":
                        continue
                    self.writing += 1
                n = 0
                try:
                    n = dst.send(data[off:])
                except socket.timeout:
                    pass
                except OSError:
                    _shutdown(src)
                    _shutdown(dst)
                    return
                finally:
                    with self.cond:
                        self.writing -= 1
                        self.bytes += n
                        self.cond.notify_all()
                off += n

    def forwarded(self):
        with self.cond:
            return self.bytes

    def kill(self):
        with self.cond:
            self.mode = "killed"
            self.cond.notify_all()
            socks = [s for v in self.conns.values() for s in v]
        # On Linux a listening socket shut down for reading leaves LISTEN:
        # connects are refused from now on.
        _shutdown(self.lsock)
        for s in socks:
            _shutdown(s)

    def freeze(self):
        with self.cond:
            if self.mode == "killed":
                return
            self.mode = "frozen"
            end = time.monotonic() + 1
            while self.writing > 0 and time.monotonic() < end:
                self.cond.wait(0.01)

    def thaw(self):
        with self.cond:
            if self.mode == "frozen":
                self.mode = "forwarding"
            self.cond.notify_all()

    def stop(self):
        self.stopped = True
        self.kill()
        for t in list(self.threads):
            t.join(timeout=2)
        self.lsock.close()


def _shutdown(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


# --------------------------------------------------------------------------
# the echo service and the client side
# --------------------------------------------------------------------------

class EchoServer:
    """Echoes every connection until EOF, then half-closes."""

    def __init__(self, taken):
        self.port = free_port(taken)
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", self.port))
        self.lsock.listen(1024)
        self.stopped = False
        self.thread = threading.Thread(target=self._loop, name="echo", daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.stopped:
            try:
                ready, _, _ = select.select([self.lsock], [], [], 0.1)
                if ready:
                    conn, _ = self.lsock.accept()
                    threading.Thread(target=self._echo, args=(conn,), daemon=True).start()
            except OSError:
                if self.stopped:
                    return
                time.sleep(0.01)

    def _echo(self, conn):
        conn.settimeout(0.5)
        end = time.monotonic() + 600
        with conn:
            while not self.stopped and time.monotonic() < end:
                try:
                    data = conn.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not data:
                    try:
                        conn.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                try:
                    conn.sendall(data)
                except OSError:
                    return

    def stop(self):
        self.stopped = True
        self.thread.join(timeout=2)
        self.lsock.close()


def echo_bulk(port, n, timeout):
    """One flow: send n random bytes while reading the echo; True if the
    echo is exact and ends with EOF, within timeout."""
    data = os.urandom(n)
    end = time.monotonic() + timeout
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError:
        return False
    with s:
        def write():
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        w = threading.Thread(target=write, daemon=True)
        w.start()
        got = bytearray()
        ok = False
        while time.monotonic() < end:
            s.settimeout(max(0.01, end - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except OSError:
                break
            if not chunk:
                ok = bytes(got) == data
                break
            got += chunk
            if len(got) > n:
                break
        _shutdown(s)
        w.join(timeout=2)
        return ok


def probe_echo(port, since, interval, probe_timeout, limit):
    """Starts a new echo flow every `interval` s (each on its own thread,
    bounded by `probe_timeout`) until one succeeds or `limit` s passed.
    Returns the seconds from `since` to the first success, or None."""
    first = []
    lock = threading.Lock()

    def one(i):
        payload = b"probe %10d\n" % i
        end = time.monotonic() + probe_timeout
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=probe_timeout) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.sendall(payload)
                got = b""
                while len(got) < len(payload):
                    left = end - time.monotonic()
                    if left <= 0:
                        return
                    s.settimeout(left)
                    chunk = s.recv(64)
                    if not chunk:
                        return
                    got += chunk
                if got == payload:
                    now = time.monotonic()
                    with lock:
                        first.append(now)
        except OSError:
            return

    start = time.monotonic()
    threads = []
    i = 0
    while time.monotonic() - start < limit:
        with lock:
            if first:
                break
        t = threading.Thread(target=one, args=(i,), daemon=True)
        t.start()
        threads.append(t)
        i += 1
        time.sleep(interval)
    for t in threads:
        t.join(timeout=probe_timeout + 1)
    with lock:
        return (min(first) - since) if first else None


# --------------------------------------------------------------------------
# one run: three routers, break the direct link, measure
# --------------------------------------------------------------------------

def router_config(name, listen, connectors, timers, extra_router, tcp):
    lines = ["[router]", f'id = "{name}"']
    if timers:
        lines += [f"hello_interval_ms = {timers[0]}", f"dead_interval_ms = {timers[1]}"]
    lines += extra_router
    lines += ["", "[[listener]]", 'role = "inter-router"', 'host = "127.0.0.1"',
              f"port = {listen}", 'tls = "site"']
    for port, cost in connectors:
        lines += ["", "[[connector]]", 'role = "inter-router"', 'host = "127.0.0.1"',
                  f"port = {port}", f"cost = {cost}", 'tls = "site"']
    lines += tcp
    lines += ["", "[tls.site]", 'ca = "ca.pem"', f'cert = "{name}.pem"',
              f'key = "{name}-key.pem"', ""]
    return "\n".join(lines)


def run_once(args, work, tag, mode, timers, echo, taken):
    """Starts the triangle, breaks the direct link (`mode` is "closed" or
    "silent") and returns the seconds to the first new flow (None: no
    recovery within the limit)."""
    procs = Procs(log)
    relay = None
    try:
        listen = {n: free_port(taken) for n in ROUTERS}
        client = free_port(taken)
        relay = Relay(listen["west"], taken)
        extra = []
        if args.advertisement_interval_ms:
            extra = [f"advertisement_interval_ms = {args.advertisement_interval_ms}"]
        configs = {
            "east": router_config("east", listen["east"],
                                  [(relay.port, 1), (listen["hub"], 1)], timers, extra,
                                  ["", "[[tcp_listener]]", 'address = "backend"',
                                   'host = "127.0.0.1"', f"port = {client}"]),
            "hub": router_config("hub", listen["hub"], [(listen["west"], 1)], timers, extra, []),
            "west": router_config("west", listen["west"], [], timers, extra,
                                  ["", "[[tcp_connector]]", 'address = "backend"',
                                   'host = "127.0.0.1"', f"port = {echo.port}"]),
        }
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"), NO_COLOR="1")
        started = {}
        logs = {}
        for name in ROUTERS:
            cfg = os.path.join(work, f"{tag}-{name}.toml")
            with open(cfg, "w") as f:
                f.write(configs[name])
            chk = subprocess.run([args.tether, "router", "--check", cfg],
                                 capture_output=True, text=True, timeout=30)
            if chk.returncode != 0:
                raise RuntimeError(f"--check {cfg} failed: {chk.stdout}{chk.stderr}")
            logs[name] = os.path.join(work, f"{tag}-{name}.log")
            started[name] = procs.start(f"{tag}-{name}",
                                        [args.tether, "router", "--config", cfg],
                                        logs[name], env=env, cwd=work)
        log(f"{tag}: routers started (pids {', '.join(str(p.pid) for p in started.values())}); "
            f"waiting for links")
        for a, b in (("east", "west"), ("east", "hub"), ("hub", "west")):
            for x, y in ((a, b), (b, a)):
                wait_log(logs[x], rf'link up.*peer="?{re.escape(y)}\b', READY_TIMEOUT, started[x])
        if not wait_connectable(client, READY_TIMEOUT):
            raise RuntimeError(f"east's tcp_listener never accepted:\n{tail(logs['east'])}")
        # New flows must take the direct link before it is broken.
        direct = False
        end = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < end and not direct:
            before = relay.forwarded()
            direct = echo_bulk(client, PATH_FLOW, 10) and \
                relay.forwarded() - before >= 2 * PATH_FLOW
            if not direct:
                time.sleep(0.1)
        if not direct:
            raise RuntimeError("new flows never took the direct link")
        time.sleep(SETTLE)

        since = time.monotonic()
        if mode == "closed":
            relay.kill()
            limit = 5.0
        else:
            relay.freeze()
            limit = (timers or (DEFAULT_HELLO_MS, DEFAULT_DEAD_MS))[1] / 1000.0 + 5.0
        return probe_echo(client, since, args.probe_interval_ms / 1000.0,
                          args.probe_timeout_ms / 1000.0, limit)
    finally:
        procs.stop()
        if relay is not None:
            relay.stop()


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

CASES = {
    # name: (break mode, timers or None for the router's defaults, label)
    "closed": ("closed", None, "closed (relay kill)"),
    "silent-default": ("silent", None, "silent (relay freeze)"),
    "silent-fast": ("silent", (100, 300), "silent (relay freeze)"),
}


def target_ms(mode, timers):
    if mode == "closed":
        return CLOSED_TARGET_MS
    return (timers or (DEFAULT_HELLO_MS, DEFAULT_DEAD_MS))[1] + SILENT_MARGIN_MS


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tether", default=os.environ.get("TETHER_BIN", DEFAULT_TETHER),
                    help="tether binary (default target/release/tether or $TETHER_BIN)")
    ap.add_argument("--runs", type=int, default=5, help="runs per case (default 5)")
    ap.add_argument("--cases", default=",".join(CASES),
                    help=f"comma list of cases (default {','.join(CASES)})")
    ap.add_argument("--probe-interval-ms", type=float, default=5)
    ap.add_argument("--probe-timeout-ms", type=float, default=250)
    ap.add_argument("--advertisement-interval-ms", type=int, default=None,
                    help="set [router] advertisement_interval_ms on every router")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (configs, logs)")
    args = ap.parse_args()

    if not os.path.isfile(args.tether):
        raise SystemExit(f"tether binary not found at {args.tether}; build it first:\n"
                         f"  cargo build --release -p tether-router")
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    if args.runs < 1:
        raise SystemExit("--runs must be at least 1")

    raise_on_signals()

    work = tempfile.mkdtemp(prefix="tether-reroute-")
    taken = set()
    echo = None
    results = {}  # case -> list of seconds or None
    errors = {}
    try:
        out = subprocess.run([args.tether, "certs", "--out", work, *ROUTERS],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise SystemExit(f"`tether certs` failed ({out.returncode}): {out.stderr}")
        echo = EchoServer(taken)
        for case in cases:
            mode, timers, _label = CASES[case]
            for i in range(args.runs):
                tag = f"{case}-{i + 1}"
                try:
                    t = run_once(args, work, tag, mode, timers, echo, taken)
                except RuntimeError as e:
                    log(f"{tag}: setup failed: {e}")
                    errors.setdefault(case, []).append(str(e).splitlines()[0])
                    t = None
                results.setdefault(case, []).append(t)
                shown = f"{t * 1000:.1f} ms" if t is not None else "no recovery"
                log(f"{tag}: first new flow after the break: {shown}")
    finally:
        # No second signal may interrupt the cleanup.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if echo is not None:
            echo.stop()
        if args.keep:
            log(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    ok = print_table(cases, results)
    if args.json:
        doc = {"tether": args.tether, "runs": args.runs,
               "probe_interval_ms": args.probe_interval_ms,
               "probe_timeout_ms": args.probe_timeout_ms,
               "cases": {c: {"mode": CASES[c][0],
                             "timers_ms": CASES[c][1] or [DEFAULT_HELLO_MS, DEFAULT_DEAD_MS],
                             "target_ms": target_ms(CASES[c][0], CASES[c][1]),
                             "ms": [None if t is None else round(t * 1000, 2)
                                    for t in results.get(c, [])],
                             "errors": errors.get(c, [])}
                         for c in cases}}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2, sort_keys=True)
            f.write("\n")
        log(f"wrote {args.json}")
    return 0 if ok else 1


def print_table(cases, results):
    head = (f"{'case':<24}{'hello/dead ms':>15}{'runs':>6}{'min ms':>10}{'median ms':>11}"
            f"{'max ms':>10}{'target ms':>11}  verdict")
    print()
    print(head)
    print("-" * len(head))
    all_ok = True
    for case in cases:
        mode, timers, label = CASES[case]
        hello, dead = timers or (DEFAULT_HELLO_MS, DEFAULT_DEAD_MS)
        runs = results.get(case, [])
        got = [t * 1000 for t in runs if t is not None]
        target = target_ms(mode, timers)
        if not got:
            cells = f"{'-':>10}{'-':>11}{'-':>10}"
        else:
            cells = f"{min(got):>10.1f}{statistics.median(got):>11.1f}{max(got):>10.1f}"
        failed = len(runs) - len(got)
        if failed:
            verdict = f"{failed} of {len(runs)} runs did not recover"
        elif max(got) <= target:
            verdict = "ok (max within target)"
        else:
            verdict = "MISSED (max over target)"
        all_ok = all_ok and not failed and bool(got) and max(got) <= target
        print(f"{label:<24}{f'{hello}/{dead}':>15}{len(runs):>6}{cells}{target:>11}  {verdict}")
    print()
    print(f"targets: closed <= {CLOSED_TARGET_MS} ms; "
          f"silent <= dead interval + {SILENT_MARGIN_MS} ms")
    return all_ok


if __name__ == "__main__":
    sys.exit(main())
