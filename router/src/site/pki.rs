//! A site's certificates: its own CA, the router's certificate, and the
//! client certificates it issues to peers.
//!
//! Every site has its own CA (`ca.pem`, `ca-key.pem`). The router presents
//! `router.pem` (signed by that CA) on its inter-router listener and on the
//! grant server. A peer that links to this site presents a client
//! certificate signed by *this* CA, obtained either by redeeming a token
//! (the peer sends a CSR made with [`make_csr`]; the grant server answers
//! with [`sign_csr`]) or from `tether link generate` ([`issue_client_cert`],
//! key made here). So a link is always mutual TLS with per-site CAs, and a
//! private key made for a token never leaves the site that made it.
//!
//! Keys are ECDSA P-256 (PKCS#8 PEM) and written with mode 0600.
//! Certificates are identified by the SHA-256 of their DER ([`fingerprint`]),
//! which is what `[[issued]]` records and `tether link revoke` matches.

use std::fs;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DnType, DnValue, ExtendedKeyUsagePurpose,
    IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use super::{validate_site_name, write_atomic};

/// File names inside a site folder.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The site CA's private key (mode 0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The router's certificate, signed by the site CA.
pub const ROUTER_CERT_FILE: &str = "router.pem";
/// The router's private key (mode 0600).
pub const ROUTER_KEY_FILE: &str = "router-key.pem";

/// How long the site CA is valid: long, because every link made to this
/// site trusts it and there is no rotation yet.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// How long the router's own certificate is valid (renewed by re-creating
/// the site; kept inside the CA's validity).
const ROUTER_CERT_VALIDITY: Duration = Duration::from_secs(5 * 365 * 86_400);
/// How long a certificate issued to a peer (token redemption, `link
/// generate`) is valid.
const PEER_CERT_VALIDITY: Duration = Duration::from_secs(365 * 86_400);
/// Certificates start an hour in the past so a peer whose clock is a little
/// behind accepts them.
const BACKDATE: Duration = Duration::from_secs(3600);

/// Creates the site CA and the router certificate in `dir` (which must
/// exist): `ca.pem`, `ca-key.pem`, `router.pem`, `router-key.pem`.
///
/// The router certificate names `localhost`, `127.0.0.1`, `site` and every
/// host in `extra_sans` (the `--link-access` hosts peers dial; a `host:port`
/// is accepted and its port ignored). Existing files are replaced.
pub fn create_site_pki(dir: &Path, site: &str, extra_sans: &[String]) -> Result<(), String> {
    validate_site_name(site)?;
    let now = SystemTime::now();
    let (ca_cert, issuer) = crate::tls::new_ca((now - BACKDATE, now + CA_VALIDITY))
        .map_err(|e| format!("cannot create the site CA: {e}"))?;

    let mut sans = vec![
        SanType::DnsName(dns("localhost")?),
        SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
    ];
    if crate::tls::is_dns_name(site) && site != "localhost" {
        sans.push(SanType::DnsName(dns(site)?));
    }
    for host in extra_sans {
        let san = host_san(host)?;
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    let router_key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let mut params = leaf_params(site, (now - BACKDATE, now + ROUTER_CERT_VALIDITY))?;
    params.subject_alt_names = sans;
    let router_cert = params
        .signed_by(&router_key, &issuer)
        .map_err(|e| format!("cannot sign the router certificate: {e}"))?;

    write_atomic(&dir.join(CA_CERT_FILE), ca_cert.pem().as_bytes(), false)?;
    write_atomic(
        &dir.join(CA_KEY_FILE),
        issuer.key().serialize_pem().as_bytes(),
        true,
    )?;
    write_atomic(
        &dir.join(ROUTER_CERT_FILE),
        router_cert.pem().as_bytes(),
        false,
    )?;
    write_atomic(
        &dir.join(ROUTER_KEY_FILE),
        router_key.serialize_pem().as_bytes(),
        true,
    )?;
    Ok(())
}

/// A fresh key and a certificate signing request for `site` (CN = site).
/// Returns (CSR PEM, private key PEM); the key stays with the caller.
pub fn make_csr(site: &str) -> Result<(String, String), String> {
    validate_site_name(site)?;
    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, site);
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| format!("cannot make a certificate request: {e}"))?;
    Ok((csr, key.serialize_pem()))
}

