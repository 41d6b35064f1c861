//! The router: owns the routing engine, the inter-router links, the TCP
//! listeners and connectors, and starts everything a config describes.
//!
//! Everything runs on one single-threaded tokio runtime (see
//! ARCHITECTURE.md for the measurement behind that choice), so state is
//! shared with `Rc`/`RefCell` and never locked. Who calls what:
//! - [`run`] builds the router from a [`Config`] and starts the tasks;
//! - inter-router listeners and connectors hand each TLS stream to
//!   [`crate::link::establish`] and run its driver;
//! - link drivers report routing messages and link ends here; they go into
//!   the link-state [`RoutingEngine`] (sans-IO), whose messages go out on
//!   the links and whose events open or close the TCP listeners gated on
//!   address reachability. [`Router::pump`] is the one place that drives it,
//!   and a timer task calls it when the engine's next timeout comes;
//! - accepted client connections become flows: the ingress picks the egress
//!   router ([`Router::choose`]) and sends the flow to its next hop; transit
//!   routers relay it ([`crate::relay`]).
//!
//! The next-hop table is the engine's: one `RefCell` on one thread, changed
//! only inside `pump`, so a flow start sees the routes from before or after
//! a topology change, never a mix.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rustls_pki_types::ServerName;
use tether_routing::linkstate::{EngineConfig, Event, LinkId, Offer, RoutingEngine, Timers};
use tether_routing::RouterMessage;
use tether_tcp::FlowSocket;
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{
    distribution_for, AddressConfig, ClientListenerConfig, Config, ConnectorConfig, Distribution,
    ListenerConfig, TcpConnectorConfig, TcpListenerConfig,
};
use crate::flow::Flow;
use crate::link::{establish, Link, LinkError, Side};
use crate::messages::{Dest, MessageCore};
use crate::tls::{describe_handshake_error, TlsMaterial};

/// rustls buffers this much outgoing plaintext per connection before it
/// pushes back (default 64 KiB): larger batches, fewer wake-ups.
const TLS_BUFFER_LIMIT: usize = 256 * 1024;
/// Bytes read from the TCP socket per call under TLS (rustls reads 4 KiB at
/// a time on its own).
const TLS_READ_BUFFER: usize = 64 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A link that stayed up this long resets its connector's backoff.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);

/// Settings every link and flow reads.
#[derive(Debug, Clone)]
pub struct Settings {
    pub hello_interval: Duration,
    pub dead_interval: Duration,
    /// Deliveries of credit per flow direction.
    pub window_credits: u32,
    /// Largest delivery we accept on a flow: window_credits x this is at
    /// most flow_window, the bytes a flow may hold here.
    pub max_delivery: u32,
}

/// See the module documentation.
pub struct Router {
    pub id: String,
    /// AMQP message routing (client senders and receivers, message links).
    pub messages: Rc<MessageCore>,
    settings: Settings,
    pub(crate) tcp_connectors: RefCell<Vec<TcpConnectorConfig>>,
    pub(crate) addresses: RefCell<Vec<AddressConfig>>,
    pub(crate) engine: RefCell<RoutingEngine>,
    /// Wakes the engine timer task: the engine's next timeout may have moved.
    engine_timer: Notify,
    /// Addresses reachable at the last pump (to log changes).
    reachable: RefCell<BTreeSet<String>>,
    pub(crate) links: RefCell<BTreeMap<LinkId, Rc<Link>>>,
    /// Current cost of each inter-router connector, by name (changed live
    /// by a config reload or management), and the link it has up, if any.
    pub(crate) connector_costs: RefCell<HashMap<String, u32>>,
    pub(crate) connector_links: RefCell<HashMap<String, LinkId>>,
    next_link_id: Cell<u64>,
    next_flow_key: Cell<u64>,
    active_flows: RefCell<HashMap<(String, String), u32>>,
    connector_rr: RefCell<HashMap<String, usize>>,
    choice_turns: RefCell<HashMap<String, usize>>,
    pub(crate) gates: RefCell<Vec<ListenerGate>>,
    /// What runs live and can be created or deleted by management
    /// (see [`crate::reconfig`]).
    pub(crate) live: crate::reconfig::LiveConfig,
    /// Per-address TCP flow counters (management and metrics).
    pub(crate) flow_stats: RefCell<BTreeMap<String, Rc<crate::reconfig::FlowStats>>>,
    /// AMQP client connections, by connection id.
    pub(crate) clients: RefCell<BTreeMap<u64, Rc<crate::reconfig::ClientInfo>>>,
    pub started: Instant,
    /// Changes whenever the set of addresses known here may have changed
    /// (management caches its sorted address list against it).
    pub(crate) address_generation: Cell<u64>,
    pub(crate) address_index: RefCell<Option<(u64, crate::management::store::AddressIndex)>>,
    /// Open listeners for addresses other routers expose (see
    /// [`crate::reconfig`]).
    pub(crate) auto_listeners: bool,
    /// Router ids whose links are refused.
    pub(crate) revoked: RefCell<BTreeSet<String>>,
    /// The port each auto listener had, kept when it goes away.
    pub(crate) auto_ports: RefCell<HashMap<String, u16>>,
}

