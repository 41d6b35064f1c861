//! Inter-router links: one mutually authenticated TLS connection to a
//! neighbouring router, carrying AMQP 1.0 frames.
//!
//! A link is opened by [`establish`] (protocol header, Open, Begin in both
//! directions, pipelined; router ids checked) and then run by one
//! [`LinkDriver`] future that owns the TLS stream and does all of the link's
//! reads and writes: it decodes incoming frames and dispatches them to flows
//! or to routing, and it writes out whatever flows and routing appended to
//! the link's shared outgoing buffer, one batch per write (double-buffered).
//! Nothing here waits on another thread: the router runs on one
//! single-threaded runtime, so a byte crosses no thread hand-off.
//!
//! Inter-router conventions on top of AMQP 1.0 (documented in
//! ARCHITECTURE.md): session channel 0 only; handle 0 in both directions is
//! the routing control link; every TCP flow is a pair of links (client to
//! service, service to client) whose senders start with an implicit credit
//! the receiver announced in its Open (`tether:initial-credit`), so a new
//! flow's first bytes follow its attach without waiting a round trip.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use serde_amqp::primitives::{OrderedMap, Symbol};
use serde_amqp::Value;
use tether_protocol::types::definitions::{
    self, ErrorCondition, Handle, ReceiverSettleMode, Role, SenderSettleMode,
};
use tether_protocol::types::messaging::{Source, Target, TargetArchetype};
use tether_protocol::types::performatives::{
    Attach, Begin, ChannelMax, Close, Detach, Flow as FlowFrame, MaxFrameSize, Open,
};
use tether_protocol::{
    data_section_body, encode_performative, encode_transfer, DecodeError, FrameBody, FrameDecoder,
    Performative, TransferHeader, AMQP_PROTOCOL_HEADER,
};
use tether_routing::{LinkId as NeighbourId, RouterMessage};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

use crate::core::Router;
use crate::flow::{Dir, Flow};
use crate::messages::{MsgIn, MsgOut};
use crate::relay::{Leg, Relay};

/// Largest frame we accept and announce (flow deliveries are at most 256 KiB).
pub const MAX_FRAME_SIZE: u32 = 1024 * 1024;
/// Frames a peer must accept from us (a full flow transfer plus headers).
const MIN_PEER_FRAME_SIZE: u32 = 16 * 1024;
/// Flows stop appending to a link's outgoing buffer above this many bytes
/// until the driver has taken it; bounds a link's memory.
pub const OUT_HIGH_WATER: usize = 256 * 1024;
/// Bytes the driver reads from TLS per call.
const READ_CHUNK: usize = 64 * 1024;
/// Handle of the routing control link in both directions.
const CONTROL_HANDLE: u32 = 0;
const CONTROL_LINK_NAME: &str = "$tether-control";
/// Open property: credit a flow sender may use before the receiver's first
/// Flow frame.
const PROP_INITIAL_CREDIT: &str = "tether:initial-credit";
/// Open property: largest flow delivery this end accepts (bytes).
const PROP_MAX_DELIVERY: &str = "tether:max-delivery";
/// Open property: this end's configured link cost.
const PROP_COST: &str = "tether:cost";
/// Attach property of a flow's client-to-service link: the router id of
/// the flow's egress (chosen by the ingress).
pub const PROP_EGRESS: &str = "tether:egress";
/// Flow property on message links: frames of streamed messages the sender
/// may send in addition (returned as frames leave the receiving router).
const PROP_FRAME_CREDIT: &str = "tether:frame-credit";
/// Attach property: routers the flow's attach has passed through.
const PROP_HOPS: &str = "tether:hops";
/// A flow attach that has passed this many routers is refused (a routing
/// loop while the network converges).
pub const MAX_FLOW_HOPS: u32 = 32;
pub const COND_DUPLICATE_ID: &str = "tether:duplicate-router-id";
pub const COND_FLOW_ABORTED: &str = "tether:flow-aborted";
pub const COND_SERVICE_UNAVAILABLE: &str = "tether:service-unavailable";
pub const COND_RESET: &str = "tether:connection-reset";
pub const COND_NO_ROUTE: &str = "tether:no-route";

/// Where a flow is going, carried in its client-to-service attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRoute {
    /// The router whose tcp_connector serves the flow.
    pub egress: String,
    /// Routers passed so far.
    pub hops: u32,
}

/// What the remote handle of an incoming frame refers to.
#[derive(Clone)]
pub(crate) enum Endpoint {
    Control,
    Flow(Rc<Flow>, Dir),
    Relay(Rc<Relay>, Leg, Dir),
    /// A message link we receive on.
    MsgIn(Rc<MsgIn>),
    /// A message link we send on.
    MsgOut(Rc<MsgOut>),
}

/// A flow end, a relay leg or a message link using this link.
#[derive(Clone)]
pub(crate) enum FlowRef {
    Flow(Rc<Flow>),
    Relay(Rc<Relay>, Leg),
    MsgIn(Rc<MsgIn>),
    MsgOut(Rc<MsgOut>),
}

