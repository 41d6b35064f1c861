//! Tokens: `tether token issue FILE` and `tether token redeem FILE`.
//!
//! A token is a small YAML file that lets another site link to this one
//! once (by default) within a time window:
//!
//! ```yaml
//! kind: tether-token
//! version: 1
//! site: east
//! url: https://127.0.0.1:41003/grants/3f0c...
//! code: <32 random bytes, base64url>
//! expires: 2026-11-27T09:15:00Z
//! ca: |
//!   -----BEGIN CERTIFICATE-----
//!   ...
//! ```
//!
//! **Issue** registers a `[[grant]]` in the site's `site.toml` (a random id,
//! the SHA-256 of the code — never the code itself —, when it expires, how
//! many redemptions it allows and the link cost) and writes the file with
//! mode 0600.
//!
//! **Redeem** (on the other site) makes a fresh key and a CSR for its own
//! site name, and POSTs `{"code", "site", "csr"}` to the token's URL over
//! TLS trusting *only* the CA in the token (server name = the URL's host).
//! The issuing site's grant server ([`super::grants`]) checks the grant and
//! answers with a certificate signed by its CA and the inter-router
//! endpoints; then the link is installed exactly like `tether link apply`
//! does ([`super::links::install_link`]): files under `links/NAME/`, a
//! `[[link]]` in `site.toml`, `router.toml` re-rendered, and, when the
//! router runs, an sslProfile and a connector created live and waited for.
//!
//! Every refusal says which: expired, already used, revoked, a wrong code,
//! an unknown grant, or a grant server whose certificate the token's CA did
//! not sign (the token was altered or is for another site).
//!
//! The YAML is written and read by hand ([`MiniYaml`]): the shape is fixed
//! and small, and the reader accepts what a person editing it would write
//! (comments, quotes, CRLF).

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::RngCore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `kind:` of a token file.
pub const TOKEN_KIND: &str = "tether-token";
/// The token format this code writes and reads.
pub const TOKEN_VERSION: u32 = 1;
/// The longest token (or link) file read: they are a few KiB.
pub const MAX_FILE_BYTES: u64 = 64 * 1024;
/// Default of `--expiration-window`.
pub const DEFAULT_EXPIRATION_WINDOW: &str = "15m";
/// The longest `--expiration-window`: a year.
pub const MAX_EXPIRATION_WINDOW: Duration = Duration::from_secs(366 * 86_400);
/// How long one redemption request may take (connect, TLS, answer).
pub const REDEEM_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest grant server answer read.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// `tether token ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokenCommand {
    /// Register a grant and write a token file another site redeems to link to this one.
    Issue {
        /// Where to write the token (YAML, mode 0600). Keep it secret: it
        /// lets its holder link to this site.
        file: PathBuf,
        /// How long the token can be redeemed: e.g. 30s, 15m, 2h, 7d (at most 366d).
        #[arg(long, value_name = "DURATION", default_value = DEFAULT_EXPIRATION_WINDOW,
              value_parser = parse_duration)]
        expiration_window: Duration,
        /// How many times the token can be redeemed.
        #[arg(long, value_name = "N", default_value_t = 1,
              value_parser = clap::value_parser!(u32).range(1..))]
        redemptions_allowed: u32,
        /// Cost of the link a redemption makes (redeemers may override).
        #[arg(long, value_name = "N", default_value_t = 1,
              value_parser = clap::value_parser!(u32).range(1..))]
        cost: u32,
    },
    /// Redeem a token issued by another site: link this site to it.
    Redeem {
        /// The token file from `tether token issue`.
        file: PathBuf,
        /// Name of the link here (default: the issuing site's name).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Cost of the link (default: the one in the grant).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        cost: Option<u32>,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

/// `--wait`/`--no-wait`/`--timeout` of commands that change a running router.
#[derive(Debug, Clone, clap::Args)]
pub struct WaitArgs {
    /// Return once the change is saved and sent, without waiting for it to take effect.
    #[arg(long)]
    pub no_wait: bool,
    /// Wait (the default) until the change is effective (a link: until it is up).
    #[arg(long, conflicts_with = "no_wait")]
    pub wait: bool,
    /// How long to wait for the change to take effect: e.g. 30s, 2m.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
}

impl Default for WaitArgs {
    fn default() -> Self {
        WaitArgs {
            no_wait: false,
            wait: false,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Runs a `tether token` command on the site chosen by `site_dir`
/// (`--site-dir`/`TETHER_SITE_DIR`, else the only site).
pub async fn run(cmd: TokenCommand, site_dir: Option<PathBuf>) -> Result<(), String> {
    let site = super::SiteDir::resolve(site_dir.as_deref())?;
    match cmd {
        TokenCommand::Issue {
            file,
            expiration_window,
            redemptions_allowed,
            cost,
        } => {
            let issued = issue(
                &site,
                &file,
                expiration_window,
                redemptions_allowed,
                cost,
                SystemTime::now(),
            )?;
            let uses = if redemptions_allowed == 1 {
                "once".to_string()
            } else {
                format!("{redemptions_allowed} times")
            };
            println!(
                "Token written to {} (mode 0600): it can be redeemed {uses} until {} ({}).",
                file.display(),
                issued.expires,
                humanize(expiration_window)
            );
            println!(
                "On the other site run: tether token redeem {}",
                file.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| file.display().to_string())
            );
            if !site.load().is_ok_and(|s| site.is_running(&s)) {
                println!(
                    "Note: site {} is not running; start it (`tether site start`) so the token can be redeemed.",
                    issued.site
                );
            }
            Ok(())
        }
        TokenCommand::Redeem {
            file,
            name,
            cost,
            wait,
        } => redeem(&site, &file, name, cost, &wait).await,
    }
}

// ---------------------------------------------------------------------------
// Issue
// ---------------------------------------------------------------------------

/// Registers a grant in `site` and writes the token file. `now` is passed
/// in for tests.
pub fn issue(
    site: &super::SiteDir,
    file: &Path,
    window: Duration,
    redemptions_allowed: u32,
    cost: u32,
    now: SystemTime,
) -> Result<TokenFile, String> {
    if window.is_zero() || window > MAX_EXPIRATION_WINDOW {
        return Err(format!(
            "--expiration-window must be between 1s and {}",
            humanize(MAX_EXPIRATION_WINDOW)
        ));
    }
    let ca_path = site.path.join(super::pki::CA_CERT_FILE);
    let ca = std::fs::read_to_string(&ca_path).map_err(|e| {
        format!(
            "cannot read the site CA {}: {}; is {} a site folder made by `tether site create`?",
            ca_path.display(),
            io_reason(&e),
            site.path.display()
        )
    })?;
    let id = random_id();
    let code = new_code();
    let expires_unix = unix_secs(now).saturating_add(window.as_secs().max(1));
    let mut token = None;
    super::grants::update_state(site, |state| {
        let (host, port) = grant_endpoint(state)?;
        state.grants.push(super::GrantRecord {
            id: id.clone(),
            code_sha256: code_sha256(&code),
            expires: expires_unix,
            redemptions_allowed,
            redeemed: 0,
            cost,
            revoked: false,
        });
        token = Some(TokenFile {
            site: state.site.name.clone(),
            url: format!("https://{}/grants/{id}", host_port(&host, port)),
            code: code.clone(),
            expires: format_rfc3339(expires_unix),
            ca: ca.clone(),
        });
        Ok(())
    })?;
    let token = token.ok_or("internal error: the grant was not recorded")?;
    super::write_atomic(file, token.to_yaml().as_bytes(), true).map_err(|e| {
        format!("the grant {id} is registered but the token file was not written: {e}")
    })?;
    Ok(token)
}

/// Host and port the grant URL names: the first link-access host (what
/// peers can reach) and the site's grant port.
fn grant_endpoint(state: &super::SiteState) -> Result<(String, u16), String> {
    let host = state
        .site
        .link_access
        .first()
        .map(|a| super::pki::split_host(a).to_string())
        .unwrap_or_else(|| "127.0.0.1".to_string());
    let host = if host == "0.0.0.0" || host == "::" {
        "127.0.0.1".to_string()
    } else {
        host
    };
    Ok((host, state.ports.grant))
}

/// `host:port`, IPv6 in brackets.
pub(crate) fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A new grant id: 16 random bytes, lowercase hex.
pub fn random_id() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    hex(&b)
}

/// A new secret code: 32 random bytes, base64url without padding.
pub fn new_code() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    base64url(&b)
}

/// What `site.toml` keeps of a code: SHA-256 of its text, lowercase hex.
pub fn code_sha256(code: &str) -> String {
    hex(&Sha256::digest(code.as_bytes()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Base64url (RFC 4648 §5) without padding.
pub fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Seconds since the epoch (0 before it).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch.
pub fn format_rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Parses a duration: `30s`, `15m`, `2h`, `7d`, combinations (`1h30m`), or
/// plain seconds (`90`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    let bad = || format!("{s:?} is not a duration; write e.g. 30s, 15m, 2h, 7d or 1h30m");
    if text.is_empty() {
        return Err(bad());
    }
    if let Ok(n) = text.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        number.clear();
        total = n
            .checked_mul(unit)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(bad)?;
    }
    if !number.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// `15m`, `1h30m`, `2d`, `45s`: a duration in words a person reads.
pub fn humanize(d: Duration) -> String {
    let mut s = d.as_secs();
    if s == 0 {
        return format!("{} ms", d.as_millis());
    }
    let mut out = String::new();
    for (unit, len) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= len {
            out.push_str(&format!("{}{unit}", s / len));
            s %= len;
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The token file
// ---------------------------------------------------------------------------

/// A token file's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFile {
    /// The issuing site's name.
    pub site: String,
    /// `https://HOST:PORT/grants/ID`.
    pub url: String,
    /// The secret code (base64url).
    pub code: String,
    /// When the grant expires, RFC 3339 UTC (informational: the issuing
    /// site decides).
    pub expires: String,
    /// The issuing site's CA (PEM): the only trust anchor for redemption.
    pub ca: String,
}

impl TokenFile {
    /// The YAML text of the token file.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "# A Tether token from site {}: redeem it on another site with\n\
             #   tether token redeem FILE\n\
             # Keep it secret: whoever holds it can link to {} until it expires.\n",
            self.site, self.site
        ));
        yaml_field(&mut out, "kind", TOKEN_KIND);
        yaml_field(&mut out, "version", &TOKEN_VERSION.to_string());
        yaml_field(&mut out, "site", &self.site);
        yaml_field(&mut out, "url", &self.url);
        yaml_field(&mut out, "code", &self.code);
        yaml_field(&mut out, "expires", &self.expires);
        yaml_block(&mut out, "ca", &self.ca);
        out
    }

    /// Parses a token file's text.
    pub fn parse(text: &str) -> Result<TokenFile, String> {
        let doc = MiniYaml::parse(text)?;
        doc.check_header(
            TOKEN_KIND,
            TOKEN_VERSION,
            (
                super::links::LINK_KIND,
                "this is a link file; install it with `tether link apply FILE`",
            ),
            "token",
        )?;
        let token = TokenFile {
            site: doc.required("site")?.to_string(),
            url: doc.required("url")?.to_string(),
            code: doc.required("code")?.to_string(),
            expires: doc.optional("expires")?.unwrap_or("").to_string(),
            ca: doc.required_block("ca")?.to_string(),
        };
        super::validate_site_name(&token.site).map_err(|e| format!("site: {e}"))?;
        GrantUrl::parse(&token.url)?;
        if token.code.len() < 16 || !token.code.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("code: not a token code (expected 43 base64url characters)".into());
        }
        parse_ca(&token.ca).map_err(|e| format!("ca: {e}"))?;
        Ok(token)
    }

    /// Reads and parses a token file.
    pub fn read(path: &Path) -> Result<TokenFile, String> {
        let text = read_small_file(path)?;
        TokenFile::parse(&text)
            .map_err(|e| format!("{} is not a usable token: {e}", path.display()))
    }
}

