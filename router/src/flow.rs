//! TCP flows carried over one inter-router link.
//!
//! A flow joins one TCP socket on this router (the client's at the ingress,
//! the service's at the egress) to a pair of AMQP links on one inter-router
//! link: `<flow>/c2s` (client to service) and `<flow>/s2c` (back). One task
//! per flow ([`Flow::poll_io`]) reads its socket straight into the link's
//! outgoing buffer while it has credit and writes queued incoming bytes to
//! the socket; the link driver hands incoming data to the flow
//! ([`Flow::on_data`]) and tries the socket write at once, so the common
//! case needs no wake-up of the flow task at all.
//!
//! Flow control: each incoming transfer is one delivery of at most a
//! quarter window (16-256 KiB, announced in Open); the receiver grants
//! `window / delivery size` deliveries of link credit and
//! returns credit only for deliveries written to its socket, so a flow
//! whose reader stalls holds at most its window in each router, and the
//! link (shared by all flows) never blocks on it.
//!
//! Ends: a socket EOF becomes a Detach (closed) of our sending link, and
//! arrives at the far end as a half-close (FIN); a socket error or a Detach
//! with an error becomes an abortive close (RST) on the other side.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use tether_protocol::types::definitions::Role;
use tether_protocol::DataTransferSlot;
use tether_tcp::{FlowSocket, WriteQueue};

use crate::link::{
    FlowRef, FlowRoute, Link, COND_FLOW_ABORTED, COND_RESET, COND_SERVICE_UNAVAILABLE,
    OUT_HIGH_WATER,
};
use crate::reconfig::FlowStats;

/// Direction of one of a flow's two AMQP links, seen from this router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// We send: socket bytes go out on this link.
    Send,
    /// We receive: bytes from this link go to the socket.
    Recv,
}

/// Owed credit for this many written bytes is returned at once (bulk
/// flows: 64 KiB batches keep the sender streaming).
const CREDIT_BYTES_NOW: usize = 64 * 1024;

/// How long an egress router waits for a service to accept a connection.
const SERVICE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One TCP flow's state on this router.
pub struct Flow {
    pub key: u64,
    pub name: String,
    pub address: String,
    pub link: Rc<Link>,
    /// Which router this flow's service side is on (for balancing counts).
    pub dest_router: String,
    tx_handle: u32,
    rx_handle: u32,
    socket: RefCell<Option<Rc<FlowSocket>>>,
    st: RefCell<FlowState>,
    waker: RefCell<Option<Waker>>,
    finished: Cell<bool>,
    /// This flow's address's counters (management and metrics).
    stats: Rc<FlowStats>,
    opened_at: tokio::time::Instant,
}

#[derive(Default)]
struct FlowState {
    remote_tx: Option<u32>,
    remote_rx: Option<u32>,
    // Socket to network.
    credit: u32,
    delivery_count: u32,
    tx_local_detached: bool,
    tx_remote_detached: bool,
    // Network to socket.
    queue: WriteQueue,
    rx_received: u32,
    rx_outstanding: u32,
    credit_owed: u32,
    credit_owed_bytes: usize,
    credit_deferred: bool,
    rx_eof: bool,
    write_shut: bool,
    rx_local_detached: bool,
    rx_remote_detached: bool,
    aborted: Option<String>,
}

impl Flow {
    fn new(link: &Rc<Link>, name: String, address: String, dest_router: String) -> Rc<Flow> {
        let router = &link.router;
        router.flow_opened(&address, &dest_router);
        let stats = router.flow_stats_for(&address);
        stats.opened();
        Rc::new(Flow {
            key: router.next_flow_key(),
            name,
            address,
            link: link.clone(),
            dest_router,
            tx_handle: link.alloc_handle(),
            rx_handle: link.alloc_handle(),
            socket: RefCell::new(None),
            st: RefCell::new(FlowState {
                credit: link.peer_initial_credit,
                ..Default::default()
            }),
            waker: RefCell::new(None),
            finished: Cell::new(false),
            stats,
            opened_at: tokio::time::Instant::now(),
        })
    }

