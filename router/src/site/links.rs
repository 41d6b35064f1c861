//! Links: `tether link generate|apply|status|update|delete|revoke`, and the
//! installation of an outgoing link that `tether token redeem` shares.
//!
//! An **outgoing** link is a `[[link]]` in `site.toml` plus its TLS files in
//! `links/NAME/` (the peer site's CA, our client certificate signed by that
//! CA, and our key, mode 0600); `router.toml` gets a `[tls.link-NAME]`
//! profile and an inter-router `[[connector]]` NAME. When the site's router
//! runs, the same is created live through management (sslProfile
//! `link-NAME`, connector NAME, with absolute file paths) and, unless
//! `--no-wait`, the command waits until the connector reports
//! `connectionStatus` `UP`.
//!
//! **Without a grant server**: `tether link generate` on the site to link to
//! prints a link file (YAML):
//!
//! ```yaml
//! kind: tether-link
//! version: 1
//! site: east            # the site that generated it (the peer to dial)
//! name: east            # the link's name on the site that applies it
//! cost: 1
//! endpoints:
//!   - 127.0.0.1:41001   # its inter-router endpoints (the first is dialed)
//! ca: |                 # its CA
//! cert: |               # a fresh client certificate signed by that CA
//! key: |                # and its key
//! ```
//!
//! The certificate's common name is `link-<random>` (the applying site is
//! not known yet); it is recorded in `[[issued]]`. `tether link apply FILE`
//! on the other site installs it like a redeemed token.
//!
//! **Incoming** links are the certificates this site issued (`[[issued]]`)
//! and, live, the inter-router connections peers opened to us (`link
//! status`). `tether link revoke PEER` marks what was issued to PEER revoked
//! and, live, creates the router's `revokedPeer` PEER, which refuses and
//! closes that router's links; `router.toml` lists it in `revoked_peers` so
//! a restart keeps it.
//!
//! `site.toml` changes go through [`super::grants::update_state`] (the site
//! lock), so they never race the grant server.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fe2o3_amqp::types::primitives::{OrderedMap, Value};
use serde_json::Value as J;

use super::tokens::{
    host_port, humanize, parse_ca, read_small_file, yaml_block, yaml_field, MiniYaml, WaitArgs,
};
use super::{LinkRecord, SiteDir, SiteState};
use crate::cli_mgmt::OutputFormat;
use crate::mgmt_client::{to_json, Attributes, ClientOptions, MgmtClient, MgmtError, TlsOptions};

/// `kind:` of a link file.
pub const LINK_KIND: &str = "tether-link";
/// The link file format written and read here.
pub const LINK_VERSION: u32 = 1;
/// Entity types used.
const CONNECTOR_TYPE: &str = "io.tether.router.connector";
const SSL_PROFILE_TYPE: &str = "io.tether.router.sslProfile";
const CONNECTION_TYPE: &str = "io.tether.router.connection";
const REVOKED_PEER_TYPE: &str = "io.tether.router.revokedPeer";
/// How often a wait polls the router.
const POLL: Duration = Duration::from_millis(50);