/// Reads a token or link file, refusing anything larger than
/// [`MAX_FILE_BYTES`].
pub(crate) fn read_small_file(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {}: {}", path.display(), io_reason(&e)))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{} is {} bytes: too large for a token or link file (at most {MAX_FILE_BYTES})",
            path.display(),
            meta.len()
        ));
    }
    std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {}", path.display(), io_reason(&e)))
}

/// An I/O error without the trailing " (os error N)".
pub(crate) fn io_reason(err: &io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// The certificates of a PEM text (at least one).
pub(crate) fn parse_ca(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE section".into());
    }
    Ok(certs)
}

/// `key: value` with the value quoted when YAML would misread it.
pub(crate) fn yaml_field(out: &mut String, key: &str, value: &str) {
    out.push_str(key);
    out.push_str(": ");
    out.push_str(&yaml_scalar(value));
    out.push('\n');
}

/// `key: |` and the text indented by two spaces.
pub(crate) fn yaml_block(out: &mut String, key: &str, text: &str) {
    out.push_str(key);
    out.push_str(": |\n");
    for line in text.trim_end_matches('\n').lines() {
        if line.is_empty() {
            out.push('\n');
        } else {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
}

/// A scalar as YAML: plain when safe, else double-quoted.
pub(crate) fn yaml_scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | '+' | '@')
        })
        && !s.starts_with(['-', ':', '@'])
        && !s.ends_with(':')
        && !s.contains(": ")
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "~"
        );
    if plain {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One value of a [`MiniYaml`] document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum YamlValue {
    /// `key: value` (quotes removed).
    Scalar(String),
    /// `key: |` and indented lines (dedented, ending in one newline).
    Block(String),
    /// `key:` and `- item` lines.
    List(Vec<String>),
}

/// The small YAML subset token and link files use: a top-level mapping of
/// scalars, literal blocks (`|`) and lists of scalars. Comments, blank
/// lines, quotes and CRLF line ends are accepted; anything else (nested
/// maps, flow collections, anchors) is refused with the line number.
#[derive(Debug, Default)]
pub(crate) struct MiniYaml {
    entries: Vec<(String, YamlValue)>,
}

impl MiniYaml {
    /// Checks `kind` and `version` of a token or link file; `other` is the
    /// other kind and what to do with it (a file given to the wrong
    /// command).
    pub fn check_header(
        &self,
        kind: &str,
        version: u32,
        other: (&str, &str),
        what: &str,
    ) -> Result<(), String> {
        let found = self.required("kind")?;
        if found != kind {
            let hint = if found == other.0 {
                format!(": {}", other.1)
            } else {
                String::new()
            };
            return Err(format!("kind is {found:?}, expected {kind:?}{hint}"));
        }
        let v = self.required("version")?;
        if v != version.to_string() {
            return Err(format!(
                "{what} version {v:?} is not supported (this tether reads version {version}); \
                 upgrade tether or get one made by a matching version"
            ));
        }
        Ok(())
    }

    pub(crate) fn parse(text: &str) -> Result<MiniYaml, String> {
        let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
        let mut doc = MiniYaml::default();
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i];
            let n = i + 1;
            i += 1;
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed == "---" {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                return Err(format!("line {n}: unexpected indentation"));
            }
            let (key, rest) = line
                .split_once(':')
                .ok_or_else(|| format!("line {n}: expected `key: value`"))?;
            let key = key.trim();
            if key.is_empty()
                || !key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(format!("line {n}: {key:?} is not a key"));
            }
            if doc.entries.iter().any(|(k, _)| k == key) {
                return Err(format!("line {n}: {key} appears twice"));
            }
            let rest = strip_comment(rest.trim());
            let value = if matches!(rest, "|" | "|-" | "|+") {
                let mut block: Vec<&str> = Vec::new();
                while i < lines.len()
                    && (lines[i].trim().is_empty() || lines[i].starts_with([' ', '\t']))
                {
                    block.push(lines[i]);
                    i += 1;
                }
                while block.last().is_some_and(|l| l.trim().is_empty()) {
                    block.pop();
                }
                let indent = block
                    .iter()
                    .find(|l| !l.trim().is_empty())
                    .map(|l| l.len() - l.trim_start().len())
                    .unwrap_or(0);
                let mut text = String::new();
                for l in &block {
                    text.push_str(l.get(indent..).unwrap_or("").trim_end());
                    text.push('\n');
                }
                YamlValue::Block(text)
            } else if rest.is_empty() {
                let mut items = Vec::new();
                while i < lines.len() {
                    let t = lines[i].trim();
                    if t.is_empty() || t.starts_with('#') {
                        i += 1;
                        continue;
                    }
                    match t.strip_prefix('-') {
                        Some(item) if item.is_empty() || item.starts_with(' ') => {
                            items.push(unquote(strip_comment(item.trim()), i + 1)?);
                            i += 1;
                        }
                        _ => break,
                    }
                }
                if items.is_empty() {
                    YamlValue::Scalar(String::new())
                } else {
                    YamlValue::List(items)
                }
            } else if rest.starts_with(['{', '[', '&', '*', '>', '!']) {
                return Err(format!(
                    "line {n}: {key}: this YAML form is not supported here; write a plain value"
                ));
            } else {
                YamlValue::Scalar(unquote(rest, n)?)
            };
            doc.entries.push((key.to_string(), value));
        }
        Ok(doc)
    }

    pub(crate) fn get(&self, key: &str) -> Option<&YamlValue> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub(crate) fn optional(&self, key: &str) -> Result<Option<&str>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(YamlValue::Scalar(s)) => Ok(Some(s)),
            Some(_) => Err(format!("{key}: expected a single value")),
        }
    }

    pub(crate) fn required(&self, key: &str) -> Result<&str, String> {
        match self.optional(key)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(format!("{key}: missing")),
        }
    }

    pub(crate) fn required_block(&self, key: &str) -> Result<&str, String> {
        match self.get(key) {
            Some(YamlValue::Block(s)) | Some(YamlValue::Scalar(s)) if !s.is_empty() => Ok(s),
            Some(YamlValue::List(_)) => Err(format!("{key}: expected a PEM block (`{key}: |`)")),
            _ => Err(format!("{key}: missing")),
        }
    }

    pub(crate) fn list(&self, key: &str) -> Result<Vec<String>, String> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(YamlValue::List(items)) => Ok(items.clone()),
            Some(YamlValue::Scalar(s)) if s.is_empty() => Ok(Vec::new()),
            Some(YamlValue::Scalar(s)) => Ok(vec![s.clone()]),
            Some(YamlValue::Block(_)) => Err(format!("{key}: expected a list (`- item` lines)")),
        }
    }
}

