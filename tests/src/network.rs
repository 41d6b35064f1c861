//! Networks of N routers on loopback, built, started and waited for.
//!
//! ```text
//!  client ──► east ──(cost 1)──► hub ──(cost 1)──► west ──► service
//!               └──────(cost 1, through a Relay)─────┘
//! ```
//!
//! [`NetworkSpec::new`] names the routers; each gets an inter-router
//! listener on a fresh port and the TLS profile `site` (a leaf from the
//! test CA, as in [`crate::pair`]). Then:
//! - [`NetworkSpec::link`]`(a, b, cost)`: a connector on `a` (with `cost`)
//!   dialling `b`'s listener; [`NetworkSpec::link_via_relay`] puts a
//!   [`Relay`] in between so the test can kill or freeze that one link;
//! - [`NetworkSpec::tcp_listener`] (on a fresh client port) and
//!   [`NetworkSpec::tcp_connector`] by address;
//! - [`NetworkSpec::address`] (an `[[address]]` table on every router),
//!   [`NetworkSpec::timers`], [`NetworkSpec::advertisement_interval`],
//!   or any edit of one config with [`NetworkSpec::configure`];
//! - [`NetworkSpec::wait_client`]: a client port that must accept before
//!   [`Network::start`] returns;
//! - [`NetworkSpec::amqp`] / [`NetworkSpec::amqp_everywhere`]: an AMQP
//!   client listener (`role = "normal"`, defaults) on a fresh port, and
//!   [`NetworkSpec::amqp_with`] for a named one with TLS or SASL settings
//!   ([`Network::amqp_port`], [`Network::amqp_port_named`]);
//! - [`NetworkSpec::http`]: the `/metrics`, `/healthz`, `/readyz`
//!   endpoint (`[http] listen`) on a fresh port ([`Network::http_port`]).
//!
//! [`Network::start`] starts the relays and the routers (in the order they
//! were named), waits (bounded) until both ends of every link log
//! `link up` naming the other, then until every client port given to
//! `wait_client`, every AMQP port and every HTTP port accepts. Failures panic with every
//! router's log tail.
//!
//! A running [`Network`] hands out its routers, relays and client ports by
//! name, observes routes ([`Network::wait_route`]), and changes a link's
//! cost live ([`Network::set_link_cost`]: rewrites the connector's config
//! and sends SIGHUP).

use std::time::{Duration, Instant};

use crate::config::{ClientListener, Distribution, RouterConfig};
use crate::net::free_port;
use crate::relay::Relay;
use crate::router::{describe, wait_connectable, RouteLine, RouterProc};
use crate::TestEnv;

/// How long [`Network::start`] waits for the links and for each client
/// port, unless [`NetworkSpec::ready_timeout`] says otherwise.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// The TLS profile name every router uses.
const PROFILE: &str = "site";

/// One inter-router link as specified.
#[derive(Clone, Debug)]
pub struct LinkSpec {
    /// The router with the connector.
    pub from: String,
    /// The router with the listener.
    pub to: String,
    /// The connector's cost.
    pub cost: u32,
    /// Whether a [`Relay`] sits between connector and listener.
    pub relayed: bool,
}

/// A client port: a `tcp_listener` on `router` for `address`.
#[derive(Clone, Debug)]
struct ClientPort {
    router: String,
    address: String,
    port: u16,
}

/// The name [`NetworkSpec::amqp`] gives a router's AMQP client listener.
pub const DEFAULT_AMQP: &str = "amqp";

/// An AMQP client listener: `name` on `router`.
#[derive(Clone, Debug)]
struct AmqpPort {
    router: String,
    name: String,
    port: u16,
}

/// Configs, links and ports of a network before it starts (see the module
/// docs). Methods naming an unknown router panic.
pub struct NetworkSpec {
    routers: Vec<RouterConfig>,
    listener_ports: Vec<u16>,
    links: Vec<LinkSpec>,
    clients: Vec<ClientPort>,
    wait_clients: Vec<u16>,
    amqp: Vec<AmqpPort>,
    http: Vec<(String, u16)>,
    ready_timeout: Duration,
}

impl NetworkSpec {
    /// Routers with these ids, each with an inter-router listener on a
    /// fresh port and the TLS profile `site`.
    pub fn new(env: &TestEnv, names: &[&str]) -> NetworkSpec {
        let mut routers = Vec::new();
        let mut listener_ports = Vec::new();
        for name in names {
            assert!(
                !routers.iter().any(|r: &RouterConfig| r.id == *name),
                "router {name} named twice"
            );
            let port = free_port();
            routers.push(
                RouterConfig::new(name)
                    .listener(port, PROFILE)
                    .tls(PROFILE, env.tls_for(name)),
            );
            listener_ports.push(port);
        }
        NetworkSpec {
            routers,
            listener_ports,
            links: Vec::new(),
            clients: Vec::new(),
            wait_clients: Vec::new(),
            amqp: Vec::new(),
            http: Vec::new(),
            ready_timeout: READY_TIMEOUT,
        }
    }

