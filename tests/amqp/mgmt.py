#!/usr/bin/env python3
"""AMQP Management requests (the Qpid Dispatch / skupper-router format).

Connects to ``--url`` (``amqp://HOST:PORT``; or ``--host``/``--port``),
attaches a receiver with a dynamic source (its address, assigned by the
router, is every request's ``reply_to``) and a sender to ``--address``
(``$management``: the router connected to; ``_topo/0/<id>/$management``:
any router of the network, routed through it), then sends the requests
one at a time, in order, each after the previous one was answered, and
exits.

The requests are a JSON list (``--requests JSON``, or on stdin when it is
absent or ``-``). Each request is an object:

  operation, type, entityType, name, identity, offset, count
          application properties (only those given are sent; the values
          keep their JSON type: a number is sent as a long)
  properties
          more application properties, sent as given
  body    the body (an AmqpValue): JSON objects become maps with string
          keys, lists become lists; absent: an empty map
  id      the message_id (default ``req-<n>``)
  correlation_id
          also set the request's correlation_id (the router must answer
          with it instead of the message_id)

Lines:
  reply_address  the address the router assigned to the reply receiver
  response       index, request (the request object), statusCode,
                 statusDescription, body (as JSON: maps become objects with
                 their keys as strings, symbols strings, described values
                 ``{"descriptor", "value"}``, binary a hex string),
                 correlation_id, correlation_ok (it names this request),
                 application_properties
  outcome        index, outcome: a request the router did not accept
                 (rejected / released / modified, with the error), which
                 gets no response
  done           ok, responses, requests, reason

Exit status 0 when every request got exactly one response (whatever its
statusCode: the caller judges those), 1 otherwise (a request rejected, a
response to no request, a connection error), 2 for bad arguments, 3 on
the hard ``--timeout`` (e.g. no credit: nothing serves ``--address``).
"""

import json
import sys
from urllib.parse import urlparse

from proton import Array, Delivery, Described, Message
from proton.handlers import MessagingHandler

import common
from common import emit

# Keys of a request object that become application properties.
APP_PROPERTY_KEYS = ("operation", "type", "entityType", "name", "identity",
                     "offset", "count")
REQUEST_KEYS = set(APP_PROPERTY_KEYS) | {"properties", "body", "id", "correlation_id"}