/// One established inter-router link, shared by the driver and its flows.
pub struct Link {
    pub id: NeighbourId,
    pub router: Rc<Router>,
    pub peer_id: String,
    pub cost: u32,
    /// Credit our flow senders start with on this link (the peer's window).
    pub peer_initial_credit: u32,
    /// Most payload bytes one flow delivery to the peer may carry.
    pub send_chunk: usize,
    out: RefCell<BytesMut>,
    driver_waker: RefCell<Option<Waker>>,
    space_waiters: RefCell<Vec<Waker>>,
    endpoints: RefCell<HashMap<u32, Endpoint>>,
    awaiting_attach: RefCell<HashMap<String, FlowRef>>,
    deferred_credit: RefCell<Vec<FlowRef>>,
    handles: RefCell<HandleAllocator>,
    next_delivery_id: Cell<u32>,
    flows: RefCell<HashMap<u64, FlowRef>>,
    down: Cell<bool>,
    /// Set by [`Link::close`]: the driver ends once the Close is written.
    closing: RefCell<Option<String>>,
    /// Traffic counters (management and metrics).
    pub stats: LinkStats,
    /// When the link came up.
    pub opened_at: Instant,
    /// The peer's socket address and how the link was made ("in"/"out").
    pub peer_addr: RefCell<String>,
    pub dir: Cell<&'static str>,
    /// `sha256:<hex>` of the peer's certificate (revocation by certificate).
    pub peer_fingerprint: RefCell<Option<String>>,
}

/// Bytes and frames a link carried, each way.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
    pub frames_in: Cell<u64>,
    /// Frames queued for the peer (transfers and performatives; a flow's
    /// socket read is one transfer).
    pub frames_out: Cell<u64>,
}

fn bump(c: &Cell<u64>, n: u64) {
    c.set(c.get().wrapping_add(n));
}

#[derive(Default)]
struct HandleAllocator {
    next: u32,
    free: Vec<u32>,
}

impl HandleAllocator {
    fn alloc(&mut self) -> u32 {
        self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next
        })
    }
    fn release(&mut self, h: u32) {
        self.free.push(h);
    }
}

impl Link {
    /// Bytes waiting in the outgoing buffer.
    pub fn out_len(&self) -> usize {
        self.out.borrow().len()
    }