/// Signs a peer's CSR with the CA of the site in `site_dir`.
///
/// Only the request's public key and common name are used (the CN must be a
/// valid site name); everything else is decided here: client and server
/// authentication, not a CA, one year of validity. Returns (certificate PEM,
/// SHA-256 fingerprint hex).
pub fn sign_csr(site_dir: &Path, csr_pem: &str) -> Result<(String, String), String> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
        format!("the certificate request is not a valid PEM CSR with a valid signature: {e}")
    })?;
    let cn = match csr.params.distinguished_name.get(&DnType::CommonName) {
        Some(DnValue::Utf8String(s)) => s.clone(),
        Some(DnValue::PrintableString(s)) => s.as_str().to_string(),
        Some(DnValue::Ia5String(s)) => s.as_str().to_string(),
        Some(_) => return Err("the certificate request's common name is not plain text".into()),
        None => return Err("the certificate request has no common name (the site name)".into()),
    };
    validate_site_name(&cn).map_err(|e| format!("the certificate request's common name: {e}"))?;
    let issuer = load_issuer(site_dir)?;
    let now = SystemTime::now();
    let signing = CertificateSigningRequestParams {
        params: leaf_params(&cn, (now - BACKDATE, now + PEER_CERT_VALIDITY))?,
        public_key: csr.public_key,
    };
    let cert = signing
        .signed_by(&issuer)
        .map_err(|e| format!("cannot sign the certificate request: {e}"))?;
    Ok((cert.pem(), fingerprint(cert.der())))
}

/// A fresh key and certificate with common name `cn`, signed by the CA of
/// the site in `site_dir` (for `tether link generate`). Returns
/// (certificate PEM, private key PEM, SHA-256 fingerprint hex).
pub fn issue_client_cert(site_dir: &Path, cn: &str) -> Result<(String, String, String), String> {
    validate_site_name(cn)?;
    let issuer = load_issuer(site_dir)?;
    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let now = SystemTime::now();
    let cert = leaf_params(cn, (now - BACKDATE, now + PEER_CERT_VALIDITY))?
        .signed_by(&key, &issuer)
        .map_err(|e| format!("cannot sign the certificate: {e}"))?;
    Ok((cert.pem(), key.serialize_pem(), fingerprint(cert.der())))
}

/// SHA-256 of a certificate's DER, lowercase hex: how issued certificates
/// are recorded and matched.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// [`fingerprint`] of the first certificate in a PEM text.
pub fn fingerprint_pem(cert_pem: &str) -> Result<String, String> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    Ok(fingerprint(der.as_ref()))
}

/// The site CA as an rcgen issuer, read back from `ca.pem` + `ca-key.pem`.
fn load_issuer(site_dir: &Path) -> Result<rcgen::Issuer<'static, KeyPair>, String> {
    let read = |name: &str| {
        let path = site_dir.join(name);
        fs::read_to_string(&path).map_err(|e| {
            format!(
                "cannot read {}: {e}; is {} a site folder made by `tether site create`?",
                path.display(),
                site_dir.display()
            )
        })
    };
    let ca_pem = read(CA_CERT_FILE)?;
    let key_pem = read(CA_KEY_FILE)?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| {
        format!(
            "{} is not a usable private key: {e}",
            site_dir.join(CA_KEY_FILE).display()
        )
    })?;
    rcgen::Issuer::from_ca_cert_pem(&ca_pem, key).map_err(|e| {
        format!(
            "{} is not a usable CA certificate: {e}",
            site_dir.join(CA_CERT_FILE).display()
        )
    })
}

/// Parameters of a leaf certificate for `cn`: client and server auth, not a
/// CA, a random serial, valid for `validity`. SANs: `cn` when it is a DNS
/// name (so a site's certificate can also serve for its name).
fn leaf_params(cn: &str, validity: (SystemTime, SystemTime)) -> Result<CertificateParams, String> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    if crate::tls::is_dns_name(cn) {
        params.subject_alt_names = vec![SanType::DnsName(dns(cn)?)];
    }
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
    let mut serial = [0u8; 16];
    rand::Rng::fill(&mut rand::rng(), &mut serial[..]);
    serial[0] &= 0x7f; // a positive integer
    params.serial_number = Some(serial.to_vec().into());
    params.not_before = validity.0.into();
    params.not_after = validity.1.into();
    Ok(params)
}

