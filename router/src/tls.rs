//! Mutual TLS for inter-router links.
//!
//! Every inter-router link is TLS 1.3 with client certificates on both ends:
//! the listening router requires the dialing router to present a certificate
//! signed by its configured CA, and the dialing router verifies the listener's
//! certificate against the same kind of CA bundle (and, unless the connector sets
//! `verify_hostname = false`, that the certificate names the host it dialed).
//! Both sides negotiate the ALPN protocol [`ALPN_PROTOCOL`].
//!
//! * [`load_material`] turns a profile's three PEM files (CA bundle, certificate
//!   chain, private key) into ready-to-use rustls configurations ([`TlsMaterial`]),
//!   with errors that name the file and the problem ([`TlsLoadError`]).
//! * [`describe_handshake_error`] explains a failed handshake in words an
//!   operator can act on ("peer certificate is signed by an unknown CA", ...).
//! * [`generate_site_certs`] writes a throw-away CA and one leaf certificate per
//!   router name, for `tether demo`, `tether certs` and tests.
//!
//! The ring crypto provider is used explicitly, so the process-wide default
//! provider does not matter.

use std::fmt;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, InconsistentKeys,
    RootCertStore, ServerConfig, SignatureScheme,
};

/// ALPN protocol identifier offered and required on inter-router links.
pub const ALPN_PROTOCOL: &[u8] = b"tether/1";

/// Ready-to-use rustls configurations for one TLS profile.
#[derive(Debug)]
pub struct TlsMaterial {
    /// For inter-router listeners: TLS 1.3, requires a client certificate signed by the CA.
    pub server: Arc<ServerConfig>,
    /// For inter-router connectors: verifies the server chain and its name against the dialed host.
    pub client: Arc<ClientConfig>,
    /// For connectors with `verify_hostname = false`: verifies chain and validity, not the name.
    pub client_no_hostname: Arc<ClientConfig>,
    /// For AMQP client listeners that require a client certificate signed
    /// by the CA (TLS 1.2 and 1.3, no ALPN).
    pub amqp_server_cert_required: Arc<ServerConfig>,
    /// For AMQP client listeners where a client certificate is optional
    /// (checked against the CA when presented).
    pub amqp_server_cert_optional: Arc<ServerConfig>,
    /// The `notAfter` time of this router's own (leaf) certificate, if it could be read.
    pub not_after: Option<SystemTime>,
}

/// Which of a TLS profile's three files an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsFile {
    /// The CA bundle (`ca`): trust anchors for peers' certificates.
    Ca,
    /// This router's certificate chain (`cert`), leaf first.
    Cert,
    /// This router's private key (`key`).
    Key,
}

impl TlsFile {
    /// The config key naming this file in a `[tls.<profile>]` section.
    pub fn config_key(self) -> &'static str {
        match self {
            TlsFile::Ca => "ca",
            TlsFile::Cert => "cert",
            TlsFile::Key => "key",
        }
    }
}

impl fmt::Display for TlsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsFile::Ca => "CA file",
            TlsFile::Cert => "certificate file",
            TlsFile::Key => "private key file",
        })
    }
}

/// Why a TLS profile's files could not be turned into [`TlsMaterial`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsLoadError {
    /// The file could not be read.
    #[error("cannot read {file} {}: {}", path.display(), io_reason(source))]
    Read {
        file: TlsFile,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is not (valid) PEM.
    #[error("{file} {} is not valid PEM: {reason}", path.display())]
    NotPem {
        file: TlsFile,
        path: PathBuf,
        reason: String,
    },
    /// The file is PEM but holds no `CERTIFICATE` section.
    #[error("{file} {} contains no certificate (no -----BEGIN CERTIFICATE----- section){hint}", path.display())]
    NoCertificate {
        file: TlsFile,
        path: PathBuf,
        /// Extra explanation, starting with "; " when not empty.
        hint: String,
    },
    /// The key file is PEM but holds no private key section.
    #[error("private key file {} contains no private key (expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY){hint}", path.display())]
    NoPrivateKey {
        path: PathBuf,
        /// Extra explanation, starting with "; " when not empty.
        hint: String,
    },
    /// A certificate in the file is malformed or unusable.
    #[error("{file} {} holds an invalid certificate: {reason}", path.display())]
    BadCertificate {
        file: TlsFile,
        path: PathBuf,
        reason: String,
    },
    /// The private key is of a type or algorithm rustls/ring cannot use.
    #[error("private key in {} is not usable: {reason}", path.display())]
    UnsupportedKey { path: PathBuf, reason: String },
    /// The private key does not belong to the certificate.
    #[error("private key {} does not match certificate {} (their public keys differ)", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    /// rustls refused to build a configuration from otherwise readable material.
    #[error("cannot build TLS configuration: {0}")]
    Rustls(String),
}

impl TlsLoadError {
    /// Which of the profile's files the error is about, if any single one.
    pub fn file(&self) -> Option<TlsFile> {
        match self {
            TlsLoadError::Read { file, .. }
            | TlsLoadError::NotPem { file, .. }
            | TlsLoadError::NoCertificate { file, .. }
            | TlsLoadError::BadCertificate { file, .. } => Some(*file),
            TlsLoadError::NoPrivateKey { .. }
            | TlsLoadError::UnsupportedKey { .. }
            | TlsLoadError::KeyMismatch { .. } => Some(TlsFile::Key),
            TlsLoadError::Rustls(_) => None,
        }
    }
}

