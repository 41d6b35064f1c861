#!/usr/bin/env python3
"""Receives test messages, checks each, and settles them as told.

One receiver link on one connection: from ``--address``, or with a
dynamic source (``--dynamic``: the router picks the address, printed in
the ``attached`` line). Link credit is ``--credit``, given at the attach
and topped up one by one as messages are handled. Each message is checked
against what common.make_message makes for its own tag/seq (content and
properties intact) and for order per sender tag.

Handling (``--delay-ms``: one message per that many ms, a slow
receiver): settle with ``--disposition`` accept, reject, release,
modify (modified, delivery-failed) or none (never settle: hold).

It stops after ``--count`` data messages (probes, see common.make_probe,
are accepted and counted apart), when ``--stop-file`` exists, or after
``--idle`` seconds without a message; then, with ``--drain N``, it adds N
credit in drain mode and waits for the router to use or return it all;
with ``--detach-after K`` it detaches the link after K messages instead
(unsettled ones stay unsettled) and stays connected ``--linger`` seconds.
``--reply``: answer each message to its reply_to through an anonymous
sender (the reply is the message itself, ``to`` = the reply_to).

Lines:
  attached   address (the dynamic one too), credit
  probe      each probe received
  message    tag, seq, ok, bad (fields that differ), size, md5 (unless --quiet)
  detached / draining / drained (drained, credit, secs)
  link_closed / transport_error / connection_closed   the router's doing
  done       received, probes, tags {tag: {count, first, last,
             out_of_order, gaps}}, duplicates, bad, dispositions, md5s
             (first 10), address, drained, replies, ok

Exit status 0 when it stopped as asked with every message intact, no
duplicate, in order per tag (``--allow-gaps`` tolerates missing seqs, for
pre-settled traffic); 1 otherwise; 3 on the hard timeout.
"""

import os

from proton import Condition, Delivery, Message
from proton.handlers import MessagingHandler

import common
from common import emit, now

# The error condition of a rejection (the sender reports it back).
REJECT_CONDITION = "tether-test:rejected"


