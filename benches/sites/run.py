#!/usr/bin/env python3
"""Sites benchmark: from nothing to traffic flowing between two sites with
the README's command sequence ("Sites on plain hosts"), timed.

Runs the release binary (target/release/tether or $TETHER_BIN), so build
it first:

    cargo build --release -p tether-router && python3 benches/sites/run.py

Each run starts from nothing: a fresh temporary folder with two "hosts",
A and B, each its own working folder and its own XDG_DATA_HOME (so the
commands are exactly the README's, without --site-dir), and an echo
service on B (started before the clock, like the service a user exposes).
Then, timed from the first command:

    A: tether site create east
    A: tether site start                    (in the background)
    A: tether token issue east-token.yaml
       (the file is copied to B: any channel; not a command)
    B: tether site create west
    B: tether site start                    (in the background)
    B: tether token redeem east-token.yaml
    B: tether expose backend PORT           (PORT: the echo service's)

and a client on A connecting to the automatic listener `auto-backend`
that east opened, sending 16 bytes, until the first byte echoed. On two
real hosts that listener is on PORT; here PORT is taken by the service on
the same host, so east picks a free one and the harness reads it from
`tether listener status -o json` on A (polled every 20 ms; these look-ups
are the harness's, not user commands, but their time is in the total).

A `tether site start` runs in the foreground, so the harness starts it in
the background and waits (bounded) until its management port accepts
connections before the next command, as a user waits for it to print
that it is up; that wait is part of the total.

Reported per run and as min / median / max over --runs (default 5):
  - the number of user commands (7);
  - total: from the start of `site create east` to the first byte echoed
    through the automatic listener;
  - redeem -> link up: the wall time of `tether token redeem` (it waits,
    by default, until the link is up; process start, the HTTPS
    redemption, the live link creation and the wait included), and the
    time the command itself reports ("linked to east in N s");
  - the wall time of every step.

Every process it starts is stopped by PID on exit (SIGTERM, then
SIGKILL); every wait is bounded. Python 3 standard library only.
"""

import argparse
import json
import os
import re
import shutil
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

REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
DEFAULT_TETHER = os.path.join(REPO, "target", "release", "tether")
COMMAND_TIMEOUT = 30.0   # one CLI command
START_TIMEOUT = 10.0     # a site's management port open
TRAFFIC_TIMEOUT = 15.0   # automatic listener found and first byte echoed
PAYLOAD = b"tether-sites-01\n"  # 16 bytes


