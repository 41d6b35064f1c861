//! Builder for router configuration files (the TOML schema of the contract).
//!
//! [`RouterConfig`] holds one router's settings and renders them with
//! [`RouterConfig::to_toml`]; [`crate::RouterProc::start`] writes the result
//! next to the certificates (TLS file names in profiles are relative to the
//! config file's folder). Everything listens on and connects to 127.0.0.1.
//!
//! ```no_run
//! # use tether_tests::*;
//! # let env = TestEnv::new("doc");
//! let cfg = RouterConfig::new("east")
//!     .listener(55671, "site")
//!     .tcp_listener("backend", 9000)
//!     .tls("site", env.tls_for("east"));
//! ```
//!
//! AMQP client listeners (`[[listener]]` with `role = "normal"`) are built
//! with [`ClientListener`] and [`RouterConfig::client_listener`]; PLAIN
//! credentials go in a users file written with [`users_toml`].
//!
//! `[http] listen = "127.0.0.1:PORT"` (the `/metrics`, `/healthz` and
//! `/readyz` endpoint) is set with [`RouterConfig::http`].
//!
//! Keys the router accepts only once link-state routing runs in it
//! (`[router] advertisement_interval_ms`, `[[address]]` tables) are rendered
//! only when set, so configs without them stay valid for older binaries.
//! [`crate::RouterProc::reload`] rewrites a running router's file and sends
//! SIGHUP.

use std::fmt::Write as _;

/// A TLS profile: CA file, certificate file, key file (relative paths).
#[derive(Clone, Debug)]
pub struct TlsProfile {
    /// CA bundle the peer's certificate must chain to.
    pub ca: String,
    /// This router's certificate.
    pub cert: String,
    /// This router's private key.
    pub key: String,
}

impl TlsProfile {
    /// A profile from three file names.
    pub fn new(ca: &str, cert: &str, key: &str) -> TlsProfile {
        TlsProfile {
            ca: ca.to_string(),
            cert: cert.to_string(),
            key: key.to_string(),
        }
    }
}

/// An inter-router `[[listener]]`.
#[derive(Clone, Debug)]
pub struct InterRouterListener {
    /// Port on 127.0.0.1.
    pub port: u16,
    /// TLS profile name (`None` renders no `tls` key: a config error).
    pub tls: Option<String>,
}

/// An inter-router `[[connector]]`.
#[derive(Clone, Debug)]
pub struct InterRouterConnector {
    /// Port on 127.0.0.1 of the peer's inter-router listener.
    pub port: u16,
    /// Link cost.
    pub cost: u32,
    /// TLS profile name (`None` renders no `tls` key: a config error).
    pub tls: Option<String>,
}

/// A `[[listener]]` with `role = "normal"`: AMQP 1.0 clients. Optional
/// keys are rendered only when set, so the router's defaults apply
/// otherwise (no TLS, `sasl_mechanisms = ["ANONYMOUS"]`,
/// `allow_no_sasl = true`).
#[derive(Clone, Debug)]
pub struct ClientListener {
    /// Port on 127.0.0.1.
    pub port: u16,
    /// `tls`: TLS profile name (its certificate; client certificates are
    /// checked against its CA).
    pub tls: Option<String>,
    /// `require_client_cert` (with `tls`).
    pub require_client_cert: Option<bool>,
    /// `sasl_mechanisms`, e.g. `["ANONYMOUS", "PLAIN"]`.
    pub sasl_mechanisms: Option<Vec<String>>,
    /// `allow_no_sasl`: clients may skip SASL.
    pub allow_no_sasl: Option<bool>,
    /// `users_file` (relative to the config's folder), needed for PLAIN.
    pub users_file: Option<String>,
}

impl ClientListener {
    /// A listener on `port` with every optional key left to the default.
    pub fn new(port: u16) -> ClientListener {
        ClientListener {
            port,
            tls: None,
            require_client_cert: None,
            sasl_mechanisms: None,
            allow_no_sasl: None,
            users_file: None,
        }
    }

