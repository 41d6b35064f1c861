//! What runs live and can change without a restart: inter-router
//! listeners and connectors, AMQP client listeners, TCP listeners and
//! connectors, TLS profiles and address distributions; plus the counters
//! management and metrics read (per-address TCP flow counters, client
//! connection records).
//!
//! Every change is checked before anything is touched (a bad request
//! changes nothing), and touches only its own entity: deleting a TCP
//! listener stops new clients there but leaves its open flows alone;
//! deleting a connector closes its link (routing moves the link's traffic
//! elsewhere as for any failed link).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{
    distribution_for, AddressConfig, ClientListenerConfig, Config, ConnectorConfig, Distribution,
    HttpConfig, ListenerConfig, TcpConnectorConfig, TcpListenerConfig, TlsProfile,
};
use crate::core::{
    accept_amqp_clients, accept_links, connector_loop, resolve, ListenerGate, Router,
};
use crate::metrics::Histogram;
use crate::tls::TlsMaterial;

/// A listener that is bound and accepting.
pub struct Running<C> {
    pub cfg: C,
    pub bound: SocketAddr,
    task: JoinHandle<()>,
}

/// An inter-router connector and its dialing task.
pub struct ConnectorEntry {
    pub cfg: ConnectorConfig,
    pub state: Rc<ConnectorState>,
    task: JoinHandle<()>,
}

/// What a connector is doing, for management (`connectionStatus`).
#[derive(Debug, Default)]
pub struct ConnectorState {
    pub stopped: Cell<bool>,
    pub status: Cell<&'static str>,
    pub message: RefCell<String>,
    /// Connection attempts made (readiness: every connector tried once).
    pub attempts: Cell<u64>,
}

impl ConnectorState {
    pub fn set(&self, status: &'static str, message: &str) {
        self.status.set(status);
        let mut m = self.message.borrow_mut();
        m.clear();
        m.push_str(message);
    }
}

/// The live parts of the configuration. See the module documentation.
#[derive(Default)]
pub struct LiveConfig {
    pub listeners: RefCell<BTreeMap<String, Running<ListenerConfig>>>,
    pub client_listeners: RefCell<BTreeMap<String, Running<ClientListenerConfig>>>,
    pub connectors: RefCell<BTreeMap<String, ConnectorEntry>>,
    pub tls: RefCell<BTreeMap<String, TlsProfile>>,
    /// Startup finished: configured listeners bound, connectors started.
    pub started: Cell<bool>,
}

impl LiveConfig {
    pub fn new(config: &Config) -> LiveConfig {
        LiveConfig {
            tls: RefCell::new(config.tls.clone()),
            ..LiveConfig::default()
        }
    }

    pub fn connector_status(&self, name: &str, status: &'static str, message: &str) {
        if let Some(c) = self.connectors.borrow().get(name) {
            c.state.set(status, message);
        }
    }

    /// Ready: startup done and every connector has tried to link once.
    pub fn ready(&self) -> Result<(), String> {
        if !self.started.get() {
            return Err("starting".into());
        }
        for (name, c) in self.connectors.borrow().iter() {
            if c.state.attempts.get() == 0 && c.state.status.get() != "UP" {
                return Err(format!("connector {name} has not tried to link yet"));
            }
        }
        Ok(())
    }

    fn profile(&self, name: &str) -> Result<Arc<TlsMaterial>, String> {
        let tls = self.tls.borrow();
        tls.get(name).map(|p| p.material.clone()).ok_or_else(|| {
            let known: Vec<&str> = tls.keys().map(String::as_str).collect();
            format!(
                "no sslProfile named {name:?} (defined: {})",
                known.join(", ")
            )
        })
    }
}

/// TCP flow counters of one address at this router (flows whose socket is
/// here: clients at an ingress, the service at an egress).
#[derive(Debug, Default)]
pub struct FlowStats {
    pub opened: Cell<u64>,
    pub active: Cell<u64>,
    pub failed: Cell<u64>,
    /// Bytes read from this router's sockets of the address's flows.
    pub bytes_in: Cell<u64>,
    /// Bytes written to them.
    pub bytes_out: Cell<u64>,
    pub duration: Histogram,
}

impl FlowStats {
    pub fn opened(&self) {
        self.opened.set(self.opened.get() + 1);
        self.active.set(self.active.get() + 1);
    }
    pub fn closed(&self, lasted: Duration) {
        self.active.set(self.active.get().saturating_sub(1));
        self.duration.observe_duration(lasted);
    }
    pub fn failed(&self) {
        self.failed.set(self.failed.get() + 1);
    }
    pub fn add_bytes_in(&self, n: u64) {
        self.bytes_in.set(self.bytes_in.get().wrapping_add(n));
    }
    pub fn add_bytes_out(&self, n: u64) {
        self.bytes_out.set(self.bytes_out.get().wrapping_add(n));
    }
}