class Receive(common.FailOnErrors, MessagingHandler):
    def __init__(self, args):
        super().__init__(prefetch=0, auto_accept=False)
        self.a = args
        self.ending = common.Ending()
        self.conn = None
        self.receiver = None
        self.replier = None
        self.address = None
        self.attached = False
        self.received = 0
        self.probes = 0
        self.aborted = 0
        self.tags = {}
        self.seen = set()
        self.duplicates = 0
        self.bad = 0
        self.bad_examples = []
        self.md5s = []
        self.bytes = 0
        self.dispositions = {"accepted": 0, "rejected": 0, "released": 0, "modified": 0,
                             "held": 0}
        self.pending = []  # (delivery, message) waiting for the slow handler
        self.handler_busy = False
        self.stopping = False
        self.detached = False
        self.drain = None  # {"credit_before", "started", "drained", ...}
        self.replies = {"sent": 0, "accepted": 0, "other": 0, "queued": 0}
        self.reply_queue = []
        self.last_message_at = now()
        self.first_message_at = None
        self.failure = None
        self.started_at = now()

    # --- setup -------------------------------------------------------------

    def on_start(self, event):
        self.container = event.container
        if self.a.container_id:
            event.container.container_id = self.a.container_id
        self.conn = common.connect(event.container, self.a)
        if self.a.dynamic:
            self.receiver = event.container.create_receiver(self.conn, None, dynamic=True)
        else:
            self.receiver = event.container.create_receiver(self.conn, self.a.address)
        if self.a.reply:
            self.replier = event.container.create_sender(self.conn, None)
        self.deadline = self.started_at + self.a.timeout - 1.5
        event.container.schedule(0.05, self)

    def on_connection_opened(self, event):
        caps = [str(x) for x in (event.connection.remote_offered_capabilities or [])]
        emit("opened", offered_capabilities=caps)

    def on_link_opened(self, event):
        if event.link != self.receiver:
            return
        src = self.receiver.remote_source
        self.address = src.address if src is not None else None
        self.attached = True
        if self.a.credit > 0:
            self.receiver.flow(self.a.credit)
        emit("attached", address=self.address, dynamic=self.a.dynamic,
             credit=self.a.credit)
        self.check_stop()

    # --- receiving ---------------------------------------------------------

    def on_message(self, event):
        if event.link != self.receiver:
            return
        msg, dlv = event.message, event.delivery
        self.last_message_at = now()
        if common.is_probe(msg):
            self.probes += 1
            emit("probe", n=msg.properties.get("n"))
            if not dlv.settled:
                dlv.update(Delivery.ACCEPTED)
                dlv.settle()
            self.top_up()
            return
        if self.first_message_at is None:
            self.first_message_at = now()
        self.received += 1
        props = msg.properties or {}
        tag, seq = props.get("tag"), props.get("seq")
        bad = common.check_message(msg, to=self.a.check_to)
        if bad:
            self.bad += 1
            if len(self.bad_examples) < 5:
                self.bad_examples.append({"tag": tag, "seq": seq, "bad": bad})
        self.track_order(tag, seq)
        size = common.body_len(msg)
        if size:
            self.bytes += size
        md5 = common.body_md5(msg)
        if len(self.md5s) < 10:
            self.md5s.append(md5)
        if not self.a.quiet:
            emit("message", tag=tag, seq=seq, ok=not bad, bad=bad, size=size, md5=md5,
                 settled=dlv.settled)
        if self.a.reply:
            self.send_reply(msg)
        self.pending.append(dlv)
        if self.a.detach_after is not None and self.received >= self.a.detach_after:
            # Whatever is pending stays unsettled.
            self.detach()
            return
        if self.a.delay_ms <= 0:
            self.handle_pending()
        elif not self.handler_busy:
            self.handler_busy = True
            self.container.schedule(self.a.delay_ms / 1000.0, common.Later(self.slow_tick))

    def track_order(self, tag, seq):
        key = (tag, seq)
        if key in self.seen:
            self.duplicates += 1
        self.seen.add(key)
        t = self.tags.setdefault(str(tag), {"count": 0, "first": seq, "last": None,
                                            "out_of_order": 0, "gaps": 0})
        t["count"] += 1
        if t["last"] is not None and isinstance(seq, int):
            if seq <= t["last"]:
                t["out_of_order"] += 1
            elif seq > t["last"] + 1:
                t["gaps"] += seq - t["last"] - 1
        if isinstance(seq, int) and (t["last"] is None or seq > t["last"]):
            t["last"] = seq

    def on_aborted(self, event):
        self.aborted += 1

    def slow_tick(self):
        self.handler_busy = False
        self.handle_pending(one=True)
        if self.pending and not self.detached:
            self.handler_busy = True
            self.container.schedule(self.a.delay_ms / 1000.0, common.Later(self.slow_tick))

    def handle_pending(self, one=False):
        while self.pending:
            dlv = self.pending.pop(0)
            self.settle(dlv)
            self.top_up()
            if one:
                break
        self.check_stop()

    def settle(self, dlv):
        d = self.a.disposition
        if dlv.settled or self.detached:
            # Pre-settled by the sender, or the link is gone.
            return
        if d == "none":
            self.dispositions["held"] += 1
            return
        if d == "accept":
            dlv.update(Delivery.ACCEPTED)
            self.dispositions["accepted"] += 1
        elif d == "reject":
            dlv.local.condition = Condition(REJECT_CONDITION, "rejected by the test receiver")
            dlv.update(Delivery.REJECTED)
            self.dispositions["rejected"] += 1
        elif d == "release":
            dlv.update(Delivery.RELEASED)
            self.dispositions["released"] += 1
        elif d == "modify":
            dlv.local.failed = True
            dlv.local.undeliverable = False
            dlv.update(Delivery.MODIFIED)
            self.dispositions["modified"] += 1
        dlv.settle()

    def top_up(self):
        """One credit back for one message handled, while still receiving."""
        if self.stopping or self.detached or self.drain is not None:
            return
        if self.a.count and self.received >= self.a.count:
            return
        if self.a.credit > 0:
            self.receiver.flow(1)

    # --- replies -----------------------------------------------------------

    def send_reply(self, msg):
        if not msg.reply_to:
            self.replies["other"] += 1
            return
        r = Message()
        r.body = msg.body
        r.inferred = isinstance(msg.body, (bytes, bytearray))
        for f in ("id", "correlation_id", "subject", "content_type", "group_id",
                  "group_sequence", "creation_time", "priority", "durable"):
            setattr(r, f, getattr(msg, f))
        r.properties = msg.properties
        ann = msg.annotations or {}
        if common.ANNOTATION in ann:
            r.annotations = {common.ANNOTATION: ann[common.ANNOTATION]}
        r.address = msg.reply_to
        self.reply_queue.append(r)
        self.replies["queued"] = len(self.reply_queue)
        self.flush_replies()

    def flush_replies(self):
        while self.reply_queue and self.replier is not None and self.replier.credit > 0:
            self.replier.send(self.reply_queue.pop(0))
            self.replies["sent"] += 1
        self.replies["queued"] = len(self.reply_queue)

    def on_sendable(self, event):
        if event.link == self.replier:
            self.flush_replies()

    def on_settled(self, event):
        if event.link == self.replier:
            if event.delivery.remote_state == Delivery.ACCEPTED:
                self.replies["accepted"] += 1
            else:
                self.replies["other"] += 1

    # --- stopping, detaching, draining ---------------------------------------

    def check_stop(self):
        if self.stopping or self.ending.status is not None or self.receiver is None:
            return
        if self.detached:
            return  # ends after --linger
        if not self.attached:
            return
        reached = False
        if self.a.count and self.received >= self.a.count and not self.pending:
            reached = True
        if self.a.count == 0 and self.a.drain is not None and self.a.stop_file is None \
                and self.a.idle is None:
            reached = True
        if self.a.stop_file and os.path.exists(self.a.stop_file):
            reached = True
        if self.a.idle is not None and now() - self.last_message_at >= self.a.idle:
            reached = True
        if self.a.reply and self.reply_queue:
            reached = False
        if not reached:
            return
        self.stopping = True
        if self.a.drain is not None and not self.detached:
            self.start_drain()
        else:
            self.done()

    def start_drain(self):
        self.receiver.drain(self.a.drain)
        self.drain = {"credit_before": self.receiver.credit, "started": now(),
                      "drained": 0, "received_during": 0, "received_before": self.received}
        emit("draining", credit=self.receiver.credit, added=self.a.drain)
        self.check_drain()

    def check_drain(self):
        if self.drain is None or "secs" in self.drain:
            return
        self.drain["drained"] += self.receiver.drained()
        if self.receiver.draining() or self.receiver.credit > 0:
            if now() - self.drain["started"] > self.a.drain_timeout:
                self.drain["secs"] = None
                emit("drain_timeout", credit=self.receiver.credit,
                     drained=self.drain["drained"])
                self.fail("drain_timeout")
            return
        self.drain["secs"] = round(now() - self.drain["started"], 3)
        self.drain["received_during"] = self.received - self.drain["received_before"]
        self.drain["credit_after"] = self.receiver.credit
        emit("drained", drained=self.drain["drained"], credit=self.receiver.credit,
             secs=self.drain["secs"], received_during=self.drain["received_during"])
        self.done()

    def on_link_flow(self, event):
        if event.link == self.receiver:
            self.check_drain()
        elif event.link == self.replier:
            self.flush_replies()

    def detach(self):
        if self.detached:
            return
        self.detached = True
        held = sum(1 for d in self.pending if not d.settled)
        self.dispositions["held"] += held
        self.receiver.close()
        emit("detached", received=self.received, unsettled_pending=held)
        self.container.schedule(self.a.linger, common.Later(self.done))

    # --- errors, timer, end ----------------------------------------------

    def on_link_error(self, event):
        if event.link == self.receiver or event.link == self.replier:
            emit("link_closed", **common.condition_fields(event.link.remote_condition))
            self.fail("link_closed")

    def on_link_closing(self, event):
        if (event.link == self.receiver or event.link == self.replier) \
                and self.ending.status is None:
            emit("link_closed", **common.condition_fields(event.link.remote_condition))
            self.fail("link_closed")

    def on_timer_task(self, event):
        if self.ending.status is not None:
            return
        if now() >= self.deadline:
            self.fail("deadline")
            return
        self.check_stop()
        self.check_drain()
        self.container.schedule(0.05, self)

    def fail(self, why):
        if self.failure or self.ending.status is not None:
            return
        self.failure = why
        self.done(reason=why)

    def counters(self):
        return {"received": self.received, "probes": self.probes,
                "duplicates": self.duplicates, "bad": self.bad}

    def done(self, reason=None):
        if self.ending.status is not None:
            return
        in_order = all(t["out_of_order"] == 0 for t in self.tags.values())
        gaps = sum(t["gaps"] for t in self.tags.values())
        ok = (self.failure is None and self.bad == 0 and self.duplicates == 0
              and in_order and self.aborted == 0 and (gaps == 0 or self.a.allow_gaps))
        if self.a.count and not self.detached and self.received < self.a.count \
                and not (self.a.stop_file or self.a.idle):
            ok = False
        if self.drain is not None and self.drain.get("secs") is None:
            ok = False
        elapsed = None
        if self.first_message_at is not None:
            elapsed = round(now() - self.first_message_at, 3)
        drain = None
        if self.drain is not None:
            drain = {k: v for k, v in self.drain.items() if k != "started"}
        emit("done", ok=ok, reason=reason, address=self.address, tags=self.tags,
             in_order=in_order, gaps=gaps, aborted=self.aborted,
             bad_examples=self.bad_examples, dispositions=self.dispositions,
             md5s=self.md5s, bytes=self.bytes, elapsed_s=elapsed, drain=drain,
             replies=self.replies if self.a.reply else None, detached=self.detached,
             **self.counters())
        self.ending.end(common.OK if ok else common.FAILED, [self.conn])


def main():
    p = common.parser(__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--address")
    g.add_argument("--dynamic", action="store_true")
    p.add_argument("--count", type=int, default=0,
                   help="data messages to receive (0: until --stop-file/--idle)")
    p.add_argument("--credit", type=int, default=100)
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--disposition", choices=["accept", "reject", "release", "modify", "none"],
                   default="accept")
    p.add_argument("--stop-file")
    p.add_argument("--idle", type=float)
    p.add_argument("--drain", type=int, help="at the end: drain with this much more credit")
    p.add_argument("--drain-timeout", type=float, default=5.0)
    p.add_argument("--detach-after", type=int)
    p.add_argument("--linger", type=float, default=2.0)
    p.add_argument("--reply", action="store_true")
    p.add_argument("--check-to", help="every message's `to` must be this")
    p.add_argument("--allow-gaps", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no `message` lines")
    args = p.parse_args()
    h = Receive(args)
    common.run(h, args.timeout)


if __name__ == "__main__":
    main()