/// Drops a ` # comment` after a plain value (not inside quotes).
fn strip_comment(s: &str) -> &str {
    if s.starts_with(['"', '\'']) {
        return s;
    }
    match s.find(" #") {
        Some(i) => s[..i].trim_end(),
        None => s,
    }
}

/// A scalar without its quotes (double quotes with `\` escapes, single
/// quotes with `''`).
fn unquote(s: &str, line: usize) -> Result<String, String> {
    if let Some(inner) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = inner.chars();
        loop {
            match chars.next() {
                None => return Err(format!("line {line}: unterminated \"string\"")),
                Some('"') => {
                    let after = chars.as_str().trim();
                    if !after.is_empty() && !after.starts_with('#') {
                        return Err(format!("line {line}: text after the closing quote"));
                    }
                    return Ok(out);
                }
                Some('\\') => match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('"') => out.push('"'),
                    Some('\\') => out.push('\\'),
                    Some('/') => out.push('/'),
                    Some('u') => {
                        let hex: String = chars.by_ref().take(4).collect();
                        let c = u32::from_str_radix(&hex, 16)
                            .ok()
                            .and_then(char::from_u32)
                            .ok_or_else(|| format!("line {line}: bad \\u escape"))?;
                        out.push(c);
                    }
                    _ => return Err(format!("line {line}: unknown escape in a \"string\"")),
                },
                Some(c) => out.push(c),
            }
        }
    }
    if let Some(inner) = s.strip_prefix('\'') {
        let mut out = String::new();
        let mut chars = inner.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\'' {
                if chars.peek() == Some(&'\'') {
                    chars.next();
                    out.push('\'');
                } else {
                    let after: String = chars.collect();
                    let after = after.trim();
                    if !after.is_empty() && !after.starts_with('#') {
                        return Err(format!("line {line}: text after the closing quote"));
                    }
                    return Ok(out);
                }
            } else {
                out.push(c);
            }
        }
        return Err(format!("line {line}: unterminated 'string'"));
    }
    Ok(s.to_string())
}