pub(crate) struct ListenerGate {
    pub(crate) cfg: TcpListenerConfig,
    pub(crate) accept_task: Option<JoinHandle<()>>,
    retry_pending: bool,
}

impl ListenerGate {
    pub(crate) fn new(cfg: TcpListenerConfig) -> ListenerGate {
        ListenerGate {
            cfg,
            accept_task: None,
            retry_pending: false,
        }
    }
}

/// Where a new flow goes.
enum Choice {
    Local,
    Remote { link: Rc<Link>, egress: String },
}

impl Router {
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn next_link_id(&self) -> LinkId {
        let id = self.next_link_id.get() + 1;
        self.next_link_id.set(id);
        id
    }

    pub fn next_flow_key(&self) -> u64 {
        let k = self.next_flow_key.get() + 1;
        self.next_flow_key.set(k);
        k
    }

    pub fn flow_opened(&self, address: &str, dest: &str) {
        *self
            .active_flows
            .borrow_mut()
            .entry((address.to_string(), dest.to_string()))
            .or_default() += 1;
    }

    pub fn flow_closed(&self, address: &str, dest: &str) {
        let mut m = self.active_flows.borrow_mut();
        let key = (address.to_string(), dest.to_string());
        if let Some(n) = m.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&key);
            }
        }
    }

    fn active(&self, address: &str, dest: &str) -> u32 {
        self.active_flows
            .borrow()
            .get(&(address.to_string(), dest.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Round-robin over this router's `tcp_connector`s for `address`.
    pub fn pick_local_connector(&self, address: &str) -> Option<TcpConnectorConfig> {
        let connectors = self.tcp_connectors.borrow();
        let candidates: Vec<&TcpConnectorConfig> =
            connectors.iter().filter(|c| c.address == address).collect();
        if candidates.is_empty() {
            return None;
        }
        let mut rr = self.connector_rr.borrow_mut();
        let i = rr.entry(address.to_string()).or_default();
        let pick = candidates[*i % candidates.len()].clone();
        *i = i.wrapping_add(1);
        Some(pick)
    }

    pub fn on_routing_message(self: &Rc<Self>, link: LinkId, msg: RouterMessage) {
        self.engine
            .borrow_mut()
            .handle_message(now_std(), link, msg);
        self.pump();
    }

    /// The link to the next hop towards `router`, if it is reachable.
    pub fn next_hop(&self, router: &str) -> Option<Rc<Link>> {
        let engine = self.engine.borrow();
        let route = engine.route(router)?;
        self.links.borrow().get(&route.link).cloned()
    }

    /// Runs the routing engine's due timers, sends what it wants sent and
    /// acts on its events. Called after every input to the engine and by
    /// the engine timer task.
    pub(crate) fn pump(self: &Rc<Self>) {
        let now = now_std();
        let mut events = Vec::new();
        {
            let mut engine = self.engine.borrow_mut();
            let links = self.links.borrow();
            // Bounded: one round handles everything due at `now`.
            for _ in 0..4 {
                if engine.poll_timeout().is_some_and(|t| t <= now) {
                    engine.handle_timeout(now);
                }
                while let Some(t) = engine.poll_transmit() {
                    if let Some(link) = links.get(&t.link) {
                        link.send_routing(&t.message);
                    }
                }
                while let Some(e) = engine.poll_event() {
                    events.push(e);
                }
                if engine.poll_timeout().is_none_or(|t| t > now) {
                    break;
                }
            }
        }
        self.engine_timer.notify_one();
        let mut addresses_changed = false;
        let mut exposures_changed = false;
        for e in events {
            match e {
                Event::NeighbourUp { link, router } => {
                    tracing::info!(link, "router {router} adjacent")
                }
                Event::NeighbourDown { link, router } => {
                    tracing::info!(link, "router {router} no longer adjacent")
                }
                Event::RouteChanged {
                    router,
                    route: Some(r),
                } => tracing::info!("route to {router} via {} cost {}", r.next_router, r.cost),
                Event::RouteChanged {
                    router,
                    route: None,
                } => {
                    tracing::info!("router {router} unreachable")
                }
                Event::AddressChanged { address }
                    if crate::reconfig::is_expose_marker(&address) =>
                {
                    exposures_changed = true;
                }
                Event::AddressChanged { address } => {
                    let reachable = !self.engine.borrow().destinations(&address).is_empty();
                    self.messages.address_changed(&address, reachable);
                    addresses_changed = true;
                }
                _ => {}
            }
        }
        if exposures_changed {
            self.sync_auto_listeners();
        }
        if addresses_changed {
            self.addresses_changed();
            self.log_reachability();
            self.sync_gates();
        }
    }

    /// The set of addresses may have changed (management's cache).
    pub(crate) fn addresses_changed(&self) {
        self.address_generation
            .set(self.address_generation.get().wrapping_add(1));
    }

    fn log_reachability(&self) {
        let now: BTreeSet<String> = self
            .engine
            .borrow()
            .addresses()
            .filter(|(_, offers)| !offers.is_empty())
            .filter_map(|(a, _)| a.strip_prefix('T').map(str::to_string))
            .collect();
        let mut before = self.reachable.borrow_mut();
        for a in now.difference(&before) {
            tracing::info!(address = %a, "address reachable");
        }
        for a in before.difference(&now) {
            tracing::info!(address = %a, "address unreachable");
        }
        *before = now;
    }

    pub(crate) fn is_reachable(&self, address: &str) -> bool {
        !self
            .engine
            .borrow()
            .destinations(&tcp_address(address))
            .is_empty()
    }

    /// Whether a message address has a consumer anywhere.
    pub fn message_reachable(&self, address: &str) -> bool {
        if crate::messages::is_local_only(address) {
            return true;
        }
        !self
            .engine
            .borrow()
            .destinations(&MessageCore::engine_address(address))
            .is_empty()
    }

    /// Tells the routing engine which addresses this router serves: its
    /// tcp_connectors' and its AMQP consumers'.
    pub fn update_local_addresses(self: &Rc<Self>) {
        let mut local: Vec<String> = Vec::new();
        for c in self.tcp_connectors.borrow().iter() {
            local.push(tcp_address(&c.address));
            if c.expose {
                local.push(crate::reconfig::expose_marker(&c.address, c.port));
            }
        }
        local.extend(self.messages.local_addresses());
        self.addresses_changed();
        self.engine
            .borrow_mut()
            .set_local_addresses(now_std(), local);
        self.pump();
    }

    /// Where a message entering here for `address` goes (anycast: one
    /// destination, chosen like flows but weighted by unsettled deliveries;
    /// multicast: this router's consumers only, see messages.rs).
    pub fn message_targets_ingress(&self, address: &str) -> Vec<Dest> {
        if crate::messages::is_local_only(address) {
            return vec![Dest::Local];
        }
        let distribution = distribution_for(&self.addresses.borrow(), address);
        let engine = self.engine.borrow();
        let offers = engine.destinations(&MessageCore::engine_address(address));
        let links = self.links.borrow();
        if distribution == Distribution::Multicast {
            // One copy per router with consumers, each routed like an
            // anycast message to that router: exact, and loop-free.
            return offers
                .iter()
                .filter_map(|o| match o.link {
                    None => Some(Dest::LocalAll),
                    Some(id) => links.get(&id).map(|link| Dest::Remote {
                        link: link.clone(),
                        egress: o.router.clone(),
                    }),
                })
                .collect();
        }
        let mut best = lowest_scoring(
            offers,
            &links,
            |offer| match distribution {
                Distribution::Closest => offer.cost,
                _ => offer.cost + u64::from(self.messages.unsettled_to(address, &offer.router)),
            },
            |link, offer| match link {
                None => Dest::Local,
                Some(link) => Dest::Remote {
                    link: link.clone(),
                    egress: offer.router.clone(),
                },
            },
        );
        if best.is_empty() {
            return best;
        }
        let pick = self.messages.turn(address, best.len());
        vec![best.swap_remove(pick)]
    }

    /// Where a message that arrived from another router for `egress` goes:
    /// here, or the next hop (never back where it came from).
    pub fn message_targets_transit(&self, address: &str, egress: &str, from: LinkId) -> Vec<Dest> {
        if egress == self.id || egress.is_empty() {
            let multicast =
                distribution_for(&self.addresses.borrow(), address) == Distribution::Multicast;
            return vec![if multicast {
                Dest::LocalAll
            } else {
                Dest::Local
            }];
        }
        match self.next_hop(egress) {
            Some(link) if link.id != from => vec![Dest::Remote {
                link,
                egress: egress.to_string(),
            }],
            _ => Vec::new(),
        }
    }

    /// Chooses where a new flow for `address` goes, among the routers
    /// offering it. `closest`: the least path cost. `balanced`: path cost
    /// weighted by the flows this router already has open to each, so a
    /// busy site sheds to another. Equal choices take turns (sequential
    /// short flows spread too).
    fn choose(&self, address: &str) -> Option<Choice> {
        let distribution = distribution_for(&self.addresses.borrow(), address);
        let engine = self.engine.borrow();
        let links = self.links.borrow();
        let mut best = lowest_scoring(
            engine.destinations(&tcp_address(address)),
            &links,
            |offer| match distribution {
                Distribution::Closest => offer.cost,
                _ => {
                    let load = 1 + u64::from(self.active(address, &offer.router));
                    (offer.cost + 1).saturating_mul(load)
                }
            },
            |link, offer| match link {
                None => Choice::Local,
                Some(link) => Choice::Remote {
                    link: link.clone(),
                    egress: offer.router.clone(),
                },
            },
        );
        if best.is_empty() {
            return None;
        }
        let mut turns = self.choice_turns.borrow_mut();
        let turn = turns.entry(address.to_string()).or_default();
        let pick = *turn % best.len();
        *turn = turn.wrapping_add(1);
        Some(best.swap_remove(pick))
    }

    fn new_client_flow(self: &Rc<Self>, address: &str, stream: TcpStream) {
        match self.choose(address) {
            Some(Choice::Remote { link, egress }) => {
                Flow::start_ingress(&link, address, &egress, FlowSocket::new(stream))
            }
            Some(Choice::Local) => self.local_flow(address, stream),
            // Raced with the address going away: closing tells the client.
            None => drop(stream),
        }
    }

    /// A flow whose service is on this router: splice the two sockets.
    fn local_flow(self: &Rc<Self>, address: &str, mut client: TcpStream) {
        let Some(target) = self.pick_local_connector(address) else {
            return;
        };
        let router = self.clone();
        let address = address.to_string();
        router.flow_opened(&address, &router.id);
        tokio::task::spawn_local(async move {
            let _ = client.set_nodelay(true);
            match tokio::time::timeout(
                Duration::from_secs(5),
                TcpStream::connect((target.host.as_str(), target.port)),
            )
            .await
            {
                Ok(Ok(mut service)) => {
                    let _ = service.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut service).await;
                }
                Ok(Err(e)) => {
                    tracing::warn!(%address, "service {}:{} refused the connection: {e}", target.host, target.port)
                }
                Err(_) => {
                    tracing::warn!(%address, "service {}:{} did not answer within 5 s", target.host, target.port)
                }
            }
            router.flow_closed(&address, &router.id);
        });
    }

    /// Opens or closes TCP listeners as their addresses become reachable or
    /// unreachable: clients are refused while there is nowhere to go.
    pub(crate) fn sync_gates(self: &Rc<Self>) {
        let mut gates = self.gates.borrow_mut();
        for gate in gates.iter_mut() {
            let reachable = self.is_reachable(&gate.cfg.address);
            match (reachable, gate.accept_task.is_some()) {
                (true, false) => {
                    let addr = match resolve(&gate.cfg.host, gate.cfg.port) {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::error!(name = %gate.cfg.name, "cannot resolve {}:{}: {e}", gate.cfg.host, gate.cfg.port);
                            continue;
                        }
                    };
                    match tether_tcp::bind_listener(addr) {
                        Ok(listener) => {
                            tracing::info!(name = %gate.cfg.name, address = %gate.cfg.address, "tcp_listener accepting on {addr}");
                            gate.accept_task = Some(tokio::task::spawn_local(accept_clients(
                                self.clone(),
                                gate.cfg.address.clone(),
                                listener,
                            )));
                        }
                        Err(e) => {
                            tracing::error!(name = %gate.cfg.name, "cannot listen on {addr}: {e}; retrying in 1 s");
                            if !gate.retry_pending {
                                gate.retry_pending = true;
                                let router = self.clone();
                                let name = gate.cfg.name.clone();
                                tokio::task::spawn_local(async move {
                                    tokio::time::sleep(Duration::from_secs(1)).await;
                                    if let Some(g) = router
                                        .gates
                                        .borrow_mut()
                                        .iter_mut()
                                        .find(|g| g.cfg.name == name)
                                    {
                                        g.retry_pending = false;
                                    }
                                    router.sync_gates();
                                });
                            }
                        }
                    }
                }
                (false, true) => {
                    if let Some(t) = gate.accept_task.take() {
                        t.abort();
                    }
                    tracing::info!(name = %gate.cfg.name, address = %gate.cfg.address, "tcp_listener closed: no tcp_connector reachable");
                }
                _ => {}
            }
        }
    }

    fn link_up(self: &Rc<Self>, link: &Rc<Link>, how: &str, own_cost: u32) {
        tracing::info!(peer = %link.peer_id, link = link.id, cost = link.cost, "link up: peer={} ({how})", link.peer_id);
        self.links.borrow_mut().insert(link.id, link.clone());
        self.engine
            .borrow_mut()
            .handle_link_up(now_std(), link.id, own_cost);
        self.pump();
    }

    fn link_down(self: &Rc<Self>, link: &Rc<Link>, reason: &LinkError) {
        tracing::warn!(peer = %link.peer_id, link = link.id, "link down: peer={}: {reason}", link.peer_id);
        self.links.borrow_mut().remove(&link.id);
        self.engine
            .borrow_mut()
            .handle_link_down(now_std(), link.id);
        self.pump();
    }

    /// Applies a re-read config file: connector costs and `[[address]]`
    /// distributions change live; anything else needs a restart (logged).
    pub fn reload(self: &Rc<Self>, new: &Config) {
        let mut changed = false;
        for c in &new.connectors {
            let old = self.connector_costs.borrow().get(&c.name).copied();
            match old {
                Some(old) if old != c.cost => {
                    tracing::info!(connector = %c.name, "config reload: cost {old} -> {}", c.cost);
                    self.connector_costs
                        .borrow_mut()
                        .insert(c.name.clone(), c.cost);
                    let link = self.connector_links.borrow().get(&c.name).copied();
                    if let Some(link) = link {
                        self.engine
                            .borrow_mut()
                            .set_link_cost(now_std(), link, c.cost);
                    }
                    changed = true;
                }
                Some(_) => {}
                None => {
                    tracing::warn!(connector = %c.name, "config reload: new connectors need a restart")
                }
            }
        }
        if *self.addresses.borrow() != new.addresses {
            tracing::info!("config reload: [[address]] distributions updated");
            *self.addresses.borrow_mut() = new.addresses.clone();
        }
        if changed {
            self.pump();
        }
    }

    /// Runs one link from a fresh TLS stream until it ends.
    async fn run_link<S>(
        self: &Rc<Self>,
        stream: S,
        side: Side,
        how: String,
        peer: String,
        fingerprint: Option<String>,
        connector: Option<String>,
    ) -> Result<Duration, LinkError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let own_cost = match side {
            Side::Connector { cost } => cost,
            Side::Listener => 1,
        };
        let dir = match side {
            Side::Connector { .. } => "out",
            Side::Listener => "in",
        };
        let (link, driver) = establish(self, stream, side).await?;
        let revoked = {
            let revoked = self.revoked.borrow();
            if revoked.contains(&link.peer_id) {
                Some(format!("router {}", link.peer_id))
            } else {
                fingerprint
                    .as_ref()
                    .filter(|fp| revoked.contains(*fp))
                    .map(|fp| format!("certificate {fp}"))
            }
        };
        if let Some(what) = revoked {
            // Tell the peer why (its connector shows it), then drop it.
            link.close(&format!(
                "router {} revoked this link ({what}); ask {} for a new token",
                self.id, self.id
            ));
            let _ = tokio::time::timeout(Duration::from_secs(1), driver).await;
            return Err(LinkError::Protocol(format!("{what} is revoked here")));
        }
        link.dir.set(dir);
        *link.peer_addr.borrow_mut() = peer.clone();
        *link.peer_fingerprint.borrow_mut() = fingerprint;
        let started = Instant::now();
        if let Some(name) = &connector {
            self.connector_links
                .borrow_mut()
                .insert(name.clone(), link.id);
            self.live
                .connector_status(name, "UP", &format!("linked to {}", link.peer_id));
        }
        self.link_up(&link, &how, own_cost);
        let reason = driver.await;
        if let Some(name) = &connector {
            let mut m = self.connector_links.borrow_mut();
            if m.get(name) == Some(&link.id) {
                m.remove(name);
            }
        }
        self.link_down(&link, &reason);
        Ok(started.elapsed())
    }
}

