#!/usr/bin/env python3
"""Opens one AMQP connection and reports whether the router let it in.

Prints ``opened`` (with the router's container id and offered
capabilities) once the router's Open arrives, then attaches a receiver
(``--attach ADDRESS``, default ``connect-check``) and prints ``attached``
when the router answers, proving the connection is usable; or
``refused`` (with the condition, e.g. ``amqp:unauthorized-access``) if
the connection fails or is closed before that. Then ``done``.

Exit status: 0 if the result matches ``--expect`` (``open`` or
``refused``), 1 if not, 3 on the hard timeout.

    connect.py --port 5672 --sasl plain --user alice --password secret --expect open
    connect.py --port 5671 --tls --ca ca.pem --expect refused
"""

from proton.handlers import MessagingHandler
from proton.reactor import Container

import common
from common import emit


class Connect(MessagingHandler):
    def __init__(self, args):
        super().__init__(prefetch=0)
        self.args = args
        self.ending = common.Ending()
        self.conn = None
        self.opened = None
        self.attached = False
        self.result = None

    def on_start(self, event):
        if self.args.container_id:
            event.container.container_id = self.args.container_id
        self.conn = common.connect(event.container, self.args)

    def on_connection_opened(self, event):
        c = event.connection
        caps = [str(x) for x in (c.remote_offered_capabilities or [])]
        self.opened = {
            "container_id": c.remote_container,
            "offered_capabilities": caps,
            "properties": {str(k): str(v) for k, v in (c.remote_properties or {}).items()},
        }
        emit("opened", **self.opened)
        if self.args.no_attach:
            self.finish("open")
        else:
            event.container.create_receiver(c, self.args.attach)

    def on_link_opened(self, event):
        self.attached = True
        emit("attached", address=event.link.remote_source.address)
        self.finish("open")

    def on_transport_error(self, event):
        self.refused(event.transport.condition, "transport")

    def on_connection_error(self, event):
        self.refused(event.connection.remote_condition, "connection close")

    def on_link_error(self, event):
        self.refused(event.link.remote_condition, "link detach")

    def on_disconnected(self, event):
        self.refused(event.transport.condition, "disconnected")

    def on_transport_closed(self, event):
        self.refused(event.transport.condition, "transport closed")

    def refused(self, cond, how):
        if self.result is not None:
            return
        emit("refused", how=how, opened=self.opened is not None,
             **common.condition_fields(cond))
        self.finish("refused")

    def finish(self, result):
        if self.result is not None:
            return
        self.result = result
        ok = result == self.args.expect
        emit("done", result=result, expected=self.args.expect, ok=ok,
             opened=self.opened is not None, attached=self.attached)
        self.ending.end(common.OK if ok else common.FAILED, [self.conn])


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--expect", choices=["open", "refused"], default="open")
    p.add_argument("--attach", default="connect-check",
                   help="address of the receiver attached after the Open")
    p.add_argument("--no-attach", action="store_true",
                   help="stop at the Open, attach nothing")
    args = p.parse_args()
    common.start_watchdog(args.timeout)
    h = Connect(args)
    try:
        Container(h).run()
    except Exception as e:  # a Proton error is a result, not a crash
        emit("error", error=repr(e))
        if h.result is None:
            h.refused(None, "exception")
    h.ending.exit()


if __name__ == "__main__":
    main()