    /// The outgoing buffer itself, for flows that read a socket straight
    /// into it. The caller wakes the driver afterwards.
    pub fn out_buffer(&self) -> std::cell::RefMut<'_, BytesMut> {
        bump(&self.stats.frames_out, 1);
        self.out.borrow_mut()
    }

    pub fn is_down(&self) -> bool {
        self.down.get()
    }

    /// Runs `f` on the outgoing buffer and wakes the driver to write it.
    pub fn with_out<R>(&self, f: impl FnOnce(&mut BytesMut) -> R) -> R {
        bump(&self.stats.frames_out, 1);
        let r = f(&mut self.out.borrow_mut());
        self.wake_driver();
        r
    }

    pub fn wake_driver(&self) {
        if let Some(w) = self.driver_waker.borrow().as_ref() {
            w.wake_by_ref();
        }
    }

    /// Registers a flow that waits for room in the outgoing buffer.
    pub fn wait_for_space(&self, cx: &mut Context<'_>) {
        let mut waiters = self.space_waiters.borrow_mut();
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
    }

    /// Queues a flow's credit to go out with the link's next write.
    pub(crate) fn defer_credit(&self, flow: FlowRef) {
        self.deferred_credit.borrow_mut().push(flow);
    }

    fn flush_deferred_credit(&self) {
        let flows = std::mem::take(&mut *self.deferred_credit.borrow_mut());
        for f in flows {
            match f {
                FlowRef::Flow(f) => f.flush_credit(),
                FlowRef::Relay(r, leg) => r.flush_credit(leg),
                FlowRef::MsgIn(m) => self.router.messages.flush_in_credit(&m),
                FlowRef::MsgOut(_) => {}
            }
        }
    }

    pub fn next_delivery_id(&self) -> u32 {
        let id = self.next_delivery_id.get();
        self.next_delivery_id.set(id.wrapping_add(1));
        id
    }

    pub fn alloc_handle(&self) -> u32 {
        self.handles.borrow_mut().alloc()
    }

    pub fn release_handle(&self, h: u32) {
        self.handles.borrow_mut().release(h);
    }

    pub(crate) fn register(&self, key: u64, flow: FlowRef) {
        self.flows.borrow_mut().insert(key, flow);
    }

    pub(crate) fn expect_attach(&self, name: String, flow: FlowRef) {
        self.awaiting_attach.borrow_mut().insert(name, flow);
    }

    pub(crate) fn register_relay_endpoint(
        &self,
        remote_handle: u32,
        relay: &Rc<Relay>,
        leg: Leg,
        dir: Dir,
    ) {
        self.endpoints
            .borrow_mut()
            .insert(remote_handle, Endpoint::Relay(relay.clone(), leg, dir));
    }

    pub(crate) fn unregister(&self, key: u64) {
        self.flows.borrow_mut().remove(&key);
    }

    /// Flows and relays using this link.
    pub fn flow_count(&self) -> usize {
        self.flows.borrow().len()
    }

    /// Appends a performative; encoding our own well-formed performatives
    /// cannot fail short of a bug, which we log rather than crash on.
    pub fn send_performative(&self, p: &Performative) {
        self.with_out(|out| {
            if let Err(e) = encode_performative(out, 0, p) {
                tracing::error!(link = self.id, "cannot encode performative: {e}");
            }
        });
    }

    /// Appends a performative without waking the driver: the caller wakes
    /// it once everything that belongs in the same write is queued.
    pub fn append_performative(&self, p: &Performative) {
        bump(&self.stats.frames_out, 1);
        if let Err(e) = encode_performative(&mut self.out.borrow_mut(), 0, p) {
            tracing::error!(link = self.id, "cannot encode performative: {e}");
        }
    }

    /// Closes the connection politely (no error): the router is stopping.
    /// Closes the link from this side (a connector or listener was
    /// deleted): the peer gets a Close, and the driver ends once it is
    /// written.
    pub fn close(&self, why: &str) {
        self.send_close(why);
        *self.closing.borrow_mut() = Some(why.to_string());
        self.wake_driver();
    }

    pub fn send_close(&self, why: &str) {
        let close = Close {
            error: Some(amqp_error("tether:router-shutdown", why.to_string())),
        };
        self.send_performative(&Performative::Close(close));
    }

    /// Sends a routing message on the control link.
    pub fn send_routing(&self, msg: &RouterMessage) {
        let mut body = Vec::with_capacity(64);
        msg.encode(&mut body);
        let payload = data_section(&body);
        let t = TransferHeader {
            handle: CONTROL_HANDLE,
            delivery_id: Some(self.next_delivery_id()),
            delivery_tag: Some(Bytes::new()),
            message_format: Some(0),
            settled: Some(true),
            ..Default::default()
        };
        self.with_out(|out| encode_transfer(out, 0, &t, &payload));
    }

    pub fn send_attach(
        &self,
        name: &str,
        handle: u32,
        role: Role,
        address: &str,
        peer: &str,
        route: Option<&FlowRoute>,
    ) {
        let (source, target, initial_delivery_count) = match role {
            Role::Sender => (peer, address, Some(0)),
            Role::Receiver => (address, peer, None),
        };
        let attach = Attach {
            name: name.to_string(),
            handle: Handle(handle),
            role,
            snd_settle_mode: SenderSettleMode::Settled,
            rcv_settle_mode: ReceiverSettleMode::First,
            source: Some(Box::new(Source {
                address: Some(source.to_string()),
                ..Default::default()
            })),
            target: Some(Box::new(TargetArchetype::Target(Target {
                address: Some(target.to_string()),
                ..Default::default()
            }))),
            unsettled: None,
            incomplete_unsettled: false,
            initial_delivery_count,
            max_message_size: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: route.map(|r| {
                let mut props = OrderedMap::new();
                props.insert(Symbol::from(PROP_EGRESS), Value::String(r.egress.clone()));
                props.insert(Symbol::from(PROP_HOPS), Value::Uint(r.hops));
                props
            }),
        };
        // Not woken here: a new flow's first data should share the write.
        self.append_performative(&Performative::Attach(attach));
    }

    pub fn send_detach(&self, handle: u32, error: Option<(&str, String)>) {
        let detach = Detach {
            handle: Handle(handle),
            closed: true,
            error: error.map(|(cond, desc)| amqp_error(cond, desc)),
        };
        self.send_performative(&Performative::Detach(detach));
    }

    /// Grants credit on one of our receiving message links, plus frame
    /// credit for streamed messages (`tether:frame-credit`).
    pub fn send_credit_with_frames(
        &self,
        handle: u32,
        delivery_count: u32,
        link_credit: u32,
        frames: u32,
    ) {
        let properties = (frames > 0).then(|| {
            let mut p = OrderedMap::new();
            p.insert(Symbol::from(PROP_FRAME_CREDIT), Value::Uint(frames));
            p
        });
        let flow = FlowFrame {
            next_incoming_id: None,
            incoming_window: u32::MAX,
            next_outgoing_id: self.next_delivery_id.get(),
            outgoing_window: u32::MAX,
            handle: Some(Handle(handle)),
            delivery_count: Some(delivery_count),
            link_credit: Some(link_credit),
            available: None,
            drain: false,
            echo: false,
            properties,
        };
        self.send_performative(&Performative::Flow(flow));
    }

    /// Grants credit on one of our receiving links.
    pub fn send_credit(&self, handle: u32, delivery_count: u32, link_credit: u32) {
        self.send_credit_with_frames(handle, delivery_count, link_credit, 0);
    }

    /// Tears down every flow: the link is gone.
    fn shut_down(&self, reason: &str) {
        if self.down.replace(true) {
            return;
        }
        let flows: Vec<FlowRef> = self.flows.borrow_mut().drain().map(|(_, f)| f).collect();
        for f in flows {
            match f {
                FlowRef::Flow(f) => f.link_lost(reason),
                FlowRef::Relay(r, leg) => r.link_lost(leg, reason),
                FlowRef::MsgIn(m) => self.router.messages.in_lost(&m),
                FlowRef::MsgOut(m) => self.router.messages.out_lost(&m),
            }
        }
        self.endpoints.borrow_mut().clear();
        self.awaiting_attach.borrow_mut().clear();
        self.deferred_credit.borrow_mut().clear();
        for w in self.space_waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Handles one decoded incoming frame.
    fn dispatch(self: &Rc<Self>, body: FrameBody) -> Result<(), LinkError> {
        match body {
            FrameBody::Heartbeat => Ok(()),
            FrameBody::Transfer { transfer, payload } => {
                let ep = self.endpoints.borrow().get(&transfer.handle).cloned();
                match ep {
                    Some(Endpoint::Flow(flow, Dir::Recv)) => {
                        let data = data_section_body(&payload).map_err(LinkError::Decode)?;
                        flow.on_data(data);
                        Ok(())
                    }
                    Some(Endpoint::Relay(relay, leg, Dir::Recv)) => {
                        let data = data_section_body(&payload).map_err(LinkError::Decode)?;
                        relay.on_data(leg, data);
                        Ok(())
                    }
                    Some(Endpoint::MsgIn(m)) => {
                        let router = self.router.clone();
                        self.router.messages.in_transfer(
                            &m,
                            &transfer,
                            payload,
                            |address, egress| {
                                router.message_targets_transit(address, egress, self.id)
                            },
                        );
                        Ok(())
                    }
                    Some(Endpoint::Control) => {
                        let body = data_section_body(&payload).map_err(LinkError::Decode)?;
                        let msg = RouterMessage::decode(&body).map_err(|e| {
                            LinkError::Protocol(format!("bad routing message: {e}"))
                        })?;
                        self.router.on_routing_message(self.id, msg);
                        Ok(())
                    }
                    // A transfer racing with a detach we sent: drop it.
                    Some(Endpoint::Flow(_, Dir::Send))
                    | Some(Endpoint::Relay(_, _, Dir::Send))
                    | Some(Endpoint::MsgOut(_))
                    | None => Ok(()),
                }
            }
            FrameBody::Performative(p) => self.dispatch_performative(p),
        }
    }

    fn dispatch_performative(self: &Rc<Self>, p: Performative) -> Result<(), LinkError> {
        match p {
            Performative::Attach(a) => {
                self.on_attach(a);
                Ok(())
            }
            Performative::Flow(f) => {
                if let (Some(h), Some(credit)) = (f.handle, f.link_credit) {
                    let ep = self.endpoints.borrow().get(&h.0).cloned();
                    match ep {
                        Some(Endpoint::Flow(flow, Dir::Send)) => {
                            flow.on_credit(f.delivery_count.unwrap_or(0), credit)
                        }
                        Some(Endpoint::Relay(relay, leg, Dir::Send)) => {
                            relay.on_credit(leg, f.delivery_count.unwrap_or(0), credit)
                        }
                        Some(Endpoint::MsgOut(out)) => {
                            let frames = f
                                .properties
                                .as_ref()
                                .and_then(|p| p.iter().find(|(k, _)| k.0 == PROP_FRAME_CREDIT))
                                .and_then(|(_, v)| match v {
                                    Value::Uint(n) => Some(*n),
                                    _ => None,
                                });
                            let messages = &self.router.messages;
                            messages.out_credit(&out, f.delivery_count.unwrap_or(0), credit);
                            if let Some(n) = frames {
                                messages.out_frame_credit(&out, n);
                            }
                        }
                        _ => {}
                    }
                }
                Ok(())
            }
            Performative::Detach(d) => {
                let ep = self.endpoints.borrow_mut().remove(&d.handle.0);
                let err = d.error.map(|e| {
                    let cond = condition_str(&e.condition);
                    (cond, e.description.unwrap_or_default())
                });
                match ep {
                    Some(Endpoint::Flow(flow, dir)) => flow.on_detach(dir, err),
                    Some(Endpoint::Relay(relay, leg, dir)) => relay.on_detach(leg, dir, err),
                    Some(Endpoint::MsgOut(out)) => self.router.messages.out_detached(&out),
                    Some(Endpoint::MsgIn(m)) => self.router.messages.in_detached(&m),
                    _ => {}
                }
                Ok(())
            }
            Performative::Close(c) => Err(LinkError::PeerClosed(
                c.error
                    .map(|e| {
                        format!(
                            "{}: {}",
                            condition_str(&e.condition),
                            e.description.unwrap_or_default()
                        )
                    })
                    .unwrap_or_else(|| "peer closed the connection".into()),
            )),
            Performative::End(_) => Err(LinkError::PeerClosed("peer ended the session".into())),
            Performative::Open(_) | Performative::Begin(_) => Err(LinkError::Protocol(
                "unexpected Open/Begin on an open link".into(),
            )),
            Performative::Disposition(d) => {
                self.router.messages.router_disposition(self, &d);
                Ok(())
            }
            Performative::Transfer(_) => Ok(()),
        }
    }

    fn on_attach(self: &Rc<Self>, a: Attach) {
        if a.name == CONTROL_LINK_NAME {
            self.endpoints
                .borrow_mut()
                .insert(a.handle.0, Endpoint::Control);
            return;
        }
        let Some((flow_name, dir_suffix)) = a.name.rsplit_once('/') else {
            tracing::warn!(link = self.id, name = %a.name, "attach with unknown link name");
            return;
        };
        // The peer's role tells which of our directions this handle feeds:
        // its sender feeds our receiving side.
        let our_dir = match a.role {
            Role::Sender => Dir::Recv,
            Role::Receiver => Dir::Send,
        };
        let existing = self.awaiting_attach.borrow().get(flow_name).cloned();
        match existing {
            Some(FlowRef::Flow(flow)) => {
                flow.set_remote_handle(our_dir, a.handle.0);
                self.endpoints
                    .borrow_mut()
                    .insert(a.handle.0, Endpoint::Flow(flow.clone(), our_dir));
                if flow.both_remote_handles_known() {
                    self.awaiting_attach.borrow_mut().remove(flow_name);
                }
                return;
            }
            Some(FlowRef::Relay(relay, leg)) => {
                relay.set_remote_handle(leg, our_dir, a.handle.0);
                self.register_relay_endpoint(a.handle.0, &relay, leg, our_dir);
                if relay.both_remote_handles_known(leg) {
                    self.awaiting_attach.borrow_mut().remove(flow_name);
                }
                return;
            }
            _ => {}
        }
        // Message links: `<router>/m/<n>`.
        if let Some(FlowRef::MsgOut(out)) = self.awaiting_attach.borrow_mut().remove(&a.name) {
            self.endpoints
                .borrow_mut()
                .insert(a.handle.0, Endpoint::MsgOut(out));
            return;
        }
        if flow_name.ends_with("/m") && our_dir == Dir::Recv {
            let egress = a
                .properties
                .as_ref()
                .and_then(|p| p.iter().find(|(k, _)| k.0 == PROP_EGRESS))
                .and_then(|(_, v)| match v {
                    Value::String(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            let m = self.router.messages.new_in(self, &a, egress);
            self.endpoints
                .borrow_mut()
                .insert(a.handle.0, Endpoint::MsgIn(m));
            return;
        }
        // A new flow from the peer: its client-to-service sender comes first.
        if dir_suffix != "c2s" || our_dir != Dir::Recv {
            tracing::warn!(link = self.id, name = %a.name, "attach for unknown flow");
            return;
        }
        let address = match a.target.as_deref() {
            Some(TargetArchetype::Target(t)) => t.address.clone().unwrap_or_default(),
            _ => String::new(),
        };
        let prop = |name: &str| {
            a.properties
                .as_ref()
                .and_then(|p| p.iter().find(|(k, _)| k.0 == name).map(|(_, v)| v.clone()))
        };
        let route = match (prop(PROP_EGRESS), prop(PROP_HOPS)) {
            (Some(Value::String(egress)), hops) => Some(FlowRoute {
                egress,
                hops: match hops {
                    Some(Value::Uint(n)) => n,
                    _ => 0,
                },
            }),
            _ => None,
        };
        let to_here = route.as_ref().is_none_or(|r| r.egress == self.router.id);
        let refusal = if to_here {
            None
        } else {
            let route = route.as_ref().filter(|r| r.hops < MAX_FLOW_HOPS);
            match route.map(|r| (r, self.router.next_hop(&r.egress))) {
                None => Some(format!(
                    "flow passed {MAX_FLOW_HOPS} routers (routing loop?)"
                )),
                Some((r, None)) => Some(format!(
                    "router {} has no route to router {}",
                    self.router.id, r.egress
                )),
                Some((_, Some(down))) if down.id == self.id => Some(format!(
                    "router {}'s route to the egress leads back (routing loop)",
                    self.router.id
                )),
                Some((r, Some(down))) => {
                    Relay::start(self, &down, flow_name, &address, r, a.handle.0);
                    return;
                }
            }
        };
        let flow = Flow::new_egress(self, flow_name.to_string(), address);
        flow.set_remote_handle(Dir::Recv, a.handle.0);
        self.endpoints
            .borrow_mut()
            .insert(a.handle.0, Endpoint::Flow(flow.clone(), Dir::Recv));
        self.awaiting_attach
            .borrow_mut()
            .insert(flow_name.to_string(), FlowRef::Flow(flow.clone()));
        self.register(flow.key, FlowRef::Flow(flow.clone()));
        match refusal {
            None => flow.start_egress(),
            Some(why) => {
                tracing::warn!(flow = %flow_name, "refusing transit flow: {why}");
                flow.refuse(COND_NO_ROUTE, why);
            }
        }
    }
}

/// A Data section wrapping `body` (the payload of a one-section message).
pub fn data_section(body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 8);
    v.extend_from_slice(&[0x00, 0x53, 0x75, 0xb0]);
    v.put_u32(body.len() as u32);
    v.extend_from_slice(body);
    v
}

fn amqp_error(condition: &str, description: String) -> definitions::Error {
    definitions::Error {
        condition: ErrorCondition::Custom(Symbol::from(condition)),
        description: Some(description),
        info: None,
    }
}

fn condition_str(c: &ErrorCondition) -> String {
    match c {
        ErrorCondition::Custom(s) => s.0.clone(),
        other => format!("{other:?}"),
    }
}

/// Why a link ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum LinkError {
    Io(io::Error),
    Decode(DecodeError),
    Protocol(String),
    PeerClosed(String),
    /// This router closed it (its connector or listener was deleted).
    LocalClose(String),
    DuplicateId(String),
    Silent(Duration),
    Closed,
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Io(e) => write!(f, "i/o error: {e}"),
            LinkError::Decode(e) => write!(f, "malformed frame ({}): {e}", e.condition()),
            LinkError::Protocol(s) => write!(f, "protocol error: {s}"),
            LinkError::PeerClosed(s) => write!(f, "peer closed the link: {s}"),
            LinkError::DuplicateId(id) => write!(
                f,
                "duplicate router id: peer uses this router's own id \"{id}\""
            ),
            LinkError::Silent(d) => {
                write!(f, "peer silent for {} ms (dead interval)", d.as_millis())
            }
            LinkError::Closed => write!(f, "connection closed by peer"),
            LinkError::LocalClose(why) => write!(f, "closed here: {why}"),
        }
    }
}

