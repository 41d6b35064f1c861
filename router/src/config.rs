//! The router's configuration file: strict TOML, validated up front.
//!
//! ```toml
//! [router]
//! id = "east"                  # required: [A-Za-z0-9._-]{1,64}, unique in the network
//! hello_interval_ms = 1000     # optional, >= 100
//! dead_interval_ms = 3000      # optional, >= 300 and > hello_interval_ms
//! advertisement_interval_ms = 4000  # optional, >= hello_interval_ms
//! flow_window = 1048576        # optional, 65536 ..= 64 MiB
//!
//! [[address]]                  # optional: how flows to addresses are spread
//! prefix = "backend"           # matches "backend" and "backend..." (longest prefix wins)
//! distribution = "balanced"    # "balanced" (default), "closest" or "multicast"
//!
//! [[listener]]                 # accepts inter-router links
//! role = "inter-router"
//! host = "127.0.0.1"
//! port = 55671
//! tls = "site"                 # required: links are always mutual TLS
//!
//! [[listener]]                 # accepts AMQP 1.0 clients
//! role = "normal"
//! host = "127.0.0.1"
//! port = 5672                  # optional, default 5672
//! tls = "site"                 # optional: TLS with this profile
//! require_client_cert = false  # optional, with tls: clients must present a cert from the CA
//! sasl_mechanisms = ["ANONYMOUS", "PLAIN"]  # optional, default ["ANONYMOUS"]
//! allow_no_sasl = true         # optional: clients may skip SASL (default true)
//! users_file = "users.toml"    # needed for PLAIN: [users] alice = "secret"
//!
//! [[connector]]                # dials another router's listener
//! role = "inter-router"
//! host = "127.0.0.1"
//! port = 55672
//! cost = 1                     # optional, 1 ..= 1000000
//! tls = "site"
//! verify_hostname = true       # optional
//!
//! [[tcp_listener]]             # service clients connect here
//! address = "backend"
//! host = "127.0.0.1"           # optional, default 127.0.0.1
//! port = 9000
//!
//! [[tcp_connector]]            # where the service really runs
//! address = "backend"
//! host = "127.0.0.1"
//! port = 8080
//!
//! [tls.site]                   # PEM files, relative to the config file's folder
//! ca = "ca.pem"
//! cert = "east.pem"
//! key = "east-key.pem"
//! ```
//!
//! [`load`] / [`parse`] reject anything unexpected: unknown keys, wrong types,
//! out-of-range values, duplicate names, two listeners on one port, references
//! to undefined TLS profiles, and unusable TLS files (unreadable, not PEM, key
//! not matching the certificate, expired certificate). Every [`ConfigError`]
//! points at the offending key or value as `FILE:LINE:COL: message`, and the
//! message names the key, e.g.
//! `east.toml:14:7: connector[0].tls: no TLS profile named "stie" (defined: site)`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::tls::{self, TlsFile, TlsMaterial};

/// Default `router.hello_interval_ms`.
pub const DEFAULT_HELLO_INTERVAL_MS: u64 = 1000;
/// Smallest accepted `router.hello_interval_ms`.
pub const MIN_HELLO_INTERVAL_MS: u64 = 100;
/// Default `router.dead_interval_ms`.
pub const DEFAULT_DEAD_INTERVAL_MS: u64 = 3000;
/// Smallest accepted `router.dead_interval_ms`.
pub const MIN_DEAD_INTERVAL_MS: u64 = 300;
/// Default `router.advertisement_interval_ms`.
pub const DEFAULT_ADVERTISEMENT_INTERVAL_MS: u64 = 4000;
/// Default `router.flow_window` (1 MiB).
pub const DEFAULT_FLOW_WINDOW: u32 = 1 << 20;
/// Smallest accepted `router.flow_window` (64 KiB).
pub const MIN_FLOW_WINDOW: u32 = 1 << 16;
/// Largest accepted `router.flow_window` (64 MiB).
pub const MAX_FLOW_WINDOW: u32 = 64 << 20;
/// Default `connector.cost`.
pub const DEFAULT_COST: u32 = 1;
/// Largest accepted `connector.cost`.
pub const MAX_COST: u32 = 1_000_000;
/// Default `tcp_listener.host`.
pub const DEFAULT_TCP_LISTENER_HOST: &str = "127.0.0.1";
/// A certificate expiring sooner than this produces a warning at load time.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

/// A fully validated router configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (as given to [`load`] / [`parse`]).
    pub path: PathBuf,
    pub router: RouterSection,
    pub listeners: Vec<ListenerConfig>,
    /// `[[listener]]` entries with `role = "normal"`: AMQP clients.
    pub client_listeners: Vec<ClientListenerConfig>,
    pub connectors: Vec<ConnectorConfig>,
    pub tcp_listeners: Vec<TcpListenerConfig>,
    pub tcp_connectors: Vec<TcpConnectorConfig>,
    /// `[[address]]` entries, in file order.
    pub addresses: Vec<AddressConfig>,
    /// TLS profiles by name (`[tls.<name>]`), files already loaded.
    pub tls: BTreeMap<String, TlsProfile>,
    /// `[http]`: Prometheus `/metrics`, `/healthz` and `/readyz`.
    pub http: Option<HttpConfig>,
}

/// `[http]`: where the metrics and health endpoints listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

/// How new flows (or messages) for an address are spread over the routers
/// that offer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Distribution {
    /// Weighted by path cost and by the flows already open at each
    /// destination: a near site takes most, a loaded one sheds to a farther.
    #[default]
    Balanced,
    /// The least-cost router offering the address; equal costs take turns.
    Closest,
    /// A copy to every consumer (messages only; not for TCP flows).
    Multicast,
}

impl Distribution {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Distribution::Balanced => "balanced",
            Distribution::Closest => "closest",
            Distribution::Multicast => "multicast",
        }
    }
}

/// `[[address]]`: the distribution for addresses starting with `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressConfig {
    pub prefix: String,
    pub distribution: Distribution,
}

/// The distribution for `address`: the longest matching `[[address]]`
/// prefix, else balanced.
pub fn distribution_for(addresses: &[AddressConfig], address: &str) -> Distribution {
    addresses
        .iter()
        .filter(|a| address.starts_with(&a.prefix))
        .max_by_key(|a| a.prefix.len())
        .map(|a| a.distribution)
        .unwrap_or_default()
}

impl Config {
    /// The TLS profile named by a listener's or connector's `tls` key.
    /// Always `Some` for names taken from this config (validated by [`parse`]).
    pub fn tls_profile(&self, name: &str) -> Option<&TlsProfile> {
        self.tls.get(name)
    }
}

/// `[router]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterSection {
    /// This router's id, unique in the network.
    pub id: String,
    /// HELLO/heartbeat interval on inter-router links.
    pub hello_interval: Duration,
    /// A peer silent for this long is declared down.
    pub dead_interval: Duration,
    /// How often each neighbour gets a router advertisement (versions and
    /// a database digest; repairs anything flooding missed).
    pub advertisement_interval: Duration,
    /// Bytes buffered per flow per direction.
    pub flow_window: u32,
    /// Open a TCP listener here for every address another router exposes
    /// (`[[tcp_connector]] expose = true`), on the same port if free.
    pub auto_listeners: bool,
    /// Router ids whose inter-router links are refused (revoked peers).
    pub revoked_peers: Vec<String>,
}

/// The role of an inter-router listener or connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// A link between two routers.
    InterRouter,
    /// AMQP 1.0 clients (listeners only).
    Normal,
}

