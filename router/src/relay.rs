//! Transit flows: a TCP flow passing through this router between two
//! inter-router links.
//!
//! The ingress router picks the flow's egress router and names it in the
//! attach of the flow's client-to-service link (`tether:egress`). A router
//! that is not the egress looks up its next hop to that router and becomes a
//! [`Relay`]: it answers the attaches on the upstream link (towards the
//! client), attaches the same two links on the downstream link (towards the
//! service) and forwards every delivery it receives on one leg to the other.
//! The next hop is read once, when the flow starts: a topology change moves
//! new flows, never one in progress.
//!
//! Flow control is per hop and the same as at a flow's ends: each leg's
//! receiving link has the router's window of credit, and a delivery's credit
//! goes back upstream only once the delivery has been copied into the
//! downstream link's outgoing buffer, which happens only while the
//! downstream hop has credit for it. So a relay holds at most one window per
//! direction, and a slow service slows its client through every hop.
//!
//! Ends: a Detach without error (end of one direction) is forwarded once the
//! data before it has gone; a Detach with an error, or the loss of either
//! link, aborts the flow and the error goes on to the far ends (which reset
//! their sockets), so no flow through a failed link hangs.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tether_protocol::types::definitions::Role;
use tether_protocol::DataTransferSlot;

use crate::flow::Dir;
use crate::link::{FlowRef, FlowRoute, Link, COND_FLOW_ABORTED, OUT_HIGH_WATER};

/// Owed credit for this many forwarded bytes is returned at once.
const CREDIT_BYTES_NOW: usize = 64 * 1024;

/// One side of a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    /// The link towards the flow's client (the ingress router).
    Up,
    /// The link towards the flow's service (the egress router).
    Down,
}

impl Leg {
    fn index(self) -> usize {
        match self {
            Leg::Up => 0,
            Leg::Down => 1,
        }
    }

    fn other(self) -> Leg {
        match self {
            Leg::Up => Leg::Down,
            Leg::Down => Leg::Up,
        }
    }
}

struct LegLink {
    link: Rc<Link>,
    /// Our sending link's handle on this leg (carries the other leg's data).
    tx_handle: u32,
    /// Our receiving link's handle on this leg.
    rx_handle: u32,
}

#[derive(Default)]
struct LegState {
    remote_tx: Option<u32>,
    remote_rx: Option<u32>,
    // Sending on this leg.
    credit: u32,
    delivery_count: u32,
    tx_local_detached: bool,
    tx_remote_detached: bool,
    // Receiving on this leg.
    rx_received: u32,
    rx_outstanding: u32,
    credit_owed: u32,
    credit_owed_bytes: usize,
    credit_deferred: bool,
    rx_local_detached: bool,
    rx_remote_detached: bool,
    /// Received on this leg, not yet forwarded on the other.
    queue: VecDeque<Bytes>,
    /// The peer ended this leg's incoming direction (forward once drained).
    eof: bool,
}

impl LegState {
    fn all_detached(&self) -> bool {
        self.tx_local_detached
            && self.tx_remote_detached
            && self.rx_local_detached
            && self.rx_remote_detached
    }
}

/// See the module documentation.
pub struct Relay {
    pub key: u64,
    pub name: String,
    legs: [LegLink; 2],
    st: RefCell<[LegState; 2]>,
    aborted: Cell<bool>,
    waker: RefCell<Option<Waker>>,
    finished: Cell<bool>,
}