// ---------------------------------------------------------------------------
// Redeem
// ---------------------------------------------------------------------------

/// A grant URL: `https://HOST[:PORT]/grants/ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantUrl {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// `/grants/ID`.
    pub path: String,
}

impl GrantUrl {
    pub fn parse(url: &str) -> Result<GrantUrl, String> {
        let bad = |why: &str| format!("url {url:?}: {why}");
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| bad("expected https://HOST:PORT/grants/ID"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => return Err(bad("no /grants/ID path")),
        };
        let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
            let (h, after) = inner.split_once(']').ok_or_else(|| bad("missing ']'"))?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => 443,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n != 0 => n,
                _ => return Err(bad("bad port")),
            },
        };
        let id = path
            .strip_prefix("/grants/")
            .ok_or_else(|| bad("the path must be /grants/ID"))?;
        if id.is_empty()
            || id.len() > 128
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad("bad grant id"));
        }
        ServerName::try_from(host.to_string())
            .map_err(|_| bad("the host is neither a DNS name nor an IP address"))?;
        Ok(GrantUrl {
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }
}

/// Why a redemption failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum RedeemError {
    /// The grant server's certificate does not chain to the token's CA.
    Tampered,
    /// TLS failed for another reason.
    Tls(String),
    /// The grant server could not be reached.
    Connect { url: String, reason: String },
    /// The grant expired.
    Expired,
    /// Every redemption allowed was used.
    Exhausted,
    /// The issuing site revoked the grant.
    Revoked,
    /// The code did not match.
    BadCode,
    /// The issuing site has no such grant.
    UnknownGrant,
    /// Another answer (400, 500, ...).
    Refused { status: u16, message: String },
    /// The answer could not be understood.
    BadAnswer(String),
}

