//! The management commands of the `tether` binary: `status`, `query`,
//! `create` and `delete`, over [`crate::mgmt_client`], and their output as
//! aligned tables, JSON or YAML.
//!
//! ```text
//! tether status                                   # the local router at amqp://127.0.0.1:5672
//! tether status --router amqp://10.0.0.5:5672 --target-router west -o json
//! tether query tcpListener name port operStatus
//! tether query io.tether.router.connection -o yaml
//! tether create tcpListener name=web host=0.0.0.0 port=9090 address=web
//! tether delete tcpListener web
//! ```
//!
//! Type names may be short (`tcpListener`, `router.address`, or the
//! aliases `address`, `node`, `link`; case, `-` and `_` do not matter for
//! the known ones) or full (`io.tether.router.*`, `io.skupper.router.*`,
//! `org.apache.qpid.dispatch.*`), see [`full_type_name`].
//!
//! `create` values: integers become AMQP longs, `true`/`false` booleans,
//! anything else a string; a value in double or single quotes is always a
//! string, and so are the attributes the schema types as strings (`name`,
//! `host`, `port`, `address`, ...), see [`parse_assignment`].
//!
//! Exit codes: 0 success; 1 the router answered with an error (printed as
//! `error: <statusCode> <description>`), could not be reached or did not
//! answer (printed with the URL and why); 2 usage errors.

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Map as JsonMap, Value as J};

use crate::mgmt_client::{
    attributes_to_json, to_json, Attributes, ClientOptions, MgmtClient, MgmtError, QueryResult,
    TlsOptions, DEFAULT_URL, TYPE_PREFIX,
};
use fe2o3_amqp::types::primitives::Value;

/// Output format of the management commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns with a header row.
    Table,
    /// Pretty-printed JSON.
    Json,
    /// YAML.
    Yaml,
}

/// Options every management command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct MgmtArgs {
    /// Router to connect to: amqp://[USER:PASSWORD@]HOST[:PORT], amqps://..., or HOST:PORT
    /// (default: the current site's router if a site is found, else amqp://127.0.0.1:5672).
    #[arg(long, value_name = "URL")]
    pub router: Option<String>,
    /// Manage this router (by id, anywhere in the network) through the one connected to.
    #[arg(long, value_name = "ID")]
    pub target_router: Option<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Give up on connecting, or on a request, after this many seconds.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// amqps://: the CA bundle (PEM) that signed the router's certificate.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// amqps://: our client certificate (PEM), with --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// amqps://: the private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

impl MgmtArgs {
    fn client_options(&self) -> ClientOptions {
        ClientOptions {
            url: self
                .router
                .clone()
                .unwrap_or_else(|| DEFAULT_URL.to_string()),
            target_router: self.target_router.clone(),
            timeout: self.timeout,
            tls: TlsOptions {
                ca: self.ca.clone(),
                cert: self.cert.clone(),
                key: self.key.clone(),
            },
        }
    }
}

/// Parses `--timeout`: positive seconds, fractions allowed, at most a day.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 86_400.0 => Ok(Duration::from_secs_f64(x)),
        _ => Err(format!(
            "{s:?} is not a number of seconds (0 < SECS <= 86400)"
        )),
    }
}

// ---------------------------------------------------------------------------
// Type names and key=value arguments
// ---------------------------------------------------------------------------

/// Entity types of the schema, by their short names.
const KNOWN_TYPES: &[&str] = &[
    "router",
    "connection",
    "router.link",
    "router.address",
    "router.node",
    "router.config.address",
    "listener",
    "connector",
    "tcpListener",
    "tcpConnector",
    "sslProfile",
    "log",
];

/// Short names that are not entity names themselves.
const TYPE_ALIASES: &[(&str, &str)] = &[
    ("address", "router.address"),
    ("node", "router.node"),
    ("link", "router.link"),
    ("config.address", "router.config.address"),
];

/// Prefixes of names that are already full.
const FULL_PREFIXES: &[&str] = &[
    "io.tether.router.",
    "io.skupper.router.",
    "org.apache.qpid.dispatch.",
    "org.amqp.management",
];

/// The full entity type name for a name given on the command line: full
/// names as they are, known short names and aliases (ignoring case, `-`
/// and `_`) in their schema spelling, anything else as
/// `io.tether.router.<name>`.
pub fn full_type_name(name: &str) -> String {
    let name = name.trim();
    if FULL_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return name.to_string();
    }
    let norm = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '-' && *c != '_')
            .flat_map(char::to_lowercase)
            .collect()
    };
    let wanted = norm(name);
    let short = TYPE_ALIASES
        .iter()
        .find(|(alias, _)| norm(alias) == wanted)
        .map(|(_, t)| *t)
        .or_else(|| KNOWN_TYPES.iter().copied().find(|t| norm(t) == wanted))
        .unwrap_or(name);
    format!("{TYPE_PREFIX}{short}")
}

/// Attributes the schema types as strings: their values are never turned
/// into numbers or booleans (`port=9090` stays the string "9090").
const STRING_ATTRIBUTES: &[&str] = &[
    "name",
    "identity",
    "type",
    "host",
    "port",
    "address",
    "prefix",
    "pattern",
    "siteId",
    "role",
    "sslProfile",
    "caCertFile",
    "certFile",
    "privateKeyFile",
    "distribution",
];