    /// A link `from -> to`: a connector on `from` (link cost `cost`)
    /// dialling `to`'s inter-router listener.
    pub fn link(self, from: &str, to: &str, cost: u32) -> NetworkSpec {
        self.add_link(from, to, cost, false)
    }

    /// Like [`NetworkSpec::link`] with a [`Relay`] between the two routers
    /// ([`Network::relay`]).
    pub fn link_via_relay(self, from: &str, to: &str, cost: u32) -> NetworkSpec {
        self.add_link(from, to, cost, true)
    }

    fn add_link(mut self, from: &str, to: &str, cost: u32, relayed: bool) -> NetworkSpec {
        assert_ne!(from, to, "a link needs two routers");
        self.index(from);
        self.index(to);
        assert!(
            !self
                .links
                .iter()
                .any(|l| (l.from == from && l.to == to) || (l.from == to && l.to == from)),
            "a link between {from} and {to} exists already"
        );
        self.links.push(LinkSpec {
            from: from.to_string(),
            to: to.to_string(),
            cost,
            relayed,
        });
        self
    }

    /// A `tcp_listener` for `address` on `router`, on a fresh port
    /// ([`NetworkSpec::client_port`], [`Network::client_port`]).
    pub fn tcp_listener(mut self, router: &str, address: &str) -> NetworkSpec {
        let port = free_port();
        let i = self.index(router);
        self.routers[i] = self.routers[i].clone().tcp_listener(address, port);
        self.clients.push(ClientPort {
            router: router.to_string(),
            address: address.to_string(),
            port,
        });
        self
    }

    /// A `tcp_connector` for `address` on `router` to 127.0.0.1:`port`.
    pub fn tcp_connector(self, router: &str, address: &str, port: u16) -> NetworkSpec {
        self.configure(router, |c| c.tcp_connector(address, port))
    }

    /// An AMQP client listener with the router's defaults (no TLS, SASL
    /// ANONYMOUS or none) on `router`, on a fresh port, named
    /// [`DEFAULT_AMQP`] ([`Network::amqp_port`]).
    pub fn amqp(self, router: &str) -> NetworkSpec {
        self.amqp_with(router, DEFAULT_AMQP, |l| l)
    }

    /// [`NetworkSpec::amqp`] on every router.
    pub fn amqp_everywhere(self) -> NetworkSpec {
        let names: Vec<String> = self.routers.iter().map(|r| r.id.clone()).collect();
        names.iter().fold(self, |spec, n| spec.amqp(n))
    }

    /// An AMQP client listener on `router` on a fresh port, called `name`
    /// ([`Network::amqp_port_named`]), with settings from `f` (e.g.
    /// `|l| l.tls("site").require_client_cert(true)`; the TLS profile
    /// every router has is `site`).
    pub fn amqp_with(
        mut self,
        router: &str,
        name: &str,
        f: impl FnOnce(ClientListener) -> ClientListener,
    ) -> NetworkSpec {
        assert!(
            !self
                .amqp
                .iter()
                .any(|a| a.router == router && a.name == name),
            "{router} has an AMQP listener called {name} already"
        );
        let port = free_port();
        let listener = f(ClientListener::new(port));
        assert_eq!(listener.port, port, "keep the port the network chose");
        let i = self.index(router);
        self.routers[i] = self.routers[i].clone().client_listener(listener);
        self.amqp.push(AmqpPort {
            router: router.to_string(),
            name: name.to_string(),
            port,
        });
        self
    }

    /// The port of `router`'s AMQP listener called `name`.
    pub fn amqp_port_named(&self, router: &str, name: &str) -> u16 {
        amqp_port(&self.amqp, router, name)
    }

    /// `[http] listen` on `router`, on a fresh port ([`Network::http_port`]).
    pub fn http(mut self, router: &str) -> NetworkSpec {
        assert!(
            !self.http.iter().any(|(r, _)| r == router),
            "{router} has an HTTP endpoint already"
        );
        let port = free_port();
        let i = self.index(router);
        self.routers[i] = self.routers[i].clone().http(port);
        self.http.push((router.to_string(), port));
        self
    }

