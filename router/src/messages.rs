//! Message routing for AMQP clients: addresses, the messages in flight
//! through this router, and the inter-router links that carry them.
//!
//! # Model
//!
//! A client *receiver* attached with a source address is a local consumer
//! ([`Consumer`]); the router advertises the address (class `M`) in the
//! link-state database, so every router knows where consumers are. A
//! client *sender* ([`InLink`]) gets credit only while its address is
//! reachable somewhere. Each message ([`Msg`]) entering at a client sender
//! gets an egress router chosen at this (the ingress) router:
//! `balanced` (default) = path cost + deliveries this router has unsettled
//! there; `closest` = path cost. It then travels hop by hop on per-address,
//! per-egress inter-router links (`<router>/m/<n>`, attach properties
//! `tether:egress`), unchanged (no re-encoding), to a consumer at the
//! egress with credit (fewest unsettled, ties take turns). `multicast`
//! addresses send a copy to every router with consumers (one copy per next
//! hop link and the routers behind it: see [`MsgOut`]).
//!
//! # Flow control
//!
//! - A client sender has a window of [`SENDER_WINDOW`] deliveries: a
//!   delivery holds its credit until its outcome comes back (unsettled) or
//!   until it left this router (pre-settled). So unsettled traffic is held
//!   to the window end to end, and a slow consumer slows its senders.
//! - Each inter-router message link has [`MSG_WINDOW`] deliveries of credit
//!   (implicit, both ends run the same constant); a delivery's credit is
//!   returned when it has left the receiving router (to a consumer or the
//!   next hop). So each hop holds at most a window per address and egress.
//! - A congested router applies back-pressure; it never drops. Messages
//!   are dropped only when nothing can take them (no route, consumers
//!   gone): pre-settled ones are counted in [`MessageStats::dropped`] (and
//!   logged: the first, then every 1000th),
//!   unsettled ones are released (or rejected `amqp:not-found` for an
//!   address nobody offers).
//!
//! - Multi-frame (streamed) messages also use frame credit per message
//!   link ([`FRAME_WINDOW`] frames), returned as frames leave the router;
//!   so a huge message to a stalled consumer waits in its sender, not in
//!   the routers.
//!
//! # Settlement
//!
//! Each forwarded unsettled delivery remembers where it came from
//! ([`Upstream`]); the consumer's outcome goes back hop by hop to the
//! sender. A consumer that detaches, or a link that goes down, with
//! deliveries unsettled returns `modified` (delivery-failed: they may have
//! been seen) for those sent and `released` for those never sent.
//! Multicast unsettled deliveries are settled with one combined outcome
//! (accepted if any copy was accepted, else the first outcome).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use tether_protocol::types::definitions::{Handle, ReceiverSettleMode, Role, SenderSettleMode};
use tether_protocol::types::messaging::{
    Accepted, DeliveryState, Modified, Rejected, Released, Source, TargetArchetype,
};
use tether_protocol::types::performatives::{Attach, Disposition};
use tether_protocol::{encode_transfer, Performative, TransferHeader};

use crate::link::{FlowRef, Link};

/// Deliveries a client sender may have outstanding.
pub const SENDER_WINDOW: u32 = 250;
/// Credit of each inter-router message link.
pub const MSG_WINDOW: u32 = 250;
/// Frames of multi-frame (streamed) messages each inter-router message
/// link may have in flight per hop: returned as frames leave the receiving
/// router, so a large message never piles up in any router.
pub const FRAME_WINDOW: u32 = 32;
/// A client connection with more than this many bytes not yet written
/// holds back the frame credit of the streamed messages it carries.
pub const CLIENT_BACKLOG_HIGH: usize = 1024 * 1024;
/// Multicast copies queued per consumer at most.
pub const MULTICAST_QUEUE: usize = 1000;
/// Engine-address class of message addresses.
pub const CLASS_MESSAGE: &str = "M";

/// Addresses served by each router for itself, never advertised: a
/// message to one goes to this router's own consumer.
pub fn is_local_only(address: &str) -> bool {
    address == crate::management::MANAGEMENT
}

/// Counters for metrics and tests.
#[derive(Debug, Default, Clone)]
pub struct MessageStats {
    pub received: u64,
    pub delivered: u64,
    /// Pre-settled messages nobody could take.
    pub dropped: u64,
    /// Unsettled messages released or rejected because nobody could take them.
    pub refused: u64,
    /// Pre-settled messages routed.
    pub presettled: u64,
    /// Outcomes of unsettled messages passed back through this router.
    pub accepted: u64,
    pub rejected: u64,
    pub released: u64,
    pub modified: u64,
}

/// Where a delivery's outcome goes.
pub enum Upstream {
    /// Pre-settled: nobody waits for an outcome.
    None,
    /// A client sender on this router.
    Client {
        inlink: Rc<dyn SenderLink>,
        delivery: u64,
    },
    /// The previous router: a Disposition on that link.
    Router { link: Rc<Link>, delivery_id: u32 },
}

/// What the messaging core needs from a client sender's link (implemented
/// by the client connection driver).
pub trait SenderLink {
    /// Settles an incoming delivery with `state` and returns its credit.
    fn settle(&self, delivery: u64, state: DeliveryState);
    /// A delivery left this router (pre-settled): its credit comes back.
    fn forwarded(&self);
    /// Reachability of its address may have changed: re-check credit.
    fn refresh(&self);
}

/// What the messaging core needs from a client receiver's link.
pub trait ConsumerLink {
    /// Credit the client gave us, minus what we used.
    fn credit(&self) -> u32;
    /// Starts (`continuing == None`) or continues a delivery to the client;
    /// returns its id. The first frame uses one credit.
    fn send(&self, msg: &Msg, frame: &[u8], more: bool, continuing: Option<u64>) -> Option<u64>;
    /// Aborts a delivery in progress.
    fn abort(&self, delivery: u64);
    /// The client drained and nothing is queued for it.
    fn drain_done(&self);
    fn draining(&self) -> bool;
    /// Bytes queued for the client's socket and not yet written.
    fn backlog(&self) -> usize;
    /// Runs `f` once the connection's backlog is low again.
    fn when_drained(&self, f: Box<dyn FnOnce()>);
}

