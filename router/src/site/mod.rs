//! Sites: a folder that holds everything one router of a Tether network
//! needs, made and changed only by the `tether` CLI.
//!
//! ```text
//! SITE_DIR/
//!   site.toml                 SiteState: the source of truth
//!   router.toml               rendered from site.toml on every change
//!   ca.pem ca-key.pem         this site's CA (key mode 0600)
//!   router.pem router-key.pem the router's certificate, signed by the site CA
//!   links/NAME/ca.pem cert.pem key.pem   an outgoing link (the peer's CA,
//!                             our client certificate signed by it, its key)
//! ```
//!
//! [`SiteDir`] finds a site ([`SiteDir::resolve`]: `--site-dir`, else
//! `TETHER_SITE_DIR`, else the only site under [`default_root`]), loads and
//! saves [`SiteState`] (`site.toml`, written atomically, and `router.toml`
//! rendered from it by [`render_router_config`]). The commands themselves
//! live in [`cli`] (sites), [`services`] (connectors, listeners, expose,
//! network status), and the token/link modules; [`pki`] makes the
//! certificates.
//!
//! Every site records the four ports it uses ([`Ports`]), chosen at
//! creation so that several sites on one host never collide, including
//! sites that are not running at the time.

pub mod cli;
pub mod grants;
pub mod links;
pub mod pki;
pub mod services;
pub mod tokens;

use std::fs;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The state file in a site folder.
pub const SITE_FILE: &str = "site.toml";
/// The router config rendered from the state file.
pub const ROUTER_CONFIG_FILE: &str = "router.toml";
/// Folder of outgoing links' TLS files (`links/NAME/`).
pub const LINKS_DIR: &str = "links";
/// Environment variable naming the site folder (like `--site-dir`).
pub const SITE_DIR_ENV: &str = "TETHER_SITE_DIR";
/// Name of the router's inter-router listener in router.toml / management.
pub const INTER_ROUTER_LISTENER: &str = "inter-router";
/// Name of the router's AMQP (management) listener.
pub const AMQP_LISTENER: &str = "amqp";
/// Name of the site's own TLS profile.
pub const SITE_TLS_PROFILE: &str = "site";
/// Prefix of the TLS profile of an outgoing link (`link-NAME`).
pub const LINK_TLS_PREFIX: &str = "link-";
/// Prefix of the TCP listeners a router opens by itself for exposed services.
pub const AUTO_LISTENER_PREFIX: &str = "auto-";

/// Ports are chosen in this range: below Linux's default ephemeral range
/// (32768-60999), so an outgoing connection never holds a site's port
/// while the site is stopped and it cannot start again.
const PORT_RANGE: std::ops::Range<u16> = 20000..32768;

/// `site.toml`: everything about a site; `router.toml` is derived from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteState {
    pub site: SiteInfo,
    pub ports: Ports,
    /// Outgoing links (made by `token redeem` or `link apply`).
    #[serde(default, rename = "link", skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<LinkRecord>,
    /// Tokens issued here.
    #[serde(default, rename = "grant", skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<GrantRecord>,
    /// Client certificates issued to peers (by redemption or `link generate`).
    #[serde(default, rename = "issued", skip_serializing_if = "Vec::is_empty")]
    pub issued: Vec<IssuedRecord>,
    /// Services reachable from this site (`connector create`, `expose`).
    #[serde(default, rename = "connector", skip_serializing_if = "Vec::is_empty")]
    pub connectors: Vec<ConnectorRecord>,
    /// Where clients here reach services (`listener create`).
    #[serde(default, rename = "listener", skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<ListenerRecord>,
}

/// `[site]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteInfo {
    /// The site name, also the router id: unique in the network.
    pub name: String,
    /// Open listeners for services other sites expose.
    #[serde(default = "default_true")]
    pub auto_listeners: bool,
    /// `host:port` peers dial to link to this site (the first is put in tokens).
    pub link_access: Vec<String>,
}

fn default_true() -> bool {
    true
}