    /// An `[[address]]` table on every router.
    pub fn address(self, prefix: &str, distribution: Distribution) -> NetworkSpec {
        self.all(|c| c.address(prefix, distribution))
    }

    /// Hello and dead intervals (ms) on every router.
    pub fn timers(self, hello_ms: u64, dead_ms: u64) -> NetworkSpec {
        self.all(|c| c.timers(hello_ms, dead_ms))
    }

    /// `advertisement_interval_ms` on every router.
    pub fn advertisement_interval(self, ms: u64) -> NetworkSpec {
        self.all(|c| c.advertisement_interval(ms))
    }

    /// Applies `f` to every router's config.
    pub fn all(mut self, f: impl Fn(RouterConfig) -> RouterConfig) -> NetworkSpec {
        self.routers = self.routers.into_iter().map(f).collect();
        self
    }

    /// Applies `f` to `router`'s config.
    pub fn configure(
        mut self,
        router: &str,
        f: impl FnOnce(RouterConfig) -> RouterConfig,
    ) -> NetworkSpec {
        let i = self.index(router);
        self.routers[i] = f(self.routers[i].clone());
        self
    }

    /// Makes [`Network::start`] wait until `router`'s tcp_listener for
    /// `address` accepts connections (the address is reachable from it).
    pub fn wait_client(mut self, router: &str, address: &str) -> NetworkSpec {
        let port = self.client_port(router, address);
        self.wait_clients.push(port);
        self
    }

    /// How long [`Network::start`] waits for the links and for each client
    /// port.
    pub fn ready_timeout(mut self, timeout: Duration) -> NetworkSpec {
        self.ready_timeout = timeout;
        self
    }

    /// The client port of `router`'s tcp_listener for `address`.
    pub fn client_port(&self, router: &str, address: &str) -> u16 {
        client_port(&self.clients, router, address)
    }

    fn index(&self, router: &str) -> usize {
        self.routers
            .iter()
            .position(|r| r.id == router)
            .unwrap_or_else(|| panic!("no router named {router} in this network"))
    }
}

/// A running link: where its connector dials, and its relay if any.
pub struct Link {
    /// The router with the connector.
    pub from: String,
    /// The router with the listener.
    pub to: String,
    /// The listener's port on `to`.
    pub listener_port: u16,
    /// The port `from`'s connector dials: the relay's, or the listener's.
    pub connect_port: u16,
    relay: Option<Relay>,
}

impl Link {
    /// The relay between the two routers, if the link has one.
    pub fn relay(&self) -> Option<&Relay> {
        self.relay.as_ref()
    }
}

/// Running routers, relays and client ports (see the module docs). Dropping
/// it kills every router (by PID) and stops every relay.
pub struct Network {
    // Routers before relays: they are dropped (killed) first, so a relay
    // going away is never mistaken for a link failure in a log tail.
    routers: Vec<RouterProc>,
    configs: Vec<RouterConfig>,
    links: Vec<Link>,
    clients: Vec<ClientPort>,
    amqp: Vec<AmqpPort>,
    http: Vec<(String, u16)>,
}

impl Network {
    /// Starts the relays, then every router in the order named; waits for
    /// every link (both ends) and every [`NetworkSpec::wait_client`] port.
    /// Panics with every router's log tail on timeout or if a router exits.
    pub fn start(env: &TestEnv, spec: NetworkSpec) -> Network {
        let mut configs = spec.routers;
        let mut links = Vec::new();
        for l in &spec.links {
            let to = configs
                .iter()
                .position(|c| c.id == l.to)
                .expect("checked in add_link");
            let listener_port = spec.listener_ports[to];
            let relay = l.relayed.then(|| Relay::start(listener_port));
            let connect_port = relay.as_ref().map_or(listener_port, Relay::port);
            let from = configs
                .iter_mut()
                .find(|c| c.id == l.from)
                .expect("checked in add_link");
            *from = from
                .clone()
                .connector_with_cost(connect_port, PROFILE, l.cost);
            links.push(Link {
                from: l.from.clone(),
                to: l.to.clone(),
                listener_port,
                connect_port,
                relay,
            });
        }
        let routers = configs.iter().map(|c| env.start_router(c)).collect();
        let net = Network {
            routers,
            configs,
            links,
            clients: spec.clients,
            amqp: spec.amqp,
            http: spec.http,
        };
        let started = Instant::now();
        net.check(net.wait_links_up(0, spec.ready_timeout));
        let amqp_ports = net.amqp.iter().map(|a| a.port);
        let http_ports = net.http.iter().map(|(_, p)| *p);
        let ports = spec.wait_clients.iter().copied().chain(amqp_ports);
        for port in ports.chain(http_ports) {
            let left = spec
                .ready_timeout
                .saturating_sub(started.elapsed())
                .max(Duration::from_secs(1));
            if let Err(e) = wait_connectable(port, left, &net.routers()) {
                panic!("a client port after every link came up: {e}");
            }
        }
        net
    }