impl Relay {
    /// Starts relaying the flow `name` whose client-to-service attach (peer
    /// handle `remote_c2s`) arrived on `up`, towards `down`.
    pub fn start(
        up: &Rc<Link>,
        down: &Rc<Link>,
        name: &str,
        address: &str,
        route: &FlowRoute,
        remote_c2s: u32,
    ) -> Rc<Relay> {
        let router = &up.router;
        let relay = Rc::new(Relay {
            key: router.next_flow_key(),
            name: name.to_string(),
            legs: [
                LegLink {
                    link: up.clone(),
                    tx_handle: up.alloc_handle(),
                    rx_handle: up.alloc_handle(),
                },
                LegLink {
                    link: down.clone(),
                    tx_handle: down.alloc_handle(),
                    rx_handle: down.alloc_handle(),
                },
            ],
            st: RefCell::new([
                LegState {
                    credit: up.peer_initial_credit,
                    remote_rx: Some(remote_c2s),
                    ..Default::default()
                },
                LegState {
                    credit: down.peer_initial_credit,
                    ..Default::default()
                },
            ]),
            aborted: Cell::new(false),
            waker: RefCell::new(None),
            finished: Cell::new(false),
        });
        up.register_relay_endpoint(remote_c2s, &relay, Leg::Up, Dir::Recv);
        for leg in [Leg::Up, Leg::Down] {
            let l = &relay.legs[leg.index()].link;
            l.register(relay.key, FlowRef::Relay(relay.clone(), leg));
            l.expect_attach(name.to_string(), FlowRef::Relay(relay.clone(), leg));
        }
        let (u, d) = (&relay.legs[0], &relay.legs[1]);
        // Downstream first: the flow's first data may already be queued
        // behind the upstream attach.
        let next = FlowRoute {
            egress: route.egress.clone(),
            hops: route.hops + 1,
        };
        d.link.send_attach(
            &format!("{name}/c2s"),
            d.tx_handle,
            Role::Sender,
            address,
            name,
            Some(&next),
        );
        d.link.send_attach(
            &format!("{name}/s2c"),
            d.rx_handle,
            Role::Receiver,
            address,
            name,
            None,
        );
        u.link.send_attach(
            &format!("{name}/c2s"),
            u.rx_handle,
            Role::Receiver,
            address,
            name,
            None,
        );
        u.link.send_attach(
            &format!("{name}/s2c"),
            u.tx_handle,
            Role::Sender,
            address,
            name,
            None,
        );
        d.link.wake_driver();
        u.link.wake_driver();
        let r = relay.clone();
        tokio::task::spawn_local(async move { poll_fn(|cx| r.poll_task(cx)).await });
        relay
    }

    pub(crate) fn set_remote_handle(&self, leg: Leg, dir: Dir, h: u32) {
        let mut st = self.st.borrow_mut();
        let s = &mut st[leg.index()];
        match dir {
            Dir::Send => s.remote_tx = Some(h),
            Dir::Recv => s.remote_rx = Some(h),
        }
    }

    pub(crate) fn both_remote_handles_known(&self, leg: Leg) -> bool {
        let st = self.st.borrow();
        let s = &st[leg.index()];
        s.remote_tx.is_some() && s.remote_rx.is_some()
    }

    fn wake(&self) {
        if let Some(w) = self.waker.borrow().as_ref() {
            w.wake_by_ref();
        }
    }

    /// One delivery arrived on `leg`.
    pub(crate) fn on_data(self: &Rc<Self>, leg: Leg, data: Bytes) {
        if self.aborted.get() {
            return;
        }
        let settings = self.legs[0].link.router.settings();
        {
            let mut st = self.st.borrow_mut();
            let s = &mut st[leg.index()];
            if s.eof {
                return;
            }
            if s.rx_outstanding >= settings.window_credits
                || data.len() > settings.max_delivery as usize
            {
                drop(st);
                self.abort(
                    COND_FLOW_ABORTED,
                    "peer exceeded the flow's credit window".into(),
                );
                return;
            }
            s.rx_received = s.rx_received.wrapping_add(1);
            if data.is_empty() {
                // Nothing to forward: its credit is owed at once.
                s.credit_owed += 1;
            } else {
                s.rx_outstanding += 1;
                s.queue.push_back(data);
            }
        }
        self.forward(leg, None);
    }