/// Why [`generate_site_certs`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertGenError {
    /// A router name cannot be used as a file name / certificate name.
    #[error("invalid certificate name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    /// Writing a file (or creating the folder) failed.
    #[error("cannot write {}: {}", path.display(), io_reason(source))]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// rcgen failed to generate a key or certificate.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// Formats an I/O error without the trailing " (os error N)".
fn io_reason(err: &io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads a TLS profile: CA bundle, certificate chain (leaf first) and private key,
/// all PEM. Keys may be PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
///
/// Does not reject an expired certificate (the caller decides, see
/// [`TlsMaterial::not_after`]), but does reject a key that does not belong to
/// the certificate.
pub fn load_material(ca: &Path, cert: &Path, key: &Path) -> Result<TlsMaterial, TlsLoadError> {
    let provider = ring_provider();

    // CA bundle.
    let ca_sections = read_pem(TlsFile::Ca, ca)?;
    let ca_certs = certificates(TlsFile::Ca, ca, &ca_sections)?;
    let mut roots = RootCertStore::empty();
    for der in ca_certs {
        roots.add(der).map_err(|e| TlsLoadError::BadCertificate {
            file: TlsFile::Ca,
            path: ca.to_path_buf(),
            reason: describe_tls_error(&e),
        })?;
    }
    let roots = Arc::new(roots);

    // Own certificate chain.
    let cert_sections = read_pem(TlsFile::Cert, cert)?;
    let chain = certificates(TlsFile::Cert, cert, &cert_sections)?;
    let not_after = chain
        .first()
        .and_then(|leaf| cert_validity(leaf))
        .map(|(_, not_after)| not_after);
    if not_after.is_none() {
        return Err(TlsLoadError::BadCertificate {
            file: TlsFile::Cert,
            path: cert.to_path_buf(),
            reason: "cannot parse the certificate (malformed DER)".into(),
        });
    }

    // Private key.
    let key_sections = read_pem(TlsFile::Key, key)?;
    let key_der = private_key(key, &key_sections)?;

    // Key usability and key/cert consistency.
    let signing_key = provider
        .key_provider
        .load_private_key(key_der.clone_key())
        .map_err(|e| TlsLoadError::UnsupportedKey {
            path: key.to_path_buf(),
            reason: describe_tls_error(&e),
        })?;
    let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing_key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(TlsLoadError::KeyMismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            })
        }
        Err(e) => {
            return Err(TlsLoadError::BadCertificate {
                file: TlsFile::Cert,
                path: cert.to_path_buf(),
                reason: describe_tls_error(&e),
            })
        }
    }

    let rustls_err = |e: rustls::Error| TlsLoadError::Rustls(describe_tls_error(&e));
    let versions: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

    // Server side: require a client certificate signed by one of the CAs.
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsLoadError::BadCertificate {
                file: TlsFile::Ca,
                path: ca.to_path_buf(),
                reason: e.to_string(),
            })?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(rustls_err)?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key_der.clone_key())
        .map_err(rustls_err)?;
    server.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    // Links are long-lived and mutually authenticated; resumption buys nothing.
    server.send_tls13_tickets = 0;

    // AMQP client listeners: ordinary messaging clients, so TLS 1.2 too.
    let amqp_server = |optional: bool| -> Result<ServerConfig, TlsLoadError> {
        let builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
        let builder = if optional {
            builder.allow_unauthenticated()
        } else {
            builder
        };
        let verifier = builder.build().map_err(|e| TlsLoadError::BadCertificate {
            file: TlsFile::Ca,
            path: ca.to_path_buf(),
            reason: e.to_string(),
        })?;
        ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(rustls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key_der.clone_key())
            .map_err(rustls_err)
    };
    let amqp_server_cert_required = Arc::new(amqp_server(false)?);
    let amqp_server_cert_optional = Arc::new(amqp_server(true)?);

    // Client side: verify the server's chain (and name) against the CAs.
    let mut client = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(rustls_err)?
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(chain.clone(), key_der.clone_key())
        .map_err(rustls_err)?;
    client.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];

    let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsLoadError::BadCertificate {
            file: TlsFile::Ca,
            path: ca.to_path_buf(),
            reason: e.to_string(),
        })?;
    let mut client_no_hostname = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(rustls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoHostnameVerifier { inner }))
        .with_client_auth_cert(chain, key_der)
        .map_err(rustls_err)?;
    client_no_hostname.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];

    Ok(TlsMaterial {
        server: Arc::new(server),
        client: Arc::new(client),
        client_no_hostname: Arc::new(client_no_hostname),
        amqp_server_cert_required,
        amqp_server_cert_optional,
        not_after,
    })
}

/// Reads a file and returns all the PEM sections rustls knows about.
fn read_pem(file: TlsFile, path: &Path) -> Result<Vec<(SectionKind, Vec<u8>)>, TlsLoadError> {
    let bytes = fs::read(path).map_err(|source| TlsLoadError::Read {
        file,
        path: path.to_path_buf(),
        source,
    })?;
    let mut sections = Vec::new();
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes) {
        match item {
            Ok(section) => sections.push(section),
            Err(e) => {
                return Err(TlsLoadError::NotPem {
                    file,
                    path: path.to_path_buf(),
                    reason: pem_reason(&e),
                })
            }
        }
    }
    if sections.is_empty() {
        let text = String::from_utf8_lossy(&bytes);
        let reason = if let Some(label) = first_pem_label(&text) {
            // PEM, but only sections rustls does not know (e.g. encrypted keys).
            if label.contains("ENCRYPTED") {
                format!("it holds an {label} section; encrypted private keys are not supported, decrypt it first (e.g. openssl pkey -in KEY -out KEY.pem)")
            } else {
                format!("it holds only an unsupported {label} section")
            }
        } else if bytes.first() == Some(&0x30) {
            "it looks like binary DER; convert it to PEM (e.g. openssl x509 -inform der -in FILE -out FILE.pem)".into()
        } else if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            "the file is empty".into()
        } else {
            "no -----BEGIN ...----- section found".into()
        };
        return Err(TlsLoadError::NotPem {
            file,
            path: path.to_path_buf(),
            reason,
        });
    }
    Ok(sections)
}