    /// Waits until both ends of every link logged `link up` naming the
    /// other at line `since` or later of their logs (one `since` for every
    /// router, so in practice 0; [`Network::wait_link_up`] takes one per
    /// end).
    pub fn wait_links_up(&self, since: usize, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        for l in &self.links {
            let left = timeout.saturating_sub(start.elapsed());
            self.wait_link_up(&l.from, &l.to, since, since, left)?;
        }
        Ok(())
    }

    /// Waits until `a` logged `link up` naming `b` at line `since_a` or
    /// later, and `b` naming `a` at line `since_b` or later.
    pub fn wait_link_up(
        &self,
        a: &str,
        b: &str,
        since_a: usize,
        since_b: usize,
        timeout: Duration,
    ) -> Result<(), String> {
        let start = Instant::now();
        self.router(a).wait_link_up(b, since_a, timeout)?;
        let left = timeout.saturating_sub(start.elapsed());
        self.router(b).wait_link_up(a, since_b, left)?;
        Ok(())
    }

    /// The running router `name`.
    pub fn router(&self, name: &str) -> &RouterProc {
        &self.routers[self.index(name)]
    }

    /// The config `name` runs with (after any [`Network::reconfigure`]).
    pub fn config(&self, name: &str) -> &RouterConfig {
        &self.configs[self.index(name)]
    }

    /// Every router, in the order named.
    pub fn routers(&self) -> Vec<&RouterProc> {
        self.routers.iter().collect()
    }

    /// The link between `a` and `b` (either direction).
    pub fn link(&self, a: &str, b: &str) -> &Link {
        self.links
            .iter()
            .find(|l| (l.from == a && l.to == b) || (l.from == b && l.to == a))
            .unwrap_or_else(|| panic!("no link between {a} and {b}"))
    }

    /// The relay on the link between `a` and `b`. Panics if that link has
    /// none.
    pub fn relay(&self, a: &str, b: &str) -> &Relay {
        self.link(a, b)
            .relay()
            .unwrap_or_else(|| panic!("the link between {a} and {b} has no relay"))
    }

    /// The client port of `router`'s tcp_listener for `address`.
    pub fn client_port(&self, router: &str, address: &str) -> u16 {
        client_port(&self.clients, router, address)
    }

    /// The port of `router`'s AMQP listener added by [`NetworkSpec::amqp`].
    pub fn amqp_port(&self, router: &str) -> u16 {
        amqp_port(&self.amqp, router, DEFAULT_AMQP)
    }

    /// The port of `router`'s AMQP listener called `name`
    /// ([`NetworkSpec::amqp_with`]).
    pub fn amqp_port_named(&self, router: &str, name: &str) -> u16 {
        amqp_port(&self.amqp, router, name)
    }

    /// The port of `router`'s HTTP endpoint ([`NetworkSpec::http`]).
    pub fn http_port(&self, router: &str) -> u16 {
        self.http
            .iter()
            .find(|(r, _)| r == router)
            .map(|(_, p)| *p)
            .unwrap_or_else(|| panic!("{router} has no HTTP endpoint"))
    }

    /// [`wait_connectable`] for `router`'s client port for `address`.
    pub fn wait_client(
        &self,
        router: &str,
        address: &str,
        timeout: Duration,
    ) -> Result<Duration, String> {
        wait_connectable(self.client_port(router, address), timeout, &self.routers())
    }

    /// The current line count of `router`'s log (for `since` arguments).
    pub fn mark(&self, router: &str) -> usize {
        self.router(router).mark()
    }

    /// Waits until `at` logs a route to `to` (through `via`, if given) at
    /// line `since` or later of its log.
    pub fn wait_route(
        &self,
        at: &str,
        to: &str,
        via: Option<&str>,
        since: usize,
        timeout: Duration,
    ) -> Result<RouteLine, String> {
        self.router(at).wait_route(to, via, since, timeout)
    }

    /// Rewrites `router`'s config with `f` and sends it SIGHUP. Returns the
    /// log mark taken just before (for waits on what the reload causes).
    /// Panics if the file cannot be written or the process is gone.
    pub fn reconfigure(
        &mut self,
        router: &str,
        f: impl FnOnce(RouterConfig) -> RouterConfig,
    ) -> usize {
        let i = self.index(router);
        let cfg = f(self.configs[i].clone());
        let mark = self.routers[i].mark();
        if let Err(e) = self.routers[i].reload(&cfg) {
            panic!("reloading {router}'s config: {e}\n{}", self.describe());
        }
        self.configs[i] = cfg;
        mark
    }

