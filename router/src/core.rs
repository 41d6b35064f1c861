//! The router: owns the address table, the inter-router links, the TCP
//! listeners and connectors, and starts everything a config describes.
//!
//! Everything runs on one single-threaded tokio runtime (see
//! ARCHITECTURE.md for the measurement behind that choice), so state is
//! shared with `Rc`/`RefCell` and never locked. Who calls what:
//! - [`run`] builds the router from a [`Config`] and starts the tasks;
//! - inter-router listeners and connectors hand each TLS stream to
//!   [`crate::link::establish`] and run its driver;
//! - link drivers report routing messages and link ends here, which update
//!   the [`AddressTable`] and open or close the TCP listeners gated on it;
//! - accepted client connections become flows on the chosen link.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rustls_pki_types::ServerName;
use tether_routing::{AddressTable, NeighbourId, ReachabilityChange, RouterMessage};
use tether_tcp::FlowSocket;
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{
    Config, ConnectorConfig, ListenerConfig, TcpConnectorConfig, TcpListenerConfig,
};
use crate::flow::Flow;
use crate::link::{establish, Link, LinkError, Side};
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
    settings: Settings,
    tcp_connectors: Vec<TcpConnectorConfig>,
    table: RefCell<AddressTable>,
    links: RefCell<BTreeMap<NeighbourId, Rc<Link>>>,
    next_link_id: Cell<u64>,
    next_flow_key: Cell<u64>,
    active_flows: RefCell<HashMap<(String, String), u32>>,
    connector_rr: RefCell<HashMap<String, usize>>,
    choice_turns: RefCell<HashMap<String, usize>>,
    gates: RefCell<Vec<ListenerGate>>,
}

struct ListenerGate {
    cfg: TcpListenerConfig,
    accept_task: Option<JoinHandle<()>>,
    retry_pending: bool,
}

/// Where a new flow goes.
enum Choice {
    Local,
    Remote(Rc<Link>),
}

impl Router {
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn next_link_id(&self) -> NeighbourId {
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
        let candidates: Vec<&TcpConnectorConfig> = self
            .tcp_connectors
            .iter()
            .filter(|c| c.address == address)
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let mut rr = self.connector_rr.borrow_mut();
        let i = rr.entry(address.to_string()).or_default();
        let pick = candidates[*i % candidates.len()].clone();
        *i = i.wrapping_add(1);
        Some(pick)
    }

    pub fn on_routing_message(self: &Rc<Self>, link: NeighbourId, msg: RouterMessage) {
        let changes = self.table.borrow_mut().handle_message(link, msg);
        self.apply_reachability(changes);
    }