/// Parses one `key=value` argument. The value is a string when quoted
/// (`'"42"'`) or when the key is one of the schema's string attributes;
/// otherwise an integer becomes a long, `true`/`false` a boolean, and
/// anything else a string.
pub fn parse_assignment(arg: &str) -> Result<(String, Value), String> {
    let (key, raw) = arg
        .split_once('=')
        .ok_or_else(|| format!("{arg:?} is not key=value"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("{arg:?} has no attribute name before '='"));
    }
    for quote in ['"', '\''] {
        if raw.len() >= 2 && raw.starts_with(quote) && raw.ends_with(quote) {
            return Ok((key.to_string(), Value::String(raw[1..raw.len() - 1].into())));
        }
    }
    if STRING_ATTRIBUTES.contains(&key) {
        return Ok((key.to_string(), Value::String(raw.to_string())));
    }
    let value = match raw {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => match raw.parse::<i64>() {
            Ok(n) => Value::Long(n),
            Err(_) => Value::String(raw.to_string()),
        },
    };
    Ok((key.to_string(), value))
}

/// Parses `create`'s arguments: the `name` (required) and all attributes
/// (including `name`), each given once.
pub fn parse_create_args(args: &[String]) -> Result<(String, Attributes), String> {
    let mut attrs = Attributes::new();
    for arg in args {
        let (k, v) = parse_assignment(arg)?;
        if attrs.contains_key(&k) {
            return Err(format!("attribute {k:?} is given twice"));
        }
        attrs.insert(k, v);
    }
    let name = match attrs.get("name") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err("create needs name=NAME".to_string()),
    };
    Ok((name, attrs))
}

// ---------------------------------------------------------------------------
// Output: tables, YAML
// ---------------------------------------------------------------------------

/// A value as one table cell: strings as they are (control characters
/// escaped), null and empty lists as `-`, lists comma-joined, maps as
/// compact JSON.
pub fn cell_text(v: &J) -> String {
    match v {
        J::Null => "-".to_string(),
        J::String(s) => {
            let mut out = String::with_capacity(s.len());
            for c in s.chars() {
                if c.is_control() {
                    out.extend(c.escape_default());
                } else {
                    out.push(c);
                }
            }
            out
        }
        J::Bool(b) => b.to_string(),
        J::Number(n) => n.to_string(),
        J::Array(a) if a.is_empty() => "-".to_string(),
        J::Array(a) => a.iter().map(cell_text).collect::<Vec<_>>().join(","),
        J::Object(_) => v.to_string(),
    }
}

/// Renders rows under a header row and a dashed rule, columns separated by
/// two spaces, each line indented by `indent` spaces. Columns whose values
/// are all numbers (nulls aside) are right-aligned.
pub fn render_table(headers: &[&str], rows: &[Vec<J>], indent: usize) -> String {
    let ncols = headers.len();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            (0..ncols)
                .map(|i| cell_text(r.get(i).unwrap_or(&J::Null)))
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &cells {
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let numeric: Vec<bool> = (0..ncols)
        .map(|i| {
            let mut any = false;
            for r in rows {
                match r.get(i) {
                    Some(J::Number(_)) => any = true,
                    None | Some(J::Null) => {}
                    Some(_) => return false,
                }
            }
            any
        })
        .collect();
    let pad = " ".repeat(indent);
    let line = |texts: &[String]| -> String {
        let mut s = pad.clone();
        for (i, t) in texts.iter().enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            let fill = widths[i].saturating_sub(t.chars().count());
            if numeric[i] {
                s.push_str(&" ".repeat(fill));
                s.push_str(t);
            } else {
                s.push_str(t);
                s.push_str(&" ".repeat(fill));
            }
        }
        let mut s = s.trim_end().to_string();
        s.push('\n');
        s
    };
    let mut out = String::new();
    out.push_str(&line(
        &headers.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    ));
    out.push_str(&line(
        &widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>(),
    ));
    for row in &cells {
        out.push_str(&line(row));
    }
    out
}

/// Whether a string must be quoted to read back as the same string in
/// YAML (1.1 or 1.2): empty, surrounding blanks, control characters,
/// indicator characters in front, `: `/` #` inside, a trailing `:`, words
/// YAML reads as booleans or null, and anything starting like a number.
fn yaml_needs_quotes(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return true;
    };
    if s.trim() != s
        || s.chars()
            .any(|c| c.is_control() || matches!(c, '\u{feff}' | '\u{2028}' | '\u{2029}'))
    {
        return true;
    }
    if "-?:,[]{}#&*!|>'\"%@`".contains(first) {
        return true;
    }
    if first.is_ascii_digit() || first == '+' || first == '.' {
        return true;
    }
    if s.contains(": ") || s.contains(" #") || s.ends_with(':') {
        return true;
    }
    matches!(
        s.to_ascii_lowercase().as_str(),
        "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n" | "null" | "~" | "=" | "<<"
    )
}

fn yaml_string(s: &str) -> String {
    if yaml_needs_quotes(s) {
        // A JSON string literal is a YAML double-quoted scalar; escape
        // what JSON leaves raw but YAML does not allow (or reads as a line
        // break): DEL, C1 controls, U+2028/2029, the BOM, U+FFFE/FFFF.
        J::String(s.to_string())
            .to_string()
            .chars()
            .map(|c| match c {
                '\u{7f}'..='\u{9f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{feff}'
                | '\u{fffe}'
                | '\u{ffff}' => format!("\\u{:04x}", u32::from(c)),
                c => c.to_string(),
            })
            .collect()
    } else {
        s.to_string()
    }
}

/// A scalar, or an empty list/map, on one line; `None` for a block.
fn yaml_inline(v: &J) -> Option<String> {
    match v {
        J::Null => Some("null".to_string()),
        J::Bool(b) => Some(b.to_string()),
        J::Number(n) => Some(n.to_string()),
        J::String(s) => Some(yaml_string(s)),
        J::Array(a) if a.is_empty() => Some("[]".to_string()),
        J::Object(o) if o.is_empty() => Some("{}".to_string()),
        _ => None,
    }
}