fn first_pem_label(text: &str) -> Option<String> {
    let start = text.find("-----BEGIN ")? + "-----BEGIN ".len();
    let rest = &text[start..];
    let end = rest.find("-----")?;
    Some(rest[..end].to_string())
}

fn pem_reason(err: &pem::Error) -> String {
    match err {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "a section is not terminated (missing {})",
            String::from_utf8_lossy(end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => format!(
            "malformed section start line {:?}",
            String::from_utf8_lossy(line)
        ),
        pem::Error::Base64Decode(e) => format!("bad base64 data: {e}"),
        other => other.to_string(),
    }
}

fn section_name(kind: SectionKind) -> &'static str {
    match kind {
        SectionKind::Certificate => "CERTIFICATE",
        SectionKind::PublicKey => "PUBLIC KEY",
        SectionKind::RsaPrivateKey => "RSA PRIVATE KEY",
        SectionKind::PrivateKey => "PRIVATE KEY",
        SectionKind::EcPrivateKey => "EC PRIVATE KEY",
        SectionKind::Crl => "X509 CRL",
        SectionKind::Csr => "CERTIFICATE REQUEST",
        _ => "other",
    }
}

fn is_private_key(kind: SectionKind) -> bool {
    matches!(
        kind,
        SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey
    )
}

fn certificates(
    file: TlsFile,
    path: &Path,
    sections: &[(SectionKind, Vec<u8>)],
) -> Result<Vec<CertificateDer<'static>>, TlsLoadError> {
    let certs: Vec<CertificateDer<'static>> = sections
        .iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der.clone()))
        .collect();
    if certs.is_empty() {
        let found: Vec<&str> = sections.iter().map(|(k, _)| section_name(*k)).collect();
        let mut hint = format!("; found: {}", found.join(", "));
        if sections.iter().any(|(k, _)| is_private_key(*k)) {
            hint.push_str(" (this looks like a private key file: are cert and key swapped?)");
        }
        return Err(TlsLoadError::NoCertificate {
            file,
            path: path.to_path_buf(),
            hint,
        });
    }
    for der in &certs {
        if cert_validity(der).is_none() {
            return Err(TlsLoadError::BadCertificate {
                file,
                path: path.to_path_buf(),
                reason: "cannot parse the certificate (malformed DER)".into(),
            });
        }
    }
    Ok(certs)
}

fn private_key(
    path: &Path,
    sections: &[(SectionKind, Vec<u8>)],
) -> Result<PrivateKeyDer<'static>, TlsLoadError> {
    for (kind, der) in sections {
        if let Some(key) = PrivateKeyDer::from_pem(*kind, der.clone()) {
            return Ok(key);
        }
    }
    let found: Vec<&str> = sections.iter().map(|(k, _)| section_name(*k)).collect();
    let mut hint = format!("; found: {}", found.join(", "));
    if sections.iter().any(|(k, _)| *k == SectionKind::Certificate) {
        hint.push_str(" (this looks like a certificate file: are cert and key swapped?)");
    }
    Err(TlsLoadError::NoPrivateKey {
        path: path.to_path_buf(),
        hint,
    })
}

/// Verifies the server's chain and validity period like [`WebPkiServerVerifier`],
/// but accepts a certificate whose names do not include the dialed host.
#[derive(Debug)]
struct NoHostnameVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for NoHostnameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // WebPkiServerVerifier checks the chain (trust anchor, signatures, validity
        // period, key usage) first and the name last, so a name mismatch error means
        // everything else passed.
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// Explains a failed TLS handshake for logs: whose certificate was refused
/// (the peer's, by us; or ours, by the peer) and why.
///
/// Takes the `io::Error` returned by tokio-rustls `connect`/`accept`; a wrapped
/// [`rustls::Error`] is found through `get_ref()`/`source()`.
pub fn describe_handshake_error(err: &io::Error) -> String {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = err
        .get_ref()
        .map(|e| e as &(dyn std::error::Error + 'static));
    while let Some(e) = cause {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return describe_tls_error(tls);
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return describe_handshake_error(io);
        }
        cause = e.source();
    }
    match err.kind() {
        io::ErrorKind::UnexpectedEof => "peer closed the connection during the TLS handshake \
             (it may have rejected our certificate, or it does not speak TLS)"
            .into(),
        io::ErrorKind::ConnectionReset => "peer reset the connection during the TLS handshake \
             (it may have rejected our certificate, or it does not speak TLS)"
            .into(),
        io::ErrorKind::TimedOut => "TLS handshake timed out".into(),
        _ => format!("TLS handshake failed: {}", io_reason(err)),
    }
}

/// Explains a [`rustls::Error`] (see [`describe_handshake_error`]).
pub fn describe_tls_error(err: &rustls::Error) -> String {
    use rustls::Error as E;
    match err {
        E::InvalidCertificate(ce) => describe_certificate_error(ce),
        E::NoCertificatesPresented => {
            "peer did not present a certificate (inter-router links require client certificates)"
                .into()
        }
        E::AlertReceived(alert) => describe_alert(*alert),
        E::InvalidMessage(m) => {
            use rustls::InvalidMessage as M;
            match m {
                M::InvalidContentType
                | M::UnknownProtocolVersion
                | M::MessageTooLarge
                | M::InvalidEmptyPayload => {
                    "peer does not speak TLS (plain TCP?): it sent data that is not a TLS record"
                        .into()
                }
                other => format!("peer sent a malformed TLS message ({other:?})"),
            }
        }
        E::PeerSentOversizedRecord => {
            "peer does not speak TLS (plain TCP?): it sent an oversized record".into()
        }
        E::NoApplicationProtocol => format!(
            "peer does not offer the {} protocol (ALPN mismatch: not a Tether router, or another version)",
            String::from_utf8_lossy(ALPN_PROTOCOL)
        ),
        E::PeerIncompatible(p) => format!(
            "peer's TLS is incompatible ({p:?}); inter-router links require TLS 1.3"
        ),
        E::PeerMisbehaved(p) => format!("peer violated the TLS protocol ({p:?})"),
        E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
            format!("peer sent an unexpected TLS message ({err})")
        }
        E::DecryptError => "TLS decryption failed (corrupted data or wrong keys)".into(),
        E::InconsistentKeys(InconsistentKeys::KeyMismatch) => {
            "our private key does not match our certificate".into()
        }
        other => format!("TLS error: {other}"),
    }
}

