//! An AMQP management client: what `tether status`, `tether query`,
//! `tether create` and `tether delete` use to talk to a router's
//! management agent.
//!
//! The wire format is the AMQP Management draft as Qpid Dispatch and
//! skupper-router speak it (and their `qdstat`/`skstat`, `qdmanage`/
//! `skmanage` tools send): a request message to `$management` (or to
//! `_topo/0/<router-id>/$management` for any router in the network, routed
//! through the one we are connected to) whose `application_properties` carry
//! `operation`, the entity type and name, and paging; the answer comes back
//! on our *dynamic* receiver (its address, assigned by the router, is the
//! request's `reply_to`), with `statusCode`/`statusDescription` and a body.
//!
//! [`MgmtClient::connect`] dials the router (`amqp://`, or `amqps://` with a
//! CA and optionally a client certificate, see [`TlsOptions`]), does SASL
//! ANONYMOUS (PLAIN when the URL has `user:password@`), opens a session, the
//! reply receiver and a sender to the management address. Each request has
//! one deadline ([`ClientOptions::timeout`]); every way it can fail has its
//! own [`MgmtError`] saying what happened: no credit (nothing serves the
//! management address), the request released or rejected, no answer in
//! time, or an answer with `statusCode >= 300`.
//!
//! Values stay [`serde_amqp::Value`] here; [`to_json`] turns them into
//! `serde_json` values for output.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::connection::{ConnectionHandle, OpenError};
use fe2o3_amqp::link::{DetachError, RecvError, SendError};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions::{Error as AmqpErrorFrame, ErrorCondition};
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Message, MessageId, Outcome, Properties, Source,
};
use fe2o3_amqp::types::primitives::{OrderedMap, SimpleValue, Symbol, Value};
use fe2o3_amqp::types::sasl::SaslCode;
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The router a command talks to when none is given.
pub const DEFAULT_URL: &str = "amqp://127.0.0.1:5672";
/// How long one request (or connecting) may take when not told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Prefix of Tether's entity type names (`io.tether.router.address`, ...).
pub const TYPE_PREFIX: &str = "io.tether.router.";
/// Rows asked for per QUERY page by [`MgmtClient::query_all`].
pub const QUERY_PAGE: u32 = 500;
/// The management node's own address on the router we are connected to.
pub const LOCAL_MANAGEMENT_ADDRESS: &str = "$management";

/// At most this many pages in one [`MgmtClient::query_all`]: an agent that
/// ignored `offset` would otherwise be paged forever.
const MAX_PAGES: u32 = 10_000;

/// Attributes of one entity, by name, in the order the router sent them.
pub type Attributes = OrderedMap<String, Value>;

/// What went wrong talking to a router's management agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MgmtError {
    /// The router URL cannot be used.
    #[error("invalid router URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// Options that do not go together (e.g. `--ca` with `amqp://`).
    #[error("{0}")]
    Usage(String),
    /// A CA, certificate or key file could not be used.
    #[error("cannot use TLS file {}: {reason}", path.display())]
    TlsFile { path: PathBuf, reason: String },
    /// TCP, TLS, SASL or the AMQP open failed.
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    /// The session or a link failed (attach refused, link detached, ...).
    #[error("{url}: {reason}")]
    Link { url: String, reason: String },
    /// The router never gave the request sender credit: nothing consumes
    /// the management address there.
    #[error(
        "{url} gave no credit to send to {address} within {}: nothing serves that address \
         (no management agent on the router{})",
        secs(*timeout),
        if address.starts_with("_topo/") { ", or the target router is unreachable" } else { "" }
    )]
    NoCredit {
        url: String,
        address: String,
        timeout: Duration,
    },
    /// The request went out but no answer came back in time.
    #[error("no answer from {address} at {url} within {}{}", secs(*timeout), note)]
    NoAnswer {
        url: String,
        address: String,
        timeout: Duration,
        /// Extra detail, e.g. " (the request was never settled)".
        note: &'static str,
    },
    /// The router rejected the request message.
    #[error("{url} rejected the request to {address}: {reason}")]
    Rejected {
        url: String,
        address: String,
        reason: String,
    },
    /// The router released (or modified) the request: it reached no agent.
    #[error("{url} released the request to {address}: no management agent took it")]
    Released { url: String, address: String },
    /// The agent answered with `statusCode >= 300`.
    #[error("{code} {description}")]
    Status { code: i64, description: String },
    /// The answer could not be understood.
    #[error("bad answer from {address}: {reason}")]
    BadResponse { address: String, reason: String },
}