fn dns(name: &str) -> Result<rcgen::string::Ia5String, String> {
    name.try_into()
        .map_err(|e| format!("{name:?} cannot be a certificate DNS name: {e}"))
}

/// The SAN for a `--link-access` host (`host` or `host:port`, IPv6 in
/// brackets when a port follows).
fn host_san(host_port: &str) -> Result<SanType, String> {
    let host = split_host(host_port);
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    if crate::tls::is_dns_name(host) {
        return Ok(SanType::DnsName(dns(host)?));
    }
    Err(format!(
        "link access host {host:?} is neither an IP address nor a DNS name; give e.g. 10.0.0.5:41001 or east.example.com:41001"
    ))
}

/// The host part of `host`, `host:port`, `[v6]` or `[v6]:port`.
pub(crate) fn split_host(host_port: &str) -> &str {
    if let Some(rest) = host_port.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    if host_port.parse::<IpAddr>().is_ok() {
        return host_port; // a bare IPv6 address has colons but no port
    }
    match host_port.rsplit_once(':') {
        Some((host, _port)) => host,
        None => host_port,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::load_material;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    /// A full TLS handshake and a byte each way between `server` and a
    /// client presenting `client`, dialing `host`.
    async fn handshake(
        server: &crate::tls::TlsMaterial,
        client: Arc<rustls::ClientConfig>,
        host: &str,
    ) -> (std::io::Result<()>, std::io::Result<()>) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let acceptor = TlsAcceptor::from(server.server.clone());
        let connector = TlsConnector::from(client);
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).expect("name");
        let server_side = async move {
            let mut s = acceptor.accept(a).await?;
            let mut buf = [0u8; 1];
            s.read_exact(&mut buf).await?;
            s.write_all(&buf).await?;
            s.flush().await
        };
        let client_side = async move {
            let mut c = connector.connect(name, b).await?;
            c.write_all(b"x").await?;
            c.flush().await?;
            let mut buf = [0u8; 1];
            c.read_exact(&mut buf).await?;
            Ok(())
        };
        tokio::join!(server_side, client_side)
    }

    fn site(dir: &Path, name: &str, sans: &[&str]) -> crate::tls::TlsMaterial {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        create_site_pki(dir, name, &sans).expect("site pki");
        load_material(
            &dir.join(CA_CERT_FILE),
            &dir.join(ROUTER_CERT_FILE),
            &dir.join(ROUTER_KEY_FILE),
        )
        .expect("router material loads")
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn site_pki_files_and_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = site(dir.path(), "east", &["10.1.2.3:41001", "east.example.com"]);
        let left = m
            .not_after
            .expect("not_after")
            .duration_since(SystemTime::now())
            .expect("future");
        assert!(left > ROUTER_CERT_VALIDITY - Duration::from_secs(60));
        #[cfg(unix)]
        {
            assert_eq!(mode(&dir.path().join(CA_KEY_FILE)), 0o600);
            assert_eq!(mode(&dir.path().join(ROUTER_KEY_FILE)), 0o600);
            assert_eq!(mode(&dir.path().join(CA_CERT_FILE)), 0o644);
        }
        let err = create_site_pki(dir.path(), "east", &["bad host!".into()]).unwrap_err();
        assert!(
            err.contains("neither an IP address nor a DNS name"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn router_cert_names_link_access_hosts() {
        let east_dir = tempfile::tempdir().expect("tempdir");
        let east = site(
            east_dir.path(),
            "east",
            &["10.1.2.3:41001", "east.example.com"],
        );
        // A client of east's own CA (its own router cert) can dial every name.
        for host in [
            "localhost",
            "127.0.0.1",
            "east",
            "10.1.2.3",
            "east.example.com",
        ] {
            let (s, c) = handshake(&east, east.client.clone(), host).await;
            s.expect("server");
            c.unwrap_or_else(|e| panic!("{host}: {e}"));
        }
        let (_s, c) = handshake(&east, east.client.clone(), "10.9.9.9").await;
        assert!(c.is_err());
    }

    #[tokio::test]
    async fn signed_csr_links_west_to_east() {
        let east_dir = tempfile::tempdir().expect("tempdir");
        let west_dir = tempfile::tempdir().expect("tempdir");
        let east = site(east_dir.path(), "east", &[]);
        site(west_dir.path(), "west", &[]);

        let (csr, key) = make_csr("west").expect("csr");
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        let (cert, fp) = sign_csr(east_dir.path(), &csr).expect("signed");
        assert_eq!(fp.len(), 64);
        assert_eq!(fingerprint_pem(&cert).expect("fingerprint"), fp);

        // West's outgoing link: east's CA, the signed cert and west's key.
        let link = west_dir.path().join("link");
        fs::create_dir_all(&link).expect("mkdir");
        fs::copy(east_dir.path().join(CA_CERT_FILE), link.join("ca.pem")).expect("copy");
        fs::write(link.join("cert.pem"), &cert).expect("write");
        fs::write(link.join("key.pem"), &key).expect("write");
        let west_link = load_material(
            &link.join("ca.pem"),
            &link.join("cert.pem"),
            &link.join("key.pem"),
        )
        .expect("key matches the signed certificate");
        let year = Duration::from_secs(365 * 86_400);
        let left = west_link
            .not_after
            .expect("not_after")
            .duration_since(SystemTime::now())
            .expect("future");
        assert!(left > year - Duration::from_secs(60) && left <= year);
        let (s, c) = handshake(&east, west_link.client.clone(), "127.0.0.1").await;
        s.expect("east accepts west's client certificate");
        c.expect("west trusts east");

        // A certificate signed by west's own CA is refused by east.
        let (csr2, _) = make_csr("west").expect("csr");
        let (other, _) = sign_csr(west_dir.path(), &csr2).expect("signed");
        fs::write(link.join("cert.pem"), &other).expect("write");
        assert!(load_material(
            &link.join("ca.pem"),
            &link.join("cert.pem"),
            &link.join("key.pem")
        )
        .is_err());
    }

    #[tokio::test]
    async fn issued_client_cert_is_trusted_by_the_issuer() {
        let east_dir = tempfile::tempdir().expect("tempdir");
        let east = site(east_dir.path(), "east", &[]);
        let (cert, key, fp) = issue_client_cert(east_dir.path(), "link-ab12").expect("issued");
        assert_eq!(fingerprint_pem(&cert).expect("fp"), fp);
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("cert.pem"), &cert).expect("write");
        fs::write(dir.path().join("key.pem"), &key).expect("write");
        let m = load_material(
            &east_dir.path().join(CA_CERT_FILE),
            &dir.path().join("cert.pem"),
            &dir.path().join("key.pem"),
        )
        .expect("material");
        let (s, c) = handshake(&east, m.client.clone(), "localhost").await;
        s.expect("server");
        c.expect("client");
    }

    #[test]
    fn bad_requests_are_refused_with_reasons() {
        let east_dir = tempfile::tempdir().expect("tempdir");
        create_site_pki(east_dir.path(), "east", &[]).expect("pki");
        let err = sign_csr(east_dir.path(), "hello").unwrap_err();
        assert!(err.contains("not a valid PEM CSR"), "{err}");
        // A CSR whose CN is not a site name.
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "../etc/passwd");
        let csr = params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let err = sign_csr(east_dir.path(), &csr).unwrap_err();
        assert!(err.contains("common name"), "{err}");
        // No CA in the folder.
        let empty = tempfile::tempdir().expect("tempdir");
        let (csr, _) = make_csr("west").expect("csr");
        let err = sign_csr(empty.path(), &csr).unwrap_err();
        assert!(err.contains("tether site create"), "{err}");
        assert!(make_csr("West Side").is_err());
    }

    #[test]
    fn host_parts() {
        assert_eq!(split_host("10.0.0.1:41001"), "10.0.0.1");
        assert_eq!(split_host("east.example.com"), "east.example.com");
        assert_eq!(split_host("[::1]:41001"), "::1");
        assert_eq!(split_host("::1"), "::1");
    }
}