/// Which end of the TCP connection we are, and our configured cost.
#[derive(Debug, Clone, Copy)]
pub enum Side {
    Connector { cost: u32 },
    Listener,
}

/// Opens the AMQP connection on a fresh TLS stream: both ends send the
/// protocol header, Open and Begin at once, then read the peer's.
pub async fn establish<S>(
    router: &Rc<Router>,
    mut io: S,
    side: Side,
) -> Result<(Rc<Link>, LinkDriver<S>), LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let cfg = router.settings();
    let mut out = BytesMut::with_capacity(1024);
    out.extend_from_slice(&AMQP_PROTOCOL_HEADER);
    let mut props = OrderedMap::new();
    props.insert(
        Symbol::from(PROP_INITIAL_CREDIT),
        Value::Uint(cfg.window_credits),
    );
    props.insert(
        Symbol::from(PROP_MAX_DELIVERY),
        Value::Uint(cfg.max_delivery),
    );
    let own_cost = match side {
        Side::Connector { cost } => cost,
        Side::Listener => 0,
    };
    props.insert(Symbol::from(PROP_COST), Value::Uint(own_cost));
    let open = Open {
        container_id: router.id.clone(),
        hostname: None,
        max_frame_size: MaxFrameSize(MAX_FRAME_SIZE),
        channel_max: ChannelMax(0),
        idle_time_out: Some(cfg.dead_interval.as_millis() as u32),
        outgoing_locales: None,
        incoming_locales: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: Some(props),
    };
    let begin = Begin {
        remote_channel: match side {
            Side::Connector { .. } => None,
            Side::Listener => Some(0),
        },
        next_outgoing_id: 0,
        incoming_window: u32::MAX,
        outgoing_window: u32::MAX,
        handle_max: Handle(u32::MAX),
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    };
    for p in [Performative::Open(open), Performative::Begin(begin)] {
        encode_performative(&mut out, 0, &p)
            .map_err(|e| LinkError::Protocol(format!("encode: {e}")))?;
    }
    io.write_all(&out).await.map_err(LinkError::Io)?;
    io.flush().await.map_err(LinkError::Io)?;

    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let decoder = FrameDecoder::new(MAX_FRAME_SIZE);
    let deadline = Instant::now() + cfg.dead_interval.max(Duration::from_secs(3));
    // Protocol header.
    loop {
        match tether_protocol::decode_protocol_header(&mut rbuf) {
            Ok(Some(_)) => break,
            Ok(None) => read_more(&mut io, &mut rbuf, deadline).await?,
            Err(e) => return Err(LinkError::Decode(e)),
        }
    }
    let mut peer_open: Option<Open> = None;
    let mut got_begin = false;
    while peer_open.is_none() || !got_begin {
        let frame = match decoder.decode(&mut rbuf) {
            Ok(Some(f)) => f,
            Ok(None) => {
                read_more(&mut io, &mut rbuf, deadline).await?;
                continue;
            }
            Err(e) => {
                send_close(&mut io, e.condition(), &e.to_string()).await;
                return Err(LinkError::Decode(e));
            }
        };
        match frame.body {
            FrameBody::Performative(Performative::Open(o)) if peer_open.is_none() => {
                if o.container_id == router.id {
                    let why = format!("router id \"{}\" is already in use", router.id);
                    send_close(&mut io, COND_DUPLICATE_ID, &why).await;
                    return Err(LinkError::DuplicateId(o.container_id));
                }
                if o.max_frame_size.0 < MIN_PEER_FRAME_SIZE {
                    return Err(LinkError::Protocol(format!(
                        "peer max-frame-size {} is below {MIN_PEER_FRAME_SIZE}",
                        o.max_frame_size.0
                    )));
                }
                peer_open = Some(o);
            }
            FrameBody::Performative(Performative::Begin(_)) if peer_open.is_some() => {
                got_begin = true;
            }
            FrameBody::Performative(Performative::Close(c)) => {
                let why = c
                    .error
                    .map(|e| {
                        format!(
                            "{}: {}",
                            condition_str(&e.condition),
                            e.description.unwrap_or_default()
                        )
                    })
                    .unwrap_or_else(|| "no reason given".into());
                if why.starts_with(COND_DUPLICATE_ID) {
                    return Err(LinkError::DuplicateId(router.id.clone()));
                }
                return Err(LinkError::PeerClosed(why));
            }
            FrameBody::Heartbeat => {}
            _ => {
                let why = "expected Open then Begin from the peer";
                send_close(&mut io, "amqp:not-allowed", why).await;
                return Err(LinkError::Protocol(why.into()));
            }
        }
    }
    let Some(open) = peer_open else {
        return Err(LinkError::Protocol("no Open from the peer".into()));
    };
    let prop_u32 = |name: &str| -> Option<u32> {
        open.properties.as_ref().and_then(|p| {
            p.iter().find_map(|(k, v)| match v {
                Value::Uint(n) if k.0 == name => Some(*n),
                _ => None,
            })
        })
    };
    let peer_initial_credit = prop_u32(PROP_INITIAL_CREDIT).unwrap_or(1).max(1);
    let peer_frame_room =
        (open.max_frame_size.0 as usize).saturating_sub(tether_protocol::DATA_TRANSFER_OVERHEAD);
    let send_chunk = tether_tcp::MAX_READ_CHUNK
        .min(prop_u32(PROP_MAX_DELIVERY).unwrap_or(16 * 1024) as usize)
        .min(peer_frame_room)
        .max(1);
    let cost = own_cost.max(prop_u32(PROP_COST).unwrap_or(0)).max(1);
    let link = Rc::new(Link {
        id: router.next_link_id(),
        router: router.clone(),
        peer_id: open.container_id.clone(),
        cost,
        peer_initial_credit,
        send_chunk,
        out: RefCell::new(BytesMut::with_capacity(64 * 1024)),
        driver_waker: RefCell::new(None),
        space_waiters: RefCell::new(Vec::new()),
        endpoints: RefCell::new(HashMap::new()),
        awaiting_attach: RefCell::new(HashMap::new()),
        deferred_credit: RefCell::new(Vec::new()),
        handles: RefCell::new(HandleAllocator::default()),
        next_delivery_id: Cell::new(0),
        flows: RefCell::new(HashMap::new()),
        down: Cell::new(false),
        closing: RefCell::new(None),
        stats: LinkStats::default(),
        opened_at: Instant::now(),
        peer_addr: RefCell::new(String::new()),
        dir: Cell::new(""),
        peer_fingerprint: RefCell::new(None),
    });
    // Our control sender, then whatever routing wants to say first.
    link.send_attach(
        CONTROL_LINK_NAME,
        CONTROL_HANDLE,
        Role::Sender,
        "$tether-routing",
        &open.container_id,
        None,
    );
    let now = Instant::now();
    let driver = LinkDriver {
        link: link.clone(),
        io,
        rbuf,
        wbuf: BytesMut::with_capacity(64 * 1024),
        decoder,
        hello_interval: cfg.hello_interval,
        dead_interval: cfg.dead_interval,
        timer: Box::pin(tokio::time::sleep(cfg.hello_interval)),
        next_heartbeat: now + cfg.hello_interval,
        last_recv: now,
        sent_since_tick: true,
        flushing: false,
    };
    Ok((link, driver))
}

