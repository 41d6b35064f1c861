//! The grant server: the HTTPS endpoint where other sites redeem this
//! site's tokens (`tether token redeem`).
//!
//! [`serve`] runs inside `tether site start`, on the router's `LocalSet`
//! (one thread, connections in `spawn_local` tasks), on the site's grant
//! port. It presents the router's certificate (`router.pem`, signed by the
//! site CA that tokens carry) and asks for no client certificate: the
//! token's secret code is the credential.
//!
//! | request | answer |
//! |---|---|
//! | `POST /grants/<id>` `{"code", "site", "csr"}` | 200 `{"site", "cert", "ca", "endpoints": [{"host", "port"}], "cost"}` |
//! | unknown grant id | 404 `{"error": "unknown-grant", "message"}` |
//! | wrong code | 403 `{"error": "bad-code", ...}` |
//! | revoked / expired / every redemption used | 410 `{"error": "revoked" \| "expired" \| "exhausted", ...}` |
//! | a bad body or CSR | 400 `{"error": "bad-request", ...}` |
//! | another path or method | 404 / 405 |
//!
//! The code is checked right after the grant is found (SHA-256 of the code
//! compared in constant time with the stored hash), so someone without it
//! learns nothing about the grant's state. A redemption signs the CSR with
//! the site CA ([`super::pki::sign_csr`]; the CSR's common name must be the
//! requesting site's name), then records an `[[issued]]` certificate and
//! counts the redemption in `site.toml`.
//!
//! `site.toml` is re-read for every request and changed under the site
//! lock ([`update_state`], an exclusive `flock` on `SITE_DIR/.site.lock`),
//! so a `tether token issue` or `link revoke` run meanwhile is neither
//! missed nor overwritten.
//!
//! Nothing a client does holds resources for long: at most
//! [`MAX_CONNECTIONS`] connections, [`HANDSHAKE_TIMEOUT`] for TLS, the
//! request head and body each within [`REQUEST_TIMEOUT`], bodies up to
//! [`MAX_BODY_BYTES`], and a connection lives at most [`MAX_CONNECTION_AGE`].

use std::convert::Infallible;
use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::{GrantRecord, IssuedRecord, SiteDir, SiteState};

/// Connections open at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 32;
/// Time for the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for a request head, and separately for its body.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection is closed after this long whatever it does.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);
/// Largest request body (a CSR is under 1 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest request head.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long to wait for the site lock before giving up.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// The lock file in a site folder.
pub const LOCK_FILE: &str = ".site.lock";

/// Serves redemptions on `listener` until the future is dropped. Must run
/// inside a `LocalSet`. If the site's certificate cannot be loaded the
/// error is logged and the server does not start (the router keeps
/// running).
pub async fn serve(site_dir: PathBuf, listener: TcpListener) {
    let acceptor = match load_acceptor(&site_dir) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("grant server not started: {e}");
            return;
        }
    };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "grant server listening (token redemption)");
    }
    let site = Rc::new(SiteDir::new(site_dir));
    let mut connections: JoinSet<()> = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if connections.len() >= MAX_CONNECTIONS {
                        tracing::debug!(%peer, "grant server: connection refused, too many open");
                        continue;
                    }
                    connections.spawn_local(serve_connection(
                        stream,
                        peer,
                        acceptor.clone(),
                        site.clone(),
                    ));
                }
                Err(error) => {
                    tracing::warn!(%error, "grant server: accept failed");
                    if !matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            },
            Some(finished) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = finished {
                    if error.is_panic() {
                        tracing::error!(%error, "grant server: connection task panicked");
                    }
                }
            }
        }
    }
}

