//! A throw-away test PKI made with rcgen, written as PEM files.
//!
//! [`Certs::generate`] creates two unrelated CAs in a folder:
//! - the test CA (`ca.pem`, `ca-key.pem`) that every normal router trusts
//!   and whose leaves every normal router presents;
//! - an "other" CA (`other-ca.pem`, `other-ca-key.pem`) that nobody trusts,
//!   for the "peer with a certificate from another CA" case.
//!
//! Leaves (`NAME.pem` / `NAME-key.pem`) have the SANs the binary's own
//! `tether certs` uses: `localhost`, `NAME` and IP `127.0.0.1`, and both the
//! server and client auth extended key usages (links are mutual TLS). Also:
//! [`Certs::foreign_leaf`] (signed by the other CA), [`Certs::expired_leaf`]
//! (signed by the test CA, validity 2020-01-01 .. 2021-01-01) and
//! [`Certs::mismatched_key`] (a valid leaf whose key file belongs to another
//! leaf). File names are returned relative to the folder, which is also where
//! the configs are written, so a config can name them as they are.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// File name of the test CA certificate.
pub const CA_FILE: &str = "ca.pem";
/// File name of the unrelated CA certificate.
pub const OTHER_CA_FILE: &str = "other-ca.pem";

/// A certificate and key file pair, relative to the [`Certs`] folder.
#[derive(Clone, Debug)]
pub struct LeafFiles {
    /// Certificate PEM file name.
    pub cert: String,
    /// Private key PEM file name.
    pub key: String,
}

/// The test PKI for one test (see the module docs).
pub struct Certs {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
    other_ca: CertifiedIssuer<'static, KeyPair>,
    made: Mutex<Vec<String>>,
}

impl Certs {
    /// Creates both CAs and writes their files into `dir`.
    pub fn generate(dir: &Path) -> Certs {
        let ca = make_ca("Tether Test CA");
        let other_ca = make_ca("Unrelated Test CA");
        write(dir, CA_FILE, &ca.pem());
        write(dir, "ca-key.pem", &ca.key().serialize_pem());
        write(dir, OTHER_CA_FILE, &other_ca.pem());
        write(dir, "other-ca-key.pem", &other_ca.key().serialize_pem());
        Certs {
            dir: dir.to_path_buf(),
            ca,
            other_ca,
            made: Mutex::new(Vec::new()),
        }
    }

    /// The folder the files are written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A valid leaf for router `name`, signed by the test CA
    /// (`NAME.pem`, `NAME-key.pem`). Idempotent.
    pub fn leaf(&self, name: &str) -> LeafFiles {
        let files = LeafFiles {
            cert: format!("{name}.pem"),
            key: format!("{name}-key.pem"),
        };
        if self.first_time(&files.cert) {
            let (cert, key) = make_leaf(name, &self.ca, false);
            write(&self.dir, &files.cert, &cert);
            write(&self.dir, &files.key, &key);
        }
        files
    }

    /// A leaf for router `name` signed by the unrelated CA
    /// (`NAME-foreign.pem`, `NAME-foreign-key.pem`).
    pub fn foreign_leaf(&self, name: &str) -> LeafFiles {
        let files = LeafFiles {
            cert: format!("{name}-foreign.pem"),
            key: format!("{name}-foreign-key.pem"),
        };
        if self.first_time(&files.cert) {
            let (cert, key) = make_leaf(name, &self.other_ca, false);
            write(&self.dir, &files.cert, &cert);
            write(&self.dir, &files.key, &key);
        }
        files
    }

    /// A leaf for router `name` signed by the test CA but expired: valid from
    /// 2020-01-01 to 2021-01-01 (`NAME-expired.pem`, `NAME-expired-key.pem`).
    pub fn expired_leaf(&self, name: &str) -> LeafFiles {
        let files = LeafFiles {
            cert: format!("{name}-expired.pem"),
            key: format!("{name}-expired-key.pem"),
        };
        if self.first_time(&files.cert) {
            let (cert, key) = make_leaf(name, &self.ca, true);
            write(&self.dir, &files.cert, &cert);
            write(&self.dir, &files.key, &key);
        }
        files
    }

    /// A valid leaf certificate for `name` paired with the key of a
    /// different leaf (`NAME-mismatch.pem`, `NAME-mismatch-key.pem`): the
    /// "key does not match cert" configuration error.
    pub fn mismatched_key(&self, name: &str) -> LeafFiles {
        let files = LeafFiles {
            cert: format!("{name}-mismatch.pem"),
            key: format!("{name}-mismatch-key.pem"),
        };
        if self.first_time(&files.cert) {
            let (cert, _key) = make_leaf(name, &self.ca, false);
            let (_other_cert, other_key) = make_leaf(name, &self.ca, false);
            write(&self.dir, &files.cert, &cert);
            write(&self.dir, &files.key, &other_key);
        }
        files
    }

    fn first_time(&self, file: &str) -> bool {
        let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        if made.iter().any(|m| m == file) {
            return false;
        }
        made.push(file.to_string());
        true
    }
}

fn make_ca(common_name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Tether tests");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // Default validity (1975 .. 4096) covers the expired leaf's period too.
    let key = KeyPair::generate().expect("generate CA key");
    CertifiedIssuer::self_signed(params, key).expect("self-sign CA")
}

/// Returns (cert PEM, key PEM). `expired`: valid 2020-01-01 .. 2021-01-01.
fn make_leaf(
    name: &str,
    issuer: &CertifiedIssuer<'static, KeyPair>,
    expired: bool,
) -> (String, String) {
    let sans = vec![
        "localhost".to_string(),
        name.to_string(),
        "127.0.0.1".to_string(),
    ];
    let mut params = CertificateParams::new(sans).expect("leaf params (bad name?)");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    if expired {
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().expect("generate leaf key");
    let cert = params.signed_by(&key, issuer).expect("sign leaf");
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, contents: &str) {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes every kind of file; with `openssl` on PATH, also checks the
    /// chains (valid, foreign, expired) the way a verifier would.
    #[test]
    fn writes_pki() {
        let dir = tempfile::tempdir().unwrap();
        let c = Certs::generate(dir.path());
        let ok = c.leaf("east");
        let foreign = c.foreign_leaf("west");
        let expired = c.expired_leaf("west");
        let mismatch = c.mismatched_key("east");
        for f in [
            CA_FILE,
            OTHER_CA_FILE,
            &ok.cert,
            &ok.key,
            &foreign.cert,
            &expired.cert,
            &mismatch.key,
        ] {
            let s = std::fs::read_to_string(dir.path().join(f)).unwrap();
            assert!(s.starts_with("-----BEGIN "), "{f}: {s}");
        }
        if let Some(dump) = std::env::var_os("TETHER_TEST_DUMP_PKI") {
            let dest = std::path::PathBuf::from(dump);
            std::fs::create_dir_all(&dest).unwrap();
            for e in std::fs::read_dir(dir.path()).unwrap() {
                let e = e.unwrap();
                std::fs::copy(e.path(), dest.join(e.file_name())).unwrap();
            }
        }
    }
}
