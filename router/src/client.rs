//! AMQP client connections: the async driver around the sans-IO
//! [`ClientConnection`] engine, and the glue between its events and the
//! message routing in [`crate::messages`].
//!
//! One task per connection owns the socket (plain or TLS): it reads into
//! the engine, acts on the engine's events, and writes what the engine
//! queued. Messages arriving from elsewhere for this connection's receivers
//! are handed to the engine directly (same thread) and the task is woken to
//! write them.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tether_protocol::message_to;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use crate::amqp::{
    ClientConnection, ConnectionConfig, DeliveryState, Event, IncomingDeliveryId, LinkId,
    OutgoingDeliveryId, OutgoingTransfer, SaslConfig,
};
use crate::config::ClientListenerConfig;
use crate::core::Router;
use crate::messages::{
    rejected, Consumer, ConsumerLink, MessageCore, Msg, SenderLink, Upstream, SENDER_WINDOW,
};
use crate::reconfig::{ClientInfo, EndpointLink};

const READ_CHUNK: usize = 64 * 1024;
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_FRAME_SIZE: u32 = 256 * 1024;

/// One client connection, shared by its driver and the links' glue.
pub struct ClientConn {
    router: Rc<Router>,
    engine: RefCell<ClientConnection>,
    links: RefCell<HashMap<LinkId, ClientLink>>,
    waker: RefCell<Option<Waker>>,
    /// Bytes queued for the socket after the last write attempt.
    backlog: Cell<usize>,
    /// Bytes handed to the engine for our receivers since the driver last
    /// took the engine's output (part of the backlog too).
    unflushed: Cell<usize>,
    /// Run when the backlog is low again (frame credit held back).
    on_drained: RefCell<Vec<Box<dyn FnOnce()>>>,
    /// What management shows of this connection.
    info: Rc<ClientInfo>,
}

#[derive(Clone)]
enum ClientLink {
    /// A client sender: we receive.
    Sender(Rc<ClientSender>),
    /// A client receiver: we send.
    Receiver(Rc<ClientReceiver>, Rc<Consumer>),
}

/// A client sender's link.
pub struct ClientSender {
    conn: Weak<ClientConn>,
    link: LinkId,
    /// What management shows of this link.
    info: Rc<EndpointLink>,
    /// `None`: anonymous relay (each message's `to`).
    address: Option<String>,
    /// Deliveries received whose credit is not back yet.
    outstanding: Cell<u32>,
    /// The delivery whose frames are arriving.
    current: RefCell<Option<Rc<Msg>>>,
}

impl ClientSender {
    /// Grants the credit the sender should have now: the window minus what
    /// is outstanding while its address is reachable, nothing otherwise.
    fn refresh_credit(&self) {
        let Some(conn) = self.conn.upgrade() else {
            return;
        };
        let reachable = match &self.address {
            Some(a) => conn.router.message_reachable(a),
            None => true,
        };
        let desired = if reachable {
            SENDER_WINDOW.saturating_sub(self.outstanding.get())
        } else {
            0
        };
        let current = conn.engine.borrow().credit(self.link);
        // Grant in batches (a quarter window), not one credit per
        // settlement: each grant costs the client a Flow frame.
        let grant = if desired == 0 {
            current > 0 && !reachable
        } else {
            desired > current
                && (desired - current >= SENDER_WINDOW / 4 || self.outstanding.get() == 0)
        };
        if grant {
            conn.engine.borrow_mut().set_credit(self.link, desired);
            conn.wake();
        }
    }
}

impl SenderLink for ClientSender {
    fn settle(&self, delivery: u64, state: DeliveryState) {
        self.outstanding
            .set(self.outstanding.get().saturating_sub(1));
        if let Some(conn) = self.conn.upgrade() {
            conn.engine.borrow_mut().dispose_incoming(
                self.link,
                IncomingDeliveryId(delivery as u32),
                Some(state),
                true,
            );
            conn.wake();
        }
        self.refresh_credit();
    }

    fn forwarded(&self) {
        self.outstanding
            .set(self.outstanding.get().saturating_sub(1));
        self.refresh_credit();
    }

