"""Shared parts of the Proton client programs in tests/amqp/.

Every program here is run by the Rust tests (tests/src/proton.rs) with
/usr/bin/python3 (Debian's python3-qpid-proton). It prints one JSON
object per line on stdout (``{"event": ...}``), ends with a ``done``
line when it did its job, exits 0 on success and non-zero on failure,
and never runs longer than ``--timeout`` seconds: a watchdog thread
prints ``{"event": "timeout"}`` and exits with status 3.

This module holds:

- ``emit``: one JSON line;
- ``start_watchdog``: the hard timeout;
- ``add_connection_args`` / ``connect``: host, port, SASL and TLS
  options, the same in every program;
- the test message: ``make_message`` builds message number ``seq`` of a
  sender tagged ``tag`` (body and properties derived from both), and
  ``check_message`` recomputes what a received message must be from its
  own ``tag``/``seq``/``size``/``kind`` properties and names every field
  that differs, so a receiver verifies content without being told what
  was sent;
- ``Ending``: close the connection(s) and exit with a status, bounded;
- ``FailOnErrors``, ``Later`` and ``run``: the error handlers, timer
  tasks and main loop that the sender, receiver and requester share.
"""

import argparse
import hashlib
import json
import os
import random
import sys
import threading
import time

from proton import Message, SSLDomain, symbol, ulong
from proton.reactor import Container

# Exit statuses.
OK = 0
FAILED = 1
USAGE = 2
TIMED_OUT = 3

_out_lock = threading.Lock()


def emit(event, **fields):
    """Prints one JSON line ``{"event": event, ...fields}`` and flushes."""
    line = json.dumps(dict(event=event, **fields), sort_keys=True, default=str)
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def start_watchdog(seconds, on_timeout=None):
    """Exits the process with TIMED_OUT after ``seconds``, whatever the
    reactor is doing. ``on_timeout()`` may return extra fields for the
    ``timeout`` line (e.g. counters so far)."""

    def fire():
        extra = {}
        if on_timeout is not None:
            try:
                extra = on_timeout() or {}
            except Exception as e:  # the report must not stop the exit
                extra = {"report_error": repr(e)}
        emit("timeout", after_s=seconds, **extra)
        os._exit(TIMED_OUT)

    t = threading.Timer(seconds, fire)
    t.daemon = True
    t.start()
    return t


def add_connection_args(p):
    """Options every program takes: where to connect and how."""
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--timeout", type=float, default=30.0,
                   help="hard limit for the whole program, seconds")
    p.add_argument("--sasl", choices=["default", "none", "anonymous", "plain"],
                   default="default",
                   help="none: no SASL layer; anonymous/plain: only that "
                        "mechanism; default: Proton's choice")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--tls", action="store_true", help="amqps: TLS first")
    p.add_argument("--ca", help="CA file to verify the router's certificate")
    p.add_argument("--cert", help="client certificate (PEM)")
    p.add_argument("--key", help="client private key (PEM)")
    p.add_argument("--verify", choices=["none", "peer", "name"], default="peer",
                   help="router certificate check with --tls (name: also the "
                        "host name, see --tls-host)")
    p.add_argument("--tls-host", default="localhost",
                   help="name checked against the router's certificate with "
                        "--verify name (sent as SNI and Open hostname)")
    p.add_argument("--container-id")
    return p