/// An AMQP client connection, for management.
#[derive(Debug)]
pub struct ClientInfo {
    pub id: u64,
    pub host: String,
    pub container: RefCell<String>,
    pub user: RefCell<Option<String>>,
    pub sasl: RefCell<Option<String>>,
    pub encrypted: bool,
    pub opened_at: Instant,
    pub last_delivery: Cell<Option<Instant>>,
    /// The client's links, by the connection engine's link id.
    pub links: RefCell<BTreeMap<u64, Rc<EndpointLink>>>,
}

/// A client's link, for management (router.link, linkType "endpoint").
#[derive(Debug)]
pub struct EndpointLink {
    pub name: String,
    /// "in": the client sends to the router; "out": the router sends.
    pub dir: &'static str,
    /// `None`: an anonymous-relay sender.
    pub address: Option<String>,
    pub deliveries: Cell<u64>,
}

impl ClientInfo {
    pub fn link_attached(
        &self,
        id: impl Into<u64>,
        name: String,
        dir: &'static str,
        address: Option<String>,
    ) -> Rc<EndpointLink> {
        let l = Rc::new(EndpointLink {
            name,
            dir,
            address,
            deliveries: Cell::new(0),
        });
        self.links.borrow_mut().insert(id.into(), l.clone());
        l
    }

    pub fn link_detached(&self, id: impl Into<u64>) {
        self.links.borrow_mut().remove(&id.into());
    }
}

impl Router {
    /// The flow counters of `address` (created on first use).
    pub fn flow_stats_for(&self, address: &str) -> Rc<FlowStats> {
        if let Some(s) = self.flow_stats.borrow().get(address) {
            return s.clone();
        }
        let s = Rc::new(FlowStats::default());
        self.addresses_changed();
        self.flow_stats
            .borrow_mut()
            .insert(address.to_string(), s.clone());
        s
    }

    /// Registers an AMQP client connection; it is removed by
    /// [`Router::client_gone`].
    pub fn client_connected(&self, info: Rc<ClientInfo>) {
        self.clients.borrow_mut().insert(info.id, info);
    }

    pub fn client_gone(&self, id: u64) {
        self.clients.borrow_mut().remove(&id);
    }

    /// Binds and starts an inter-router listener.
    pub fn start_listener(self: &Rc<Self>, cfg: ListenerConfig) -> Result<(), String> {
        let tls = self
            .live
            .profile(&cfg.tls)
            .map_err(|e| format!("{}: {e}", cfg.name))?;
        let listener = bind(&cfg.name, &cfg.host, cfg.port)?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(listener = %cfg.name, "inter-router listener on {bound}");
        let task = tokio::task::spawn_local(accept_links(self.clone(), cfg.clone(), listener, tls));
        self.live
            .listeners
            .borrow_mut()
            .insert(cfg.name.clone(), Running { cfg, bound, task });
        Ok(())
    }

    /// Binds and starts an AMQP client listener.
    pub fn start_client_listener(self: &Rc<Self>, cfg: ClientListenerConfig) -> Result<(), String> {
        let tls = match &cfg.tls {
            Some(p) => Some(
                self.live
                    .profile(p)
                    .map_err(|e| format!("{}: {e}", cfg.name))?,
            ),
            None => None,
        };
        let listener = bind(&cfg.name, &cfg.host, cfg.port)?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(listener = %cfg.name, tls = cfg.tls.is_some(), "AMQP client listener on {bound}");
        let task = tokio::task::spawn_local(accept_amqp_clients(
            self.clone(),
            cfg.clone(),
            listener,
            tls,
        ));
        self.live
            .client_listeners
            .borrow_mut()
            .insert(cfg.name.clone(), Running { cfg, bound, task });
        Ok(())
    }

    /// Stops accepting on a listener (inter-router or client). Links and
    /// connections it accepted stay up.
    pub fn stop_listener(&self, name: &str) -> bool {
        if let Some(r) = self.live.listeners.borrow_mut().remove(name) {
            r.task.abort();
            tracing::info!(listener = %name, "inter-router listener deleted");
            return true;
        }
        if let Some(r) = self.live.client_listeners.borrow_mut().remove(name) {
            r.task.abort();
            tracing::info!(listener = %name, "AMQP client listener deleted");
            return true;
        }
        false
    }