/// One message in flight through this router.
pub struct Msg {
    pub address: String,
    pub tag: Bytes,
    pub settled: bool,
    pub message_format: u32,
    upstream: RefCell<Upstream>,
    /// Frames received but not yet sent on (no credit yet, or the sink
    /// is a queue).
    frames: RefCell<Vec<Bytes>>,
    /// All frames received.
    complete: Cell<bool>,
    aborted: Cell<bool>,
    sink: RefCell<Option<Sink>>,
    /// Sent to several places: frames are kept for copies that start
    /// later (so a multicast message is held whole while copies remain).
    multicast: Cell<bool>,
    /// Multicast: copies still waiting for their outcome, and the outcome
    /// so far.
    copies: Cell<u32>,
    combined: RefCell<Option<DeliveryState>>,
    /// Counted against (address, egress) for balancing.
    egress: RefCell<Option<String>>,
    /// Copies that have not left this router yet; when the last one
    /// leaves, the credit it used comes back (see [`Msg::left`]).
    to_leave: Cell<u32>,
    left_once: Cell<bool>,
    /// The inter-router link it came in on, if any (its credit).
    source_in: RefCell<Option<Rc<MsgIn>>>,
    /// A multi-frame message: its frames use frame credit.
    streamed: Cell<bool>,
    /// Frames received here and not yet sent on (waiting for a sink or for
    /// frame credit); the client driver stops reading while it is high.
    held: Cell<u32>,
    drain_waker: RefCell<Option<std::task::Waker>>,
}

/// Where a message's frames go once it has credit.
enum Sink {
    Consumer {
        consumer: Rc<Consumer>,
        delivery: Option<u64>,
    },
    Router {
        out: Rc<MsgOut>,
        delivery_id: u32,
    },
    /// Every copy of a multicast message.
    Copies(Vec<Sink>),
}

impl Msg {
    pub fn new(
        address: String,
        tag: Bytes,
        settled: bool,
        message_format: u32,
        upstream: Upstream,
    ) -> Rc<Msg> {
        Rc::new(Msg {
            address,
            tag,
            settled,
            message_format,
            upstream: RefCell::new(upstream),
            frames: RefCell::new(Vec::new()),
            complete: Cell::new(false),
            aborted: Cell::new(false),
            sink: RefCell::new(None),
            multicast: Cell::new(false),
            copies: Cell::new(0),
            combined: RefCell::new(None),
            egress: RefCell::new(None),
            to_leave: Cell::new(1),
            left_once: Cell::new(false),
            source_in: RefCell::new(None),
            streamed: Cell::new(false),
            held: Cell::new(0),
            drain_waker: RefCell::new(None),
        })
    }

    pub fn is_complete(&self) -> bool {
        self.complete.get()
    }

    /// Frames of this message held in this router.
    pub fn held(&self) -> u32 {
        self.held.get()
    }

    /// Wakes `waker` once the held frames have drained (see [`Msg::held`]).
    pub fn wake_when_drained(&self, waker: &std::task::Waker) {
        *self.drain_waker.borrow_mut() = Some(waker.clone());
    }

    fn held_add(&self, n: u32) {
        self.held.set(self.held.get() + n);
    }

    fn held_sub(&self, n: u32) {
        let h = self.held.get().saturating_sub(n);
        self.held.set(h);
        if h <= FRAME_WINDOW / 2 {
            if let Some(w) = self.drain_waker.borrow_mut().take() {
                w.wake();
            }
        }
    }

    /// Sends the outcome upstream (once).
    fn settle_upstream(&self, core: &MessageCore, state: DeliveryState) {
        if let Some(egress) = self.egress.borrow_mut().take() {
            core.unsettled_done(&self.address, &egress);
        }
        {
            let mut stats = core.stats.borrow_mut();
            match &state {
                DeliveryState::Accepted(_) => stats.accepted += 1,
                DeliveryState::Rejected(_) => stats.rejected += 1,
                DeliveryState::Released(_) => stats.released += 1,
                DeliveryState::Modified(_) => stats.modified += 1,
                _ => {}
            }
        }
        let up = std::mem::replace(&mut *self.upstream.borrow_mut(), Upstream::None);
        match up {
            Upstream::None => {}
            Upstream::Client { inlink, delivery } => inlink.settle(delivery, state),
            Upstream::Router { link, delivery_id } => {
                if !link.is_down() {
                    link.send_performative(&Performative::Disposition(Disposition {
                        role: Role::Receiver,
                        first: delivery_id,
                        last: None,
                        settled: true,
                        state: Some(state),
                        batchable: false,
                    }));
                }
            }
        }
    }

    /// A copy (or the only copy) reached its outcome.
    fn copy_outcome(&self, core: &MessageCore, state: DeliveryState) {
        let left = self.copies.get().saturating_sub(1);
        self.copies.set(left);
        {
            let mut c = self.combined.borrow_mut();
            let better = match (&*c, &state) {
                (None, _) => true,
                (Some(DeliveryState::Accepted(_)), _) => false,
                (_, DeliveryState::Accepted(_)) => true,
                _ => false,
            };
            if better {
                *c = Some(state);
            }
        }
        if left == 0 {
            let s = self.combined.borrow_mut().take().unwrap_or_else(released);
            self.settle_upstream(core, s);
        }
    }

    /// One copy left this router (sent on, or given up). When the last
    /// has, the credit the message used upstream comes back: the
    /// inter-router link's it came on, or a client sender's for a
    /// pre-settled message (an unsettled one holds its sender's credit
    /// until the outcome). So each hop holds at most its window, and the
    /// slowest consumer of a multicast message paces the sender.
    fn left(&self, core: &MessageCore) {
        let left = self.to_leave.get().saturating_sub(1);
        self.to_leave.set(left);
        if left > 0 || self.left_once.replace(true) {
            return;
        }
        if let Some(mi) = self.source_in.borrow_mut().take() {
            core.in_credit_back(&mi);
        }
        if self.settled {
            if let Upstream::Client { inlink, .. } = &*self.upstream.borrow() {
                inlink.forwarded();
            }
        }
    }
}

pub fn released() -> DeliveryState {
    DeliveryState::Released(Released {})
}

pub fn modified_failed() -> DeliveryState {
    DeliveryState::Modified(Modified {
        delivery_failed: Some(true),
        undeliverable_here: None,
        message_annotations: None,
    })
}

pub fn accepted() -> DeliveryState {
    DeliveryState::Accepted(Accepted {})
}

pub fn rejected(condition: &str, description: &str) -> DeliveryState {
    DeliveryState::Rejected(Rejected {
        error: Some(tether_protocol::types::definitions::Error {
            condition: tether_protocol::types::definitions::ErrorCondition::Custom(
                serde_amqp::primitives::Symbol::from(condition),
            ),
            description: Some(description.to_string()),
            info: None,
        }),
    })
}

/// A client receiver: a local consumer of an address.
pub struct Consumer {
    pub key: u64,
    pub address: String,
    pub link: Rc<dyn ConsumerLink>,
    /// Deliveries sent and not settled by the client.
    unsettled: RefCell<HashMap<u64, Rc<Msg>>>,
    /// The delivery in progress (multi-frame), if any: frames of other
    /// messages wait behind it.
    busy: Cell<bool>,
    /// Multicast copies waiting for credit.
    mc_waiting: RefCell<VecDeque<Rc<Msg>>>,
}