/// `[ports]`: chosen at `site create`, recorded so restarts keep them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ports {
    /// Inter-router listener (mutual TLS), on 0.0.0.0.
    pub inter_router: u16,
    /// AMQP listener on 127.0.0.1: management and AMQP clients.
    pub amqp: u16,
    /// HTTPS grant server (token redemption), on 0.0.0.0.
    pub grant: u16,
    /// `[http]` metrics and health on 127.0.0.1.
    pub http: u16,
}

impl Ports {
    fn all(&self) -> [u16; 4] {
        [self.inter_router, self.amqp, self.grant, self.http]
    }
}

/// `[[link]]`: an outgoing inter-router link; its TLS files are in
/// `links/NAME/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkRecord {
    pub name: String,
    /// The peer site's name, when known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub site: String,
    pub host: String,
    pub port: u16,
    pub cost: u32,
}

/// `[[grant]]`: a token issued by this site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrantRecord {
    pub id: String,
    /// SHA-256 of the token's secret code, hex (the code itself is not kept).
    pub code_sha256: String,
    /// Unix seconds after which redemption is refused.
    pub expires: u64,
    pub redemptions_allowed: u32,
    #[serde(default)]
    pub redeemed: u32,
    /// Cost of the link a redeemer makes.
    pub cost: u32,
    #[serde(default)]
    pub revoked: bool,
}

/// `[[issued]]`: a client certificate this site's CA signed for a peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IssuedRecord {
    /// The peer's site name (the certificate's CN).
    pub peer: String,
    /// SHA-256 of the certificate's DER, hex ([`pki::fingerprint`]).
    #[serde(alias = "serial_or_fingerprint")]
    pub fingerprint: String,
    /// The grant it was issued for; empty for `link generate`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub grant: String,
    #[serde(default)]
    pub revoked: bool,
}

/// `[[connector]]`: a service reachable from this site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectorRecord {
    pub name: String,
    pub routing_key: String,
    pub host: String,
    pub port: u16,
    /// Advertised so other sites open listeners for it (`tether expose`).
    #[serde(default)]
    pub expose: bool,
}

/// `[[listener]]`: where clients at this site reach a routing key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListenerRecord {
    pub name: String,
    pub routing_key: String,
    pub host: String,
    pub port: u16,
}

impl SiteState {
    /// A new site's state: no links, grants or services yet.
    /// `link_access` empty means "127.0.0.1:<inter-router port>".
    pub fn new(name: &str, auto_listeners: bool, link_access: Vec<String>, ports: Ports) -> Self {
        let link_access = if link_access.is_empty() {
            vec![format!("127.0.0.1:{}", ports.inter_router)]
        } else {
            link_access
        };
        SiteState {
            site: SiteInfo {
                name: name.to_string(),
                auto_listeners,
                link_access,
            },
            ports,
            links: Vec::new(),
            grants: Vec::new(),
            issued: Vec::new(),
            connectors: Vec::new(),
            listeners: Vec::new(),
        }
    }

    /// The AMQP URL of this site's router (management).
    pub fn amqp_url(&self) -> String {
        format!("amqp://127.0.0.1:{}", self.ports.amqp)
    }

    /// Revoked peers as the router refuses them: the router id (a site
    /// name) and the certificate (`sha256:<fingerprint>`) of each revoked
    /// issue, so a `link generate` certificate is refused whoever uses it.
    pub fn revoked_peers(&self) -> Vec<String> {
        let mut peers: Vec<String> = Vec::new();
        for i in self.issued.iter().filter(|i| i.revoked) {
            if !i.peer.starts_with("link-") {
                peers.push(i.peer.clone());
            }
            if !i.fingerprint.is_empty() {
                peers.push(format!("sha256:{}", i.fingerprint));
            }
        }
        peers.sort();
        peers.dedup();
        peers
    }