fn yaml_block(out: &mut String, v: &J, indent: usize) {
    let pad = " ".repeat(indent);
    match v {
        J::Array(items) if !items.is_empty() => {
            for item in items {
                match yaml_inline(item) {
                    Some(s) => {
                        out.push_str(&format!("{pad}- {s}\n"));
                    }
                    None => {
                        // The item's block, its first line after the dash.
                        let mut inner = String::new();
                        yaml_block(&mut inner, item, indent + 2);
                        out.push_str(&pad);
                        out.push_str("- ");
                        out.push_str(&inner[indent + 2..]);
                    }
                }
            }
        }
        J::Object(map) if !map.is_empty() => {
            for (k, val) in map {
                let key = yaml_string(k);
                match yaml_inline(val) {
                    Some(s) => out.push_str(&format!("{pad}{key}: {s}\n")),
                    None => {
                        out.push_str(&format!("{pad}{key}:\n"));
                        yaml_block(out, val, indent + 2);
                    }
                }
            }
        }
        scalar => {
            let s = yaml_inline(scalar).unwrap_or_default();
            out.push_str(&format!("{pad}{s}\n"));
        }
    }
}

/// A JSON value as a YAML document (block style, strings quoted only
/// when needed).
pub fn to_yaml(v: &J) -> String {
    let mut out = String::new();
    yaml_block(&mut out, v, 0);
    out
}

/// A JSON value as pretty JSON or YAML (the `-o json|yaml` output).
pub fn render_value(v: &J, format: OutputFormat) -> String {
    match format {
        OutputFormat::Yaml => to_yaml(v),
        _ => {
            let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
            s.push('\n');
            s
        }
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn write_out(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}

/// Formats seconds as `1d 2h 3m 4s` (leading zero units left out).
pub fn format_uptime(secs: i64) -> String {
    if secs < 0 {
        return format!("{secs}s");
    }
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    let mut parts = Vec::new();
    if d > 0 {
        parts.push(format!("{d}d"));
    }
    if d > 0 || h > 0 {
        parts.push(format!("{h}h"));
    }
    if d > 0 || h > 0 || m > 0 {
        parts.push(format!("{m}m"));
    }
    parts.push(format!("{s}s"));
    parts.join(" ")
}

// ---------------------------------------------------------------------------
// Status
// ---------------------------------------------------------------------------

/// Attributes `status` asks for, per entity type.
const ROUTER_ATTRS: &[&str] = &[
    "id",
    "version",
    "mode",
    "uptimeSeconds",
    "connectionCount",
    "nodeCount",
    "addrCount",
    "linkCount",
    "flowsActive",
    "flowsOpened",
];
const CONNECTION_ATTRS: &[&str] = &[
    "identity",
    "host",
    "container",
    "role",
    "dir",
    "peerRouter",
    "cost",
    "isEncrypted",
    "uptimeSeconds",
];
const CONNECTOR_ATTRS: &[&str] = &[
    "name",
    "host",
    "port",
    "role",
    "cost",
    "connectionStatus",
    "connectionMsg",
];
const NODE_ATTRS: &[&str] = &["id", "nextHop", "cost"];
const ADDRESS_ATTRS: &[&str] = &[
    "key",
    "distribution",
    "subscriberCount",
    "remoteCount",
    "flowsActive",
    "flowsOpened",
    "bytesIn",
    "bytesOut",
];
const TCP_LISTENER_ATTRS: &[&str] = &[
    "name",
    "host",
    "port",
    "address",
    "operStatus",
    "flowsActive",
    "flowsOpened",
    "bytesIn",
    "bytesOut",
];
const TCP_CONNECTOR_ATTRS: &[&str] = &[
    "name",
    "host",
    "port",
    "address",
    "flowsActive",
    "flowsOpened",
    "flowsFailed",
    "bytesIn",
    "bytesOut",
];

/// The QUERY answers `status` is made of; an `Err` is the agent's error
/// for that type (shown in its section; the rest is still shown).
#[derive(Debug, Clone)]
pub struct StatusInput {
    pub router: Result<QueryResult, String>,
    pub connections: Result<QueryResult, String>,
    pub connectors: Result<QueryResult, String>,
    pub nodes: Result<QueryResult, String>,
    pub addresses: Result<QueryResult, String>,
    pub tcp_listeners: Result<QueryResult, String>,
    pub tcp_connectors: Result<QueryResult, String>,
}

/// One table of the status report: `(JSON key, table header)` columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    pub key: &'static str,
    pub title: &'static str,
    pub columns: Vec<(&'static str, &'static str)>,
    pub rows: Vec<Vec<J>>,
    pub error: Option<String>,
}

/// What `tether status` shows.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusReport {
    /// The router's own attributes (id, version, uptimeSeconds, ...).
    pub router: JsonMap<String, J>,
    pub router_error: Option<String>,
    pub sections: Vec<Section>,
}

fn records(q: &QueryResult) -> Vec<JsonMap<String, J>> {
    q.records().iter().map(attributes_to_json).collect()
}

fn field(rec: &JsonMap<String, J>, attr: &str) -> J {
    rec.get(attr).cloned().unwrap_or(J::Null)
}