impl Role {
    /// The config spelling, e.g. `"inter-router"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::InterRouter => "inter-router",
            Role::Normal => "normal",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[[listener]]`: accepts links from other routers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Explicit name, or `listener/<host>:<port>`.
    pub name: String,
    pub role: Role,
    pub host: String,
    pub port: u16,
    /// Name of the TLS profile (a key of [`Config::tls`]).
    pub tls: String,
}

/// `[[listener]]` with `role = "normal"`: accepts AMQP 1.0 clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientListenerConfig {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// TLS profile, if the listener speaks TLS.
    pub tls: Option<String>,
    /// With TLS: clients must present a certificate signed by the profile CA.
    pub require_client_cert: bool,
    pub sasl_anonymous: bool,
    /// Users for SASL PLAIN (user -> password), if PLAIN is offered.
    pub sasl_plain_users: Option<Arc<HashMap<String, String>>>,
    /// Clients may skip the SASL layer.
    pub allow_no_sasl: bool,
}

/// Default port of a client (`role = "normal"`) listener.
pub const DEFAULT_AMQP_PORT: u16 = 5672;

/// `[[connector]]`: dials another router's inter-router listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorConfig {
    /// Explicit name, or `connector/<host>:<port>`.
    pub name: String,
    pub role: Role,
    pub host: String,
    pub port: u16,
    /// Link cost for routing, 1 ..= 1000000.
    pub cost: u32,
    /// Name of the TLS profile (a key of [`Config::tls`]).
    pub tls: String,
    /// Check that the peer certificate names `host`.
    pub verify_hostname: bool,
}

/// `[[tcp_listener]]`: clients of a service connect here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpListenerConfig {
    /// Explicit name, or `tcp_listener/<address>/<port>`.
    pub name: String,
    pub address: String,
    pub host: String,
    pub port: u16,
}

/// `[[tcp_connector]]`: where the real service runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConnectorConfig {
    /// Explicit name, or `tcp_connector/<address>/<host>:<port>`.
    pub name: String,
    pub address: String,
    pub host: String,
    pub port: u16,
    /// Other routers with `auto_listeners` open a listener for it.
    pub expose: bool,
}

/// `[tls.<name>]`, with its files loaded.
#[derive(Debug, Clone)]
pub struct TlsProfile {
    pub name: String,
    /// Absolute paths (relative ones are resolved against the config file's folder).
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub material: Arc<TlsMaterial>,
}

/// A configuration problem, located in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// Names the key, e.g. `connector[0].tls: no TLS profile named "stie" (defined: site)`.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

impl std::error::Error for ConfigError {}

/// Reads, parses and validates a config file, including loading the TLS files
/// of every profile and checking that each referenced profile exists.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: 1,
        col: 1,
        message: format!("cannot read config: {}", io_reason(&e)),
    })?;
    parse(path, &text)
}

/// Parses and validates config text. `path` is used in messages and to resolve
/// relative TLS file paths (against its folder); it is not read.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let src = Source { path, text };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => return Err(src.toml_error(&e)),
    };
    build(&src, raw)
}

// ---------------------------------------------------------------------------
// Raw (serde) layer: mirrors the file, keeps spans for error messages.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    router: Spanned<RawRouter>,
    #[serde(default)]
    listener: Vec<Spanned<RawListener>>,
    #[serde(default)]
    connector: Vec<Spanned<RawConnector>>,
    #[serde(default)]
    tcp_listener: Vec<Spanned<RawTcpListener>>,
    #[serde(default)]
    tcp_connector: Vec<Spanned<RawTcpConnector>>,
    #[serde(default)]
    address: Vec<Spanned<RawAddress>>,
    #[serde(default)]
    tls: BTreeMap<String, Spanned<RawTls>>,
    http: Option<Spanned<RawHttp>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAddress {
    prefix: Spanned<String>,
    distribution: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouter {
    id: Spanned<String>,
    hello_interval_ms: Option<Spanned<i64>>,
    dead_interval_ms: Option<Spanned<i64>>,
    advertisement_interval_ms: Option<Spanned<i64>>,
    flow_window: Option<Spanned<i64>>,
    auto_listeners: Option<Spanned<bool>>,
    revoked_peers: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Option<Spanned<String>>,
    role: Spanned<String>,
    host: Spanned<String>,
    port: Option<Spanned<i64>>,
    tls: Option<Spanned<String>>,
    require_client_cert: Option<Spanned<bool>>,
    sasl_mechanisms: Option<Spanned<Vec<Spanned<String>>>>,
    allow_no_sasl: Option<Spanned<bool>>,
    users_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnector {
    name: Option<Spanned<String>>,
    role: Spanned<String>,
    host: Spanned<String>,
    port: Spanned<i64>,
    cost: Option<Spanned<i64>>,
    tls: Option<Spanned<String>>,
    verify_hostname: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTcpListener {
    name: Option<Spanned<String>>,
    address: Spanned<String>,
    host: Option<Spanned<String>>,
    port: Spanned<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTcpConnector {
    name: Option<Spanned<String>>,
    address: Spanned<String>,
    host: Spanned<String>,
    port: Spanned<i64>,
    expose: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: Spanned<String>,
    cert: Spanned<String>,
    key: Spanned<String>,
}

// ---------------------------------------------------------------------------
// Locating errors.

struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, col) = line_col(self.text, span.start);
        ConfigError {
            file: self.path.to_path_buf(),
            line,
            col,
            message: message.into(),
        }
    }

    /// Line number (1-based) of a byte offset, for "also used at line N" hints.
    fn line_of(&self, offset: usize) -> usize {
        line_col(self.text, offset).0
    }

    /// Converts a TOML syntax or serde error into a located, readable error.
    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span().unwrap_or(0..0);
        let message = match DeTable::parse(self.text) {
            Err(syntax) => {
                let span = syntax.span().unwrap_or(span);
                return self.err(span.clone(), self.syntax_message(&syntax, span));
            }
            Ok(doc) => {
                let located = if doc.span() == span || (span.is_empty() && span.start == 0) {
                    Some(Located {
                        path: Vec::new(),
                        on_key: false,
                    })
                } else {
                    let mut path = Vec::new();
                    let root = DeValue::Table(doc.into_inner());
                    locate(&root, &span, &mut path)
                };
                rewrite_serde_message(e.message(), located.as_ref())
            }
        };
        self.err(span, message)
    }

    fn syntax_message(&self, e: &toml::de::Error, span: Range<usize>) -> String {
        let msg = e.message().trim().replace('\n', "; ");
        if msg == "duplicate key" {
            if let Some(key) = self
                .text
                .get(span)
                .filter(|k| !k.is_empty() && k.len() <= 80)
            {
                return format!(
                    "duplicate key {key:?} (a key or table may be defined only once; \
                     use [[...]] for repeated sections)"
                );
            }
        }
        format!("TOML syntax error: {}", msg.replace('`', "\""))
    }
}

/// 1-based (line, column-in-characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

/// Where in the document a span is: the path to it, and whether it is a key
/// (rather than a value or table).
struct Located {
    path: Vec<Seg>,
    on_key: bool,
}

fn locate(value: &DeValue<'_>, span: &Range<usize>, path: &mut Vec<Seg>) -> Option<Located> {
    match value {
        DeValue::Table(table) => {
            for (k, v) in table.iter() {
                path.push(Seg::Key(k.get_ref().to_string()));
                if k.span() == *span {
                    return Some(Located {
                        path: path.clone(),
                        on_key: true,
                    });
                }
                // Deepest match first: an array of tables can share its first
                // entry's span.
                if let Some(found) = locate(v.get_ref(), span, path) {
                    return Some(found);
                }
                if v.span() == *span {
                    return Some(Located {
                        path: path.clone(),
                        on_key: false,
                    });
                }
                path.pop();
            }
        }
        DeValue::Array(array) => {
            for (i, v) in array.iter().enumerate() {
                path.push(Seg::Index(i));
                if let Some(found) = locate(v.get_ref(), span, path) {
                    return Some(found);
                }
                if v.span() == *span {
                    return Some(Located {
                        path: path.clone(),
                        on_key: false,
                    });
                }
                path.pop();
            }
        }
        _ => {}
    }
    None
}

/// A key as written in a dotted path: bare if possible, quoted otherwise.
fn key_segment(key: &str) -> String {
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        key.to_string()
    } else {
        format!("{key:?}")
    }
}

/// `listener[0].port`, `router.id`, `tls.site.ca`.
fn render_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&key_segment(k));
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// A table for "in ..." phrases: `[router]`, `[tls.site]`, `listener[0]`, `the top level`.
fn render_table(path: &[Seg]) -> String {
    match path.last() {
        None => "the top level".to_string(),
        Some(Seg::Index(_)) => render_path(path),
        Some(Seg::Key(_)) => format!("[{}]", render_path(path)),
    }
}

/// Words in backticks: "expected `a`, `b` or `c`" -> [a, b, c].
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

fn rewrite_serde_message(msg: &str, located: Option<&Located>) -> String {
    let path: &[Seg] = located.map(|l| l.path.as_slice()).unwrap_or(&[]);

    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let (field, after) = rest.split_once('`').unwrap_or((rest, ""));
        let parent = match located {
            Some(l) if l.on_key && !path.is_empty() => &path[..path.len() - 1],
            _ => path,
        };
        let expected = backticked(after);
        let place = if parent.is_empty() {
            "at the top level".to_string()
        } else {
            format!("in {}", render_table(parent))
        };
        let mut out = format!("unknown key {field:?} {place}");
        if !expected.is_empty() {
            out.push_str(&format!(", expected one of: {}", expected.join(", ")));
            if let Some(best) = closest(field, &expected) {
                out.push_str(&format!(" (did you mean {best:?}?)"));
            }
        }
        return out;
    }

    if let Some(rest) = msg.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        if path.is_empty() && field == "router" {
            return "missing required section [router] (at least: [router] id = \"...\")".into();
        }
        let hint = match field {
            "role" => " (role = \"inter-router\")",
            "ca" | "cert" | "key" => " (path to a PEM file)",
            "address" => " (the service address, e.g. address = \"backend\")",
            _ => "",
        };
        return format!(
            "{}: missing required key {field:?}{hint}",
            render_table(path)
        );
    }

    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("{}: ", render_path(path))
    };

    if let Some(rest) = msg.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.rsplit_once(", expected ") {
            let top_array = matches!(path, [Seg::Key(k)] if
                ["listener", "connector", "tcp_listener", "tcp_connector"].contains(&k.as_str()));
            let expected = match expected {
                "i64" | "u64" | "u32" | "u16" | "i32" => "an integer".to_string(),
                "a sequence" if top_array => {
                    let name = render_path(path);
                    format!("an array of tables (write each entry as a [[{name}]] section)")
                }
                "a sequence" => "an array".to_string(),
                e if e == "a map" || e.starts_with("struct ") => "a table".to_string(),
                e => e.replace('`', "\""),
            };
            let found = match found {
                "map" => "a table".to_string(),
                "sequence" => "an array".to_string(),
                f => f.replace('`', ""),
            };
            return format!("{prefix}expected {expected}, found {found}");
        }
    }

    format!("{prefix}{}", msg.replace('`', "\""))
}