    /// Starts a flow for an accepted client connection on `link`, the
    /// first hop towards `egress`, a router that offers `address`.
    pub fn start_ingress(link: &Rc<Link>, address: &str, egress: &str, socket: FlowSocket) {
        let router = &link.router;
        let name = format!("{}/{}", router.id, router.next_flow_key());
        let flow = Flow::new(link, name.clone(), address.to_string(), egress.to_string());
        *flow.socket.borrow_mut() = Some(Rc::new(socket));
        link.register(flow.key, FlowRef::Flow(flow.clone()));
        link.expect_attach(name.clone(), FlowRef::Flow(flow.clone()));
        let route = FlowRoute {
            egress: egress.to_string(),
            hops: 0,
        };
        link.send_attach(
            &format!("{name}/c2s"),
            flow.tx_handle,
            Role::Sender,
            address,
            &name,
            Some(&route),
        );
        link.send_attach(
            &format!("{name}/s2c"),
            flow.rx_handle,
            Role::Receiver,
            address,
            &name,
            None,
        );
        let f = flow.clone();
        tokio::task::spawn_local(async move { poll_fn(|cx| f.poll_io(cx)).await });
        // Queued behind the flow task, so the attaches and the client's
        // first bytes (if already there) leave in one write.
        link.wake_driver();
    }

    /// Creates the egress side of a flow the peer attached.
    pub fn new_egress(link: &Rc<Link>, name: String, address: String) -> Rc<Flow> {
        let router_id = link.router.id.clone();
        Flow::new(link, name, address, router_id)
    }

    /// Answers the peer's attaches.
    fn answer_attaches(&self) {
        let link = &self.link;
        link.send_attach(
            &format!("{}/c2s", self.name),
            self.rx_handle,
            Role::Receiver,
            &self.address,
            &self.name,
            None,
        );
        link.send_attach(
            &format!("{}/s2c", self.name),
            self.tx_handle,
            Role::Sender,
            &self.address,
            &self.name,
            None,
        );
    }

    /// Answers the peer's attaches and ends the flow at once with `condition`
    /// (the far end resets its socket).
    pub fn refuse(self: &Rc<Self>, condition: &str, reason: String) {
        self.answer_attaches();
        self.abort(condition, reason);
    }

    /// Answers the peer's attaches and connects to the service.
    pub fn start_egress(self: &Rc<Self>) {
        let link = &self.link;
        self.answer_attaches();
        let Some(target) = link.router.pick_local_connector(&self.address) else {
            tracing::warn!(address = %self.address, flow = %self.name, "no tcp_connector for address; refusing flow");
            self.abort(
                COND_SERVICE_UNAVAILABLE,
                format!(
                    "router {} has no tcp_connector for {}",
                    link.router.id, self.address
                ),
            );
            return;
        };
        let flow = self.clone();
        tokio::task::spawn_local(async move {
            match tether_tcp::connect_service(&target.host, target.port, SERVICE_CONNECT_TIMEOUT)
                .await
            {
                Ok(sock) => {
                    if flow.st.borrow().aborted.is_some() {
                        sock.reset();
                        return;
                    }
                    *flow.socket.borrow_mut() = Some(Rc::new(sock));
                    poll_fn(|cx| flow.poll_io(cx)).await;
                }
                Err(e) => {
                    tracing::warn!(
                        address = %flow.address, flow = %flow.name,
                        "service {}:{} refused the connection: {e}", target.host, target.port
                    );
                    flow.abort(
                        COND_SERVICE_UNAVAILABLE,
                        format!("service {}:{} unavailable: {e}", target.host, target.port),
                    );
                }
            }
        });
    }