/// Best-effort Close with an error before dropping a connection that failed
/// while opening.
async fn send_close<S: AsyncWrite + Unpin>(io: &mut S, condition: &str, description: &str) {
    let mut out = BytesMut::new();
    let close = Close {
        error: Some(amqp_error(condition, description.to_string())),
    };
    if encode_performative(&mut out, 0, &Performative::Close(close)).is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = io.write_all(&out).await;
            let _ = io.flush().await;
        })
        .await;
    }
}

async fn read_more<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    deadline: Instant,
) -> Result<(), LinkError> {
    buf.reserve(READ_CHUNK);
    match tokio::time::timeout_at(deadline, io.read_buf(buf)).await {
        Err(_) => Err(LinkError::Protocol(
            "peer did not complete the AMQP open in time".into(),
        )),
        Ok(Ok(0)) => Err(LinkError::Closed),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(LinkError::Io(e)),
    }
}

/// The future that runs one link until it ends; resolves to the reason.
pub struct LinkDriver<S> {
    link: Rc<Link>,
    io: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    decoder: FrameDecoder,
    hello_interval: Duration,
    dead_interval: Duration,
    timer: Pin<Box<Sleep>>,
    next_heartbeat: Instant,
    last_recv: Instant,
    sent_since_tick: bool,
    flushing: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> LinkDriver<S> {
    fn poll_step(&mut self, cx: &mut Context<'_>) -> Result<bool, LinkError> {
        let mut progress = false;
        // Read, then dispatch every whole frame buffered (the handshake may
        // have read frames the peer pipelined behind its Begin).
        self.rbuf.reserve(READ_CHUNK);
        match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf) {
            Poll::Ready(Ok(0)) => return Err(LinkError::Closed),
            Poll::Ready(Ok(n)) => {
                progress = true;
                bump(&self.link.stats.bytes_in, n as u64);
                self.last_recv = Instant::now();
            }
            Poll::Ready(Err(e)) => return Err(LinkError::Io(e)),
            Poll::Pending => {}
        }
        loop {
            let frame = match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(frame)) => {
                    bump(&self.link.stats.frames_in, 1);
                    frame
                }
                Ok(None) => break,
                Err(e) => {
                    self.close_with(e.condition(), &e.to_string());
                    return Err(LinkError::Decode(e));
                }
            };
            if let Err(e) = self.link.dispatch(frame.body) {
                if let LinkError::Decode(d) = &e {
                    self.close_with(d.condition(), &d.to_string());
                }
                return Err(e);
            }
        }
        // Write: take everything flows appended, one write per batch.
        if self.wbuf.is_empty() {
            if !self.link.out.borrow().is_empty() {
                self.link.flush_deferred_credit();
            }
            let mut out = self.link.out.borrow_mut();
            if !out.is_empty() {
                std::mem::swap(&mut *out, &mut self.wbuf);
                drop(out);
                for w in self.link.space_waiters.borrow_mut().drain(..) {
                    w.wake();
                }
            }
        }
        if !self.wbuf.is_empty() {
            match Pin::new(&mut self.io).poll_write(cx, &self.wbuf) {
                Poll::Ready(Ok(0)) => return Err(LinkError::Closed),
                Poll::Ready(Ok(n)) => {
                    bump(&self.link.stats.bytes_out, n as u64);
                    bytes::Buf::advance(&mut self.wbuf, n);
                    self.sent_since_tick = true;
                    self.flushing = true;
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Err(LinkError::Io(e)),
                Poll::Pending => {}
            }
        }
        if self.wbuf.is_empty() && self.flushing {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.flushing = false,
                Poll::Ready(Err(e)) => return Err(LinkError::Io(e)),
                Poll::Pending => {}
            }
        }
        if self.wbuf.is_empty() && !self.flushing && self.link.out.borrow().is_empty() {
            if let Some(why) = self.link.closing.borrow().clone() {
                return Err(LinkError::LocalClose(why));
            }
        }
        // Heartbeats and the dead interval. The timer fires at the next
        // heartbeat or when the peer would be silent for the dead interval,
        // whichever is first, so a silent peer is dropped on time.
        if self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let silent = now.duration_since(self.last_recv);
            if silent >= self.dead_interval {
                return Err(LinkError::Silent(silent));
            }
            if now >= self.next_heartbeat {
                if !self.sent_since_tick {
                    self.link.with_out(tether_protocol::encode_heartbeat);
                }
                self.sent_since_tick = false;
                self.next_heartbeat = now + self.hello_interval;
            }
            let deadline = self.next_heartbeat.min(self.last_recv + self.dead_interval);
            self.timer.as_mut().reset(deadline);
            progress = true;
        }
        Ok(progress)
    }

    /// Queues a Close with an error condition and makes one attempt to send
    /// it; the connection is dropped right after.
    fn close_with(&mut self, condition: &str, description: &str) {
        let close = Close {
            error: Some(amqp_error(condition, description.to_string())),
        };
        let mut out = BytesMut::new();
        if encode_performative(&mut out, 0, &Performative::Close(close)).is_ok() {
            self.wbuf.unsplit(out);
        }
        let mut cx = Context::from_waker(Waker::noop());
        let _ = Pin::new(&mut self.io).poll_write(&mut cx, &self.wbuf);
        let _ = Pin::new(&mut self.io).poll_flush(&mut cx);
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Future for LinkDriver<S> {
    type Output = LinkError;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<LinkError> {
        let this = self.get_mut();
        {
            let mut w = this.link.driver_waker.borrow_mut();
            if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *w = Some(cx.waker().clone());
            }
        }
        // Bounded work per poll so flows on this thread get their turn.
        for _ in 0..32 {
            match this.poll_step(cx) {
                Ok(true) => continue,
                Ok(false) => return Poll::Pending,
                Err(e) => {
                    this.link.shut_down(&e.to_string());
                    return Poll::Ready(e);
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<S> Drop for LinkDriver<S> {
    fn drop(&mut self) {
        self.link.shut_down("link driver stopped");
    }
}