impl Consumer {
    pub fn new(key: u64, address: String, link: Rc<dyn ConsumerLink>) -> Rc<Consumer> {
        Rc::new(Consumer {
            key,
            address,
            link,
            unsettled: RefCell::new(HashMap::new()),
            busy: Cell::new(false),
            mc_waiting: RefCell::new(VecDeque::new()),
        })
    }

    fn load(&self) -> usize {
        self.unsettled.borrow().len()
    }
}

/// Per-address state at this router.
#[derive(Default)]
struct AddressState {
    consumers: Vec<Rc<Consumer>>,
    turn: usize,
    /// Messages for local consumers waiting for credit.
    waiting: VecDeque<Rc<Msg>>,
}

/// An inter-router link we send messages for one (address, egress) on.
pub struct MsgOut {
    pub key: u64,
    pub link: Rc<Link>,
    pub handle: u32,
    pub address: String,
    /// The egress router, or `*` for multicast.
    pub egress: String,
    credit: Cell<u32>,
    delivery_count: Cell<u32>,
    pending: RefCell<VecDeque<Rc<Msg>>>,
    /// The delivery in progress (multi-frame).
    busy: Cell<bool>,
    /// Deliveries sent and not yet settled by the peer.
    unsettled: Cell<u32>,
    /// We sent our Detach (the link is closing).
    detached: Cell<bool>,
    /// Frames of streamed messages we may still send (see [`FRAME_WINDOW`]).
    frame_credit: Cell<u32>,
    /// Frames waiting for frame credit, in order.
    held: RefCell<VecDeque<HeldFrame>>,
    /// The message whose last frame is held: finished when it goes.
    finish_pending: RefCell<Option<Rc<Msg>>>,
}

/// A frame waiting for frame credit on an out link.
struct HeldFrame {
    msg: Rc<Msg>,
    frame: Bytes,
    more: bool,
    first: bool,
    delivery_id: u32,
}

/// An inter-router link we receive messages for one (address, egress) on.
pub struct MsgIn {
    pub key: u64,
    pub link: Rc<Link>,
    pub handle: u32,
    pub address: String,
    pub egress: String,
    received: Cell<u32>,
    /// Messages that have left this router (their credit is free).
    returned: Cell<u32>,
    owed: Cell<u32>,
    /// Frame credit to return (frames of streamed messages that left).
    frames_owed: Cell<u32>,
    /// The delivery whose frames are arriving.
    current: RefCell<Option<Rc<Msg>>>,
}

/// A delivery sent on an inter-router link, awaiting its outcome: the
/// message and the out link it went on.
type InFlight = (Rc<Msg>, Rc<MsgOut>);

/// The router's messaging state. See the module documentation.
pub struct MessageCore {
    pub router_id: String,
    addresses: RefCell<HashMap<String, AddressState>>,
    /// Unsettled deliveries sent from here, per (address, egress router).
    unsettled: RefCell<HashMap<(String, String), u32>>,
    /// Out links per (link id, address, egress).
    outs: RefCell<HashMap<(u64, String, String), Rc<MsgOut>>>,
    /// Deliveries sent on inter-router links awaiting an outcome, per
    /// (link id, delivery id).
    in_flight: RefCell<HashMap<(u64, u32), InFlight>>,
    next_dynamic: Cell<u64>,
    turns: RefCell<HashMap<String, usize>>,
    /// Client senders per address, told when reachability changes.
    senders: RefCell<HashMap<String, Vec<std::rc::Weak<dyn SenderLink>>>>,
    pub stats: RefCell<MessageStats>,
    /// Deliveries per address (management's router.address counters).
    pub counters: RefCell<HashMap<String, AddressCounters>>,
}

/// Deliveries of one address through this router.
#[derive(Debug, Default, Clone, Copy)]
pub struct AddressCounters {
    /// Entered the network here (from a client or the management agent).
    pub ingress: u64,
    /// Given to consumers here.
    pub egress: u64,
    /// Passed on from one router to another.
    pub transit: u64,
}

/// Where a message goes from the ingress.
pub enum Dest {
    /// One consumer here (anycast).
    Local,
    /// Every consumer here (multicast).
    LocalAll,
    Remote {
        link: Rc<Link>,
        egress: String,
    },
}

impl MessageCore {
    pub fn new(router_id: String) -> MessageCore {
        MessageCore {
            router_id,
            addresses: RefCell::new(HashMap::new()),
            unsettled: RefCell::new(HashMap::new()),
            outs: RefCell::new(HashMap::new()),
            in_flight: RefCell::new(HashMap::new()),
            next_dynamic: Cell::new(0),
            turns: RefCell::new(HashMap::new()),
            senders: RefCell::new(HashMap::new()),
            stats: RefCell::new(MessageStats::default()),
            counters: RefCell::new(HashMap::new()),
        }
    }

    /// The engine address for a message address.
    pub fn engine_address(address: &str) -> String {
        let mut key = String::with_capacity(CLASS_MESSAGE.len() + address.len());
        key.push_str(CLASS_MESSAGE);
        key.push_str(address);
        key
    }

    /// Addresses with local consumers (for the routing engine).
    pub fn local_addresses(&self) -> Vec<String> {
        self.addresses
            .borrow()
            .iter()
            .filter(|(k, a)| !a.consumers.is_empty() && !is_local_only(k))
            .map(|(k, _)| Self::engine_address(k))
            .collect()
    }

    /// Registers a client sender of `address` (for reachability changes).
    pub fn add_sender(&self, address: &str, sender: std::rc::Weak<dyn SenderLink>) {
        let mut m = self.senders.borrow_mut();
        let v = m.entry(address.to_string()).or_default();
        v.retain(|w| w.strong_count() > 0);
        v.push(sender);
    }

    /// The routing engine's offers for an engine address changed.
    pub fn address_changed(&self, engine_address: &str, reachable: bool) {
        let Some(address) = engine_address.strip_prefix(CLASS_MESSAGE) else {
            return;
        };
        if !reachable {
            self.close_idle_outs(address);
        }
        let senders: Vec<Rc<dyn SenderLink>> = {
            let mut m = self.senders.borrow_mut();
            let Some(v) = m.get_mut(address) else {
                return;
            };
            v.retain(|w| w.strong_count() > 0);
            if v.is_empty() {
                m.remove(address);
                return;
            }
            v.iter().filter_map(|w| w.upgrade()).collect()
        };
        for s in senders {
            s.refresh();
        }
    }

