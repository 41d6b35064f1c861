#!/usr/bin/env python3
"""Sends test messages (common.make_message) and reports every outcome.

One sender link on one connection: to ``--address``, or with a null
target (``--anonymous``) and each message's ``to`` set to ``--address``
(anonymous relay). It sends ``--count`` messages of ``--size`` bytes as
fast as link credit allows, keeping at most ``--window`` unsettled
(0: credit is the only limit), pre-settled with ``--presettled``.

Lines:
  attached    the router answered the attach (``credit`` at that moment)
  no_credit   with ``--no-credit-for S``: credit stayed 0 for S seconds
  credit      the first credit (``after_s`` since the attach)
  probing / probes_done   with ``--probe-until FILE`` (see below)
  progress    every second: sent, settled, unsettled, max_unsettled, credit
  link_closed / transport_error / connection_closed   the router's doing
  done        sent, outcomes {accepted, rejected, released, modified},
              modified_failed, modified_undeliverable, settled_no_outcome,
              max_unsettled, elapsed_s, msgs_per_s, md5s (first 10 bodies)
              and ``ok``

``--probe-until FILE``: before the data, send one pre-settled probe
(common.make_probe) every 100 ms while there is credit, until FILE exists;
a test creates FILE once every receiver has seen a probe, i.e. once the
sender's router knows every receiver.

Exit status 0 when every message was sent and (unless pre-settled) every
outcome is one of ``--expect``; 1 otherwise; 3 on the hard timeout.
"""

import os

from proton import Delivery
from proton.handlers import MessagingHandler
from proton.reactor import AtMostOnce

import common
from common import emit, now

EXPECT = {
    "accepted": {"accepted"},
    "rejected": {"rejected"},
    "released": {"released"},
    "modified": {"modified"},
    "released-or-modified": {"released", "modified"},
    "any": {"accepted", "rejected", "released", "modified", "settled_no_outcome"},
}