    /// TLS with profile `profile`.
    pub fn tls(mut self, profile: &str) -> Self {
        self.tls = Some(profile.to_string());
        self
    }

    /// `require_client_cert = yes`.
    pub fn require_client_cert(mut self, yes: bool) -> Self {
        self.require_client_cert = Some(yes);
        self
    }

    /// `sasl_mechanisms = [...]`.
    pub fn sasl_mechanisms(mut self, mechs: &[&str]) -> Self {
        self.sasl_mechanisms = Some(mechs.iter().map(|m| m.to_string()).collect());
        self
    }

    /// `allow_no_sasl = yes`.
    pub fn allow_no_sasl(mut self, yes: bool) -> Self {
        self.allow_no_sasl = Some(yes);
        self
    }

    /// `users_file = file` (see [`users_toml`]).
    pub fn users_file(mut self, file: &str) -> Self {
        self.users_file = Some(file.to_string());
        self
    }

    fn render(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "\n[[listener]]\nrole = \"normal\"\nhost = \"127.0.0.1\"\nport = {}",
            self.port
        );
        if let Some(t) = &self.tls {
            let _ = writeln!(s, "tls = {}", toml_str(t));
        }
        if let Some(v) = self.require_client_cert {
            let _ = writeln!(s, "require_client_cert = {v}");
        }
        if let Some(m) = &self.sasl_mechanisms {
            let list: Vec<String> = m.iter().map(|m| toml_str(m)).collect();
            let _ = writeln!(s, "sasl_mechanisms = [{}]", list.join(", "));
        }
        if let Some(v) = self.allow_no_sasl {
            let _ = writeln!(s, "allow_no_sasl = {v}");
        }
        if let Some(f) = &self.users_file {
            let _ = writeln!(s, "users_file = {}", toml_str(f));
        }
    }
}

/// The contents of a `users_file`: `[users]` with one `name = "password"`
/// line per pair.
pub fn users_toml(users: &[(&str, &str)]) -> String {
    let mut s = String::from("[users]\n");
    for (name, password) in users {
        let _ = writeln!(s, "{} = {}", toml_key(name), toml_str(password));
    }
    s
}

/// A `[[tcp_listener]]` or `[[tcp_connector]]`.
#[derive(Clone, Debug)]
pub struct TcpEndpoint {
    /// The service address (a name, e.g. `backend`).
    pub address: String,
    /// Port on 127.0.0.1.
    pub port: u16,
}

/// The `distribution` of an `[[address]]` table: how the ingress router
/// picks among the sites that offer an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distribution {
    /// Every new flow goes to the cheapest reachable site.
    Closest,
    /// New flows are spread over all sites, weighted by path cost and the
    /// flows already open (the router's default for TCP).
    Balanced,
    /// Every site gets a copy (not meaningful for TCP flows).
    Multicast,
}

impl Distribution {
    /// The TOML value.
    pub fn as_str(self) -> &'static str {
        match self {
            Distribution::Closest => "closest",
            Distribution::Balanced => "balanced",
            Distribution::Multicast => "multicast",
        }
    }
}

/// An `[[address]]` table.
#[derive(Clone, Debug)]
pub struct AddressEntry {
    /// `prefix`: the service addresses this entry applies to.
    pub prefix: String,
    /// `distribution`.
    pub distribution: Distribution,
}