fn section(
    key: &'static str,
    title: &'static str,
    columns: &[(&'static str, &'static str)],
    input: &Result<QueryResult, String>,
    row: impl Fn(&JsonMap<String, J>) -> Option<Vec<J>>,
) -> Section {
    let (rows, error) = match input {
        Ok(q) => (records(q).iter().filter_map(row).collect(), None),
        Err(e) => (Vec::new(), Some(e.clone())),
    };
    Section {
        key,
        title,
        columns: columns.to_vec(),
        rows,
        error,
    }
}

/// Builds the status report from the QUERY answers (pure: no I/O).
pub fn assemble_status(input: &StatusInput) -> StatusReport {
    let (router, router_error) = match &input.router {
        Ok(q) => match records(q).into_iter().next() {
            Some(r) => (r, None),
            None => (
                JsonMap::new(),
                Some("the router entity is missing".to_string()),
            ),
        },
        Err(e) => (JsonMap::new(), Some(e.clone())),
    };
    let self_id = router.get("id").and_then(J::as_str).map(str::to_string);

    let links = section(
        "interRouterLinks",
        "Inter-router links",
        &[
            ("peerRouter", "peer"),
            ("dir", "dir"),
            ("cost", "cost"),
            ("host", "host"),
            ("connectionId", "connection"),
            ("uptimeSeconds", "uptime-s"),
        ],
        &input.connections,
        |r| {
            if field(r, "role").as_str() != Some("inter-router") {
                return None;
            }
            let peer = match field(r, "peerRouter") {
                J::Null => field(r, "container"),
                p => p,
            };
            Some(vec![
                peer,
                field(r, "dir"),
                field(r, "cost"),
                field(r, "host"),
                field(r, "identity"),
                field(r, "uptimeSeconds"),
            ])
        },
    );

    let connectors = section(
        "connectors",
        "Connectors",
        &[
            ("name", "name"),
            ("host", "host"),
            ("port", "port"),
            ("cost", "cost"),
            ("connectionStatus", "status"),
            ("connectionMsg", "message"),
        ],
        &input.connectors,
        |r| {
            Some(vec![
                field(r, "name"),
                field(r, "host"),
                field(r, "port"),
                field(r, "cost"),
                field(r, "connectionStatus"),
                field(r, "connectionMsg"),
            ])
        },
    );

    let routers = section(
        "routers",
        "Routers reachable",
        &[("id", "id"), ("nextHop", "next-hop"), ("cost", "cost")],
        &input.nodes,
        |r| {
            let id = field(r, "id");
            let is_self = match &self_id {
                Some(me) => id.as_str() == Some(me.as_str()),
                None => field(r, "cost").is_null(),
            };
            if is_self {
                return None;
            }
            Some(vec![id, field(r, "nextHop"), field(r, "cost")])
        },
    );

    let addresses = section(
        "addresses",
        "Addresses",
        &[
            ("class", "class"),
            ("address", "address"),
            ("distribution", "distribution"),
            ("localConsumers", "local"),
            ("remoteCount", "remote"),
            ("flowsActive", "flows-active"),
            ("flowsOpened", "flows-opened"),
            ("bytesIn", "bytes-in"),
            ("bytesOut", "bytes-out"),
        ],
        &input.addresses,
        |r| {
            let key = field(r, "key");
            let key = key.as_str().unwrap_or_default();
            let mut chars = key.chars();
            let class = chars.next().map(String::from).unwrap_or_default();
            // Router addresses (`R_topo/0/<id>/`) are the routers section.
            if class == "R" {
                return None;
            }
            Some(vec![
                J::String(class),
                J::String(chars.as_str().to_string()),
                field(r, "distribution"),
                field(r, "subscriberCount"),
                field(r, "remoteCount"),
                field(r, "flowsActive"),
                field(r, "flowsOpened"),
                field(r, "bytesIn"),
                field(r, "bytesOut"),
            ])
        },
    );

    let tcp_listeners = section(
        "tcpListeners",
        "TCP listeners",
        &[
            ("name", "name"),
            ("host", "host"),
            ("port", "port"),
            ("address", "address"),
            ("operStatus", "status"),
            ("flowsActive", "flows-active"),
            ("flowsOpened", "flows-opened"),
            ("bytesIn", "bytes-in"),
            ("bytesOut", "bytes-out"),
        ],
        &input.tcp_listeners,
        |r| Some(TCP_LISTENER_ATTRS.iter().map(|a| field(r, a)).collect()),
    );

    let tcp_connectors = section(
        "tcpConnectors",
        "TCP connectors",
        &[
            ("name", "name"),
            ("host", "host"),
            ("port", "port"),
            ("address", "address"),
            ("flowsActive", "flows-active"),
            ("flowsOpened", "flows-opened"),
            ("flowsFailed", "flows-failed"),
            ("bytesIn", "bytes-in"),
            ("bytesOut", "bytes-out"),
        ],
        &input.tcp_connectors,
        |r| Some(TCP_CONNECTOR_ATTRS.iter().map(|a| field(r, a)).collect()),
    );

    StatusReport {
        router,
        router_error,
        sections: vec![
            links,
            connectors,
            routers,
            addresses,
            tcp_listeners,
            tcp_connectors,
        ],
    }
}

impl StatusReport {
    /// Whether any part could not be read.
    pub fn has_errors(&self) -> bool {
        self.router_error.is_some() || self.sections.iter().any(|s| s.error.is_some())
    }