    /// Sets the cost of the connector on the link between `a` and `b` (on
    /// whichever of the two has it) and sends that router SIGHUP. The link
    /// cost is the larger of the two ends' settings. Returns the connector
    /// router's log mark taken just before.
    pub fn set_link_cost(&mut self, a: &str, b: &str, cost: u32) -> usize {
        let (from, port) = {
            let l = self.link(a, b);
            (l.from.clone(), l.connect_port)
        };
        self.reconfigure(&from, |mut c| {
            assert!(
                c.set_connector_cost(port, cost),
                "{from} has no connector to port {port}"
            );
            c
        })
    }

    /// Panics with `e` and every router's log tail if `r` is an `Err`.
    pub fn check<T>(&self, r: Result<T, String>) -> T {
        RouterProc::check(r, &self.routers())
    }

    /// Every router's log tail, for assertion messages.
    pub fn describe(&self) -> String {
        describe(&self.routers())
    }

    fn index(&self, router: &str) -> usize {
        self.configs
            .iter()
            .position(|c| c.id == router)
            .unwrap_or_else(|| panic!("no router named {router} in this network"))
    }
}

fn client_port(clients: &[ClientPort], router: &str, address: &str) -> u16 {
    clients
        .iter()
        .find(|c| c.router == router && c.address == address)
        .map(|c| c.port)
        .unwrap_or_else(|| panic!("{router} has no tcp_listener for {address}"))
}

fn amqp_port(amqp: &[AmqpPort], router: &str, name: &str) -> u16 {
    amqp.iter()
        .find(|a| a.router == router && a.name == name)
        .map(|a| a.port)
        .unwrap_or_else(|| panic!("{router} has no AMQP listener called {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_wires_connectors_listeners_and_clients() {
        let env = TestEnv::new("network-spec");
        let spec = NetworkSpec::new(&env, &["east", "hub", "west"])
            .link("east", "hub", 1)
            .link_via_relay("east", "west", 3)
            .tcp_listener("east", "backend")
            .tcp_connector("west", "backend", 9)
            .address("backend", Distribution::Closest)
            .timers(100, 300);
        let client = spec.client_port("east", "backend");
        let hub_port = spec.listener_ports[1];
        let east = &spec.routers[0];
        assert_eq!(east.tcp_listeners[0].port, client);
        assert_eq!(east.addresses.len(), 1);
        assert_eq!(spec.routers[2].tcp_connectors[0].port, 9);
        assert!(spec.routers.iter().all(|r| r.listeners.len() == 1));
        assert_eq!(spec.links.len(), 2);
        assert!(spec.links[1].relayed && spec.links[1].cost == 3);
        // Connectors are added at start (a relay's port is known only then).
        assert!(east.connectors.is_empty());
        assert_ne!(hub_port, client);
    }

    #[test]
    fn spec_adds_amqp_listeners() {
        let env = TestEnv::new("network-spec-amqp");
        let spec = NetworkSpec::new(&env, &["east", "west"])
            .amqp_everywhere()
            .amqp_with("west", "tls", |l| l.tls("site").require_client_cert(true));
        let east = &spec.routers[0];
        let west = &spec.routers[1];
        assert_eq!(east.client_listeners.len(), 1);
        assert_eq!(west.client_listeners.len(), 2);
        assert_eq!(
            west.client_listeners[0].port,
            spec.amqp_port_named("west", DEFAULT_AMQP)
        );
        let tls = &west.client_listeners[1];
        assert_eq!(tls.port, spec.amqp_port_named("west", "tls"));
        assert_eq!(tls.tls.as_deref(), Some("site"));
        assert_eq!(tls.require_client_cert, Some(true));
        assert!(east.client_listeners[0].tls.is_none());
    }

    #[test]
    fn spec_adds_http_endpoints() {
        let env = TestEnv::new("network-spec-http");
        let spec = NetworkSpec::new(&env, &["east", "west"]).http("west");
        assert_eq!(spec.routers[0].http_port, None);
        let port = spec.routers[1].http_port.expect("west has [http]");
        assert_eq!(spec.http, vec![("west".to_string(), port)]);
        assert!(spec.routers[1]
            .to_toml()
            .contains(&format!("[http]\nlisten = \"127.0.0.1:{port}\"")));
    }
}