    /// What already uses `name` among connectors, listeners and links
    /// (their names share one namespace in router.toml), if anything.
    pub fn name_in_use(&self, name: &str) -> Option<&'static str> {
        if self.connectors.iter().any(|c| c.name == name) {
            Some("connector")
        } else if self.listeners.iter().any(|l| l.name == name) {
            Some("listener")
        } else if self.links.iter().any(|l| l.name == name) {
            Some("link")
        } else if name == INTER_ROUTER_LISTENER || name == AMQP_LISTENER {
            Some("the site's own listener")
        } else {
            None
        }
    }

    /// Parses `site.toml` text (`path` for messages).
    pub fn parse(text: &str, path: &Path) -> Result<SiteState, String> {
        let state: SiteState = toml::from_str(text).map_err(|e| {
            format!(
                "{} is not a valid site file: {e}; it is written by the tether CLI, \
                 restore it or re-create the site",
                path.display()
            )
        })?;
        validate_site_name(&state.site.name)
            .map_err(|e| format!("{}: site.name: {e}", path.display()))?;
        Ok(state)
    }

    /// `site.toml` text.
    pub fn to_toml(&self) -> Result<String, String> {
        toml::to_string(self).map_err(|e| format!("cannot encode the site state: {e}"))
    }
}

/// A site folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteDir {
    pub path: PathBuf,
}

impl SiteDir {
    /// The site at `path` (not checked).
    pub fn new(path: impl Into<PathBuf>) -> SiteDir {
        SiteDir { path: path.into() }
    }

    /// The site a command works on: `explicit` (`--site-dir`, or
    /// `TETHER_SITE_DIR` through clap), else the only site under
    /// [`default_root`]. Errors say what to do next.
    pub fn resolve(explicit: Option<&Path>) -> Result<SiteDir, String> {
        Self::resolve_in(explicit, &default_root()?)
    }

    /// [`SiteDir::resolve`] with the default root given (for tests).
    pub fn resolve_in(explicit: Option<&Path>, root: &Path) -> Result<SiteDir, String> {
        if let Some(dir) = explicit {
            let site = SiteDir::new(dir);
            if !site.state_file().is_file() {
                return Err(format!(
                    "{} is not a site folder (no {SITE_FILE}); create a site there with \
                     `tether site create NAME --site-dir {}`",
                    dir.display(),
                    dir.display()
                ));
            }
            return Ok(site);
        }
        let sites = list_sites(root);
        match sites.as_slice() {
            [only] => Ok(SiteDir::new(only)),
            [] => Err(format!(
                "no site found under {}; create one with `tether site create NAME`, \
                 or give --site-dir DIR (or set {SITE_DIR_ENV})",
                root.display()
            )),
            many => {
                let names: Vec<String> = many
                    .iter()
                    .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect();
                Err(format!(
                    "{} sites under {} ({}); choose one with --site-dir DIR (or set {SITE_DIR_ENV})",
                    many.len(),
                    root.display(),
                    names.join(", ")
                ))
            }
        }
    }

    /// `site.toml`.
    pub fn state_file(&self) -> PathBuf {
        self.path.join(SITE_FILE)
    }

    /// `router.toml`.
    pub fn router_config_file(&self) -> PathBuf {
        self.path.join(ROUTER_CONFIG_FILE)
    }

    /// `links/NAME/`: an outgoing link's `ca.pem`, `cert.pem`, `key.pem`.
    pub fn link_dir(&self, name: &str) -> PathBuf {
        self.path.join(LINKS_DIR).join(name)
    }

    /// Reads `site.toml`.
    pub fn load(&self) -> Result<SiteState, String> {
        let path = self.state_file();
        let text = fs::read_to_string(&path).map_err(|e| {
            format!(
                "cannot read {}: {}; is {} a site made by `tether site create`?",
                path.display(),
                io_reason(&e),
                self.path.display()
            )
        })?;
        SiteState::parse(&text, &path)
    }

    /// Writes `site.toml` and re-renders `router.toml`, each atomically
    /// (a crash leaves the old or the new file, never half of one).
    pub fn save(&self, state: &SiteState) -> Result<(), String> {
        write_atomic(&self.state_file(), state.to_toml()?.as_bytes(), false)?;
        self.render(state)
    }

    /// Re-renders `router.toml` from `state`.
    pub fn render(&self, state: &SiteState) -> Result<(), String> {
        write_atomic(
            &self.router_config_file(),
            render_router_config(state).as_bytes(),
            false,
        )
    }