pub(crate) fn resolve(host: &str, port: u16) -> std::io::Result<SocketAddr> {
    (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
}

async fn accept_clients(router: Rc<Router>, address: String, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => router.new_client_flow(&address, stream),
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(%address, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

pub(crate) async fn accept_links(
    router: Rc<Router>,
    cfg: ListenerConfig,
    listener: TcpListener,
    tls: Arc<TlsMaterial>,
) {
    let acceptor = TlsAcceptor::from(tls.server.clone());
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(listener = %cfg.name, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let router = router.clone();
        let acceptor = acceptor.clone();
        let name = cfg.name.clone();
        tokio::task::spawn_local(async move {
            let _ = tcp.set_nodelay(true);
            let io = BufReader::with_capacity(TLS_READ_BUFFER, tcp);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::warn!(listener = %name, "refused inter-router connection from {peer}: {}", describe_handshake_error(&e));
                    return;
                }
                Err(_) => {
                    tracing::warn!(listener = %name, "refused inter-router connection from {peer}: TLS handshake timed out");
                    return;
                }
            };
            let mut tls = tls;
            tls.get_mut().1.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
            let fingerprint = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| cert_fingerprint(c.as_ref()));
            if let Err(e) = router
                .run_link(
                    tls,
                    Side::Listener,
                    format!("accepted from {peer}"),
                    peer.to_string(),
                    fingerprint,
                    None,
                )
                .await
            {
                log_link_failure(&format!("inter-router connection from {peer}"), &e);
            }
        });
    }
}