impl MgmtError {
    /// The agent's `statusCode`, for [`MgmtError::Status`].
    pub fn status_code(&self) -> Option<i64> {
        match self {
            MgmtError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the error is the caller's (bad URL or options), not the
    /// router's or the network's.
    pub fn is_usage(&self) -> bool {
        matches!(self, MgmtError::BadUrl { .. } | MgmtError::Usage(_))
    }
}

/// Formats a timeout as "10 s" / "2.5 s".
fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// Formats an I/O error without the trailing " (os error N)".
fn io_reason(err: &io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Where to connect: parsed from `amqp://[user[:password]@]host[:port]`,
/// `amqps://...`, `host:port` or `host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `amqps://`: TLS from the first byte.
    pub tls: bool,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// SASL PLAIN user (percent-decoded); ANONYMOUS when `None`.
    pub user: Option<String>,
    pub password: Option<String>,
}

impl Endpoint {
    /// Parses a router URL. Without a scheme, `amqp://` is meant; without a
    /// port, 5672 (`amqp`) or 5671 (`amqps`).
    pub fn parse(url: &str) -> Result<Endpoint, MgmtError> {
        let bad = |reason: &str| MgmtError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let text = url.trim();
        let (tls, rest) = match text.split_once("://") {
            Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
                "amqp" => (false, rest),
                "amqps" => (true, rest),
                _ => return Err(bad("the scheme must be amqp:// or amqps://")),
            },
            None => (false, text),
        };
        // The authority ends at the first '/', '?' or '#'.
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (user, pass) = match u.split_once(':') {
                    Some((user, pass)) => (user, Some(pass)),
                    None => (u, None),
                };
                if user.is_empty() {
                    return Err(bad("empty user name before '@'"));
                }
                let user = percent_decode(user).ok_or_else(|| bad("bad %-escape in the user"))?;
                let password = match pass {
                    Some(p) => {
                        Some(percent_decode(p).ok_or_else(|| bad("bad %-escape in the password"))?)
                    }
                    None => None,
                };
                (Some(user), password)
            }
        };
        let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
            let (host, after) = inner
                .split_once(']')
                .ok_or_else(|| bad("missing ']' after the IPv6 address"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("expected ':port' after ']'"))?,
                ),
            };
            (host, port)
        } else {
            match hostport.split_once(':') {
                Some((h, p)) if !p.contains(':') => (h, Some(p)),
                Some(_) => return Err(bad("write an IPv6 address in brackets: [::1]:5672")),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => {
                if tls {
                    5671
                } else {
                    5672
                }
            }
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n != 0 => n,
                _ => return Err(bad(&format!("bad port {p:?} (1..=65535)"))),
            },
        };
        Ok(Endpoint {
            tls,
            host: host.to_string(),
            port,
            user,
            password,
        })
    }
}

/// The URL without the password, for messages.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "amqps" } else { "amqp" };
        write!(f, "{scheme}://")?;
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// TLS for `amqps://`: the CA that signed the router's certificate, and
/// optionally our own certificate and key (both or neither).
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsOptions {
    fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }

    /// A rustls client configuration (ring provider) from the files.
    fn client_config(&self) -> Result<rustls::ClientConfig, MgmtError> {
        let ca = self.ca.as_deref().ok_or_else(|| {
            MgmtError::Usage(
                "amqps:// needs --ca FILE (the CA bundle that signed the router's certificate)"
                    .into(),
            )
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in load_certs(ca)? {
            roots.add(cert).map_err(|e| MgmtError::TlsFile {
                path: ca.to_path_buf(),
                reason: crate::tls::describe_tls_error(&e),
            })?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| MgmtError::Usage(format!("TLS: {e}")))?
            .with_root_certificates(roots);
        match (&self.cert, &self.key) {
            (None, None) => Ok(builder.with_no_client_auth()),
            (Some(cert), Some(key)) => {
                let chain = load_certs(cert)?;
                let key_der =
                    PrivateKeyDer::from_pem_file(key).map_err(|e| MgmtError::TlsFile {
                        path: key.clone(),
                        reason: match e {
                            rustls::pki_types::pem::Error::NoItemsFound => {
                                "no PRIVATE KEY section in the file".to_string()
                            }
                            other => pem_reason(&other),
                        },
                    })?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| MgmtError::TlsFile {
                        path: key.clone(),
                        reason: crate::tls::describe_tls_error(&e),
                    })
            }
            _ => Err(MgmtError::Usage(
                "--cert and --key go together (a client certificate and its key)".into(),
            )),
        }
    }
}

/// A PEM error in words (I/O errors without the "(os error N)").
fn pem_reason(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io_reason(io),
        other => format!("not usable PEM: {other}"),
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, MgmtError> {
    let err = |reason: String| MgmtError::TlsFile {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(pem_reason(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(pem_reason(&e)))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE section in the file".into()));
    }
    Ok(certs)
}

/// How to reach the management agent.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Router URL, see [`Endpoint::parse`].
    pub url: String,
    /// Manage this router (any in the network, by id) instead of the one
    /// we connect to.
    pub target_router: Option<String>,
    /// Deadline for connecting and for each request.
    pub timeout: Duration,
    pub tls: TlsOptions,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            url: DEFAULT_URL.to_string(),
            target_router: None,
            timeout: DEFAULT_TIMEOUT,
            tls: TlsOptions::default(),
        }
    }
}

/// The management address for a router: `$management` for the one we are
/// connected to, `_topo/0/<id>/$management` for any other.
pub fn management_address(target_router: Option<&str>) -> String {
    match target_router {
        Some(id) => format!("_topo/0/{id}/{LOCAL_MANAGEMENT_ADDRESS}"),
        None => LOCAL_MANAGEMENT_ADDRESS.to_string(),
    }
}

/// A QUERY answer: the attribute names and one row of values per entity.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryResult {
    pub attribute_names: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

impl QueryResult {
    /// Each row as an attribute map (missing trailing values are null).
    pub fn records(&self) -> Vec<Attributes> {
        self.rows
            .iter()
            .map(|row| {
                let mut m = Attributes::new();
                for (i, name) in self.attribute_names.iter().enumerate() {
                    m.insert(name.clone(), row.get(i).cloned().unwrap_or(Value::Null));
                }
                m
            })
            .collect()
    }
}

/// A decoded answer with `statusCode < 300`.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status_code: i64,
    pub status_description: String,
    pub body: Value,
}