    /// Whether this site's router is running: its AMQP port accepts a
    /// connection on loopback.
    pub fn is_running(&self, state: &SiteState) -> bool {
        port_accepts(state.ports.amqp)
    }
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_accepts(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// Where sites live by default: `$XDG_DATA_HOME/tether/sites`
/// (`~/.local/share/tether/sites` when XDG_DATA_HOME is unset).
pub fn default_root() -> Result<PathBuf, String> {
    let data = match std::env::var_os("XDG_DATA_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => match std::env::var_os("HOME") {
            Some(h) if !h.is_empty() => PathBuf::from(h).join(".local").join("share"),
            _ => {
                return Err(format!(
                    "neither XDG_DATA_HOME nor HOME is set, so there is no default site folder; \
                     give --site-dir DIR (or set {SITE_DIR_ENV})"
                ))
            }
        },
    };
    Ok(data.join("tether").join("sites"))
}

/// The site folders (holding a `site.toml`) directly under `root`, sorted.
pub fn list_sites(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut sites: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join(SITE_FILE).is_file())
        .collect();
    sites.sort();
    sites
}

/// Checks a site name: it is the router id, a file name and a DNS name in
/// certificates, so: 1-63 lowercase letters, digits and '-', starting and
/// ending with a letter or digit (a DNS label, as Kubernetes names are).
pub fn validate_site_name(name: &str) -> Result<(), String> {
    let ok_len = (1..=63).contains(&name.len());
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_ends = !name.starts_with('-') && !name.ends_with('-');
    if ok_len && ok_chars && ok_ends {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name: use 1-63 lowercase letters, digits and '-', \
             starting and ending with a letter or digit (e.g. \"east\", \"site-2\")"
        ))
    }
}

/// Checks the name of a connector, listener or link: it names files and
/// management entities, so the same rules as a site name, and not one of
/// the names the site uses itself.
pub fn validate_entity_name(kind: &str, name: &str) -> Result<(), String> {
    validate_site_name(name).map_err(|e| format!("{kind} name: {e}"))?;
    if name.starts_with(AUTO_LISTENER_PREFIX) {
        return Err(format!(
            "{kind} name {name:?}: names starting with {AUTO_LISTENER_PREFIX:?} are kept for \
             the listeners a router opens by itself; choose another name"
        ));
    }
    Ok(())
}

/// Picks four free ports for a new site: in [`PORT_RANGE`], bindable on
/// 0.0.0.0 now, and not recorded by any site in `known` (sites that are
/// stopped do not hold their ports, so binding alone is not enough).
pub fn choose_ports(known: &[SiteState]) -> Result<Ports, String> {
    let taken: Vec<u16> = known.iter().flat_map(|s| s.ports.all()).collect();
    let mut chosen: Vec<u16> = Vec::with_capacity(4);
    let mut held: Vec<TcpListener> = Vec::with_capacity(4);
    let span = u32::from(PORT_RANGE.end - PORT_RANGE.start);
    let start: u32 = rand::random_range(0..span);
    for i in 0..span {
        if chosen.len() == 4 {
            break;
        }
        let port = PORT_RANGE.start + ((start + i) % span) as u16;
        if taken.contains(&port) {
            continue;
        }
        // Held until all four are found, so the same port is not picked twice.
        if let Ok(l) = TcpListener::bind(("0.0.0.0", port)) {
            held.push(l);
            chosen.push(port);
        }
    }
    match chosen.as_slice() {
        &[inter_router, amqp, grant, http] => Ok(Ports {
            inter_router,
            amqp,
            grant,
            http,
        }),
        _ => Err(format!(
            "cannot find 4 free TCP ports in {}-{}; stop something or remove unused sites",
            PORT_RANGE.start,
            PORT_RANGE.end - 1
        )),
    }
}