class Send(common.FailOnErrors, MessagingHandler):
    def __init__(self, args):
        super().__init__(prefetch=0, auto_settle=True)
        self.a = args
        self.ending = common.Ending()
        self.conn = None
        self.sender = None
        self.tag = args.tag or "s%d" % os.getpid()
        self.sent = 0
        self.unsettled = 0
        self.max_unsettled = 0
        self.outcomes = {"accepted": 0, "rejected": 0, "released": 0, "modified": 0,
                         "settled_no_outcome": 0}
        self.modified_failed = 0
        self.modified_undeliverable = 0
        self.rejected_conditions = []
        self.md5s = []
        self.attached_at = None
        self.first_credit_at = None
        self.no_credit_checked = args.no_credit_for is None
        self.probing = args.probe_until is not None
        self.probes = 0
        self.started = None
        self.finished_sending = None
        self.failure = None
        self.started_at = now()

    # --- setup -------------------------------------------------------------

    def on_start(self, event):
        if self.a.container_id:
            event.container.container_id = self.a.container_id
        self.container = event.container
        self.conn = common.connect(event.container, self.a)
        opts = [AtMostOnce()] if self.a.presettled else None
        target = None if self.a.anonymous else self.a.address
        self.sender = event.container.create_sender(self.conn, target, options=opts)
        event.container.schedule(1.0, self)
        # A graceful end (with counts) shortly before the hard timeout.
        self.deadline = self.started_at + self.a.timeout - 1.5

    def on_connection_opened(self, event):
        caps = [str(x) for x in (event.connection.remote_offered_capabilities or [])]
        emit("opened", offered_capabilities=caps)

    def on_link_opened(self, event):
        if event.link != self.sender:
            return
        self.attached_at = now()
        emit("attached", credit=self.sender.credit,
             target=self.sender.remote_target.address)
        if self.a.no_credit_for is not None:
            self.container.schedule(self.a.no_credit_for, common.Later(self.no_credit_check))
        self.saw_credit()
        if self.probing:
            emit("probing", file=self.a.probe_until)
            self.container.schedule(0.0, common.Later(self.probe))
        self.pump()

    # --- credit and sending ------------------------------------------------

    def on_link_flow(self, event):
        if event.link == self.sender:
            self.saw_credit()
            self.pump()

    def on_sendable(self, event):
        self.saw_credit()
        self.pump()

    def saw_credit(self):
        if self.first_credit_at is not None or self.sender.credit <= 0:
            return
        self.first_credit_at = now()
        after = self.first_credit_at - (self.attached_at or self.first_credit_at)
        emit("credit", credit=self.sender.credit, after_s=round(after, 3))
        if not self.no_credit_checked:
            self.fail("credit_too_early", after_s=round(after, 3),
                      wanted_no_credit_for_s=self.a.no_credit_for)

    def no_credit_check(self):
        if self.no_credit_checked or self.failure:
            return
        self.no_credit_checked = True
        emit("no_credit", secs=self.a.no_credit_for, credit=self.sender.credit)
        self.pump()

    def probe(self):
        if not self.probing or self.ending.status is not None:
            return
        if os.path.exists(self.a.probe_until):
            self.probing = False
            emit("probes_done", probes=self.probes)
            self.pump()
            return
        if self.sender.credit > 0:
            to = self.a.address if self.a.anonymous else None
            dlv = self.sender.send(common.make_probe(self.probes, to=to))
            if not dlv.settled:
                dlv.settle()
            self.probes += 1
        self.container.schedule(0.1, common.Later(self.probe))

    def pump(self):
        if self.sender is None or self.failure or self.ending.status is not None:
            return
        if not self.no_credit_checked or self.probing:
            return
        if self.started is None and self.sender.credit > 0:
            self.started = now()
        to = self.a.address if self.a.anonymous else None
        # Bounded by the credit and the count.
        while (self.sent < self.a.count and self.sender.credit > 0
               and (self.a.window == 0 or self.unsettled < self.a.window)):
            m = common.make_message(self.tag, self.sent, self.a.size, self.a.kind, to=to,
                                    reply_to=self.a.reply_to)
            if len(self.md5s) < 10:
                self.md5s.append(common.body_md5(m))
            dlv = self.sender.send(m)
            self.sent += 1
            if self.a.presettled:
                if not dlv.settled:
                    dlv.settle()
            else:
                self.unsettled += 1
                self.max_unsettled = max(self.max_unsettled, self.unsettled)
        if self.sent == self.a.count and self.finished_sending is None:
            self.finished_sending = now()
        self.maybe_done()

    # --- outcomes ----------------------------------------------------------

    def on_settled(self, event):
        dlv = event.delivery
        if dlv.link != self.sender:
            return
        st = dlv.remote_state
        if st == Delivery.ACCEPTED:
            self.outcomes["accepted"] += 1
        elif st == Delivery.REJECTED:
            self.outcomes["rejected"] += 1
            c = dlv.remote.condition
            if c is not None and len(self.rejected_conditions) < 5:
                self.rejected_conditions.append(common.condition_fields(c))
        elif st == Delivery.RELEASED:
            self.outcomes["released"] += 1
        elif st == Delivery.MODIFIED:
            self.outcomes["modified"] += 1
            if dlv.remote.failed:
                self.modified_failed += 1
            if dlv.remote.undeliverable:
                self.modified_undeliverable += 1
        else:
            self.outcomes["settled_no_outcome"] += 1
        self.unsettled -= 1
        self.pump()

    def settled(self):
        return sum(self.outcomes.values())

    def maybe_done(self):
        if self.sent < self.a.count:
            return
        if not self.a.presettled and self.settled() < self.sent:
            return
        self.done()

    # --- errors, progress, end ----------------------------------------------

    def on_link_error(self, event):
        if event.link == self.sender:
            emit("link_closed", **common.condition_fields(event.link.remote_condition))
            self.fail("link_closed")

    def on_link_closing(self, event):
        if event.link == self.sender and self.ending.status is None:
            emit("link_closed", **common.condition_fields(event.link.remote_condition))
            self.fail("link_closed")

    def on_timer_task(self, event):
        # Progress, and the graceful deadline.
        if self.ending.status is not None:
            return
        emit("progress", **self.counters())
        if now() >= self.deadline:
            self.fail("deadline")
            return
        self.container.schedule(min(1.0, max(0.05, self.deadline - now())), self)

    def counters(self):
        return {
            "sent": self.sent,
            "settled": self.settled(),
            "unsettled": self.unsettled,
            "max_unsettled": self.max_unsettled,
            "credit": self.sender.credit if self.sender is not None else None,
            "probes": self.probes,
        }

    def fail(self, why, **fields):
        if self.failure or self.ending.status is not None:
            return
        self.failure = why
        self.done(reason=why, **fields)

    def done(self, reason=None, **fields):
        if self.ending.status is not None:
            return
        elapsed = None
        rate = None
        if self.started is not None:
            end = self.finished_sending if self.a.presettled else now()
            elapsed = max((end or now()) - self.started, 1e-9)
            rate = round(self.sent / elapsed, 1)
            elapsed = round(elapsed, 3)
        allowed = EXPECT[self.a.expect]
        got = {k for k, v in self.outcomes.items() if v}
        if self.a.presettled:
            ok = self.sent == self.a.count
        else:
            ok = (self.sent == self.a.count and self.settled() == self.sent
                  and got <= allowed)
        ok = ok and self.failure is None
        first_credit = None
        if self.first_credit_at is not None and self.attached_at is not None:
            first_credit = round(self.first_credit_at - self.attached_at, 3)
        emit("done", ok=ok, reason=reason, tag=self.tag, expected=self.a.expect,
             outcomes=self.outcomes, modified_failed=self.modified_failed,
             modified_undeliverable=self.modified_undeliverable,
             rejected_conditions=self.rejected_conditions, elapsed_s=elapsed,
             msgs_per_s=rate, md5s=self.md5s, first_credit_after_s=first_credit,
             presettled=self.a.presettled, **self.counters(), **fields)
        self.ending.end(common.OK if ok else common.FAILED, [self.conn])


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--address", required=True)
    p.add_argument("--anonymous", action="store_true",
                   help="null target; each message's `to` is --address")
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--kind", choices=list(common.KINDS) + ["mixed"], default="data")
    p.add_argument("--tag", help="sender tag in the messages (default s<pid>)")
    p.add_argument("--presettled", action="store_true")
    p.add_argument("--window", type=int, default=0,
                   help="max unsettled deliveries (0: only credit limits)")
    p.add_argument("--expect", choices=sorted(EXPECT), default="accepted")
    p.add_argument("--no-credit-for", type=float,
                   help="fail if credit arrives within this many seconds of "
                        "the attach")
    p.add_argument("--probe-until", help="send probes until this file exists")
    p.add_argument("--reply-to", help="reply_to of every message")
    args = p.parse_args()
    h = Send(args)
    common.run(h, args.timeout)


if __name__ == "__main__":
    main()