    /// Detaches the out links of an address nobody offers any more that
    /// have nothing queued or unsettled (dynamic reply addresses come and
    /// go; their links must not pile up).
    fn close_idle_outs(&self, address: &str) {
        let idle: Vec<Rc<MsgOut>> = self
            .outs
            .borrow()
            .values()
            .filter(|o| {
                o.address == address
                    && o.pending.borrow().is_empty()
                    && o.unsettled.get() == 0
                    && !o.busy.get()
            })
            .cloned()
            .collect();
        for o in idle {
            self.outs
                .borrow_mut()
                .remove(&(o.link.id, o.address.clone(), o.egress.clone()));
            if !o.detached.replace(true) && !o.link.is_down() {
                tracing::debug!(address = %o.address, egress = %o.egress, "closing idle message link");
                o.link.send_detach(o.handle, None);
            }
        }
    }

    /// The peer detached one of our out links (or answered our Detach).
    pub fn out_detached(self: &Rc<Self>, out: &Rc<MsgOut>) {
        if !out.detached.replace(true) && !out.link.is_down() {
            out.link.send_detach(out.handle, None);
        }
        self.out_lost(out);
        out.link.unregister(out.key);
        out.link.release_handle(out.handle);
    }

    /// The peer detached a message link we receive on.
    pub fn in_detached(self: &Rc<Self>, msg_in: &Rc<MsgIn>) {
        self.in_lost(msg_in);
        if !msg_in.link.is_down() {
            msg_in.link.send_detach(msg_in.handle, None);
        }
        msg_in.link.unregister(msg_in.key);
        msg_in.link.release_handle(msg_in.handle);
    }

    /// Counts a pre-settled message nobody could take, and says so in the
    /// log: the first drop, then every 1000th (a flood must not flood the
    /// log too).
    fn count_drop(&self, address: &str) {
        let n = {
            let mut st = self.stats.borrow_mut();
            st.dropped += 1;
            st.dropped
        };
        if n == 1 || n % 1000 == 0 {
            tracing::warn!(%address, dropped_total = n, "dropped a pre-settled message: no consumer can take it");
        }
    }

    /// Refuses a message at once (see [`MessageCore::route`] with no target).
    pub fn refuse_now(&self, msg: &Rc<Msg>, state: DeliveryState) {
        self.refuse(msg, state);
    }

    /// A unique address for a dynamic receiver, routable everywhere.
    pub fn dynamic_address(&self) -> String {
        let n = self.next_dynamic.get() + 1;
        self.next_dynamic.set(n);
        let salt: u32 = rand::random();
        format!("_tether/{}/temp.{n}.{salt:08x}", self.router_id)
    }

    pub fn unsettled_to(&self, address: &str, egress: &str) -> u32 {
        self.unsettled
            .borrow()
            .get(&(address.to_string(), egress.to_string()))
            .copied()
            .unwrap_or(0)
    }

    fn unsettled_started(&self, address: &str, egress: &str) {
        *self
            .unsettled
            .borrow_mut()
            .entry((address.to_string(), egress.to_string()))
            .or_default() += 1;
    }

