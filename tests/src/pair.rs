//! The usual two-router topology, ready to carry traffic.
//!
//! ```text
//!  client ──► east [tcp_listener ADDR :client_port]
//!               │  inter-router listener :link_port, mutual TLS
//!               ▼
//!             west [connector → :link_port] [tcp_connector ADDR → service]
//! ```
//!
//! [`PairSpec::new`] allocates the ports and builds both configs (both
//! routers use profile `site` with leaves from the test CA); a test may edit
//! the configs before [`Pair::start`], which starts east then west and waits
//! (bounded) until each router logs `link up` naming the other and every
//! client port accepts connections. Failures panic with both logs' tails.

use std::time::Duration;

use crate::config::RouterConfig;
use crate::net::free_port;
use crate::router::{describe, wait_connectable, RouterProc};
use crate::TestEnv;

/// How long [`Pair::start`] waits for the link and for each listener.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Configs and ports of a pair, before starting it.
pub struct PairSpec {
    /// East: inter-router listener and the tcp_listeners.
    pub east: RouterConfig,
    /// West: inter-router connector and the tcp_connectors.
    pub west: RouterConfig,
    /// East's inter-router listener port.
    pub link_port: u16,
    /// One client port per route, in the order given.
    pub client_ports: Vec<u16>,
}

impl PairSpec {
    /// `routes`: (address, service port) pairs; each gets a tcp_listener on
    /// east (on a fresh port) and a tcp_connector on west.
    pub fn new(env: &TestEnv, routes: &[(&str, u16)]) -> PairSpec {
        let link_port = free_port();
        let mut east = RouterConfig::new("east")
            .listener(link_port, "site")
            .tls("site", env.tls_for("east"));
        let mut west = RouterConfig::new("west")
            .connector(link_port, "site")
            .tls("site", env.tls_for("west"));
        let mut client_ports = Vec::new();
        for (address, service_port) in routes {
            let p = free_port();
            east = east.tcp_listener(address, p);
            west = west.tcp_connector(address, *service_port);
            client_ports.push(p);
        }
        PairSpec {
            east,
            west,
            link_port,
            client_ports,
        }
    }

    /// Applies `f` to both configs (e.g. timers, flow window).
    pub fn both(mut self, f: impl Fn(RouterConfig) -> RouterConfig) -> PairSpec {
        self.east = f(self.east);
        self.west = f(self.west);
        self
    }
}

/// Two running routers linked over TLS (see the module docs).
pub struct Pair {
    /// The router with the tcp_listeners.
    pub east: RouterProc,
    /// The router with the tcp_connectors.
    pub west: RouterProc,
    /// East's inter-router listener port.
    pub link_port: u16,
    /// Client ports (east's tcp_listeners), in route order.
    pub client_ports: Vec<u16>,
}

impl Pair {
    /// Starts east then west, waits for `link up` on both sides and for
    /// every client port to accept connections. Panics (with logs) on
    /// timeout or if a router exits.
    pub fn start(env: &TestEnv, spec: PairSpec) -> Pair {
        let east = env.start_router(&spec.east);
        let west = env.start_router(&spec.west);
        let pair = Pair {
            east,
            west,
            link_port: spec.link_port,
            client_ports: spec.client_ports,
        };
        pair.wait_ready(READY_TIMEOUT);
        pair
    }

    /// Waits for the link (both sides) and the client ports; panics with
    /// both logs on failure.
    pub fn wait_ready(&self, timeout: Duration) {
        let routers = [&self.east, &self.west];
        RouterProc::check(self.east.wait_link_up("west", 0, timeout), &routers);
        RouterProc::check(self.west.wait_link_up("east", 0, timeout), &routers);
        for &p in &self.client_ports {
            if let Err(e) = wait_connectable(p, timeout, &routers) {
                panic!("east's tcp_listener after the link came up: {e}");
            }
        }
    }

    /// The first client port.
    pub fn client_port(&self) -> u16 {
        self.client_ports[0]
    }

    /// Both routers, for [`describe`] and [`RouterProc::check`].
    pub fn routers(&self) -> [&RouterProc; 2] {
        [&self.east, &self.west]
    }

    /// Log tails of both routers.
    pub fn describe(&self) -> String {
        describe(&self.routers())
    }
}