/// A connection to one router's management agent. Requests go one at a
/// time (`&mut self`).
pub struct MgmtClient {
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
    sender: Sender,
    receiver: Receiver,
    /// Display form of the URL (no password).
    url: String,
    address: String,
    reply_to: String,
    timeout: Duration,
    next_id: u64,
}

impl fmt::Debug for MgmtClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MgmtClient")
            .field("url", &self.url)
            .field("address", &self.address)
            .field("reply_to", &self.reply_to)
            .finish_non_exhaustive()
    }
}

impl MgmtClient {
    /// Connects, opens a session, the dynamic reply receiver and the
    /// request sender, all within `opts.timeout`. Needs a tokio runtime
    /// (the AMQP connection runs as a spawned task).
    pub async fn connect(opts: &ClientOptions) -> Result<MgmtClient, MgmtError> {
        let endpoint = Endpoint::parse(&opts.url)?;
        if !endpoint.tls && !opts.tls.is_empty() {
            return Err(MgmtError::Usage(format!(
                "--ca/--cert/--key are for TLS: use amqps://{}:{}",
                endpoint.host, endpoint.port
            )));
        }
        let tls_config = if endpoint.tls {
            Some(opts.tls.client_config()?)
        } else {
            None
        };
        let url = endpoint.to_string();
        let deadline = Instant::now() + opts.timeout;
        let connect_err = |reason: String| MgmtError::Connect {
            url: url.clone(),
            reason,
        };
        let timed_out =
            |what: &str| connect_err(format!("no answer within {} ({what})", secs(opts.timeout)));

        let tcp = tokio::time::timeout_at(
            deadline,
            TcpStream::connect((endpoint.host.as_str(), endpoint.port)),
        )
        .await
        .map_err(|_| timed_out("TCP connect"))?
        .map_err(|e| connect_err(io_reason(&e)))?;
        let _ = tcp.set_nodelay(true);

        let pid = std::process::id();
        let sasl = match (&endpoint.user, &endpoint.password) {
            (Some(user), password) => SaslProfile::Plain {
                username: user.clone(),
                password: password.clone().unwrap_or_default(),
            },
            (None, _) => SaslProfile::Anonymous,
        };
        let builder = Connection::builder()
            .container_id(format!("tether-cli-{pid}"))
            .hostname(endpoint.host.as_str())
            .sasl_profile(sasl)
            .idle_time_out(60_000u32);

        let open = async {
            match tls_config {
                None => builder.open_with_stream(tcp).await,
                Some(config) => {
                    let name = ServerName::try_from(endpoint.host.clone()).map_err(|_| {
                        OpenError::Io(io::Error::other(format!(
                            "{:?} is not a valid TLS server name",
                            endpoint.host
                        )))
                    })?;
                    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                        .connect(name, tcp)
                        .await
                        .map_err(|e| {
                            OpenError::Io(io::Error::other(crate::tls::describe_handshake_error(
                                &e,
                            )))
                        })?;
                    builder.open_with_stream(tls).await
                }
            }
        };
        let mut connection = tokio::time::timeout_at(deadline, open)
            .await
            .map_err(|_| timed_out("TLS/SASL/AMQP open"))?
            .map_err(|e| connect_err(describe_open_error(&e, endpoint.tls)))?;

        let link_err = |reason: String| MgmtError::Link {
            url: url.clone(),
            reason,
        };
        let mut session = tokio::time::timeout_at(deadline, Session::begin(&mut connection))
            .await
            .map_err(|_| link_err(format!("no session within {}", secs(opts.timeout))))?
            .map_err(|e| link_err(format!("cannot begin a session: {e}")))?;

        let receiver = Receiver::builder()
            .name(format!("tether-cli-{pid}-reply"))
            .source(Source::builder().dynamic(true).build())
            .auto_accept(true)
            .attach(&mut session);
        let receiver = tokio::time::timeout_at(deadline, receiver)
            .await
            .map_err(|_| {
                link_err(format!(
                    "the reply receiver was not attached within {}",
                    secs(opts.timeout)
                ))
            })?
            .map_err(|e| link_err(format!("cannot attach a dynamic reply receiver: {e}")))?;
        let reply_to = receiver
            .source()
            .as_ref()
            .and_then(|s| s.address.clone())
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                link_err("the router assigned no address to the dynamic reply receiver".into())
            })?;

        let address = management_address(opts.target_router.as_deref());
        let sender = Sender::builder()
            .name(format!("tether-cli-{pid}-request"))
            .target(address.clone())
            .attach(&mut session);
        let sender = tokio::time::timeout_at(deadline, sender)
            .await
            .map_err(|_| {
                link_err(format!(
                    "the sender to {address} was not attached within {}",
                    secs(opts.timeout)
                ))
            })?
            .map_err(|e| link_err(format!("cannot attach a sender to {address}: {e}")))?;

        Ok(MgmtClient {
            connection,
            session,
            sender,
            receiver,
            url,
            address,
            reply_to,
            timeout: opts.timeout,
            next_id: 0,
        })
    }

    /// The address requests go to.
    pub fn management_address(&self) -> &str {
        &self.address
    }

    /// The dynamic address the router assigned to our reply receiver.
    pub fn reply_address(&self) -> &str {
        &self.reply_to
    }

    /// The router URL (without password).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends one request and waits for its answer. `properties` are the
    /// request's application properties; `statusCode >= 300` is returned as
    /// [`MgmtError::Status`].
    pub async fn request(
        &mut self,
        properties: Vec<(&str, SimpleValue)>,
        body: Value,
    ) -> Result<Response, MgmtError> {
        self.next_id += 1;
        let id = self.next_id;
        let deadline = Instant::now() + self.timeout;
        let mut app = OrderedMap::new();
        for (k, v) in properties {
            app.insert(k.to_string(), v);
        }
        let message = Message::builder()
            .properties(
                Properties::builder()
                    .message_id(id)
                    .correlation_id(id)
                    .to(self.address.clone())
                    .reply_to(self.reply_to.clone())
                    .build(),
            )
            .application_properties(ApplicationProperties(app))
            .value(body)
            .build();

        let url = self.url.clone();
        let address = self.address.clone();
        let timeout = self.timeout;
        let link_err = |reason: String| MgmtError::Link {
            url: url.clone(),
            reason,
        };

        // Waits for credit, then hands the transfer to the session.
        let settlement =
            match tokio::time::timeout_at(deadline, self.sender.send_batchable(message)).await {
                Err(_) => {
                    return Err(MgmtError::NoCredit {
                        url,
                        address,
                        timeout,
                    })
                }
                Ok(Err(e)) => return Err(link_err(describe_send_error(&e, &address))),
                Ok(Ok(fut)) => fut,
            };
        tokio::pin!(settlement);

        let receiver = &mut self.receiver;
        let answer = async {
            loop {
                let delivery = receiver.recv::<Body<Value>>().await?;
                let message = delivery.into_message();
                let correlation = message
                    .properties
                    .as_ref()
                    .and_then(|p| p.correlation_id.clone());
                // A late answer to an earlier request that timed out is
                // skipped; an answer without correlation id is ours (one
                // request at a time).
                match correlation {
                    Some(c) if !same_id(&c, id) => continue,
                    _ => return Ok::<_, RecvError>(message),
                }
            }
        };
        tokio::pin!(answer);

        let mut settled = false;
        loop {
            tokio::select! {
                received = &mut answer => {
                    let message = received.map_err(|e| {
                        link_err(format!("the reply receiver failed: {e}"))
                    })?;
                    return parse_response(&address, message);
                }
                outcome = &mut settlement, if !settled => {
                    settled = true;
                    match outcome {
                        Ok(Outcome::Accepted(_)) => {}
                        Ok(Outcome::Rejected(r)) => {
                            let reason = match r.error {
                                Some(e) => describe_amqp_error(&e),
                                None => "no reason given".to_string(),
                            };
                            return Err(MgmtError::Rejected { url, address, reason });
                        }
                        Ok(Outcome::Released(_)) | Ok(Outcome::Modified(_)) => {
                            return Err(MgmtError::Released { url, address });
                        }
                        Err(e) => return Err(link_err(describe_send_error(&e, &address))),
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let note = if settled {
                        ""
                    } else {
                        " (the router did not settle the request either)"
                    };
                    return Err(MgmtError::NoAnswer { url, address, timeout, note });
                }
            }
        }
    }

    /// One QUERY page: `attribute_names` empty = all attributes.
    pub async fn query(
        &mut self,
        entity_type: &str,
        attribute_names: &[String],
        offset: u32,
        count: u32,
    ) -> Result<QueryResult, MgmtError> {
        let body = map_value(vec![(
            "attributeNames".to_string(),
            Value::List(
                attribute_names
                    .iter()
                    .map(|a| Value::String(a.clone()))
                    .collect(),
            ),
        )]);
        let resp = self
            .request(
                vec![
                    ("operation", SimpleValue::String("QUERY".into())),
                    ("entityType", SimpleValue::String(entity_type.into())),
                    ("offset", SimpleValue::Long(i64::from(offset))),
                    ("count", SimpleValue::Long(i64::from(count))),
                ],
                body,
            )
            .await?;
        parse_query_body(&self.address, resp.body)
    }

    /// All entities of a type: QUERY pages of [`QUERY_PAGE`] rows until a
    /// short page.
    pub async fn query_all(
        &mut self,
        entity_type: &str,
        attribute_names: &[String],
    ) -> Result<QueryResult, MgmtError> {
        let mut all = QueryResult::default();
        let mut offset: u32 = 0;
        for page in 0..MAX_PAGES {
            let r = self
                .query(entity_type, attribute_names, offset, QUERY_PAGE)
                .await?;
            if page == 0 {
                all.attribute_names = r.attribute_names;
            } else if r.attribute_names != all.attribute_names {
                return Err(MgmtError::BadResponse {
                    address: self.address.clone(),
                    reason: format!("attribute names changed between QUERY pages of {entity_type}"),
                });
            }
            let n = r.rows.len();
            all.rows.extend(r.rows);
            if n < QUERY_PAGE as usize {
                return Ok(all);
            }
            offset = offset.saturating_add(QUERY_PAGE);
        }
        Err(MgmtError::BadResponse {
            address: self.address.clone(),
            reason: format!(
                "more than {} QUERY pages of {entity_type} (does the agent ignore offset?)",
                MAX_PAGES
            ),
        })
    }

    /// READ one entity by name.
    pub async fn read(&mut self, entity_type: &str, name: &str) -> Result<Attributes, MgmtError> {
        let resp = self
            .request(
                vec![
                    ("operation", SimpleValue::String("READ".into())),
                    ("type", SimpleValue::String(entity_type.into())),
                    ("name", SimpleValue::String(name.into())),
                ],
                Value::Map(OrderedMap::new()),
            )
            .await?;
        parse_attributes(&self.address, resp.body)
    }

    /// CREATE an entity; `attributes` need not repeat the name or type.
    /// Returns the entity as created.
    pub async fn create(
        &mut self,
        entity_type: &str,
        name: &str,
        attributes: Attributes,
    ) -> Result<Attributes, MgmtError> {
        let mut body = Vec::with_capacity(attributes.len() + 2);
        body.push(("name".to_string(), Value::String(name.into())));
        body.push(("type".to_string(), Value::String(entity_type.into())));
        for (k, v) in attributes.into_inner() {
            if k != "name" && k != "type" {
                body.push((k, v));
            }
        }
        let resp = self
            .request(
                vec![
                    ("operation", SimpleValue::String("CREATE".into())),
                    ("type", SimpleValue::String(entity_type.into())),
                    ("name", SimpleValue::String(name.into())),
                ],
                map_value(body),
            )
            .await?;
        parse_attributes(&self.address, resp.body)
    }

    /// UPDATE attributes of an entity. Returns the entity as updated.
    pub async fn update(
        &mut self,
        entity_type: &str,
        name: &str,
        attributes: Attributes,
    ) -> Result<Attributes, MgmtError> {
        let resp = self
            .request(
                vec![
                    ("operation", SimpleValue::String("UPDATE".into())),
                    ("type", SimpleValue::String(entity_type.into())),
                    ("name", SimpleValue::String(name.into())),
                ],
                map_value(attributes.into_inner().into_iter().collect()),
            )
            .await?;
        parse_attributes(&self.address, resp.body)
    }

    /// DELETE an entity by name.
    pub async fn delete(&mut self, entity_type: &str, name: &str) -> Result<(), MgmtError> {
        self.request(
            vec![
                ("operation", SimpleValue::String("DELETE".into())),
                ("type", SimpleValue::String(entity_type.into())),
                ("name", SimpleValue::String(name.into())),
            ],
            Value::Map(OrderedMap::new()),
        )
        .await
        .map(|_| ())
    }

    /// GET-TYPES: each entity type the agent manages, with the types it
    /// extends.
    pub async fn get_types(&mut self) -> Result<Vec<(String, Vec<String>)>, MgmtError> {
        let resp = self
            .request(
                vec![("operation", SimpleValue::String("GET-TYPES".into()))],
                Value::Map(OrderedMap::new()),
            )
            .await?;
        let map = match resp.body {
            Value::Map(m) => m,
            other => return Err(bad_body(&self.address, "a map of types", &other)),
        };
        Ok(map
            .into_iter()
            .map(|(k, v)| (key_string(&k), string_list(&v)))
            .collect())
    }

    /// GET-MGMT-NODES: the management addresses of the other routers.
    pub async fn get_mgmt_nodes(&mut self) -> Result<Vec<String>, MgmtError> {
        let resp = self
            .request(
                vec![("operation", SimpleValue::String("GET-MGMT-NODES".into()))],
                Value::Map(OrderedMap::new()),
            )
            .await?;
        match &resp.body {
            Value::List(_) | Value::Array(_) => Ok(string_list(&resp.body)),
            other => Err(bad_body(&self.address, "a list of addresses", other)),
        }
    }

    /// Detaches the links and closes the connection (best effort, at most
    /// two seconds).
    pub async fn close(self) {
        let MgmtClient {
            mut connection,
            mut session,
            sender,
            receiver,
            ..
        } = self;
        let _ = tokio::time::timeout(Duration::from_secs(2), async move {
            let _ = sender.close().await;
            let _ = receiver.close().await;
            let _ = session.end().await;
            let _ = connection.close().await;
        })
        .await;
    }
}