    pub(crate) fn set_remote_handle(&self, dir: Dir, h: u32) {
        let mut st = self.st.borrow_mut();
        match dir {
            Dir::Send => st.remote_tx = Some(h),
            Dir::Recv => st.remote_rx = Some(h),
        }
    }

    pub(crate) fn both_remote_handles_known(&self) -> bool {
        let st = self.st.borrow();
        st.remote_tx.is_some() && st.remote_rx.is_some()
    }

    fn wake(&self) {
        if let Some(w) = self.waker.borrow().as_ref() {
            w.wake_by_ref();
        }
    }

    /// Incoming bytes for the socket (one delivery).
    pub(crate) fn on_data(self: &Rc<Self>, data: Bytes) {
        let mut st = self.st.borrow_mut();
        if st.aborted.is_some() || st.rx_eof {
            return;
        }
        let settings = self.link.router.settings();
        if st.rx_outstanding >= settings.window_credits
            || data.len() > settings.max_delivery as usize
        {
            // The peer ignored our credit or delivery size: refuse to buffer.
            drop(st);
            self.abort(
                COND_FLOW_ABORTED,
                "peer exceeded the flow's credit window".into(),
            );
            return;
        }
        st.rx_received = st.rx_received.wrapping_add(1);
        st.rx_outstanding += 1;
        st.queue.push(data);
        // Write at once when nothing is queued ahead: no task wake-up.
        let sock = self.socket.borrow().clone();
        if let Some(sock) = sock {
            match sock.try_write_queue(&mut st.queue) {
                Ok(true) => {
                    drop(st);
                    self.credit_written();
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    drop(st);
                    self.abort(COND_RESET, format!("write to socket failed: {e}"));
                    return;
                }
            }
        }
        drop(st);
        self.wake();
    }

    /// Accounts for deliveries written to the socket and returns their
    /// credit: at once when the sender may be running short (half the
    /// window owed, or 64 KiB of bytes), otherwise riding on the link's
    /// next write so request/response traffic sends no extra frames.
    fn credit_written(self: &Rc<Self>) {
        let mut st = self.st.borrow_mut();
        let (done, done_bytes) = st.queue.take_completed();
        if done == 0 {
            return;
        }
        self.stats.add_bytes_out(done_bytes as u64);
        st.rx_outstanding -= done.min(st.rx_outstanding);
        st.credit_owed += done;
        st.credit_owed_bytes += done_bytes;
        if st.rx_local_detached {
            return;
        }
        let window = self.link.router.settings().window_credits;
        if st.credit_owed >= (window / 2).max(1) || st.credit_owed_bytes >= CREDIT_BYTES_NOW {
            drop(st);
            self.flush_credit();
        } else if st.credit_owed >= (window / 8).max(1) && !st.credit_deferred {
            st.credit_deferred = true;
            drop(st);
            self.link.defer_credit(FlowRef::Flow(self.clone()));
        }
    }

    /// Sends the credit owed, if any (also called by the link driver just
    /// before it writes, for deferred credit).
    pub(crate) fn flush_credit(&self) {
        let mut st = self.st.borrow_mut();
        st.credit_deferred = false;
        if st.credit_owed == 0 || st.rx_local_detached {
            return;
        }
        st.credit_owed = 0;
        st.credit_owed_bytes = 0;
        let window = self.link.router.settings().window_credits;
        let credit = window.saturating_sub(st.rx_outstanding);
        let count = st.rx_received;
        drop(st);
        self.link.send_credit(self.rx_handle, count, credit);
    }

    /// The peer granted credit on our sending link.
    pub(crate) fn on_credit(&self, peer_delivery_count: u32, link_credit: u32) {
        let mut st = self.st.borrow_mut();
        // AMQP 2.6.7: credit = delivery-count(rcv) + link-credit(rcv) - delivery-count(snd).
        st.credit = peer_delivery_count
            .wrapping_add(link_credit)
            .wrapping_sub(st.delivery_count);
        if st.credit > link_credit {
            // Stale Flow from before deliveries we sent since: never negative.
            st.credit = 0;
        }
        drop(st);
        self.wake();
    }