/// One router's configuration (see the module docs).
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// `[router] id`.
    pub id: String,
    /// `[router] hello_interval_ms`.
    pub hello_interval_ms: Option<u64>,
    /// `[router] dead_interval_ms`.
    pub dead_interval_ms: Option<u64>,
    /// `[router] advertisement_interval_ms` (rendered only when set).
    pub advertisement_interval_ms: Option<u64>,
    /// `[router] flow_window` in bytes.
    pub flow_window: Option<u64>,
    /// Inter-router listeners.
    pub listeners: Vec<InterRouterListener>,
    /// AMQP client listeners (`role = "normal"`).
    pub client_listeners: Vec<ClientListener>,
    /// Inter-router connectors.
    pub connectors: Vec<InterRouterConnector>,
    /// Client-facing TCP listeners.
    pub tcp_listeners: Vec<TcpEndpoint>,
    /// Service-facing TCP connectors.
    pub tcp_connectors: Vec<TcpEndpoint>,
    /// `[[address]]` tables, in order.
    pub addresses: Vec<AddressEntry>,
    /// `[tls.NAME]` profiles, in order.
    pub tls: Vec<(String, TlsProfile)>,
    /// `[http] listen = "127.0.0.1:PORT"` (rendered only when set).
    pub http_port: Option<u16>,
}

impl RouterConfig {
    /// A router with this id and nothing else.
    pub fn new(id: &str) -> RouterConfig {
        RouterConfig {
            id: id.to_string(),
            hello_interval_ms: None,
            dead_interval_ms: None,
            advertisement_interval_ms: None,
            flow_window: None,
            listeners: Vec::new(),
            client_listeners: Vec::new(),
            connectors: Vec::new(),
            tcp_listeners: Vec::new(),
            tcp_connectors: Vec::new(),
            addresses: Vec::new(),
            tls: Vec::new(),
            http_port: None,
        }
    }

    /// Adds an inter-router listener on `port` using TLS profile `tls`.
    pub fn listener(mut self, port: u16, tls: &str) -> Self {
        self.listeners.push(InterRouterListener {
            port,
            tls: Some(tls.to_string()),
        });
        self
    }

    /// Adds an AMQP client listener (`role = "normal"`).
    pub fn client_listener(mut self, listener: ClientListener) -> Self {
        self.client_listeners.push(listener);
        self
    }

    /// Adds an inter-router connector to `port` (cost 1) using profile `tls`.
    pub fn connector(mut self, port: u16, tls: &str) -> Self {
        self.connectors.push(InterRouterConnector {
            port,
            cost: 1,
            tls: Some(tls.to_string()),
        });
        self
    }

    /// Adds an inter-router connector to `port` with link cost `cost`.
    pub fn connector_with_cost(mut self, port: u16, tls: &str, cost: u32) -> Self {
        self.connectors.push(InterRouterConnector {
            port,
            cost,
            tls: Some(tls.to_string()),
        });
        self
    }

    /// Sets the cost of every connector to `port`; false if there is none.
    pub fn set_connector_cost(&mut self, port: u16, cost: u32) -> bool {
        let mut found = false;
        for c in self.connectors.iter_mut().filter(|c| c.port == port) {
            c.cost = cost;
            found = true;
        }
        found
    }

    /// Adds a `tcp_listener` for `address` on `port`.
    pub fn tcp_listener(mut self, address: &str, port: u16) -> Self {
        self.tcp_listeners.push(TcpEndpoint {
            address: address.to_string(),
            port,
        });
        self
    }

    /// Adds a `tcp_connector` for `address` to the service on `port`.
    pub fn tcp_connector(mut self, address: &str, port: u16) -> Self {
        self.tcp_connectors.push(TcpEndpoint {
            address: address.to_string(),
            port,
        });
        self
    }

    /// Adds the TLS profile `name`.
    pub fn tls(mut self, name: &str, profile: TlsProfile) -> Self {
        self.tls.push((name.to_string(), profile));
        self
    }

    /// Sets the hello and dead intervals (ms).
    pub fn timers(mut self, hello_ms: u64, dead_ms: u64) -> Self {
        self.hello_interval_ms = Some(hello_ms);
        self.dead_interval_ms = Some(dead_ms);
        self
    }

    /// Sets `[router] advertisement_interval_ms`.
    pub fn advertisement_interval(mut self, ms: u64) -> Self {
        self.advertisement_interval_ms = Some(ms);
        self
    }