    fn refresh(&self) {
        self.refresh_credit();
    }
}

/// A client receiver's link.
pub struct ClientReceiver {
    conn: Weak<ClientConn>,
    link: LinkId,
    draining: Cell<bool>,
    info: Rc<EndpointLink>,
}

impl ConsumerLink for ClientReceiver {
    fn credit(&self) -> u32 {
        let Some(conn) = self.conn.upgrade() else {
            return 0;
        };
        let e = conn.engine.borrow();
        if e.can_send(self.link) {
            e.credit(self.link)
        } else {
            0
        }
    }

    fn send(&self, msg: &Msg, frame: &[u8], more: bool, continuing: Option<u64>) -> Option<u64> {
        let conn = self.conn.upgrade()?;
        if continuing.is_none() {
            self.info.deliveries.set(self.info.deliveries.get() + 1);
        }
        let t = OutgoingTransfer {
            tag: msg.tag.clone(),
            settled: msg.settled,
            message_format: msg.message_format,
            continuing: continuing.map(|d| OutgoingDeliveryId(d as u32)),
        };
        let r = conn
            .engine
            .borrow_mut()
            .send_transfer(self.link, &t, frame, more);
        conn.unflushed.set(conn.unflushed.get() + frame.len());
        conn.wake();
        match r {
            Ok(id) => Some(u64::from(id.0)),
            Err(e) => {
                tracing::debug!(link = self.link, "send to client failed: {e}");
                if let Some(d) = continuing {
                    conn.engine
                        .borrow_mut()
                        .abort_transfer(self.link, OutgoingDeliveryId(d as u32));
                }
                None
            }
        }
    }

    fn abort(&self, delivery: u64) {
        if let Some(conn) = self.conn.upgrade() {
            conn.engine
                .borrow_mut()
                .abort_transfer(self.link, OutgoingDeliveryId(delivery as u32));
            conn.wake();
        }
    }

    fn drain_done(&self) {
        self.draining.set(false);
        if let Some(conn) = self.conn.upgrade() {
            conn.engine.borrow_mut().drain_done(self.link);
            conn.wake();
        }
    }

    fn draining(&self) -> bool {
        self.draining.get()
    }

    fn backlog(&self) -> usize {
        self.conn
            .upgrade()
            .map_or(0, |c| c.backlog.get() + c.unflushed.get())
    }

    fn when_drained(&self, f: Box<dyn FnOnce()>) {
        match self.conn.upgrade() {
            Some(c) => c.on_drained.borrow_mut().push(f),
            None => f(),
        }
    }
}

impl ClientConn {
    fn wake(&self) {
        if let Some(w) = self.waker.borrow().as_ref() {
            w.wake_by_ref();
        }
    }

    fn messages(&self) -> &Rc<MessageCore> {
        &self.router.messages
    }

    /// A streamed message from this client has too many frames held in
    /// the router: stop reading the client until they drain (TCP then
    /// holds the client back). Registers `cx` to be woken.
    fn source_blocked(&self, cx: &Context<'_>) -> bool {
        let links = self.links.borrow();
        for l in links.values() {
            if let ClientLink::Sender(s) = l {
                if let Some(m) = s.current.borrow().as_ref() {
                    if m.held() > crate::messages::FRAME_WINDOW {
                        m.wake_when_drained(cx.waker());
                        return true;
                    }
                }
            }
        }
        false
    }

    /// The socket caught up: release frame credit held back for it.
    fn drained(&self) {
        let callbacks = std::mem::take(&mut *self.on_drained.borrow_mut());
        for f in callbacks {
            f();
        }
    }

    /// Acts on everything the engine reported.
    fn process_events(self: &Rc<Self>) {
        // Bounded by what the input produced; each borrow is short so the
        // glue can call back into the engine.
        for _ in 0..1_000_000 {
            let ev = self.engine.borrow_mut().poll_event();
            let Some(ev) = ev else {
                return;
            };
            self.on_event(ev);
        }
    }