/// The candidate closest to `word` by edit distance, if close enough to be a typo.
fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4) && *d < c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn io_reason(err: &std::io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

// ---------------------------------------------------------------------------
// Validation: raw -> Config.

fn build(src: &Source<'_>, raw: RawConfig) -> Result<Config, ConfigError> {
    let router = router_section(src, raw.router.get_ref())?;
    let profiles: Vec<&str> = raw.tls.keys().map(String::as_str).collect();

    // Everything that has a name, for the uniqueness check: (name, what, span, explicit).
    let mut names: Vec<(String, String, Range<usize>, bool)> = Vec::new();
    // Everything that listens: (what, host, port, port span).
    let mut binds: Vec<(String, String, u16, Range<usize>)> = Vec::new();

    let mut listeners = Vec::new();
    let mut client_listeners = Vec::new();
    for (i, item) in raw.listener.iter().enumerate() {
        let what = format!("listener[{i}]");
        let l = item.get_ref();
        let role = role(src, &what, &l.role)?;
        let host = host(src, &what, &l.host)?;
        if role == Role::Normal {
            let cl = client_listener(src, &what, item, host, &profiles)?;
            names.push((
                cl.name.clone(),
                what.clone(),
                name_span(item, &l.name),
                l.name.is_some(),
            ));
            let port_span = l.port.as_ref().map_or(item.span(), |p| p.span());
            binds.push((what, cl.host.clone(), cl.port, port_span));
            client_listeners.push(cl);
            continue;
        }
        for (key, present) in [
            (
                "require_client_cert",
                l.require_client_cert.as_ref().map(|v| v.span()),
            ),
            (
                "sasl_mechanisms",
                l.sasl_mechanisms.as_ref().map(|v| v.span()),
            ),
            ("allow_no_sasl", l.allow_no_sasl.as_ref().map(|v| v.span())),
            ("users_file", l.users_file.as_ref().map(|v| v.span())),
        ] {
            if let Some(span) = present {
                return Err(src.err(
                    span,
                    format!("{what}.{key}: only for client listeners (role = \"normal\"); inter-router links always use mutual TLS"),
                ));
            }
        }
        let Some(port_v) = &l.port else {
            return Err(src.err(
                item.span(),
                format!("{what}: missing required key \"port\""),
            ));
        };
        let port = port(src, &what, port_v)?;
        let tls = tls_ref(src, &what, item.span(), l.tls.as_ref(), &profiles)?;
        let name = name(src, &what, l.name.as_ref(), || {
            format!("listener/{host}:{port}")
        })?;
        names.push((
            name.clone(),
            what.clone(),
            name_span(item, &l.name),
            l.name.is_some(),
        ));
        binds.push((what, host.clone(), port, port_v.span()));
        listeners.push(ListenerConfig {
            name,
            role,
            host,
            port,
            tls,
        });
    }

    let mut connectors = Vec::new();
    for (i, item) in raw.connector.iter().enumerate() {
        let what = format!("connector[{i}]");
        let c = item.get_ref();
        let role = role(src, &what, &c.role)?;
        let host = host(src, &what, &c.host)?;
        dial_host(src, &what, &c.host)?;
        let port = port(src, &what, &c.port)?;
        let cost = match &c.cost {
            None => DEFAULT_COST,
            Some(v) => int_in(src, &format!("{what}.cost"), v, 1, i64::from(MAX_COST))? as u32,
        };
        let tls = tls_ref(src, &what, item.span(), c.tls.as_ref(), &profiles)?;
        let verify_hostname = c.verify_hostname.as_ref().is_none_or(|v| *v.get_ref());
        let name = name(src, &what, c.name.as_ref(), || {
            format!("connector/{host}:{port}")
        })?;
        names.push((
            name.clone(),
            what,
            name_span(item, &c.name),
            c.name.is_some(),
        ));
        connectors.push(ConnectorConfig {
            name,
            role,
            host,
            port,
            cost,
            tls,
            verify_hostname,
        });
    }

    let mut tcp_listeners = Vec::new();
    for (i, item) in raw.tcp_listener.iter().enumerate() {
        let what = format!("tcp_listener[{i}]");
        let t = item.get_ref();
        let address = address(src, &what, &t.address)?;
        let host = match &t.host {
            Some(h) => host(src, &what, h)?,
            None => DEFAULT_TCP_LISTENER_HOST.to_string(),
        };
        let port = port(src, &what, &t.port)?;
        let name = name(src, &what, t.name.as_ref(), || {
            format!("tcp_listener/{address}/{port}")
        })?;
        names.push((
            name.clone(),
            what.clone(),
            name_span(item, &t.name),
            t.name.is_some(),
        ));
        binds.push((what, host.clone(), port, t.port.span()));
        tcp_listeners.push(TcpListenerConfig {
            name,
            address,
            host,
            port,
        });
    }

    let mut tcp_connectors = Vec::new();
    for (i, item) in raw.tcp_connector.iter().enumerate() {
        let what = format!("tcp_connector[{i}]");
        let t = item.get_ref();
        let address = address(src, &what, &t.address)?;
        let host = host(src, &what, &t.host)?;
        dial_host(src, &what, &t.host)?;
        let port = port(src, &what, &t.port)?;
        let name = name(src, &what, t.name.as_ref(), || {
            format!("tcp_connector/{address}/{host}:{port}")
        })?;
        names.push((
            name.clone(),
            what,
            name_span(item, &t.name),
            t.name.is_some(),
        ));
        tcp_connectors.push(TcpConnectorConfig {
            name,
            address,
            host,
            port,
            expose: t.expose.as_ref().is_some_and(|v| *v.get_ref()),
        });
    }

    check_unique_names(src, &names)?;
    check_binds(src, &binds)?;

    let mut addresses: Vec<AddressConfig> = Vec::new();
    for (i, item) in raw.address.iter().enumerate() {
        let what = format!("address[{i}]");
        let a = item.get_ref();
        let prefix = a.prefix.get_ref();
        if prefix.is_empty() || prefix.len() > 255 || prefix.chars().any(char::is_control) {
            return Err(src.err(
                a.prefix.span(),
                format!(
                    "{what}.prefix: invalid prefix {prefix:?}: use 1 to 255 printable characters"
                ),
            ));
        }
        if let Some(j) = addresses.iter().position(|x| &x.prefix == prefix) {
            return Err(src.err(
                a.prefix.span(),
                format!("{what}.prefix: {prefix:?} is already configured by address[{j}]"),
            ));
        }
        let distribution = match &a.distribution {
            None => Distribution::default(),
            Some(d) => match d.get_ref().as_str() {
                "balanced" => Distribution::Balanced,
                "closest" => Distribution::Closest,
                "multicast" => Distribution::Multicast,
                other => {
                    return Err(src.err(
                        d.span(),
                        format!(
                            "{what}.distribution: unknown distribution {other:?}, expected \"balanced\", \"closest\" or \"multicast\""
                        ),
                    ))
                }
            },
        };
        addresses.push(AddressConfig {
            prefix: prefix.clone(),
            distribution,
        });
    }
    // A TCP flow has one destination: multicast cannot carry it.
    for (i, item) in raw.tcp_listener.iter().enumerate() {
        let t = item.get_ref();
        let address = t.address.get_ref();
        if distribution_for(&addresses, address) == Distribution::Multicast {
            let prefix = addresses
                .iter()
                .filter(|a| address.starts_with(&a.prefix))
                .max_by_key(|a| a.prefix.len())
                .map(|a| a.prefix.as_str())
                .unwrap_or_default();
            return Err(src.err(
                t.address.span(),
                format!(
                    "tcp_listener[{i}].address: {address:?} has distribution \"multicast\" \
                     (from [[address]] prefix {prefix:?}); a TCP flow needs \"balanced\" or \"closest\""
                ),
            ));
        }
    }

    let mut tls = BTreeMap::new();
    for (name, profile) in &raw.tls {
        tls.insert(name.clone(), tls_profile(src, name, profile)?);
    }

    let http = match &raw.http {
        None => None,
        Some(h) => {
            let listen = &h.get_ref().listen;
            let addr: SocketAddr = listen.get_ref().parse().map_err(|_| {
                src.err(
                    listen.span(),
                    format!(
                        "http.listen: {:?} is not an address and port, e.g. \"127.0.0.1:9090\"",
                        listen.get_ref()
                    ),
                )
            })?;
            Some(HttpConfig { listen: addr })
        }
    };

    Ok(Config {
        path: src.path.to_path_buf(),
        router,
        listeners,
        client_listeners,
        connectors,
        tcp_listeners,
        tcp_connectors,
        addresses,
        tls,
        http,
    })
}

fn router_section(src: &Source<'_>, r: &RawRouter) -> Result<RouterSection, ConfigError> {
    let id = r.id.get_ref();
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(src.err(
            r.id.span(),
            format!("router.id: invalid id {id:?}: use 1 to 64 letters, digits, '.', '_' or '-'"),
        ));
    }

    let hello = match &r.hello_interval_ms {
        None => DEFAULT_HELLO_INTERVAL_MS,
        Some(v) => int_in(
            src,
            "router.hello_interval_ms",
            v,
            MIN_HELLO_INTERVAL_MS as i64,
            i64::MAX,
        )? as u64,
    };
    let dead = match &r.dead_interval_ms {
        None => DEFAULT_DEAD_INTERVAL_MS,
        Some(v) => int_in(
            src,
            "router.dead_interval_ms",
            v,
            MIN_DEAD_INTERVAL_MS as i64,
            i64::MAX,
        )? as u64,
    };
    if dead <= hello {
        return Err(match (&r.dead_interval_ms, &r.hello_interval_ms) {
            (Some(d), _) => src.err(
                d.span(),
                format!(
                    "router.dead_interval_ms: must be greater than hello_interval_ms ({hello}), got {dead}"
                ),
            ),
            (None, Some(h)) => src.err(
                h.span(),
                format!(
                    "router.hello_interval_ms: must be less than dead_interval_ms \
                     ({dead} by default; set dead_interval_ms too), got {hello}"
                ),
            ),
            (None, None) => src.err(r.id.span(), "router: dead_interval_ms must exceed hello_interval_ms"),
        });
    }

    let advertisement = match &r.advertisement_interval_ms {
        None => DEFAULT_ADVERTISEMENT_INTERVAL_MS.max(hello),
        Some(v) => int_in(
            src,
            "router.advertisement_interval_ms",
            v,
            hello as i64,
            i64::MAX,
        )? as u64,
    };

    let flow_window = match &r.flow_window {
        None => DEFAULT_FLOW_WINDOW,
        Some(v) => int_in(
            src,
            "router.flow_window",
            v,
            i64::from(MIN_FLOW_WINDOW),
            i64::from(MAX_FLOW_WINDOW),
        )? as u32,
    };

    let revoked_peers = r
        .revoked_peers
        .as_ref()
        .map(|v| v.get_ref().iter().map(|p| p.get_ref().clone()).collect())
        .unwrap_or_default();
    Ok(RouterSection {
        id: id.clone(),
        hello_interval: Duration::from_millis(hello),
        dead_interval: Duration::from_millis(dead),
        advertisement_interval: Duration::from_millis(advertisement),
        flow_window,
        auto_listeners: r.auto_listeners.as_ref().is_some_and(|v| *v.get_ref()),
        revoked_peers,
    })
}