/// A TLS acceptor with the site's router certificate, no client auth.
pub fn load_acceptor(site_dir: &Path) -> Result<TlsAcceptor, String> {
    let cert_path = site_dir.join(super::pki::ROUTER_CERT_FILE);
    let key_path = site_dir.join(super::pki::ROUTER_KEY_FILE);
    let chain = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read {}: {e}", cert_path.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no certificate", cert_path.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| format!("cannot read {}: {e}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            format!(
                "{} and {} do not make a usable certificate: {}",
                cert_path.display(),
                key_path.display(),
                crate::tls::describe_tls_error(&e)
            )
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// One connection: TLS, then HTTP/1.1 until closed or too old.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    site: Rc<SiteDir>,
) {
    let _ = stream.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "grant server: TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "grant server: TLS handshake timed out");
            return;
        }
    };
    let service = service_fn(move |request: Request<Incoming>| {
        let site = site.clone();
        async move { Ok::<_, Infallible>(handle(&site, request, peer).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    let connection = builder.serve_connection(TokioIo::new(tls), service);
    match tokio::time::timeout(MAX_CONNECTION_AGE, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%peer, %error, "grant server: connection ended"),
        Err(_) => tracing::debug!(%peer, "grant server: connection cut at its maximum age"),
    }
}

/// A redemption request body.
#[derive(Debug, Deserialize)]
pub struct RedeemRequest {
    /// The token's secret code.
    pub code: String,
    /// The requesting site's name (the CSR's common name).
    pub site: String,
    /// A PEM certificate signing request.
    pub csr: String,
}

/// An answer: status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
}

impl Answer {
    fn error(status: u16, error: &str, message: impl Into<String>) -> Answer {
        Answer {
            status,
            body: serde_json::json!({"error": error, "message": message.into()}),
        }
    }
}

/// Handles one HTTP request.
async fn handle(
    site: &SiteDir,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    let Some(id) = path.strip_prefix("/grants/").map(str::to_string) else {
        return json_response(&Answer::error(
            404,
            "not-found",
            "no such path; POST /grants/<id>",
        ));
    };
    if request.method() != Method::POST {
        let mut r = json_response(&Answer::error(405, "method-not-allowed", "use POST"));
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let body = Limited::new(request.into_body(), MAX_BODY_BYTES);
    let bytes = match tokio::time::timeout(REQUEST_TIMEOUT, body.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => {
            let answer = if e.is::<http_body_util::LengthLimitError>() {
                Answer::error(
                    413,
                    "bad-request",
                    format!("the body is over {MAX_BODY_BYTES} bytes"),
                )
            } else {
                Answer::error(400, "bad-request", format!("reading the body failed: {e}"))
            };
            return json_response(&answer);
        }
        Err(_) => {
            return json_response(&Answer::error(
                408,
                "bad-request",
                "the body did not arrive in time",
            ))
        }
    };
    let answer = match serde_json::from_slice::<RedeemRequest>(&bytes) {
        Err(e) => Answer::error(
            400,
            "bad-request",
            format!("the body is not {{\"code\", \"site\", \"csr\"}} JSON: {e}"),
        ),
        Ok(req) => match lock_site_async(site).await {
            Err(e) => Answer::error(503, "busy", e),
            Ok(lock) => {
                let answer = redeem(site, &id, &req, SystemTime::now());
                drop(lock);
                if answer.status == 200 {
                    tracing::info!(%peer, grant = %id, site = %req.site, "grant redeemed");
                }
                answer
            }
        },
    };
    if answer.status != 200 {
        let message = answer.body.get("message").and_then(|m| m.as_str());
        tracing::info!(%peer, grant = %id, status = answer.status, "grant refused: {}",
            message.unwrap_or(""));
    }
    json_response(&answer)
}

fn json_response(answer: &Answer) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(answer.body.to_string())));
    *r.status_mut() =
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Why a grant cannot be redeemed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("no grant with that id")]
    Unknown,
    #[error("the code does not match the grant")]
    BadCode,
    #[error("the grant was revoked")]
    Revoked,
    #[error("the grant expired")]
    Expired,
    #[error("every redemption the grant allows was used")]
    Exhausted,
}

impl Refusal {
    /// HTTP status and the `error` word of the answer.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            Refusal::Unknown => (404, "unknown-grant"),
            Refusal::BadCode => (403, "bad-code"),
            Refusal::Revoked => (410, "revoked"),
            Refusal::Expired => (410, "expired"),
            Refusal::Exhausted => (410, "exhausted"),
        }
    }
}

