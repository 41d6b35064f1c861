#!/usr/bin/env python3
"""A reference AMQP message router in one Proton process, for checking the
client programs (and tests/tests/amqp.rs) without tether.

It listens on every ``--port`` (each port stands for one router of a
network; they all share one routing table, so "another router" is
another port) and routes like the tether contract says, in miniature:

- the Open offers ANONYMOUS-RELAY; SASL ANONYMOUS or none (no PLAIN, no
  TLS: those cases need the real router);
- a client sender for address A gets ``--window`` credit only while a
  receiver for A exists (an anonymous sender always has credit); credit
  is returned one by one as messages are passed on, so at most a window
  per sender is queued here;
- anycast: a message goes to the receiver of its address with credit and
  the fewest unsettled deliveries (balanced); addresses starting with a
  ``--multicast`` prefix go to every receiver (pre-settled);
- the receiver's outcome (accepted, rejected with its condition,
  released, modified) is passed back to the sender; a receiver that
  detaches or disconnects with unsettled deliveries has them
  modified (delivery-failed) back to their senders;
- a dynamic source gets the address ``_mini/temp.N``;
- drain: a receiver draining with nothing queued for it gets its credit
  back at once.

Prints ``{"event": "listening", "ports": [...]}`` when ready; runs until
killed or ``--timeout``.
"""

import argparse

from proton import Delivery, Endpoint, symbol
from proton.handlers import MessagingHandler
from proton.reactor import Container

import common
from common import emit


def active(link):
    return bool(link.state & Endpoint.LOCAL_ACTIVE and link.state & Endpoint.REMOTE_ACTIVE)


class MiniRouter(MessagingHandler):
    def __init__(self, args):
        super().__init__(prefetch=0, auto_accept=False, auto_settle=False)
        self.a = args
        self.consumers = {}   # address -> [sender link]
        self.producers = {}   # address -> [receiver link]  (None: anonymous)
        self.queues = {}      # address -> [(message, incoming delivery)]
        self.outstanding = {}  # outgoing delivery -> incoming delivery
        self.per_link = {}    # sender link -> set(outgoing deliveries)
        self.next_dynamic = 0
        self.turn = 0

    def on_start(self, event):
        for p in self.a.port:
            event.container.listen("127.0.0.1:%d" % p)
        emit("listening", ports=self.a.port)

    # --- endpoints ---------------------------------------------------------

    def on_connection_opening(self, event):
        event.connection.offered_capabilities = [symbol("ANONYMOUS-RELAY")]

    def on_link_opening(self, event):
        link = event.link
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        if link.is_sender:
            src = link.remote_source
            if src.dynamic:
                self.next_dynamic += 1
                link.source.address = "_mini/temp.%d" % self.next_dynamic
                link.source.dynamic = True
            addr = link.source.address
            self.consumers.setdefault(addr, []).append(link)
            self.per_link[link] = set()
            for p in self.producers.get(addr, []):
                self.grant(p)
        else:
            addr = link.remote_target.address
            self.producers.setdefault(addr, []).append(link)

    def on_link_opened(self, event):
        link = event.link
        if link.is_receiver:
            addr = link.remote_target.address
            if addr is None or self.consumers.get(addr):
                self.grant(link)

    def grant(self, link):
        if link.credit == 0 and link.state & Endpoint.LOCAL_ACTIVE:
            link.flow(self.a.window)

    def forget(self, link):
        if link.is_sender:
            addr = link.source.address
            if link in self.consumers.get(addr, []):
                self.consumers[addr].remove(link)
            for out in self.per_link.pop(link, set()):
                inc = self.outstanding.pop(out, None)
                if inc is not None and not inc.settled:
                    inc.local.failed = True
                    inc.update(Delivery.MODIFIED)
                    inc.settle()
        else:
            addr = link.remote_target.address
            if link in self.producers.get(addr, []):
                self.producers[addr].remove(link)

    def on_link_closing(self, event):
        self.forget(event.link)

    def on_link_error(self, event):
        self.forget(event.link)
        event.link.close()

    def on_link_closed(self, event):
        self.forget(event.link)

    def forget_connection(self, conn):
        if conn is None:
            return
        link = conn.link_head(0)
        while link is not None:  # bounded by the connection's links
            self.forget(link)
            link = link.next(0)

    def on_disconnected(self, event):
        self.forget_connection(event.connection)

    def on_connection_closing(self, event):
        self.forget_connection(event.connection)

    def on_connection_closed(self, event):
        self.forget_connection(event.connection)

    def on_connection_error(self, event):
        self.forget_connection(event.connection)

    def on_transport_error(self, event):
        pass

    # --- messages ------------------------------------------------------------

    def on_message(self, event):
        msg, dlv, link = event.message, event.delivery, event.link
        addr = link.remote_target.address or msg.address
        if addr is not None and any(addr.startswith(p) for p in self.a.multicast):
            for c in list(self.consumers.get(addr, [])):
                if c.credit > 0:
                    out = c.send(msg)
                    out.settle()
            if not dlv.settled:
                dlv.update(Delivery.ACCEPTED)
            dlv.settle()
            link.flow(1)
            return
        self.queues.setdefault(addr, []).append((msg, dlv, link))
        self.dispatch(addr)

    def dispatch(self, addr):
        q = self.queues.get(addr, [])
        # Bounded by the queue length.
        while q:
            ready = [c for c in self.consumers.get(addr, []) if c.credit > 0 and active(c)]
            if not ready:
                break
            # Fewest unsettled first; ties take turns.
            self.turn += 1
            n = len(ready)
            c = min(enumerate(ready),
                    key=lambda ic: (len(self.per_link.get(ic[1], ())),
                                    (ic[0] - self.turn) % n))[1]
            msg, inc, producer = q.pop(0)
            out = c.send(msg)
            if inc.settled:
                out.settle()
            else:
                self.outstanding[out] = inc
                self.per_link[c].add(out)
            if producer.state & Endpoint.LOCAL_ACTIVE:
                producer.flow(1)
        for c in self.consumers.get(addr, []):
            if c.drain_mode and c.credit > 0 and not q:
                c.drained()

    def on_link_flow(self, event):
        link = event.link
        if link.is_sender:
            self.dispatch(link.source.address)

    def on_delivery(self, event):
        out = event.delivery
        if not out.link.is_sender or not out.settled:
            return
        inc = self.outstanding.pop(out, None)
        self.per_link.get(out.link, set()).discard(out)
        if inc is not None and not inc.settled:
            st = out.remote_state
            if st == Delivery.MODIFIED:
                inc.local.failed = out.remote.failed
                inc.local.undeliverable = out.remote.undeliverable
            if st == Delivery.REJECTED:
                inc.local.condition = out.remote.condition
            inc.update(st)
            inc.settle()
        out.settle()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, action="append", required=True)
    p.add_argument("--multicast", action="append", default=["multi"])
    p.add_argument("--window", type=int, default=100)
    p.add_argument("--timeout", type=float, default=600.0)
    args = p.parse_args()
    common.start_watchdog(args.timeout)
    Container(MiniRouter(args)).run()


if __name__ == "__main__":
    main()