/// An integer within `min ..= max` (the caller's casts to narrower types are lossless).
fn int_in(
    src: &Source<'_>,
    key: &str,
    v: &Spanned<i64>,
    min: i64,
    max: i64,
) -> Result<i64, ConfigError> {
    let n = *v.get_ref();
    if n < min || n > max {
        let range = if max == i64::MAX {
            format!("must be at least {min}")
        } else {
            format!("must be between {min} and {max}")
        };
        return Err(src.err(v.span(), format!("{key}: {range}, got {n}")));
    }
    Ok(n)
}

fn port(src: &Source<'_>, what: &str, v: &Spanned<i64>) -> Result<u16, ConfigError> {
    let n = int_in(src, &format!("{what}.port"), v, 1, i64::from(u16::MAX))?;
    u16::try_from(n).map_err(|_| src.err(v.span(), format!("{what}.port: out of range")))
}

fn role(src: &Source<'_>, what: &str, v: &Spanned<String>) -> Result<Role, ConfigError> {
    match v.get_ref().as_str() {
        "inter-router" => Ok(Role::InterRouter),
        "normal" if what.starts_with("listener") => Ok(Role::Normal),
        "normal" => Err(src.err(
            v.span(),
            format!("{what}.role: role \"normal\" is for listeners (AMQP clients); connectors are \"inter-router\""),
        )),
        other => Err(src.err(
            v.span(),
            format!("{what}.role: unknown role {other:?}, expected \"inter-router\" or \"normal\""),
        )),
    }
}

fn host(src: &Source<'_>, what: &str, v: &Spanned<String>) -> Result<String, ConfigError> {
    let h = v.get_ref();
    let bad = |why: &str| Err(src.err(v.span(), format!("{what}.host: invalid host {h:?}: {why}")));
    if h.parse::<IpAddr>().is_ok() {
        return Ok(h.clone());
    }
    if h.is_empty() {
        return bad("must not be empty");
    }
    if h.starts_with('[') && h.ends_with(']') {
        return bad("write IPv6 addresses without brackets");
    }
    if h.contains(':') {
        return bad("not an IP address or host name (give the port separately in `port`)");
    }
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if h.len() > 253 || !h.trim_end_matches('.').split('.').all(valid_label) {
        return bad("not an IP address or host name");
    }
    Ok(h.clone())
}

/// Extra checks for hosts that are dialed (not bound).
fn dial_host(src: &Source<'_>, what: &str, v: &Spanned<String>) -> Result<(), ConfigError> {
    let h = v.get_ref();
    if h.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified()) {
        return Err(src.err(
            v.span(),
            format!("{what}.host: cannot connect to the unspecified address {h}"),
        ));
    }
    if what.starts_with("connector") && rustls::pki_types::ServerName::try_from(h.as_str()).is_err()
    {
        return Err(src.err(
            v.span(),
            format!("{what}.host: {h:?} is not a valid TLS server name (DNS name or IP address)"),
        ));
    }
    Ok(())
}

fn address(src: &Source<'_>, what: &str, v: &Spanned<String>) -> Result<String, ConfigError> {
    let a = v.get_ref();
    if a.is_empty()
        || a.len() > 255
        || !a
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'-'))
    {
        return Err(src.err(
            v.span(),
            format!(
                "{what}.address: invalid address {a:?}: use 1 to 255 letters, digits, \
                 '.', '_', ':', '/' or '-'"
            ),
        ));
    }
    Ok(a.clone())
}

fn name(
    src: &Source<'_>,
    what: &str,
    v: Option<&Spanned<String>>,
    default: impl FnOnce() -> String,
) -> Result<String, ConfigError> {
    let Some(v) = v else {
        return Ok(default());
    };
    let n = v.get_ref();
    if n.trim().is_empty() || n.len() > 255 || n.chars().any(char::is_control) {
        return Err(src.err(
            v.span(),
            format!(
                "{what}.name: invalid name {n:?}: must be 1 to 255 characters, not blank, \
                 without control characters"
            ),
        ));
    }
    Ok(n.clone())
}

/// Where to point for a name: the `name` value, or the section header if defaulted.
fn name_span<T>(item: &Spanned<T>, name: &Option<Spanned<String>>) -> Range<usize> {
    name.as_ref().map_or_else(|| item.span(), Spanned::span)
}