fn same_id(c: &MessageId, id: u64) -> bool {
    match c {
        MessageId::Ulong(n) => *n == id,
        MessageId::String(s) => s.parse::<u64>().ok() == Some(id),
        _ => false,
    }
}

/// An AMQP error as `condition: description`, e.g.
/// `amqp:not-allowed: go away`.
pub fn describe_amqp_error(e: &AmqpErrorFrame) -> String {
    let condition: String = match &e.condition {
        ErrorCondition::AmqpError(c) => Symbol::from(c).0,
        ErrorCondition::ConnectionError(c) => Symbol::from(c).0,
        ErrorCondition::SessionError(c) => Symbol::from(c).0,
        ErrorCondition::LinkError(c) => Symbol::from(c).0,
        ErrorCondition::Custom(c) => c.0.clone(),
    };
    match &e.description {
        Some(d) if !d.is_empty() => format!("{condition}: {d}"),
        _ => condition,
    }
}

fn describe_send_error(e: &SendError, address: &str) -> String {
    match e {
        SendError::Detached(
            DetachError::RemoteDetachedWithError(err) | DetachError::RemoteClosedWithError(err),
        ) => format!(
            "the router detached the sender to {address}: {}",
            describe_amqp_error(err)
        ),
        SendError::Detached(d) => format!("the router detached the sender to {address}: {d}"),
        other => format!("sending to {address} failed: {other}"),
    }
}