    fn on_event(self: &Rc<Self>, ev: Event) {
        match ev {
            Event::Opened { container_id, user } => {
                *self.info.container.borrow_mut() = container_id.clone();
                *self.info.sasl.borrow_mut() =
                    Some(if user.is_some() { "PLAIN" } else { "ANONYMOUS" }.to_string());
                *self.info.user.borrow_mut() = user.clone();
                tracing::info!(client = %container_id, user = user.as_deref().unwrap_or("anonymous"), "AMQP client connected");
            }
            Event::SenderAttached {
                link,
                name,
                target,
                dynamic,
                ..
            } => {
                if dynamic {
                    self.engine.borrow_mut().refuse_attach(
                        link,
                        "amqp:not-implemented",
                        "dynamic targets are not supported; attach to an address",
                    );
                    return;
                }
                self.engine
                    .borrow_mut()
                    .accept_attach(link, target.as_deref());
                let target = target.map(|t| strip_amqp_scheme(&t).to_string());
                let info = self.info.link_attached(link, name, "in", target.clone());
                let sender = Rc::new(ClientSender {
                    conn: Rc::downgrade(self),
                    link,
                    info,
                    address: target.clone(),
                    outstanding: Cell::new(0),
                    current: RefCell::new(None),
                });
                if let Some(a) = &target {
                    let weak: Weak<dyn SenderLink> = Rc::downgrade(&sender) as Weak<dyn SenderLink>;
                    self.messages().add_sender(a, weak);
                }
                self.links
                    .borrow_mut()
                    .insert(link, ClientLink::Sender(sender.clone()));
                sender.refresh_credit();
            }
            Event::ReceiverAttached {
                link,
                name,
                source,
                dynamic,
                ..
            } => {
                let address = if dynamic {
                    Some(self.messages().dynamic_address())
                } else {
                    source
                };
                let Some(address) = address else {
                    self.engine.borrow_mut().refuse_attach(
                        link,
                        "amqp:invalid-field",
                        "a receiver needs a source address (or dynamic = true)",
                    );
                    return;
                };
                self.engine.borrow_mut().accept_attach(link, Some(&address));
                let info = self
                    .info
                    .link_attached(link, name, "out", Some(address.clone()));
                let receiver = Rc::new(ClientReceiver {
                    conn: Rc::downgrade(self),
                    link,
                    draining: Cell::new(false),
                    info,
                });
                let address = strip_amqp_scheme(&address).to_string();
                let consumer = Consumer::new(
                    self.router.next_flow_key(),
                    address.clone(),
                    receiver.clone() as Rc<dyn ConsumerLink>,
                );
                self.links
                    .borrow_mut()
                    .insert(link, ClientLink::Receiver(receiver, consumer.clone()));
                if self.messages().add_consumer(consumer) {
                    self.router.update_local_addresses();
                }
                self.messages().pump_address(&address);
            }
            Event::Transfer {
                link,
                delivery,
                first,
                tag,
                settled,
                message_format,
                payload,
                more,
                aborted,
            } => {
                if first {
                    self.info.last_delivery.set(Some(Instant::now()));
                }
                let l = self.links.borrow().get(&link).cloned();
                if let Some(ClientLink::Sender(s)) = l {
                    if first {
                        s.info.deliveries.set(s.info.deliveries.get() + 1);
                    }
                    self.on_transfer(
                        &s,
                        delivery,
                        first,
                        tag,
                        settled,
                        message_format,
                        payload,
                        more,
                        aborted,
                    );
                }
            }
            Event::Disposition {
                link,
                delivery,
                state,
                settled,
            } => {
                let l = self.links.borrow().get(&link).cloned();
                if let Some(ClientLink::Receiver(_, c)) = l {
                    self.messages()
                        .consumer_disposition(&c, u64::from(delivery.0), state, settled);
                }
            }
            Event::Credit { link, drain, .. } => self.credit_changed(link, Some(drain)),
            Event::Sendable { link } => self.credit_changed(link, None),
            Event::Detached { link, error } => {
                if let Some((c, d)) = &error {
                    tracing::debug!(link, "client link detached: {c}: {d}");
                }
                self.link_gone(link);
            }
            Event::Closed { error } => {
                if let Some((c, d)) = &error {
                    tracing::info!("AMQP client connection closed: {c}: {d}");
                }
                self.close_all();
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_transfer(
        self: &Rc<Self>,
        s: &Rc<ClientSender>,
        delivery: IncomingDeliveryId,
        first: bool,
        tag: Option<Bytes>,
        settled: bool,
        message_format: u32,
        payload: Bytes,
        more: bool,
        aborted: bool,
    ) {
        let messages = self.messages().clone();
        if !first {
            let current = s.current.borrow().clone();
            if let Some(msg) = current {
                if aborted {
                    s.current.borrow_mut().take();
                    messages.abort(&msg);
                    return;
                }
                if !more {
                    s.current.borrow_mut().take();
                }
                messages.frame(&msg, payload, more);
            }
            return;
        }
        if aborted {
            return;
        }
        s.outstanding.set(s.outstanding.get() + 1);
        // Pre-settled messages get no outcome, but their credit comes back
        // through the same handle when they leave (Msg::forwarded).
        let upstream = Upstream::Client {
            inlink: s.clone() as Rc<dyn SenderLink>,
            delivery: u64::from(delivery.0),
        };
        let address = match &s.address {
            Some(a) => Ok(a.clone()),
            None => message_to(&payload)
                .map(|a| strip_amqp_scheme(&a).to_string())
                .map_err(|e| e.to_string()),
        };
        let address = match address {
            Ok(a) => a,
            Err(why) => {
                // Anonymous relay without a usable `to`: refuse this one.
                let msg = Msg::new(
                    String::new(),
                    tag.unwrap_or_default(),
                    settled,
                    message_format,
                    upstream,
                );
                messages.refuse_now(
                    &msg,
                    rejected("amqp:invalid-field", &format!("anonymous relay: {why}")),
                );
                if more {
                    *s.current.borrow_mut() = Some(msg);
                }
                return;
            }
        };
        let msg = Msg::new(
            address.clone(),
            tag.unwrap_or_default(),
            settled,
            message_format,
            upstream,
        );
        MessageCore::first_frame(&msg, payload, more);
        if more {
            *s.current.borrow_mut() = Some(msg.clone());
        }
        let targets = self.router.message_targets_ingress(&address);
        messages.route(&msg, targets);
    }

    /// The client gave a receiver credit (`drain` set or cleared), or its
    /// session window opened again.
    fn credit_changed(self: &Rc<Self>, link: LinkId, drain: Option<bool>) {
        let l = self.links.borrow().get(&link).cloned();
        if let Some(ClientLink::Receiver(r, c)) = l {
            if let Some(d) = drain {
                r.draining.set(d);
            }
            self.messages().consumer_credit(&c);
        }
    }

    fn link_gone(self: &Rc<Self>, link: LinkId) {
        self.info.link_detached(link);
        let l = self.links.borrow_mut().remove(&link);
        match l {
            Some(ClientLink::Sender(s)) => {
                let current = s.current.borrow_mut().take();
                if let Some(m) = current {
                    self.messages().abort(&m);
                }
            }
            Some(ClientLink::Receiver(_, c)) if self.messages().remove_consumer(&c) => {
                self.router.update_local_addresses();
            }
            _ => {}
        }
    }

    fn close_all(self: &Rc<Self>) {
        let ids: Vec<LinkId> = self.links.borrow().keys().copied().collect();
        for id in ids {
            self.link_gone(id);
        }
    }
}

/// Runs one client connection until it ends.
pub async fn run_client<S>(router: Rc<Router>, cfg: &ClientListenerConfig, mut io: S, peer: String)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let engine = ClientConnection::new(
        ConnectionConfig {
            container_id: router.id.clone(),
            max_frame_size: MAX_FRAME_SIZE,
            idle_timeout: IDLE_TIMEOUT,
            sasl: SaslConfig {
                allow_no_sasl: cfg.allow_no_sasl,
                anonymous: cfg.sasl_anonymous,
                plain: cfg.sasl_plain_users.clone(),
            },
        },
        Instant::now().into_std(),
    );
    let info = Rc::new(ClientInfo {
        id: router.next_link_id(),
        host: peer.clone(),
        container: RefCell::new(String::new()),
        user: RefCell::new(None),
        sasl: RefCell::new(None),
        encrypted: cfg.tls.is_some(),
        opened_at: Instant::now(),
        last_delivery: Cell::new(None),
        links: RefCell::new(BTreeMap::new()),
    });
    router.client_connected(info.clone());
    let conn = Rc::new(ClientConn {
        info: info.clone(),
        router,
        engine: RefCell::new(engine),
        links: RefCell::new(HashMap::new()),
        waker: RefCell::new(None),
        backlog: Cell::new(0),
        unflushed: Cell::new(0),
        on_drained: RefCell::new(Vec::new()),
    });
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut wbuf = BytesMut::new();
    let mut timer: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep(IDLE_TIMEOUT));
    let mut eof = false;
    poll_fn(|cx| {
        drive(
            &conn, cx, &mut io, &mut rbuf, &mut wbuf, &mut timer, &mut eof,
        )
    })
    .await;
    conn.close_all();
    conn.router.client_gone(info.id);
    tracing::debug!(%peer, "AMQP client connection ended");
}

fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &Rc<ClientConn>,
    cx: &mut Context<'_>,
    io: &mut S,
    rbuf: &mut BytesMut,
    wbuf: &mut BytesMut,
    timer: &mut Pin<Box<Sleep>>,
    eof: &mut bool,
) -> Poll<()> {
    {
        let mut w = conn.waker.borrow_mut();
        if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *w = Some(cx.waker().clone());
        }
    }
    for _ in 0..32 {
        let mut progress = false;
        if !*eof && !conn.source_blocked(cx) {
            rbuf.reserve(READ_CHUNK);
            match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, rbuf) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    *eof = true;
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(_)) => {
                    progress = true;
                    let now = Instant::now().into_std();
                    let r = conn.engine.borrow_mut().handle_input(now, rbuf);
                    if let Err(e) = r {
                        tracing::info!("AMQP client connection error: {e}");
                        rbuf.clear();
                        *eof = true;
                    }
                }
                Poll::Pending => {}
            }
        }
        conn.process_events();
        conn.engine.borrow_mut().poll_transmit(wbuf);
        conn.unflushed.set(0);
        while !wbuf.is_empty() {
            match Pin::new(&mut *io).poll_write(cx, wbuf) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(n)) => {
                    bytes::Buf::advance(wbuf, n);
                    progress = true;
                }
                Poll::Pending => break,
            }
        }
        if wbuf.is_empty() {
            let _ = Pin::new(&mut *io).poll_flush(cx);
        }
        conn.backlog.set(wbuf.len());
        if wbuf.len() < crate::messages::CLIENT_BACKLOG_HIGH / 2
            && !conn.on_drained.borrow().is_empty()
        {
            conn.drained();
            progress = true;
        }
        let closed = conn.engine.borrow().is_closed();
        if (closed || *eof) && wbuf.is_empty() {
            return Poll::Ready(());
        }
        let next = conn.engine.borrow().poll_timeout();
        if let Some(t) = next {
            let t = Instant::from_std(t);
            if timer.deadline() != t {
                timer.as_mut().reset(t);
            }
            if timer.as_mut().poll(cx).is_ready() {
                conn.engine
                    .borrow_mut()
                    .handle_timeout(Instant::now().into_std());
                progress = true;
            }
        }
        if !progress {
            return Poll::Pending;
        }
    }
    cx.waker().wake_by_ref();
    Poll::Pending
}

/// An address without the `amqp:/` scheme prefix some clients put on it
/// (`amqp:/_topo/0/R/$management` is `_topo/0/R/$management`).
pub fn strip_amqp_scheme(address: &str) -> &str {
    address
        .strip_prefix("amqp:/")
        .or_else(|| address.strip_prefix("amqps:/"))
        .unwrap_or(address)
}