/// Checks grant `id` against `code` at `now_unix`: the index of the grant
/// when it can be redeemed.
pub fn check_grant(
    grants: &[GrantRecord],
    id: &str,
    code: &str,
    now_unix: u64,
) -> Result<usize, Refusal> {
    let index = grants
        .iter()
        .position(|g| g.id == id)
        .ok_or(Refusal::Unknown)?;
    let g = &grants[index];
    let presented = super::tokens::code_sha256(code);
    if !constant_time_eq(
        presented.as_bytes(),
        g.code_sha256.to_ascii_lowercase().as_bytes(),
    ) {
        return Err(Refusal::BadCode);
    }
    if g.revoked {
        return Err(Refusal::Revoked);
    }
    if now_unix >= g.expires {
        return Err(Refusal::Expired);
    }
    if g.redeemed >= g.redemptions_allowed {
        return Err(Refusal::Exhausted);
    }
    Ok(index)
}

/// Equal bytes, in time that depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The inter-router endpoints peers dial: the site's link-access list.
pub fn endpoints(state: &SiteState) -> Vec<(String, u16)> {
    state
        .site
        .link_access
        .iter()
        .map(|a| {
            let host = super::pki::split_host(a);
            let port = a
                .strip_prefix('[')
                .and_then(|r| r.split_once("]:"))
                .map(|(_, p)| p)
                .or_else(|| {
                    if a.starts_with('[') || a.parse::<std::net::IpAddr>().is_ok() {
                        None
                    } else {
                        a.rsplit_once(':').map(|(_, p)| p)
                    }
                })
                .and_then(|p| p.parse::<u16>().ok())
                .filter(|p| *p != 0)
                .unwrap_or(state.ports.inter_router);
            let host = match host {
                "" | "0.0.0.0" | "::" => "127.0.0.1",
                h => h,
            };
            (host.to_string(), port)
        })
        .collect()
}

/// The common name of a PEM CSR.
fn csr_common_name(csr_pem: &str) -> Result<String, String> {
    use rcgen::{CertificateSigningRequestParams, DnType, DnValue};
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| format!("the CSR is not a valid PEM certificate request: {e}"))?;
    match csr.params.distinguished_name.get(&DnType::CommonName) {
        Some(DnValue::Utf8String(s)) => Ok(s.clone()),
        Some(DnValue::PrintableString(s)) => Ok(s.as_str().to_string()),
        Some(DnValue::Ia5String(s)) => Ok(s.as_str().to_string()),
        _ => Err("the CSR has no plain-text common name".into()),
    }
}

/// Redeems grant `id` for `req` at `now`, with the site lock held: checks,
/// signs, records. Never panics on what the request holds.
pub fn redeem(site: &SiteDir, id: &str, req: &RedeemRequest, now: SystemTime) -> Answer {
    let mut state = match site.load() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("grant server: {e}");
            return Answer::error(
                500,
                "internal",
                "the site's state cannot be read; see the site's log",
            );
        }
    };
    let own = state.site.name.clone();
    let index = match check_grant(&state.grants, id, &req.code, super::tokens::unix_secs(now)) {
        Ok(i) => i,
        Err(refusal) => {
            let (status, word) = refusal.status();
            let message = match &refusal {
                Refusal::Expired => {
                    let at = state
                        .grants
                        .iter()
                        .find(|g| g.id == id)
                        .map_or(0, |g| g.expires);
                    format!(
                        "the token expired at {}; ask {own} for a new one",
                        super::tokens::format_rfc3339(at)
                    )
                }
                Refusal::Exhausted => {
                    format!("the token was already used; ask {own} for a new one")
                }
                Refusal::Revoked => format!("the token was revoked; ask {own} for a new one"),
                Refusal::BadCode => "the token's code is wrong".to_string(),
                Refusal::Unknown => format!("site {own} has no such grant"),
            };
            return Answer::error(status, word, message);
        }
    };
    if let Err(e) = super::validate_site_name(&req.site) {
        return Answer::error(400, "bad-request", format!("site: {e}"));
    }
    if req.site == own {
        return Answer::error(
            400,
            "bad-request",
            format!("site {own} cannot link to itself"),
        );
    }
    match csr_common_name(&req.csr) {
        Ok(cn) if cn == req.site => {}
        Ok(cn) => {
            return Answer::error(
                400,
                "bad-request",
                format!(
                    "the CSR's common name {cn:?} is not the site name {:?}",
                    req.site
                ),
            )
        }
        Err(e) => return Answer::error(400, "bad-request", e),
    }
    let (cert, fingerprint) = match super::pki::sign_csr(&site.path, &req.csr) {
        Ok(x) => x,
        Err(e) => return Answer::error(400, "bad-request", e),
    };
    let ca = match std::fs::read_to_string(site.path.join(super::pki::CA_CERT_FILE)) {
        Ok(ca) => ca,
        Err(e) => {
            tracing::error!("grant server: cannot read the site CA: {e}");
            return Answer::error(
                500,
                "internal",
                "the site CA cannot be read; see the site's log",
            );
        }
    };
    let grant = &mut state.grants[index];
    grant.redeemed = grant.redeemed.saturating_add(1);
    let cost = grant.cost;
    state.issued.push(IssuedRecord {
        peer: req.site.clone(),
        fingerprint,
        grant: id.to_string(),
        revoked: false,
    });
    if let Err(e) = site.save(&state) {
        tracing::error!("grant server: {e}");
        return Answer::error(
            500,
            "internal",
            "the site's state cannot be saved; see the site's log",
        );
    }
    let endpoints: Vec<serde_json::Value> = endpoints(&state)
        .into_iter()
        .map(|(host, port)| serde_json::json!({"host": host, "port": port}))
        .collect();
    Answer {
        status: 200,
        body: serde_json::json!({
            "site": own,
            "cert": cert,
            "ca": ca,
            "endpoints": endpoints,
            "cost": cost,
        }),
    }
}