/// The rustls error inside an I/O error from a TLS stream, if any.
fn rustls_cause(err: &io::Error) -> Option<&rustls::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = err
        .get_ref()
        .map(|e| e as &(dyn std::error::Error + 'static));
    while let Some(e) = cause {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        cause = e.source();
    }
    None
}

/// Explains a failed connection open in words an operator can act on.
fn describe_open_error(e: &OpenError, tls: bool) -> String {
    match e {
        OpenError::Io(io) if io.kind() == io::ErrorKind::UnexpectedEof => {
            let hint = if tls {
                ""
            } else {
                " (does the listener want TLS? try amqps:// with --ca)"
            };
            format!("the router closed the connection during the handshake{hint}")
        }
        OpenError::Io(io) => {
            if let Some(tls_err) = rustls_cause(io) {
                let hint = match tls_err {
                    rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
                        " (give --cert FILE --key FILE)"
                    }
                    _ => "",
                };
                format!("{}{hint}", crate::tls::describe_tls_error(tls_err))
            } else if !tls && io.to_string().contains("bytes remaining on stream") {
                "the router answered with something that is not AMQP and closed the connection \
                 (does the listener want TLS? try amqps:// with --ca)"
                    .to_string()
            } else {
                io_reason(io)
            }
        }
        OpenError::ProtocolHeaderMismatch(b) => {
            if !tls && matches!(b.first(), Some(0x15) | Some(0x16)) {
                "the listener speaks TLS: use amqps:// with --ca".to_string()
            } else {
                format!("not an AMQP 1.0 peer (it answered {b:02x?})")
            }
        }
        OpenError::SaslError { code, .. } => match code {
            SaslCode::Auth => "SASL authentication failed (wrong user or password?)".to_string(),
            other => format!("SASL failed ({other:?})"),
        },
        OpenError::NotImplemented(Some(d)) => match sasl_mechanism_refused(d) {
            Some(mech) => format!(
                "the router does not offer SASL {mech} (see the listener's sasl_mechanisms)"
            ),
            None => format!("SASL: {d}"),
        },
        OpenError::RemoteClosedWithError(err) => {
            format!(
                "the router closed the connection: {}",
                describe_amqp_error(err)
            )
        }
        OpenError::RemoteClosed => "the router closed the connection".to_string(),
        other => other.to_string(),
    }
}