/// Accepts AMQP client connections (TLS if configured) and runs each.
pub(crate) async fn accept_amqp_clients(
    router: Rc<Router>,
    cfg: ClientListenerConfig,
    listener: TcpListener,
    tls: Option<Arc<TlsMaterial>>,
) {
    let acceptor = tls.map(|m| {
        TlsAcceptor::from(if cfg.require_client_cert {
            m.amqp_server_cert_required.clone()
        } else {
            m.amqp_server_cert_optional.clone()
        })
    });
    let cfg = Rc::new(cfg);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(listener = %cfg.name, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let router = router.clone();
        let acceptor = acceptor.clone();
        let cfg = cfg.clone();
        tokio::task::spawn_local(async move {
            let _ = tcp.set_nodelay(true);
            let peer = peer.to_string();
            match acceptor {
                None => crate::client::run_client(router, &cfg, tcp, peer).await,
                Some(a) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, a.accept(tcp)).await {
                    Ok(Ok(s)) => crate::client::run_client(router, &cfg, s, peer).await,
                    Ok(Err(e)) => {
                        tracing::warn!(listener = %cfg.name, "refused AMQP client {peer}: {}", describe_handshake_error(&e))
                    }
                    Err(_) => {
                        tracing::warn!(listener = %cfg.name, "refused AMQP client {peer}: TLS handshake timed out")
                    }
                },
            }
        });
    }
}