def connect(container, args, handler=None):
    """Opens a connection as ``args`` say (no reconnect: a refused
    connection is reported, not retried)."""
    kw = {"reconnect": False}
    if args.sasl == "none":
        kw["sasl_enabled"] = False
    elif args.sasl == "anonymous":
        kw["allowed_mechs"] = "ANONYMOUS"
    elif args.sasl == "plain":
        kw["allowed_mechs"] = "PLAIN"
        # PLAIN without TLS is what these tests do on loopback.
        kw["allow_insecure_mechs"] = True
    if args.user is not None:
        kw["user"] = args.user
    if args.password is not None:
        kw["password"] = args.password
    scheme = "amqp"
    if args.tls:
        scheme = "amqps"
        d = SSLDomain(SSLDomain.MODE_CLIENT)
        if args.ca:
            d.set_trusted_ca_db(args.ca)
        if args.verify == "none":
            d.set_peer_authentication(SSLDomain.ANONYMOUS_PEER)
        elif args.verify == "peer":
            d.set_peer_authentication(SSLDomain.VERIFY_PEER, args.ca)
        else:
            d.set_peer_authentication(SSLDomain.VERIFY_PEER_NAME, args.ca)
            kw["virtual_host"] = args.tls_host
        if args.cert:
            d.set_credentials(args.cert, args.key, None)
        kw["ssl_domain"] = d
    url = "%s://%s:%d" % (scheme, args.host, args.port)
    if handler is not None:
        kw["handler"] = handler
    return container.connect(url, **kw)


def parser(description):
    """An argument parser with the connection options."""
    p = argparse.ArgumentParser(description=description)
    return add_connection_args(p)


def condition_fields(cond):
    """A Proton ``Condition`` (or None) as JSON fields."""
    if cond is None:
        return {"condition": None, "description": None}
    return {"condition": cond.name, "description": cond.description}


# ---------------------------------------------------------------------------
# The test message
# ---------------------------------------------------------------------------

KINDS = ("data", "value", "map")
# A message annotation the routers must pass through untouched (routers may
# add their own annotations, so only this key is compared).
ANNOTATION = symbol("x-opt-tether-test")
TEXT = "h\u00e9llo \u2713 \u00fcber"


def body_bytes(tag, seq, size):
    """``size`` pseudo-random bytes determined by ``tag`` and ``seq``."""
    seed = int.from_bytes(hashlib.sha256(("%s/%d" % (tag, seq)).encode()).digest()[:8], "big")
    return random.Random(seed).randbytes(size)


def kind_of(kind, seq):
    """The body kind of message ``seq`` (``mixed`` cycles through KINDS)."""
    return KINDS[seq % len(KINDS)] if kind == "mixed" else kind


def make_body(tag, seq, size, kind):
    """The body: ``data`` = a Data section of ``size`` bytes; ``value`` =
    an AmqpValue string of ``size`` characters; ``map`` = an AmqpValue map
    whose ``blob`` is ``size`` bytes."""
    raw = body_bytes(tag, seq, size)
    if kind == "data":
        return raw
    if kind == "value":
        return raw.hex()[:size] if size else ""
    return {"seq": seq, "text": TEXT, "blob": raw, "list": [1, "two", 3.0, None]}


def make_message(tag, seq, size=64, kind="data", to=None, reply_to=None):
    """Message ``seq`` of sender ``tag`` (see the module docs)."""
    k = kind_of(kind, seq)
    m = Message()
    m.body = make_body(tag, seq, size, k)
    m.inferred = k == "data"  # bytes as a Data section
    m.id = "%s-%d" % (tag, seq)
    m.correlation_id = "corr-%s-%d" % (tag, seq)
    m.subject = "subject %d" % seq
    m.content_type = "application/octet-stream" if k == "data" else None
    m.group_id = "group-%s" % tag
    m.group_sequence = seq
    m.creation_time = 1700000000.0 + seq
    m.priority = seq % 10
    m.durable = seq % 2 == 0
    if to is not None:
        m.address = to
    if reply_to is not None:
        m.reply_to = reply_to
    m.properties = {
        "tag": tag,
        "seq": seq,
        "size": size,
        "kind": k,
        "text": TEXT,
        "flag": seq % 2 == 1,
        "ratio": seq / 4.0,
        "big": ulong(2 ** 63 + seq),
        "sym": symbol("s%d" % seq),
    }
    m.annotations = {ANNOTATION: "seq-%d" % seq}
    return m


def make_probe(n, to=None):
    """A probe: a small message the receivers count apart from the data."""
    m = Message(body="probe %d" % n, properties={"probe": True, "n": n})
    if to is not None:
        m.address = to
    return m


def is_probe(msg):
    return bool(msg.properties and msg.properties.get("probe"))