    /// Starts dialing an inter-router connector.
    pub fn start_connector(self: &Rc<Self>, cfg: ConnectorConfig) -> Result<(), String> {
        let tls = self
            .live
            .profile(&cfg.tls)
            .map_err(|e| format!("{}: {e}", cfg.name))?;
        let state = Rc::new(ConnectorState::default());
        state.set("CONNECTING", "");
        self.connector_costs
            .borrow_mut()
            .insert(cfg.name.clone(), cfg.cost);
        let task = tokio::task::spawn_local(connector_loop(
            self.clone(),
            cfg.clone(),
            tls,
            state.clone(),
        ));
        self.live
            .connectors
            .borrow_mut()
            .insert(cfg.name.clone(), ConnectorEntry { cfg, state, task });
        Ok(())
    }

    /// Stops a connector and closes its link (the peer sees it go down).
    pub fn stop_connector(&self, name: &str) -> bool {
        let Some(entry) = self.live.connectors.borrow_mut().remove(name) else {
            return false;
        };
        entry.state.stopped.set(true);
        self.connector_costs.borrow_mut().remove(name);
        let link_id = self.connector_links.borrow().get(name).copied();
        let link = link_id.and_then(|id| self.links.borrow().get(&id).cloned());
        match link {
            // The link driver ends once the Close is out; the connector
            // task then sees `stopped` and returns.
            Some(link) => link.close(&format!("connector {name} deleted at {}", self.id)),
            // Not linked: the task is dialing or backing off; nothing of
            // it is registered yet, so stopping it here is clean.
            None => entry.task.abort(),
        }
        tracing::info!(connector = %name, "connector deleted");
        true
    }

    /// Changes a connector's link cost (re-advertised; new flows re-route).
    pub fn set_connector_cost(self: &Rc<Self>, name: &str, cost: u32) {
        if let Some(e) = self.live.connectors.borrow_mut().get_mut(name) {
            e.cfg.cost = cost;
        }
        self.connector_costs
            .borrow_mut()
            .insert(name.to_string(), cost);
        let link = self.connector_links.borrow().get(name).copied();
        if let Some(link) = link {
            self.engine
                .borrow_mut()
                .set_link_cost(std::time::Instant::now(), link, cost);
            self.pump();
        }
        tracing::info!(connector = %name, cost, "connector cost changed");
    }

    /// Adds a TCP listener (it accepts once its address is reachable). The
    /// port is checked free now, so a clash is reported to the requester.
    pub fn add_tcp_listener(self: &Rc<Self>, cfg: TcpListenerConfig) -> Result<(), String> {
        if distribution_for(&self.addresses.borrow(), &cfg.address) == Distribution::Multicast {
            return Err(format!(
                "address {:?} has distribution multicast; a TCP flow needs balanced or closest",
                cfg.address
            ));
        }
        // A listener waiting for its address holds no socket: check the
        // configured ones as well as the operating system.
        if let Some(g) = self.gates.borrow().iter().find(|g| {
            g.cfg.port == cfg.port
                && cfg.port != 0
                && (g.cfg.host == cfg.host || g.cfg.host == "0.0.0.0" || cfg.host == "0.0.0.0")
        }) {
            return Err(format!(
                "{}: port {} is already in use by tcpListener {}",
                cfg.name, cfg.port, g.cfg.name
            ));
        }
        drop(bind(&cfg.name, &cfg.host, cfg.port)?);
        tracing::info!(name = %cfg.name, address = %cfg.address, "tcp_listener added on {}:{}", cfg.host, cfg.port);
        self.gates.borrow_mut().push(ListenerGate::new(cfg));
        self.addresses_changed();
        self.sync_gates();
        Ok(())
    }

    /// Removes a TCP listener: no new clients; open flows carry on.
    pub fn remove_tcp_listener(&self, name: &str) -> bool {
        let mut gates = self.gates.borrow_mut();
        let Some(i) = gates.iter().position(|g| g.cfg.name == name) else {
            return false;
        };
        let gate = gates.remove(i);
        self.addresses_changed();
        if let Some(t) = gate.accept_task {
            t.abort();
        }
        tracing::info!(name = %name, "tcp_listener deleted");
        true
    }

    /// Adds a TCP connector: its address is advertised at once.
    pub fn add_tcp_connector(self: &Rc<Self>, cfg: TcpConnectorConfig) {
        tracing::info!(name = %cfg.name, address = %cfg.address, "tcp_connector added for {}:{}", cfg.host, cfg.port);
        self.tcp_connectors.borrow_mut().push(cfg);
        self.update_local_addresses();
    }