    /// The peer detached one of our links.
    pub(crate) fn on_detach(self: &Rc<Self>, dir: Dir, error: Option<(String, String)>) {
        if let Some((cond, desc)) = error {
            tracing::debug!(flow = %self.name, "peer aborted flow: {cond}: {desc}");
            let mut st = self.st.borrow_mut();
            match dir {
                Dir::Send => st.tx_remote_detached = true,
                Dir::Recv => st.rx_remote_detached = true,
            }
            drop(st);
            self.abort(COND_FLOW_ABORTED, format!("peer aborted: {desc}"));
            self.release_done_handles();
            self.maybe_finish();
            return;
        }
        match dir {
            Dir::Recv => {
                // The far end's socket reached EOF: half-close ours once the
                // queued bytes are out.
                let echo = {
                    let mut st = self.st.borrow_mut();
                    st.rx_remote_detached = true;
                    st.rx_eof = true;
                    !std::mem::replace(&mut st.rx_local_detached, true)
                };
                if echo {
                    self.link.send_detach(self.rx_handle, None);
                }
            }
            Dir::Send => {
                let early = {
                    let mut st = self.st.borrow_mut();
                    st.tx_remote_detached = true;
                    !st.tx_local_detached
                };
                if early {
                    self.abort(COND_FLOW_ABORTED, "peer closed the flow".into());
                }
            }
        }
        self.release_done_handles();
        self.maybe_finish();
        self.wake();
    }

    /// Frees our handles for links detached by both ends.
    fn release_done_handles(&self) {
        let mut st = self.st.borrow_mut();
        if st.tx_local_detached && st.tx_remote_detached && st.remote_tx.is_some() {
            st.remote_tx = None;
            self.link.release_handle(self.tx_handle);
        }
        if st.rx_local_detached && st.rx_remote_detached && st.remote_rx.is_some() {
            st.remote_rx = None;
            self.link.release_handle(self.rx_handle);
        }
    }

    /// Ends the flow abnormally: the socket is reset and the peer told.
    pub(crate) fn abort(&self, condition: &str, reason: String) {
        let mut st = self.st.borrow_mut();
        if st.aborted.is_some() {
            return;
        }
        st.aborted = Some(reason.clone());
        self.stats.failed();
        st.queue.clear();
        let send_tx = !st.tx_local_detached;
        let send_rx = !st.rx_local_detached;
        st.tx_local_detached = true;
        st.rx_local_detached = true;
        drop(st);
        if !self.link.is_down() {
            if send_tx {
                self.link
                    .send_detach(self.tx_handle, Some((condition, reason.clone())));
            }
            if send_rx {
                self.link
                    .send_detach(self.rx_handle, Some((condition, reason)));
            }
        }
        // Close now with an RST; the flow's bookkeeping waits for the peer.
        if let Some(sock) = self.socket.borrow_mut().take() {
            sock.reset();
        }
        self.release_done_handles();
        self.wake();
        self.maybe_finish();
    }

    /// The link under this flow went down.
    pub(crate) fn link_lost(&self, reason: &str) {
        let mut st = self.st.borrow_mut();
        if st.aborted.is_none() {
            st.aborted = Some(format!("link down: {reason}"));
            self.stats.failed();
        }
        st.tx_remote_detached = true;
        st.rx_remote_detached = true;
        st.tx_local_detached = true;
        st.rx_local_detached = true;
        st.queue.clear();
        drop(st);
        if let Some(sock) = self.socket.borrow_mut().take() {
            sock.reset();
        }
        self.wake();
        self.maybe_finish();
    }

    fn is_complete(&self) -> bool {
        let st = self.st.borrow();
        let links_done = st.tx_local_detached
            && st.tx_remote_detached
            && st.rx_local_detached
            && st.rx_remote_detached;
        links_done && (st.aborted.is_some() || (st.write_shut && st.queue.is_empty()))
    }