/// The states of all sites under `roots` that can be read (for port
/// collision checks; unreadable ones are skipped).
pub fn known_sites(roots: &[PathBuf]) -> Vec<SiteState> {
    let mut out = Vec::new();
    let mut seen = Vec::new();
    for root in roots {
        for dir in list_sites(root) {
            if seen.contains(&dir) {
                continue;
            }
            if let Ok(state) = SiteDir::new(&dir).load() {
                out.push(state);
            }
            seen.push(dir);
        }
    }
    out
}

/// A TOML basic string (quoted, escaped).
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Renders `router.toml` for a site: the router id, its two listeners,
/// `[http]`, the site TLS profile, one connector and TLS profile per link,
/// and the TCP connectors and listeners. File paths are relative to the
/// site folder (the router resolves them against the config file).
pub fn render_router_config(state: &SiteState) -> String {
    let mut out = String::new();
    let p = &state.ports;
    let line = |out: &mut String, s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(
        &mut out,
        "# Rendered by the tether CLI from site.toml; edits here are overwritten.".into(),
    );
    line(&mut out, "[router]".into());
    line(&mut out, format!("id = {}", toml_str(&state.site.name)));
    if state.site.auto_listeners {
        line(&mut out, "auto_listeners = true".into());
    }
    let revoked = state.revoked_peers();
    if !revoked.is_empty() {
        let list: Vec<String> = revoked.iter().map(|r| toml_str(r)).collect();
        line(&mut out, format!("revoked_peers = [{}]", list.join(", ")));
    }
    line(&mut out, String::new());
    line(&mut out, "[[listener]]".into());
    line(
        &mut out,
        format!("name = {}", toml_str(INTER_ROUTER_LISTENER)),
    );
    line(&mut out, "role = \"inter-router\"".into());
    line(&mut out, "host = \"0.0.0.0\"".into());
    line(&mut out, format!("port = {}", p.inter_router));
    line(&mut out, format!("tls = {}", toml_str(SITE_TLS_PROFILE)));
    line(&mut out, String::new());
    line(&mut out, "[[listener]]".into());
    line(&mut out, format!("name = {}", toml_str(AMQP_LISTENER)));
    line(&mut out, "role = \"normal\"".into());
    line(&mut out, "host = \"127.0.0.1\"".into());
    line(&mut out, format!("port = {}", p.amqp));
    line(&mut out, String::new());
    line(&mut out, "[http]".into());
    line(&mut out, format!("listen = \"127.0.0.1:{}\"", p.http));
    line(&mut out, String::new());
    line(&mut out, format!("[tls.{SITE_TLS_PROFILE}]"));
    line(&mut out, format!("ca = {}", toml_str(pki::CA_CERT_FILE)));
    line(
        &mut out,
        format!("cert = {}", toml_str(pki::ROUTER_CERT_FILE)),
    );
    line(
        &mut out,
        format!("key = {}", toml_str(pki::ROUTER_KEY_FILE)),
    );
    for link in &state.links {
        let profile = format!("{LINK_TLS_PREFIX}{}", link.name);
        let dir = format!("{LINKS_DIR}/{}", link.name);
        line(&mut out, String::new());
        line(&mut out, format!("[tls.{}]", toml_str(&profile)));
        line(
            &mut out,
            format!("ca = {}", toml_str(&format!("{dir}/ca.pem"))),
        );
        line(
            &mut out,
            format!("cert = {}", toml_str(&format!("{dir}/cert.pem"))),
        );
        line(
            &mut out,
            format!("key = {}", toml_str(&format!("{dir}/key.pem"))),
        );
        line(&mut out, String::new());
        line(&mut out, "[[connector]]".into());
        line(&mut out, format!("name = {}", toml_str(&link.name)));
        line(&mut out, "role = \"inter-router\"".into());
        line(&mut out, format!("host = {}", toml_str(&link.host)));
        line(&mut out, format!("port = {}", link.port));
        line(&mut out, format!("cost = {}", link.cost));
        line(&mut out, format!("tls = {}", toml_str(&profile)));
    }
    for c in &state.connectors {
        line(&mut out, String::new());
        line(&mut out, "[[tcp_connector]]".into());
        line(&mut out, format!("name = {}", toml_str(&c.name)));
        line(&mut out, format!("address = {}", toml_str(&c.routing_key)));
        line(&mut out, format!("host = {}", toml_str(&c.host)));
        line(&mut out, format!("port = {}", c.port));
        if c.expose {
            line(&mut out, "expose = true".into());
        }
    }
    for l in &state.listeners {
        line(&mut out, String::new());
        line(&mut out, "[[tcp_listener]]".into());
        line(&mut out, format!("name = {}", toml_str(&l.name)));
        line(&mut out, format!("address = {}", toml_str(&l.routing_key)));
        line(&mut out, format!("host = {}", toml_str(&l.host)));
        line(&mut out, format!("port = {}", l.port));
    }
    out
}