/// The message for each refusal, naming the issuing site and what to do.
pub fn describe_redeem_error(e: &RedeemError, token: &TokenFile) -> String {
    let site = &token.site;
    let ask = format!("ask {site} for a new one (`tether token issue` there)");
    match e {
        RedeemError::Tampered => {
            "the grant server's certificate is not signed by the CA in the token: \
             the token was altered or is for another site"
                .to_string()
        }
        RedeemError::Tls(why) => {
            format!("TLS with the grant server at {} failed: {why}", token.url)
        }
        RedeemError::Connect { url, reason } => format!(
            "cannot reach the grant server of {site} at {url}: {reason}; is {site} running \
             (`tether site start`) and is that address reachable from here?"
        ),
        RedeemError::Expired => {
            let at = if token.expires.is_empty() {
                String::new()
            } else {
                format!(" at {}", token.expires)
            };
            format!("the token expired{at}; {ask}")
        }
        RedeemError::Exhausted => {
            format!("the token was already used (every redemption it allows is spent); {ask}")
        }
        RedeemError::Revoked => format!("the token was revoked by {site}; {ask}"),
        RedeemError::BadCode => {
            format!("{site} refused the token's code: the token was altered; {ask}")
        }
        RedeemError::UnknownGrant => format!(
            "{site} does not know this token's grant (the site was re-created, or the token is \
             for another site); {ask}"
        ),
        RedeemError::Refused { status, message } => {
            format!("the grant server of {site} refused the redemption ({status}): {message}")
        }
        RedeemError::BadAnswer(why) => {
            format!("the grant server of {site} gave an answer that is not understood: {why}")
        }
    }
}

/// What a successful redemption returns.
#[derive(Debug, Clone)]
pub struct Redeemed {
    /// The issuing site.
    pub site: String,
    /// Our certificate, signed by the issuing site's CA.
    pub cert: String,
    /// The issuing site's CA.
    pub ca: String,
    /// Inter-router endpoints to dial, in order of preference.
    pub endpoints: Vec<(String, u16)>,
    pub cost: u32,
}