def to_json(v):
    """A decoded AMQP value as plain JSON data (see the module docs)."""
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int):  # ulong, uint, int32, ... are int subclasses
        return int(v)
    if isinstance(v, float):
        return float(v)
    if isinstance(v, str):  # string, symbol, char
        return str(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if isinstance(v, dict):
        return {str(to_json(k)) if not isinstance(k, str) else str(k): to_json(x)
                for k, x in v.items()}
    if isinstance(v, Array):
        return [to_json(x) for x in v.elements]
    if isinstance(v, (list, tuple)):
        return [to_json(x) for x in v]
    if isinstance(v, Described):
        return {"descriptor": to_json(v.descriptor), "value": to_json(v.value)}
    return str(v)


def from_json(v):
    """JSON data as values Proton encodes naturally (str stays a string)."""
    if isinstance(v, dict):
        return {str(k): from_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [from_json(x) for x in v]
    return v


class Mgmt(common.FailOnErrors, MessagingHandler):
    def __init__(self, args, requests):
        super().__init__(prefetch=0, auto_accept=False)
        self.a = args
        self.requests = requests
        self.ending = common.Ending()
        self.conn = None
        self.receiver = None
        self.sender = None
        self.reply_address = None
        self.next = 0          # index of the next request to send
        self.waiting = None    # index of the request sent and not answered
        self.ids = {}          # expected correlation id -> index
        self.responses = 0
        self.answered = set()
        self.failure = None

    def on_start(self, event):
        self.conn = common.connect(event.container, self.a)
        self.receiver = event.container.create_receiver(self.conn, None, dynamic=True)

    def on_link_opened(self, event):
        if event.link == self.receiver:
            self.reply_address = self.receiver.remote_source.address
            emit("reply_address", address=self.reply_address)
            if not self.reply_address:
                self.fail("no_dynamic_address")
                return
            self.receiver.flow(10)
            self.sender = event.container.create_sender(self.conn, self.a.address)

    def on_sendable(self, event):
        if event.link == self.sender:
            self.pump()

    def pump(self):
        if self.sender is None or self.ending.status is not None:
            return
        if self.waiting is not None or self.sender.credit <= 0:
            return
        if self.next >= len(self.requests):
            self.finish()
            return
        i = self.next
        req = self.requests[i]
        m = Message()
        m.id = req.get("id", "req-%d" % i)
        m.reply_to = self.reply_address
        expected = m.id
        if "correlation_id" in req:
            m.correlation_id = req["correlation_id"]
            expected = req["correlation_id"]
        props = {}
        for k in APP_PROPERTY_KEYS:
            if k in req:
                props[k] = req[k]
        props.update(req.get("properties", {}))
        m.properties = props
        m.body = from_json(req.get("body", {}))
        self.ids[expected] = i
        self.next += 1
        self.waiting = i
        self.sender.send(m)

    def on_settled(self, event):
        if event.link != self.sender:
            return
        st = event.delivery.remote_state
        if st == Delivery.ACCEPTED:
            return
        name = {Delivery.REJECTED: "rejected", Delivery.RELEASED: "released",
                Delivery.MODIFIED: "modified"}.get(st, "settled_no_outcome")
        cond = event.delivery.remote.condition
        emit("outcome", index=self.waiting, outcome=name, **common.condition_fields(cond))
        self.fail("request_%s" % name)

    def on_message(self, event):
        if event.link != self.receiver:
            return
        msg, dlv = event.message, event.delivery
        ap = msg.properties or {}
        corr = msg.correlation_id
        index = self.ids.get(corr)
        emit("response",
             index=index,
             request=self.requests[index] if index is not None else None,
             statusCode=to_json(ap.get("statusCode")),
             statusDescription=to_json(ap.get("statusDescription")),
             body=to_json(msg.body),
             correlation_id=to_json(corr),
             correlation_ok=index is not None and index == self.waiting,
             application_properties=to_json(dict(ap)))
        dlv.update(Delivery.ACCEPTED)
        dlv.settle()
        self.receiver.flow(1)
        self.responses += 1
        if index is None or index in self.answered or index != self.waiting:
            self.fail("unexpected_response")
            return
        self.answered.add(index)
        self.waiting = None
        self.pump()

    def on_link_error(self, event):
        emit("link_closed", **common.condition_fields(event.link.remote_condition))
        self.fail("link_closed")

    def counters(self):
        return {"requests": len(self.requests), "sent": self.next,
                "responses": self.responses, "waiting": self.waiting,
                "sender_credit": self.sender.credit if self.sender else None}

    def fail(self, why):
        if self.failure or self.ending.status is not None:
            return
        self.failure = why
        self.finish(reason=why)

    def finish(self, reason=None):
        if self.ending.status is not None:
            return
        ok = (self.failure is None and self.responses == len(self.requests)
              and len(self.answered) == len(self.requests))
        emit("done", ok=ok, reason=reason, **self.counters())
        self.ending.end(common.OK if ok else common.FAILED, [self.conn])


def load_requests(p, text):
    """The request list, or a usage error (exit status 2) through ``p``."""
    try:
        reqs = json.loads(text)
    except ValueError as e:
        p.error("--requests: not JSON: %s" % e)
    if isinstance(reqs, dict):
        reqs = [reqs]
    if not isinstance(reqs, list) or not all(isinstance(r, dict) for r in reqs):
        p.error("--requests: expected a JSON list of objects")
    for r in reqs:
        unknown = set(r) - REQUEST_KEYS
        if unknown:
            p.error("--requests: unknown keys %s (known: %s)"
                    % (sorted(unknown), sorted(REQUEST_KEYS)))
    return reqs


def main():
    p = common.argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_connection_args(p)
    # --port is required by the shared options; --url supplies it instead.
    for action in p._actions:
        if action.dest == "port":
            action.required = False
    p.add_argument("--url", help="amqp://HOST:PORT (or amqps://) instead of --host/--port")
    p.add_argument("--address", default="$management",
                   help="$management or _topo/0/<router-id>/$management")
    p.add_argument("--requests", help="JSON list of requests ('-' or absent: stdin)")
    args = p.parse_args()
    if args.url:
        u = urlparse(args.url)
        if u.scheme not in ("amqp", "amqps") or not u.port:
            p.error("--url: expected amqp://HOST:PORT or amqps://HOST:PORT")
        args.host = u.hostname or "127.0.0.1"
        args.port = u.port
        args.tls = args.tls or u.scheme == "amqps"
    if args.port is None:
        p.error("give --url or --port")
    text = sys.stdin.read() if args.requests in (None, "-") else args.requests
    requests = load_requests(p, text)
    h = Mgmt(args, requests)
    common.run(h, args.timeout)


if __name__ == "__main__":
    main()