    fn unsettled_done(&self, address: &str, egress: &str) {
        let mut m = self.unsettled.borrow_mut();
        let key = (address.to_string(), egress.to_string());
        if let Some(n) = m.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&key);
            }
        }
    }

    /// Takes a round-robin turn among `n` equal choices for `address`.
    pub fn turn(&self, address: &str, n: usize) -> usize {
        let mut t = self.turns.borrow_mut();
        let e = t.entry(address.to_string()).or_default();
        let pick = *e % n.max(1);
        *e = e.wrapping_add(1);
        pick
    }

    /// Adds a local consumer; true if the address was new here.
    pub fn add_consumer(&self, consumer: Rc<Consumer>) -> bool {
        let mut a = self.addresses.borrow_mut();
        let st = a.entry(consumer.address.clone()).or_default();
        st.consumers.push(consumer);
        st.consumers.len() == 1
    }

    /// Removes a consumer: its unsettled deliveries go back `modified`, and
    /// if it was the last one, messages waiting for it are released.
    /// True if the address has no local consumer left.
    pub fn remove_consumer(&self, consumer: &Rc<Consumer>) -> bool {
        let (last, waiting) = {
            let mut a = self.addresses.borrow_mut();
            let Some(st) = a.get_mut(&consumer.address) else {
                return false;
            };
            st.consumers.retain(|c| !Rc::ptr_eq(c, consumer));
            let last = st.consumers.is_empty();
            let waiting: Vec<Rc<Msg>> = if last {
                st.waiting.drain(..).collect()
            } else {
                Vec::new()
            };
            if last {
                a.remove(&consumer.address);
            }
            (last, waiting)
        };
        let queued: Vec<Rc<Msg>> = consumer.mc_waiting.borrow_mut().drain(..).collect();
        for m in queued {
            self.copy_refused(&m);
        }
        let unsettled: Vec<Rc<Msg>> = consumer
            .unsettled
            .borrow_mut()
            .drain()
            .map(|(_, m)| m)
            .collect();
        for m in unsettled {
            m.copy_outcome(self, modified_failed());
        }
        for m in waiting {
            self.refuse(&m, released());
        }
        last
    }

    /// Nobody can take `msg`: settle it (unsettled) or count the drop.
    fn refuse(&self, msg: &Rc<Msg>, state: DeliveryState) {
        msg.aborted.set(true);
        if msg.settled {
            self.count_drop(&msg.address);
        } else {
            self.stats.borrow_mut().refused += 1;
            msg.copy_outcome(self, state);
        }
        msg.left(self);
    }

    /// A new message entered this router (its first frame is in `msg`'s
    /// frames): send it to `targets` (one for anycast, several for
    /// multicast). Called by the ingress and by inter-router receivers.
    pub fn route(self: &Rc<Self>, msg: &Rc<Msg>, targets: Vec<Dest>) {
        {
            let mut stats = self.stats.borrow_mut();
            stats.received += 1;
            if msg.settled {
                stats.presettled += 1;
            }
        }
        if targets.is_empty() {
            self.refuse(
                msg,
                rejected(
                    "amqp:not-found",
                    &format!("no consumer for address {:?} in the network", msg.address),
                ),
            );
            return;
        }
        self.count_delivery(msg, &targets);
        msg.copies.set(targets.len() as u32);
        msg.to_leave.set(targets.len() as u32);
        if !msg.settled && targets.len() == 1 {
            let egress = match &targets[0] {
                Dest::Local | Dest::LocalAll => self.router_id.clone(),
                Dest::Remote { egress, .. } => egress.clone(),
            };
            self.unsettled_started(&msg.address, &egress);
            *msg.egress.borrow_mut() = Some(egress);
        }
        if targets.len() > 1 || matches!(targets[0], Dest::LocalAll) {
            // Copies may start at different times: keep every frame (and
            // return frame credit as frames arrive; the message is held
            // whole here).
            msg.multicast.set(true);
            self.multicast_frames_arrived(msg, msg.frames.borrow().len() as u32);
        }
        for t in targets {
            match t {
                Dest::Local => self.deliver_local(msg),
                Dest::LocalAll => self.deliver_local_all(msg),
                Dest::Remote { link, egress } => self.send_remote(msg, &link, &egress),
            }
        }
    }

    fn count_delivery(&self, msg: &Msg, targets: &[Dest]) {
        let from_router = msg.source_in.borrow().is_some();
        let mut counters = self.counters.borrow_mut();
        let c = match counters.get_mut(&msg.address) {
            Some(c) => c,
            None => counters.entry(msg.address.clone()).or_default(),
        };
        if !from_router {
            c.ingress += 1;
        }
        for t in targets {
            match t {
                Dest::Local | Dest::LocalAll => c.egress += 1,
                Dest::Remote { .. } if from_router => c.transit += 1,
                Dest::Remote { .. } => {}
            }
        }
    }

    /// Local consumers of one address: (client consumers, in-process ones).
    pub fn consumers_of(&self, address: &str) -> (usize, usize) {
        match self.addresses.borrow().get(address) {
            Some(st) => {
                let in_process = st
                    .consumers
                    .iter()
                    .filter(|c| c.key > u64::MAX - 16)
                    .count();
                (st.consumers.len() - in_process, in_process)
            }
            None => (0, 0),
        }
    }

    /// Local consumers per address: (address, consumers, in-process ones).
    pub fn local_consumers(&self) -> Vec<(String, usize, usize)> {
        self.addresses
            .borrow()
            .iter()
            .filter(|(_, st)| !st.consumers.is_empty())
            .map(|(a, st)| {
                let in_process = st
                    .consumers
                    .iter()
                    .filter(|c| c.key > u64::MAX - 16)
                    .count();
                (a.clone(), st.consumers.len() - in_process, in_process)
            })
            .collect()
    }

    /// A copy of `msg` for every local consumer of its address, each
    /// queued (at most [`MULTICAST_QUEUE`] per consumer; beyond, that copy
    /// is dropped and counted, or released if unsettled).
    fn deliver_local_all(self: &Rc<Self>, msg: &Rc<Msg>) {
        let consumers: Vec<Rc<Consumer>> = self
            .addresses
            .borrow()
            .get(&msg.address)
            .map(|st| st.consumers.clone())
            .unwrap_or_default();
        if consumers.is_empty() {
            self.copy_refused(msg);
            return;
        }
        msg.copies
            .set(msg.copies.get() + consumers.len() as u32 - 1);
        msg.to_leave
            .set(msg.to_leave.get() + consumers.len() as u32 - 1);
        for c in consumers {
            let full = c.mc_waiting.borrow().len() >= MULTICAST_QUEUE;
            if full {
                self.copy_refused(msg);
                continue;
            }
            c.mc_waiting.borrow_mut().push_back(msg.clone());
            self.pump_consumer(&c);
        }
    }

    /// One multicast copy could not be delivered.
    fn copy_refused(&self, msg: &Rc<Msg>) {
        if msg.settled {
            self.count_drop(&msg.address);
        } else {
            self.stats.borrow_mut().refused += 1;
            msg.copy_outcome(self, released());
        }
        msg.left(self);
    }

    /// Sends a consumer's queued multicast copies while it has credit.
    fn pump_consumer(self: &Rc<Self>, c: &Rc<Consumer>) {
        for _ in 0..100_000 {
            if c.busy.get() || c.link.credit() == 0 {
                return;
            }
            let Some(msg) = c.mc_waiting.borrow_mut().pop_front() else {
                return;
            };
            if msg.aborted.get() {
                continue;
            }
            self.attach_sink(
                &msg,
                Sink::Consumer {
                    consumer: c.clone(),
                    delivery: None,
                },
            );
        }
    }

    fn multicast_frames_arrived(&self, msg: &Rc<Msg>, n: u32) {
        if !msg.streamed.get() {
            return;
        }
        let source = msg.source_in.borrow().clone();
        if let Some(mi) = source {
            self.in_frame_credit(&mi, n);
        }
    }

    /// Queues `msg` for a local consumer and delivers what credit allows.
    fn deliver_local(self: &Rc<Self>, msg: &Rc<Msg>) {
        let has_consumers = {
            let mut a = self.addresses.borrow_mut();
            match a.get_mut(&msg.address) {
                Some(st) if !st.consumers.is_empty() => {
                    st.waiting.push_back(msg.clone());
                    true
                }
                _ => false,
            }
        };
        if !has_consumers {
            self.refuse(msg, released());
            return;
        }
        self.pump_address(&msg.address);
    }

    /// Gives waiting messages of `address` to consumers with credit.
    pub fn pump_address(self: &Rc<Self>, address: &str) {
        for _ in 0..100_000 {
            let pick = {
                let mut a = self.addresses.borrow_mut();
                let Some(st) = a.get_mut(address) else {
                    return;
                };
                let Some(front) = st.waiting.front() else {
                    break;
                };
                if front.aborted.get() {
                    st.waiting.pop_front();
                    continue;
                }
                let n = st.consumers.len();
                let mut best: Option<(usize, usize)> = None;
                for k in 0..n {
                    let i = (st.turn + k) % n;
                    let c = &st.consumers[i];
                    if c.busy.get() || c.link.credit() == 0 {
                        continue;
                    }
                    let load = c.load();
                    if best.is_none_or(|(_, l)| load < l) {
                        best = Some((i, load));
                    }
                }
                let Some((i, _)) = best else {
                    break;
                };
                st.turn = i + 1;
                let msg = st.waiting.pop_front();
                msg.map(|m| (m, st.consumers[i].clone()))
            };
            let Some((msg, consumer)) = pick else {
                break;
            };
            self.attach_sink(
                &msg,
                Sink::Consumer {
                    consumer,
                    delivery: None,
                },
            );
        }
        // Drain: a draining consumer with nothing waiting gives its credit back.
        let drained: Vec<Rc<Consumer>> = {
            let a = self.addresses.borrow();
            match a.get(address) {
                Some(st) if st.waiting.is_empty() => st
                    .consumers
                    .iter()
                    .filter(|c| c.link.draining() && !c.busy.get())
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            }
        };
        for c in drained {
            c.link.drain_done();
        }
    }

    /// Sends `msg` towards `egress` on `link` (the next hop).
    fn send_remote(self: &Rc<Self>, msg: &Rc<Msg>, link: &Rc<Link>, egress: &str) {
        let out = self.out_link(link, &msg.address, egress);
        out.pending.borrow_mut().push_back(msg.clone());
        self.pump_out(&out);
    }

    /// The out link for (address, egress) on `link`, attached on first use.
    fn out_link(&self, link: &Rc<Link>, address: &str, egress: &str) -> Rc<MsgOut> {
        let key = (link.id, address.to_string(), egress.to_string());
        if let Some(o) = self.outs.borrow().get(&key) {
            return o.clone();
        }
        let out = Rc::new(MsgOut {
            key: link.router.next_flow_key(),
            link: link.clone(),
            handle: link.alloc_handle(),
            address: address.to_string(),
            egress: egress.to_string(),
            credit: Cell::new(MSG_WINDOW),
            delivery_count: Cell::new(0),
            pending: RefCell::new(VecDeque::new()),
            busy: Cell::new(false),
            unsettled: Cell::new(0),
            detached: Cell::new(false),
            frame_credit: Cell::new(FRAME_WINDOW),
            held: RefCell::new(VecDeque::new()),
            finish_pending: RefCell::new(None),
        });
        let name = format!("{}/m/{}", self.router_id, out.key);
        link.register(out.key, FlowRef::MsgOut(out.clone()));
        link.expect_attach(name.clone(), FlowRef::MsgOut(out.clone()));
        link.send_performative(&Performative::Attach(message_attach(
            &name,
            out.handle,
            Role::Sender,
            address,
            Some(egress),
        )));
        self.outs.borrow_mut().insert(key, out.clone());
        out
    }

    /// Sends what the out link's credit allows.
    pub fn pump_out(self: &Rc<Self>, out: &Rc<MsgOut>) {
        for _ in 0..100_000 {
            if out.busy.get() || out.credit.get() == 0 || out.link.is_down() || out.detached.get() {
                return;
            }
            let Some(msg) = out.pending.borrow_mut().pop_front() else {
                return;
            };
            if msg.aborted.get() {
                continue;
            }
            out.credit.set(out.credit.get() - 1);
            out.delivery_count
                .set(out.delivery_count.get().wrapping_add(1));
            let delivery_id = out.link.next_delivery_id();
            self.attach_sink(
                &msg,
                Sink::Router {
                    out: out.clone(),
                    delivery_id,
                },
            );
        }
    }

    /// `msg` may now go to `sink`: sends the frames received so far (and
    /// later ones as they come, [`MessageCore::frame`]).
    fn attach_sink(self: &Rc<Self>, msg: &Rc<Msg>, mut sink: Sink) {
        let frames = if msg.multicast.get() {
            msg.frames.borrow().clone()
        } else {
            std::mem::take(&mut *msg.frames.borrow_mut())
        };
        if msg.sink.borrow().is_none() {
            // Frames waiting for a sink now go to it (or wait in it for
            // frame credit, counted again there).
            msg.held_sub(frames.len() as u32);
        }
        let complete = msg.complete.get();
        let n = frames.len();
        if n == 0 && complete {
            // Nothing at all (an aborted or empty message): nothing to send.
            return;
        }
        for (i, f) in frames.iter().enumerate() {
            let more = !(complete && i + 1 == n);
            self.send_frame(msg, &mut sink, f, more);
        }
        if complete {
            self.sink_done(msg, &sink);
        }
        let mut s = msg.sink.borrow_mut();
        match &mut *s {
            Some(Sink::Copies(v)) => v.push(sink),
            Some(existing) => {
                let first = std::mem::replace(existing, Sink::Copies(Vec::new()));
                *existing = Sink::Copies(vec![first, sink]);
            }
            None => *s = Some(sink),
        }
    }

    fn send_frame(self: &Rc<Self>, msg: &Rc<Msg>, sink: &mut Sink, frame: &Bytes, more: bool) {
        match sink {
            Sink::Consumer { consumer, delivery } => {
                let first = delivery.is_none();
                let id = consumer.link.send(msg, frame, more, *delivery);
                if msg.streamed.get() {
                    // The frame left for the client's socket: its credit
                    // goes back once the connection is keeping up.
                    if consumer.link.backlog() > CLIENT_BACKLOG_HIGH {
                        let (core, m) = (self.clone(), msg.clone());
                        consumer
                            .link
                            .when_drained(Box::new(move || core.frame_left(&m)));
                    } else {
                        self.frame_left(msg);
                    }
                }
                if first {
                    *delivery = id;
                    if let Some(id) = id {
                        if !msg.settled {
                            consumer.unsettled.borrow_mut().insert(id, msg.clone());
                        }
                    }
                }
                consumer.busy.set(more);
            }
            Sink::Router { out, delivery_id } => {
                let first = !out.busy.get();
                if first && !msg.settled {
                    out.unsettled.set(out.unsettled.get() + 1);
                    self.in_flight
                        .borrow_mut()
                        .insert((out.link.id, *delivery_id), (msg.clone(), out.clone()));
                }
                let held = HeldFrame {
                    msg: msg.clone(),
                    frame: frame.clone(),
                    more,
                    first,
                    delivery_id: *delivery_id,
                };
                if msg.streamed.get()
                    && (out.frame_credit.get() == 0 || !out.held.borrow().is_empty())
                {
                    msg.held_add(1);
                    out.held.borrow_mut().push_back(held);
                    // The delivery is in progress until its held frames go.
                    out.busy.set(true);
                    return;
                }
                out.busy.set(more);
                self.write_frame(out, &held);
            }
            Sink::Copies(v) => {
                for s in v {
                    self.send_frame(msg, s, frame, more);
                }
            }
        }
    }

    /// Encodes one frame on an out link (streamed frames use frame credit).
    fn write_frame(self: &Rc<Self>, out: &Rc<MsgOut>, f: &HeldFrame) {
        let t = TransferHeader {
            handle: out.handle,
            delivery_id: f.first.then_some(f.delivery_id),
            delivery_tag: f.first.then(|| f.msg.tag.clone()),
            message_format: f.first.then_some(f.msg.message_format),
            settled: Some(f.msg.settled),
            more: f.more,
            ..Default::default()
        };
        out.link
            .with_out(|buf: &mut BytesMut| encode_transfer(buf, 0, &t, &f.frame));
        if f.msg.streamed.get() {
            out.frame_credit
                .set(out.frame_credit.get().saturating_sub(1));
            self.frame_left(&f.msg);
        }
    }

    /// The peer granted frame credit on an out link: send held frames.
    pub fn out_frame_credit(self: &Rc<Self>, out: &Rc<MsgOut>, n: u32) {
        out.frame_credit
            .set(out.frame_credit.get().saturating_add(n));
        for _ in 0..1_000_000 {
            if out.frame_credit.get() == 0 || out.link.is_down() {
                break;
            }
            let Some(f) = out.held.borrow_mut().pop_front() else {
                break;
            };
            f.msg.held_sub(1);
            self.write_frame(out, &f);
        }
        if out.held.borrow().is_empty() {
            let done = out.finish_pending.borrow_mut().take();
            if let Some(msg) = done {
                out.busy.set(false);
                msg.left(self);
                self.pump_out(out);
            }
        }
    }

    /// One frame of a streamed message left this router: its frame credit
    /// goes back to the link it came on (multicast messages are held whole
    /// and returned their frame credit on arrival).
    fn frame_left(&self, msg: &Rc<Msg>) {
        if !msg.streamed.get() || msg.multicast.get() {
            return;
        }
        let source = msg.source_in.borrow().clone();
        if let Some(mi) = source {
            self.in_frame_credit(&mi, 1);
        }
    }

    fn in_frame_credit(&self, mi: &Rc<MsgIn>, n: u32) {
        let owed = mi.frames_owed.get() + n;
        mi.frames_owed.set(owed);
        if owed >= FRAME_WINDOW / 2 {
            self.flush_in_credit(mi);
        } else if owed == n {
            mi.link.defer_credit(FlowRef::MsgIn(mi.clone()));
        }
    }

    /// The last frame went to `sink`: free the sink for the next message.
    fn sink_done(self: &Rc<Self>, msg: &Rc<Msg>, sink: &Sink) {
        match sink {
            Sink::Consumer { consumer, .. } => {
                self.stats.borrow_mut().delivered += 1;
                consumer.busy.set(false);
                msg.left(self);
                let consumer = consumer.clone();
                self.pump_consumer(&consumer);
                let address = consumer.address.clone();
                self.pump_address(&address);
            }
            Sink::Router { out, .. } => {
                if !out.held.borrow().is_empty() {
                    // The last frame waits for frame credit.
                    *out.finish_pending.borrow_mut() = Some(msg.clone());
                    return;
                }
                out.busy.set(false);
                msg.left(self);
                let out = out.clone();
                self.pump_out(&out);
            }
            Sink::Copies(v) => {
                for s in v {
                    self.sink_done(msg, s);
                }
            }
        }
    }

    /// A later frame of `msg` arrived.
    pub fn frame(self: &Rc<Self>, msg: &Rc<Msg>, frame: Bytes, more: bool) {
        if msg.aborted.get() {
            return;
        }
        if !more {
            msg.complete.set(true);
        }
        let mut sink = msg.sink.borrow_mut().take();
        if msg.multicast.get() {
            self.multicast_frames_arrived(msg, 1);
            if sink.is_some() {
                msg.frames.borrow_mut().push(frame.clone());
            }
        }
        match &mut sink {
            None => {
                msg.held_add(1);
                msg.frames.borrow_mut().push(frame);
            }
            Some(s) => {
                self.send_frame(msg, s, &frame, more);
                if !more {
                    self.sink_done(msg, s);
                }
            }
        }
        *msg.sink.borrow_mut() = sink;
    }

    /// The first frame of a new message: recorded before routing.
    pub fn first_frame(msg: &Rc<Msg>, frame: Bytes, more: bool) {
        if !more {
            msg.complete.set(true);
        }
        msg.streamed.set(more);
        msg.held_add(1);
        msg.frames.borrow_mut().push(frame);
    }

    /// The sender aborted `msg` mid-way: abort wherever it was going.
    pub fn abort(self: &Rc<Self>, msg: &Rc<Msg>) {
        if msg.aborted.replace(true) {
            return;
        }
        let sink = msg.sink.borrow_mut().take();
        if let Some(s) = sink {
            self.abort_sink(msg, &s);
        }
        msg.frames.borrow_mut().clear();
        // Whatever was still to go will not: its credit comes back.
        msg.to_leave.set(1);
        msg.left(self);
        let _ = std::mem::replace(&mut *msg.upstream.borrow_mut(), Upstream::None);
    }

    fn abort_sink(self: &Rc<Self>, msg: &Rc<Msg>, sink: &Sink) {
        match sink {
            Sink::Consumer { consumer, delivery } => {
                if let Some(d) = delivery {
                    consumer.link.abort(*d);
                    consumer.unsettled.borrow_mut().remove(d);
                }
                consumer.busy.set(false);
                let a = consumer.address.clone();
                self.pump_address(&a);
            }
            Sink::Router { out, delivery_id } => {
                if out.busy.get() && !out.link.is_down() {
                    let t = TransferHeader {
                        handle: out.handle,
                        more: false,
                        aborted: true,
                        settled: Some(true),
                        ..Default::default()
                    };
                    out.link
                        .with_out(|b: &mut BytesMut| encode_transfer(b, 0, &t, &[]));
                }
                if let Some((_, o)) = self
                    .in_flight
                    .borrow_mut()
                    .remove(&(out.link.id, *delivery_id))
                {
                    o.unsettled.set(o.unsettled.get().saturating_sub(1));
                }
                out.busy.set(false);
                let _ = msg;
                let out = out.clone();
                self.pump_out(&out);
            }
            Sink::Copies(v) => {
                for s in v {
                    self.abort_sink(msg, s);
                }
            }
        }
    }

    /// A client settled (or updated) a delivery we sent to `consumer`.
    pub fn consumer_disposition(
        self: &Rc<Self>,
        consumer: &Rc<Consumer>,
        delivery: u64,
        state: Option<DeliveryState>,
        settled: bool,
    ) {
        if !settled {
            // Intermediate states (received) are not passed on.
            return;
        }
        let msg = consumer.unsettled.borrow_mut().remove(&delivery);
        if let Some(msg) = msg {
            msg.copy_outcome(self, state.unwrap_or_else(accepted));
        }
    }

    /// The client gave `consumer` credit.
    pub fn consumer_credit(self: &Rc<Self>, consumer: &Rc<Consumer>) {
        self.pump_consumer(consumer);
        let a = consumer.address.clone();
        self.pump_address(&a);
    }

    /// A Disposition from a peer router for deliveries we sent it.
    pub fn router_disposition(self: &Rc<Self>, link: &Rc<Link>, d: &Disposition) {
        if !d.settled || d.role != Role::Receiver {
            return;
        }
        let last = d.last.unwrap_or(d.first);
        let state = d.state.clone().unwrap_or_else(accepted);
        // Bounded: at most the deliveries we have in flight on this link.
        let mut id = d.first;
        for _ in 0..=(last.wrapping_sub(d.first)).min(1 << 20) {
            let entry = self.in_flight.borrow_mut().remove(&(link.id, id));
            if let Some((msg, out)) = entry {
                out.unsettled.set(out.unsettled.get().saturating_sub(1));
                msg.copy_outcome(self, state.clone());
            }
            id = id.wrapping_add(1);
        }
    }

    /// Credit from the peer on one of our out links.
    pub fn out_credit(self: &Rc<Self>, out: &Rc<MsgOut>, delivery_count: u32, link_credit: u32) {
        let credit = delivery_count
            .wrapping_add(link_credit)
            .wrapping_sub(out.delivery_count.get());
        out.credit
            .set(if credit > link_credit { 0 } else { credit });
        self.pump_out(out);
    }

    /// A peer attached a message link to us: we receive on `handle`.
    pub fn new_in(&self, link: &Rc<Link>, attach: &Attach, egress: String) -> Rc<MsgIn> {
        let address = match attach.target.as_deref() {
            Some(TargetArchetype::Target(t)) => t.address.clone().unwrap_or_default(),
            _ => String::new(),
        };
        let msg_in = Rc::new(MsgIn {
            key: link.router.next_flow_key(),
            link: link.clone(),
            handle: link.alloc_handle(),
            address: address.clone(),
            egress,
            received: Cell::new(0),
            returned: Cell::new(0),
            owed: Cell::new(0),
            frames_owed: Cell::new(0),
            current: RefCell::new(None),
        });
        link.register(msg_in.key, FlowRef::MsgIn(msg_in.clone()));
        link.send_performative(&Performative::Attach(message_attach(
            &attach.name,
            msg_in.handle,
            Role::Receiver,
            &address,
            None,
        )));
        msg_in
    }

    /// One frame on an inter-router message link.
    pub fn in_transfer(
        self: &Rc<Self>,
        msg_in: &Rc<MsgIn>,
        t: &TransferHeader,
        payload: Bytes,
        targets: impl FnOnce(&str, &str) -> Vec<Dest>,
    ) {
        let current = msg_in.current.borrow().clone();
        if let Some(msg) = current {
            if t.aborted {
                msg_in.current.borrow_mut().take();
                self.abort(&msg);
                return;
            }
            if !t.more {
                msg_in.current.borrow_mut().take();
            }
            self.frame(&msg, payload, t.more);
            return;
        }
        if t.aborted {
            return;
        }
        // A new delivery: one credit.
        msg_in.received.set(msg_in.received.get().wrapping_add(1));
        let settled = t.settled.unwrap_or(false);
        let upstream = match (settled, t.delivery_id) {
            (false, Some(id)) => Upstream::Router {
                link: msg_in.link.clone(),
                delivery_id: id,
            },
            _ => Upstream::None,
        };
        let msg = Msg::new(
            msg_in.address.clone(),
            t.delivery_tag.clone().unwrap_or_default(),
            settled,
            t.message_format.unwrap_or(0),
            upstream,
        );
        MessageCore::first_frame(&msg, payload, t.more);
        if t.more {
            *msg_in.current.borrow_mut() = Some(msg.clone());
        }
        let targets = targets(&msg_in.address, &msg_in.egress);
        // Its credit comes back when it has left this router (Msg::left).
        *msg.source_in.borrow_mut() = Some(msg_in.clone());
        self.route(&msg, targets);
    }

    /// A message that came in on `msg_in` has left this router: return its
    /// credit, at once when a quarter window is owed, otherwise with the
    /// link's next write.
    fn in_credit_back(&self, msg_in: &Rc<MsgIn>) {
        msg_in.returned.set(msg_in.returned.get().wrapping_add(1));
        let owed = msg_in.owed.get() + 1;
        msg_in.owed.set(owed);
        if owed >= (MSG_WINDOW / 4).max(1) {
            self.flush_in_credit(msg_in);
        } else if owed == 1 {
            msg_in.link.defer_credit(FlowRef::MsgIn(msg_in.clone()));
        }
    }

    /// Sends the credit owed on an in link (deferred to the link's next write).
    pub fn flush_in_credit(&self, msg_in: &Rc<MsgIn>) {
        let owed = msg_in.owed.replace(0);
        let frames = msg_in.frames_owed.replace(0);
        if (owed > 0 || frames > 0) && !msg_in.link.is_down() {
            let held = msg_in.received.get().wrapping_sub(msg_in.returned.get());
            msg_in.link.send_credit_with_frames(
                msg_in.handle,
                msg_in.received.get(),
                MSG_WINDOW.saturating_sub(held),
                frames,
            );
        }
    }

    /// An inter-router link went down: deliveries in flight on it get
    /// `modified` upstream, those queued for it `released`.
    pub fn out_lost(self: &Rc<Self>, out: &Rc<MsgOut>) {
        {
            let key = (out.link.id, out.address.clone(), out.egress.clone());
            let mut outs = self.outs.borrow_mut();
            // A newer out link for the same key may have replaced this one.
            if outs.get(&key).is_some_and(|o| Rc::ptr_eq(o, out)) {
                outs.remove(&key);
            }
        }
        let pending: Vec<Rc<Msg>> = out.pending.borrow_mut().drain(..).collect();
        for m in pending {
            self.copy_refused(&m);
        }
        let lost: Vec<Rc<Msg>> = {
            let mut f = self.in_flight.borrow_mut();
            let keys: Vec<(u64, u32)> = f
                .iter()
                .filter(|(k, (_, o))| k.0 == out.link.id && Rc::ptr_eq(o, out))
                .map(|(k, _)| *k)
                .collect();
            keys.into_iter()
                .filter_map(|k| f.remove(&k))
                .map(|(m, _)| m)
                .collect()
        };
        out.unsettled.set(0);
        for m in lost {
            m.copy_outcome(self, modified_failed());
        }
    }

    /// An in link's router link went down: a message still arriving is
    /// aborted downstream.
    pub fn in_lost(self: &Rc<Self>, msg_in: &Rc<MsgIn>) {
        let current = msg_in.current.borrow_mut().take();
        if let Some(m) = current {
            self.abort(&m);
        }
    }
}

/// The Attach of an inter-router message link.
pub fn message_attach(
    name: &str,
    handle: u32,
    role: Role,
    address: &str,
    egress: Option<&str>,
) -> Attach {
    let properties = egress.map(|e| {
        let mut p = serde_amqp::primitives::OrderedMap::new();
        p.insert(
            serde_amqp::primitives::Symbol::from(crate::link::PROP_EGRESS),
            serde_amqp::Value::String(e.to_string()),
        );
        p
    });
    let initial_delivery_count = (role == Role::Sender).then_some(0);
    Attach {
        name: name.to_string(),
        handle: Handle(handle),
        role,
        snd_settle_mode: SenderSettleMode::Mixed,
        rcv_settle_mode: ReceiverSettleMode::First,
        source: Some(Box::new(Source::default())),
        target: Some(Box::new(TargetArchetype::Target(Target_(address)))),
        unsettled: None,
        incomplete_unsettled: false,
        initial_delivery_count,
        max_message_size: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties,
    }
}

#[allow(non_snake_case)]
fn Target_(address: &str) -> tether_protocol::types::messaging::Target {
    tether_protocol::types::messaging::Target {
        address: Some(address.to_string()),
        ..Default::default()
    }
}