def log(msg):
    print(f"[sites] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# the echo service on host B
# --------------------------------------------------------------------------

class Echo:
    """A threaded TCP echo server on 127.0.0.1 (free port), in process."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _serve(conn):
        conn.settimeout(30)
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self):
        self.stopping = True
        self.thread.join(timeout=2)
        self.sock.close()


# --------------------------------------------------------------------------
# one run
# --------------------------------------------------------------------------

class Host:
    """A "host": a working folder and an XDG_DATA_HOME of its own."""

    def __init__(self, root, name, tether):
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir)
        self.tether = tether
        self.env = dict(os.environ)
        self.env.update({"HOME": self.dir, "XDG_DATA_HOME": os.path.join(self.dir, "data"),
                         "NO_COLOR": "1"})
        self.env.pop("TETHER_SITE_DIR", None)

    def run(self, args):
        """Runs `tether ARGS` here (bounded); returns (seconds, stdout)."""
        t0 = time.monotonic()
        try:
            p = subprocess.run([self.tether] + args, cwd=self.dir, env=self.env,
                               stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"tether {' '.join(args)} took over {COMMAND_TIMEOUT}s")
        took = time.monotonic() - t0
        if p.returncode != 0:
            raise RuntimeError(f"tether {' '.join(args)} failed ({p.returncode}):\n"
                               f"{p.stdout}{p.stderr}")
        return took, p.stdout

    def site_port(self, site, key):
        path = os.path.join(self.dir, "data", "tether", "sites", site, "site.toml")
        with open(path) as f:
            m = re.search(rf"^{key} = (\d+)$", f.read(), re.MULTILINE)
        if not m:
            raise RuntimeError(f"no {key} port in {path}")
        return int(m.group(1))

    def start(self, procs, site):
        """`tether site start` in the background; waits until it answers
        on its management port. Returns the seconds taken."""
        t0 = time.monotonic()
        logp = os.path.join(self.dir, "site-start.log")
        p = procs.start(f"site start {site}", [self.tether, "site", "start"],
                        log_path=logp, cwd=self.dir, env=self.env)
        port = self.site_port(site, "amqp")
        end = t0 + START_TIMEOUT
        while time.monotonic() < end:
            if p.poll() is not None:
                raise RuntimeError(f"site start {site} exited ({p.returncode}):\n"
                                   f"{common.tail(logp)}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return time.monotonic() - t0
            except OSError:
                time.sleep(0.01)
        raise RuntimeError(f"site {site} did not start within {START_TIMEOUT}s:\n"
                           f"{common.tail(logp)}")


def auto_listener_port(host, name):
    """The port of listener `name` if `tether listener status` shows it up."""
    _, out = host.run(["listener", "status", "-o", "json"])
    for row in json.loads(out):
        if row.get("name") == name and row.get("status") == "up":
            return int(row["port"])
    return None


def first_echo(host, deadline):
    """Finds east's auto-backend listener, connects, sends PAYLOAD and reads
    it back; returns (time of the first byte echoed, port, look-ups)."""
    lookups = 0
    port = None
    while port is None:
        if time.monotonic() > deadline:
            raise RuntimeError("no auto-backend listener on east in time")
        port = auto_listener_port(host, "auto-backend")
        lookups += 1
        if port is None:
            time.sleep(0.02)
    while True:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no echo through auto-backend (port {port}) in time")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.settimeout(max(0.1, deadline - time.monotonic()))
                s.sendall(PAYLOAD)
                first = s.recv(1)
                t_first = time.monotonic()
                if not first:
                    raise OSError("closed before any byte")
                got = first
                while len(got) < len(PAYLOAD):
                    chunk = s.recv(len(PAYLOAD) - len(got))
                    if not chunk:
                        break
                    got += chunk
                if got != PAYLOAD:
                    raise RuntimeError(f"echo not exact: {got!r}")
                return t_first, port, lookups
        except OSError:
            time.sleep(0.02)


def one_run(tether, keep):
    root = tempfile.mkdtemp(prefix="tether-sites-bench-")
    procs = common.Procs(log)
    echo = Echo()
    steps = {}
    try:
        a = Host(root, "host-a", tether)
        b = Host(root, "host-b", tether)
        commands = 0

        def step(name, f):
            nonlocal commands
            commands += 1
            r = f()
            steps[name] = r[0] if isinstance(r, tuple) else r
            return r

        t0 = time.monotonic()
        step("A: site create east", lambda: a.run(["site", "create", "east"]))
        step("A: site start", lambda: a.start(procs, "east"))
        step("A: token issue", lambda: a.run(["token", "issue", "east-token.yaml"]))
        shutil.copy(os.path.join(a.dir, "east-token.yaml"), os.path.join(b.dir, "east-token.yaml"))
        step("B: site create west", lambda: b.run(["site", "create", "west"]))
        step("B: site start", lambda: b.start(procs, "west"))
        _, out = step("B: token redeem", lambda: b.run(["token", "redeem", "east-token.yaml"]))
        m = re.search(r"is up: linked to \S+ in ([0-9.]+) s", out)
        if not m:
            raise RuntimeError(f"token redeem did not report the link up:\n{out}")
        reported = float(m.group(1))
        step("B: expose backend", lambda: b.run(["expose", "backend", str(echo.port)]))
        t_expose = time.monotonic()
        t_first, port, lookups = first_echo(a, t_expose + TRAFFIC_TIMEOUT)
        steps["A: client first byte"] = t_first - t_expose
        return {
            "commands": commands,
            "total_s": t_first - t0,
            "redeem_wall_s": steps["B: token redeem"],
            "redeem_reported_s": reported,
            "steps_s": steps,
            "auto_listener_port": port,
            "service_port": echo.port,
            "listener_lookups": lookups,
        }
    finally:
        procs.stop()
        echo.stop()
        if keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def summary(values):
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="fresh pairs of sites (default 5)")
    ap.add_argument("--tether", default=os.environ.get("TETHER_BIN", DEFAULT_TETHER),
                    help="the tether binary (default $TETHER_BIN or target/release/tether)")
    ap.add_argument("--json", metavar="FILE", help="also write the JSON result here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = ap.parse_args()
    if not os.path.isfile(args.tether):
        sys.exit(f"{args.tether} not found: run `cargo build --release -p tether-router` "
                 "first, or set TETHER_BIN")
    if args.runs < 1:
        sys.exit("--runs must be at least 1")
    common.raise_on_signals()

    runs = []
    for i in range(args.runs):
        r = one_run(args.tether, args.keep)
        runs.append(r)
        log(f"run {i + 1}/{args.runs}: {r['commands']} commands, total {r['total_s']:.3f} s, "
            f"redeem -> up {r['redeem_wall_s']:.3f} s (reported {r['redeem_reported_s']:.2f} s)")

    step_names = list(runs[0]["steps_s"].keys())
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "runs": args.runs,
        "load_avg_1m": os.getloadavg()[0],
        "commands": runs[0]["commands"],
        "total_s": summary([r["total_s"] for r in runs]),
        "redeem_to_link_up_s": summary([r["redeem_wall_s"] for r in runs]),
        "redeem_reported_s": summary([r["redeem_reported_s"] for r in runs]),
        "steps_s": {n: summary([r["steps_s"][n] for r in runs]) for n in step_names},
        "per_run": runs,
    }

    rows = [("user commands", str(result["commands"]), "", "")]
    for label, key in [("total: first command -> first byte echoed", "total_s"),
                       ("token redeem -> link up (command wall time)", "redeem_to_link_up_s"),
                       ("token redeem -> link up (as it reports)", "redeem_reported_s")]:
        s = result[key]
        rows.append((label, f"{s['min']:.3f}", f"{s['median']:.3f}", f"{s['max']:.3f}"))
    for n in step_names:
        s = result["steps_s"][n]
        rows.append((f"  step {n}", f"{s['min']:.3f}", f"{s['median']:.3f}", f"{s['max']:.3f}"))
    w = max(len(r[0]) for r in rows)
    print(f"{'figure (seconds), ' + str(args.runs) + ' runs':<{w}}  {'min':>7}  {'median':>7}  {'max':>7}")
    print(f"{'-' * w}  {'-' * 7}  {'-' * 7}  {'-' * 7}")
    for r in rows:
        print(f"{r[0]:<{w}}  {r[1]:>7}  {r[2]:>7}  {r[3]:>7}")
    print(f"(load average, 1 min: {result['load_avg_1m']:.2f})")
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