fn describe_certificate_error(err: &CertificateError) -> String {
    use CertificateError as C;
    match err {
        C::UnknownIssuer => "peer certificate is signed by an unknown CA \
             (not issued by any CA in our profile's `ca` file)"
            .into(),
        C::ExpiredContext { time, not_after } => format!(
            "peer certificate expired at {} (now {})",
            format_unix(not_after.as_secs()),
            format_unix(time.as_secs())
        ),
        C::Expired => "peer certificate has expired".into(),
        C::NotValidYetContext { time, not_before } => format!(
            "peer certificate is not valid yet: valid from {} (now {}; check the clocks)",
            format_unix(not_before.as_secs()),
            format_unix(time.as_secs())
        ),
        C::NotValidYet => "peer certificate is not valid yet (check the clocks)".into(),
        C::NotValidForNameContext {
            expected,
            presented,
        } => {
            let names: Vec<String> = presented.iter().map(|p| clean_presented(p)).collect();
            let names = if names.is_empty() {
                "no subject alternative names".to_string()
            } else {
                names.join(", ")
            };
            format!(
                "peer's certificate name does not match {} (certificate is for: {names}); \
                 connect by one of those names or set verify_hostname = false",
                expected.to_str()
            )
        }
        C::NotValidForName => "peer's certificate name does not match the host we connected to \
             (fix the host or set verify_hostname = false)"
            .into(),
        C::BadSignature => "peer certificate has an invalid signature (or is signed by an \
             unknown CA that has the same name as one of ours)"
            .into(),
        C::BadEncoding => "peer certificate is malformed".into(),
        C::Revoked => "peer certificate has been revoked".into(),
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
            "peer certificate is not allowed for this use \
             (its extended key usage lacks TLS client/server authentication)"
                .into()
        }
        C::UnhandledCriticalExtension => {
            "peer certificate has an unsupported critical extension".into()
        }
        C::UnsupportedSignatureAlgorithmContext { .. }
        | C::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            "peer certificate uses an unsupported signature algorithm".into()
        }
        other => format!(
            "peer certificate rejected: {}",
            rustls::Error::InvalidCertificate(other.clone())
        ),
    }
}

/// `DnsName("localhost")` -> `localhost`, `IpAddress(127.0.0.1)` -> `127.0.0.1`.
fn clean_presented(p: &str) -> String {
    if let Some(inner) = p
        .strip_prefix("DnsName(\"")
        .and_then(|s| s.strip_suffix("\")"))
    {
        return inner.to_string();
    }
    if let Some(inner) = p
        .strip_prefix("IpAddress(")
        .and_then(|s| s.strip_suffix(')'))
    {
        return inner.to_string();
    }
    p.to_string()
}

fn describe_alert(alert: AlertDescription) -> String {
    use AlertDescription as A;
    let why = match alert {
        A::UnknownCA => "peer rejected our certificate: it is signed by a CA the peer does not \
             trust (unknown CA)"
            .to_string(),
        A::CertificateExpired => "peer rejected our certificate: it has expired".into(),
        A::BadCertificate => "peer rejected our certificate (bad certificate: e.g. its name \
             does not match the host the peer dialed)"
            .into(),
        A::CertificateRequired => {
            "peer requires a client certificate and we did not send one".into()
        }
        A::CertificateRevoked => "peer rejected our certificate: it is revoked".into(),
        A::UnsupportedCertificate => {
            "peer rejected our certificate: unsupported certificate (wrong key usage?)".into()
        }
        A::CertificateUnknown => "peer rejected our certificate (certificate unknown)".into(),
        A::DecodeError => "peer could not decode our handshake (malformed certificate?)".into(),
        A::ProtocolVersion => "peer does not support TLS 1.3".into(),
        A::HandshakeFailure => {
            "peer aborted the handshake (handshake_failure: no common TLS version or cipher suite?)"
                .into()
        }
        A::NoApplicationProtocol => format!(
            "peer does not support the {} protocol (ALPN mismatch)",
            String::from_utf8_lossy(ALPN_PROTOCOL)
        ),
        other => format!("peer aborted the handshake with TLS alert {other:?}"),
    };
    why
}