/// Maps the grant server's status and JSON body to the outcome.
pub fn interpret_answer(status: u16, body: &[u8]) -> Result<Redeemed, RedeemError> {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    if status != 200 {
        let error = json
            .as_ref()
            .and_then(|j| j.get("error"))
            .and_then(|e| e.as_str())
            .unwrap_or("");
        let message = json
            .as_ref()
            .and_then(|j| j.get("message"))
            .and_then(|e| e.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
        return Err(match (status, error) {
            (410, "expired") => RedeemError::Expired,
            (410, "exhausted") => RedeemError::Exhausted,
            (410, "revoked") => RedeemError::Revoked,
            (403, _) => RedeemError::BadCode,
            (404, _) => RedeemError::UnknownGrant,
            _ => RedeemError::Refused { status, message },
        });
    }
    let json = json.ok_or_else(|| RedeemError::BadAnswer("the body is not JSON".into()))?;
    let text = |k: &str| {
        json.get(k)
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| RedeemError::BadAnswer(format!("no {k:?} in the answer")))
    };
    let endpoints = json
        .get("endpoints")
        .and_then(|v| v.as_array())
        .ok_or_else(|| RedeemError::BadAnswer("no \"endpoints\" in the answer".into()))?
        .iter()
        .map(|e| {
            let host = e.get("host").and_then(|h| h.as_str());
            let port = e
                .get("port")
                .and_then(|p| p.as_u64())
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0);
            match (host, port) {
                (Some(h), Some(p)) if !h.is_empty() => Ok((h.to_string(), p)),
                _ => Err(RedeemError::BadAnswer(format!("bad endpoint {e}"))),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    if endpoints.is_empty() {
        return Err(RedeemError::BadAnswer(
            "the issuing site offers no inter-router endpoint".into(),
        ));
    }
    let cost = json
        .get("cost")
        .and_then(|c| c.as_u64())
        .and_then(|c| u32::try_from(c).ok())
        .filter(|c| *c >= 1)
        .unwrap_or(1);
    let redeemed = Redeemed {
        site: text("site")?,
        cert: text("cert")?,
        ca: text("ca")?,
        endpoints,
        cost,
    };
    super::validate_site_name(&redeemed.site)
        .map_err(|e| RedeemError::BadAnswer(format!("site: {e}")))?;
    parse_ca(&redeemed.cert).map_err(|e| RedeemError::BadAnswer(format!("cert: {e}")))?;
    parse_ca(&redeemed.ca).map_err(|e| RedeemError::BadAnswer(format!("ca: {e}")))?;
    Ok(redeemed)
}

/// POSTs `body` (JSON) to the grant URL over TLS trusting only `ca_pem`;
/// returns the status and body.
pub async fn https_post(
    url: &GrantUrl,
    ca_pem: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, Vec<u8>), RedeemError> {
    let display = format!("https://{}{}", host_port(&url.host, url.port), url.path);
    let work = async {
        let mut roots = rustls::RootCertStore::empty();
        for cert in
            parse_ca(ca_pem).map_err(|e| RedeemError::Tls(format!("the token's CA: {e}")))?
        {
            roots
                .add(cert)
                .map_err(|e| RedeemError::Tls(format!("the token's CA: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| RedeemError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = match url.host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(url.host.clone())
                .map_err(|_| RedeemError::BadAnswer(format!("bad host {:?}", url.host)))?,
        };
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| RedeemError::Connect {
                url: display.clone(),
                reason: io_reason(&e),
            })?;
        let _ = tcp.set_nodelay(true);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| tls_failure(&e))?;
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tether/{}\r\nContent-Type: application/json\r\n\
             Accept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            url.path,
            host_port(&url.host, url.port),
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        let io_err = |e: io::Error| RedeemError::Connect {
            url: display.clone(),
            reason: io_reason(&e),
        };
        tls.write_all(head.as_bytes()).await.map_err(io_err)?;
        tls.write_all(body).await.map_err(io_err)?;
        tls.flush().await.map_err(io_err)?;
        read_response(&mut tls).await
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(RedeemError::Connect {
            url: display,
            reason: format!("no answer within {}", humanize(timeout)),
        }),
    }
}

/// Maps a failed TLS handshake: an unknown issuer (or bad signature) means
/// the server is not the token's site.
fn tls_failure(e: &io::Error) -> RedeemError {
    use rustls::{CertificateError, Error as TlsError};
    let mut cause: Option<&(dyn std::error::Error + 'static)> =
        e.get_ref().map(|x| x as &(dyn std::error::Error + 'static));
    while let Some(c) = cause {
        if let Some(tls) = c.downcast_ref::<TlsError>() {
            return match tls {
                TlsError::InvalidCertificate(
                    CertificateError::UnknownIssuer
                    | CertificateError::BadSignature
                    | CertificateError::BadEncoding,
                ) => RedeemError::Tampered,
                other => RedeemError::Tls(crate::tls::describe_tls_error(other)),
            };
        }
        cause = c.source();
    }
    RedeemError::Tls(io_reason(e))
}

/// Reads one HTTP/1.1 response: status line, headers, `Content-Length`
/// body (or to EOF), bounded by [`MAX_ANSWER_BYTES`].
async fn read_response<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> Result<(u16, Vec<u8>), RedeemError> {
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    let mut eof = false;
    loop {
        if let Some(parsed) = parse_response(&buf, eof)? {
            return Ok(parsed);
        }
        if eof {
            return Err(RedeemError::BadAnswer(
                "the connection closed before a whole answer".into(),
            ));
        }
        if buf.len() >= MAX_ANSWER_BYTES {
            return Err(RedeemError::BadAnswer(format!(
                "the answer is larger than {MAX_ANSWER_BYTES} bytes"
            )));
        }
        match r.read(&mut chunk).await {
            Ok(0) => eof = true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // A server that closes without close_notify after a whole
            // answer is fine; otherwise the answer is cut short.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => eof = true,
            Err(e) => {
                return Err(RedeemError::BadAnswer(format!(
                    "reading the answer failed: {}",
                    io_reason(&e)
                )))
            }
        }
    }
}

/// Parses a response in `buf`: `Ok(None)` when more bytes are needed.
pub(crate) fn parse_response(buf: &[u8], eof: bool) -> Result<Option<(u16, Vec<u8>)>, RedeemError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > 16 * 1024 {
            return Err(RedeemError::BadAnswer(
                "the answer's head is too long".into(),
            ));
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end])
        .map_err(|_| RedeemError::BadAnswer("the answer's head is not text".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| {
            RedeemError::BadAnswer(format!(
                "not an HTTP answer: {:?}",
                truncate(status_line, 80)
            ))
        })?;
    let mut length: Option<usize> = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length =
                Some(value.trim().parse().map_err(|_| {
                    RedeemError::BadAnswer("bad Content-Length in the answer".into())
                })?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(RedeemError::BadAnswer(
                "chunked answers are not supported".into(),
            ));
        }
    }
    let body = &buf[end + 4..];
    match length {
        Some(n) if n > MAX_ANSWER_BYTES => Err(RedeemError::BadAnswer(format!(
            "the answer is larger than {MAX_ANSWER_BYTES} bytes"
        ))),
        Some(n) if body.len() >= n => Ok(Some((status, body[..n].to_vec()))),
        Some(_) => Ok(None),
        None if eof => Ok(Some((status, body.to_vec()))),
        None => Ok(None),
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// `tether token redeem`.
async fn redeem(
    site: &super::SiteDir,
    file: &Path,
    name: Option<String>,
    cost: Option<u32>,
    wait: &WaitArgs,
) -> Result<(), String> {
    let started = Instant::now();
    let token = TokenFile::read(file)?;
    let url = GrantUrl::parse(&token.url)?;
    let state = site.load()?;
    let own = state.site.name.clone();
    if token.site == own {
        return Err(format!(
            "this token was issued by site {own} itself; redeem it on the other site"
        ));
    }
    let link_name = name.unwrap_or_else(|| token.site.clone());
    super::validate_site_name(&link_name).map_err(|e| format!("--name: {e}"))?;
    if let Some(what) = state.name_in_use(&link_name) {
        return Err(format!(
            "site {own} already has a {what} named {link_name}; give the link another name \
             with --name (or delete the link first: `tether link delete {link_name}`)"
        ));
    }
    let (csr, key) = super::pki::make_csr(&own)?;
    let body = serde_json::json!({"code": token.code, "site": own, "csr": csr}).to_string();
    println!("Redeeming the token at {} ...", token.url);
    let (status, answer) = https_post(&url, &token.ca, body.as_bytes(), REDEEM_TIMEOUT)
        .await
        .map_err(|e| describe_redeem_error(&e, &token))?;
    let granted =
        interpret_answer(status, &answer).map_err(|e| describe_redeem_error(&e, &token))?;
    if granted.site != token.site {
        return Err(format!(
            "the grant server answered as site {} but the token is from {}: the token was altered",
            granted.site, token.site
        ));
    }
    let install = super::links::LinkMaterial {
        name: link_name,
        peer_site: granted.site.clone(),
        // The CA we trusted, not what the server says it is.
        ca: token.ca.clone(),
        cert: granted.cert,
        key,
        endpoints: granted.endpoints,
        cost: cost.unwrap_or(granted.cost),
    };
    super::links::install_link(site, &install, wait, started).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBszCC\n-----END CERTIFICATE-----\n";

    #[test]
    fn base64url_matches_rfc4648() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"foob"), "Zm9vYg");
        assert_eq!(base64url(b"fooba"), "Zm9vYmE");
        assert_eq!(base64url(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64url(&[0xfb, 0xff, 0xbf]), "-_-_");
        let code = new_code();
        assert_eq!(code.len(), 43);
        assert_ne!(code, new_code());
        assert_eq!(random_id().len(), 32);
    }

    #[test]
    fn code_hash_is_sha256_hex() {
        assert_eq!(
            code_sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn times_format_as_rfc3339() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_rfc3339(1_795_770_900), "2026-11-27T09:15:00Z");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in ["", "m", "15x", "1h30", "-1s", "99999999999999999999d"] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(e.contains("not a duration"), "{e}");
        }
        assert_eq!(humanize(Duration::from_secs(5400)), "1h30m");
        assert_eq!(humanize(Duration::from_secs(900)), "15m");
    }

    fn token() -> TokenFile {
        TokenFile {
            site: "east".into(),
            url: "https://127.0.0.1:41003/grants/0123abcd".into(),
            code: new_code(),
            expires: "2026-11-27T09:15:00Z".into(),
            ca: CA.into(),
        }
    }

    #[test]
    fn token_file_round_trips() {
        let t = token();
        let yaml = t.to_yaml();
        assert!(yaml.contains("kind: tether-token\n"), "{yaml}");
        assert!(
            yaml.contains("ca: |\n  -----BEGIN CERTIFICATE-----\n"),
            "{yaml}"
        );
        assert_eq!(TokenFile::parse(&yaml).expect("parses"), t);
        // CRLF, comments, quotes and reordering are fine.
        let edited = format!(
            "# hand edited\r\nsite: 'east'   \r\nkind: \"tether-token\"\r\nversion: 1 # v1\r\nurl: {}\r\ncode: {}\r\nexpires: {}\r\nca: |\r\n  {}\r\n",
            t.url,
            t.code,
            t.expires,
            CA.trim_end().replace('\n', "\r\n  ")
        );
        assert_eq!(TokenFile::parse(&edited).expect("edited parses"), t);
    }

    #[test]
    fn bad_token_files_say_why() {
        let t = token();
        let yaml = t.to_yaml();
        let cases = [
            (
                yaml.replace("kind: tether-token", "kind: tether-link"),
                "link apply",
            ),
            (yaml.replace("version: 1", "version: 2"), "not supported"),
            (yaml.replace("url: https://", "url: http://"), "https://"),
            (yaml.replace("/grants/0123abcd", "/other"), "/grants/ID"),
            (yaml.replace("site: east", "site: East Side"), "site"),
            (yaml.replace("site: east\n", ""), "site: missing"),
            (yaml.replace("BEGIN CERTIFICATE", "BEGIN NOTHING"), "ca:"),
            (format!("{yaml}site: west\n"), "appears twice"),
            ("  indented: x\n".to_string(), "indentation"),
            ("just text\n".to_string(), "key: value"),
            ("kind: {a: b}\n".to_string(), "not supported"),
        ];
        for (text, why) in cases {
            let e = TokenFile::parse(&text).expect_err(why);
            assert!(e.contains(why), "{why}: {e}");
        }
    }

    #[test]
    fn yaml_lists_and_scalars() {
        let doc = MiniYaml::parse(
            "endpoints:\n  - 127.0.0.1:41001\n  - \"[::1]:41001\"  \ncost: 3\nempty:\nquoted: \"a\\\"b\"\n",
        )
        .expect("parses");
        assert_eq!(
            doc.list("endpoints").expect("list"),
            ["127.0.0.1:41001", "[::1]:41001"]
        );
        assert_eq!(doc.required("cost"), Ok("3"));
        assert_eq!(doc.optional("empty"), Ok(Some("")));
        assert_eq!(doc.required("quoted"), Ok("a\"b"));
        assert!(doc.required("empty").is_err());
        for s in ["plain", "true", "a: b", "", "-x", "x\"y", "1.2.3.4:5"] {
            let mut out = String::new();
            yaml_field(&mut out, "k", s);
            let d = MiniYaml::parse(&out).expect("parses");
            assert_eq!(d.optional("k"), Ok(Some(s)), "{out}");
        }
    }

    #[test]
    fn grant_urls_parse() {
        let u = GrantUrl::parse("https://127.0.0.1:41003/grants/ab-12").expect("url");
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 41003, "/grants/ab-12")
        );
        let u = GrantUrl::parse("https://[::1]:9/grants/x").expect("v6");
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        let u = GrantUrl::parse("https://east.example.com/grants/x").expect("dns");
        assert_eq!(u.port, 443);
        for bad in [
            "http://h:1/grants/x",
            "https://h:0/grants/x",
            "https://h:1/grants/",
            "https://h:1/grants/a b",
            "https://:1/grants/x",
            "https://h:1",
        ] {
            assert!(GrantUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn responses_parse_incrementally() {
        let full = b"HTTP/1.1 410 Gone\r\ncontent-type: application/json\r\ncontent-length: 5\r\n\r\nhello";
        for cut in 0..full.len() {
            assert!(
                matches!(parse_response(&full[..cut], false), Ok(None)),
                "{cut}"
            );
        }
        let (status, body) = parse_response(full, false).expect("ok").expect("whole");
        assert_eq!((status, body.as_slice()), (410, &b"hello"[..]));
        let (_, body) = parse_response(b"HTTP/1.1 200 OK\r\n\r\nabc", true)
            .expect("ok")
            .expect("to eof");
        assert_eq!(body, b"abc");
        assert!(parse_response(b"SSH-2.0\r\n\r\n", false).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).is_err());
        assert!(parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n",
            false
        )
        .is_err());
    }

    #[test]
    fn refusals_map_to_messages() {
        let t = token();
        let msg = |status: u16, body: &str| {
            let e = interpret_answer(status, body.as_bytes()).expect_err("refused");
            describe_redeem_error(&e, &t)
        };
        let m = msg(410, r#"{"error":"expired","message":"x"}"#);
        assert!(
            m.contains("expired at 2026-11-27T09:15:00Z") && m.contains("ask east"),
            "{m}"
        );
        assert!(msg(410, r#"{"error":"exhausted"}"#).contains("already used"));
        assert!(msg(410, r#"{"error":"revoked"}"#).contains("revoked by east"));
        assert!(msg(403, r#"{"error":"bad-code"}"#).contains("code"));
        assert!(msg(404, "nope").contains("does not know"));
        assert!(msg(500, r#"{"error":"internal","message":"disk full"}"#).contains("disk full"));
        let m = describe_redeem_error(&RedeemError::Tampered, &t);
        assert!(m.contains("not signed by the CA in the token"), "{m}");
    }

    #[test]
    fn grants_answers_decode() {
        let ok = serde_json::json!({
            "site": "east", "cert": CA, "ca": CA,
            "endpoints": [{"host": "127.0.0.1", "port": 41001}], "cost": 4
        });
        let r = interpret_answer(200, ok.to_string().as_bytes()).expect("decodes");
        assert_eq!(r.endpoints, [("127.0.0.1".to_string(), 41001)]);
        assert_eq!(r.cost, 4);
        let mut bad = ok.clone();
        bad["endpoints"] = serde_json::json!([]);
        assert!(interpret_answer(200, bad.to_string().as_bytes()).is_err());
        let mut bad = ok.clone();
        bad["endpoints"] = serde_json::json!([{"host": "h", "port": 70000}]);
        assert!(interpret_answer(200, bad.to_string().as_bytes()).is_err());
        assert!(interpret_answer(200, b"not json").is_err());
    }
}