    /// Forwards what `from` received onto the other leg, as far as that
    /// leg's credit and its link's buffer allow, and returns the credit of
    /// what went.
    fn forward(self: &Rc<Self>, from: Leg, cx: Option<&mut Context<'_>>) {
        if self.aborted.get() {
            return;
        }
        let to = from.other();
        let out_leg = &self.legs[to.index()];
        let link = &out_leg.link;
        let mut sent = false;
        let mut blocked = false;
        let mut done = 0u32;
        let mut done_bytes = 0usize;
        let mut st = self.st.borrow_mut();
        let [a, b] = &mut *st;
        let (inc, out) = match from {
            Leg::Up => (a, b),
            Leg::Down => (b, a),
        };
        while let Some(front) = inc.queue.front_mut() {
            if out.credit == 0 || out.tx_local_detached || link.is_down() {
                break;
            }
            if link.out_len() >= OUT_HIGH_WATER {
                blocked = true;
                break;
            }
            let n = front.len().min(link.send_chunk);
            let chunk = front.split_to(n);
            {
                let mut buf = link.out_buffer();
                let slot = DataTransferSlot::begin(&mut buf);
                buf.extend_from_slice(&chunk);
                slot.finish(
                    &mut buf,
                    0,
                    out_leg.tx_handle,
                    link.next_delivery_id(),
                    true,
                );
            }
            out.credit -= 1;
            out.delivery_count = out.delivery_count.wrapping_add(1);
            done_bytes += n;
            sent = true;
            if front.is_empty() {
                inc.queue.pop_front();
                done += 1;
            }
        }
        if inc.queue.is_empty() && inc.eof && !out.tx_local_detached && !link.is_down() {
            out.tx_local_detached = true;
            drop(st);
            // Behind the data in the same buffer: the far end sees every
            // byte before the end of stream.
            link.send_detach(out_leg.tx_handle, None);
            sent = true;
            self.release_done_handles();
            st = self.st.borrow_mut();
        }
        let inc = &mut st[from.index()];
        let mut flush_now = false;
        let mut defer = false;
        inc.rx_outstanding -= done.min(inc.rx_outstanding);
        inc.credit_owed_bytes += done_bytes;
        inc.credit_owed += done;
        if inc.credit_owed > 0 && !inc.rx_local_detached {
            let window = link.router.settings().window_credits;
            if inc.credit_owed >= (window / 2).max(1) || inc.credit_owed_bytes >= CREDIT_BYTES_NOW {
                flush_now = true;
            } else if inc.credit_owed >= (window / 8).max(1) && !inc.credit_deferred {
                inc.credit_deferred = true;
                defer = true;
            }
        }
        drop(st);
        if sent {
            link.wake_driver();
        }
        if flush_now {
            self.flush_credit(from);
        } else if defer {
            self.legs[from.index()]
                .link
                .defer_credit(FlowRef::Relay(self.clone(), from));
        }
        if blocked {
            match cx {
                Some(cx) => link.wait_for_space(cx),
                None => self.wake(),
            }
        }
        self.maybe_finish();
    }

    /// Sends the credit owed on `leg`'s receiving link, if any.
    pub(crate) fn flush_credit(&self, leg: Leg) {
        let mut st = self.st.borrow_mut();
        let s = &mut st[leg.index()];
        s.credit_deferred = false;
        if s.credit_owed == 0 || s.rx_local_detached {
            return;
        }
        s.credit_owed = 0;
        s.credit_owed_bytes = 0;
        let l = &self.legs[leg.index()];
        let window = l.link.router.settings().window_credits;
        let credit = window.saturating_sub(s.rx_outstanding);
        let count = s.rx_received;
        drop(st);
        l.link.send_credit(l.rx_handle, count, credit);
    }

    /// The peer on `leg` granted credit on our sending link there.
    pub(crate) fn on_credit(self: &Rc<Self>, leg: Leg, peer_delivery_count: u32, link_credit: u32) {
        {
            let mut st = self.st.borrow_mut();
            let s = &mut st[leg.index()];
            s.credit = peer_delivery_count
                .wrapping_add(link_credit)
                .wrapping_sub(s.delivery_count);
            if s.credit > link_credit {
                s.credit = 0;
            }
        }
        // Credit on this leg moves what the other leg received.
        self.forward(leg.other(), None);
    }