def check_message(msg, to=None, reply_to=None):
    """Names of the fields of ``msg`` that differ from what
    ``make_message`` makes for the ``tag``/``seq``/``size``/``kind`` in its
    properties (an empty list: intact). ``to``/``reply_to``, when given,
    are checked too."""
    props = msg.properties or {}
    try:
        tag, seq, size, kind = props["tag"], props["seq"], props["size"], props["kind"]
    except (KeyError, TypeError):
        return ["properties(no tag/seq/size/kind)"]
    want = make_message(tag, seq, size, kind, to=to, reply_to=reply_to)
    bad = []
    for field in ("id", "correlation_id", "subject", "content_type", "group_id",
                  "group_sequence", "creation_time", "priority", "durable"):
        if getattr(msg, field) != getattr(want, field):
            bad.append(field)
    if to is not None and msg.address != to:
        bad.append("address")
    if reply_to is not None and msg.reply_to != reply_to:
        bad.append("reply_to")
    if msg.body != want.body or type(msg.body) is not type(want.body):
        bad.append("body")
    if dict(props) != dict(want.properties):
        bad.append("properties")
    else:
        for k, v in want.properties.items():
            if type(props[k]) is not type(v):
                bad.append("properties.%s(type %s)" % (k, type(props[k]).__name__))
    ann = msg.annotations or {}
    if ann.get(ANNOTATION) != "seq-%d" % seq:
        bad.append("annotations")
    return bad


def body_md5(msg):
    """MD5 of the body as sent on the wire for ``data`` bodies (bytes), or
    of its text/repr otherwise."""
    b = msg.body
    if isinstance(b, (bytes, bytearray, memoryview)):
        return hashlib.md5(bytes(b)).hexdigest()
    return hashlib.md5(repr(b).encode()).hexdigest()


def body_len(msg):
    b = msg.body
    if isinstance(b, (bytes, bytearray, memoryview, str)):
        return len(b)
    return None


# ---------------------------------------------------------------------------
# Ending
# ---------------------------------------------------------------------------

class Ending:
    """Closes connections and exits with a status, bounded: if the peer
    does not answer the close within ``grace`` seconds the process exits
    anyway."""

    def __init__(self, grace=3.0):
        self.grace = grace
        self.status = None

    def end(self, status, connections=()):
        if self.status is not None:
            return
        self.status = status
        for c in connections:
            if c is not None:
                try:
                    c.close()
                except Exception:
                    pass
        t = threading.Timer(self.grace, lambda: os._exit(status))
        t.daemon = True
        t.start()

    def exit(self):
        """After the reactor returns: exit with the status set by ``end``
        (FAILED if none was)."""
        sys.stdout.flush()
        os._exit(FAILED if self.status is None else self.status)


def now():
    return time.monotonic()


# ---------------------------------------------------------------------------
# Handler parts
# ---------------------------------------------------------------------------

class FailOnErrors:
    """Mixin (before MessagingHandler) for a handler with ``fail(why)`` and
    ``ending``: a connection closed with an error, a transport error or a
    disconnect emits a line and fails the handler."""

    def on_connection_error(self, event):
        emit("connection_closed", **condition_fields(event.connection.remote_condition))
        self.fail("connection_closed")

    def on_transport_error(self, event):
        emit("transport_error", **condition_fields(event.transport.condition))
        self.fail("transport_error")

    def on_disconnected(self, event):
        if self.ending.status is None:
            self.fail("disconnected")


class Later:
    """A timer task that calls ``f()``: ``container.schedule(s, Later(f))``."""

    def __init__(self, f):
        self.f = f

    def on_timer_task(self, event):
        self.f()


def run(h, timeout):
    """Runs handler ``h`` (with ``counters()`` and ``ending``) under the
    watchdog and exits with its status; an exception is an ``error`` line
    and a failure."""
    start_watchdog(timeout, lambda: h.counters())
    try:
        Container(h).run()
    except Exception as e:
        emit("error", error=repr(e))
        if h.ending.status is None:
            h.ending.status = FAILED
    h.ending.exit()