    /// Adds an `[[address]]` table: `prefix` with `distribution`.
    pub fn address(mut self, prefix: &str, distribution: Distribution) -> Self {
        self.addresses.push(AddressEntry {
            prefix: prefix.to_string(),
            distribution,
        });
        self
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on 127.0.0.1:`port`
    /// (`[http] listen`).
    pub fn http(mut self, port: u16) -> Self {
        self.http_port = Some(port);
        self
    }

    /// Sets the per-flow window (bytes).
    pub fn flow_window(mut self, bytes: u64) -> Self {
        self.flow_window = Some(bytes);
        self
    }

    /// Renders the TOML file.
    pub fn to_toml(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "[router]\nid = {}", toml_str(&self.id));
        if let Some(v) = self.hello_interval_ms {
            let _ = writeln!(s, "hello_interval_ms = {v}");
        }
        if let Some(v) = self.dead_interval_ms {
            let _ = writeln!(s, "dead_interval_ms = {v}");
        }
        if let Some(v) = self.advertisement_interval_ms {
            let _ = writeln!(s, "advertisement_interval_ms = {v}");
        }
        if let Some(v) = self.flow_window {
            let _ = writeln!(s, "flow_window = {v}");
        }
        for l in &self.listeners {
            let _ = writeln!(
                s,
                "\n[[listener]]\nrole = \"inter-router\"\nhost = \"127.0.0.1\"\nport = {}",
                l.port
            );
            if let Some(t) = &l.tls {
                let _ = writeln!(s, "tls = {}", toml_str(t));
            }
        }
        for l in &self.client_listeners {
            l.render(&mut s);
        }
        for c in &self.connectors {
            let _ = writeln!(
                s,
                "\n[[connector]]\nrole = \"inter-router\"\nhost = \"127.0.0.1\"\nport = {}\ncost = {}",
                c.port, c.cost
            );
            if let Some(t) = &c.tls {
                let _ = writeln!(s, "tls = {}", toml_str(t));
            }
        }
        for l in &self.tcp_listeners {
            let _ = writeln!(
                s,
                "\n[[tcp_listener]]\naddress = {}\nhost = \"127.0.0.1\"\nport = {}",
                toml_str(&l.address),
                l.port
            );
        }
        for c in &self.tcp_connectors {
            let _ = writeln!(
                s,
                "\n[[tcp_connector]]\naddress = {}\nhost = \"127.0.0.1\"\nport = {}",
                toml_str(&c.address),
                c.port
            );
        }
        for a in &self.addresses {
            let _ = writeln!(
                s,
                "\n[[address]]\nprefix = {}\ndistribution = {}",
                toml_str(&a.prefix),
                toml_str(a.distribution.as_str())
            );
        }
        if let Some(port) = self.http_port {
            let _ = writeln!(s, "\n[http]\nlisten = \"127.0.0.1:{port}\"");
        }
        for (name, p) in &self.tls {
            let _ = writeln!(
                s,
                "\n[tls.{}]\nca = {}\ncert = {}\nkey = {}",
                toml_key(name),
                toml_str(&p.ca),
                toml_str(&p.cert),
                toml_str(&p.key)
            );
        }
        s
    }
}