/// `tether link ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum LinkCommand {
    /// Print a link file (YAML) another site installs with `tether link apply`.
    Generate {
        /// Cost of the link (the applying site may override).
        #[arg(long, value_name = "N", default_value_t = 1,
              value_parser = clap::value_parser!(u32).range(1..))]
        cost: u32,
        /// Name of the link on the site that applies it (default: this site's name).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// Install a link file from `tether link generate`: link this site to the one that made it.
    Apply {
        /// The link file.
        file: PathBuf,
        /// Name of the link here (default: the one in the file).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Cost of the link (default: the one in the file).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        cost: Option<u32>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Show outgoing and incoming links with peer site, cost and state.
    Status {
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Change the cost of an outgoing link.
    Update {
        /// The link's name (see `tether link status`).
        name: String,
        /// The new cost.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        cost: u32,
    },
    /// Delete an outgoing link: it goes down on both sides.
    Delete {
        /// The link's name (see `tether link status`).
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Revoke what this site issued to a peer: its links here are refused and closed.
    Revoke {
        /// The peer site (router id) as `tether link status` shows it.
        peer: String,
    },
}

/// Runs a `tether link` command on the site chosen by `site_dir`
/// (`--site-dir`/`TETHER_SITE_DIR`, else the only site).
pub async fn run(cmd: LinkCommand, site_dir: Option<PathBuf>) -> Result<(), String> {
    let site = SiteDir::resolve(site_dir.as_deref())?;
    match cmd {
        LinkCommand::Generate { cost, name } => {
            let text = generate(&site, cost, name.as_deref())?;
            print!("{text}");
            eprintln!(
                "The link holds a private key: keep the file private (chmod 600) and delete it \
                 once applied with `tether link apply FILE` on the other site."
            );
            Ok(())
        }
        LinkCommand::Apply {
            file,
            name,
            cost,
            wait,
        } => {
            let started = Instant::now();
            let text = read_small_file(&file)?;
            let mut link = LinkFile::parse(&text)
                .map_err(|e| format!("{} is not a usable link file: {e}", file.display()))?;
            let state = site.load()?;
            if link.material.peer_site == state.site.name {
                return Err(format!(
                    "this link file was generated by site {} itself; apply it on the other site",
                    state.site.name
                ));
            }
            if let Some(n) = name {
                link.material.name = n;
            }
            if let Some(c) = cost {
                link.material.cost = c;
            }
            install_link(&site, &link.material, &wait, started).await
        }
        LinkCommand::Status { output } => status(&site, output).await,
        LinkCommand::Update { name, cost } => update(&site, &name, cost).await,
        LinkCommand::Delete { name, wait } => delete(&site, &name, &wait).await,
        LinkCommand::Revoke { peer } => revoke(&site, &peer).await,
    }
}

// ---------------------------------------------------------------------------
// Installing an outgoing link (token redeem, link apply)
// ---------------------------------------------------------------------------

/// Everything an outgoing link needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkMaterial {
    /// The link's name here (connector NAME, TLS profile `link-NAME`).
    pub name: String,
    /// The peer site's name.
    pub peer_site: String,
    /// The peer's CA (PEM).
    pub ca: String,
    /// Our client certificate, signed by the peer's CA (PEM).
    pub cert: String,
    /// Its private key (PEM).
    pub key: String,
    /// The peer's inter-router endpoints; the first is dialed.
    pub endpoints: Vec<(String, u16)>,
    pub cost: u32,
}

/// Installs an outgoing link: files, `site.toml`, `router.toml`, and live
/// when the router runs (then waits for it to come up unless told not to).
/// `started` is when the user's command began, for the "up in" figure.
pub async fn install_link(
    site: &SiteDir,
    link: &LinkMaterial,
    wait: &WaitArgs,
    started: Instant,
) -> Result<(), String> {
    super::validate_site_name(&link.name).map_err(|e| format!("link name: {e}"))?;
    let (host, port) = link
        .endpoints
        .first()
        .cloned()
        .ok_or("the link names no endpoint to dial")?;
    let state = site.load()?;
    if let Some(what) = state.name_in_use(&link.name) {
        return Err(format!(
            "site {} already has a {what} named {}; delete it first \
             (`tether link delete {}`) or choose another name with --name",
            state.site.name, link.name, link.name
        ));
    }
    // The files first, checked as the router will load them.
    let dir = site.link_dir(&link.name);
    super::create_dir(&dir, true)?;
    let files = LinkFiles::of(site, &link.name)?;
    let written = (|| {
        super::write_atomic(&files.ca, link.ca.as_bytes(), false)?;
        super::write_atomic(&files.cert, link.cert.as_bytes(), false)?;
        super::write_atomic(&files.key, link.key.as_bytes(), true)?;
        verify_chain(&link.ca, &link.cert).map_err(|e| {
            format!(
                "{e}: the file was altered or mixes two sites; ask {} for a new one",
                link.peer_site
            )
        })?;
        crate::tls::load_material(&files.ca, &files.cert, &files.key).map_err(|e| {
            format!(
                "the link's certificates are not usable: {e}; the file was altered or is \
                 damaged: ask {} for a new one",
                link.peer_site
            )
        })?;
        Ok::<(), String>(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    let record = LinkRecord {
        name: link.name.clone(),
        site: link.peer_site.clone(),
        host: host.clone(),
        port,
        cost: link.cost,
    };
    let saved = super::grants::update_state(site, |s| {
        if let Some(what) = s.name_in_use(&link.name) {
            return Err(format!(
                "site {} already has a {what} named {}",
                s.site.name, link.name
            ));
        }
        s.links.push(record.clone());
        Ok(())
    });
    if let Err(e) = saved {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    let target = host_port(&host, port);
    println!(
        "Link {} to site {} ({target}, cost {}) saved in {}.",
        link.name,
        link.peer_site,
        link.cost,
        site.path.display()
    );
    let Some(mut client) = live_client(site, &state).await? else {
        println!(
            "Site {} is not running; the link comes up when it starts (`tether site start`).",
            state.site.name
        );
        return Ok(());
    };
    let applied = create_live(&mut client, &record, &files).await;
    let result = match applied {
        Err(e) => Err(format!(
            "the link is saved but the running router refused it: {e}; restart the site \
             to apply it from router.toml"
        )),
        Ok(()) if wait.no_wait => {
            println!("Link {} created on the running router.", link.name);
            Ok(())
        }
        Ok(()) => {
            wait_link_up(
                &mut client,
                &link.name,
                &link.peer_site,
                wait.timeout,
                started,
            )
            .await
        }
    };
    client.close().await;
    result
}

/// Checks that `cert_pem` is a client certificate signed by `ca_pem`, as the
/// peer will check it.
pub fn verify_chain(ca_pem: &str, cert_pem: &str) -> Result<(), String> {
    use rustls::pki_types::UnixTime;
    use rustls::server::WebPkiClientVerifier;
    let mut roots = rustls::RootCertStore::empty();
    for c in parse_ca(ca_pem).map_err(|e| format!("the CA: {e}"))? {
        roots.add(c).map_err(|e| format!("the CA: {e}"))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        WebPkiClientVerifier::builder_with_provider(std::sync::Arc::new(roots), provider)
            .build()
            .map_err(|e| format!("the CA: {e}"))?;
    let chain = parse_ca(cert_pem).map_err(|e| format!("the certificate: {e}"))?;
    let (leaf, rest) = chain.split_first().ok_or("the certificate: none")?;
    verifier
        .verify_client_cert(leaf, rest, UnixTime::now())
        .map(|_| ())
        .map_err(|e| match e {
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature,
            ) => "the certificate is not signed by the CA that comes with it".to_string(),
            other => format!(
                "the certificate is not usable: {}",
                crate::tls::describe_tls_error(&other)
            ),
        })
}

/// Absolute paths of a link's TLS files.
struct LinkFiles {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl LinkFiles {
    fn of(site: &SiteDir, name: &str) -> Result<LinkFiles, String> {
        let dir = site.link_dir(name);
        let dir = absolute(&dir)?;
        Ok(LinkFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        })
    }
}

fn absolute(p: &Path) -> Result<PathBuf, String> {
    std::path::absolute(p).map_err(|e| format!("cannot resolve {}: {e}", p.display()))
}

/// Creates sslProfile `link-NAME` and connector NAME on the router.
async fn create_live(
    client: &mut MgmtClient,
    link: &LinkRecord,
    files: &LinkFiles,
) -> Result<(), MgmtError> {
    let profile = format!("{}{}", super::LINK_TLS_PREFIX, link.name);
    let path = |p: &Path| Value::String(p.display().to_string());
    client
        .create(
            SSL_PROFILE_TYPE,
            &profile,
            attributes(vec![
                ("caCertFile", path(&files.ca)),
                ("certFile", path(&files.cert)),
                ("privateKeyFile", path(&files.key)),
            ]),
        )
        .await?;
    let created = client
        .create(
            CONNECTOR_TYPE,
            &link.name,
            attributes(vec![
                ("role", Value::String("inter-router".into())),
                ("host", Value::String(link.host.clone())),
                ("port", Value::String(link.port.to_string())),
                ("cost", Value::Long(i64::from(link.cost))),
                ("sslProfile", Value::String(profile.clone())),
            ]),
        )
        .await;
    if let Err(e) = created {
        // Leave nothing half-made behind.
        let _ = client.delete(SSL_PROFILE_TYPE, &profile).await;
        return Err(e);
    }
    Ok(())
}

fn attributes(pairs: Vec<(&str, Value)>) -> Attributes {
    let mut m = OrderedMap::new();
    for (k, v) in pairs {
        m.insert(k.to_string(), v);
    }
    m
}

/// A management client for the site's router, or `None` when it is not
/// running.
pub async fn live_client(site: &SiteDir, state: &SiteState) -> Result<Option<MgmtClient>, String> {
    if !site.is_running(state) {
        return Ok(None);
    }
    let opts = ClientOptions {
        url: state.amqp_url(),
        target_router: None,
        timeout: Duration::from_secs(10),
        tls: TlsOptions::default(),
    };
    MgmtClient::connect(&opts).await.map(Some).map_err(|e| {
        format!(
            "site {} seems to run (port {} answers) but its management does not: {e}",
            state.site.name, state.ports.amqp
        )
    })
}

/// The named entities of a QUERY, as JSON objects.
async fn query_records(
    client: &mut MgmtClient,
    entity_type: &str,
) -> Result<Vec<serde_json::Map<String, J>>, MgmtError> {
    let q = client.query_all(entity_type, &[]).await?;
    Ok(q.records()
        .iter()
        .map(|r| r.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        .collect())
}

fn text(rec: &serde_json::Map<String, J>, key: &str) -> String {
    match rec.get(key) {
        Some(J::String(s)) => s.clone(),
        Some(J::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// Polls connector `name` until `UP`, printing each new state; the link
/// stays configured when it does not come up in time.
async fn wait_link_up(
    client: &mut MgmtClient,
    name: &str,
    peer: &str,
    timeout: Duration,
    started: Instant,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let rows = query_records(client, CONNECTOR_TYPE)
            .await
            .map_err(|e| format!("the link is created but its state cannot be read: {e}"))?;
        let row = rows.iter().find(|r| text(r, "name") == name);
        let (status, message) = match row {
            Some(r) => (text(r, "connectionStatus"), text(r, "connectionMsg")),
            None => (String::new(), String::new()),
        };
        if status == "UP" {
            let router = row.map(|r| text(r, "peerRouter")).unwrap_or_default();
            let router = if router.is_empty() {
                peer.to_string()
            } else {
                router
            };
            println!(
                "Link {name} is up: linked to {router} in {:.2} s.",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        let now_state = if message.is_empty() {
            status.clone()
        } else {
            format!("{status}: {message}")
        };
        if now_state != last && !now_state.is_empty() {
            println!("  link {name}: {now_state}");
            last = now_state;
        }
        if Instant::now() >= deadline {
            let why = if message.is_empty() {
                String::new()
            } else {
                format!(" (last: {message})")
            };
            return Err(format!(
                "link {name} did not come up within {}{why}; it stays configured and keeps \
                 trying: check that {peer} runs and is reachable, then `tether link status`",
                humanize(timeout)
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------
// The link file (generate / apply)
// ---------------------------------------------------------------------------

/// A link file's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkFile {
    pub material: LinkMaterial,
}

impl LinkFile {
    /// The YAML text.
    pub fn to_yaml(&self) -> String {
        let m = &self.material;
        let mut out = format!(
            "# A Tether link to site {}: install it on another site with\n\
             #   tether link apply FILE\n\
             # It holds a private key: keep it secret and delete it once applied.\n",
            m.peer_site
        );
        yaml_field(&mut out, "kind", LINK_KIND);
        yaml_field(&mut out, "version", &LINK_VERSION.to_string());
        yaml_field(&mut out, "site", &m.peer_site);
        yaml_field(&mut out, "name", &m.name);
        yaml_field(&mut out, "cost", &m.cost.to_string());
        out.push_str("endpoints:\n");
        for (h, p) in &m.endpoints {
            out.push_str("  - ");
            out.push_str(&super::tokens::yaml_scalar(&host_port(h, *p)));
            out.push('\n');
        }
        yaml_block(&mut out, "ca", &m.ca);
        yaml_block(&mut out, "cert", &m.cert);
        yaml_block(&mut out, "key", &m.key);
        out
    }

    /// Parses a link file's text.
    pub fn parse(text: &str) -> Result<LinkFile, String> {
        let doc = MiniYaml::parse(text)?;
        doc.check_header(
            LINK_KIND,
            LINK_VERSION,
            (
                super::tokens::TOKEN_KIND,
                "this is a token; redeem it with `tether token redeem FILE`",
            ),
            "link file",
        )?;
        let peer_site = doc.required("site")?.to_string();
        super::validate_site_name(&peer_site).map_err(|e| format!("site: {e}"))?;
        let name = doc.optional("name")?.unwrap_or(&peer_site).to_string();
        super::validate_site_name(&name).map_err(|e| format!("name: {e}"))?;
        let cost = match doc.optional("cost")? {
            None | Some("") => 1,
            Some(c) => c
                .parse::<u32>()
                .ok()
                .filter(|c| *c >= 1)
                .ok_or_else(|| format!("cost: {c:?} is not a positive number"))?,
        };
        let endpoints = doc
            .list("endpoints")?
            .iter()
            .map(|e| parse_endpoint(e))
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err("endpoints: missing (the generating site's host:port)".into());
        }
        let material = LinkMaterial {
            name,
            peer_site,
            ca: doc.required_block("ca")?.to_string(),
            cert: doc.required_block("cert")?.to_string(),
            key: doc.required_block("key")?.to_string(),
            endpoints,
            cost,
        };
        parse_ca(&material.ca).map_err(|e| format!("ca: {e}"))?;
        parse_ca(&material.cert).map_err(|e| format!("cert: {e}"))?;
        if !material
            .key
            .lines()
            .any(|l| l.starts_with("-----BEGIN ") && l.ends_with("PRIVATE KEY-----"))
        {
            return Err("key: no PRIVATE KEY section".into());
        }
        Ok(LinkFile { material })
    }
}

/// `host:port` (IPv6 in brackets) as (host, port).
pub fn parse_endpoint(s: &str) -> Result<(String, u16), String> {
    let bad = || format!("endpoint {s:?}: expected HOST:PORT (IPv6 as [ADDR]:PORT)");
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        rest.split_once("]:").ok_or_else(bad)?
    } else {
        let (h, p) = s.rsplit_once(':').ok_or_else(bad)?;
        if h.contains(':') {
            return Err(bad());
        }
        (h, p)
    };
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(bad)?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// `tether link generate`: a fresh client certificate signed by this site's
/// CA, recorded in `[[issued]]`, as a link file.
pub fn generate(site: &SiteDir, cost: u32, name: Option<&str>) -> Result<String, String> {
    let state = site.load()?;
    let own = state.site.name.clone();
    let link_name = name.unwrap_or(&own).to_string();
    super::validate_site_name(&link_name).map_err(|e| format!("--name: {e}"))?;
    let cn = format!("link-{}", &super::tokens::random_id()[..12]);
    let (cert, key, fingerprint) = super::pki::issue_client_cert(&site.path, &cn)?;
    let ca_path = site.path.join(super::pki::CA_CERT_FILE);
    let ca = std::fs::read_to_string(&ca_path).map_err(|e| {
        format!(
            "cannot read {}: {}",
            ca_path.display(),
            super::io_reason(&e)
        )
    })?;
    super::grants::update_state(site, |s| {
        s.issued.push(super::IssuedRecord {
            peer: cn.clone(),
            fingerprint: fingerprint.clone(),
            grant: String::new(),
            revoked: false,
        });
        Ok(())
    })?;
    let file = LinkFile {
        material: LinkMaterial {
            name: link_name,
            peer_site: own,
            ca,
            cert,
            key,
            endpoints: super::grants::endpoints(&state),
            cost,
        },
    };
    Ok(file.to_yaml())
}

// ---------------------------------------------------------------------------
// status / update / delete / revoke
// ---------------------------------------------------------------------------

/// `tether link status`: what `site.toml` says, with the live state when
/// the router runs.
async fn status(site: &SiteDir, output: OutputFormat) -> Result<(), String> {
    let state = site.load()?;
    let mut connectors = Vec::new();
    let mut connections = Vec::new();
    let mut running = false;
    if let Some(mut client) = live_client(site, &state).await? {
        running = true;
        let q1 = query_records(&mut client, CONNECTOR_TYPE).await;
        let q2 = query_records(&mut client, CONNECTION_TYPE).await;
        client.close().await;
        connectors = q1.map_err(|e| format!("cannot read the router's connectors: {e}"))?;
        connections = q2.map_err(|e| format!("cannot read the router's connections: {e}"))?;
    }
    let report = status_report(&state, running, &connectors, &connections);
    let text = match output {
        OutputFormat::Json => {
            let mut s = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
            s.push('\n');
            s
        }
        OutputFormat::Yaml => crate::cli_mgmt::to_yaml(&report),
        OutputFormat::Table => status_table(&report),
    };
    print!("{text}");
    Ok(())
}

/// The status as JSON: `{"site", "running", "outgoing": [...], "incoming": [...]}`.
pub fn status_report(
    state: &SiteState,
    running: bool,
    connectors: &[serde_json::Map<String, J>],
    connections: &[serde_json::Map<String, J>],
) -> J {
    let outgoing: Vec<J> = state
        .links
        .iter()
        .map(|l| {
            let live = connectors.iter().find(|c| text(c, "name") == l.name);
            let status = match (running, live) {
                (false, _) => "not running".to_string(),
                (true, None) => "not loaded".to_string(),
                (true, Some(c)) => text(c, "connectionStatus"),
            };
            let peer = live
                .map(|c| text(c, "peerRouter"))
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| l.site.clone());
            serde_json::json!({
                "name": l.name,
                "site": peer,
                "endpoint": host_port(&l.host, l.port),
                "cost": l.cost,
                "status": status,
                "message": live.map(|c| text(c, "connectionMsg")).unwrap_or_default(),
            })
        })
        .collect();
    let live_in: Vec<&serde_json::Map<String, J>> = connections
        .iter()
        .filter(|c| text(c, "role") == "inter-router" && text(c, "dir") == "in")
        .collect();
    let mut incoming: Vec<J> = Vec::new();
    let mut shown: Vec<String> = Vec::new();
    // A live connection belongs to the issued certificate it presented
    // (the router reports `peerCertificate`); by router id only when the
    // router does not say.
    let cert_of = |c: &serde_json::Map<String, J>| {
        text(c, "peerCertificate")
            .strip_prefix("sha256:")
            .map(str::to_string)
    };
    for i in &state.issued {
        let conn = live_in.iter().find(|c| match cert_of(c) {
            Some(fp) => !i.fingerprint.is_empty() && fp == i.fingerprint,
            None => peer_of(c) == i.peer,
        });
        if let Some(c) = conn {
            shown.push(connection_key(c));
        }
        incoming.push(serde_json::json!({
            "site": i.peer,
            "certificate": i.fingerprint.get(..16).unwrap_or(&i.fingerprint),
            "via": if i.grant.is_empty() { "link generate".to_string() } else { format!("token {}", i.grant.get(..8).unwrap_or(&i.grant)) },
            "revoked": i.revoked,
            "status": if conn.is_some() { "UP" } else if running { "down" } else { "not running" },
            "from": conn.map(|c| text(c, "host")).unwrap_or_default(),
            "cost": conn.and_then(|c| c.get("cost").cloned()).unwrap_or(J::Null),
        }));
    }
    // Peers linked with a generated certificate show under their router id.
    for c in live_in {
        let peer = peer_of(c);
        if shown.contains(&connection_key(c)) {
            continue;
        }
        incoming.push(serde_json::json!({
            "site": peer,
            "certificate": J::Null,
            "via": J::Null,
            "revoked": false,
            "status": "UP",
            "from": text(c, "host"),
            "cost": c.get("cost").cloned().unwrap_or(J::Null),
        }));
    }
    serde_json::json!({
        "site": state.site.name,
        "running": running,
        "outgoing": outgoing,
        "incoming": incoming,
    })
}

/// What tells connection records apart: their identity (or the peer).
fn connection_key(c: &serde_json::Map<String, J>) -> String {
    let id = text(c, "identity");
    if id.is_empty() {
        peer_of(c)
    } else {
        id
    }
}

/// The router id at the other end of a connection record.
fn peer_of(c: &serde_json::Map<String, J>) -> String {
    let p = text(c, "peerRouter");
    if p.is_empty() {
        text(c, "container")
    } else {
        p
    }
}

fn status_table(report: &J) -> String {
    let mut out = String::new();
    let site = report["site"].as_str().unwrap_or("");
    let running = report["running"].as_bool().unwrap_or(false);
    out.push_str(&format!(
        "Site {site}{}\n\nOutgoing links\n",
        if running { "" } else { " (not running)" }
    ));
    let rows = |key: &str, cols: &[&str]| -> Vec<Vec<J>> {
        report[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| cols.iter().map(|c| r[*c].clone()).collect())
                    .collect()
            })
            .unwrap_or_default()
    };
    let outgoing = rows(
        "outgoing",
        &["name", "site", "endpoint", "cost", "status", "message"],
    );
    if outgoing.is_empty() {
        out.push_str("  none (link to another site with `tether token redeem FILE` or `tether link apply FILE`)\n");
    } else {
        out.push_str(&crate::cli_mgmt::render_table(
            &["NAME", "SITE", "ENDPOINT", "COST", "STATUS", "MESSAGE"],
            &outgoing,
            2,
        ));
    }
    out.push_str("\nIncoming links\n");
    let incoming = rows(
        "incoming",
        &[
            "site",
            "status",
            "from",
            "cost",
            "via",
            "certificate",
            "revoked",
        ],
    );
    if incoming.is_empty() {
        out.push_str("  none (let another site link here with `tether token issue FILE`)\n");
    } else {
        out.push_str(&crate::cli_mgmt::render_table(
            &[
                "SITE",
                "STATUS",
                "FROM",
                "COST",
                "VIA",
                "CERTIFICATE",
                "REVOKED",
            ],
            &incoming,
            2,
        ));
    }
    out
}

fn unknown_link(state: &SiteState, name: &str) -> String {
    let names: Vec<&str> = state.links.iter().map(|l| l.name.as_str()).collect();
    if names.is_empty() {
        format!("site {} has no outgoing links", state.site.name)
    } else {
        format!(
            "site {} has no outgoing link named {name} (links: {}); see `tether link status`",
            state.site.name,
            names.join(", ")
        )
    }
}

/// `tether link update NAME --cost N`.
async fn update(site: &SiteDir, name: &str, cost: u32) -> Result<(), String> {
    let state = super::grants::update_state(site, |s| {
        let unknown = unknown_link(s, name);
        let link = s.links.iter_mut().find(|l| l.name == name).ok_or(unknown)?;
        link.cost = cost;
        Ok(s.clone())
    })?;
    println!("Link {name}: cost {cost} saved.");
    if let Some(mut client) = live_client(site, &state).await? {
        let r = client
            .update(
                CONNECTOR_TYPE,
                name,
                attributes(vec![("cost", Value::Long(i64::from(cost)))]),
            )
            .await;
        client.close().await;
        r.map_err(|e| {
            format!("the cost is saved but the running router refused it: {e}; restart the site to apply it")
        })?;
        println!("Applied to the running router.");
    }
    Ok(())
}

/// `tether link delete NAME`.
async fn delete(site: &SiteDir, name: &str, wait: &WaitArgs) -> Result<(), String> {
    let state = super::grants::update_state(site, |s| {
        let unknown = unknown_link(s, name);
        let i = s.links.iter().position(|l| l.name == name).ok_or(unknown)?;
        s.links.remove(i);
        Ok(s.clone())
    })?;
    let dir = site.link_dir(name);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!(
                "warning: cannot remove {}: {}",
                dir.display(),
                super::io_reason(&e)
            );
        }
    }
    println!("Link {name} deleted from {}.", site.path.display());
    let Some(mut client) = live_client(site, &state).await? else {
        return Ok(());
    };
    let result = async {
        let profile = format!("{}{}", super::LINK_TLS_PREFIX, name);
        for (ty, n) in [(CONNECTOR_TYPE, name), (SSL_PROFILE_TYPE, profile.as_str())] {
            match client.delete(ty, n).await {
                Ok(()) => {}
                Err(e) if e.status_code() == Some(404) => {}
                Err(e) => {
                    return Err(format!(
                        "the link is deleted from the site but the running router refused: {e}; \
                         restart the site to apply it"
                    ))
                }
            }
        }
        if wait.no_wait {
            return Ok(());
        }
        // Wait until the connection made by the connector is gone.
        let deadline = Instant::now() + wait.timeout;
        loop {
            let conns = query_records(&mut client, CONNECTION_TYPE)
                .await
                .map_err(|e| format!("cannot read the router's connections: {e}"))?;
            if !conns.iter().any(|c| text(c, "connector") == name) {
                println!("Link {name} is down.");
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the connection of link {name} is still open after {}",
                    humanize(wait.timeout)
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }
    .await;
    client.close().await;
    result
}

/// `tether link revoke PEER`.
async fn revoke(site: &SiteDir, peer: &str) -> Result<(), String> {
    super::validate_site_name(peer).map_err(|e| format!("PEER: {e}"))?;
    let (state, count) = super::grants::update_state(site, |s| {
        let mut count = 0;
        for i in s.issued.iter_mut().filter(|i| i.peer == peer) {
            if !i.revoked {
                i.revoked = true;
                count += 1;
            }
        }
        if !s.issued.iter().any(|i| i.peer == peer) {
            // A peer linked with a generated certificate is known here only
            // by its router id: record the revocation under that name.
            s.issued.push(super::IssuedRecord {
                peer: peer.to_string(),
                fingerprint: String::new(),
                grant: String::new(),
                revoked: true,
            });
        }
        Ok((s.clone(), count))
    })?;
    println!(
        "Revoked {peer} in {} ({count} issued certificate{} marked).",
        site.path.display(),
        if count == 1 { "" } else { "s" }
    );
    let Some(mut client) = live_client(site, &state).await? else {
        println!(
            "Site {} is not running; the revocation applies when it starts.",
            state.site.name
        );
        return Ok(());
    };
    // The router refuses the peer by router id (site name) and by each
    // revoked certificate's fingerprint: a `link generate` certificate is
    // named `link-...`, not after the site that applied it.
    let mut names: Vec<String> = Vec::new();
    if !peer.starts_with("link-") {
        names.push(peer.to_string());
    }
    for i in state.issued.iter().filter(|i| i.peer == peer && i.revoked) {
        if !i.fingerprint.is_empty() {
            names.push(format!("sha256:{}", i.fingerprint));
        }
    }
    let mut r = Ok(());
    for name in &names {
        match client
            .create(REVOKED_PEER_TYPE, name, Attributes::new())
            .await
        {
            Ok(_) => {}
            // Already refused (a 400 "already exists"): nothing to do.
            Err(e) if matches!(e.status_code(), Some(400) | Some(409)) => {}
            Err(e) => {
                r = Err(e);
                break;
            }
        }
    }
    client.close().await;
    match r {
        Ok(()) => {
            println!("The running router now refuses and closes links with {peer}.");
            Ok(())
        }
        Err(e) => Err(format!(
            "the revocation is saved but the running router refused it: {e}; restart the site to apply it"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn material() -> LinkMaterial {
        LinkMaterial {
            name: "east".into(),
            peer_site: "east".into(),
            ca: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            cert: "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n".into(),
            key: "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n".into(),
            endpoints: vec![("127.0.0.1".into(), 41001), ("::1".into(), 41001)],
            cost: 2,
        }
    }

    #[test]
    fn link_file_round_trips() {
        let f = LinkFile {
            material: material(),
        };
        let yaml = f.to_yaml();
        assert!(yaml.contains("kind: tether-link\n"), "{yaml}");
        assert!(yaml.contains("  - 127.0.0.1:41001\n"), "{yaml}");
        assert_eq!(LinkFile::parse(&yaml).expect("parses"), f);
        let e =
            LinkFile::parse(&yaml.replace("kind: tether-link", "kind: tether-token")).unwrap_err();
        assert!(e.contains("token redeem"), "{e}");
        let e = LinkFile::parse(&yaml.replace("cost: 2", "cost: 0")).unwrap_err();
        assert!(e.contains("cost"), "{e}");
        let e = LinkFile::parse(&yaml.replace("BEGIN PRIVATE KEY", "BEGIN X")).unwrap_err();
        assert!(e.contains("key"), "{e}");
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(parse_endpoint("h:1"), Ok(("h".into(), 1)));
        assert_eq!(parse_endpoint("[::1]:9"), Ok(("::1".into(), 9)));
        for bad in ["h", "::1:9", ":9", "h:0", "h:x", "[::1]"] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }

    fn ports() -> super::super::Ports {
        super::super::Ports {
            inter_router: 21001,
            amqp: 21002,
            grant: 21003,
            http: 21004,
        }
    }

    #[test]
    fn generated_links_install_offline() {
        let east_dir = tempfile::tempdir().expect("tempdir");
        let west_dir = tempfile::tempdir().expect("tempdir");
        let east = SiteDir::new(east_dir.path());
        let west = SiteDir::new(west_dir.path());
        // Ports nothing listens on: both "not running".
        let mut p = ports();
        p.amqp = 1;
        super::super::pki::create_site_pki(east_dir.path(), "east", &[]).expect("pki");
        super::super::pki::create_site_pki(west_dir.path(), "west", &[]).expect("pki");
        east.save(&SiteState::new("east", true, Vec::new(), p))
            .expect("save");
        west.save(&SiteState::new("west", true, Vec::new(), p))
            .expect("save");

        let yaml = generate(&east, 3, None).expect("generate");
        let issued = east.load().expect("load").issued;
        assert_eq!(issued.len(), 1);
        assert!(issued[0].peer.starts_with("link-"));
        let link = LinkFile::parse(&yaml).expect("parses");
        assert_eq!(link.material.endpoints, [("127.0.0.1".to_string(), 21001)]);

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(install_link(
            &west,
            &link.material,
            &WaitArgs::default(),
            Instant::now(),
        ))
        .expect("installs");
        let state = west.load().expect("load");
        assert_eq!(state.links.len(), 1);
        assert_eq!(
            (state.links[0].name.as_str(), state.links[0].cost),
            ("east", 3)
        );
        assert!(west.link_dir("east").join("key.pem").is_file());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(west.link_dir("east").join("key.pem"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let cfg = crate::config::load(&west.router_config_file()).expect("router.toml loads");
        assert_eq!(cfg.connectors[0].name, "east");
        // Same name again: refused, nothing changed.
        let e = rt
            .block_on(install_link(
                &west,
                &link.material,
                &WaitArgs::default(),
                Instant::now(),
            ))
            .unwrap_err();
        assert!(e.contains("already has a link named east"), "{e}");

        // A certificate from another CA is refused and leaves nothing behind.
        let mut wrong = link.material.clone();
        wrong.name = "other".into();
        wrong.ca = std::fs::read_to_string(west_dir.path().join("ca.pem")).expect("ca");
        let e = rt
            .block_on(install_link(
                &west,
                &wrong,
                &WaitArgs::default(),
                Instant::now(),
            ))
            .unwrap_err();
        assert!(e.contains("not signed by the CA"), "{e}");
        assert!(!west.link_dir("other").exists());

        // Update, then delete.
        rt.block_on(update(&west, "east", 7)).expect("update");
        assert_eq!(west.load().expect("load").links[0].cost, 7);
        rt.block_on(delete(&west, "east", &WaitArgs::default()))
            .expect("delete");
        assert!(west.load().expect("load").links.is_empty());
        assert!(!west.link_dir("east").exists());
        let e = rt
            .block_on(delete(&west, "east", &WaitArgs::default()))
            .unwrap_err();
        assert!(e.contains("no outgoing links"), "{e}");

        // Revoke on east marks the issued certificate, or records the router id.
        let peer = issued[0].peer.clone();
        rt.block_on(revoke(&east, &peer)).expect("revoke");
        assert!(east.load().expect("load").issued[0].revoked);
        rt.block_on(revoke(&east, "west")).expect("revoke by id");
        // A generated certificate is refused by its fingerprint (its
        // `link-...` name is no router id); a site by its id.
        let revoked = east.load().expect("load").revoked_peers();
        assert!(!revoked.contains(&peer), "{revoked:?}");
        assert!(
            revoked.contains(&format!("sha256:{}", issued[0].fingerprint)),
            "{revoked:?}"
        );
        assert!(revoked.contains(&"west".to_string()), "{revoked:?}");
    }

    #[test]
    fn status_report_joins_saved_and_live() {
        let mut s = SiteState::new("west", true, Vec::new(), ports());
        s.links.push(LinkRecord {
            name: "east".into(),
            site: "east".into(),
            host: "127.0.0.1".into(),
            port: 41001,
            cost: 1,
        });
        s.issued.push(super::super::IssuedRecord {
            peer: "hub".into(),
            fingerprint: "ab".repeat(32),
            grant: "0123456789".into(),
            revoked: false,
        });
        let obj = |v: J| v.as_object().cloned().expect("object");
        let connectors = vec![obj(serde_json::json!({
            "name": "east", "connectionStatus": "UP", "connectionMsg": "linked to east", "peerRouter": "east"
        }))];
        let connections = vec![
            obj(
                serde_json::json!({"role": "inter-router", "dir": "in", "container": "hub", "host": "127.0.0.1:5555", "cost": 1}),
            ),
            obj(
                serde_json::json!({"role": "inter-router", "dir": "in", "container": "other", "host": "127.0.0.1:6666", "cost": 2}),
            ),
            obj(serde_json::json!({"role": "normal", "dir": "in", "container": "cli"})),
        ];
        let r = status_report(&s, true, &connectors, &connections);
        assert_eq!(r["outgoing"][0]["status"], "UP");
        assert_eq!(r["incoming"][0]["site"], "hub");
        assert_eq!(r["incoming"][0]["status"], "UP");
        assert_eq!(r["incoming"][0]["via"], "token 01234567");
        assert_eq!(r["incoming"][1]["site"], "other");
        assert_eq!(r["incoming"].as_array().expect("array").len(), 2);
        let t = status_table(&r);
        assert!(
            t.contains("Outgoing links") && t.contains("linked to east"),
            "{t}"
        );
        let r = status_report(&s, false, &[], &[]);
        assert_eq!(r["outgoing"][0]["status"], "not running");
    }
}