/// Formats a time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_system_time(t: SystemTime) -> String {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => format_unix(d.as_secs()),
        Err(e) => format_unix_signed(-(e.duration().as_secs() as i64)),
    }
}

fn format_unix(secs: u64) -> String {
    format_unix_signed(i64::try_from(secs).unwrap_or(i64::MAX))
}

fn format_unix_signed(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 -> (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) -> days since 1970-01-01, proleptic Gregorian.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Reads one DER TLV: returns (tag, contents, rest).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// Extracts (notBefore, notAfter) from an X.509 certificate.
fn cert_validity(der: &[u8]) -> Option<(SystemTime, SystemTime)> {
    const SEQUENCE: u8 = 0x30;
    let (tag, cert, _) = der_tlv(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = der_tlv(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, _, mut rest) = der_tlv(tbs)?;
    if tag == 0xa0 {
        // [0] version, then the serial number.
        let (_, _, r) = der_tlv(rest)?;
        rest = r;
    }
    let (_, _, rest) = der_tlv(rest)?; // signature algorithm
    let (_, _, rest) = der_tlv(rest)?; // issuer
    let (tag, validity, _) = der_tlv(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (nb_tag, nb, rest) = der_tlv(validity)?;
    let (na_tag, na, _) = der_tlv(rest)?;
    Some((der_time(nb_tag, nb)?, der_time(na_tag, na)?))
}

/// Parses a UTCTime (tag 0x17) or GeneralizedTime (tag 0x18) ending in `Z`.
fn der_time(tag: u8, bytes: &[u8]) -> Option<SystemTime> {
    let text = std::str::from_utf8(bytes).ok()?;
    let text = text.strip_suffix('Z')?;
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |s: &str| s.parse::<i64>().ok();
    let (year, rest) = match tag {
        0x17 if text.len() == 12 => {
            let yy = num(&text[..2])?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &text[2..])
        }
        0x18 if text.len() == 14 => (num(&text[..4])?, &text[4..]),
        _ => return None,
    };
    let month = u32::try_from(num(&rest[0..2])?).ok()?;
    let day = u32::try_from(num(&rest[2..4])?).ok()?;
    let (h, mi, s) = (num(&rest[4..6])?, num(&rest[6..8])?, num(&rest[8..10])?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + h * 3600 + mi * 60 + s;
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    }
}

/// Writes a fresh self-signed CA (`ca.pem`, `ca-key.pem`) and, for each name,
/// a leaf certificate `<name>.pem` with key `<name>-key.pem` signed by it, into
/// `dir` (created if missing; existing files are overwritten).
///
/// Leaves are valid for both TLS server and client authentication, for the
/// names `localhost`, `<name>` (when it is a valid DNS name) and `127.0.0.1`.
/// Everything is valid for one year from now (backdated one hour for clock skew).
/// Keys are ECDSA P-256 in PKCS#8 and written with mode 0600 on Unix.
///
/// Returns the written paths: `ca.pem`, `ca-key.pem`, then `<name>.pem`,
/// `<name>-key.pem` for each name in order.
pub fn generate_site_certs(dir: &Path, names: &[&str]) -> Result<Vec<PathBuf>, CertGenError> {
    for name in names {
        validate_cert_name(name)?;
    }
    fs::create_dir_all(dir).map_err(|source| CertGenError::Write {
        path: dir.to_path_buf(),
        source,
    })?;

    let now = SystemTime::now();
    let validity = (
        now - Duration::from_secs(3600),
        now + Duration::from_secs(365 * 86_400),
    );
    let (ca_cert, issuer) = new_ca(validity)?;

    let mut written = Vec::with_capacity(2 + 2 * names.len());
    written.push(write_file(
        &dir.join("ca.pem"),
        ca_cert.pem().as_bytes(),
        false,
    )?);
    written.push(write_file(
        &dir.join("ca-key.pem"),
        issuer.key().serialize_pem().as_bytes(),
        true,
    )?);
    for name in names {
        let key = rcgen::KeyPair::generate()?;
        let cert = issue_leaf(&issuer, name, &key, validity)?;
        written.push(write_file(
            &dir.join(format!("{name}.pem")),
            cert.pem().as_bytes(),
            false,
        )?);
        written.push(write_file(
            &dir.join(format!("{name}-key.pem")),
            key.serialize_pem().as_bytes(),
            true,
        )?);
    }
    Ok(written)
}

/// A new self-signed CA (ECDSA P-256) valid for `validity` (notBefore, notAfter).
pub(crate) fn new_ca(
    validity: (SystemTime, SystemTime),
) -> Result<(rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>), rcgen::Error> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
    let key = rcgen::KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    // A unique name: peers look up the issuing CA by name, and two CAs with the
    // same name would turn "unknown CA" into a confusing "bad signature".
    let id: String = key
        .public_key_raw()
        .iter()
        .skip(1)
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("Tether site CA {id}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = validity.0.into();
    params.not_after = validity.1.into();
    let cert = params.self_signed(&key)?;
    Ok((cert, rcgen::Issuer::new(params, key)))
}

/// A leaf certificate for `name` with public key `key`, signed by `issuer`.
fn issue_leaf(
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    name: &str,
    key: &rcgen::KeyPair,
    validity: (SystemTime, SystemTime),
) -> Result<rcgen::Certificate, rcgen::Error> {
    use rcgen::{
        CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType,
    };
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    let mut sans = vec![SanType::DnsName("localhost".try_into()?)];
    if name != "localhost" && is_dns_name(name) {
        sans.push(SanType::DnsName(name.try_into()?));
    }
    sans.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = validity.0.into();
    params.not_after = validity.1.into();
    params.signed_by(key, issuer)
}

fn validate_cert_name(name: &str) -> Result<(), CertGenError> {
    let bad = |reason: &str| {
        Err(CertGenError::InvalidName {
            name: name.to_string(),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() || name.len() > 64 {
        return bad("must be 1 to 64 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only letters, digits, '.', '_' and '-' are allowed");
    }
    if name.starts_with('.') {
        return bad("must not start with '.'");
    }
    if name == "ca" {
        return bad("\"ca\" is reserved for the CA files");
    }
    Ok(())
}

pub(crate) fn is_dns_name(name: &str) -> bool {
    !name.contains('_')
        && name.parse::<IpAddr>().is_err()
        && rustls::pki_types::DnsName::try_from(name).is_ok()
}

fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<PathBuf, CertGenError> {
    let err = |source| CertGenError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path).map_err(err)?;
    io::Write::write_all(&mut file, contents).map_err(err)?;
    #[cfg(unix)]
    if private {
        // `mode` only applies to newly created files; tighten an existing one too.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(path.to_path_buf())
}

/// Certificate-writing helpers shared by the unit tests of this crate.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// Validity of one year around now.
    pub(crate) fn current() -> (SystemTime, SystemTime) {
        let now = SystemTime::now();
        (
            now - Duration::from_secs(3600),
            now + Duration::from_secs(365 * 86_400),
        )
    }

    /// `secs` seconds since the Unix epoch.
    pub(crate) fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// A CA written to `dir/ca.pem`, able to issue leaves into the same folder.
    pub(crate) struct TestCa {
        pub(crate) dir: PathBuf,
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    }

    impl TestCa {
        pub(crate) fn new(dir: &Path) -> TestCa {
            let (cert, issuer) = new_ca(current()).expect("CA");
            fs::write(dir.join("ca.pem"), cert.pem()).expect("write ca.pem");
            TestCa {
                dir: dir.to_path_buf(),
                issuer,
            }
        }

        /// Issues `<name>.pem` + `<name>-key.pem` (fresh P-256 key, PKCS#8).
        pub(crate) fn leaf(
            &self,
            name: &str,
            validity: (SystemTime, SystemTime),
        ) -> (PathBuf, PathBuf) {
            let key = rcgen::KeyPair::generate().expect("key");
            self.leaf_with_key(name, validity, &key, &key.serialize_pem())
        }

        /// Issues `<name>.pem` for `key`, writing `key_pem` (any encoding of the
        /// same key) as `<name>-key.pem`.
        pub(crate) fn leaf_with_key(
            &self,
            name: &str,
            validity: (SystemTime, SystemTime),
            key: &rcgen::KeyPair,
            key_pem: &str,
        ) -> (PathBuf, PathBuf) {
            let cert = issue_leaf(&self.issuer, name, key, validity).expect("leaf");
            let cert_path = self.dir.join(format!("{name}.pem"));
            let key_path = self.dir.join(format!("{name}-key.pem"));
            fs::write(&cert_path, cert.pem()).expect("write cert");
            fs::write(&key_path, key_pem).expect("write key");
            (cert_path, key_path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    fn material(dir: &Path, name: &str) -> TlsMaterial {
        load_material(
            &dir.join("ca.pem"),
            &dir.join(format!("{name}.pem")),
            &dir.join(format!("{name}-key.pem")),
        )
        .expect("load material")
    }

    type Outcome = (io::Result<()>, io::Result<()>);

    /// Runs a full handshake plus a ping/pong over an in-memory duplex.
    /// Returns (server result, client result).
    async fn handshake(server: &TlsMaterial, client: Arc<ClientConfig>, host: &str) -> Outcome {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let acceptor = TlsAcceptor::from(server.server.clone());
        let connector = TlsConnector::from(client);
        let name = ServerName::try_from(host.to_string()).expect("server name");
        let server_side = async move {
            let mut s = acceptor.accept(a).await?;
            assert_eq!(s.get_ref().1.alpn_protocol(), Some(ALPN_PROTOCOL));
            assert_eq!(
                s.get_ref().1.protocol_version(),
                Some(rustls::ProtocolVersion::TLSv1_3)
            );
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await?;
            assert_eq!(&buf, b"ping");
            s.write_all(b"pong").await?;
            s.flush().await?;
            Ok(())
        };
        let client_side = async move {
            let mut c = connector.connect(name, b).await?;
            assert_eq!(c.get_ref().1.alpn_protocol(), Some(ALPN_PROTOCOL));
            c.write_all(b"ping").await?;
            c.flush().await?;
            let mut buf = [0u8; 4];
            c.read_exact(&mut buf).await?;
            assert_eq!(&buf, b"pong");
            Ok(())
        };
        tokio::join!(server_side, client_side)
    }

    fn describe(result: &io::Result<()>) -> String {
        match result {
            Ok(()) => panic!("expected a handshake error"),
            Err(e) => describe_handshake_error(e),
        }
    }

    #[tokio::test]
    async fn handshake_same_ca_succeeds() {
        let dir = tempdir();
        generate_site_certs(dir.path(), &["east", "west"]).expect("certs");
        let east = material(dir.path(), "east");
        let west = material(dir.path(), "west");
        for host in ["localhost", "127.0.0.1", "east"] {
            let (s, c) = handshake(&east, west.client.clone(), host).await;
            s.expect("server side");
            c.expect("client side");
        }
        let (s, c) = handshake(&west, east.client_no_hostname.clone(), "west").await;
        s.expect("server side");
        c.expect("client side");
    }

    #[tokio::test]
    async fn handshake_other_ca_fails_with_unknown_ca() {
        let d1 = tempdir();
        let d2 = tempdir();
        generate_site_certs(d1.path(), &["east"]).expect("certs");
        generate_site_certs(d2.path(), &["west"]).expect("certs");
        let east = material(d1.path(), "east");
        let west = material(d2.path(), "west");
        let (s, c) = handshake(&east, west.client.clone(), "localhost").await;
        let client_msg = describe(&c);
        assert!(client_msg.contains("unknown CA"), "{client_msg}");
        assert!(client_msg.starts_with("peer certificate"), "{client_msg}");
        let server_msg = describe(&s);
        assert!(server_msg.contains("unknown CA"), "{server_msg}");
        assert!(
            server_msg.contains("rejected our certificate"),
            "{server_msg}"
        );

        // The skip-hostname client still verifies the chain.
        let (_, c) = handshake(&east, west.client_no_hostname.clone(), "localhost").await;
        assert!(describe(&c).contains("unknown CA"));
    }

    #[tokio::test]
    async fn client_cert_from_other_ca_is_rejected_by_server() {
        let d1 = tempdir();
        let d2 = tempdir();
        generate_site_certs(d1.path(), &["east"]).expect("certs");
        generate_site_certs(d2.path(), &["west"]).expect("certs");
        let east = material(d1.path(), "east");
        // Client trusts east's CA but presents a cert from another CA.
        let west_mixed = load_material(
            &d1.path().join("ca.pem"),
            &d2.path().join("west.pem"),
            &d2.path().join("west-key.pem"),
        )
        .expect("material");
        let (s, _c) = handshake(&east, west_mixed.client.clone(), "localhost").await;
        let msg = describe(&s);
        assert!(msg.contains("unknown CA"), "{msg}");
        assert!(msg.starts_with("peer certificate"), "{msg}");
    }

    #[tokio::test]
    async fn expired_leaf_fails_and_says_expired() {
        let dir = tempdir();
        let ca = TestCa::new(dir.path());
        // Expired 2020-01-01 00:00:00 UTC.
        ca.leaf("east", (at(1_546_300_800), at(1_577_836_800)));
        ca.leaf("west", current());
        let east = material(dir.path(), "east");
        assert_eq!(east.not_after, Some(at(1_577_836_800)));
        let west = material(dir.path(), "west");
        let (s, c) = handshake(&east, west.client.clone(), "localhost").await;
        let msg = describe(&c);
        assert!(msg.contains("expired"), "{msg}");
        assert!(msg.contains("2020-01-01 00:00:00 UTC"), "{msg}");
        let msg = describe(&s);
        assert!(
            msg.contains("expired") && msg.contains("our certificate"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn hostname_mismatch_and_verify_hostname_false() {
        let dir = tempdir();
        generate_site_certs(dir.path(), &["east", "west"]).expect("certs");
        let east = material(dir.path(), "east");
        let west = material(dir.path(), "west");
        let (_s, c) = handshake(&east, west.client.clone(), "10.1.2.3").await;
        let msg = describe(&c);
        assert!(msg.contains("name does not match 10.1.2.3"), "{msg}");
        assert!(msg.contains("localhost, east, 127.0.0.1"), "{msg}");
        let (s, c) = handshake(&east, west.client_no_hostname.clone(), "10.1.2.3").await;
        s.expect("server side");
        c.expect("client side");
    }

    #[tokio::test]
    async fn plain_tcp_to_server_does_not_speak_tls() {
        let dir = tempdir();
        generate_site_certs(dir.path(), &["east"]).expect("certs");
        let east = material(dir.path(), "east");
        let (a, mut b) = tokio::io::duplex(4096);
        let acceptor = TlsAcceptor::from(east.server.clone());
        let plain = async move {
            let _ = b.write_all(b"GET / HTTP/1.1\r\nHost: east\r\n\r\n").await;
            let mut sink = Vec::new();
            let _ = b.read_to_end(&mut sink).await;
        };
        let (res, ()) = tokio::join!(acceptor.accept(a), plain);
        let err = res.expect_err("handshake must fail");
        let msg = describe_handshake_error(&err);
        assert!(msg.contains("does not speak TLS"), "{msg}");
    }

    #[tokio::test]
    async fn plain_tcp_server_seen_from_client() {
        let dir = tempdir();
        generate_site_certs(dir.path(), &["east"]).expect("certs");
        let east = material(dir.path(), "east");
        let (a, mut b) = tokio::io::duplex(4096);
        let connector = TlsConnector::from(east.client.clone());
        let plain = async move {
            let mut buf = [0u8; 16];
            let _ = b.read(&mut buf).await;
            let _ = b.write_all(b"220 welcome to plain text land\r\n").await;
        };
        let name = ServerName::try_from("localhost").expect("name");
        let (res, ()) = tokio::join!(connector.connect(name, a), plain);
        let err = res.expect_err("handshake must fail");
        let msg = describe_handshake_error(&err);
        assert!(msg.contains("does not speak TLS"), "{msg}");
    }

    #[tokio::test]
    async fn legacy_key_encodings_load_and_handshake() {
        let dir = tempdir();
        let ca = TestCa::new(dir.path());
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let read = |f: &str| fs::read_to_string(fixtures.join(f)).expect("fixture");
        let rsa = rcgen::KeyPair::from_pem(&read("test-rsa-pkcs8-key.pem")).expect("rsa key");
        ca.leaf_with_key("rsa", current(), &rsa, &read("test-rsa-pkcs1-key.pem"));
        let ec = rcgen::KeyPair::from_pem(&read("test-ec-pkcs8-key.pem")).expect("ec key");
        ca.leaf_with_key("ec", current(), &ec, &read("test-ec-sec1-key.pem"));
        ca.leaf_with_key("ec8", current(), &ec, &read("test-ec-pkcs8-key.pem"));
        let rsa = material(dir.path(), "rsa");
        let ec = material(dir.path(), "ec");
        let ec8 = material(dir.path(), "ec8");
        let (s, c) = handshake(&rsa, ec.client.clone(), "localhost").await;
        s.expect("server");
        c.expect("client");
        let (s, c) = handshake(&ec8, rsa.client.clone(), "localhost").await;
        s.expect("server");
        c.expect("client");
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempdir();
        generate_site_certs(dir.path(), &["east", "west"]).expect("certs");
        let p = |f: &str| dir.path().join(f);
        let ca = p("ca.pem");

        let err = load_material(&p("nope.pem"), &p("east.pem"), &p("east-key.pem")).unwrap_err();
        assert_eq!(err.file(), Some(TlsFile::Ca));
        assert!(err.to_string().contains("cannot read CA file"), "{err}");
        assert!(
            err.to_string().ends_with("No such file or directory"),
            "{err}"
        );

        fs::write(p("junk.pem"), "hello\n").expect("write");
        let err = load_material(&ca, &p("junk.pem"), &p("east-key.pem")).unwrap_err();
        assert!(
            matches!(
                err,
                TlsLoadError::NotPem {
                    file: TlsFile::Cert,
                    ..
                }
            ),
            "{err}"
        );

        fs::write(p("empty.pem"), "").expect("write");
        let err = load_material(&ca, &p("east.pem"), &p("empty.pem")).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");

        let der = CertificateDer::from_pem_file(p("east.pem")).expect("pem");
        fs::write(p("east.der"), der.as_ref()).expect("write");
        let err = load_material(&ca, &p("east.der"), &p("east-key.pem")).unwrap_err();
        assert!(err.to_string().contains("DER"), "{err}");

        let err = load_material(&ca, &p("east-key.pem"), &p("east.pem")).unwrap_err();
        assert!(
            matches!(
                err,
                TlsLoadError::NoCertificate {
                    file: TlsFile::Cert,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("swapped"), "{err}");

        let err = load_material(&ca, &p("east.pem"), &p("east.pem")).unwrap_err();
        assert!(matches!(err, TlsLoadError::NoPrivateKey { .. }), "{err}");
        assert!(err.to_string().contains("swapped"), "{err}");

        let err = load_material(&ca, &p("east.pem"), &p("west-key.pem")).unwrap_err();
        assert!(matches!(err, TlsLoadError::KeyMismatch { .. }), "{err}");
        assert_eq!(err.file(), Some(TlsFile::Key));

        fs::write(
            p("enc.pem"),
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .expect("write");
        let err = load_material(&ca, &p("east.pem"), &p("enc.pem")).unwrap_err();
        assert!(
            err.to_string()
                .contains("encrypted private keys are not supported"),
            "{err}"
        );

        fs::write(p("trunc.pem"), "-----BEGIN CERTIFICATE-----\nAAAA\n").expect("write");
        let err = load_material(&p("trunc.pem"), &p("east.pem"), &p("east-key.pem")).unwrap_err();
        assert!(
            matches!(
                err,
                TlsLoadError::NotPem {
                    file: TlsFile::Ca,
                    ..
                }
            ),
            "{err}"
        );

        fs::write(
            p("garbage-cert.pem"),
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let err = load_material(&ca, &p("garbage-cert.pem"), &p("east-key.pem")).unwrap_err();
        assert!(
            matches!(
                err,
                TlsLoadError::BadCertificate {
                    file: TlsFile::Cert,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn generated_files_and_names() {
        let dir = tempdir();
        let paths =
            generate_site_certs(&dir.path().join("sub"), &["east", "west_1"]).expect("certs");
        let names: Vec<String> = paths
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "ca.pem",
                "ca-key.pem",
                "east.pem",
                "east-key.pem",
                "west_1.pem",
                "west_1-key.pem"
            ]
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&paths[3]).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let m = material(&dir.path().join("sub"), "west_1");
        let not_after = m.not_after.expect("not_after");
        let year = Duration::from_secs(365 * 86_400);
        let left = not_after
            .duration_since(SystemTime::now())
            .expect("in the future");
        assert!(
            left > year - Duration::from_secs(120) && left <= year,
            "{left:?}"
        );

        for bad in ["", "ca", "../x", "a b", ".hidden"] {
            assert!(
                matches!(
                    generate_site_certs(dir.path(), &[bad]),
                    Err(CertGenError::InvalidName { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn time_formatting_and_der_time() {
        assert_eq!(format_unix(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_unix(1_577_836_800), "2020-01-01 00:00:00 UTC");
        assert_eq!(format_unix(951_782_400 + 3661), "2000-02-29 01:01:01 UTC");
        assert_eq!(format_system_time(at(86_399)), "1970-01-01 23:59:59 UTC");
        assert_eq!(der_time(0x17, b"200101000000Z"), Some(at(1_577_836_800)));
        assert_eq!(der_time(0x18, b"20200101000000Z"), Some(at(1_577_836_800)));
        assert_eq!(der_time(0x17, b"2001010000Z"), None);
        assert_eq!(der_time(0x18, b"20201301000000Z"), None);
        for days in [-800_000i64, -1, 0, 1, 59, 60, 365, 10_957, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
