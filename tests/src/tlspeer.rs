//! A stand-in TLS peer (rustls, TLS 1.3 only) for link-level refusal tests.
//!
//! A router may refuse to *start* with a bad certificate of its own (e.g. an
//! expired one), so a peer presenting such a certificate on the wire has to
//! be something other than a router. [`client_handshake`] dials a router's
//! inter-router listener and presents a chosen client certificate;
//! [`TlsServer`] accepts a router's connector and presents a chosen server
//! certificate. Both verify the router against a CA file like a router
//! would, so the only defect on the wire is the one under test.
//!
//! They only do the TLS handshake (and wait for the router's verdict): no
//! link protocol is spoken. Everything is bounded by socket timeouts.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use crate::net::{addr, free_port};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load(
    dir: &Path,
    ca: &str,
    cert: &str,
    key: &str,
) -> (
    RootCertStore,
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
) {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join(ca)).expect("read CA file") {
        roots.add(c.expect("CA PEM")).expect("add CA");
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(dir.join(cert))
        .expect("read cert file")
        .map(|c| c.expect("cert PEM"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join(key)).expect("read key file");
    (roots, chain, key)
}

/// Connects to a router's inter-router listener on `port` as a TLS 1.3
/// client presenting `cert`/`key` (files in `dir`) and trusting `ca`.
/// Returns how it ended: `Ok` if the handshake completed and the router
/// kept the connection open for 2 s, else `Err` with the TLS/IO error
/// (e.g. the router's alert). Bounded by `timeout`.
pub fn client_handshake(
    dir: &Path,
    port: u16,
    ca: &str,
    cert: &str,
    key: &str,
    timeout: Duration,
) -> Result<(), String> {
    let (roots, chain, key) = load(dir, ca, cert, key);
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client cert");
    let name = ServerName::try_from("127.0.0.1").expect("server name");
    let mut conn = ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let mut sock = TcpStream::connect_timeout(&addr(port), Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    let deadline = Instant::now() + timeout;
    let _ = sock.set_write_timeout(Some(timeout));
    // Handshake, then read: in TLS 1.3 the server judges the client's
    // certificate after the client has finished, so a refusal shows up as
    // an alert on the first read.
    let mut buf = [0u8; 4096];
    let mut hold_until: Option<Instant> = None;
    for _ in 0..10_000 {
        let now = Instant::now();
        if now >= deadline {
            return Err("timed out".into());
        }
        if !conn.is_handshaking() && hold_until.is_none() {
            hold_until = Some(now + Duration::from_secs(2));
        }
        if let Some(h) = hold_until {
            if now >= h {
                return Ok(());
            }
        }
        let slice = deadline
            .min(hold_until.unwrap_or(deadline))
            .saturating_duration_since(now);
        let _ = sock.set_read_timeout(Some(slice.max(Duration::from_millis(1))));
        let mut stream = rustls::Stream::new(&mut conn, &mut sock);
        match stream.read(&mut buf) {
            Ok(0) => return Err("connection closed by the router".into()),
            Ok(_) => {} // link protocol bytes: ignore
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e.to_string()),
        }
        let _ = stream.flush();
    }
    Err("handshake loop bound reached".into())
}

/// A TLS 1.3 server presenting a chosen certificate, requiring and
/// verifying a client certificate from `ca`; it accepts connections until
/// dropped and records the outcome of each handshake.
pub struct TlsServer {
    port: u16,
    stop: Arc<AtomicBool>,
    handshakes: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl TlsServer {
    /// Starts the server on a free port with `cert`/`key`/`ca` from `dir`.
    pub fn start(dir: &Path, ca: &str, cert: &str, key: &str) -> TlsServer {
        let (roots, chain, key) = load(dir, ca, cert, key);
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .expect("client verifier");
        let config = Arc::new(
            ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("TLS 1.3")
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
                .expect("server cert"),
        );
        let port = free_port();
        let listener = TcpListener::bind(addr(port)).expect("bind TLS server");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let handshakes = Arc::new(AtomicUsize::new(0));
        let (stop2, hs2) = (stop.clone(), handshakes.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            for _ in 0..1_000_000 {
                if stop2.load(Ordering::Relaxed) || Instant::now() >= deadline {
                    return;
                }
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                        if let Ok(mut conn) = ServerConnection::new(config.clone()) {
                            let mut ok = true;
                            for _ in 0..100 {
                                if !conn.is_handshaking() {
                                    break;
                                }
                                if conn.complete_io(&mut s).is_err() {
                                    ok = false;
                                    break;
                                }
                            }
                            if ok && !conn.is_handshaking() {
                                hs2.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        TlsServer {
            port,
            stop,
            handshakes,
            thread: Some(thread),
        }
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Handshakes that completed on this side.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::Relaxed)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