    /// Removes a TCP connector: new flows go elsewhere; open ones carry on.
    pub fn remove_tcp_connector(self: &Rc<Self>, name: &str) -> bool {
        let removed = {
            let mut v = self.tcp_connectors.borrow_mut();
            let before = v.len();
            v.retain(|c| c.name != name);
            v.len() != before
        };
        if removed {
            tracing::info!(name = %name, "tcp_connector deleted");
            self.update_local_addresses();
        }
        removed
    }

    /// Loads and adds a TLS profile.
    pub fn add_tls_profile(&self, profile: TlsProfile) {
        self.live
            .tls
            .borrow_mut()
            .insert(profile.name.clone(), profile);
    }

    /// Removes a TLS profile nobody uses; names the users otherwise.
    pub fn remove_tls_profile(&self, name: &str) -> Result<bool, String> {
        let mut users: Vec<String> = Vec::new();
        for (n, l) in self.live.listeners.borrow().iter() {
            if l.cfg.tls == name {
                users.push(format!("listener {n}"));
            }
        }
        for (n, l) in self.live.client_listeners.borrow().iter() {
            if l.cfg.tls.as_deref() == Some(name) {
                users.push(format!("listener {n}"));
            }
        }
        for (n, c) in self.live.connectors.borrow().iter() {
            if c.cfg.tls == name {
                users.push(format!("connector {n}"));
            }
        }
        if !users.is_empty() {
            return Err(format!(
                "sslProfile {name:?} is in use by {}; delete those first",
                users.join(", ")
            ));
        }
        Ok(self.live.tls.borrow_mut().remove(name).is_some())
    }

    /// Adds an `[[address]]` distribution (applies to new flows/messages).
    pub fn add_address_config(&self, a: AddressConfig) -> Result<(), String> {
        let mut v = self.addresses.borrow_mut();
        if v.iter().any(|x| x.prefix == a.prefix) {
            return Err(format!("prefix {:?} is already configured", a.prefix));
        }
        if a.distribution == Distribution::Multicast {
            let gates = self.gates.borrow();
            if let Some(g) = gates.iter().find(|g| g.cfg.address.starts_with(&a.prefix)) {
                return Err(format!(
                    "tcpListener {} serves {:?}: TCP flows cannot be multicast",
                    g.cfg.name, g.cfg.address
                ));
            }
        }
        v.push(a);
        Ok(())
    }

    pub fn remove_address_config(&self, prefix: &str) -> bool {
        let mut v = self.addresses.borrow_mut();
        let before = v.len();
        v.retain(|a| a.prefix != prefix);
        v.len() != before
    }

    /// Starts the `/metrics`, `/healthz`, `/readyz` endpoint.
    pub fn start_http(self: &Rc<Self>, cfg: &HttpConfig) -> Result<(), String> {
        let listener = tether_tcp::bind_listener(cfg.listen)
            .map_err(|e| format!("http: cannot listen on {}: {e}", cfg.listen))?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!("metrics and health on http://{bound}/metrics");
        let (m, r) = (Rc::downgrade(self), Rc::downgrade(self));
        let endpoints = crate::http::HttpEndpoints {
            metrics: Rc::new(move || {
                m.upgrade()
                    .map(|router| crate::management::prometheus::render(&router))
                    .unwrap_or_default()
            }),
            ready: Rc::new(move || match r.upgrade() {
                Some(router) => router.live.ready(),
                None => Err("stopping".into()),
            }),
        };
        tokio::task::spawn_local(crate::http::serve(listener, endpoints));
        Ok(())
    }
}

/// Engine-address class of exposure markers: `X<address>:<port>` says "a
/// router offers `address` and would like listeners for it on `port`".
const CLASS_EXPOSE: char = 'X';
/// Names of the listeners [`Router::sync_auto_listeners`] makes.
pub const AUTO_LISTENER_PREFIX: &str = "auto-";

/// The marker advertised for an exposed TCP connector.
pub fn expose_marker(address: &str, port: u16) -> String {
    format!("{CLASS_EXPOSE}{address}:{port}")
}

pub fn is_expose_marker(engine_address: &str) -> bool {
    engine_address.starts_with(CLASS_EXPOSE)
}

/// (address, port) of a marker.
fn parse_marker(engine_address: &str) -> Option<(&str, u16)> {
    let rest = engine_address.strip_prefix(CLASS_EXPOSE)?;
    let (address, port) = rest.rsplit_once(':')?;
    Some((address, port.parse().ok()?))
}

