//! `tether site create|start|status|delete|install`: making a site folder,
//! running its router (with the grant server) in the foreground, showing
//! it, removing it, and installing it as a systemd user service.
//!
//! ```text
//! tether site create east [--link-access HOST[:PORT]]... [--no-auto-listeners]
//! tether site start                 # foreground; Ctrl-C or SIGTERM stops it
//! tether site status [-o json|yaml]
//! tether site install [--dry-run]   # ~/.config/systemd/user/tether-east.service
//! tether site delete [--force]
//! ```

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Map as JsonMap, Value as J};

use super::services::{with_router, OutputArgs};
use super::{
    choose_ports, create_dir, default_root, known_sites, pki, validate_site_name, SiteDir,
    SiteState,
};
use crate::cli_mgmt::{full_type_name, render_table, render_value, OutputFormat};

/// `tether site ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SiteCommand {
    /// Make a new site: its folder, CA, router certificate, ports and config.
    Create {
        /// The site's name (also its router id): lowercase letters, digits, '-'.
        name: String,
        /// Where peers reach this site's inter-router port: HOST or
        /// HOST:PORT (repeatable; default 127.0.0.1 and the chosen port).
        #[arg(long, value_name = "HOST[:PORT]")]
        link_access: Vec<String>,
        /// Do not open listeners for services other sites expose.
        #[arg(long)]
        no_auto_listeners: bool,
    },
    /// Run the site's router (and its grant server) in the foreground.
    Start,
    /// Show the site: folder, ports, links, services, and whether it runs.
    Status {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Delete the site folder (its CA, certificates, links and services).
    Delete {
        /// Delete even while the site's router is running.
        #[arg(long)]
        force: bool,
    },
    /// Install a systemd user service that runs the site, and enable it.
    Install {
        /// Print the unit instead of writing and enabling it.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Runs a `tether site` command other than `start` (see [`start`]).
pub fn run_site(cmd: SiteCommand, site_dir: Option<&Path>) -> ExitCode {
    let result = match cmd {
        SiteCommand::Create {
            name,
            link_access,
            no_auto_listeners,
        } => create(site_dir, &name, &link_access, !no_auto_listeners),
        SiteCommand::Start => Err("`tether site start` is run by `start`".into()),
        SiteCommand::Status { output } => status(site_dir, output.output),
        SiteCommand::Delete { force } => delete(site_dir, force),
        SiteCommand::Install { dry_run } => install(site_dir, dry_run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `tether site create`.
fn create(
    site_dir: Option<&Path>,
    name: &str,
    link_access: &[String],
    auto_listeners: bool,
) -> Result<(), String> {
    validate_site_name(name).map_err(|e| format!("site name: {e}"))?;
    let root = default_root();
    let dir = match (site_dir, &root) {
        (Some(d), _) => d.to_path_buf(),
        (None, Ok(r)) => r.join(name),
        (None, Err(e)) => return Err(e.clone()),
    };
    let site = SiteDir::new(&dir);
    if site.state_file().exists() {
        let current = site.load().map(|s| s.site.name).unwrap_or_default();
        return Err(format!(
            "{} already holds site {current:?}; use it as it is, or remove it first with \
             `tether site delete --site-dir {}`",
            dir.display(),
            dir.display()
        ));
    }
    // Ports recorded by the other sites we can see (stopped ones included).
    let mut roots: Vec<PathBuf> = root.iter().cloned().collect();
    if let Some(parent) = dir.parent() {
        roots.push(parent.to_path_buf());
    }
    let ports = choose_ports(&known_sites(&roots))?;
    let link_access = parse_link_access(link_access, ports.inter_router)?;
    create_dir(&dir, true)?;
    let state = SiteState::new(name, auto_listeners, link_access, ports);
    let hosts: Vec<String> = state
        .site
        .link_access
        .iter()
        .map(|a| pki::split_host(a).to_string())
        .collect();
    pki::create_site_pki(&dir, name, &hosts)?;
    site.save(&state)?;
    println!("Site {name} created in {}", dir.display());
    print_ports(&state);
    let dir_arg = if site_dir.is_some() {
        format!(" --site-dir {}", dir.display())
    } else {
        String::new()
    };
    println!("Start it with: tether site start{dir_arg}");
    Ok(())
}

/// `--link-access` values as `host:port` (a bare host gets the
/// inter-router port).
fn parse_link_access(values: &[String], inter_router: u16) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for v in values {
        let v = v.trim();
        let host = pki::split_host(v);
        if host.is_empty() {
            return Err(format!("--link-access {v:?}: give HOST or HOST:PORT"));
        }
        let port_text = if v.starts_with('[') {
            v.rsplit_once("]:").map(|(_, p)| p)
        } else if host == v {
            None
        } else {
            v.rsplit_once(':').map(|(_, p)| p)
        };
        let port = match port_text {
            None => inter_router,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(format!(
                        "--link-access {v:?}: {p:?} is not a port (1-65535)"
                    ))
                }
            },
        };
        let host_text = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        out.push(format!("{host_text}:{port}"));
    }
    Ok(out)
}

fn print_ports(state: &SiteState) {
    let p = &state.ports;
    println!(
        "  links       0.0.0.0:{} (peers dial {})",
        p.inter_router,
        state.site.link_access.join(", ")
    );
    println!("  management  {}", state.amqp_url());
    println!(
        "  grants      https://0.0.0.0:{} (token redemption)",
        p.grant
    );
    println!("  metrics     http://127.0.0.1:{}/metrics", p.http);
    println!(
        "  automatic listeners for exposed services: {}",
        if state.site.auto_listeners {
            "yes"
        } else {
            "no"
        }
    );
}

/// `tether site start`: re-renders router.toml, then runs the router and
/// the grant server on one single-threaded runtime until `shutdown`
/// completes. Logging must already be set up.
pub fn start(site_dir: Option<&Path>, shutdown: impl Future<Output = ()>) -> ExitCode {
    match start_inner(site_dir, shutdown) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn start_inner(site_dir: Option<&Path>, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let site = SiteDir::resolve(site_dir)?;
    let state = {
        let _lock = super::grants::lock_site(&site)?;
        let state = site.load()?;
        if site.is_running(&state) {
            return Err(format!(
                "site {} is already running (its management port {} answers); stop it first",
                state.site.name, state.ports.amqp
            ));
        }
        // The CLI may be newer than the one that wrote router.toml.
        site.render(&state)?;
        state
    };
    let config = crate::config::load(&site.router_config_file()).map_err(|e| {
        format!(
            "{e}\nthe site's router.toml is rendered from site.toml; fix site.toml or re-create the site"
        )
    })?;
    let grant_listener =
        std::net::TcpListener::bind(("0.0.0.0", state.ports.grant)).map_err(|e| {
            format!(
                "cannot listen on the grant port 0.0.0.0:{}: {}; is another program using it?",
                state.ports.grant,
                super::io_reason(&e)
            )
        })?;
    grant_listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot set up the grant port: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    tracing::info!(
        site = %state.site.name,
        dir = %site.path.display(),
        "starting site"
    );
    let site_path = site.path.clone();
    local.block_on(&rt, async move {
        let listener = tokio::net::TcpListener::from_std(grant_listener)
            .map_err(|e| format!("cannot use the grant port: {e}"))?;
        let grants = tokio::task::spawn_local(super::grants::serve(site_path, listener));
        let result = crate::core::run(config, shutdown).await;
        grants.abort();
        result
    })
}

/// `tether site status`.
fn status(site_dir: Option<&Path>, output: OutputFormat) -> Result<(), String> {
    let site = SiteDir::resolve(site_dir)?;
    let state = site.load()?;
    let running = site.is_running(&state);
    // Live link states (connector connectionStatus), when running.
    let live_links: Vec<JsonMap<String, J>> = if running {
        let ty = full_type_name("connector");
        let attrs: Vec<String> = ["name", "connectionStatus", "peerRouter"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        with_router(&state, None, Duration::from_secs(5), async |c| {
            c.query_all(&ty, &attrs)
                .await
                .map_err(|e| format!("cannot query links: {e}"))
        })
        .map(|q| {
            q.records()
                .iter()
                .map(crate::mgmt_client::attributes_to_json)
                .collect()
        })
        .unwrap_or_default()
    } else {
        Vec::new()
    };
    let link_state = |name: &str| -> J {
        if !running {
            return J::Null;
        }
        live_links
            .iter()
            .find(|r| r.get("name").and_then(J::as_str) == Some(name))
            .and_then(|r| r.get("connectionStatus").cloned())
            .unwrap_or(J::String("missing".into()))
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let open_grants = state
        .grants
        .iter()
        .filter(|g| !g.revoked && g.redeemed < g.redemptions_allowed && g.expires > now)
        .count();
    let report = json!({
        "site": state.site.name,
        "folder": site.path.display().to_string(),
        "running": running,
        "auto_listeners": state.site.auto_listeners,
        "link_access": state.site.link_access,
        "ports": {
            "inter_router": state.ports.inter_router,
            "amqp": state.ports.amqp,
            "grant": state.ports.grant,
            "http": state.ports.http,
        },
        "links": state.links.iter().map(|l| json!({
            "name": l.name,
            "peer_site": if l.site.is_empty() { J::Null } else { json!(l.site) },
            "endpoint": format!("{}:{}", l.host, l.port),
            "cost": l.cost,
            "state": link_state(&l.name),
        })).collect::<Vec<_>>(),
        "connectors": state.connectors.iter().map(|c| json!({
            "name": c.name,
            "routing_key": c.routing_key,
            "endpoint": format!("{}:{}", c.host, c.port),
            "exposed": c.expose,
        })).collect::<Vec<_>>(),
        "listeners": state.listeners.iter().map(|l| json!({
            "name": l.name,
            "routing_key": l.routing_key,
            "endpoint": format!("{}:{}", l.host, l.port),
        })).collect::<Vec<_>>(),
        "open_grants": open_grants,
        "issued_certificates": state.issued.iter().filter(|i| !i.revoked).count(),
    });
    match output {
        OutputFormat::Table => print!("{}", status_table(&report)),
        format => print!("{}", render_value(&report, format)),
    }
    Ok(())
}

fn status_table(r: &J) -> String {
    let text = |v: &J| crate::cli_mgmt::cell_text(v);
    let mut out = String::new();
    let running = r["running"].as_bool() == Some(true);
    out.push_str(&format!(
        "Site {} ({})\n",
        text(&r["site"]),
        if running { "running" } else { "not running" }
    ));
    out.push_str(&format!("  folder          {}\n", text(&r["folder"])));
    out.push_str(&format!(
        "  ports           links {}, management {}, grants {}, metrics {}\n",
        text(&r["ports"]["inter_router"]),
        text(&r["ports"]["amqp"]),
        text(&r["ports"]["grant"]),
        text(&r["ports"]["http"])
    ));
    out.push_str(&format!("  link access     {}\n", text(&r["link_access"])));
    out.push_str(&format!(
        "  auto listeners  {}\n",
        text(&r["auto_listeners"])
    ));
    out.push_str(&format!(
        "  open tokens     {}, issued certificates {}\n",
        text(&r["open_grants"]),
        text(&r["issued_certificates"])
    ));
    let section = |out: &mut String, title: &str, key: &str, cols: &[&str]| {
        let rows: Vec<Vec<J>> = r[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|item| cols.iter().map(|c| item[*c].clone()).collect())
                    .collect()
            })
            .unwrap_or_default();
        out.push('\n');
        if rows.is_empty() {
            out.push_str(&format!("{title}: none\n"));
        } else {
            out.push_str(&format!("{title}\n"));
            out.push_str(&render_table(cols, &rows, 2));
        }
    };
    section(
        &mut out,
        "Links",
        "links",
        &["name", "peer_site", "endpoint", "cost", "state"],
    );
    section(
        &mut out,
        "Connectors",
        "connectors",
        &["name", "routing_key", "endpoint", "exposed"],
    );
    section(
        &mut out,
        "Listeners",
        "listeners",
        &["name", "routing_key", "endpoint"],
    );
    out
}

/// `tether site delete`.
fn delete(site_dir: Option<&Path>, force: bool) -> Result<(), String> {
    let site = SiteDir::resolve(site_dir)?;
    let state = site.load()?;
    let name = state.site.name.clone();
    if site.is_running(&state) && !force {
        return Err(format!(
            "site {name} is running (its management port {} answers); stop it first (Ctrl-C \
             where `tether site start` runs, or `systemctl --user stop {}`), or give --force",
            state.ports.amqp,
            unit_name(&name)
        ));
    }
    // Only a folder that is a site (checked by load above) is removed.
    std::fs::remove_dir_all(&site.path).map_err(|e| {
        format!(
            "cannot delete {}: {}",
            site.path.display(),
            super::io_reason(&e)
        )
    })?;
    println!("Deleted site {name} ({})", site.path.display());
    if let Ok(unit) = unit_path(&name) {
        if unit.exists() {
            println!(
                "Its systemd unit remains: `systemctl --user disable --now {}` and remove {}",
                unit_name(&name),
                unit.display()
            );
        }
    }
    Ok(())
}

fn unit_name(site: &str) -> String {
    format!("tether-{site}.service")
}

fn unit_path(site: &str) -> Result<PathBuf, String> {
    let config = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => match std::env::var_os("HOME") {
            Some(h) if !h.is_empty() => PathBuf::from(h).join(".config"),
            _ => return Err("neither XDG_CONFIG_HOME nor HOME is set; use --dry-run and install the unit by hand".into()),
        },
    };
    Ok(config.join("systemd").join("user").join(unit_name(site)))
}

/// The systemd unit that runs `tether site start` for the site in `dir`.
pub fn unit_text(exe: &Path, dir: &Path, site: &str) -> String {
    format!(
        "[Unit]\n\
         Description=Tether site {site}\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         ExecStart=\"{exe}\" site start --site-dir \"{dir}\"\n\
         Restart=on-failure\n\
         RestartSec=2\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n",
        exe = exe.display(),
        dir = dir.display(),
    )
}

/// `tether site install [--dry-run]`.
fn install(site_dir: Option<&Path>, dry_run: bool) -> Result<(), String> {
    let site = SiteDir::resolve(site_dir)?;
    let state = site.load()?;
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot tell where the tether binary is: {e}"))?;
    let dir = std::path::absolute(&site.path).unwrap_or_else(|_| site.path.clone());
    let text = unit_text(&exe, &dir, &state.site.name);
    if dry_run {
        print!("{text}");
        return Ok(());
    }
    let path = unit_path(&state.site.name)?;
    if let Some(parent) = path.parent() {
        create_dir(parent, false)?;
    }
    super::write_atomic(&path, text.as_bytes(), false)?;
    println!("Wrote {}", path.display());
    let unit = unit_name(&state.site.name);
    for args in [
        vec!["--user", "daemon-reload"],
        vec!["--user", "enable", unit.as_str()],
    ] {
        let result = std::process::Command::new("systemctl").args(&args).status();
        match result {
            Ok(s) if s.success() => {}
            Ok(s) => {
                return Err(format!(
                    "`systemctl {}` failed ({s}); the unit is written, enable it by hand",
                    args.join(" ")
                ))
            }
            Err(e) => {
                return Err(format!(
                    "cannot run systemctl: {e}; the unit is written to {}, enable it with \
                     `systemctl --user enable --now {unit}` where systemd runs",
                    path.display()
                ))
            }
        }
    }
    println!("Enabled {unit}; start it now with `systemctl --user start {unit}`");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_access_forms() {
        assert_eq!(
            parse_link_access(&["10.0.0.5".into(), "east.example.com:443".into()], 21001)
                .expect("ok"),
            vec![
                "10.0.0.5:21001".to_string(),
                "east.example.com:443".to_string()
            ]
        );
        assert_eq!(
            parse_link_access(&["[::1]:9".into(), "::1".into()], 21001).expect("ok"),
            vec!["[::1]:9".to_string(), "[::1]:21001".to_string()]
        );
        assert!(parse_link_access(&["host:0".into()], 1).is_err());
        assert!(parse_link_access(&["host:x".into()], 1).is_err());
        assert!(parse_link_access(&[":5".into()], 1).is_err());
    }

    #[test]
    fn unit_runs_site_start_for_the_folder() {
        let text = unit_text(Path::new("/usr/bin/tether"), Path::new("/srv/east"), "east");
        assert!(text.contains("ExecStart=\"/usr/bin/tether\" site start --site-dir \"/srv/east\""));
        assert!(text.contains("Description=Tether site east"));
        assert!(text.contains("WantedBy=default.target"));
    }

    #[test]
    fn status_table_shows_sections() {
        let r = json!({
            "site": "east", "folder": "/x", "running": false, "auto_listeners": true,
            "link_access": ["127.0.0.1:21001"],
            "ports": {"inter_router": 1, "amqp": 2, "grant": 3, "http": 4},
            "links": [], "connectors": [{"name": "b", "routing_key": "b", "endpoint": "127.0.0.1:80", "exposed": true}],
            "listeners": [], "open_grants": 0, "issued_certificates": 0,
        });
        let t = status_table(&r);
        assert!(t.starts_with("Site east (not running)"), "{t}");
        assert!(t.contains("Links: none"), "{t}");
        assert!(t.contains("Connectors\n"), "{t}");
    }
}