    /// Chooses where a new flow for `address` goes: the cheapest, weighted
    /// by the flows already open there, so a busy site sheds to another;
    /// equal choices take turns (sequential short flows spread too).
    fn choose(&self, address: &str) -> Option<Choice> {
        let table = self.table.borrow();
        let links = self.links.borrow();
        let mut best: Vec<Choice> = Vec::new();
        let mut best_score = u64::MAX;
        let mut consider = |score: u64, choice: Choice| {
            if score < best_score {
                best_score = score;
                best.clear();
            }
            if score == best_score {
                best.push(choice);
            }
        };
        if table.has_local(address) {
            consider(1 + u64::from(self.active(address, &self.id)), Choice::Local);
        }
        for d in table.remote_destinations(address) {
            let Some(link) = links.get(&d.via) else {
                continue;
            };
            let load = 1 + u64::from(self.active(address, &d.router_id));
            consider((u64::from(d.cost) + 1) * load, Choice::Remote(link.clone()));
        }
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
            Some(Choice::Remote(link)) => {
                Flow::start_ingress(&link, address, FlowSocket::new(stream))
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
    fn apply_reachability(self: &Rc<Self>, changes: Vec<ReachabilityChange>) {
        for c in &changes {
            match c {
                ReachabilityChange::Reachable(a) => {
                    tracing::info!(address = %a, "address reachable")
                }
                ReachabilityChange::Unreachable(a) => {
                    tracing::info!(address = %a, "address unreachable")
                }
            }
        }
        if !changes.is_empty() {
            self.sync_gates();
        }
    }

    fn sync_gates(self: &Rc<Self>) {
        let mut gates = self.gates.borrow_mut();
        for (idx, gate) in gates.iter_mut().enumerate() {
            let reachable = self.table.borrow().is_reachable(&gate.cfg.address);
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
                                tokio::task::spawn_local(async move {
                                    tokio::time::sleep(Duration::from_secs(1)).await;
                                    if let Some(g) = router.gates.borrow_mut().get_mut(idx) {
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

    fn link_up(self: &Rc<Self>, link: &Rc<Link>, how: &str) {
        tracing::info!(peer = %link.peer_id, link = link.id, cost = link.cost, "link up: peer={} ({how})", link.peer_id);
        self.links.borrow_mut().insert(link.id, link.clone());
        self.table
            .borrow_mut()
            .neighbour_up(link.id, &link.peer_id, link.cost);
        let update = self.table.borrow().local_update(&self.id);
        link.send_routing(&update);
    }

    fn link_down(self: &Rc<Self>, link: &Rc<Link>, reason: &LinkError) {
        tracing::warn!(peer = %link.peer_id, link = link.id, "link down: peer={}: {reason}", link.peer_id);
        self.links.borrow_mut().remove(&link.id);
        let changes = self.table.borrow_mut().neighbour_down(link.id);
        self.apply_reachability(changes);
    }

    /// Runs one link from a fresh TLS stream until it ends.
    async fn run_link<S>(
        self: &Rc<Self>,
        stream: S,
        side: Side,
        how: String,
    ) -> Result<Duration, LinkError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let (link, driver) = establish(self, stream, side).await?;
        let started = Instant::now();
        self.link_up(&link, &how);
        let reason = driver.await;
        self.link_down(&link, &reason);
        Ok(started.elapsed())
    }
}

fn resolve(host: &str, port: u16) -> std::io::Result<SocketAddr> {
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

async fn accept_links(
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
            if let Err(e) = router
                .run_link(tls, Side::Listener, format!("accepted from {peer}"))
                .await
            {
                log_link_failure(&format!("inter-router connection from {peer}"), &e);
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

async fn connector_loop(router: Rc<Router>, cfg: ConnectorConfig, tls: Arc<TlsMaterial>) {
    let client = if cfg.verify_hostname {
        tls.client.clone()
    } else {
        tls.client_no_hostname.clone()
    };
    let connector = TlsConnector::from(client);
    let target = format!("{}:{}", cfg.host, cfg.port);
    let mut backoff = BACKOFF_MIN;
    loop {
        match connect_once(&router, &cfg, &connector).await {
            Ok(up_for) => {
                if up_for >= BACKOFF_RESET_AFTER {
                    backoff = BACKOFF_MIN;
                }
            }
            Err(msg) => tracing::warn!(connector = %cfg.name, "link to {target}: {msg}"),
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
    let how = format!("connector {}:{}", cfg.host, cfg.port);
    router
        .run_link(tls, Side::Connector { cost: cfg.cost }, how)
        .await
        .map_err(|e| match e {
            LinkError::DuplicateId(_) => {
                tracing::error!(connector = %cfg.name, "refused link to {}:{}: {e}", cfg.host, cfg.port);
                format!("refused: {e}")
            }
            other => format!("refused: {other}"),
        })
}

/// Splits a flow window into credits and a delivery size: deliveries of a
/// quarter window (16-256 KiB; larger socket reads mean fewer frames and
/// wake-ups: 256 KiB reads took single-flow bulk from ~5.8 to ~8.7 Gbit/s
/// here), and as many credits as fit.
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
        settings: Settings {
            hello_interval: config.router.hello_interval,
            dead_interval: config.router.dead_interval,
            window_credits,
            max_delivery,
        },
        tcp_connectors: config.tcp_connectors.clone(),
        table: RefCell::new(AddressTable::new()),
        links: RefCell::new(BTreeMap::new()),
        next_link_id: Cell::new(0),
        next_flow_key: Cell::new(0),
        active_flows: RefCell::new(HashMap::new()),
        connector_rr: RefCell::new(HashMap::new()),
        choice_turns: RefCell::new(HashMap::new()),
        gates: RefCell::new(
            config
                .tcp_listeners
                .iter()
                .map(|cfg| ListenerGate {
                    cfg: cfg.clone(),
                    accept_task: None,
                    retry_pending: false,
                })
                .collect(),
        ),
    });
    tracing::info!(router = %router.id, "router starting");

    let profile = |name: &str| -> Result<Arc<TlsMaterial>, String> {
        config
            .tls
            .get(name)
            .map(|p| p.material.clone())
            .ok_or_else(|| format!("no TLS profile named {name:?}"))
    };
    for l in &config.listeners {
        let addr = resolve(&l.host, l.port)
            .map_err(|e| format!("{}: cannot resolve {}:{}: {e}", l.name, l.host, l.port))?;
        let listener = tether_tcp::bind_listener(addr)
            .map_err(|e| format!("{}: cannot listen on {addr}: {e}", l.name))?;
        tracing::info!(listener = %l.name, "inter-router listener on {addr}");
        tokio::task::spawn_local(accept_links(
            router.clone(),
            l.clone(),
            listener,
            profile(&l.tls)?,
        ));
    }
    for c in &config.connectors {
        tokio::task::spawn_local(connector_loop(router.clone(), c.clone(), profile(&c.tls)?));
    }
    let local = config.tcp_connectors.iter().map(|c| c.address.clone());
    let changes = router.table.borrow_mut().set_local_addresses(local);
    router.apply_reachability(changes);
    router.sync_gates();
    tracing::info!(router = %router.id, "router ready");
    shutdown.await;
    tracing::info!(router = %router.id, "router stopping");
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