/// A `role = "normal"` listener: TLS optional, SASL settings, users file.
fn client_listener(
    src: &Source<'_>,
    what: &str,
    item: &Spanned<RawListener>,
    host: String,
    profiles: &[&str],
) -> Result<ClientListenerConfig, ConfigError> {
    let l = item.get_ref();
    let port = match &l.port {
        Some(v) => port(src, what, v)?,
        None => DEFAULT_AMQP_PORT,
    };
    let tls = match &l.tls {
        None => None,
        Some(_) => Some(tls_ref(src, what, item.span(), l.tls.as_ref(), profiles)?),
    };
    let require_client_cert = match &l.require_client_cert {
        Some(v) if *v.get_ref() && tls.is_none() => {
            return Err(src.err(
                v.span(),
                format!("{what}.require_client_cert: needs tls = \"<profile>\" (client certificates are a TLS feature)"),
            ))
        }
        Some(v) => *v.get_ref(),
        None => false,
    };
    let mut anonymous = false;
    let mut plain = false;
    match &l.sasl_mechanisms {
        None => anonymous = true,
        Some(list) => {
            for m in list.get_ref() {
                match m.get_ref().to_ascii_uppercase().as_str() {
                    "ANONYMOUS" => anonymous = true,
                    "PLAIN" => plain = true,
                    other => {
                        return Err(src.err(
                            m.span(),
                            format!("{what}.sasl_mechanisms: unsupported mechanism {other:?}, expected \"ANONYMOUS\" or \"PLAIN\""),
                        ))
                    }
                }
            }
            if !anonymous && !plain {
                return Err(src.err(
                    list.span(),
                    format!(
                        "{what}.sasl_mechanisms: name at least one of \"ANONYMOUS\", \"PLAIN\""
                    ),
                ));
            }
        }
    }
    let users = match (&l.users_file, plain) {
        (None, true) => {
            return Err(src.err(
                l.sasl_mechanisms.as_ref().map_or(item.span(), |v| v.span()),
                format!("{what}.sasl_mechanisms: PLAIN needs users_file = \"<file>\" ([users] name = \"password\")"),
            ))
        }
        (Some(f), false) => {
            return Err(src.err(
                f.span(),
                format!("{what}.users_file: only used with sasl_mechanisms including \"PLAIN\""),
            ))
        }
        (None, false) => None,
        (Some(f), true) => Some(Arc::new(load_users(src, what, f)?)),
    };
    let allow_no_sasl = l.allow_no_sasl.as_ref().is_none_or(|v| *v.get_ref());
    let name = name(src, what, l.name.as_ref(), || {
        format!("listener/{host}:{port}")
    })?;
    Ok(ClientListenerConfig {
        name,
        host,
        port,
        tls,
        require_client_cert,
        sasl_anonymous: anonymous,
        sasl_plain_users: users,
        allow_no_sasl,
    })
}

/// Reads a users file: `[users]` with `name = "password"` entries.
fn load_users(
    src: &Source<'_>,
    what: &str,
    f: &Spanned<String>,
) -> Result<HashMap<String, String>, ConfigError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct UsersFile {
        users: HashMap<String, String>,
    }
    let path = src
        .path
        .parent()
        .unwrap_or(Path::new("."))
        .join(f.get_ref());
    let text = std::fs::read_to_string(&path).map_err(|e| {
        src.err(
            f.span(),
            format!(
                "{what}.users_file: cannot read {}: {}",
                path.display(),
                io_reason(&e)
            ),
        )
    })?;
    let parsed: UsersFile = toml::from_str(&text).map_err(|e| {
        src.err(
            f.span(),
            format!(
                "{what}.users_file: {}: expected [users] with name = \"password\" entries: {}",
                path.display(),
                e.message().trim()
            ),
        )
    })?;
    Ok(parsed.users)
}

fn tls_ref(
    src: &Source<'_>,
    what: &str,
    section: Range<usize>,
    v: Option<&Spanned<String>>,
    profiles: &[&str],
) -> Result<String, ConfigError> {
    let Some(v) = v else {
        let example = profiles.first().copied().unwrap_or("site");
        return Err(src.err(
            section,
            format!(
                "{what}: missing required key \"tls\": plain-text inter-router links are not \
                 configurable; name a TLS profile, e.g. tls = {example:?} with a [tls.{}] section",
                key_segment(example)
            ),
        ));
    };
    let wanted = v.get_ref();
    if profiles.contains(&wanted.as_str()) {
        return Ok(wanted.clone());
    }
    let defined = if profiles.is_empty() {
        "no [tls.<name>] sections are defined".to_string()
    } else {
        format!("defined: {}", profiles.join(", "))
    };
    let mut msg = format!("{what}.tls: no TLS profile named {wanted:?} ({defined})");
    if let Some(best) = closest(wanted, profiles) {
        msg.push_str(&format!("; did you mean {best:?}?"));
    }
    Err(src.err(v.span(), msg))
}

fn check_unique_names(
    src: &Source<'_>,
    names: &[(String, String, Range<usize>, bool)],
) -> Result<(), ConfigError> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (j, (name, what, span, explicit)) in names.iter().enumerate() {
        if let Some(&i) = seen.get(name.as_str()) {
            let (_, first, first_span, _) = &names[i];
            let line = src.line_of(first_span.start);
            let msg = if *explicit {
                format!(
                    "{what}.name: duplicate name {name:?} (also used by {first} at line {line})"
                )
            } else {
                format!(
                    "{what}: duplicate of {first} at line {line} (both are named {name:?}); \
                     remove one, or give them different `name`s"
                )
            };
            return Err(src.err(span.clone(), msg));
        }
        seen.insert(name, j);
    }
    Ok(())
}

fn is_wildcard(host: &str) -> bool {
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified())
}

fn same_bind_host(a: &str, b: &str) -> bool {
    let norm = |h: &str| {
        let h = h.trim_end_matches('.').to_ascii_lowercase();
        if h == "localhost" {
            "127.0.0.1".to_string()
        } else {
            h.parse::<IpAddr>().map_or(h, |ip| ip.to_string())
        }
    };
    is_wildcard(a) || is_wildcard(b) || norm(a) == norm(b)
}