/// The mechanism in fe2o3's "Symbol(\"PLAIN\") is not supported".
fn sasl_mechanism_refused(description: &str) -> Option<&str> {
    if !description.contains("not supported") {
        return None;
    }
    let start = description.find("Symbol(\"")? + "Symbol(\"".len();
    let len = description[start..].find('"')?;
    Some(&description[start..start + len])
}

fn map_value(entries: Vec<(String, Value)>) -> Value {
    let mut m = OrderedMap::new();
    for (k, v) in entries {
        m.insert(Value::String(k), v);
    }
    Value::Map(m)
}

fn bad_body(address: &str, expected: &str, got: &Value) -> MgmtError {
    MgmtError::BadResponse {
        address: address.to_string(),
        reason: format!("expected {expected} in the body, got {}", kind_name(got)),
    }
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Map(_) => "a map",
        Value::List(_) | Value::Array(_) => "a list",
        Value::String(_) | Value::Symbol(_) => "a string",
        Value::Binary(_) => "binary",
        Value::Described(_) => "a described value",
        _ => "a number",
    }
}

/// An integer of any AMQP width (or a string of digits).
fn int_of(v: &Value) -> Option<i64> {
    Some(match v {
        Value::Ubyte(x) => i64::from(*x),
        Value::Ushort(x) => i64::from(*x),
        Value::Uint(x) => i64::from(*x),
        Value::Ulong(x) => i64::try_from(*x).ok()?,
        Value::Byte(x) => i64::from(*x),
        Value::Short(x) => i64::from(*x),
        Value::Int(x) => i64::from(*x),
        Value::Long(x) => *x,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    })
}

/// A string or symbol.
fn str_of(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s),
        Value::Symbol(s) => Some(s.as_str()),
        _ => None,
    }
}

/// A map key as text: strings and symbols as they are, anything else in
/// its JSON form.
fn key_string(k: &Value) -> String {
    match str_of(k) {
        Some(s) => s.to_string(),
        None => to_json(k).to_string(),
    }
}

fn string_list(v: &Value) -> Vec<String> {
    let items: &[Value] = match v {
        Value::List(l) => l,
        Value::Array(a) => a,
        _ => return Vec::new(),
    };
    items.iter().map(key_string).collect()
}

/// Decodes an answer: `statusCode` and `statusDescription` from the
/// application properties, the body value. `statusCode >= 300` is an error.
pub fn parse_response(address: &str, message: Message<Body<Value>>) -> Result<Response, MgmtError> {
    let bad = |reason: String| MgmtError::BadResponse {
        address: address.to_string(),
        reason,
    };
    let props = message
        .application_properties
        .ok_or_else(|| bad("no application properties (no statusCode)".into()))?;
    let mut code = None;
    let mut description = String::new();
    for (k, v) in props.0.into_iter() {
        let v = Value::from(v);
        match k.as_str() {
            "statusCode" => code = int_of(&v),
            "statusDescription" => description = str_of(&v).unwrap_or_default().to_string(),
            _ => {}
        }
    }
    let code = code.ok_or_else(|| bad("no integer statusCode".into()))?;
    if code >= 300 {
        return Err(MgmtError::Status { code, description });
    }
    let body = match message.body {
        Body::Value(v) => v.0,
        Body::Empty => Value::Null,
        Body::Sequence(_) => return Err(bad("an amqp-sequence body (expected a value)".into())),
        Body::Data(_) => return Err(bad("a data body (expected a value)".into())),
    };
    Ok(Response {
        status_code: code,
        status_description: description,
        body,
    })
}

/// Finds a key (string or symbol) in an AMQP map.
fn map_get<'a>(m: &'a OrderedMap<Value, Value>, key: &str) -> Option<&'a Value> {
    m.iter()
        .find(|(k, _)| str_of(k) == Some(key))
        .map(|(_, v)| v)
}