fn log_link_failure(what: &str, e: &LinkError) {
    match e {
        LinkError::DuplicateId(_) => tracing::error!("refused {what}: {e}"),
        _ => tracing::warn!("refused {what}: {e}"),
    }
}

pub(crate) async fn connector_loop(
    router: Rc<Router>,
    cfg: ConnectorConfig,
    tls: Arc<TlsMaterial>,
    state: Rc<crate::reconfig::ConnectorState>,
) {
    let client = if cfg.verify_hostname {
        tls.client.clone()
    } else {
        tls.client_no_hostname.clone()
    };
    let connector = TlsConnector::from(client);
    let target = format!("{}:{}", cfg.host, cfg.port);
    let mut backoff = BACKOFF_MIN;
    loop {
        if state.stopped.get() {
            return;
        }
        state.set("CONNECTING", "");
        let result = connect_once(&router, &cfg, &connector).await;
        state.attempts.set(state.attempts.get() + 1);
        if state.stopped.get() {
            return;
        }
        match result {
            Ok(up_for) => {
                state.set("CONNECTING", "link ended; reconnecting");
                if up_for >= BACKOFF_RESET_AFTER {
                    backoff = BACKOFF_MIN;
                }
            }
            Err(msg) => {
                tracing::warn!(connector = %cfg.name, "link to {target}: {msg}");
                state.set("FAILED", &msg);
            }
        }
        // Jitter spreads reconnects of many routers after a shared failure.
        let half = backoff / 2;
        let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
        tokio::time::sleep(half + Duration::from_millis(jitter)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn connect_once(
    router: &Rc<Router>,
    cfg: &ConnectorConfig,
    connector: &TlsConnector,
) -> Result<Duration, String> {
    let tcp = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        TcpStream::connect((cfg.host.as_str(), cfg.port)),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| format!("connect failed: {e}"))?;
    // Dialling a loopback port in the ephemeral range while nothing
    // listens can connect the socket to itself; that would hold the port
    // the peer is about to bind. Drop it at once.
    if tcp.local_addr().ok() == tcp.peer_addr().ok() {
        return Err("connected to itself (nothing listening yet); retrying".into());
    }
    let _ = tcp.set_nodelay(true);
    let server_name = ServerName::try_from(cfg.host.clone())
        .map_err(|e| format!("invalid host name {}: {e}", cfg.host))?;
    let io = BufReader::with_capacity(TLS_READ_BUFFER, tcp);
    let mut tls =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(server_name, io)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("refused: {}", describe_handshake_error(&e))),
            Err(_) => return Err("refused: TLS handshake timed out".into()),
        };
    tls.get_mut().1.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
    let fingerprint = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| cert_fingerprint(c.as_ref()));
    let how = format!("connector {}:{}", cfg.host, cfg.port);
    let cost = router
        .connector_costs
        .borrow()
        .get(&cfg.name)
        .copied()
        .unwrap_or(cfg.cost);
    router
        .run_link(
            tls,
            Side::Connector { cost },
            how,
            format!("{}:{}", cfg.host, cfg.port),
            fingerprint,
            Some(cfg.name.clone()),
        )
        .await
        .map_err(|e| match e {
            LinkError::DuplicateId(_) => {
                tracing::error!(connector = %cfg.name, "refused link to {}:{}: {e}", cfg.host, cfg.port);
                format!("refused: {e}")
            }
            other => format!("refused: {other}"),
        })
}

