"""Helpers shared by the benchmark harnesses benches/*/run.py.

Each run.py puts benches/ on sys.path from its own __file__ and then
`import common`, so the harnesses run from the repo root or from anywhere
else. Python 3 standard library only.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import time


def raise_on_signals():
    """SIGTERM and SIGINT raise SystemExit(128 + signum), so the callers'
    try/finally blocks kill what they started."""

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


# --------------------------------------------------------------------------
# processes: started here, always killed by PID
# --------------------------------------------------------------------------

def children_of(pid):
    """PIDs of all descendants of pid (from /proc), best effort."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read()
            ppid = int(raw[raw.rfind(b")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        table.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    for _ in range(100000):
        if not todo:
            break
        p = todo.pop()
        for c in table.get(p, []):
            out.append(c)
            todo.append(c)
    return out


class Procs:
    """Every process a harness starts; stop() kills each by PID: SIGTERM,
    up to `grace` seconds to exit, then SIGKILL. With `tree`, the
    descendants of each process (a forking socat) get the same signals.
    With `announce`, start() logs each process it starts."""

    def __init__(self, log, grace=3.0, tree=False, announce=False):
        self.log = log
        self.grace = grace
        self.tree = tree
        self.announce = announce
        self.procs = []  # (name, Popen, log file or None)

    def start(self, name, argv, log_path=None, **kw):
        logf = open(log_path, "ab") if log_path else None
        out = logf if logf else subprocess.DEVNULL
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, **kw)
        except OSError:
            if logf:
                logf.close()
            raise
        self.procs.append((name, p, logf))
        if self.announce:
            self.log(f"started {name} pid {p.pid}: {' '.join(argv)}")
        return p

    def stop(self):
        # Collect descendants first, then signal each PID.
        victims = []
        for _name, p, _ in self.procs:
            if p.poll() is None:
                victims.append(p.pid)
                if self.tree:
                    victims.extend(children_of(p.pid))
        for pid in victims:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.grace
        for _name, p, _ in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        ours = {p.pid: p for _name, p, _ in self.procs}
        for pid in victims:
            if pid in ours and ours[pid].poll() is not None:
                continue  # exited and reaped: its PID is no longer ours
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for name, p, logf in self.procs:
            try:
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.log(f"warning: {name} pid {p.pid} did not exit")
            if logf:
                logf.close()
        self.procs = []


def cpu_seconds(pid):
    """utime + stime of a process, seconds (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------
# ports and logs
# --------------------------------------------------------------------------

def free_port(taken, stride=0):
    """A free 127.0.0.1 port not in `taken`, preferably below the ephemeral
    range (so outgoing connections cannot grab it meanwhile). The search
    starts at a point given by the PID and, with `stride`, by len(taken)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo_eph = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        lo_eph = 32768
    span = max(1, lo_eph - 20000 - 1000)
    start = 20000 + (os.getpid() * 7919 + len(taken) * stride) % span
    candidates = list(range(start, lo_eph)) + list(range(20000, start))
    for port in candidates[:5000]:
        if port in taken:
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        taken.add(port)
        return port
    raise SystemExit("no free port found")


def wait_connectable(port, timeout, poll=0.05):
    """True once 127.0.0.1:port accepts a connection, False after timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(poll)
    return False


def tail(path, n=20):
    try:
        with open(path, "r", errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no log)"


def wait_log(path, pattern, timeout, proc, who="process", poll=0.05):
    """Wait (bounded) until the log at path has a line matching pattern;
    returns that line. `who` names proc in the error if it exits first."""
    rx = re.compile(pattern, re.IGNORECASE)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with open(path, "r", errors="replace") as f:
                for line in f:
                    if rx.search(line):
                        return line.strip()
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{who} exited ({proc.returncode}) before logging /{pattern}/; "
                               f"see {path}:\n{tail(path)}")
        time.sleep(poll)
    raise RuntimeError(f"no /{pattern}/ in {path} within {timeout}s:\n{tail(path)}")


# --------------------------------------------------------------------------
# C clients on Qpid Proton
# --------------------------------------------------------------------------

def build_proton_c(source, out):
    """Compiles a Proton C client (`cc -O2 source -lqpid-proton -o out`);
    returns None, or why it could not."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return "no C compiler"
    if not os.path.exists("/usr/include/proton/proactor.h"):
        return "no Proton C headers (apt-get install libqpid-proton11-dev)"
    r = subprocess.run([cc, "-O2", "-o", out, source, "-lqpid-proton"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        return f"cc failed: {r.stderr.strip()[:500]}"
    return None