/// Decodes a QUERY body: `{"attributeNames": [..], "results": [[..], ..]}`.
pub fn parse_query_body(address: &str, body: Value) -> Result<QueryResult, MgmtError> {
    let bad = |reason: &str| MgmtError::BadResponse {
        address: address.to_string(),
        reason: reason.to_string(),
    };
    let m = match &body {
        Value::Map(m) => m,
        other => return Err(bad_body(address, "a QUERY map", other)),
    };
    let names = match map_get(m, "attributeNames") {
        Some(v @ (Value::List(_) | Value::Array(_))) => string_list(v),
        _ => return Err(bad("QUERY answer without an attributeNames list")),
    };
    let results: &[Value] = match map_get(m, "results") {
        Some(Value::List(l)) => l,
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => &[],
        Some(_) => return Err(bad("QUERY results is not a list")),
    };
    let mut rows = Vec::with_capacity(results.len());
    for r in results {
        match r {
            Value::List(l) => rows.push(l.clone()),
            Value::Array(a) => rows.push(a.0.clone()),
            _ => return Err(bad("a QUERY result row is not a list")),
        }
    }
    Ok(QueryResult {
        attribute_names: names,
        rows,
    })
}

/// Decodes a READ/CREATE/UPDATE body (a map of attributes; null = none).
pub fn parse_attributes(address: &str, body: Value) -> Result<Attributes, MgmtError> {
    match body {
        Value::Map(m) => Ok(m
            .into_iter()
            .map(|(k, v)| (key_string(&k), v))
            .collect::<Vec<_>>()
            .into_iter()
            .fold(Attributes::new(), |mut acc, (k, v)| {
                acc.insert(k, v);
                acc
            })),
        Value::Null => Ok(Attributes::new()),
        other => Err(bad_body(address, "a map of attributes", &other)),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Converts an AMQP value for output: integers, strings, booleans, lists,
/// maps and null as themselves; symbols, chars and UUIDs as strings;
/// binary and decimals as lowercase hex strings; timestamps as integer
/// milliseconds since the epoch; described values as their value; floats
/// as numbers (NaN and infinities as null).
pub fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Described(d) => to_json(&d.value),
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Ubyte(x) => J::from(*x),
        Value::Ushort(x) => J::from(*x),
        Value::Uint(x) => J::from(*x),
        Value::Ulong(x) => J::from(*x),
        Value::Byte(x) => J::from(*x),
        Value::Short(x) => J::from(*x),
        Value::Int(x) => J::from(*x),
        Value::Long(x) => J::from(*x),
        Value::Float(x) => serde_json::Number::from_f64(f64::from(x.0))
            .map(J::Number)
            .unwrap_or(J::Null),
        Value::Double(x) => serde_json::Number::from_f64(x.0)
            .map(J::Number)
            .unwrap_or(J::Null),
        Value::Decimal32(d) => J::String(hex(d.as_inner())),
        Value::Decimal64(d) => J::String(hex(d.as_inner())),
        Value::Decimal128(d) => J::String(hex(d.as_inner())),
        Value::Char(c) => J::String(c.to_string()),
        Value::Timestamp(t) => J::from(t.milliseconds()),
        Value::Uuid(u) => {
            let h = hex(u.as_inner());
            J::String(format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            ))
        }
        Value::Binary(b) => J::String(hex(b)),
        Value::String(s) => J::String(s.clone()),
        Value::Symbol(s) => J::String(s.as_str().to_string()),
        Value::List(l) => J::Array(l.iter().map(to_json).collect()),
        Value::Array(a) => J::Array(a.iter().map(to_json).collect()),
        Value::Map(m) => J::Object(m.iter().map(|(k, v)| (key_string(k), to_json(v))).collect()),
    }
}