/// A TOML basic string literal.
pub fn toml_str(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML key: bare if possible, else quoted.
pub fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        k.to_string()
    } else {
        toml_str(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_contract_schema() {
        let t = RouterConfig::new("east")
            .timers(200, 1000)
            .listener(1, "site")
            .connector(2, "site")
            .tcp_listener("backend", 3)
            .tcp_connector("backend", 4)
            .tls(
                "site",
                TlsProfile::new("ca.pem", "east.pem", "east-key.pem"),
            )
            .to_toml();
        assert!(t.starts_with("[router]\nid = \"east\"\nhello_interval_ms = 200\n"));
        assert!(t.contains("[[listener]]\nrole = \"inter-router\"\nhost = \"127.0.0.1\"\nport = 1\ntls = \"site\"\n"));
        assert!(t.contains("[[connector]]\nrole = \"inter-router\"\nhost = \"127.0.0.1\"\nport = 2\ncost = 1\ntls = \"site\"\n"));
        assert!(
            t.contains("[[tcp_listener]]\naddress = \"backend\"\nhost = \"127.0.0.1\"\nport = 3\n")
        );
        assert!(t.contains(
            "[[tcp_connector]]\naddress = \"backend\"\nhost = \"127.0.0.1\"\nport = 4\n"
        ));
        assert!(t.contains(
            "[tls.site]\nca = \"ca.pem\"\ncert = \"east.pem\"\nkey = \"east-key.pem\"\n"
        ));
        assert_eq!(toml_str("a\"b\\"), "\"a\\\"b\\\\\"");
        assert!(!t.contains("advertisement_interval_ms"));
        assert!(!t.contains("[[address]]"));
        assert!(!t.contains("[http]"));
    }

    #[test]
    fn renders_http_listen_when_set() {
        let t = RouterConfig::new("east")
            .http(9090)
            .tls(
                "site",
                TlsProfile::new("ca.pem", "east.pem", "east-key.pem"),
            )
            .to_toml();
        assert!(t.contains("\n[http]\nlisten = \"127.0.0.1:9090\"\n"));
        assert!(t.find("[http]") < t.find("[tls.site]"));
    }

    #[test]
    fn renders_routing_keys_when_set() {
        let mut cfg = RouterConfig::new("hub")
            .timers(100, 300)
            .advertisement_interval(4000)
            .connector_with_cost(2, "site", 5)
            .address("backend", Distribution::Closest)
            .address("db", Distribution::Balanced)
            .tls("site", TlsProfile::new("ca.pem", "hub.pem", "hub-key.pem"));
        assert!(cfg.set_connector_cost(2, 10));
        assert!(!cfg.set_connector_cost(3, 10));
        let t = cfg.to_toml();
        assert!(t.starts_with(
            "[router]\nid = \"hub\"\nhello_interval_ms = 100\ndead_interval_ms = 300\n\
             advertisement_interval_ms = 4000\n"
        ));
        assert!(t.contains("port = 2\ncost = 10\n"));
        assert!(t.contains("[[address]]\nprefix = \"backend\"\ndistribution = \"closest\"\n"));
        assert!(t.contains("[[address]]\nprefix = \"db\"\ndistribution = \"balanced\"\n"));
        // Tables after [tls.*] would be fine TOML, but keep [[address]] first.
        assert!(t.find("[[address]]") < t.find("[tls.site]"));
    }

    #[test]
    fn renders_client_listeners() {
        let t = RouterConfig::new("east")
            .listener(1, "site")
            .client_listener(ClientListener::new(5))
            .client_listener(
                ClientListener::new(6)
                    .tls("site")
                    .require_client_cert(true)
                    .sasl_mechanisms(&["ANONYMOUS", "PLAIN"])
                    .allow_no_sasl(false)
                    .users_file("users.toml"),
            )
            .to_toml();
        assert!(t.contains("[[listener]]\nrole = \"normal\"\nhost = \"127.0.0.1\"\nport = 5\n\n"));
        assert!(t.contains(
            "[[listener]]\nrole = \"normal\"\nhost = \"127.0.0.1\"\nport = 6\ntls = \"site\"\n\
             require_client_cert = true\nsasl_mechanisms = [\"ANONYMOUS\", \"PLAIN\"]\n\
             allow_no_sasl = false\nusers_file = \"users.toml\"\n"
        ));
        assert_eq!(
            users_toml(&[("alice", "secret"), ("bob smith", "p\"w")]),
            "[users]\nalice = \"secret\"\n\"bob smith\" = \"p\\\"w\"\n"
        );
    }
}