    fn maybe_finish(&self) {
        if self.is_complete() && !self.finished.replace(true) {
            self.link.unregister(self.key);
            // Drop the socket now: a normal close after both half-closes,
            // or an RST after reset().
            self.socket.borrow_mut().take();
            self.wake();
        }
    }

    /// The flow task: moves bytes between the socket and the link until the
    /// flow ends.
    pub fn poll_io(self: &Rc<Self>, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut w = self.waker.borrow_mut();
            if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *w = Some(cx.waker().clone());
            }
        }
        for _ in 0..16 {
            if self.finished.get() {
                return Poll::Ready(());
            }
            let Some(sock) = self.socket.borrow().clone() else {
                // Still connecting (egress), or aborted and waiting for the
                // peer's detaches.
                return Poll::Pending;
            };
            let mut progress = false;

            // Network to socket.
            {
                let mut st = self.st.borrow_mut();
                if st.aborted.is_none() && !st.queue.is_empty() {
                    match sock.poll_write_queue(cx, &mut st.queue) {
                        Poll::Ready(Ok(())) => progress = true,
                        Poll::Pending => {}
                        Poll::Ready(Err(e)) => {
                            drop(st);
                            self.abort(COND_RESET, format!("write to socket failed: {e}"));
                            continue;
                        }
                    }
                }
                let shut_now =
                    st.aborted.is_none() && st.rx_eof && st.queue.is_empty() && !st.write_shut;
                if shut_now {
                    st.write_shut = true;
                    drop(st);
                    sock.shutdown_write();
                    progress = true;
                }
            }
            self.credit_written();

            // Socket to network.
            let can_send = {
                let st = self.st.borrow();
                st.aborted.is_none() && !st.tx_local_detached && st.credit > 0
            };
            if can_send {
                if self.link.out_len() >= OUT_HIGH_WATER {
                    self.link.wait_for_space(cx);
                } else {
                    match self.read_into_link(cx, &sock) {
                        Poll::Ready(true) => progress = true,
                        Poll::Ready(false) => {}
                        Poll::Pending => {}
                    }
                }
            }

            self.maybe_finish();
            if !progress {
                return if self.finished.get() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                };
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Reads the socket into one transfer in the link's outgoing buffer.
    /// `Ready(true)` when something was sent (data or end of stream).
    fn read_into_link(&self, cx: &mut Context<'_>, sock: &FlowSocket) -> Poll<bool> {
        let result = {
            let mut out = self.link.out_buffer();
            let slot = DataTransferSlot::begin(&mut out);
            match sock.poll_read_into(cx, &mut out, self.link.send_chunk) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    let delivery_id = self.link.next_delivery_id();
                    slot.finish(&mut out, 0, self.tx_handle, delivery_id, true);
                    Poll::Ready(Ok(n))
                }
                other => {
                    slot.cancel(&mut out);
                    other
                }
            }
        };
        match result {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(0)) => {
                // End of stream: half-close towards the far end.
                let mut st = self.st.borrow_mut();
                st.tx_local_detached = true;
                drop(st);
                self.link.send_detach(self.tx_handle, None);
                self.release_done_handles();
                Poll::Ready(true)
            }
            Poll::Ready(Ok(n)) => {
                self.stats.add_bytes_in(n as u64);
                let mut st = self.st.borrow_mut();
                st.credit = st.credit.saturating_sub(1);
                st.delivery_count = st.delivery_count.wrapping_add(1);
                drop(st);
                self.link.wake_driver();
                Poll::Ready(true)
            }
            Poll::Ready(Err(e)) => {
                self.abort(COND_RESET, format!("socket read failed: {e}"));
                Poll::Ready(false)
            }
        }
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.stats.closed(self.opened_at.elapsed());
        self.link
            .router
            .flow_closed(&self.address, &self.dest_router);
    }
}