/// An attribute map as a JSON object (order kept).
pub fn attributes_to_json(attrs: &Attributes) -> serde_json::Map<String, serde_json::Value> {
    attrs.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::types::messaging::AmqpValue;
    use fe2o3_amqp::types::primitives::Timestamp;
    use serde_json::json;

    #[test]
    fn urls_parse() {
        let e = Endpoint::parse("amqp://127.0.0.1:5672").expect("url");
        assert_eq!(
            e,
            Endpoint {
                tls: false,
                host: "127.0.0.1".into(),
                port: 5672,
                user: None,
                password: None
            }
        );
        let e = Endpoint::parse("localhost:15672").expect("host:port");
        assert_eq!(
            (e.tls, e.host.as_str(), e.port),
            (false, "localhost", 15672)
        );
        let e = Endpoint::parse("router.example").expect("host");
        assert_eq!(e.port, 5672);
        let e = Endpoint::parse("amqps://h").expect("amqps");
        assert_eq!((e.tls, e.port), (true, 5671));
        let e = Endpoint::parse("AMQP://al%40ice:p%3Ass@[::1]:99/ignored").expect("full");
        assert_eq!(e.host, "::1");
        assert_eq!(e.port, 99);
        assert_eq!(e.user.as_deref(), Some("al@ice"));
        assert_eq!(e.password.as_deref(), Some("p:ss"));
        assert_eq!(e.to_string(), "amqp://al@ice@[::1]:99");
        let e = Endpoint::parse("amqp://bob@h:1").expect("user only");
        assert_eq!(
            (e.user.as_deref(), e.password.as_deref()),
            (Some("bob"), None)
        );
    }

    #[test]
    fn bad_urls_say_why() {
        for (url, why) in [
            ("http://h:1", "scheme"),
            ("amqp://:5672", "no host"),
            ("amqp://h:0", "bad port"),
            ("amqp://h:99999", "bad port"),
            ("amqp://h:x", "bad port"),
            ("::1", "brackets"),
            ("amqp://[::1", "']'"),
            ("amqp://a%zz@h", "escape"),
        ] {
            let e = Endpoint::parse(url).expect_err(url);
            assert!(e.is_usage());
            assert!(e.to_string().contains(why), "{url}: {e}");
        }
    }

    #[test]
    fn management_addresses() {
        assert_eq!(management_address(None), "$management");
        assert_eq!(management_address(Some("west")), "_topo/0/west/$management");
    }

    #[test]
    fn values_convert_to_json() {
        let mut m = OrderedMap::new();
        m.insert(Value::Symbol(Symbol::from("z")), Value::Uint(1));
        m.insert(Value::String("a".into()), Value::Null);
        m.insert(Value::Long(7), Value::Bool(true));
        let v = Value::List(vec![
            Value::Map(m),
            Value::Binary(fe2o3_amqp::types::primitives::Binary::from(vec![0u8, 0xab])),
            Value::Timestamp(Timestamp::from_milliseconds(1_700_000_000_000)),
            Value::Ulong(u64::MAX),
            Value::Byte(-3),
            Value::Symbol(Symbol::from("sym")),
            Value::Char('x'),
            Value::Double(f64::NAN.into()),
        ]);
        let j = to_json(&v);
        assert_eq!(
            j,
            json!([{"z": 1, "a": null, "7": true}, "00ab", 1_700_000_000_000i64,
                   u64::MAX, -3, "sym", "x", null])
        );
        // Key order is kept (serde_json preserve_order).
        let keys: Vec<&String> = j[0].as_object().expect("object").keys().collect();
        assert_eq!(keys, ["z", "a", "7"]);
    }

    fn answer(code: Value, description: &str, body: Body<Value>) -> Message<Body<Value>> {
        let mut ap = OrderedMap::new();
        if let Ok(c) = SimpleValue::try_from(code) {
            ap.insert("statusCode".to_string(), c);
        }
        ap.insert(
            "statusDescription".to_string(),
            SimpleValue::String(description.into()),
        );
        Message::builder()
            .application_properties(ApplicationProperties(ap))
            .body(body)
            .build()
    }

    #[test]
    fn responses_map_status_codes() {
        let ok = parse_response(
            "$management",
            answer(
                Value::Int(200),
                "OK",
                Body::Value(AmqpValue(Value::Uint(3))),
            ),
        )
        .expect("ok");
        assert_eq!(ok.status_code, 200);
        assert_eq!(ok.body, Value::Uint(3));
        let created = parse_response(
            "$management",
            answer(Value::Ulong(204), "No Content", Body::Empty),
        )
        .expect("204");
        assert_eq!(created.body, Value::Null);
        let err = parse_response(
            "$management",
            answer(Value::Long(404), "no tcpListener named \"x\"", Body::Empty),
        )
        .expect_err("404");
        assert_eq!(err.status_code(), Some(404));
        assert_eq!(err.to_string(), "404 no tcpListener named \"x\"");
        let err = parse_response("$management", answer(Value::Null, "", Body::Empty))
            .expect_err("no code");
        assert!(err.to_string().contains("statusCode"), "{err}");
    }

    #[test]
    fn query_bodies_decode() {
        let mut m = OrderedMap::new();
        m.insert(
            Value::String("attributeNames".into()),
            Value::List(vec![
                Value::String("name".into()),
                Value::Symbol("port".into()),
            ]),
        );
        m.insert(
            Value::Symbol("results".into()),
            Value::List(vec![
                Value::List(vec![Value::String("a".into()), Value::String("1".into())]),
                Value::List(vec![Value::String("b".into())]),
            ]),
        );
        let q = parse_query_body("$management", Value::Map(m)).expect("query");
        assert_eq!(q.attribute_names, ["name", "port"]);
        assert_eq!(q.rows.len(), 2);
        let recs = q.records();
        assert_eq!(recs[1].get("port"), Some(&Value::Null));
        assert!(parse_query_body("$management", Value::List(vec![])).is_err());
    }

    #[test]
    fn sasl_refusals_name_the_mechanism() {
        assert_eq!(
            sasl_mechanism_refused("Symbol(\"PLAIN\") is not supported"),
            Some("PLAIN")
        );
        assert_eq!(sasl_mechanism_refused("something else"), None);
    }

    #[test]
    fn amqp_errors_read_as_condition_and_description() {
        use fe2o3_amqp::types::definitions::AmqpError;
        let e = AmqpErrorFrame::new(AmqpError::NotAllowed, Some("go away".to_string()), None);
        assert_eq!(describe_amqp_error(&e), "amqp:not-allowed: go away");
        let e = AmqpErrorFrame::new(
            ErrorCondition::Custom(Symbol::from("tether:no-route")),
            None,
            None,
        );
        assert_eq!(describe_amqp_error(&e), "tether:no-route");
    }

    #[test]
    fn correlation_ids_match() {
        assert!(same_id(&MessageId::Ulong(5), 5));
        assert!(same_id(&MessageId::String("5".into()), 5));
        assert!(!same_id(&MessageId::Ulong(4), 5));
    }

    #[test]
    fn timeouts_format() {
        assert_eq!(secs(Duration::from_secs(10)), "10 s");
        assert_eq!(secs(Duration::from_millis(2500)), "2.5 s");
        let e = MgmtError::NoAnswer {
            url: "amqp://127.0.0.1:5672".into(),
            address: "$management".into(),
            timeout: Duration::from_secs(10),
            note: "",
        };
        assert_eq!(
            e.to_string(),
            "no answer from $management at amqp://127.0.0.1:5672 within 10 s"
        );
    }
}