    /// One object: `router`, then each section as a list of objects, and
    /// `errors` (section -> message) when some part failed.
    pub fn to_json(&self) -> J {
        let mut top = JsonMap::new();
        top.insert(
            "router".into(),
            if self.router_error.is_some() {
                J::Null
            } else {
                J::Object(self.router.clone())
            },
        );
        let mut errors = JsonMap::new();
        if let Some(e) = &self.router_error {
            errors.insert("router".into(), J::String(e.clone()));
        }
        for s in &self.sections {
            let rows = s
                .rows
                .iter()
                .map(|r| {
                    J::Object(
                        s.columns
                            .iter()
                            .zip(r)
                            .map(|((k, _), v)| (k.to_string(), v.clone()))
                            .collect(),
                    )
                })
                .collect();
            top.insert(s.key.into(), J::Array(rows));
            if let Some(e) = &s.error {
                errors.insert(s.key.into(), J::String(e.clone()));
            }
        }
        if !errors.is_empty() {
            top.insert("errors".into(), J::Object(errors));
        }
        J::Object(top)
    }

    /// The human-readable report: the router block, then one titled table
    /// per section.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        match &self.router_error {
            Some(e) => out.push_str(&format!("Router\n  error: {e}\n")),
            None => {
                let id = self.router.get("id").map(cell_text).unwrap_or_default();
                out.push_str(&format!("Router {id}\n"));
                let mut rows = Vec::new();
                for (k, v) in &self.router {
                    if k == "id" || v.is_null() {
                        continue;
                    }
                    let text = match (k.as_str(), v.as_i64()) {
                        ("uptimeSeconds", Some(s)) if s >= 60 => {
                            format!("{} ({s} s)", format_uptime(s))
                        }
                        ("uptimeSeconds", Some(s)) => format_uptime(s),
                        _ => cell_text(v),
                    };
                    rows.push((router_label(k), text));
                }
                let w = rows
                    .iter()
                    .map(|(k, _)| k.chars().count())
                    .max()
                    .unwrap_or(0);
                for (k, text) in rows {
                    out.push_str(&format!("  {k:<w$}  {text}\n"));
                }
            }
        }
        for s in &self.sections {
            out.push('\n');
            out.push_str(s.title);
            out.push('\n');
            if let Some(e) = &s.error {
                out.push_str(&format!("  error: {e}\n"));
            } else if s.rows.is_empty() {
                out.push_str("  (none)\n");
            } else {
                let headers: Vec<&str> = s.columns.iter().map(|(_, h)| *h).collect();
                out.push_str(&render_table(&headers, &s.rows, 2));
            }
        }
        out
    }
}

/// The label of a router attribute in the table report.
fn router_label(attr: &str) -> String {
    match attr {
        "uptimeSeconds" => "uptime",
        "connectionCount" => "connections",
        "nodeCount" => "routers",
        "addrCount" => "addresses",
        "linkCount" => "links",
        "flowsActive" => "flows active",
        "flowsOpened" => "flows opened",
        other => other,
    }
    .to_string()
}

fn names(attrs: &[&str]) -> Vec<String> {
    attrs.iter().map(|a| a.to_string()).collect()
}

/// Runs the status queries; an agent error for a type stays in its
/// section, anything else (connection lost, no answer) ends the command.
async fn collect_status(client: &mut MgmtClient) -> Result<StatusInput, MgmtError> {
    async fn one(
        client: &mut MgmtClient,
        short: &str,
        attrs: &[&str],
    ) -> Result<Result<QueryResult, String>, MgmtError> {
        match client
            .query_all(&full_type_name(short), &names(attrs))
            .await
        {
            Ok(q) => Ok(Ok(q)),
            Err(e @ MgmtError::Status { .. }) => Ok(Err(e.to_string())),
            Err(e) => Err(e),
        }
    }
    Ok(StatusInput {
        router: one(client, "router", ROUTER_ATTRS).await?,
        connections: one(client, "connection", CONNECTION_ATTRS).await?,
        connectors: one(client, "connector", CONNECTOR_ATTRS).await?,
        nodes: one(client, "router.node", NODE_ATTRS).await?,
        addresses: one(client, "router.address", ADDRESS_ATTRS).await?,
        tcp_listeners: one(client, "tcpListener", TCP_LISTENER_ATTRS).await?,
        tcp_connectors: one(client, "tcpConnector", TCP_CONNECTOR_ATTRS).await?,
    })
}

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------

/// Runs `f` with a connected client on a fresh single-threaded runtime,
/// then closes the connection.
fn with_client<T, F, Fut>(args: &MgmtArgs, f: F) -> Result<T, MgmtError>
where
    F: FnOnce(MgmtClient) -> Fut,
    Fut: Future<Output = (MgmtClient, Result<T, MgmtError>)>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| MgmtError::Usage(format!("cannot start a runtime: {e}")))?;
    let opts = args.client_options();
    rt.block_on(async move {
        let client = MgmtClient::connect(&opts).await?;
        let (client, result) = f(client).await;
        client.close().await;
        result
    })
}