/// Re-reads the config file on SIGHUP and applies what can change live.
async fn reload_on_hangup(router: Rc<Router>, path: std::path::PathBuf) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match crate::config::load(&path) {
            Ok(new) => router.reload(&new),
            Err(e) => tracing::error!("config reload failed, keeping the running config: {e}"),
        }
    }
}

/// Splits a flow window into credits and a delivery size: deliveries of a
/// quarter window (16-256 KiB; larger socket reads mean fewer frames and
/// wake-ups: 256 KiB reads took single-flow bulk from ~5.8 to ~8.7 Gbit/s
/// here), and as many credits as fit.
/// The offers with the lowest `score` among those this router can reach
/// (its own, or over a link that is open), made into `T` by `make` (which
/// gets the next-hop link, `None` for this router's own offer).
fn lowest_scoring<T>(
    offers: &[Offer],
    links: &BTreeMap<LinkId, Rc<Link>>,
    score: impl Fn(&Offer) -> u64,
    make: impl Fn(Option<&Rc<Link>>, &Offer) -> T,
) -> Vec<T> {
    let mut best = Vec::new();
    let mut best_score = u64::MAX;
    for offer in offers {
        let link = match offer.link {
            None => None,
            Some(id) => match links.get(&id) {
                Some(link) => Some(link),
                None => continue,
            },
        };
        let s = score(offer);
        if s < best_score {
            best_score = s;
            best.clear();
        }
        if s == best_score {
            best.push(make(link, offer));
        }
    }
    best
}