// ---------------------------------------------------------------------------
// The site lock
// ---------------------------------------------------------------------------

/// The site lock: held while it lives (an exclusive `flock` on
/// `SITE_DIR/.site.lock`, released on drop, also if the process dies).
#[derive(Debug)]
pub struct SiteLock {
    _file: File,
}

fn open_lock_file(site: &SiteDir) -> Result<File, String> {
    let path = site.path.join(LOCK_FILE);
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| {
            format!(
                "cannot open the site lock {}: {}",
                path.display(),
                super::io_reason(&e)
            )
        })
}

fn try_lock(file: &File) -> Result<bool, String> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(TryLockError::WouldBlock) => Ok(false),
        Err(TryLockError::Error(e)) => {
            Err(format!("cannot lock the site: {}", super::io_reason(&e)))
        }
    }
}

fn lock_timeout_message(site: &SiteDir) -> String {
    format!(
        "the site {} stayed locked by another tether command for {} s; try again",
        site.path.display(),
        LOCK_TIMEOUT.as_secs()
    )
}

/// Takes the site lock, waiting up to [`LOCK_TIMEOUT`] (blocking: for the CLI).
pub fn lock_site(site: &SiteDir) -> Result<SiteLock, String> {
    let file = open_lock_file(site)?;
    let deadline = std::time::Instant::now() + LOCK_TIMEOUT;
    loop {
        if try_lock(&file)? {
            return Ok(SiteLock { _file: file });
        }
        if std::time::Instant::now() >= deadline {
            return Err(lock_timeout_message(site));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// [`lock_site`] without blocking the thread (for the grant server).
pub async fn lock_site_async(site: &SiteDir) -> Result<SiteLock, String> {
    let file = open_lock_file(site)?;
    let deadline = tokio::time::Instant::now() + LOCK_TIMEOUT;
    loop {
        if try_lock(&file)? {
            return Ok(SiteLock { _file: file });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(lock_timeout_message(site));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads `site.toml`, lets `f` change it, and saves it (with `router.toml`)
/// under the site lock, so concurrent commands and the grant server never
/// lose each other's changes. Nothing is saved when `f` fails.
pub fn update_state<T>(
    site: &SiteDir,
    f: impl FnOnce(&mut SiteState) -> Result<T, String>,
) -> Result<T, String> {
    let _lock = lock_site(site)?;
    let mut state = site.load()?;
    let out = f(&mut state)?;
    site.save(&state)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::site::{Ports, SiteState};

    fn grant(id: &str, code: &str) -> GrantRecord {
        GrantRecord {
            id: id.into(),
            code_sha256: super::super::tokens::code_sha256(code),
            expires: 1000,
            redemptions_allowed: 1,
            redeemed: 0,
            cost: 3,
            revoked: false,
        }
    }

    #[test]
    fn grant_checks_in_order() {
        let mut grants = vec![grant("a", "secret"), grant("b", "other")];
        assert_eq!(check_grant(&grants, "b", "other", 999), Ok(1));
        assert_eq!(
            check_grant(&grants, "x", "secret", 0),
            Err(Refusal::Unknown)
        );
        assert_eq!(check_grant(&grants, "a", "wrong", 0), Err(Refusal::BadCode));
        assert_eq!(
            check_grant(&grants, "a", "secret", 1000),
            Err(Refusal::Expired)
        );
        grants[0].redeemed = 1;
        assert_eq!(
            check_grant(&grants, "a", "secret", 0),
            Err(Refusal::Exhausted)
        );
        grants[0].revoked = true;
        assert_eq!(
            check_grant(&grants, "a", "secret", 0),
            Err(Refusal::Revoked)
        );
        // Without the code nothing about the grant's state shows.
        assert_eq!(
            check_grant(&grants, "a", "wrong", 5000),
            Err(Refusal::BadCode)
        );
        assert_eq!(Refusal::Exhausted.status(), (410, "exhausted"));
        assert_eq!(Refusal::BadCode.status().0, 403);
        assert_eq!(Refusal::Unknown.status().0, 404);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    fn ports() -> Ports {
        Ports {
            inter_router: 21001,
            amqp: 21002,
            grant: 21003,
            http: 21004,
        }
    }

    #[test]
    fn endpoints_come_from_link_access() {
        let mut s = SiteState::new("east", true, Vec::new(), ports());
        assert_eq!(endpoints(&s), [("127.0.0.1".to_string(), 21001)]);
        s.site.link_access = vec![
            "10.0.0.5:41001".into(),
            "east.example.com".into(),
            "[::1]:7".into(),
            "0.0.0.0:9".into(),
        ];
        assert_eq!(
            endpoints(&s),
            [
                ("10.0.0.5".to_string(), 41001),
                ("east.example.com".to_string(), 21001),
                ("::1".to_string(), 7),
                ("127.0.0.1".to_string(), 9),
            ]
        );
    }

    /// A site folder with PKI and one grant.
    fn site_with_grant(code: &str, now: u64) -> (tempfile::TempDir, SiteDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let site = SiteDir::new(dir.path());
        super::super::pki::create_site_pki(dir.path(), "east", &[]).expect("pki");
        let mut s = SiteState::new("east", true, Vec::new(), ports());
        let mut g = grant("g1", code);
        g.expires = now + 60;
        s.grants.push(g);
        site.save(&s).expect("save");
        (dir, site)
    }

    #[test]
    fn redemption_signs_records_and_refuses_reuse() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (_dir, site) = site_with_grant("c0de", 1_800_000_000);
        let (csr, _key) = super::super::pki::make_csr("west").expect("csr");
        let req = RedeemRequest {
            code: "c0de".into(),
            site: "west".into(),
            csr: csr.clone(),
        };
        let a = redeem(&site, "g1", &req, now);
        assert_eq!(a.status, 200, "{:?}", a.body);
        assert_eq!(a.body["site"], "east");
        assert_eq!(a.body["cost"], 3);
        assert_eq!(a.body["endpoints"][0]["port"], 21001);
        let cert = a.body["cert"].as_str().expect("cert");
        let state = site.load().expect("load");
        assert_eq!(state.grants[0].redeemed, 1);
        assert_eq!(state.issued.len(), 1);
        assert_eq!(state.issued[0].peer, "west");
        assert_eq!(state.issued[0].grant, "g1");
        assert_eq!(
            state.issued[0].fingerprint,
            super::super::pki::fingerprint_pem(cert).expect("fp")
        );
        // Used once: refused.
        let a = redeem(&site, "g1", &req, now);
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (410, Some("exhausted"))
        );
        assert_eq!(site.load().expect("load").issued.len(), 1);
    }

    #[test]
    fn redemption_refusals() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (_dir, site) = site_with_grant("c0de", 1_800_000_000);
        let (csr, _key) = super::super::pki::make_csr("west").expect("csr");
        let req = |code: &str, site: &str, csr: &str| RedeemRequest {
            code: code.into(),
            site: site.into(),
            csr: csr.into(),
        };
        let later = now + Duration::from_secs(61);
        let a = redeem(&site, "g1", &req("c0de", "west", &csr), later);
        assert_eq!((a.status, a.body["error"].as_str()), (410, Some("expired")));
        assert!(a.body["message"]
            .as_str()
            .expect("msg")
            .contains("expired at"));
        let a = redeem(&site, "g1", &req("nope", "west", &csr), now);
        assert_eq!(a.status, 403);
        let a = redeem(&site, "zz", &req("c0de", "west", &csr), now);
        assert_eq!(a.status, 404);
        // The CSR must be for the site that asks.
        let a = redeem(&site, "g1", &req("c0de", "hub", &csr), now);
        assert_eq!(a.status, 400);
        assert!(a.body["message"]
            .as_str()
            .expect("msg")
            .contains("common name"));
        let a = redeem(&site, "g1", &req("c0de", "west", "garbage"), now);
        assert_eq!(a.status, 400);
        let a = redeem(&site, "g1", &req("c0de", "East!", &csr), now);
        assert_eq!(a.status, 400);
        // Refusals changed nothing.
        let state = site.load().expect("load");
        assert_eq!((state.grants[0].redeemed, state.issued.len()), (0, 0));
    }

    #[test]
    fn state_updates_are_serialised() {
        let (_dir, site) = site_with_grant("c0de", 1_800_000_000);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let site = site.clone();
                std::thread::spawn(move || {
                    for _ in 0..10 {
                        update_state(&site, |s| {
                            s.grants[0].cost += 1;
                            Ok(())
                        })
                        .expect("update");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(site.load().expect("load").grants[0].cost, 3 + 40);
        let err = update_state(&site, |_| Err::<(), _>("no".to_string())).unwrap_err();
        assert_eq!(err, "no");
    }

    #[tokio::test]
    async fn serves_redemptions_over_tls() {
        let (dir, site) =
            site_with_grant("c0de", super::super::tokens::unix_secs(SystemTime::now()));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let local = tokio::task::LocalSet::new();
        let ca = std::fs::read_to_string(dir.path().join("ca.pem")).expect("ca");
        let other = tempfile::tempdir().expect("tempdir");
        super::super::pki::create_site_pki(other.path(), "other", &[]).expect("pki");
        let other_ca = std::fs::read_to_string(other.path().join("ca.pem")).expect("ca");
        local
            .run_until(async move {
                let server = tokio::task::spawn_local(serve(site.path.clone(), listener));
                let url = super::super::tokens::GrantUrl::parse(&format!(
                    "https://127.0.0.1:{port}/grants/g1"
                ))
                .expect("url");
                let (csr, _) = super::super::pki::make_csr("west").expect("csr");
                let body =
                    serde_json::json!({"code": "c0de", "site": "west", "csr": csr}).to_string();
                let t = Duration::from_secs(5);
                use super::super::tokens::{https_post, RedeemError};
                // A CA that did not sign the server's certificate.
                let e = https_post(&url, &other_ca, body.as_bytes(), t)
                    .await
                    .expect_err("tampered");
                assert!(matches!(e, RedeemError::Tampered), "{e:?}");
                let (status, answer) = https_post(&url, &ca, body.as_bytes(), t)
                    .await
                    .expect("post");
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
                let (status, answer) = https_post(&url, &ca, body.as_bytes(), t)
                    .await
                    .expect("post");
                assert_eq!(status, 410);
                assert!(String::from_utf8_lossy(&answer).contains("exhausted"));
                let (status, _) = https_post(&url, &ca, b"{", t).await.expect("post");
                assert_eq!(status, 400);
                let wrong = super::super::tokens::GrantUrl::parse(&format!(
                    "https://127.0.0.1:{port}/grants/nope"
                ))
                .expect("url");
                let (status, _) = https_post(&wrong, &ca, body.as_bytes(), t)
                    .await
                    .expect("post");
                assert_eq!(status, 404);
                server.abort();
            })
            .await;
    }
}