    /// The peer on `leg` detached one of our links there.
    pub(crate) fn on_detach(self: &Rc<Self>, leg: Leg, dir: Dir, error: Option<(String, String)>) {
        {
            let mut st = self.st.borrow_mut();
            let s = &mut st[leg.index()];
            match dir {
                Dir::Send => s.tx_remote_detached = true,
                Dir::Recv => s.rx_remote_detached = true,
            }
        }
        match (dir, error) {
            (_, Some((cond, desc))) => {
                tracing::debug!(flow = %self.name, "aborted on the {leg:?} leg: {cond}: {desc}");
                self.abort(&cond, desc);
            }
            (Dir::Recv, None) => {
                // End of one direction: echo, and pass it on after the data.
                let echo = {
                    let mut st = self.st.borrow_mut();
                    let s = &mut st[leg.index()];
                    s.eof = true;
                    !std::mem::replace(&mut s.rx_local_detached, true)
                };
                if echo {
                    let l = &self.legs[leg.index()];
                    l.link.send_detach(l.rx_handle, None);
                }
                self.forward(leg, None);
            }
            (Dir::Send, None) => {
                let early = !self.st.borrow()[leg.index()].tx_local_detached;
                if early {
                    self.abort(COND_FLOW_ABORTED, "peer closed the flow".into());
                }
            }
        }
        self.release_done_handles();
        self.maybe_finish();
    }

    /// Ends the flow abnormally on both legs: every link not yet detached
    /// gets a Detach with the error, which the far ends turn into resets.
    pub(crate) fn abort(&self, condition: &str, reason: String) {
        if self.aborted.replace(true) {
            return;
        }
        let mut sends = Vec::new();
        {
            let mut st = self.st.borrow_mut();
            for leg in [Leg::Up, Leg::Down] {
                let s = &mut st[leg.index()];
                s.queue.clear();
                let l = &self.legs[leg.index()];
                if !std::mem::replace(&mut s.tx_local_detached, true) {
                    sends.push((leg, l.tx_handle));
                }
                if !std::mem::replace(&mut s.rx_local_detached, true) {
                    sends.push((leg, l.rx_handle));
                }
            }
        }
        for (leg, handle) in sends {
            let link = &self.legs[leg.index()].link;
            if !link.is_down() {
                link.send_detach(handle, Some((condition, reason.clone())));
            }
        }
        self.release_done_handles();
        self.maybe_finish();
    }

    /// `leg`'s link went down: the flow cannot go on.
    pub(crate) fn link_lost(&self, leg: Leg, reason: &str) {
        {
            let mut st = self.st.borrow_mut();
            let s = &mut st[leg.index()];
            s.tx_local_detached = true;
            s.tx_remote_detached = true;
            s.rx_local_detached = true;
            s.rx_remote_detached = true;
        }
        let peer = self.legs[leg.index()].link.peer_id.clone();
        self.abort(
            COND_FLOW_ABORTED,
            format!("link to router {peer} lost: {reason}"),
        );
        self.maybe_finish();
    }

    fn release_done_handles(&self) {
        let mut st = self.st.borrow_mut();
        for leg in [Leg::Up, Leg::Down] {
            let s = &mut st[leg.index()];
            let l = &self.legs[leg.index()];
            if s.tx_local_detached && s.tx_remote_detached && s.remote_tx.take().is_some() {
                l.link.release_handle(l.tx_handle);
            }
            if s.rx_local_detached && s.rx_remote_detached && s.remote_rx.take().is_some() {
                l.link.release_handle(l.rx_handle);
            }
        }
    }

    fn maybe_finish(&self) {
        let done = {
            let st = self.st.borrow();
            st[0].all_detached() && st[1].all_detached()
        };
        if done && !self.finished.replace(true) {
            for l in &self.legs {
                l.link.unregister(self.key);
            }
            self.wake();
        }
    }

    /// The relay's task: resumes forwarding that stopped on a full link
    /// buffer, and ends with the flow.
    fn poll_task(self: &Rc<Self>, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut w = self.waker.borrow_mut();
            if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *w = Some(cx.waker().clone());
            }
        }
        if self.finished.get() {
            return Poll::Ready(());
        }
        self.forward(Leg::Up, Some(cx));
        self.forward(Leg::Down, Some(cx));
        if self.finished.get() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}