/// How a revoked certificate is named: `sha256:` and the hex SHA-256 of
/// its DER (as `tether link generate` records it).
pub(crate) fn cert_fingerprint(der: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(der);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The engine address of a TCP address (class `T`; AMQP addresses are
/// class `M`, so the two never mix).
pub(crate) fn tcp_address(address: &str) -> String {
    let mut key = String::with_capacity(1 + address.len());
    key.push('T');
    key.push_str(address);
    key
}

/// The current time for the routing engine (tokio's clock, so tests with
/// paused time work).
fn now_std() -> std::time::Instant {
    Instant::now().into_std()
}

/// Starts each run of the router with a larger routing instance than the
/// last (the engine requires it): the wall clock in milliseconds.
fn routing_instance() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1)
        .max(1)
}

/// Calls [`Router::pump`] whenever the engine's next timeout comes.
async fn engine_timer(router: Rc<Router>) {
    loop {
        let next = router.engine.borrow().poll_timeout();
        let notified = router.engine_timer.notified();
        match next {
            Some(t) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(Instant::from_std(t)) => router.pump(),
                    _ = notified => {}
                }
            }
            None => notified.await,
        }
    }
}

pub fn flow_credit(flow_window: u32) -> (u32, u32) {
    let delivery = (flow_window / 4).clamp(16 * 1024, tether_tcp::MAX_READ_CHUNK as u32);
    ((flow_window / delivery).max(1), delivery)
}