/// Writes `contents` to `path` atomically: a temporary file in the same
/// folder, flushed, then renamed over `path`. `private` files (keys) are
/// created with mode 0600 so they are never readable by others, not even
/// for a moment.
pub fn write_atomic(path: &Path, contents: &[u8], private: bool) -> Result<(), String> {
    let err =
        |what: &str, e: io::Error| format!("cannot {what} {}: {}", path.display(), io_reason(&e));
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let result = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(err("write", e));
    }
    Ok(())
}

/// Creates `dir` and its parents; mode 0700 on the last one when `private`.
pub fn create_dir(dir: &Path, private: bool) -> Result<(), String> {
    fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create {}: {}", dir.display(), io_reason(&e)))?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot restrict {}: {}", dir.display(), io_reason(&e)))?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(())
}

/// An I/O error without the trailing " (os error N)".
pub(crate) fn io_reason(err: &io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports() -> Ports {
        Ports {
            inter_router: 21001,
            amqp: 21002,
            grant: 21003,
            http: 21004,
        }
    }

    fn sample() -> SiteState {
        let mut s = SiteState::new("east", true, Vec::new(), ports());
        s.links.push(LinkRecord {
            name: "east-hub".into(),
            site: "hub".into(),
            host: "127.0.0.1".into(),
            port: 22001,
            cost: 2,
        });
        s.grants.push(GrantRecord {
            id: "g1".into(),
            code_sha256: "ab".repeat(32),
            expires: 1_900_000_000,
            redemptions_allowed: 1,
            redeemed: 0,
            cost: 1,
            revoked: false,
        });
        s.issued.push(IssuedRecord {
            peer: "west".into(),
            fingerprint: "cd".repeat(32),
            grant: "g1".into(),
            revoked: true,
        });
        s.connectors.push(ConnectorRecord {
            name: "backend".into(),
            routing_key: "backend".into(),
            host: "127.0.0.1".into(),
            port: 8080,
            expose: true,
        });
        s.listeners.push(ListenerRecord {
            name: "db".into(),
            routing_key: "db".into(),
            host: "0.0.0.0".into(),
            port: 5432,
        });
        s
    }

    #[test]
    fn state_round_trips_through_toml() {
        let s = sample();
        let text = s.to_toml().expect("toml");
        assert!(text.contains("[[link]]"), "{text}");
        assert!(text.contains("[[connector]]"), "{text}");
        let back = SiteState::parse(&text, Path::new("site.toml")).expect("parse");
        assert_eq!(back, s);
        assert_eq!(
            s.site.link_access,
            vec!["127.0.0.1:21001".to_string()],
            "default link access is loopback"
        );
        // The design's key name for issued certificates is accepted too.
        let old = text.replace("fingerprint =", "serial_or_fingerprint =");
        assert_eq!(
            SiteState::parse(&old, Path::new("site.toml")).expect("parse"),
            s
        );
        let err = SiteState::parse("[site]\nname = 1\n", Path::new("/x/site.toml")).unwrap_err();
        assert!(
            err.contains("/x/site.toml is not a valid site file"),
            "{err}"
        );
    }

    #[test]
    fn rendered_config_is_accepted_by_the_router() {
        let dir = tempfile::tempdir().expect("tempdir");
        let site = SiteDir::new(dir.path());
        let s = sample();
        pki::create_site_pki(dir.path(), "east", &[]).expect("pki");
        // The link's files: any valid profile will do for the config check.
        let link = site.link_dir("east-hub");
        create_dir(&link, true).expect("mkdir");
        for (from, to) in [
            (pki::CA_CERT_FILE, "ca.pem"),
            (pki::ROUTER_CERT_FILE, "cert.pem"),
            (pki::ROUTER_KEY_FILE, "key.pem"),
        ] {
            fs::copy(dir.path().join(from), link.join(to)).expect("copy");
        }
        site.save(&s).expect("save");
        let cfg = crate::config::load(&site.router_config_file())
            .unwrap_or_else(|e| panic!("rendered config rejected: {e}"));
        assert_eq!(cfg.router.id, "east");
        assert!(cfg.router.auto_listeners);
        // The router id and the certificate of the revoked issue.
        assert!(cfg.router.revoked_peers.contains(&"west".to_string()));
        assert!(cfg
            .router
            .revoked_peers
            .iter()
            .any(|p| p.starts_with("sha256:")));
        assert_eq!(cfg.connectors.len(), 1);
        assert_eq!(cfg.connectors[0].name, "east-hub");
        assert_eq!(cfg.connectors[0].cost, 2);
        assert_eq!(cfg.tcp_connectors[0].address, "backend");
        assert!(cfg.tcp_connectors[0].expose);
        assert_eq!(cfg.tcp_listeners[0].port, 5432);
        assert_eq!(site.load().expect("load"), s);

        // A plain site renders without the optional keys.
        let plain = SiteState::new("west", false, Vec::new(), ports());
        let text = render_router_config(&plain);
        assert!(!text.contains("auto_listeners"), "{text}");
        assert!(!text.contains("revoked_peers"), "{text}");
    }

    #[test]
    fn resolution_explicit_single_and_many() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        let err = SiteDir::resolve_in(None, r).unwrap_err();
        assert!(err.contains("tether site create NAME"), "{err}");

        let east = r.join("east");
        create_dir(&east, true).expect("mkdir");
        SiteDir::new(&east)
            .save(&SiteState::new("east", true, Vec::new(), ports()))
            .expect("save");
        assert_eq!(SiteDir::resolve_in(None, r).expect("one").path, east);

        let west = r.join("west");
        create_dir(&west, true).expect("mkdir");
        SiteDir::new(&west)
            .save(&SiteState::new("west", true, Vec::new(), ports()))
            .expect("save");
        let err = SiteDir::resolve_in(None, r).unwrap_err();
        assert!(
            err.contains("2 sites") && err.contains("east, west"),
            "{err}"
        );
        assert!(err.contains("--site-dir"), "{err}");
        assert_eq!(
            SiteDir::resolve_in(Some(&west), r).expect("explicit").path,
            west
        );
        let err = SiteDir::resolve_in(Some(&r.join("nope")), r).unwrap_err();
        assert!(err.contains("not a site folder"), "{err}");
        assert_eq!(known_sites(&[r.to_path_buf(), r.to_path_buf()]).len(), 2);
    }

    #[test]
    fn ports_avoid_other_sites_and_each_other() {
        let other = SiteState::new("east", true, Vec::new(), ports());
        let p = choose_ports(std::slice::from_ref(&other)).expect("ports");
        let mut all = p.all().to_vec();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 4);
        for port in p.all() {
            assert!(PORT_RANGE.contains(&port));
            assert!(!other.ports.all().contains(&port));
        }
    }

    #[test]
    fn names_and_atomic_private_writes() {
        for good in ["east", "site-2", "a", "0"] {
            validate_site_name(good).expect(good);
        }
        for bad in ["", "East", "-a", "a-", "a_b", "a.b", &"x".repeat(64)] {
            assert!(validate_site_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_entity_name("listener", "auto-web").is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("k.pem");
        write_atomic(&key, b"one", true).expect("write");
        write_atomic(&key, b"two", true).expect("rewrite");
        assert_eq!(fs::read(&key).expect("read"), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&key).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let leftovers: Vec<_> = fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(leftovers.len(), 1, "no temporary files are left behind");
    }
}