fn fail(e: &MgmtError) -> ExitCode {
    eprintln!("error: {e}");
    if e.is_usage() {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

/// `tether status`.
pub fn status(args: &MgmtArgs) -> ExitCode {
    let input = with_client(args, |mut c| async move {
        let r = collect_status(&mut c).await;
        (c, r)
    });
    let report = match input {
        Ok(i) => assemble_status(&i),
        Err(e) => return fail(&e),
    };
    match args.output {
        OutputFormat::Table => write_out(&report.to_table()),
        format => write_out(&render_value(&report.to_json(), format)),
    }
    if report.has_errors() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Renders a QUERY answer: a table, or a list of objects.
pub fn render_query(q: &QueryResult, format: OutputFormat) -> String {
    match format {
        OutputFormat::Table => {
            let headers: Vec<&str> = q.attribute_names.iter().map(String::as_str).collect();
            let rows: Vec<Vec<J>> = q
                .rows
                .iter()
                .map(|r| r.iter().map(to_json).collect())
                .collect();
            render_table(&headers, &rows, 0)
        }
        format => {
            let list = J::Array(
                q.records()
                    .iter()
                    .map(|r| J::Object(attributes_to_json(r)))
                    .collect(),
            );
            render_value(&list, format)
        }
    }
}

/// Renders one entity: `attribute  value` lines, or an object.
pub fn render_entity(attrs: &Attributes, format: OutputFormat) -> String {
    match format {
        OutputFormat::Table => {
            let rows: Vec<Vec<J>> = attrs
                .iter()
                .map(|(k, v)| vec![J::String(k.clone()), J::String(cell_text(&to_json(v)))])
                .collect();
            render_table(&["attribute", "value"], &rows, 0)
        }
        format => render_value(&J::Object(attributes_to_json(attrs)), format),
    }
}

/// `tether query TYPE [ATTR...]`.
pub fn query(args: &MgmtArgs, entity_type: &str, attributes: &[String]) -> ExitCode {
    let ty = full_type_name(entity_type);
    let attributes = attributes.to_vec();
    let result = with_client(args, |mut c| async move {
        let r = c.query_all(&ty, &attributes).await;
        (c, r)
    });
    match result {
        Ok(q) => {
            write_out(&render_query(&q, args.output));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `tether create TYPE key=value...`.
pub fn create(args: &MgmtArgs, entity_type: &str, assignments: &[String]) -> ExitCode {
    let (name, attrs) = match parse_create_args(assignments) {
        Ok(x) => x,
        Err(e) => return usage(&e),
    };
    let ty = full_type_name(entity_type);
    let result = with_client(args, |mut c| async move {
        let r = c.create(&ty, &name, attrs).await;
        (c, r)
    });
    match result {
        Ok(entity) => {
            write_out(&render_entity(&entity, args.output));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `tether delete TYPE NAME`.
pub fn delete(args: &MgmtArgs, entity_type: &str, name: &str) -> ExitCode {
    let ty = full_type_name(entity_type);
    let (ty2, name2) = (ty.clone(), name.to_string());
    let result = with_client(args, |mut c| async move {
        let r = c.delete(&ty2, &name2).await;
        (c, r)
    });
    match result {
        Ok(()) => {
            match args.output {
                OutputFormat::Table => write_out(&format!("deleted {ty} {name}\n")),
                format => {
                    let mut m = JsonMap::new();
                    m.insert("type".into(), J::String(ty));
                    m.insert("name".into(), J::String(name.to_string()));
                    m.insert("deleted".into(), J::Bool(true));
                    write_out(&render_value(&J::Object(m), format));
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn type_names_map() {
        assert_eq!(
            full_type_name("tcpListener"),
            "io.tether.router.tcpListener"
        );
        assert_eq!(
            full_type_name("tcplistener"),
            "io.tether.router.tcpListener"
        );
        assert_eq!(
            full_type_name("tcp-listener"),
            "io.tether.router.tcpListener"
        );
        assert_eq!(full_type_name("address"), "io.tether.router.router.address");
        assert_eq!(
            full_type_name("router.address"),
            "io.tether.router.router.address"
        );
        assert_eq!(full_type_name("connection"), "io.tether.router.connection");
        assert_eq!(full_type_name("node"), "io.tether.router.router.node");
        assert_eq!(full_type_name("router"), "io.tether.router.router");
        assert_eq!(
            full_type_name("somethingNew"),
            "io.tether.router.somethingNew"
        );
        for full in [
            "io.tether.router.connection",
            "io.skupper.router.router.address",
            "org.apache.qpid.dispatch.router",
            "org.amqp.management",
        ] {
            assert_eq!(full_type_name(full), full);
        }
    }

    #[test]
    fn assignments_parse() {
        let p = |s: &str| parse_assignment(s).expect(s);
        assert_eq!(p("cost=5"), ("cost".into(), Value::Long(5)));
        assert_eq!(p("cost=-5"), ("cost".into(), Value::Long(-5)));
        assert_eq!(p("enable=true"), ("enable".into(), Value::Bool(true)));
        assert_eq!(p("enable=false"), ("enable".into(), Value::Bool(false)));
        assert_eq!(
            p("mode=True"),
            ("mode".into(), Value::String("True".into()))
        );
        assert_eq!(p("x=1.5"), ("x".into(), Value::String("1.5".into())));
        assert_eq!(p("x=a=b"), ("x".into(), Value::String("a=b".into())));
        assert_eq!(p("x="), ("x".into(), Value::String(String::new())));
        assert_eq!(p("x=\"42\""), ("x".into(), Value::String("42".into())));
        assert_eq!(p("x='true'"), ("x".into(), Value::String("true".into())));
        // Schema string attributes stay strings.
        assert_eq!(
            p("port=9090"),
            ("port".into(), Value::String("9090".into()))
        );
        assert_eq!(p("name=123"), ("name".into(), Value::String("123".into())));
        assert!(parse_assignment("novalue").is_err());
        assert!(parse_assignment("=5").is_err());
    }

    #[test]
    fn create_args_need_a_name_once() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (name, attrs) =
            parse_create_args(&args(&["name=web", "port=9090", "address=web"])).expect("ok");
        assert_eq!(name, "web");
        assert_eq!(attrs.len(), 3);
        assert!(parse_create_args(&args(&["port=1"]))
            .expect_err("no name")
            .contains("name=NAME"));
        assert!(parse_create_args(&args(&["name="])).is_err());
        assert!(parse_create_args(&args(&["name=a", "name=b"]))
            .expect_err("twice")
            .contains("twice"));
    }

    #[test]
    fn yaml_of_nested_values() {
        let v = json!({
            "router": {"id": "east", "uptimeSeconds": 12, "mode": null},
            "empty": [],
            "none": {},
            "list": [1, "two", true, [3, 4], {"a": "b", "c": [5]}],
            "tricky": ["", " lead", "a: b", "x #c", "yes", "No", "null", "~", "12", "1.5",
                       "-x", "*ref", "trail:", "line\nbreak", "tab\there", "quote\"d",
                       "127.0.0.1:5672", "plain words", "M/backend", "é", "<<", "a\u{2028}b", "del\u{7f}"],
        });
        let y = to_yaml(&v);
        let expected = r#"router:
  id: east
  uptimeSeconds: 12
  mode: null
empty: []
none: {}
list:
  - 1
  - two
  - true
  - - 3
    - 4
  - a: b
    c:
      - 5
tricky:
  - ""
  - " lead"
  - "a: b"
  - "x #c"
  - "yes"
  - "No"
  - "null"
  - "~"
  - "12"
  - "1.5"
  - "-x"
  - "*ref"
  - "trail:"
  - "line\nbreak"
  - "tab\there"
  - quote"d
  - "127.0.0.1:5672"
  - plain words
  - M/backend
  - é
  - "<<"
  - "a\u2028b"
  - "del\u007f"
"#;
        assert_eq!(y, expected);
        assert_eq!(to_yaml(&json!("x")), "x\n");
        assert_eq!(to_yaml(&json!([])), "[]\n");
        assert_eq!(to_yaml(&json!([{"a": {"b": 1}}])), "- a:\n    b: 1\n");
        assert_eq!(to_yaml(&json!({"key: x": 1})), "\"key: x\": 1\n");
    }

    #[test]
    fn tables_align() {
        let t = render_table(
            &["name", "port", "flows"],
            &[
                vec![json!("web"), json!("9090"), json!(12)],
                vec![json!("database"), json!(null), json!(3)],
                vec![json!("x"), json!("1"), json!(null)],
            ],
            0,
        );
        let expected = "\
name      port  flows
--------  ----  -----
web       9090     12
database  -         3
x         1         -
";
        assert_eq!(t, expected);
        let t = render_table(&["a", "b"], &[vec![json!(["x", "y"]), json!({"k": 1})]], 2);
        assert_eq!(t, "  a    b\n  ---  -------\n  x,y  {\"k\":1}\n");
    }

    #[test]
    fn cells_escape_control_characters() {
        assert_eq!(cell_text(&json!("a\nb")), "a\\nb");
        assert_eq!(cell_text(&json!("it's \"q\" \\")), "it's \"q\" \\");
        assert_eq!(cell_text(&json!("é")), "é");
        assert_eq!(cell_text(&json!([])), "-");
    }

    #[test]
    fn uptimes_format() {
        assert_eq!(format_uptime(0), "0s");
        assert_eq!(format_uptime(59), "59s");
        assert_eq!(format_uptime(3723), "1h 2m 3s");
        assert_eq!(format_uptime(90_061), "1d 1h 1m 1s");
        assert_eq!(format_uptime(86_400), "1d 0h 0m 0s");
    }

    fn q(names: &[&str], rows: Vec<Vec<Value>>) -> Result<QueryResult, String> {
        Ok(QueryResult {
            attribute_names: names.iter().map(|s| s.to_string()).collect(),
            rows,
        })
    }

    fn s(x: &str) -> Value {
        Value::String(x.into())
    }

    fn canned() -> StatusInput {
        StatusInput {
            router: q(
                &["id", "version", "mode", "uptimeSeconds", "flowsActive"],
                vec![vec![
                    s("east"),
                    s("0.1.0"),
                    s("interior"),
                    Value::Long(3723),
                    Value::Long(2),
                ]],
            ),
            connections: q(
                &[
                    "identity",
                    "host",
                    "container",
                    "role",
                    "dir",
                    "peerRouter",
                    "cost",
                ],
                vec![
                    vec![
                        s("1"),
                        s("127.0.0.1:55672"),
                        s("west"),
                        s("inter-router"),
                        s("out"),
                        s("west"),
                        Value::Long(1),
                    ],
                    vec![
                        s("2"),
                        s("127.0.0.1:40000"),
                        s("client"),
                        s("normal"),
                        s("in"),
                        Value::Null,
                        Value::Null,
                    ],
                    vec![
                        s("3"),
                        s("127.0.0.1:40001"),
                        s("north"),
                        s("inter-router"),
                        s("in"),
                        Value::Null,
                        Value::Long(5),
                    ],
                ],
            ),
            connectors: q(
                &[
                    "name",
                    "host",
                    "port",
                    "cost",
                    "connectionStatus",
                    "connectionMsg",
                ],
                vec![vec![
                    s("to-west"),
                    s("127.0.0.1"),
                    s("55672"),
                    Value::Long(1),
                    s("UP"),
                    Value::Null,
                ]],
            ),
            nodes: q(
                &["id", "nextHop", "cost"],
                vec![
                    vec![s("east"), Value::Null, Value::Null],
                    vec![s("west"), Value::Null, Value::Long(1)],
                    vec![s("south"), s("west"), Value::Long(2)],
                ],
            ),
            addresses: q(
                &[
                    "key",
                    "distribution",
                    "subscriberCount",
                    "remoteCount",
                    "flowsActive",
                    "flowsOpened",
                    "bytesIn",
                    "bytesOut",
                ],
                vec![
                    vec![
                        s("Tbackend"),
                        s("balanced"),
                        Value::Long(1),
                        Value::Long(2),
                        Value::Long(1),
                        Value::Long(10),
                        Value::Long(1000),
                        Value::Long(2000),
                    ],
                    vec![
                        s("R_topo/0/west/"),
                        s("closest"),
                        Value::Long(0),
                        Value::Long(1),
                        Value::Long(0),
                        Value::Long(0),
                        Value::Long(0),
                        Value::Long(0),
                    ],
                    vec![
                        s("Mqueue/a"),
                        s("balanced"),
                        Value::Long(0),
                        Value::Long(1),
                        Value::Long(0),
                        Value::Long(0),
                        Value::Long(0),
                        Value::Long(0),
                    ],
                ],
            ),
            tcp_listeners: q(
                &["name", "host", "port", "address", "operStatus"],
                vec![vec![
                    s("l1"),
                    s("127.0.0.1"),
                    s("9000"),
                    s("backend"),
                    s("up"),
                ]],
            ),
            tcp_connectors: Err("501 Not Implemented".into()),
        }
    }

    #[test]
    fn status_assembles_sections() {
        let report = assemble_status(&canned());
        assert!(report.has_errors());
        let j = report.to_json();
        assert_eq!(j["router"]["id"], "east");
        assert_eq!(j["router"]["uptimeSeconds"], 3723);
        assert_eq!(
            j["interRouterLinks"],
            json!([
                {"peerRouter": "west", "dir": "out", "cost": 1, "host": "127.0.0.1:55672",
                 "connectionId": "1", "uptimeSeconds": null},
                {"peerRouter": "north", "dir": "in", "cost": 5, "host": "127.0.0.1:40001",
                 "connectionId": "3", "uptimeSeconds": null},
            ])
        );
        assert_eq!(j["connectors"][0]["connectionStatus"], "UP");
        assert_eq!(
            j["routers"],
            json!([
                {"id": "west", "nextHop": null, "cost": 1},
                {"id": "south", "nextHop": "west", "cost": 2},
            ])
        );
        assert_eq!(j["addresses"].as_array().map(Vec::len), Some(2));
        assert_eq!(j["addresses"][0]["class"], "T");
        assert_eq!(j["addresses"][0]["address"], "backend");
        assert_eq!(j["addresses"][0]["localConsumers"], 1);
        assert_eq!(j["addresses"][0]["remoteCount"], 2);
        assert_eq!(j["addresses"][0]["bytesOut"], 2000);
        assert_eq!(j["addresses"][1]["address"], "queue/a");
        assert_eq!(j["tcpListeners"][0]["operStatus"], "up");
        assert_eq!(j["tcpListeners"][0]["flowsActive"], J::Null);
        assert_eq!(j["tcpConnectors"], json!([]));
        assert_eq!(j["errors"], json!({"tcpConnectors": "501 Not Implemented"}));

        let t = report.to_table();
        assert!(t.starts_with("Router east\n"), "{t}");
        assert!(t.contains("\n  uptime        1h 2m 3s (3723 s)\n"), "{t}");
        assert!(t.contains("\n  flows active  2\n"), "{t}");
        assert!(
            t.contains("\nInter-router links\n  peer   dir  cost  host"),
            "{t}"
        );
        assert!(t.contains("\n  south  west         2\n"), "{t}");
        assert!(
            t.contains("\nTCP connectors\n  error: 501 Not Implemented\n"),
            "{t}"
        );
        assert!(!t.contains("_topo"), "{t}");
    }

    #[test]
    fn status_without_router_entity_still_shows_sections() {
        let mut input = canned();
        input.router = Err("404 unknown entity type".into());
        input.tcp_connectors = q(&["name"], vec![]);
        let report = assemble_status(&input);
        let j = report.to_json();
        assert_eq!(j["router"], J::Null);
        assert_eq!(j["errors"]["router"], "404 unknown entity type");
        // Without our id, self is the node without a cost.
        assert_eq!(j["routers"].as_array().map(Vec::len), Some(2));
        let t = report.to_table();
        assert!(
            t.starts_with("Router\n  error: 404 unknown entity type\n"),
            "{t}"
        );
        assert!(t.contains("\nTCP connectors\n  (none)\n"), "{t}");
    }

    #[test]
    fn query_renders_all_formats() {
        let r = QueryResult {
            attribute_names: vec!["name".into(), "port".into(), "flowsActive".into()],
            rows: vec![vec![s("web"), s("9090"), Value::Long(3)]],
        };
        assert_eq!(
            render_query(&r, OutputFormat::Table),
            "name  port  flowsActive\n----  ----  -----------\nweb   9090            3\n"
        );
        let j: J = serde_json::from_str(&render_query(&r, OutputFormat::Json)).expect("json");
        assert_eq!(
            j,
            json!([{"name": "web", "port": "9090", "flowsActive": 3}])
        );
        assert_eq!(
            render_query(&r, OutputFormat::Yaml),
            "- name: web\n  port: \"9090\"\n  flowsActive: 3\n"
        );
    }

    #[test]
    fn entities_render() {
        let mut a = Attributes::new();
        a.insert("name".into(), s("web"));
        a.insert("cost".into(), Value::Long(4));
        assert_eq!(
            render_entity(&a, OutputFormat::Table),
            "attribute  value\n---------  -----\nname       web\ncost       4\n"
        );
        assert_eq!(
            render_entity(&a, OutputFormat::Yaml),
            "name: web\ncost: 4\n"
        );
    }

    #[test]
    fn timeouts_parse() {
        assert_eq!(parse_timeout("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_timeout("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("-1").is_err());
        assert!(parse_timeout("soon").is_err());
    }
}
