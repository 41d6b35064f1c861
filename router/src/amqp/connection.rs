//! The sans-IO engine of one AMQP 1.0 client connection (server side).
//!
//! [`ClientConnection`] owns the protocol state of one accepted client:
//! protocol headers, the SASL exchange, `open`/`close`, sessions with their
//! flow control, links with their credit, and the bookkeeping of deliveries
//! in both directions. It does no I/O and reads no clock: the driver hands
//! it received bytes and the current time, and takes back the bytes to write
//! ([`ClientConnection::poll_transmit`]), what happened
//! ([`ClientConnection::poll_event`]) and when to call back
//! ([`ClientConnection::poll_timeout`]). The router acts on links through
//! the methods in the "router actions" block; they only queue frames.
//!
//! Hot path: a client's transfer is decoded by `tether-protocol`'s fast
//! path, checked against session window and link credit with a couple of
//! array/hash look-ups, and handed out as an [`Event::Transfer`] whose
//! payload is a slice of the receive buffer. Sending encodes the transfer
//! header straight into the output buffer behind which the payload is
//! copied once. Flows from `set_credit` and dispositions from
//! `dispose_incoming` are coalesced until the next `poll_transmit` (or the
//! next frame that must follow them), so a burst of messages costs one
//! Flow and one Disposition range, not one per message.
//!
//! Conventions (the spec leaves them to us):
//! - Our channel for a session is the client's channel, and our handle for
//!   a link is the client's handle. We never begin sessions or attach links
//!   ourselves, so our numbers are always free when the client's are.
//! - A client's `detach` is answered at once by the engine (the router is
//!   told with [`Event::Detached`]); a link the router detaches or refuses
//!   is gone when the client's `detach` comes back, without an event.
//! - A link whose client receiver asks for rcv-settle-mode `second` is
//!   accepted as is; when the client sends a terminal outcome without
//!   settling, the engine settles the delivery itself and reports it
//!   settled. Client senders are always answered with rcv-settle-mode
//!   `first` (we settle when we dispose), whatever they asked for.
//! - Transaction coordinators are refused (`amqp:not-implemented`), and
//!   link resumption (`unsettled` maps, `resume`) is not supported.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use serde_amqp::primitives::{Array, Symbol};
use tether_protocol::types::definitions::{
    self, Handle, ReceiverSettleMode, Role, SenderSettleMode,
};
use tether_protocol::types::messaging::{DeliveryState, Target, TargetArchetype};
use tether_protocol::types::performatives::{
    Attach, Begin, ChannelMax, Close, Detach, Disposition, End, Flow, MaxFrameSize, Open,
};
use tether_protocol::types::sasl::{SaslChallenge, SaslCode, SaslMechanisms, SaslOutcome};
use tether_protocol::{
    decode_sasl_frame, encode_close_with_error, encode_heartbeat, encode_performative,
    encode_sasl_frame, encode_transfer_header, transfer_frame_overhead, DecodeError, Frame,
    FrameBody, FrameDecoder, Performative, SaslFrame, TransferHeader, AMQP_PROTOCOL_HEADER,
    MIN_MAX_FRAME_SIZE, SASL_PROTOCOL_HEADER,
};

use super::error::*;
use super::sasl::{check_plain, SaslConfig, MECH_ANONYMOUS, MECH_PLAIN};

/// Highest channel (session) number a client may use; announced in `open`.
pub const CHANNEL_MAX: u16 = 255;
/// Highest link handle a client may use per session; announced in `begin`.
pub const HANDLE_MAX: u32 = 4095;
/// Links one connection may hold; attaches beyond are refused by the engine
/// with `amqp:resource-limit-exceeded` (the router never sees them).
pub const MAX_LINKS: usize = 16 * 1024;
/// The session incoming-window we announce (in transfer frames). We take
/// every frame as it comes, so this is no memory bound: it is re-announced
/// (with any Flow, or a session Flow once half is used) so a client never
/// waits on it.
pub const INCOMING_WINDOW: u32 = 1 << 20;
/// The session outgoing-window we announce; informational only (spec
/// 2.5.6), the value Qpid Proton uses.
const OUTGOING_WINDOW: u32 = i32::MAX as u32;
/// Largest SASL frame we accept. The spec's limit is 512 bytes; PLAIN
/// credentials such as long tokens can exceed it, so we are lenient.
const SASL_MAX_FRAME_SIZE: u32 = 64 * 1024;
/// How long we wait for the client's `close` after sending ours.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Floor for the heartbeat interval, whatever idle-time-out a client asks
/// for: a client announcing 1 ms must not make us flood it.
const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// Capability we offer in `open`: a sender link with no target address may
/// address each message itself (`to`).
pub const CAP_ANONYMOUS_RELAY: &str = "ANONYMOUS-RELAY";

/// Engine settings, fixed for the connection's life.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// The router id, sent as our container-id in `open`.
    pub container_id: String,
    /// The max-frame-size we announce and enforce on input (at least 512).
    pub max_frame_size: u32,
    /// The idle-time-out we announce: a client silent for twice this long
    /// is dropped. Zero disables it (and announces none).
    pub idle_timeout: Duration,
    /// Who may connect.
    pub sasl: SaslConfig,
}

/// A link of this connection, assigned by the engine; unique for the
/// connection's life (a detached link's id is never reused).
pub type LinkId = u64;

/// A delivery the client sent us, as named by its delivery-id within the
/// link's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IncomingDeliveryId(pub u32);

/// A delivery we sent the client, as named by its delivery-id within the
/// link's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OutgoingDeliveryId(pub u32);

/// One frame's worth of a delivery to send, see
/// [`ClientConnection::send_transfer`].
#[derive(Debug, Clone, Default)]
pub struct OutgoingTransfer {
    /// Delivery tag (only sent on the first frame; at most 32 bytes).
    pub tag: Bytes,
    /// Send pre-settled. On a later frame of the delivery, `true` settles it.
    pub settled: bool,
    /// Message format (0 = AMQP message), first frame only.
    pub message_format: u32,
    /// `None` starts a new delivery; `Some(id)` continues the delivery
    /// `send_transfer` returned `id` for.
    pub continuing: Option<OutgoingDeliveryId>,
}

/// What happened on the connection, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The client's `open` arrived and we answered it.
    Opened {
        /// The client's container-id.
        container_id: String,
        /// The SASL PLAIN user, or `None` (anonymous or no SASL).
        user: Option<String>,
    },
    /// A client sender attached (we receive on `link`); answer with
    /// `accept_attach` (then `set_credit`) or `refuse_attach`.
    SenderAttached {
        link: LinkId,
        name: String,
        /// Target address; `None` means an anonymous-relay sender (null
        /// target or null address) unless `dynamic` is set.
        target: Option<String>,
        /// The client asks us to create a node and name it (the address
        /// goes in `accept_attach`), e.g. a JMS temporary queue.
        dynamic: bool,
        snd_settle_mode: SenderSettleMode,
        rcv_settle_mode: ReceiverSettleMode,
    },
    /// A client receiver attached (we send on `link`); answer with
    /// `accept_attach` or `refuse_attach`.
    ReceiverAttached {
        link: LinkId,
        name: String,
        /// Source address (`None` for a null source or address).
        source: Option<String>,
        /// The client asks us to create a node and name it (the address
        /// goes in `accept_attach`).
        dynamic: bool,
        snd_settle_mode: SenderSettleMode,
        rcv_settle_mode: ReceiverSettleMode,
    },
    /// One frame of a delivery the client sent on `link`.
    Transfer {
        link: LinkId,
        delivery: IncomingDeliveryId,
        /// The first frame of this delivery (it consumed one credit).
        first: bool,
        /// The delivery tag as sent (normally only on the first frame).
        tag: Option<Bytes>,
        /// The client settled the delivery (on this or an earlier frame):
        /// no disposition is expected.
        settled: bool,
        message_format: u32,
        /// This frame's share of the message, a slice of the input buffer.
        payload: Bytes,
        /// More frames of this delivery follow.
        more: bool,
        /// The client aborted the delivery: drop what was received of it.
        aborted: bool,
    },
    /// The client updated or settled a delivery we sent on `link`.
    Disposition {
        link: LinkId,
        delivery: OutgoingDeliveryId,
        state: Option<DeliveryState>,
        settled: bool,
    },
    /// The client changed the credit we have on `link` (it is the
    /// receiver). `credit` is what [`ClientConnection::credit`] returns.
    /// With `drain`, send what is available and then call `drain_done`.
    Credit {
        link: LinkId,
        credit: u32,
        drain: bool,
    },
    /// After a `send_transfer` on `link` failed with
    /// [`SendError::SessionWindow`], the client's session window has
    /// opened again: try again.
    Sendable { link: LinkId },
    /// The link ended because the client detached it (closed or not), or
    /// because it broke the link's rules (the error is then ours). Also for
    /// links not answered yet, and for every link of a session that ended.
    Detached {
        link: LinkId,
        error: Option<(String, String)>,
    },
    /// The connection ended (client `close`, fatal error, idle timeout,
    /// or the end of our own `close`). Always the last event; links are not
    /// reported detached one by one.
    Closed { error: Option<(String, String)> },
}

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a protocol header (first, or the AMQP one after SASL).
    Header {
        after_sasl: bool,
    },
    /// SASL: we sent the mechanisms (and maybe a challenge for PLAIN).
    Sasl {
        awaiting_response: bool,
    },
    /// AMQP header exchanged; waiting for the client's `open`.
    AwaitOpen,
    Opened,
    /// We sent `close`; waiting for the client's until `deadline`.
    Closing {
        deadline: Instant,
    },
    Closed,
}