impl Router {
    /// With `auto_listeners`: a TCP listener `auto-<address>` for every
    /// address another router exposes, unless this router serves or
    /// listens for it already; on the exposed port if it is free here,
    /// else on a free one (shown by management: tcpListener `auto-...`).
    /// Listeners of exposures that went away are removed.
    pub(crate) fn sync_auto_listeners(self: &Rc<Self>) {
        if !self.auto_listeners {
            return;
        }
        let mut wanted: BTreeMap<String, u16> = BTreeMap::new();
        {
            let engine = self.engine.borrow();
            for (key, offers) in engine.addresses() {
                let Some((address, port)) = parse_marker(key) else {
                    continue;
                };
                if offers.iter().any(|o| o.link.is_some()) {
                    let p = wanted.entry(address.to_string()).or_insert(port);
                    *p = (*p).min(port);
                }
            }
        }
        let served: Vec<String> = self
            .tcp_connectors
            .borrow()
            .iter()
            .map(|c| c.address.clone())
            .collect();
        // (listener name, address) of every TCP listener: automatic or not.
        type Named = Vec<(String, String)>;
        let (auto, manual): (Named, Named) = self
            .gates
            .borrow()
            .iter()
            .map(|g| (g.cfg.name.clone(), g.cfg.address.clone()))
            .partition(|(name, _)| name.starts_with(AUTO_LISTENER_PREFIX));
        wanted.retain(|a, _| !served.contains(a) && !manual.iter().any(|(_, m)| m == a));
        for (name, address) in &auto {
            if !wanted.contains_key(address) {
                tracing::info!(%address, "exposure withdrawn: removing {name}");
                self.remove_tcp_listener(name);
            }
        }
        for (address, port) in wanted {
            let name = format!("{AUTO_LISTENER_PREFIX}{address}");
            if auto.iter().any(|(n, _)| *n == name) {
                continue;
            }
            // The port this address had here before (a link flapped), else
            // the exposed one: clients keep their port.
            let remembered = self.auto_ports.borrow().get(&address).copied();
            let port = match remembered
                .into_iter()
                .chain(std::iter::once(port))
                .find(|p| std::net::TcpListener::bind(("0.0.0.0", *p)).is_ok())
            {
                Some(p) => p,
                None => {
                    match std::net::TcpListener::bind(("0.0.0.0", 0)).and_then(|l| l.local_addr()) {
                        Ok(a) => {
                            tracing::info!(%address, "port {port} is taken here: auto listener on {}", a.port());
                            a.port()
                        }
                        Err(e) => {
                            tracing::error!(%address, "no free port for an auto listener: {e}");
                            continue;
                        }
                    }
                }
            };
            self.auto_ports.borrow_mut().insert(address.clone(), port);
            let cfg = TcpListenerConfig {
                name,
                address: address.clone(),
                host: "0.0.0.0".into(),
                port,
            };
            if let Err(e) = self.add_tcp_listener(cfg) {
                tracing::error!(%address, "cannot open an auto listener: {e}");
            }
        }
    }

    /// The cost routing uses for `link` now (the larger end's, after any
    /// live change), or the one agreed when it came up.
    pub fn link_cost(&self, link: &crate::link::Link) -> u32 {
        self.engine
            .borrow()
            .topology()
            .link_cost(&self.id, &link.peer_id)
            .unwrap_or(link.cost)
    }

    /// Refuses links from `peer` (a router id, or `sha256:<hex>` of a
    /// certificate) from now on and closes the open ones.
    pub fn revoke_peer(&self, peer: &str) {
        self.revoked.borrow_mut().insert(peer.to_string());
        let links: Vec<Rc<crate::link::Link>> = self
            .links
            .borrow()
            .values()
            .filter(|l| l.peer_id == peer || l.peer_fingerprint.borrow().as_deref() == Some(peer))
            .cloned()
            .collect();
        for l in links {
            l.close(&format!("router {} revoked the link from {peer}", self.id));
        }
        tracing::info!(%peer, "peer revoked");
    }
}

/// Resolves and binds `host:port` (port 0: any free port).
fn bind(name: &str, host: &str, port: u16) -> Result<tokio::net::TcpListener, String> {
    let addr =
        resolve(host, port).map_err(|e| format!("{name}: cannot resolve {host}:{port}: {e}"))?;
    tether_tcp::bind_listener(addr).map_err(|e| format!("{name}: cannot listen on {addr}: {e}"))
}