fn check_binds(
    src: &Source<'_>,
    binds: &[(String, String, u16, Range<usize>)],
) -> Result<(), ConfigError> {
    for (j, (what, host, port, span)) in binds.iter().enumerate() {
        for (first, first_host, first_port, first_span) in &binds[..j] {
            if port == first_port && same_bind_host(host, first_host) {
                return Err(src.err(
                    span.clone(),
                    format!(
                        "{what}.port: {host}:{port} is already used by {first} \
                         ({first_host}:{first_port}, line {})",
                        src.line_of(first_span.start)
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn resolve(config_path: &Path, file: &str) -> PathBuf {
    let p = Path::new(file);
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        config_path
            .parent()
            .unwrap_or_else(|| Path::new(""))
            .join(p)
    };
    std::path::absolute(&joined).unwrap_or(joined)
}

fn tls_profile(
    src: &Source<'_>,
    name: &str,
    profile: &Spanned<RawTls>,
) -> Result<TlsProfile, ConfigError> {
    let section = format!("tls.{}", key_segment(name));
    let p = profile.get_ref();
    for (key, v) in [("ca", &p.ca), ("cert", &p.cert), ("key", &p.key)] {
        if v.get_ref().trim().is_empty() {
            return Err(src.err(
                v.span(),
                format!("{section}.{key}: must be a file path, got \"\""),
            ));
        }
    }
    let ca = resolve(src.path, p.ca.get_ref());
    let cert = resolve(src.path, p.cert.get_ref());
    let key = resolve(src.path, p.key.get_ref());

    let material = tls::load_material(&ca, &cert, &key).map_err(|e| {
        let (key_name, span) = match e.file() {
            Some(TlsFile::Ca) => ("ca", p.ca.span()),
            Some(TlsFile::Key) => ("key", p.key.span()),
            Some(TlsFile::Cert) | None => ("cert", p.cert.span()),
        };
        src.err(span, format!("{section}.{key_name}: {e}"))
    })?;

    if let Some(not_after) = material.not_after {
        let now = SystemTime::now();
        if not_after <= now {
            return Err(src.err(
                p.cert.span(),
                format!(
                    "{section}.cert: certificate {} expired on {} (notAfter); renew it",
                    cert.display(),
                    tls::format_system_time(not_after)
                ),
            ));
        }
        if not_after.duration_since(now).unwrap_or_default() < EXPIRY_WARNING {
            tracing::warn!(
                profile = name,
                cert = %cert.display(),
                "certificate expires soon, on {}",
                tls::format_system_time(not_after)
            );
        }
    }

    Ok(TlsProfile {
        name: name.to_string(),
        ca,
        cert,
        key,
        material: Arc::new(material),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::test_support::{at, TestCa};

    /// A temp folder with a CA and `east`/`west` certificates; configs "live" in it.
    struct Env {
        dir: tempfile::TempDir,
    }

    impl Env {
        fn new() -> Env {
            let dir = tempfile::tempdir().expect("tempdir");
            tls::generate_site_certs(dir.path(), &["east", "west"]).expect("certs");
            Env { dir }
        }

        fn path(&self) -> PathBuf {
            self.dir.path().join("east.toml")
        }

        fn file(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn parse(&self, text: &str) -> Result<Config, ConfigError> {
            parse(&self.path(), text)
        }

        #[track_caller]
        fn err(&self, text: &str) -> ConfigError {
            match self.parse(text) {
                Ok(_) => panic!("expected an error for:\n{text}"),
                Err(e) => e,
            }
        }

        /// Asserts the error's position and that its message contains `needle`.
        #[track_caller]
        fn expect(&self, text: &str, line: usize, col: usize, needle: &str) -> ConfigError {
            let e = self.err(text);
            assert_eq!((e.line, e.col), (line, col), "position of: {e}");
            assert!(
                e.message.contains(needle),
                "message {:?} lacks {needle:?}",
                e.message
            );
            assert_eq!(e.file, self.path());
            e
        }
    }

    const TLS: &str = "[tls.site]\nca = \"ca.pem\"\ncert = \"east.pem\"\nkey = \"east-key.pem\"\n";

    fn with_tls(text: &str) -> String {
        format!("{text}{TLS}")
    }

    #[test]
    fn full_config_with_defaults_and_resolved_paths() {
        let env = Env::new();
        let text = r#"
[router]
id = "east"
hello_interval_ms = 500
dead_interval_ms = 2000
flow_window = 65536

[[listener]]
role = "inter-router"
host = "0.0.0.0"
port = 55671
tls = "site"

[[connector]]
name = "to-west"
role = "inter-router"
host = "localhost"
port = 55672
cost = 5
tls = "site"
verify_hostname = false

[[connector]]
role = "inter-router"
host = "127.0.0.1"
port = 55673
tls = "site"

[[tcp_listener]]
address = "backend"
port = 9000

[[tcp_connector]]
address = "backend"
host = "127.0.0.1"
port = 8080

[tls.site]
ca = "ca.pem"
cert = "east.pem"
key = "east-key.pem"
"#;
        let cfg = env.parse(text).expect("valid config");
        assert_eq!(cfg.path, env.path());
        assert_eq!(
            cfg.router,
            RouterSection {
                id: "east".into(),
                hello_interval: Duration::from_millis(500),
                dead_interval: Duration::from_millis(2000),
                advertisement_interval: Duration::from_millis(4000),
                flow_window: 65536,
                auto_listeners: false,
                revoked_peers: Vec::new(),
            }
        );
        assert_eq!(
            cfg.listeners,
            [ListenerConfig {
                name: "listener/0.0.0.0:55671".into(),
                role: Role::InterRouter,
                host: "0.0.0.0".into(),
                port: 55671,
                tls: "site".into(),
            }]
        );
        assert_eq!(cfg.connectors.len(), 2);
        assert_eq!(cfg.connectors[0].name, "to-west");
        assert_eq!(cfg.connectors[0].cost, 5);
        assert!(!cfg.connectors[0].verify_hostname);
        assert_eq!(cfg.connectors[1].name, "connector/127.0.0.1:55673");
        assert_eq!(cfg.connectors[1].cost, 1);
        assert!(cfg.connectors[1].verify_hostname);
        assert_eq!(
            cfg.tcp_listeners,
            [TcpListenerConfig {
                name: "tcp_listener/backend/9000".into(),
                address: "backend".into(),
                host: "127.0.0.1".into(),
                port: 9000,
            }]
        );
        assert_eq!(
            cfg.tcp_connectors,
            [TcpConnectorConfig {
                name: "tcp_connector/backend/127.0.0.1:8080".into(),
                address: "backend".into(),
                host: "127.0.0.1".into(),
                port: 8080,
                expose: false,
            }]
        );
        let site = cfg.tls_profile("site").expect("profile");
        assert_eq!(site.name, "site");
        assert_eq!(site.ca, env.file("ca.pem"));
        assert_eq!(site.cert, env.file("east.pem"));
        assert_eq!(site.key, env.file("east-key.pem"));
        assert!(site.ca.is_absolute());
        assert!(site.material.not_after.is_some());
    }

    #[test]
    fn minimal_config_defaults() {
        let env = Env::new();
        let cfg = env.parse("[router]\nid = \"a.b_c-1\"\n").expect("valid");
        assert_eq!(cfg.router.hello_interval, Duration::from_millis(1000));
        assert_eq!(cfg.router.dead_interval, Duration::from_millis(3000));
        assert_eq!(cfg.router.flow_window, 1 << 20);
        assert!(cfg.listeners.is_empty() && cfg.tls.is_empty());
    }

    #[test]
    fn relative_paths_resolve_against_config_folder() {
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(
            resolve(Path::new("conf/east.toml"), "ca.pem"),
            cwd.join("conf/ca.pem")
        );
        assert_eq!(
            resolve(Path::new("east.toml"), "certs/ca.pem"),
            cwd.join("certs/ca.pem")
        );
        assert_eq!(
            resolve(Path::new("/etc/t/east.toml"), "ca.pem"),
            Path::new("/etc/t/ca.pem")
        );
        assert_eq!(
            resolve(Path::new("/etc/t/east.toml"), "/x/ca.pem"),
            Path::new("/x/ca.pem")
        );
    }

    #[test]
    fn display_is_file_line_col_message() {
        let e = ConfigError {
            file: PathBuf::from("east.toml"),
            line: 14,
            col: 7,
            message: "connector[0].tls: no TLS profile named \"stie\" (defined: site)".into(),
        };
        assert_eq!(
            e.to_string(),
            "east.toml:14:7: connector[0].tls: no TLS profile named \"stie\" (defined: site)"
        );
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 3), (2, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é = 1", 3), (1, 3));
        assert_eq!(line_col("ab", 99), (1, 3));
    }

    #[test]
    fn missing_file() {
        let env = Env::new();
        let path = env.file("nope.toml");
        let e = load(&path).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}:1:1: cannot read config: No such file or directory",
                path.display()
            )
        );
    }

    #[test]
    fn load_reads_the_file() {
        let env = Env::new();
        std::fs::write(env.path(), with_tls("[router]\nid = \"east\"\n")).expect("write");
        let cfg = load(&env.path()).expect("valid");
        assert_eq!(cfg.router.id, "east");
        assert!(cfg.tls.contains_key("site"));
    }

    #[test]
    fn toml_syntax_error() {
        let env = Env::new();
        env.expect("[router]\nid = 'east\n", 2, 11, "TOML syntax error");
        env.expect("[router\nid = 'east'\n", 1, 8, "TOML syntax error");
    }

    #[test]
    fn duplicate_key() {
        let env = Env::new();
        env.expect(
            "[router]\nid = 'a'\nid = 'b'\n",
            3,
            1,
            "duplicate key \"id\"",
        );
        env.expect(
            "[router]\nid = 'a'\n[router]\n",
            3,
            2,
            "duplicate key \"router\"",
        );
    }

    #[test]
    fn unknown_key_in_router() {
        let env = Env::new();
        let e = env.expect(
            "[router]\nid = 'a'\nidd = 'x'\n",
            3,
            1,
            "unknown key \"idd\" in [router]",
        );
        assert_eq!(
            e.message,
            "unknown key \"idd\" in [router], expected one of: id, hello_interval_ms, \
             dead_interval_ms, advertisement_interval_ms, flow_window, auto_listeners, revoked_peers (did you mean \"id\"?)"
        );
    }

    #[test]
    fn unknown_key_in_array_entry_and_profile() {
        let env = Env::new();
        let text = "[router]\nid = 'a'\n\
                    [[tcp_listener]]\naddress = 'a'\nport = 1\n\
                    [[tcp_listener]]\naddress = 'b'\nport = 2\n  prot = 3\n";
        env.expect(text, 9, 3, "unknown key \"prot\" in tcp_listener[1], expected one of: name, address, host, port (did you mean \"port\"?)");
        let text = "[router]\nid = 'a'\n[tls.site]\nca = 'ca.pem'\ncert = 'east.pem'\nkey = 'east-key.pem'\npassword = 'x'\n";
        env.expect(
            text,
            7,
            1,
            "unknown key \"password\" in [tls.site], expected one of: ca, cert, key",
        );
    }

    #[test]
    fn address_distributions_longest_prefix_wins() {
        let env = Env::new();
        let cfg = env
            .parse(
                "[router]\nid = 'a'\nadvertisement_interval_ms = 2000\n\
                 [[address]]\nprefix = 'svc'\ndistribution = 'closest'\n\
                 [[address]]\nprefix = 'svc.db'\n\
                 [[address]]\nprefix = 'events'\ndistribution = 'multicast'\n",
            )
            .expect("valid config");
        assert_eq!(
            cfg.router.advertisement_interval,
            Duration::from_millis(2000)
        );
        let d = |a: &str| distribution_for(&cfg.addresses, a);
        assert_eq!(d("svc.web"), Distribution::Closest);
        assert_eq!(d("svc.db.main"), Distribution::Balanced);
        assert_eq!(d("events"), Distribution::Multicast);
        assert_eq!(d("other"), Distribution::Balanced);
    }

    #[test]
    fn bad_address_entries_are_located() {
        let env = Env::new();
        env.expect(
            "[router]\nid = 'a'\n[[address]]\nprefix = 'x'\ndistribution = 'nearest'\n",
            5,
            16,
            "address[0].distribution: unknown distribution \"nearest\", expected \"balanced\", \"closest\" or \"multicast\"",
        );
        env.expect(
            "[router]\nid = 'a'\n[[address]]\nprefix = 'x'\n[[address]]\nprefix = 'x'\n",
            6,
            10,
            "address[1].prefix: \"x\" is already configured by address[0]",
        );
        env.expect(
            "[router]\nid = 'a'\n[[address]]\nprefix = 'ev'\ndistribution = 'multicast'\n\
             [[tcp_listener]]\naddress = 'events'\nport = 9000\n",
            7,
            11,
            "tcp_listener[0].address: \"events\" has distribution \"multicast\" (from [[address]] prefix \"ev\"); a TCP flow needs \"balanced\" or \"closest\"",
        );
        env.expect(
            "[router]\nid = 'a'\nhello_interval_ms = 1000\nadvertisement_interval_ms = 500\n",
            4,
            29,
            "router.advertisement_interval_ms: must be at least 1000, got 500",
        );
    }

    #[test]
    fn http_listen_must_be_an_address_and_port() {
        let env = Env::new();
        env.expect(
            "[router]\nid = 'a'\n[http]\nlisten = 'localhost'\n",
            4,
            10,
            "http.listen: \"localhost\" is not an address and port, e.g. \"127.0.0.1:9090\"",
        );
        env.expect(
            "[router]\nid = 'a'\n[http]\nlisten = '127.0.0.1:9090'\nport = 1\n",
            5,
            1,
            "unknown key \"port\"",
        );
    }

    #[test]
    fn unknown_top_level_section() {
        let env = Env::new();
        env.expect(
            "[router]\nid = 'a'\n[[listner]]\nport = 1\n",
            3,
            3,
            "unknown key \"listner\" at the top level, expected one of: router, listener, connector, tcp_listener, tcp_connector, address, tls, http (did you mean \"listener\"?)",
        );
    }

    #[test]
    fn wrong_types() {
        let env = Env::new();
        env.expect(
            "[router]\nid = 'a'\nhello_interval_ms = '1000'\n",
            3,
            21,
            "router.hello_interval_ms: expected an integer, found string \"1000\"",
        );
        env.expect(
            "[router]\nid = 5\n",
            2,
            6,
            "router.id: expected a string, found integer 5",
        );
        env.expect(
            "[router]\nid = 'a'\n[[connector]]\nrole = 'inter-router'\nhost = 'h'\nport = 1\ntls = 'x'\nverify_hostname = 'no'\n",
            8,
            19,
            "connector[0].verify_hostname: expected a boolean, found string \"no\"",
        );
        env.expect(
            "[router]\nid = 'a'\n[listener]\nport = 1\n",
            3,
            1,
            "listener: expected an array of tables (write each entry as a [[listener]] section), found a table",
        );
        env.expect(
            "router = 'east'\n",
            1,
            10,
            "router: expected a table, found string",
        );
    }

    #[test]
    fn missing_required_keys() {
        let env = Env::new();
        env.expect("", 1, 1, "missing required section [router]");
        env.expect(
            "[router]\nhello_interval_ms = 500\n",
            1,
            1,
            "[router]: missing required key \"id\"",
        );
        let text = "[router]\nid = 'a'\n\
                    [[tcp_connector]]\naddress = 'a'\nhost = 'h'\nport = 1\n\
                    [[tcp_connector]]\naddress = 'a'\nhost = 'h'\n";
        env.expect(
            text,
            7,
            1,
            "tcp_connector[1]: missing required key \"port\"",
        );
        env.expect(
            "[router]\nid = 'a'\n[[listener]]\nhost = 'h'\nport = 1\ntls = 'site'\n",
            3,
            1,
            "listener[0]: missing required key \"role\" (role = \"inter-router\")",
        );
        env.expect(
            "[router]\nid = 'a'\n[tls.site]\nca = 'ca.pem'\nkey = 'k'\n",
            3,
            1,
            "[tls.site]: missing required key \"cert\"",
        );
    }

    #[test]
    fn plain_text_links_are_not_configurable() {
        let env = Env::new();
        let e = env.expect(
            &with_tls("[router]\nid = 'a'\n[[listener]]\nrole = 'inter-router'\nhost = 'h'\nport = 1\n"),
            3,
            1,
            "listener[0]: missing required key \"tls\": plain-text inter-router links are not configurable",
        );
        assert!(e.message.contains("tls = \"site\""), "{e}");
        env.expect(
            "[router]\nid = 'a'\n[[connector]]\nrole = 'inter-router'\nhost = 'h'\nport = 1\n",
            3,
            1,
            "connector[0]: missing required key \"tls\": plain-text",
        );
    }

    #[test]
    fn bad_router_values() {
        let env = Env::new();
        env.expect(
            "[router]\nid = 'a b'\n",
            2,
            6,
            "router.id: invalid id \"a b\"",
        );
        env.expect("[router]\nid = ''\n", 2, 6, "router.id: invalid id");
        env.expect(
            &format!("[router]\nid = '{}'\n", "x".repeat(65)),
            2,
            6,
            "router.id: invalid id",
        );
        env.expect(
            "[router]\nid = 'a'\nhello_interval_ms = 99\n",
            3,
            21,
            "router.hello_interval_ms: must be at least 100, got 99",
        );
        env.expect(
            "[router]\nid = 'a'\ndead_interval_ms = 299\n",
            3,
            20,
            "router.dead_interval_ms: must be at least 300, got 299",
        );
        env.expect(
            "[router]\nid = 'a'\nhello_interval_ms = 1000\ndead_interval_ms = 1000\n",
            4,
            20,
            "router.dead_interval_ms: must be greater than hello_interval_ms (1000), got 1000",
        );
        env.expect(
            "[router]\nid = 'a'\nhello_interval_ms = 3000\n",
            3,
            21,
            "router.hello_interval_ms: must be less than dead_interval_ms (3000 by default",
        );
        env.expect(
            "[router]\nid = 'a'\nflow_window = 65535\n",
            3,
            15,
            "router.flow_window: must be between 65536 and 67108864, got 65535",
        );
        env.expect(
            "[router]\nid = 'a'\nflow_window = 67108865\n",
            3,
            15,
            "router.flow_window: must be between 65536 and 67108864",
        );
        env.expect(
            "[router]\nid = 'a'\nhello_interval_ms = -5\n",
            3,
            21,
            "must be at least 100, got -5",
        );
    }

    #[test]
    fn bad_entry_values() {
        let env = Env::new();
        let conn = |extra: &str| {
            with_tls(&format!(
                "[router]\nid = 'a'\n[[connector]]\nrole = 'inter-router'\ntls = 'site'\n{extra}"
            ))
        };
        env.expect(
            &conn("host = 'h'\nport = 0\n"),
            7,
            8,
            "connector[0].port: must be between 1 and 65535, got 0",
        );
        env.expect(
            &conn("host = 'h'\nport = 70000\n"),
            7,
            8,
            "connector[0].port: must be between 1 and 65535, got 70000",
        );
        env.expect(
            &conn("host = 'h'\nport = 1\ncost = 0\n"),
            8,
            8,
            "connector[0].cost: must be between 1 and 1000000, got 0",
        );
        env.expect(
            &conn("host = 'h'\nport = 1\ncost = 1000001\n"),
            8,
            8,
            "connector[0].cost",
        );
        env.expect(
            &conn("host = ''\nport = 1\n"),
            6,
            8,
            "connector[0].host: invalid host \"\"",
        );
        env.expect(
            &conn("host = 'h:1'\nport = 1\n"),
            6,
            8,
            "give the port separately",
        );
        env.expect(
            &conn("host = '[::1]'\nport = 1\n"),
            6,
            8,
            "without brackets",
        );
        env.expect(
            &conn("host = '0.0.0.0'\nport = 1\n"),
            6,
            8,
            "cannot connect to the unspecified address",
        );
        env.expect(
            &conn("host = 'h'\nport = 1\nname = ''\n"),
            8,
            8,
            "connector[0].name: invalid name",
        );
        let tcp = |extra: &str| format!("[router]\nid = 'a'\n[[tcp_listener]]\nport = 1\n{extra}");
        env.expect(
            &tcp("address = ''\n"),
            5,
            11,
            "tcp_listener[0].address: invalid address \"\"",
        );
        env.expect(
            &tcp("address = 'a b'\n"),
            5,
            11,
            "tcp_listener[0].address: invalid address",
        );
        env.expect(
            &tcp(&format!("address = '{}'\n", "a".repeat(256))),
            5,
            11,
            "invalid address",
        );
        let ok = env
            .parse(&tcp("address = 'svc.ns:8080/v1-a_b'\nhost = '::'\n"))
            .expect("valid");
        assert_eq!(ok.tcp_listeners[0].host, "::");
    }

    #[test]
    fn roles() {
        let env = Env::new();
        let listener = |role: &str| {
            with_tls(&format!(
                "[router]\nid = 'a'\n[[listener]]\nrole = '{role}'\nhost = 'h'\nport = 1\ntls = 'site'\n"
            ))
        };
        let normal = env.parse(&listener("normal")).expect("valid");
        assert!(normal.listeners.is_empty());
        assert_eq!(normal.client_listeners[0].port, 1);
        assert_eq!(normal.client_listeners[0].tls.as_deref(), Some("site"));
        assert!(normal.client_listeners[0].sasl_anonymous);
        env.expect(
            &listener("edge"),
            4,
            8,
            "listener[0].role: unknown role \"edge\", expected \"inter-router\" or \"normal\"",
        );
        assert_eq!(
            env.parse(&listener("inter-router"))
                .expect("valid")
                .listeners[0]
                .role,
            Role::InterRouter
        );
    }

    #[test]
    fn duplicate_names() {
        let env = Env::new();
        let text = with_tls(
            "[router]\nid = 'a'\n\
             [[listener]]\nname = 'x'\nrole = 'inter-router'\nhost = 'h'\nport = 1\ntls = 'site'\n\
             [[tcp_listener]]\nname = 'x'\naddress = 'b'\nport = 2\n",
        );
        env.expect(
            &text,
            10,
            8,
            "tcp_listener[0].name: duplicate name \"x\" (also used by listener[0] at line 4)",
        );
    }

    #[test]
    fn duplicate_tcp_connector() {
        let env = Env::new();
        let text = "[router]\nid = 'a'\n\
                    [[tcp_connector]]\naddress = 'b'\nhost = 'h'\nport = 1\n\
                    [[tcp_connector]]\naddress = 'b'\nhost = 'h'\nport = 1\n";
        env.expect(text, 7, 1, "tcp_connector[1]: duplicate of tcp_connector[0] at line 3 (both are named \"tcp_connector/b/h:1\")");
        // Same address on another host:port is fine (several service instances).
        let ok = text.replace(
            "port = 1\n[[tcp_connector]]\naddress = 'b'\nhost = 'h'\nport = 1",
            "port = 1\n[[tcp_connector]]\naddress = 'b'\nhost = 'h'\nport = 2",
        );
        assert_eq!(env.parse(&ok).expect("valid").tcp_connectors.len(), 2);
    }

    #[test]
    fn duplicate_listening_port() {
        let env = Env::new();
        let text = with_tls(
            "[router]\nid = 'a'\n\
             [[listener]]\nrole = 'inter-router'\nhost = '127.0.0.1'\nport = 9000\ntls = 'site'\n\
             [[tcp_listener]]\naddress = 'b'\nport = 9000\n",
        );
        env.expect(&text, 10, 8, "tcp_listener[0].port: 127.0.0.1:9000 is already used by listener[0] (127.0.0.1:9000, line 6)");
        let text = with_tls(
            "[router]\nid = 'a'\n\
             [[listener]]\nrole = 'inter-router'\nhost = '0.0.0.0'\nport = 9000\ntls = 'site'\n\
             [[tcp_listener]]\naddress = 'b'\nhost = '10.0.0.1'\nport = 9000\n",
        );
        env.expect(
            &text,
            11,
            8,
            "tcp_listener[0].port: 10.0.0.1:9000 is already used by listener[0] (0.0.0.0:9000",
        );
        let text = "[router]\nid = 'a'\n\
                    [[tcp_listener]]\naddress = 'b'\nhost = 'localhost'\nport = 9000\n\
                    [[tcp_listener]]\naddress = 'c'\nport = 9000\n";
        env.expect(text, 9, 8, "already used by tcp_listener[0]");
        // Different hosts, or different ports, are fine.
        let ok = "[router]\nid = 'a'\n\
                  [[tcp_listener]]\naddress = 'b'\nhost = '127.0.0.2'\nport = 9000\n\
                  [[tcp_listener]]\naddress = 'c'\nport = 9000\n\
                  [[tcp_listener]]\naddress = 'c'\nport = 9001\n";
        assert_eq!(env.parse(ok).expect("valid").tcp_listeners.len(), 3);
    }

    #[test]
    fn unknown_tls_profile() {
        let env = Env::new();
        let text = with_tls(
            "[router]\nid = 'a'\n[[connector]]\nrole = 'inter-router'\nhost = 'h'\nport = 1\ntls = \"stie\"\n",
        );
        let e = env.expect(
            &text,
            7,
            7,
            "connector[0].tls: no TLS profile named \"stie\" (defined: site)",
        );
        assert!(e.message.ends_with("did you mean \"site\"?"), "{e}");
        env.expect(
            "[router]\nid = 'a'\n[[listener]]\nrole = 'inter-router'\nhost = 'h'\nport = 1\ntls = 'site'\n",
            7,
            7,
            "listener[0].tls: no TLS profile named \"site\" (no [tls.<name>] sections are defined)",
        );
    }

    fn profile(ca: &str, cert: &str, key: &str) -> String {
        format!("[router]\nid = 'a'\n[tls.site]\nca = '{ca}'\ncert = '{cert}'\nkey = '{key}'\n")
    }

    #[test]
    fn tls_file_unreadable() {
        let env = Env::new();
        let e = env.expect(
            &profile("nope.pem", "east.pem", "east-key.pem"),
            4,
            6,
            "tls.site.ca: cannot read CA file",
        );
        assert!(
            e.message
                .contains(&env.file("nope.pem").display().to_string()),
            "{e}"
        );
        assert!(e.message.ends_with("No such file or directory"), "{e}");
        env.expect(
            &profile("ca.pem", "east.pem", "nope.pem"),
            6,
            7,
            "tls.site.key: cannot read private key file",
        );
        env.expect(
            &profile("ca.pem", "east.pem", ""),
            6,
            7,
            "tls.site.key: must be a file path",
        );
    }

    #[test]
    fn tls_file_not_pem() {
        let env = Env::new();
        std::fs::write(env.file("junk.pem"), "not pem at all\n").expect("write");
        env.expect(
            &profile("ca.pem", "junk.pem", "east-key.pem"),
            5,
            8,
            "tls.site.cert: certificate file",
        );
        env.expect(
            &profile("ca.pem", "junk.pem", "east-key.pem"),
            5,
            8,
            "is not valid PEM",
        );
    }

    #[test]
    fn tls_file_without_certificate() {
        let env = Env::new();
        env.expect(
            &profile("east-key.pem", "east.pem", "east-key.pem"),
            4,
            6,
            "tls.site.ca: CA file",
        );
        env.expect(
            &profile("ca.pem", "east-key.pem", "east.pem"),
            5,
            8,
            "contains no certificate",
        );
    }

    #[test]
    fn tls_file_without_private_key() {
        let env = Env::new();
        env.expect(
            &profile("ca.pem", "east.pem", "west.pem"),
            6,
            7,
            "tls.site.key: private key file",
        );
        env.expect(
            &profile("ca.pem", "east.pem", "west.pem"),
            6,
            7,
            "contains no private key",
        );
    }

    #[test]
    fn tls_key_does_not_match_cert() {
        let env = Env::new();
        env.expect(
            &profile("ca.pem", "east.pem", "west-key.pem"),
            6,
            7,
            "tls.site.key: private key",
        );
        env.expect(
            &profile("ca.pem", "east.pem", "west-key.pem"),
            6,
            7,
            "does not match certificate",
        );
    }

    #[test]
    fn tls_cert_expired() {
        let env = Env::new();
        std::fs::create_dir(env.file("old")).expect("mkdir");
        let ca = TestCa::new(&env.file("old"));
        ca.leaf("old", (at(1_546_300_800), at(1_577_836_800)));
        let e = env.expect(
            &profile("old/ca.pem", "old/old.pem", "old/old-key.pem"),
            5,
            8,
            "tls.site.cert: certificate",
        );
        assert!(
            e.message
                .contains("expired on 2020-01-01 00:00:00 UTC (notAfter)"),
            "{e}"
        );
    }

    #[test]
    fn every_profile_is_loaded_even_unreferenced() {
        let env = Env::new();
        let text = format!(
            "{}[tls.spare]\nca = 'ca.pem'\ncert = 'missing.pem'\nkey = 'east-key.pem'\n",
            with_tls("[router]\nid = 'a'\n")
        );
        env.expect(&text, 9, 8, "tls.spare.cert: cannot read certificate file");
    }

    #[test]
    fn unusual_profile_names_are_quoted_in_paths() {
        let env = Env::new();
        let text = "[router]\nid = 'a'\n[tls.\"my.site\"]\nca = 'nope.pem'\ncert = 'east.pem'\nkey = 'east-key.pem'\n";
        env.expect(text, 4, 6, "tls.\"my.site\".ca: cannot read");
    }
}
