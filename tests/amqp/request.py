#!/usr/bin/env python3
"""Request/reply through a dynamic reply address.

Attaches a receiver with a dynamic source (the router assigns its
address), then a sender to ``--address`` (a service: e.g. receive.py
--reply on another router), and sends ``--count`` requests
(common.make_message) whose reply_to is the assigned address, at most
``--window`` outstanding. Every reply must come back to the dynamic
address with the request's correlation id and content intact.

Lines:
  reply_address   the address the router assigned
  credit          the first credit of the request sender
  reply           tag, seq, ok, bad (unless --quiet)
  done            sent, replies, bad, duplicates, outcomes, reply_address, ok

Exit status 0 when every request got exactly one intact reply; 1
otherwise; 3 on the hard timeout.
"""

import os

from proton import Delivery
from proton.handlers import MessagingHandler

import common
from common import emit, now


class Request(common.FailOnErrors, MessagingHandler):
    def __init__(self, args):
        super().__init__(prefetch=0, auto_accept=False)
        self.a = args
        self.ending = common.Ending()
        self.tag = args.tag or "r%d" % os.getpid()
        self.conn = None
        self.receiver = None
        self.sender = None
        self.reply_address = None
        self.sent = 0
        self.replies = 0
        self.bad = 0
        self.bad_examples = []
        self.duplicates = 0
        self.seen = set()
        self.outcomes = {}
        self.failure = None
        self.started_at = now()
        self.first_sent_at = None

    def on_start(self, event):
        self.container = event.container
        self.conn = common.connect(event.container, self.a)
        self.receiver = event.container.create_receiver(self.conn, None, dynamic=True)
        self.deadline = self.started_at + self.a.timeout - 1.5
        event.container.schedule(0.2, self)

    def on_link_opened(self, event):
        if event.link == self.receiver:
            self.reply_address = self.receiver.remote_source.address
            emit("reply_address", address=self.reply_address)
            if not self.reply_address:
                self.fail("no_dynamic_address")
                return
            self.receiver.flow(self.a.window)
            self.sender = event.container.create_sender(self.conn, self.a.address)
        elif event.link == self.sender:
            emit("attached", credit=self.sender.credit)

    def on_sendable(self, event):
        if event.link == self.sender:
            self.pump()

    def pump(self):
        if self.sender is None or self.ending.status is not None:
            return
        if self.first_sent_at is None and self.sender.credit > 0:
            emit("credit", credit=self.sender.credit)
            self.first_sent_at = now()
        # Bounded by credit, count and window.
        while (self.sender.credit > 0 and self.sent < self.a.count
               and self.sent - self.replies < self.a.window):
            m = common.make_message(self.tag, self.sent, self.a.size, self.a.kind,
                                    reply_to=self.reply_address)
            self.sender.send(m)
            self.sent += 1

    def on_settled(self, event):
        if event.link == self.sender:
            st = event.delivery.remote_state
            name = {Delivery.ACCEPTED: "accepted", Delivery.REJECTED: "rejected",
                    Delivery.RELEASED: "released",
                    Delivery.MODIFIED: "modified"}.get(st, "settled_no_outcome")
            self.outcomes[name] = self.outcomes.get(name, 0) + 1
            self.maybe_done()

    def on_message(self, event):
        if event.link != self.receiver:
            return
        msg, dlv = event.message, event.delivery
        props = msg.properties or {}
        key = (props.get("tag"), props.get("seq"))
        bad = common.check_message(msg, to=self.reply_address)
        if props.get("tag") != self.tag:
            bad.append("tag")
        if key in self.seen:
            self.duplicates += 1
        self.seen.add(key)
        self.replies += 1
        if bad:
            self.bad += 1
            if len(self.bad_examples) < 5:
                self.bad_examples.append({"seq": key[1], "bad": bad})
        if not self.a.quiet:
            emit("reply", tag=key[0], seq=key[1], ok=not bad, bad=bad)
        dlv.update(Delivery.ACCEPTED)
        dlv.settle()
        self.receiver.flow(1)
        self.pump()
        self.maybe_done()

    def maybe_done(self):
        if self.replies >= self.a.count and sum(self.outcomes.values()) >= self.sent:
            self.done()

    def on_link_error(self, event):
        emit("link_closed", **common.condition_fields(event.link.remote_condition))
        self.fail("link_closed")

    def on_timer_task(self, event):
        if self.ending.status is not None:
            return
        if now() >= self.deadline:
            self.fail("deadline")
            return
        self.container.schedule(0.2, self)

    def counters(self):
        return {"sent": self.sent, "replies": self.replies, "bad": self.bad,
                "duplicates": self.duplicates}

    def fail(self, why):
        if self.failure or self.ending.status is not None:
            return
        self.failure = why
        self.done(reason=why)

    def done(self, reason=None):
        if self.ending.status is not None:
            return
        ok = (self.failure is None and self.replies == self.a.count and self.bad == 0
              and self.duplicates == 0
              and self.outcomes.get("accepted", 0) == self.sent)
        emit("done", ok=ok, reason=reason, reply_address=self.reply_address,
             outcomes=self.outcomes, bad_examples=self.bad_examples, **self.counters())
        self.ending.end(common.OK if ok else common.FAILED, [self.conn])


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--address", required=True, help="where the requests go")
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--kind", choices=list(common.KINDS) + ["mixed"], default="mixed")
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--tag")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    h = Request(args)
    common.run(h, args.timeout)


if __name__ == "__main__":
    main()