/// A client connection: see the module docs.
pub struct ClientConnection {
    config: ConnectionConfig,
    max_frame_size: u32,
    phase: Phase,
    decoder: FrameDecoder,
    out: BytesMut,
    events: VecDeque<Event>,
    /// Latest time the driver told us about.
    now: Instant,
    last_recv: Instant,
    /// When we last handed bytes to the driver (approximated by `now`).
    last_sent: Instant,
    /// Heartbeat interval: half the client's idle-time-out.
    heartbeat: Option<Duration>,
    /// Largest frame we send: the smaller of ours and the client's.
    send_max_frame: u32,
    user: Option<String>,
    /// Indexed by channel.
    sessions: Vec<Option<Session>>,
    /// Indexed by slot; a [`LinkId`] is slot and generation.
    links: Vec<LinkSlot>,
    free_slots: Vec<u32>,
    live_links: usize,
    /// Links whose credit changed since their last Flow.
    pending_flows: Vec<LinkId>,
    /// Sessions that used half their incoming window since their last Flow.
    pending_session_flows: Vec<u16>,
    /// Dispositions for client deliveries not yet encoded (one range).
    pending_disposition: Option<DispositionRun>,
}

/// A u32-keyed map with a multiplicative hash: client-chosen keys are
/// bounded (handles by `HANDLE_MAX`, delivery ids by credit), and SipHash
/// costs more than the rest of a transfer's bookkeeping.
type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = u64::from(v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

struct Session {
    /// We ended the session with an error; frames are ignored until the
    /// client's `end`.
    discarding: bool,
    /// Client handle (= ours) to link slot.
    handles: IdMap<u32>,
    // Incoming side (client -> us), spec 2.5.6.
    next_incoming_id: u32,
    /// What is left of the incoming-window we last announced.
    incoming_window: u32,
    flow_pending: bool,
    // Outgoing side (us -> client).
    next_outgoing_id: u32,
    next_delivery_id: u32,
    remote_incoming_window: u32,
    /// Transfer frames encoded but beyond the client's window, sent as it
    /// opens: a multi-frame send may be cut by the window mid-way.
    held: BytesMut,
    held_frames: VecDeque<usize>,
    /// Link slots that got `SendError::SessionWindow`.
    blocked: Vec<u32>,
    /// Unsettled deliveries we sent, in delivery-id order; settled ones
    /// become tombstones until they reach the front (or are compacted).
    unsettled_out: VecDeque<OutEntry>,
    tombstones: usize,
    /// Unsettled deliveries the client sent: delivery-id to link slot.
    unsettled_in: IdMap<u32>,
}

#[derive(Clone, Copy)]
struct OutEntry {
    id: u32,
    slot: u32,
}

const TOMBSTONE: u32 = u32::MAX;

struct LinkSlot {
    gen: u32,
    link: Option<Link>,
}

struct Link {
    channel: u16,
    handle: u32,
    /// The client is the sender (we receive); else the receiver.
    client_sends: bool,
    state: LinkState,
    /// The sender's delivery-count (ours when we send; our view of the
    /// client's when we receive).
    delivery_count: u32,
    /// Credit left: granted by us (client sends) or by the client (we send).
    credit: u32,
    /// `set_credit` changed `credit` since our last Flow.
    flow_pending: bool,
    /// The client asked us to drain (we send).
    drain: bool,
    /// `send_transfer` failed on the session window.
    blocked: bool,
    incoming: Option<InDelivery>,
    outgoing: Option<OutDelivery>,
}

enum LinkState {
    /// The client's attach, kept for the reply.
    Pending(Box<Attach>),
    Attached,
    /// We sent `detach`; waiting for the client's.
    Detaching,
}

#[derive(Clone, Copy)]
struct InDelivery {
    id: u32,
    settled: bool,
    message_format: u32,
}

#[derive(Clone, Copy)]
struct OutDelivery {
    id: u32,
    settled: bool,
}

struct DispositionRun {
    channel: u16,
    first: u32,
    last: u32,
    settled: bool,
    state: Option<DeliveryState>,
}

/// A link-level problem found while handling a transfer.
enum TransferFault {
    Session(&'static str, String),
    Link(u32, &'static str, &'static str),
}

impl ClientConnection {
    /// A connection that has just been accepted; nothing is sent until the
    /// client's protocol header arrives.
    pub fn new(config: ConnectionConfig, now: Instant) -> Self {
        let max_frame_size = config.max_frame_size.max(MIN_MAX_FRAME_SIZE);
        ClientConnection {
            max_frame_size,
            // Ours from the start (not 512): clients' opens with properties
            // can exceed 512 bytes, and we buffer that much anyway.
            decoder: FrameDecoder::new(max_frame_size),
            config,
            phase: Phase::Header { after_sasl: false },
            out: BytesMut::new(),
            events: VecDeque::new(),
            now,
            last_recv: now,
            last_sent: now,
            heartbeat: None,
            send_max_frame: MIN_MAX_FRAME_SIZE,
            user: None,
            sessions: Vec::new(),
            links: Vec::new(),
            free_slots: Vec::new(),
            live_links: 0,
            pending_flows: Vec::new(),
            pending_session_flows: Vec::new(),
            pending_disposition: None,
        }
    }

    /// Consumes every whole frame (and protocol header) in `input`, leaving
    /// an incomplete tail. An error is fatal: the engine has queued what
    /// tells the client why (a `close`, a SASL outcome or our protocol
    /// header), emitted [`Event::Closed`], and [`Self::is_closed`] is true.
    /// Input after the end is discarded.
    pub fn handle_input(
        &mut self,
        now: Instant,
        input: &mut BytesMut,
    ) -> Result<(), ConnectionError> {
        self.now = now;
        if self.phase == Phase::Closed {
            input.clear();
            return Ok(());
        }
        if !input.is_empty() {
            self.last_recv = now;
        }
        match self.consume(input) {
            Ok(()) => Ok(()),
            Err(e) => {
                input.clear();
                self.fail(&e);
                Err(e)
            }
        }
    }

    /// Runs timers due at `now`: drops a client silent for twice our
    /// idle-time-out, queues a heartbeat when we have been silent for half
    /// the client's, and gives up on a `close` the client does not answer.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if self.phase == Phase::Closed {
            return;
        }
        if let Some(deadline) = self.idle_deadline() {
            if now >= deadline {
                let description = format!(
                    "no frame from the client for {} ms (idle-time-out {} ms)",
                    now.duration_since(self.last_recv).as_millis(),
                    self.config.idle_timeout.as_millis()
                );
                match self.phase {
                    Phase::Opened => {
                        self.flush_pending();
                        encode_close_with_error(&mut self.out, COND_RESOURCE_LIMIT, &description);
                    }
                    Phase::AwaitOpen => {
                        self.put_open();
                        encode_close_with_error(&mut self.out, COND_RESOURCE_LIMIT, &description);
                    }
                    Phase::Sasl { .. } => self.put_sasl_outcome(SaslCode::SysTemp),
                    _ => {}
                }
                self.finish(Some((COND_RESOURCE_LIMIT.to_owned(), description)));
                return;
            }
        }
        if let Phase::Closing { deadline } = self.phase {
            if now >= deadline {
                self.finish(None);
            }
            return;
        }
        if let (Phase::Opened, Some(interval)) = (self.phase, self.heartbeat) {
            if now >= self.last_sent + interval {
                encode_heartbeat(&mut self.out);
                self.last_sent = now;
            }
        }
    }

    /// When [`Self::handle_timeout`] should next run, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Closed {
            return None;
        }
        let mut at = self.idle_deadline();
        let mut earliest = |t: Instant| at = Some(at.map_or(t, |a| a.min(t)));
        match self.phase {
            Phase::Closing { deadline } => earliest(deadline),
            Phase::Opened => {
                if let Some(interval) = self.heartbeat {
                    earliest(self.last_sent + interval);
                }
            }
            _ => {}
        }
        at
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Appends everything queued for the socket to `out` (by swapping
    /// buffers when `out` is empty, so nothing is copied).
    pub fn poll_transmit(&mut self, out: &mut BytesMut) {
        if self.phase != Phase::Closed {
            self.flush_pending();
        }
        if self.out.is_empty() {
            return;
        }
        self.last_sent = self.now;
        if out.is_empty() {
            std::mem::swap(out, &mut self.out);
        } else {
            out.extend_from_slice(&self.out);
            self.out.clear();
        }
    }

    /// `close` exchanged, or a fatal error: write what remains and drop the
    /// socket.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The authenticated SASL PLAIN user, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /* ---------------------------- router actions ---------------------------- */
    // All of these are no-ops on unknown or detached links and never panic.

    /// Answers a pending attach. `address` fills in our terminus: the
    /// source of a client receiver (for a dynamic source, the address we
    /// assigned) or the target of a client sender (likewise for a dynamic
    /// target); `None` echoes what the client asked for.
    pub fn accept_attach(&mut self, link: LinkId, address: Option<&str>) {
        let Some(slot) = self.slot_of(link) else {
            return;
        };
        let Some(l) = self.link_mut(slot) else {
            return;
        };
        if !matches!(l.state, LinkState::Pending(_)) {
            return;
        }
        let LinkState::Pending(attach) = std::mem::replace(&mut l.state, LinkState::Attached)
        else {
            return;
        };
        let (channel, client_sends, flow_pending, credit, drain) =
            (l.channel, l.client_sends, l.flow_pending, l.credit, l.drain);
        self.put_raw(
            channel,
            Performative::Attach(accept_reply(*attach, address)),
        );
        if client_sends {
            // Credit the router granted before accepting goes out now.
            if flow_pending {
                if let Some(l) = self.link_mut(slot) {
                    l.flow_pending = false;
                }
                self.put_link_flow(slot);
            }
        } else if credit > 0 || drain {
            // Credit the client sent before we answered.
            self.events.push_back(Event::Credit {
                link,
                credit,
                drain,
            });
        }
    }

    /// Refuses a pending attach (spec 2.6.3): our attach with a null
    /// terminus, then `detach(closed)` with the error. On an attached link
    /// this is [`Self::detach`] with the error.
    pub fn refuse_attach(&mut self, link: LinkId, condition: &str, description: &str) {
        if let Some(slot) = self.slot_of(link) {
            self.detach_link(slot, Some((condition, description)), false);
        }
    }

    /// Sets the link credit of a client sender's link (absolute, spec
    /// 2.6.7; may shrink to 0). The Flow goes out with the next transmit.
    pub fn set_credit(&mut self, link: LinkId, link_credit: u32) {
        let Some(slot) = self.slot_of(link) else {
            return;
        };
        let Some(l) = self.link_mut(slot) else {
            return;
        };
        if !l.client_sends || matches!(l.state, LinkState::Detaching) {
            return;
        }
        l.credit = link_credit;
        if !l.flow_pending {
            l.flow_pending = true;
            self.pending_flows.push(link);
        }
    }

    /// Credit left on `link`: on a client receiver's link, what the client
    /// gave us minus what we used; on a client sender's link, what we
    /// granted minus what the client used. 0 for unknown links.
    pub fn credit(&self, link: LinkId) -> u32 {
        self.slot_of(link)
            .and_then(|s| self.link(s))
            .map_or(0, |l| l.credit)
    }

    /// Whether `send_transfer` on `link` would send right now: an accepted
    /// client receiver's link with credit (or a delivery in progress) and
    /// room in the client's session window.
    pub fn can_send(&self, link: LinkId) -> bool {
        let Some(l) = self.slot_of(link).and_then(|s| self.link(s)) else {
            return false;
        };
        let window_open = self.session(l.channel).is_some_and(|s| {
            !s.discarding && s.remote_incoming_window > 0 && s.held_frames.is_empty()
        });
        self.phase == Phase::Opened
            && !l.client_sends
            && matches!(l.state, LinkState::Attached)
            && (l.credit > 0 || l.outgoing.is_some())
            && window_open
    }

    /// Sends one frame's worth of a delivery on a client receiver's link
    /// (split into several frames if larger than the client's
    /// max-frame-size). A new delivery (`d.continuing == None`) takes one
    /// credit; with `more` the delivery stays open and the next call passes
    /// the returned id in `d.continuing`. On error nothing was sent.
    ///
    /// If the client's session window closes in the middle of a split
    /// payload, the rest is held and sent as the window opens; until then
    /// further sends on the session fail with [`SendError::SessionWindow`]
    /// and an [`Event::Sendable`] follows.
    pub fn send_transfer(
        &mut self,
        link: LinkId,
        d: &OutgoingTransfer,
        payload: &[u8],
        more: bool,
    ) -> Result<OutgoingDeliveryId, SendError> {
        if self.phase != Phase::Opened {
            return Err(SendError::NotOpen);
        }
        let slot = self.slot_of(link).ok_or(SendError::UnknownLink)?;
        let Some(Some(l)) = self.links.get_mut(slot as usize).map(|s| s.link.as_mut()) else {
            return Err(SendError::UnknownLink);
        };
        if l.client_sends {
            return Err(SendError::WrongDirection);
        }
        match l.state {
            LinkState::Attached => {}
            LinkState::Pending(_) => return Err(SendError::NotAttached),
            LinkState::Detaching => return Err(SendError::Detaching),
        }
        let Some(Some(session)) = self.sessions.get_mut(usize::from(l.channel)) else {
            return Err(SendError::UnknownLink);
        };
        if session.remote_incoming_window == 0 || !session.held_frames.is_empty() {
            if !l.blocked {
                l.blocked = true;
                session.blocked.push(slot);
            }
            return Err(SendError::SessionWindow);
        }
        let (id, first, was_settled) = match (d.continuing, l.outgoing) {
            (None, None) => {
                if l.credit == 0 {
                    return Err(SendError::NoCredit);
                }
                (session.next_delivery_id, true, false)
            }
            (None, Some(_)) => return Err(SendError::DeliveryInProgress),
            (Some(c), Some(cur)) if c.0 == cur.id => (cur.id, false, cur.settled),
            (Some(_), _) => return Err(SendError::UnknownDelivery),
        };
        let mut header = TransferHeader {
            handle: l.handle,
            delivery_id: Some(id),
            delivery_tag: first.then(|| d.tag.clone()),
            message_format: first.then_some(d.message_format),
            settled: if first || (d.settled && !was_settled) {
                Some(d.settled)
            } else {
                None
            },
            // Sized with `more` set, which only ever adds fields.
            more: true,
            ..TransferHeader::default()
        };
        let overhead = transfer_frame_overhead(&header);
        let max = self.send_max_frame as usize;
        if overhead >= max {
            return Err(SendError::TagTooLarge);
        }
        let room = max - overhead;
        // From here on the send happens: update state, then encode.
        if first {
            session.next_delivery_id = id.wrapping_add(1);
            l.credit -= 1;
            l.delivery_count = l.delivery_count.wrapping_add(1);
        }
        let settled = d.settled || was_settled;
        l.outgoing = more.then_some(OutDelivery { id, settled });
        if first && !d.settled {
            session.unsettled_out.push_back(OutEntry { id, slot });
        } else if !first && d.settled && !was_settled {
            session.tombstone_out(id);
        }
        let channel = l.channel;
        let mut rest = payload;
        loop {
            let (chunk, tail) = rest.split_at(rest.len().min(room));
            header.more = more || !tail.is_empty();
            session.write_transfer(&mut self.out, channel, &header, chunk);
            rest = tail;
            if rest.is_empty() {
                break;
            }
            header.delivery_tag = None;
            header.message_format = None;
            header.settled = None;
        }
        Ok(OutgoingDeliveryId(id))
    }

    /// Aborts a delivery in progress on a client receiver's link
    /// (`transfer(aborted=true)`); the client discards what it got of it.
    pub fn abort_transfer(&mut self, link: LinkId, delivery: OutgoingDeliveryId) {
        if self.phase != Phase::Opened {
            return;
        }
        let Some(slot) = self.slot_of(link) else {
            return;
        };
        let Some(Some(l)) = self.links.get_mut(slot as usize).map(|s| s.link.as_mut()) else {
            return;
        };
        if l.outgoing.is_none_or(|o| o.id != delivery.0) || !matches!(l.state, LinkState::Attached)
        {
            return;
        }
        l.outgoing = None;
        let Some(Some(session)) = self.sessions.get_mut(usize::from(l.channel)) else {
            return;
        };
        let header = TransferHeader {
            handle: l.handle,
            delivery_id: Some(delivery.0),
            aborted: true,
            ..TransferHeader::default()
        };
        // An aborted delivery is settled (spec 2.6.12).
        session.tombstone_out(delivery.0);
        session.write_transfer(&mut self.out, l.channel, &header, &[]);
    }

    /// Answers a client's drain request when we have nothing (more) to
    /// send: delivery-count advances by the credit left, credit becomes 0,
    /// and a Flow with drain=true tells the client.
    pub fn drain_done(&mut self, link: LinkId) {
        let Some(slot) = self.slot_of(link) else {
            return;
        };
        let Some(l) = self.link_mut(slot) else {
            return;
        };
        if l.client_sends || !l.drain || !matches!(l.state, LinkState::Attached) {
            return;
        }
        l.delivery_count = l.delivery_count.wrapping_add(l.credit);
        l.credit = 0;
        self.put_link_flow(slot);
    }

    /// Settles and/or records the outcome of a delivery the client sent on
    /// `link` (`disposition(role=receiver)`). Consecutive calls for
    /// consecutive deliveries with the same outcome go out as one range.
    pub fn dispose_incoming(
        &mut self,
        link: LinkId,
        delivery: IncomingDeliveryId,
        state: Option<DeliveryState>,
        settled: bool,
    ) {
        let Some(slot) = self.slot_of(link) else {
            return;
        };
        let Some(l) = self.link(slot) else {
            return;
        };
        let channel = l.channel;
        let Some(Some(session)) = self.sessions.get_mut(usize::from(channel)) else {
            return;
        };
        if session.unsettled_in.get(&delivery.0) != Some(&slot) {
            return; // settled already, or not this link's
        }
        if settled {
            session.unsettled_in.remove(&delivery.0);
        }
        let id = delivery.0;
        if let Some(run) = &mut self.pending_disposition {
            if run.channel == channel
                && run.last.wrapping_add(1) == id
                && run.settled == settled
                && run.state == state
            {
                run.last = id;
                return;
            }
        }
        self.flush_disposition();
        self.pending_disposition = Some(DispositionRun {
            channel,
            first: id,
            last: id,
            settled,
            state,
        });
    }

    /// Detaches (closes) a link, with an optional error (condition,
    /// description). The link is gone once the client's `detach` answers.
    pub fn detach(&mut self, link: LinkId, error: Option<(&str, &str)>) {
        if let Some(slot) = self.slot_of(link) {
            self.detach_link(slot, error, false);
        }
    }

    /// Closes the connection, with an optional error (condition,
    /// description). [`Event::Closed`] follows when the client answers (or
    /// after a few seconds if it does not).
    pub fn close(&mut self, error: Option<(&str, &str)>) {
        let error = error.map(|(c, d)| amqp_error(c, d));
        match self.phase {
            Phase::Opened => {
                self.flush_pending();
                self.put_raw(0, Performative::Close(Close { error }));
                self.phase = Phase::Closing {
                    deadline: self.now + CLOSE_TIMEOUT,
                };
            }
            Phase::AwaitOpen => {
                self.put_open();
                self.put_raw(0, Performative::Close(Close { error }));
                self.finish(None);
            }
            Phase::Sasl { .. } => {
                self.put_sasl_outcome(SaslCode::SysTemp);
                self.finish(None);
            }
            Phase::Header { .. } => self.finish(None),
            Phase::Closing { .. } | Phase::Closed => {}
        }
    }

    /* ------------------------------ input side ------------------------------ */

    fn consume(&mut self, input: &mut BytesMut) -> Result<(), ConnectionError> {
        loop {
            match self.phase {
                Phase::Header { after_sasl } => {
                    let Some(&header) = input.first_chunk::<8>() else {
                        return Ok(());
                    };
                    input.advance(8);
                    self.on_header(header, after_sasl)?;
                }
                Phase::Sasl { .. } => match decode_sasl_frame(input, SASL_MAX_FRAME_SIZE)? {
                    Some(frame) => self.on_sasl(frame)?,
                    None => return Ok(()),
                },
                Phase::AwaitOpen | Phase::Opened | Phase::Closing { .. } => {
                    match self.decoder.decode(input)? {
                        Some(frame) => self.on_frame(frame)?,
                        None => return Ok(()),
                    }
                }
                Phase::Closed => {
                    input.clear();
                    return Ok(());
                }
            }
        }
    }

    fn on_header(&mut self, header: [u8; 8], after_sasl: bool) -> Result<(), ConnectionError> {
        let sasl = &self.config.sasl;
        if header == SASL_PROTOCOL_HEADER && !after_sasl && sasl.offers_sasl() {
            let mechanisms: Vec<Symbol> = sasl.mechanisms().into_iter().map(Symbol::from).collect();
            self.out.extend_from_slice(&SASL_PROTOCOL_HEADER);
            self.put_sasl(&SaslFrame::Mechanisms(SaslMechanisms {
                sasl_server_mechanisms: Array::from(mechanisms),
            }));
            self.phase = Phase::Sasl {
                awaiting_response: false,
            };
            return Ok(());
        }
        if header == AMQP_PROTOCOL_HEADER && (after_sasl || sasl.allow_no_sasl) {
            self.out.extend_from_slice(&AMQP_PROTOCOL_HEADER);
            self.phase = Phase::AwaitOpen;
            return Ok(());
        }
        let reason = if header == SASL_PROTOCOL_HEADER {
            if after_sasl {
                "a second SASL layer"
            } else {
                "SASL is not offered"
            }
        } else if header == AMQP_PROTOCOL_HEADER {
            "SASL authentication is required"
        } else if header.starts_with(b"AMQP") {
            "unsupported AMQP protocol id or version"
        } else {
            "not an AMQP protocol header"
        };
        Err(ConnectionError::ProtocolHeader { header, reason })
    }

    fn on_sasl(&mut self, frame: SaslFrame) -> Result<(), ConnectionError> {
        let Phase::Sasl { awaiting_response } = self.phase else {
            return Ok(());
        };
        match frame {
            SaslFrame::Init(init) if !awaiting_response => match init.mechanism.0.as_str() {
                MECH_ANONYMOUS if self.config.sasl.anonymous => {
                    self.sasl_succeeded(None);
                    Ok(())
                }
                MECH_PLAIN if self.config.sasl.plain.is_some() => match init.initial_response {
                    Some(response) => self.sasl_plain(&response),
                    None => {
                        // RFC 4422: an empty challenge asks for the
                        // initial response.
                        self.put_sasl(&SaslFrame::Challenge(SaslChallenge {
                            challenge: Vec::new().into(),
                        }));
                        self.phase = Phase::Sasl {
                            awaiting_response: true,
                        };
                        Ok(())
                    }
                },
                other => Err(ConnectionError::Authentication(format!(
                    "mechanism {:?} is not offered",
                    truncate(other, 64)
                ))),
            },
            SaslFrame::Response(r) if awaiting_response => self.sasl_plain(&r.response),
            other => Err(ConnectionError::Sasl(format!(
                "unexpected {} from the client",
                other.name()
            ))),
        }
    }

    fn sasl_plain(&mut self, response: &[u8]) -> Result<(), ConnectionError> {
        let Some(users) = self.config.sasl.plain.clone() else {
            return Err(ConnectionError::Authentication(
                "PLAIN is not offered".to_owned(),
            ));
        };
        let user = check_plain(&users, response)
            .map_err(|why| ConnectionError::Authentication(why.to_owned()))?;
        self.sasl_succeeded(Some(user));
        Ok(())
    }

    fn sasl_succeeded(&mut self, user: Option<String>) {
        self.user = user;
        self.put_sasl_outcome(SaslCode::Ok);
        self.phase = Phase::Header { after_sasl: true };
    }

    fn on_frame(&mut self, frame: Frame) -> Result<(), ConnectionError> {
        let Frame { channel, body } = frame;
        match self.phase {
            Phase::Opened => match body {
                FrameBody::Transfer { transfer, payload } => {
                    self.on_transfer(channel, transfer, payload)
                }
                FrameBody::Performative(p) => self.on_performative(channel, p),
                FrameBody::Heartbeat => Ok(()),
            },
            Phase::AwaitOpen => match body {
                FrameBody::Performative(Performative::Open(open)) => {
                    self.on_open(open);
                    Ok(())
                }
                FrameBody::Performative(Performative::Close(close)) => {
                    // Closing before opening: the spec still wants our
                    // open before our close.
                    self.put_open();
                    self.put_raw(0, Performative::Close(Close { error: None }));
                    self.finish(close.error.map(error_pair));
                    Ok(())
                }
                FrameBody::Heartbeat => Ok(()),
                _ => Err(ConnectionError::protocol(
                    COND_NOT_ALLOWED,
                    "the first frame must be open",
                )),
            },
            Phase::Closing { .. } => {
                // Everything but the client's close is moot now.
                if let FrameBody::Performative(Performative::Close(close)) = body {
                    self.finish(close.error.map(error_pair));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn on_open(&mut self, open: Open) {
        self.send_max_frame = open
            .max_frame_size
            .0
            .clamp(MIN_MAX_FRAME_SIZE, self.max_frame_size);
        self.heartbeat = open
            .idle_time_out
            .filter(|&ms| ms > 0)
            .map(|ms| (Duration::from_millis(u64::from(ms)) / 2).max(MIN_HEARTBEAT_INTERVAL));
        self.put_open();
        self.phase = Phase::Opened;
        self.events.push_back(Event::Opened {
            container_id: open.container_id,
            user: self.user.clone(),
        });
    }

    fn on_performative(&mut self, channel: u16, p: Performative) -> Result<(), ConnectionError> {
        match p {
            Performative::Begin(b) => return self.on_begin(channel, b),
            Performative::End(e) => return self.on_end(channel, e),
            Performative::Close(c) => {
                self.flush_pending();
                self.put_raw(0, Performative::Close(Close { error: None }));
                self.finish(c.error.map(error_pair));
                return Ok(());
            }
            Performative::Open(_) => {
                return Err(ConnectionError::protocol(COND_NOT_ALLOWED, "a second open"))
            }
            _ => {}
        }
        // Everything else belongs to a session.
        let Some(session) = self.session(channel) else {
            return Err(ConnectionError::protocol(
                COND_NOT_ALLOWED,
                format!(
                    "{} on channel {channel}, which has no session",
                    performative_name(&p)
                ),
            ));
        };
        if session.discarding {
            return Ok(());
        }
        match p {
            Performative::Attach(a) => self.on_attach(channel, a),
            Performative::Flow(f) => {
                self.on_flow(channel, f);
                Ok(())
            }
            Performative::Disposition(d) => {
                self.on_disposition(channel, d);
                Ok(())
            }
            Performative::Detach(d) => {
                self.on_detach(channel, d);
                Ok(())
            }
            // The frame decoder routes every transfer to its fast path.
            _ => Err(ConnectionError::Decode(DecodeError::MalformedTransfer(
                "transfer decoded as a generic performative",
            ))),
        }
    }

    fn on_begin(&mut self, channel: u16, b: Begin) -> Result<(), ConnectionError> {
        if channel > CHANNEL_MAX {
            // Spec 2.7.1: beyond channel-max is a framing error.
            return Err(ConnectionError::protocol(
                COND_FRAMING_ERROR,
                format!("begin on channel {channel}, beyond channel-max {CHANNEL_MAX}"),
            ));
        }
        if b.remote_channel.is_some() {
            return Err(ConnectionError::protocol(
                COND_NOT_ALLOWED,
                "begin answering a session we never began",
            ));
        }
        let idx = usize::from(channel);
        if self.sessions.len() <= idx {
            self.sessions.resize_with(idx + 1, || None);
        }
        let Some(entry) = self.sessions.get_mut(idx) else {
            return Ok(());
        };
        if entry.is_some() {
            return Err(ConnectionError::protocol(
                COND_NOT_ALLOWED,
                format!("begin on channel {channel}, which is in use"),
            ));
        }
        *entry = Some(Session {
            discarding: false,
            handles: IdMap::default(),
            next_incoming_id: b.next_outgoing_id,
            incoming_window: INCOMING_WINDOW,
            flow_pending: false,
            next_outgoing_id: 0,
            next_delivery_id: 0,
            remote_incoming_window: b.incoming_window,
            held: BytesMut::new(),
            held_frames: VecDeque::new(),
            blocked: Vec::new(),
            unsettled_out: VecDeque::new(),
            tombstones: 0,
            unsettled_in: IdMap::default(),
        });
        let begin = Begin {
            remote_channel: Some(channel),
            next_outgoing_id: 0,
            incoming_window: INCOMING_WINDOW,
            outgoing_window: OUTGOING_WINDOW,
            handle_max: Handle(HANDLE_MAX),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        self.put_raw(channel, Performative::Begin(begin));
        Ok(())
    }

    fn on_end(&mut self, channel: u16, e: End) -> Result<(), ConnectionError> {
        let discarding = match self.session(channel) {
            Some(s) => s.discarding,
            None => {
                return Err(ConnectionError::protocol(
                    COND_NOT_ALLOWED,
                    format!("end on channel {channel}, which has no session"),
                ))
            }
        };
        if !discarding {
            // What is pending for the session goes before our end.
            self.flush_pending();
            self.put_raw(channel, Performative::End(End { error: None }));
        }
        let Some(Some(session)) = self
            .sessions
            .get_mut(usize::from(channel))
            .map(Option::take)
        else {
            return Ok(());
        };
        // Links end with their session; a discarding session's links were
        // reported when we ended it.
        let error = e.error.map(error_pair);
        let mut slots: Vec<u32> = session.handles.values().copied().collect();
        slots.sort_unstable();
        for slot in slots {
            self.drop_link(slot, error.clone());
        }
        Ok(())
    }

    fn on_attach(&mut self, channel: u16, a: Attach) -> Result<(), ConnectionError> {
        let handle = a.handle.0;
        if handle > HANDLE_MAX {
            // Spec 2.7.2 (begin, handle-max): a framing error.
            return Err(ConnectionError::protocol(
                COND_FRAMING_ERROR,
                format!("attach with handle {handle}, beyond handle-max {HANDLE_MAX}"),
            ));
        }
        if self
            .session(channel)
            .is_some_and(|s| s.handles.contains_key(&handle))
        {
            self.end_session(
                channel,
                COND_HANDLE_IN_USE,
                format!("handle {handle} is already attached"),
            );
            return Ok(());
        }
        let client_sends = matches!(a.role, Role::Sender);
        let mut refusal = None;
        let event_fields;
        if client_sends {
            let (target, dynamic) = if let Some(TargetArchetype::Target(t)) = a.target.as_deref() {
                (t.address.clone(), t.dynamic)
            } else {
                if a.target.is_some() {
                    refusal = Some((COND_NOT_IMPLEMENTED, "transactions are not supported"));
                }
                (None, false)
            };
            event_fields = (target, dynamic);
        } else {
            let source = a.source.as_deref();
            event_fields = (
                source.and_then(|s| s.address.clone()),
                source.is_some_and(|s| s.dynamic),
            );
        }
        if self.live_links >= MAX_LINKS {
            refusal = Some((COND_RESOURCE_LIMIT, "too many links on this connection"));
        }
        let name = a.name.clone();
        let (snd_settle_mode, rcv_settle_mode) =
            (a.snd_settle_mode.clone(), a.rcv_settle_mode.clone());
        let link = Link {
            channel,
            handle,
            client_sends,
            // The client's count as sender; ours starts at 0 (we announce it).
            delivery_count: if client_sends {
                a.initial_delivery_count.unwrap_or(0)
            } else {
                0
            },
            state: LinkState::Pending(Box::new(a)),
            credit: 0,
            flow_pending: false,
            drain: false,
            blocked: false,
            incoming: None,
            outgoing: None,
        };
        let slot = self.alloc_slot(link);
        if let Some(Some(session)) = self.sessions.get_mut(usize::from(channel)) {
            session.handles.insert(handle, slot);
        }
        if let Some((condition, description)) = refusal {
            // Answered here; the router never sees the link.
            self.detach_link(slot, Some((condition, description)), false);
            return Ok(());
        }
        let link = self.link_id(slot);
        let (address, dynamic) = event_fields;
        self.events.push_back(if client_sends {
            Event::SenderAttached {
                link,
                name,
                target: address,
                dynamic,
                snd_settle_mode,
                rcv_settle_mode,
            }
        } else {
            Event::ReceiverAttached {
                link,
                name,
                source: address,
                dynamic,
                snd_settle_mode,
                rcv_settle_mode,
            }
        });
        Ok(())
    }

    fn on_detach(&mut self, channel: u16, d: Detach) {
        let Some(&slot) = self
            .session(channel)
            .and_then(|s| s.handles.get(&d.handle.0))
        else {
            self.end_session(
                channel,
                COND_UNATTACHED_HANDLE,
                format!("detach of handle {}, which is not attached", d.handle.0),
            );
            return;
        };
        let link = self.link_id(slot);
        let Some(l) = self.link_mut(slot) else {
            return;
        };
        let state = std::mem::replace(&mut l.state, LinkState::Detaching);
        l.flow_pending = false;
        let handle = l.handle;
        match state {
            // The answer to our detach.
            LinkState::Detaching => {}
            LinkState::Pending(attach) => {
                // Never answered: attach (refusing) before detaching.
                self.put_raw(channel, Performative::Attach(refusal_reply(*attach)));
                self.put_detach(channel, handle, d.closed, None);
                self.events.push_back(Event::Detached {
                    link,
                    error: d.error.map(error_pair),
                });
            }
            LinkState::Attached => {
                self.put_detach(channel, handle, d.closed, None);
                self.events.push_back(Event::Detached {
                    link,
                    error: d.error.map(error_pair),
                });
            }
        }
        self.remove_link(slot);
    }

    fn on_flow(&mut self, channel: u16, f: Flow) {
        let Some(Some(session)) = self.sessions.get_mut(usize::from(channel)) else {
            return;
        };
        // Spec 2.5.6: remote-incoming-window = next-incoming-id(flow) +
        // incoming-window(flow) - next-outgoing-id(ours). A next-incoming-id
        // ahead of what we sent is nonsense; count nothing in flight then.
        let seen = f.next_incoming_id.unwrap_or(0);
        let in_flight = session.next_outgoing_id.wrapping_sub(seen);
        let in_flight = if in_flight > i32::MAX as u32 {
            0
        } else {
            in_flight
        };
        session.remote_incoming_window = f.incoming_window.saturating_sub(in_flight);
        let link_slot = f
            .handle
            .as_ref()
            .map(|h| session.handles.get(&h.0).copied());
        self.release_held(channel);
        let slot = match link_slot {
            None => {
                if f.echo {
                    self.put_session_flow(channel);
                }
                return;
            }
            Some(None) => {
                let handle = f.handle.map_or(0, |h| h.0);
                self.end_session(
                    channel,
                    COND_UNATTACHED_HANDLE,
                    format!("flow for handle {handle}, which is not attached"),
                );
                return;
            }
            Some(Some(slot)) => slot,
        };
        let link = self.link_id(slot);
        let Some(l) = self.link_mut(slot) else {
            return;
        };
        if matches!(l.state, LinkState::Detaching) {
            return;
        }
        if l.client_sends {
            // The client (sender) reports its delivery-count, e.g. after
            // it drained our credit: what it used is gone.
            if let Some(count) = f.delivery_count {
                let used = count.wrapping_sub(l.delivery_count);
                l.credit = l.credit.saturating_sub(used);
                l.delivery_count = count;
            }
        } else {
            // Spec 2.6.7: credit = delivery-count(receiver) + link-credit
            // - delivery-count(sender); a receiver that has not seen our
            // attach counts from our initial delivery-count, 0.
            if let Some(link_credit) = f.link_credit {
                let counted = f.delivery_count.unwrap_or(0);
                let unseen = l.delivery_count.wrapping_sub(counted);
                l.credit = if unseen > i32::MAX as u32 {
                    link_credit
                } else {
                    link_credit.saturating_sub(unseen)
                };
            }
            l.drain = f.drain;
            if matches!(l.state, LinkState::Attached) {
                let (credit, drain) = (l.credit, l.drain);
                self.events.push_back(Event::Credit {
                    link,
                    credit,
                    drain,
                });
            }
        }
        if f.echo && matches!(self.link(slot).map(|l| &l.state), Some(LinkState::Attached)) {
            self.put_link_flow(slot);
        }
    }

    fn on_disposition(&mut self, channel: u16, d: Disposition) {
        let Some(Some(session)) = self.sessions.get_mut(usize::from(channel)) else {
            return;
        };
        let first = d.first;
        let span = d.last.unwrap_or(first).wrapping_sub(first);
        if span > i32::MAX as u32 {
            return; // last before first: nothing sensible to do
        }
        if matches!(d.role, Role::Sender) {
            // The client settles deliveries it sent us; we need not answer.
            if d.settled {
                if (span as usize) < session.unsettled_in.len() {
                    for i in 0..=span {
                        session.unsettled_in.remove(&first.wrapping_add(i));
                    }
                } else {
                    session
                        .unsettled_in
                        .retain(|id, _| id.wrapping_sub(first) > span);
                }
            }
            return;
        }
        let terminal = d.state.as_ref().is_some_and(DeliveryState::is_terminal);
        let settle = d.settled || terminal;
        let Some(base) = session.unsettled_out.front().map(|e| e.id) else {
            return;
        };
        let start = if (first.wrapping_sub(base) as i32) < 0 {
            0
        } else {
            let key = first.wrapping_sub(base);
            session
                .unsettled_out
                .partition_point(|e| e.id.wrapping_sub(base) < key)
        };
        let mut settle_ourselves = false;
        for e in session.unsettled_out.range_mut(start..) {
            if e.id.wrapping_sub(first) > span {
                break;
            }
            if e.slot == TOMBSTONE {
                continue;
            }
            let gen = self.links.get(e.slot as usize).map_or(0, |s| s.gen);
            self.events.push_back(Event::Disposition {
                link: link_id(e.slot, gen),
                delivery: OutgoingDeliveryId(e.id),
                state: d.state.clone(),
                settled: settle,
            });
            if settle {
                e.slot = TOMBSTONE;
                session.tombstones += 1;
                settle_ourselves |= !d.settled;
            }
        }
        session.compact();
        if settle_ourselves {
            // A terminal outcome the client left unsettled (rcv-settle-mode
            // second): we settle, which ends the delivery on both sides.
            let disposition = Disposition {
                role: Role::Sender,
                first,
                last: d.last,
                settled: true,
                state: d.state,
                batchable: false,
            };
            self.put_raw(channel, Performative::Disposition(disposition));
        }
    }

    /// A client transfer: the per-message hot path.
    fn on_transfer(
        &mut self,
        channel: u16,
        t: TransferHeader,
        payload: Bytes,
    ) -> Result<(), ConnectionError> {
        match self.transfer_inner(channel, t, payload) {
            Ok(()) => Ok(()),
            Err(None) => Err(ConnectionError::protocol(
                COND_NOT_ALLOWED,
                format!("transfer on channel {channel}, which has no session"),
            )),
            Err(Some(TransferFault::Session(condition, description))) => {
                self.end_session(channel, condition, description);
                Ok(())
            }
            Err(Some(TransferFault::Link(slot, condition, description))) => {
                self.detach_link(slot, Some((condition, description)), true);
                Ok(())
            }
        }
    }

    /// `Err(None)`: no session on the channel (fatal).
    #[inline]
    fn transfer_inner(
        &mut self,
        channel: u16,
        t: TransferHeader,
        payload: Bytes,
    ) -> Result<(), Option<TransferFault>> {
        let Some(Some(session)) = self.sessions.get_mut(usize::from(channel)) else {
            return Err(None);
        };
        if session.discarding {
            return Ok(());
        }
        if session.incoming_window == 0 {
            return Err(Some(TransferFault::Session(
                COND_WINDOW_VIOLATION,
                "transfer beyond the session's incoming-window".to_owned(),
            )));
        }
        session.incoming_window -= 1;
        session.next_incoming_id = session.next_incoming_id.wrapping_add(1);
        if session.incoming_window <= INCOMING_WINDOW / 2 && !session.flow_pending {
            session.flow_pending = true;
            self.pending_session_flows.push(channel);
        }
        let Some(&slot) = session.handles.get(&t.handle) else {
            return Err(Some(TransferFault::Session(
                COND_UNATTACHED_HANDLE,
                format!("transfer on handle {}, which is not attached", t.handle),
            )));
        };
        let Some(entry) = self.links.get_mut(slot as usize) else {
            return Ok(());
        };
        let gen = entry.gen;
        let Some(l) = entry.link.as_mut() else {
            return Ok(());
        };
        if matches!(l.state, LinkState::Detaching) {
            return Ok(()); // racing with our detach
        }
        if !l.client_sends {
            return Err(Some(TransferFault::Link(
                slot,
                COND_NOT_ALLOWED,
                "transfer on a link where the client is the receiver",
            )));
        }
        let (id, first, settled, message_format) = match l.incoming {
            None => {
                let Some(id) = t.delivery_id else {
                    return Err(Some(TransferFault::Link(
                        slot,
                        COND_NOT_ALLOWED,
                        "first transfer of a delivery without delivery-id",
                    )));
                };
                if l.credit == 0 {
                    return Err(Some(TransferFault::Link(
                        slot,
                        COND_TRANSFER_LIMIT,
                        "transfer without link credit",
                    )));
                }
                l.credit -= 1;
                l.delivery_count = l.delivery_count.wrapping_add(1);
                let settled = t.settled.unwrap_or(false);
                if !settled && !t.aborted {
                    session.unsettled_in.insert(id, slot);
                }
                (id, true, settled, t.message_format.unwrap_or(0))
            }
            Some(cur) => {
                if t.delivery_id.is_some_and(|id| id != cur.id) {
                    return Err(Some(TransferFault::Link(
                        slot,
                        COND_NOT_ALLOWED,
                        "delivery-id changed in the middle of a delivery",
                    )));
                }
                let settled = cur.settled || t.settled == Some(true);
                if settled && !cur.settled {
                    session.unsettled_in.remove(&cur.id);
                }
                (cur.id, false, settled, cur.message_format)
            }
        };
        let done = !t.more || t.aborted;
        if t.aborted && !settled {
            // An aborted delivery is settled (spec 2.6.12).
            session.unsettled_in.remove(&id);
        }
        l.incoming = (!done).then_some(InDelivery {
            id,
            settled,
            message_format,
        });
        self.events.push_back(Event::Transfer {
            link: link_id(slot, gen),
            delivery: IncomingDeliveryId(id),
            first,
            tag: t.delivery_tag,
            settled,
            message_format,
            payload,
            more: !done,
            aborted: t.aborted,
        });
        Ok(())
    }

    /* ----------------------------- error paths ------------------------------ */

    /// Queues what tells the client why its connection ends, then ends it.
    fn fail(&mut self, e: &ConnectionError) {
        match self.phase {
            Phase::Header { after_sasl } => {
                let ours = if !after_sasl && self.config.sasl.offers_sasl() {
                    SASL_PROTOCOL_HEADER
                } else {
                    AMQP_PROTOCOL_HEADER
                };
                self.out.extend_from_slice(&ours);
            }
            Phase::Sasl { .. } => {
                let code = match e {
                    ConnectionError::Authentication(_) => SaslCode::Auth,
                    _ => SaslCode::SysPerm,
                };
                self.put_sasl_outcome(code);
            }
            Phase::AwaitOpen => {
                self.put_open();
                encode_close_with_error(&mut self.out, e.condition(), &e.to_string());
            }
            Phase::Opened => {
                self.flush_pending();
                encode_close_with_error(&mut self.out, e.condition(), &e.to_string());
            }
            Phase::Closing { .. } | Phase::Closed => {}
        }
        self.finish(Some((e.condition().to_owned(), e.to_string())));
    }

    /// The connection is over: report it once.
    fn finish(&mut self, error: Option<(String, String)>) {
        if self.phase == Phase::Closed {
            return;
        }
        self.phase = Phase::Closed;
        self.pending_flows.clear();
        self.pending_session_flows.clear();
        self.pending_disposition = None;
        self.events.push_back(Event::Closed { error });
    }

    /// Ends a session with an error (spec 2.5.5): its links are gone at
    /// once and reported; frames on it are ignored until the client's end.
    fn end_session(&mut self, channel: u16, condition: &'static str, description: String) {
        self.flush_pending();
        let Some(Some(session)) = self.sessions.get_mut(usize::from(channel)) else {
            return;
        };
        if session.discarding {
            return;
        }
        session.discarding = true;
        let mut slots: Vec<u32> = session.handles.drain().map(|(_, s)| s).collect();
        slots.sort_unstable();
        session.unsettled_in.clear();
        session.unsettled_out.clear();
        session.tombstones = 0;
        session.held.clear();
        session.held_frames.clear();
        session.blocked.clear();
        let error = (condition.to_owned(), description.clone());
        for slot in slots {
            self.drop_link(slot, Some(error.clone()));
        }
        let end = End {
            error: Some(amqp_error(condition, &description)),
        };
        self.put_raw(channel, Performative::End(end));
    }

    /// Frees a link whose session is gone, reporting it unless the router
    /// already let go of it.
    fn drop_link(&mut self, slot: u32, error: Option<(String, String)>) {
        let link = self.link_id(slot);
        if let Some(l) = self.link(slot) {
            if !matches!(l.state, LinkState::Detaching) {
                self.events.push_back(Event::Detached { link, error });
            }
        }
        self.free_slot(slot);
    }

    /// Sends our detach (after a refusing attach if the link was never
    /// answered). `notify`: the engine, not the router, ends the link.
    fn detach_link(&mut self, slot: u32, error: Option<(&str, &str)>, notify: bool) {
        if !matches!(self.phase, Phase::Opened) {
            return;
        }
        let link = self.link_id(slot);
        let Some(l) = self.link_mut(slot) else {
            return;
        };
        let state = std::mem::replace(&mut l.state, LinkState::Detaching);
        l.flow_pending = false;
        l.incoming = None;
        l.outgoing = None;
        let (channel, handle) = (l.channel, l.handle);
        match state {
            LinkState::Detaching => return,
            LinkState::Pending(attach) => {
                self.put_raw(channel, Performative::Attach(refusal_reply(*attach)));
            }
            LinkState::Attached => {}
        }
        self.flush_pending();
        self.put_detach(channel, handle, true, error.map(|(c, d)| amqp_error(c, d)));
        if notify {
            self.events.push_back(Event::Detached {
                link,
                error: error.map(|(c, d)| (c.to_owned(), d.to_owned())),
            });
        }
    }

    /* ------------------------------ output side ----------------------------- */

    /// Encodes a performative; the engine's own performatives always
    /// encode, so a failure is a bug we log rather than crash on.
    fn put_raw(&mut self, channel: u16, p: Performative) {
        if let Err(e) = encode_performative(&mut self.out, channel, &p) {
            tracing::error!("cannot encode {}: {e}", performative_name(&p));
        }
    }

    fn put_sasl(&mut self, frame: &SaslFrame) {
        if let Err(e) = encode_sasl_frame(&mut self.out, frame) {
            tracing::error!("cannot encode {}: {e}", frame.name());
        }
    }

    fn put_sasl_outcome(&mut self, code: SaslCode) {
        self.put_sasl(&SaslFrame::Outcome(SaslOutcome {
            code,
            additional_data: None,
        }));
    }

    fn put_open(&mut self) {
        let idle_ms = self.config.idle_timeout.as_millis();
        let open = Open {
            container_id: self.config.container_id.clone(),
            hostname: None,
            max_frame_size: MaxFrameSize(self.max_frame_size),
            channel_max: ChannelMax(CHANNEL_MAX),
            idle_time_out: (idle_ms > 0).then(|| u32::try_from(idle_ms).unwrap_or(u32::MAX)),
            outgoing_locales: None,
            incoming_locales: None,
            offered_capabilities: Some(Array::from(vec![Symbol::from(CAP_ANONYMOUS_RELAY)])),
            desired_capabilities: None,
            properties: None,
        };
        self.put_raw(0, Performative::Open(open));
    }

    fn put_detach(
        &mut self,
        channel: u16,
        handle: u32,
        closed: bool,
        error: Option<definitions::Error>,
    ) {
        let detach = Detach {
            handle: Handle(handle),
            closed,
            error,
        };
        self.put_raw(channel, Performative::Detach(detach));
    }

    /// A Flow carrying the session's state and `slot`'s link state (or no
    /// link state when `slot` is unknown). Any Flow re-opens our incoming
    /// window.
    fn put_link_flow(&mut self, slot: u32) {
        let Some(l) = self.link(slot) else {
            return;
        };
        let (channel, handle, delivery_count, credit) =
            (l.channel, l.handle, l.delivery_count, l.credit);
        let drain = !l.client_sends && l.drain;
        let Some(flow) = self.session_flow(channel) else {
            return;
        };
        let flow = Flow {
            handle: Some(Handle(handle)),
            delivery_count: Some(delivery_count),
            link_credit: Some(credit),
            drain,
            ..flow
        };
        self.put_raw(channel, Performative::Flow(flow));
    }

    fn put_session_flow(&mut self, channel: u16) {
        if let Some(flow) = self.session_flow(channel) {
            self.put_raw(channel, Performative::Flow(flow));
        }
    }

    /// The session part of a Flow we are about to send, re-announcing our
    /// incoming window.
    fn session_flow(&mut self, channel: u16) -> Option<Flow> {
        let Some(Some(session)) = self.sessions.get_mut(usize::from(channel)) else {
            return None;
        };
        if session.discarding {
            return None;
        }
        session.incoming_window = INCOMING_WINDOW;
        session.flow_pending = false;
        Some(Flow {
            next_incoming_id: Some(session.next_incoming_id),
            incoming_window: INCOMING_WINDOW,
            next_outgoing_id: session.next_outgoing_id,
            outgoing_window: OUTGOING_WINDOW,
            handle: None,
            delivery_count: None,
            link_credit: None,
            available: None,
            drain: false,
            echo: false,
            properties: None,
        })
    }

    fn flush_disposition(&mut self) {
        if let Some(run) = self.pending_disposition.take() {
            let disposition = Disposition {
                role: Role::Receiver,
                first: run.first,
                last: (run.last != run.first).then_some(run.last),
                settled: run.settled,
                state: run.state,
                batchable: false,
            };
            self.put_raw(run.channel, Performative::Disposition(disposition));
        }
    }

    /// Encodes coalesced dispositions and flows. Called before frames that
    /// must follow them (detach, end, close) and on transmit.
    fn flush_pending(&mut self) {
        self.flush_disposition();
        if !self.pending_flows.is_empty() {
            let mut flows = std::mem::take(&mut self.pending_flows);
            for &link in &flows {
                let Some(slot) = self.slot_of(link) else {
                    continue;
                };
                let Some(l) = self.link_mut(slot) else {
                    continue;
                };
                // A link not yet accepted keeps its flag: accept sends it.
                if l.flow_pending && matches!(l.state, LinkState::Attached) {
                    l.flow_pending = false;
                    self.put_link_flow(slot);
                }
            }
            flows.clear();
            self.pending_flows = flows;
        }
        if !self.pending_session_flows.is_empty() {
            let mut channels = std::mem::take(&mut self.pending_session_flows);
            for &channel in &channels {
                // A link Flow sent meanwhile already re-opened the window.
                if self.session(channel).is_some_and(|s| s.flow_pending) {
                    self.put_session_flow(channel);
                }
            }
            channels.clear();
            self.pending_session_flows = channels;
        }
    }

    /// Sends held transfer frames as far as the client's window allows,
    /// then tells blocked links once the session can take new sends.
    fn release_held(&mut self, channel: u16) {
        let Some(Some(session)) = self.sessions.get_mut(usize::from(channel)) else {
            return;
        };
        while session.remote_incoming_window > 0 {
            let Some(len) = session.held_frames.pop_front() else {
                break;
            };
            let frame = session.held.split_to(len.min(session.held.len()));
            self.out.extend_from_slice(&frame);
            session.remote_incoming_window -= 1;
            session.next_outgoing_id = session.next_outgoing_id.wrapping_add(1);
        }
        if session.remote_incoming_window == 0 || !session.held_frames.is_empty() {
            return;
        }
        for slot in std::mem::take(&mut session.blocked) {
            let Some(entry) = self.links.get_mut(slot as usize) else {
                continue;
            };
            if let Some(l) = entry.link.as_mut().filter(|l| l.blocked) {
                l.blocked = false;
                self.events.push_back(Event::Sendable {
                    link: link_id(slot, entry.gen),
                });
            }
        }
    }

    /* -------------------------------- helpers ------------------------------- */

    fn idle_deadline(&self) -> Option<Instant> {
        let idle = self.config.idle_timeout;
        (!idle.is_zero()).then(|| self.last_recv + idle * 2)
    }

    fn session(&self, channel: u16) -> Option<&Session> {
        self.sessions.get(usize::from(channel))?.as_ref()
    }

    fn link(&self, slot: u32) -> Option<&Link> {
        self.links.get(slot as usize)?.link.as_ref()
    }

    fn link_mut(&mut self, slot: u32) -> Option<&mut Link> {
        self.links.get_mut(slot as usize)?.link.as_mut()
    }

    fn link_id(&self, slot: u32) -> LinkId {
        link_id(slot, self.links.get(slot as usize).map_or(0, |s| s.gen))
    }

    /// The slot of a live link, checking the generation so a stale id
    /// never reaches a newer link in the same slot.
    fn slot_of(&self, link: LinkId) -> Option<u32> {
        let slot = link as u32;
        let gen = (link >> 32) as u32;
        let entry = self.links.get(slot as usize)?;
        (entry.gen == gen && entry.link.is_some()).then_some(slot)
    }

    fn alloc_slot(&mut self, link: Link) -> u32 {
        self.live_links += 1;
        if let Some(slot) = self.free_slots.pop() {
            if let Some(entry) = self.links.get_mut(slot as usize) {
                entry.link = Some(link);
                return slot;
            }
        }
        self.links.push(LinkSlot {
            gen: 1,
            link: Some(link),
        });
        (self.links.len() - 1) as u32
    }

    /// Releases a slot; its id stops resolving.
    fn free_slot(&mut self, slot: u32) {
        let Some(entry) = self.links.get_mut(slot as usize) else {
            return;
        };
        if entry.link.take().is_some() {
            entry.gen = entry.gen.wrapping_add(1);
            self.free_slots.push(slot);
            self.live_links -= 1;
        }
    }

    /// Removes a link from its session's books, then frees its slot.
    fn remove_link(&mut self, slot: u32) {
        let Some(l) = self.link(slot) else {
            return;
        };
        let (channel, handle, client_sends) = (l.channel, l.handle, l.client_sends);
        if let Some(Some(session)) = self.sessions.get_mut(usize::from(channel)) {
            if session.handles.get(&handle) == Some(&slot) {
                session.handles.remove(&handle);
            }
            if client_sends {
                session.unsettled_in.retain(|_, s| *s != slot);
            } else {
                for e in session.unsettled_out.iter_mut().filter(|e| e.slot == slot) {
                    e.slot = TOMBSTONE;
                    session.tombstones += 1;
                }
                session.compact();
                session.blocked.retain(|&s| s != slot);
            }
        }
        self.free_slot(slot);
    }
}

impl Session {
    /// Writes one transfer frame, or holds it if the client's window is
    /// closed (or earlier frames are still held: order is the transfer-id).
    fn write_transfer(
        &mut self,
        out: &mut BytesMut,
        channel: u16,
        header: &TransferHeader,
        payload: &[u8],
    ) {
        if self.remote_incoming_window > 0 && self.held_frames.is_empty() {
            encode_transfer_header(out, channel, header, payload.len());
            out.extend_from_slice(payload);
            self.remote_incoming_window -= 1;
            self.next_outgoing_id = self.next_outgoing_id.wrapping_add(1);
        } else {
            let before = self.held.len();
            encode_transfer_header(&mut self.held, channel, header, payload.len());
            self.held.extend_from_slice(payload);
            self.held_frames.push_back(self.held.len() - before);
        }
    }

    /// Marks an unsettled outgoing delivery settled.
    fn tombstone_out(&mut self, id: u32) {
        if let Some(e) = self
            .unsettled_out
            .iter_mut()
            .rev()
            .find(|e| e.id == id && e.slot != TOMBSTONE)
        {
            e.slot = TOMBSTONE;
            self.tombstones += 1;
        }
        self.compact();
    }

    /// Drops settled entries from the front, and compacts when they are
    /// the majority, so a delivery the client never settles cannot make
    /// the queue grow with every delivery after it.
    fn compact(&mut self) {
        while self
            .unsettled_out
            .front()
            .is_some_and(|e| e.slot == TOMBSTONE)
        {
            self.unsettled_out.pop_front();
            self.tombstones = self.tombstones.saturating_sub(1);
        }
        if self.tombstones > 64 && self.tombstones * 2 > self.unsettled_out.len() {
            self.unsettled_out.retain(|e| e.slot != TOMBSTONE);
            self.tombstones = 0;
        }
    }
}

fn link_id(slot: u32, gen: u32) -> LinkId {
    (u64::from(gen) << 32) | u64::from(slot)
}

/// Our answer to an attach we accept: the client's termini echoed, ours
/// filled in with `address` when given.
fn accept_reply(a: Attach, address: Option<&str>) -> Attach {
    let client_sends = matches!(a.role, Role::Sender);
    let mut reply = reply_to(a);
    if client_sends {
        let mut target = match reply.target.take().map(|t| *t) {
            Some(TargetArchetype::Target(t)) => t,
            // An anonymous-relay sender's null target: answer with a
            // target all the same, since a null one means refusal.
            _ => Target::default(),
        };
        if let Some(address) = address {
            target.address = Some(address.to_owned());
        }
        reply.target = Some(Box::new(TargetArchetype::Target(target)));
    } else {
        let mut source = reply.source.take().map(|s| *s).unwrap_or_default();
        if let Some(address) = address {
            source.address = Some(address.to_owned());
        }
        reply.source = Some(Box::new(source));
    }
    reply
}

/// Our answer to an attach we refuse (spec 2.6.3): our terminus is null.
fn refusal_reply(a: Attach) -> Attach {
    let client_sends = matches!(a.role, Role::Sender);
    let mut reply = reply_to(a);
    if client_sends {
        reply.target = None;
    } else {
        reply.source = None;
    }
    reply
}

/// The attach fields common to every answer.
fn reply_to(a: Attach) -> Attach {
    let client_sends = matches!(a.role, Role::Sender);
    Attach {
        name: a.name,
        handle: a.handle,
        role: if client_sends {
            Role::Receiver
        } else {
            Role::Sender
        },
        snd_settle_mode: a.snd_settle_mode,
        // We settle incoming deliveries when we dispose them: mode first.
        rcv_settle_mode: if client_sends {
            ReceiverSettleMode::First
        } else {
            a.rcv_settle_mode
        },
        source: a.source,
        target: a.target,
        unsettled: None,
        incomplete_unsettled: false,
        initial_delivery_count: (!client_sends).then_some(0),
        max_message_size: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    }
}

fn amqp_error(condition: &str, description: &str) -> definitions::Error {
    definitions::Error {
        condition: definitions::ErrorCondition::Custom(Symbol::from(condition)),
        description: (!description.is_empty()).then(|| description.to_owned()),
        info: None,
    }
}

/// (condition, description) of an error the client sent.
fn error_pair(e: definitions::Error) -> (String, String) {
    // The condition is a symbol on the wire; fe2o3 parses known ones into
    // enums, so serialise it back rather than match every variant.
    let condition = serde_amqp::to_vec(&e.condition)
        .ok()
        .and_then(|b| serde_amqp::from_slice::<Symbol>(&b).ok())
        .map_or_else(|| format!("{:?}", e.condition), |s| s.0);
    (condition, e.description.unwrap_or_default())
}

fn performative_name(p: &Performative) -> &'static str {
    match p {
        Performative::Open(_) => "open",
        Performative::Begin(_) => "begin",
        Performative::Attach(_) => "attach",
        Performative::Flow(_) => "flow",
        Performative::Transfer(_) => "transfer",
        Performative::Disposition(_) => "disposition",
        Performative::Detach(_) => "detach",
        Performative::End(_) => "end",
        Performative::Close(_) => "close",
    }
}

fn truncate(s: &str, max: usize) -> &str {
    let mut cut = s.len().min(max);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.get(..cut).unwrap_or_default()
}