/// Builds the router from `config` and runs it until `shutdown` completes.
/// Must be called inside a `LocalSet`.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let (window_credits, max_delivery) = flow_credit(config.router.flow_window);
    let router = Rc::new(Router {
        id: config.router.id.clone(),
        messages: Rc::new(MessageCore::new(config.router.id.clone())),
        settings: Settings {
            hello_interval: config.router.hello_interval,
            dead_interval: config.router.dead_interval,
            window_credits,
            max_delivery,
        },
        tcp_connectors: RefCell::new(config.tcp_connectors.clone()),
        addresses: RefCell::new(config.addresses.clone()),
        engine: RefCell::new(RoutingEngine::new(EngineConfig {
            router_id: config.router.id.clone(),
            instance: routing_instance(),
            timers: Timers {
                hello_interval: config.router.hello_interval,
                dead_interval: config.router.dead_interval,
                ra_interval: config.router.advertisement_interval,
                ..Timers::default()
            },
        })),
        engine_timer: Notify::new(),
        reachable: RefCell::new(BTreeSet::new()),
        links: RefCell::new(BTreeMap::new()),
        connector_costs: RefCell::new(HashMap::new()),
        connector_links: RefCell::new(HashMap::new()),
        next_link_id: Cell::new(0),
        next_flow_key: Cell::new(0),
        active_flows: RefCell::new(HashMap::new()),
        connector_rr: RefCell::new(HashMap::new()),
        choice_turns: RefCell::new(HashMap::new()),
        gates: RefCell::new(
            config
                .tcp_listeners
                .iter()
                .cloned()
                .map(ListenerGate::new)
                .collect(),
        ),
        live: crate::reconfig::LiveConfig::new(&config),
        flow_stats: RefCell::new(BTreeMap::new()),
        clients: RefCell::new(BTreeMap::new()),
        started: Instant::now(),
        address_generation: Cell::new(0),
        address_index: RefCell::new(None),
        auto_listeners: config.router.auto_listeners,
        revoked: RefCell::new(config.router.revoked_peers.iter().cloned().collect()),
        auto_ports: RefCell::new(HashMap::new()),
    });
    tracing::info!(router = %router.id, "router starting");

    for l in &config.listeners {
        router.start_listener(l.clone())?;
    }
    for c in &config.connectors {
        router.start_connector(c.clone())?;
    }
    for cl in &config.client_listeners {
        router.start_client_listener(cl.clone())?;
    }
    if let Some(http) = &config.http {
        router.start_http(http)?;
    }
    let agent = crate::management::Agent::start(&router);
    router.update_local_addresses();
    router.sync_gates();
    tokio::task::spawn_local(engine_timer(router.clone()));
    tokio::task::spawn_local(reload_on_hangup(router.clone(), config.path.clone()));
    router.live.started.set(true);
    tracing::info!(router = %router.id, "router ready");
    shutdown.await;
    tracing::info!(router = %router.id, "router stopping");
    drop(agent);
    // Tell every peer we are going (AMQP Close) and give the link drivers a
    // moment to write it; flows end with the process.
    let links: Vec<Rc<Link>> = router.links.borrow().values().cloned().collect();
    for link in &links {
        link.send_close("router shutting down");
    }
    if !links.is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::flow_credit;

    #[test]
    fn flow_window_splits_into_credits_that_never_exceed_it() {
        assert_eq!(flow_credit(1024 * 1024), (4, 256 * 1024));
        assert_eq!(flow_credit(64 * 1024), (4, 16 * 1024));
        assert_eq!(flow_credit(64 * 1024 * 1024), (256, 256 * 1024));
        for window in [65_536u32, 100_000, 1 << 20, 3_000_000, 64 << 20] {
            let (credits, delivery) = flow_credit(window);
            assert!(credits >= 1);
            assert!(
                credits * delivery <= window,
                "{window}: {credits} x {delivery}"
            );
        }
    }
}
