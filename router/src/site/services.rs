//! Services at a site: `tether connector ...`, `tether listener ...`,
//! `tether expose` / `unexpose`, and `tether network status`; plus the
//! pieces every site command shares: applying a change to the running
//! router ([`apply_live`]), `--wait`/`--timeout` ([`WaitArgs`]) and `-o`
//! ([`OutputArgs`]).
//!
//! A connector is where a service really runs (`tcp_connector` in
//! router.toml); a listener is where clients at this site reach a routing
//! key (`tcp_listener`). `tether expose NAME PORT` is a connector that is
//! also advertised, so every site with automatic listeners opens one for
//! it (the router does that by itself; see `[router] auto_listeners`).
//!
//! Every change goes the same way: validate, save site.toml and
//! router.toml, then, if the site's router runs, apply it through
//! management. If the router refuses, the saved state is put back, so the
//! folder and the router never disagree.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{json, Map as JsonMap, Value as J};

use super::{
    validate_entity_name, ConnectorRecord, ListenerRecord, SiteDir, SiteState, AUTO_LISTENER_PREFIX,
};
use crate::cli_mgmt::{full_type_name, render_table, render_value, OutputFormat};
use crate::mgmt_client::{Attributes, ClientOptions, MgmtClient, MgmtError};
use fe2o3_amqp::types::primitives::Value;

/// Default host of a connector: the service runs on this machine.
pub const DEFAULT_CONNECTOR_HOST: &str = "127.0.0.1";
/// Default host of a listener: reachable from other machines, as in Skupper.
pub const DEFAULT_LISTENER_HOST: &str = "0.0.0.0";

/// `--wait` / `--no-wait` / `--timeout`: one definition for every site
/// command (it lives with the token commands, which were written first).
pub use super::tokens::WaitArgs;

/// Whether a command waits for its change to take effect (`--wait`, the
/// default, unless `--no-wait`).
pub fn waiting(wait: &WaitArgs) -> bool {
    !wait.no_wait
}

/// `-o table|json|yaml` of every read command.
#[derive(Debug, Clone, clap::Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// `tether connector ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ConnectorCommand {
    /// Make a service on this site reachable under a routing key.
    Create {
        /// Connector name (routing key too, unless --routing-key).
        name: String,
        /// The service's port.
        port: u16,
        /// The service's host.
        #[arg(long, default_value = DEFAULT_CONNECTOR_HOST)]
        host: String,
        /// Routing key listeners use to reach it (default: NAME).
        #[arg(long, value_name = "KEY")]
        routing_key: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Show this site's connectors (all, or one).
    Status {
        name: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Change a connector's port, host or routing key.
    Update {
        name: String,
        #[arg(long)]
        port: Option<u16>,
        #[arg(long)]
        host: Option<String>,
        #[arg(long, value_name = "KEY")]
        routing_key: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Remove a connector.
    Delete {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

/// `tether listener ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ListenerCommand {
    /// Open a port here that reaches a routing key's connectors anywhere
    /// in the network.
    Create {
        /// Listener name (routing key too, unless --routing-key).
        name: String,
        /// The port clients connect to.
        port: u16,
        /// The address to listen on.
        #[arg(long, default_value = DEFAULT_LISTENER_HOST)]
        host: String,
        /// Routing key of the connectors to reach (default: NAME).
        #[arg(long, value_name = "KEY")]
        routing_key: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Show this site's listeners, including automatic ones.
    Status {
        name: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Change a listener's port, host or routing key.
    Update {
        name: String,
        #[arg(long)]
        port: Option<u16>,
        #[arg(long)]
        host: Option<String>,
        #[arg(long, value_name = "KEY")]
        routing_key: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Remove a listener.
    Delete {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

// ---------------------------------------------------------------------------
// Talking to the site's router
// ---------------------------------------------------------------------------

/// Runs `f` on a management connection to the site's router, on a fresh
/// single-threaded runtime. `Ok(None)` when the router is not running (the
/// change takes effect at the next start).
pub fn apply_live<T>(
    state: &SiteState,
    timeout: Duration,
    f: impl AsyncFnOnce(&mut MgmtClient) -> Result<T, String>,
) -> Result<Option<T>, String> {
    if !super::port_accepts(state.ports.amqp) {
        return Ok(None);
    }
    with_router(state, None, timeout, f).map(Some)
}

/// Runs `f` on a management connection to the site's router (or, with
/// `target`, to another router through it). Errors when it is not running.
pub fn with_router<T>(
    state: &SiteState,
    target: Option<&str>,
    timeout: Duration,
    f: impl AsyncFnOnce(&mut MgmtClient) -> Result<T, String>,
) -> Result<T, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let opts = client_options(state, target, timeout);
    let name = state.site.name.clone();
    rt.block_on(async move {
        let mut client = MgmtClient::connect(&opts).await.map_err(|e| {
            format!("cannot reach site {name}'s router: {e}; is it running (`tether site start`)?")
        })?;
        let result = f(&mut client).await;
        client.close().await;
        result
    })
}

fn client_options(state: &SiteState, target: Option<&str>, timeout: Duration) -> ClientOptions {
    ClientOptions {
        url: state.amqp_url(),
        target_router: target.map(str::to_string),
        timeout,
        ..ClientOptions::default()
    }
}

/// The message for a change saved while the router is not running.
pub fn not_running_note(state: &SiteState) -> String {
    format!(
        "site {} is not running; the change takes effect at `tether site start`",
        state.site.name
    )
}

/// Saves `new`, applies `live` to the running router, and puts `old` back
/// if the router refuses. Prints where the change stands. The caller holds
/// the site lock ([`lock`]) from loading `old` until this returns.
pub fn save_and_apply(
    site: &SiteDir,
    old: &SiteState,
    new: &SiteState,
    timeout: Duration,
    live: impl AsyncFnOnce(&mut MgmtClient) -> Result<(), String>,
) -> Result<bool, String> {
    site.save(new)?;
    match apply_live(new, timeout, live) {
        Ok(Some(())) => Ok(true),
        Ok(None) => {
            println!("{}", not_running_note(new));
            Ok(false)
        }
        Err(e) => {
            let restored = site.save(old);
            Err(match restored {
                Ok(()) => format!("{e}; nothing was changed"),
                Err(r) => format!("{e}; and restoring the previous site state failed: {r}"),
            })
        }
    }
}

/// Takes the site lock, so the grant server and other commands do not
/// change site.toml between our load and our save.
pub fn lock(site: &SiteDir) -> Result<super::grants::SiteLock, String> {
    super::grants::lock_site(site)
}

fn mgmt_err(what: &str) -> impl Fn(MgmtError) -> String + '_ {
    move |e| format!("the router refused to {what}: {e}")
}

/// A management attribute map from (name, value) pairs.
fn attrs(pairs: Vec<(&str, Value)>) -> Attributes {
    let mut a = Attributes::new();
    for (k, v) in pairs {
        a.insert(k.to_string(), v);
    }
    a
}

fn connector_attrs(c: &ConnectorRecord) -> Attributes {
    attrs(vec![
        ("address", Value::String(c.routing_key.clone())),
        ("host", Value::String(c.host.clone())),
        ("port", Value::String(c.port.to_string())),
        ("expose", Value::Bool(c.expose)),
    ])
}

fn listener_attrs(l: &ListenerRecord) -> Attributes {
    attrs(vec![
        ("address", Value::String(l.routing_key.clone())),
        ("host", Value::String(l.host.clone())),
        ("port", Value::String(l.port.to_string())),
    ])
}

/// Checks a routing key: printable, no blanks, at most 200 bytes.
pub fn validate_routing_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 200 || key.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "routing key {key:?} is not valid: use 1-200 characters without spaces"
        ));
    }
    Ok(())
}

fn validate_host(host: &str) -> Result<(), String> {
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("host {host:?} is not a host name or IP address"));
    }
    Ok(())
}

fn validate_port(port: u16) -> Result<(), String> {
    if port == 0 {
        return Err("port 0 is not a port; give the port number (1-65535)".into());
    }
    Ok(())
}

fn exit(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// Connectors
// ---------------------------------------------------------------------------

/// `tether connector ...`.
pub fn run_connector(cmd: ConnectorCommand, site_dir: Option<&Path>) -> ExitCode {
    match cmd {
        ConnectorCommand::Create {
            name,
            port,
            host,
            routing_key,
            wait,
        } => exit(create_connector(
            site_dir,
            &name,
            port,
            &host,
            routing_key.as_deref(),
            false,
            &wait,
        )),
        ConnectorCommand::Status { name, output } => {
            exit(connector_status(site_dir, name.as_deref(), output.output))
        }
        ConnectorCommand::Update {
            name,
            port,
            host,
            routing_key,
            wait,
        } => exit(update_connector(
            site_dir,
            &name,
            port,
            host.as_deref(),
            routing_key.as_deref(),
            &wait,
        )),
        ConnectorCommand::Delete { name, wait } => {
            exit(delete_connector(site_dir, &name, false, &wait))
        }
    }
}

/// `tether expose NAME PORT [--host H]`.
pub fn expose(
    site_dir: Option<&Path>,
    name: &str,
    port: u16,
    host: &str,
    wait: &WaitArgs,
) -> ExitCode {
    exit(create_connector(
        site_dir, name, port, host, None, true, wait,
    ))
}

/// `tether unexpose NAME`.
pub fn unexpose(site_dir: Option<&Path>, name: &str, wait: &WaitArgs) -> ExitCode {
    exit(delete_connector(site_dir, name, true, wait))
}

fn create_connector(
    site_dir: Option<&Path>,
    name: &str,
    port: u16,
    host: &str,
    routing_key: Option<&str>,
    expose: bool,
    wait: &WaitArgs,
) -> Result<(), String> {
    validate_entity_name("connector", name)?;
    let routing_key = routing_key.unwrap_or(name);
    validate_routing_key(routing_key)?;
    validate_host(host)?;
    validate_port(port)?;
    let site = SiteDir::resolve(site_dir)?;
    let _lock = lock(&site)?;
    let old = site.load()?;
    if let Some(kind) = old.name_in_use(name) {
        let hint = if kind == "connector" {
            format!("change it with `tether connector update {name} ...`, or delete it first")
        } else {
            "choose another name".to_string()
        };
        return Err(format!(
            "{name:?} is already used by a {kind} at site {}; {hint}",
            old.site.name
        ));
    }
    let record = ConnectorRecord {
        name: name.to_string(),
        routing_key: routing_key.to_string(),
        host: host.to_string(),
        port,
        expose,
    };
    let mut new = old.clone();
    new.connectors.push(record.clone());
    let ty = full_type_name("tcpConnector");
    let live = save_and_apply(&site, &old, &new, wait.timeout, async |c| {
        c.create(&ty, &record.name, connector_attrs(&record))
            .await
            .map(drop)
            .map_err(mgmt_err("create the connector"))
    })?;
    let what = if expose { "exposed" } else { "connector" };
    println!(
        "{what} {name}: routing key {routing_key} -> {host}:{port} at site {}{}",
        new.site.name,
        if live { " (live)" } else { "" }
    );
    if live && waiting(wait) {
        wait_until(wait.timeout, "the connector to appear", || {
            with_router(&new, None, wait.timeout, async |c| {
                Ok(c.read(&ty, name).await.is_ok())
            })
        })?;
    }
    if expose {
        println!(
            "sites linked to {} open a listener for {routing_key} on port {port} (or a free one); \
             see them with `tether network status`",
            new.site.name
        );
    }
    Ok(())
}

fn update_connector(
    site_dir: Option<&Path>,
    name: &str,
    port: Option<u16>,
    host: Option<&str>,
    routing_key: Option<&str>,
    wait: &WaitArgs,
) -> Result<(), String> {
    if port.is_none() && host.is_none() && routing_key.is_none() {
        return Err("nothing to change: give --port, --host and/or --routing-key".into());
    }
    let site = SiteDir::resolve(site_dir)?;
    let _lock = lock(&site)?;
    let old = site.load()?;
    let mut new = old.clone();
    let Some(c) = new.connectors.iter_mut().find(|c| c.name == name) else {
        return Err(no_such(&old, "connector", name));
    };
    if let Some(p) = port {
        validate_port(p)?;
        c.port = p;
    }
    if let Some(h) = host {
        validate_host(h)?;
        c.host = h.to_string();
    }
    if let Some(k) = routing_key {
        validate_routing_key(k)?;
        c.routing_key = k.to_string();
    }
    let record = c.clone();
    let ty = full_type_name("tcpConnector");
    // TCP connectors have no live UPDATE: the router replaces them
    // (open flows keep running on the old one).
    let live = save_and_apply(&site, &old, &new, wait.timeout, async |m| {
        m.delete(&ty, name)
            .await
            .map_err(mgmt_err("replace the connector"))?;
        m.create(&ty, name, connector_attrs(&record))
            .await
            .map(drop)
            .map_err(mgmt_err("replace the connector"))
    })?;
    println!(
        "connector {name}: routing key {} -> {}:{}{}",
        record.routing_key,
        record.host,
        record.port,
        if live { " (live)" } else { "" }
    );
    Ok(())
}

fn delete_connector(
    site_dir: Option<&Path>,
    name: &str,
    unexpose: bool,
    wait: &WaitArgs,
) -> Result<(), String> {
    let site = SiteDir::resolve(site_dir)?;
    let _lock = lock(&site)?;
    let old = site.load()?;
    let Some(existing) = old.connectors.iter().find(|c| c.name == name) else {
        return Err(no_such(&old, "connector", name));
    };
    if unexpose && !existing.expose {
        return Err(format!(
            "connector {name} at site {} is not exposed (it was made by `tether connector create`); \
             remove it with `tether connector delete {name}`",
            old.site.name
        ));
    }
    let mut new = old.clone();
    new.connectors.retain(|c| c.name != name);
    let ty = full_type_name("tcpConnector");
    let live = save_and_apply(&site, &old, &new, wait.timeout, async |c| {
        match c.delete(&ty, name).await {
            Ok(()) => Ok(()),
            // Already gone on the router (e.g. the router was restarted with
            // a config edited by hand): the outcome is the one asked for.
            Err(e) if e.status_code() == Some(404) => Ok(()),
            Err(e) => Err(mgmt_err("delete the connector")(e)),
        }
    })?;
    let what = if unexpose {
        "unexposed"
    } else {
        "deleted connector"
    };
    println!(
        "{what} {name} at site {}{}",
        new.site.name,
        if live { " (live)" } else { "" }
    );
    if unexpose {
        println!("the listeners other sites opened for it close by themselves");
    }
    Ok(())
}

fn no_such(state: &SiteState, kind: &str, name: &str) -> String {
    let names: Vec<&str> = match kind {
        "connector" => state.connectors.iter().map(|c| c.name.as_str()).collect(),
        _ => state.listeners.iter().map(|l| l.name.as_str()).collect(),
    };
    if names.is_empty() {
        format!(
            "site {} has no {kind}s (no {kind} named {name:?})",
            state.site.name
        )
    } else {
        format!(
            "site {} has no {kind} named {name:?}; its {kind}s: {}",
            state.site.name,
            names.join(", ")
        )
    }
}

/// Polls `check` every 100 ms until it says true, up to `timeout`.
fn wait_until(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<bool, String>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "gave up waiting for {what} after {:.0?}; the change is saved, check with `tether status`",
                timeout
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Live attributes of a type's entities by name (empty when not running).
fn live_records(
    state: &SiteState,
    short_type: &str,
    names: &[&str],
) -> Result<Vec<JsonMap<String, J>>, String> {
    let ty = full_type_name(short_type);
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let result = apply_live(state, Duration::from_secs(5), async |c| {
        c.query_all(&ty, &names)
            .await
            .map_err(|e| format!("cannot query {short_type}: {e}"))
    })?;
    Ok(result
        .map(|q| {
            q.records()
                .iter()
                .map(crate::mgmt_client::attributes_to_json)
                .collect()
        })
        .unwrap_or_default())
}

fn find<'a>(records: &'a [JsonMap<String, J>], name: &str) -> Option<&'a JsonMap<String, J>> {
    records
        .iter()
        .find(|r| r.get("name").and_then(J::as_str) == Some(name))
}

fn get(rec: Option<&JsonMap<String, J>>, key: &str) -> J {
    rec.and_then(|r| r.get(key)).cloned().unwrap_or(J::Null)
}

fn print_rows(output: OutputFormat, headers: &[&str], rows: Vec<JsonMap<String, J>>) {
    let text = match output {
        OutputFormat::Table => {
            let cells: Vec<Vec<J>> = rows
                .iter()
                .map(|r| {
                    headers
                        .iter()
                        .map(|h| r.get(*h).cloned().unwrap_or(J::Null))
                        .collect()
                })
                .collect();
            render_table(headers, &cells, 0)
        }
        format => render_value(&J::Array(rows.into_iter().map(J::Object).collect()), format),
    };
    print!("{text}");
}

fn connector_status(
    site_dir: Option<&Path>,
    name: Option<&str>,
    output: OutputFormat,
) -> Result<(), String> {
    let site = SiteDir::resolve(site_dir)?;
    let state = site.load()?;
    if let Some(n) = name {
        if !state.connectors.iter().any(|c| c.name == n) {
            return Err(no_such(&state, "connector", n));
        }
    }
    let running = site.is_running(&state);
    let live = live_records(
        &state,
        "tcpConnector",
        &["name", "flowsActive", "flowsOpened", "flowsFailed"],
    )?;
    let rows = state
        .connectors
        .iter()
        .filter(|c| name.is_none_or(|n| n == c.name))
        .map(|c| {
            let rec = find(&live, &c.name);
            let status = if !running {
                "not running"
            } else if rec.is_some() {
                "ok"
            } else {
                "missing (restart the site)"
            };
            let mut m = JsonMap::new();
            m.insert("name".into(), json!(c.name));
            m.insert("routing_key".into(), json!(c.routing_key));
            m.insert("host".into(), json!(c.host));
            m.insert("port".into(), json!(c.port));
            m.insert("exposed".into(), json!(c.expose));
            m.insert("status".into(), json!(status));
            m.insert("flows_active".into(), get(rec, "flowsActive"));
            m.insert("flows_opened".into(), get(rec, "flowsOpened"));
            m.insert("flows_failed".into(), get(rec, "flowsFailed"));
            m
        })
        .collect();
    print_rows(
        output,
        &[
            "name",
            "routing_key",
            "host",
            "port",
            "exposed",
            "status",
            "flows_active",
            "flows_opened",
            "flows_failed",
        ],
        rows,
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Listeners
// ---------------------------------------------------------------------------

/// `tether listener ...`.
pub fn run_listener(cmd: ListenerCommand, site_dir: Option<&Path>) -> ExitCode {
    match cmd {
        ListenerCommand::Create {
            name,
            port,
            host,
            routing_key,
            wait,
        } => exit(create_listener(
            site_dir,
            &name,
            port,
            &host,
            routing_key.as_deref(),
            &wait,
        )),
        ListenerCommand::Status { name, output } => {
            exit(listener_status(site_dir, name.as_deref(), output.output))
        }
        ListenerCommand::Update {
            name,
            port,
            host,
            routing_key,
            wait,
        } => exit(update_listener(
            site_dir,
            &name,
            port,
            host.as_deref(),
            routing_key.as_deref(),
            &wait,
        )),
        ListenerCommand::Delete { name, wait } => exit(delete_listener(site_dir, &name, &wait)),
    }
}

fn create_listener(
    site_dir: Option<&Path>,
    name: &str,
    port: u16,
    host: &str,
    routing_key: Option<&str>,
    wait: &WaitArgs,
) -> Result<(), String> {
    validate_entity_name("listener", name)?;
    let routing_key = routing_key.unwrap_or(name);
    validate_routing_key(routing_key)?;
    validate_host(host)?;
    validate_port(port)?;
    let site = SiteDir::resolve(site_dir)?;
    let _lock = lock(&site)?;
    let old = site.load()?;
    if let Some(kind) = old.name_in_use(name) {
        let hint = if kind == "listener" {
            format!("change it with `tether listener update {name} ...`, or delete it first")
        } else {
            "choose another name".to_string()
        };
        return Err(format!(
            "{name:?} is already used by a {kind} at site {}; {hint}",
            old.site.name
        ));
    }
    let ports = old.ports;
    if [ports.inter_router, ports.amqp, ports.grant, ports.http].contains(&port) {
        return Err(format!(
            "port {port} is one of site {}'s own ports; choose another",
            old.site.name
        ));
    }
    if let Some(l) = old.listeners.iter().find(|l| l.port == port) {
        return Err(format!(
            "port {port} is already used by listener {} at site {}; choose another",
            l.name, old.site.name
        ));
    }
    let record = ListenerRecord {
        name: name.to_string(),
        routing_key: routing_key.to_string(),
        host: host.to_string(),
        port,
    };
    let mut new = old.clone();
    new.listeners.push(record.clone());
    let ty = full_type_name("tcpListener");
    let live = save_and_apply(&site, &old, &new, wait.timeout, async |c| {
        c.create(&ty, &record.name, listener_attrs(&record))
            .await
            .map(drop)
            .map_err(mgmt_err("create the listener"))
    })?;
    println!(
        "listener {name}: {host}:{port} -> routing key {routing_key} at site {}{}",
        new.site.name,
        if live { " (live)" } else { "" }
    );
    if live && waiting(wait) {
        report_listener_state(&new, name, wait.timeout)?;
    }
    Ok(())
}

/// Waits (briefly: a listener whose routing key has no connector yet is
/// waiting for one, which is normal) until the listener is up, and says
/// which it is.
fn report_listener_state(state: &SiteState, name: &str, timeout: Duration) -> Result<(), String> {
    let ty = full_type_name("tcpListener");
    let deadline = Instant::now() + timeout.min(Duration::from_secs(3));
    loop {
        let rec = with_router(state, None, timeout, async |c| {
            c.read(&ty, name)
                .await
                .map(|a| crate::mgmt_client::attributes_to_json(&a))
                .map_err(mgmt_err("read the listener"))
        })?;
        let up = rec.get("operStatus").and_then(J::as_str) == Some("up");
        if up {
            println!("listener {name} is up");
            return Ok(());
        }
        if Instant::now() >= deadline {
            println!(
                "listener {name} waits for a connector with its routing key somewhere in the \
                 network; it opens its port when one is reachable"
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn update_listener(
    site_dir: Option<&Path>,
    name: &str,
    port: Option<u16>,
    host: Option<&str>,
    routing_key: Option<&str>,
    wait: &WaitArgs,
) -> Result<(), String> {
    if port.is_none() && host.is_none() && routing_key.is_none() {
        return Err("nothing to change: give --port, --host and/or --routing-key".into());
    }
    let site = SiteDir::resolve(site_dir)?;
    let _lock = lock(&site)?;
    let old = site.load()?;
    let mut new = old.clone();
    let Some(l) = new.listeners.iter_mut().find(|l| l.name == name) else {
        return Err(no_such(&old, "listener", name));
    };
    if let Some(p) = port {
        validate_port(p)?;
        l.port = p;
    }
    if let Some(h) = host {
        validate_host(h)?;
        l.host = h.to_string();
    }
    if let Some(k) = routing_key {
        validate_routing_key(k)?;
        l.routing_key = k.to_string();
    }
    let record = l.clone();
    let ty = full_type_name("tcpListener");
    let live = save_and_apply(&site, &old, &new, wait.timeout, async |m| {
        m.delete(&ty, name)
            .await
            .map_err(mgmt_err("replace the listener"))?;
        m.create(&ty, name, listener_attrs(&record))
            .await
            .map(drop)
            .map_err(mgmt_err("replace the listener"))
    })?;
    println!(
        "listener {name}: {}:{} -> routing key {}{}",
        record.host,
        record.port,
        record.routing_key,
        if live { " (live)" } else { "" }
    );
    if live && waiting(wait) {
        report_listener_state(&new, name, wait.timeout)?;
    }
    Ok(())
}

fn delete_listener(site_dir: Option<&Path>, name: &str, wait: &WaitArgs) -> Result<(), String> {
    let site = SiteDir::resolve(site_dir)?;
    let _lock = lock(&site)?;
    let old = site.load()?;
    if name.starts_with(AUTO_LISTENER_PREFIX) && !old.listeners.iter().any(|l| l.name == name) {
        return Err(format!(
            "{name} is an automatic listener: it closes when its service is unexposed; to refuse \
             automatic listeners at this site, re-create it with `tether site create --no-auto-listeners`"
        ));
    }
    if !old.listeners.iter().any(|l| l.name == name) {
        return Err(no_such(&old, "listener", name));
    }
    let mut new = old.clone();
    new.listeners.retain(|l| l.name != name);
    let ty = full_type_name("tcpListener");
    let live = save_and_apply(&site, &old, &new, wait.timeout, async |c| {
        match c.delete(&ty, name).await {
            Ok(()) => Ok(()),
            Err(e) if e.status_code() == Some(404) => Ok(()),
            Err(e) => Err(mgmt_err("delete the listener")(e)),
        }
    })?;
    println!(
        "deleted listener {name} at site {}{}",
        new.site.name,
        if live { " (live)" } else { "" }
    );
    Ok(())
}

fn listener_status(
    site_dir: Option<&Path>,
    name: Option<&str>,
    output: OutputFormat,
) -> Result<(), String> {
    let site = SiteDir::resolve(site_dir)?;
    let state = site.load()?;
    let running = site.is_running(&state);
    let live = live_records(
        &state,
        "tcpListener",
        &[
            "name",
            "host",
            "port",
            "address",
            "operStatus",
            "flowsActive",
            "flowsOpened",
        ],
    )?;
    if let Some(n) = name {
        if !state.listeners.iter().any(|l| l.name == n) && find(&live, n).is_none() {
            return Err(no_such(&state, "listener", n));
        }
    }
    let mut rows: Vec<JsonMap<String, J>> = state
        .listeners
        .iter()
        .filter(|l| name.is_none_or(|n| n == l.name))
        .map(|l| {
            let rec = find(&live, &l.name);
            let status = if !running {
                J::String("not running".into())
            } else {
                match rec {
                    Some(_) => get(rec, "operStatus"),
                    None => J::String("missing (restart the site)".into()),
                }
            };
            let mut m = JsonMap::new();
            m.insert("name".into(), json!(l.name));
            m.insert("routing_key".into(), json!(l.routing_key));
            m.insert("host".into(), json!(l.host));
            m.insert("port".into(), json!(l.port));
            m.insert("automatic".into(), json!(false));
            m.insert("status".into(), status);
            m.insert("flows_active".into(), get(rec, "flowsActive"));
            m.insert("flows_opened".into(), get(rec, "flowsOpened"));
            m
        })
        .collect();
    // Listeners the router opened by itself for exposed services.
    for rec in &live {
        let Some(n) = rec.get("name").and_then(J::as_str) else {
            continue;
        };
        if state.listeners.iter().any(|l| l.name == n) || name.is_some_and(|want| want != n) {
            continue;
        }
        let mut m = JsonMap::new();
        let r = Some(rec);
        m.insert("name".into(), json!(n));
        m.insert("routing_key".into(), get(r, "address"));
        m.insert("host".into(), get(r, "host"));
        m.insert("port".into(), number_or_text(get(r, "port")));
        m.insert(
            "automatic".into(),
            json!(n.starts_with(AUTO_LISTENER_PREFIX)),
        );
        m.insert("status".into(), get(r, "operStatus"));
        m.insert("flows_active".into(), get(r, "flowsActive"));
        m.insert("flows_opened".into(), get(r, "flowsOpened"));
        rows.push(m);
    }
    print_rows(
        output,
        &[
            "name",
            "routing_key",
            "host",
            "port",
            "automatic",
            "status",
            "flows_active",
            "flows_opened",
        ],
        rows,
    );
    Ok(())
}

/// Management sends ports as strings; show them as numbers when they are.
fn number_or_text(v: J) -> J {
    match &v {
        J::String(s) => s.parse::<u64>().map(|n| json!(n)).unwrap_or(v),
        _ => v,
    }
}

// ---------------------------------------------------------------------------
// Network status
// ---------------------------------------------------------------------------

/// What one router reported for `tether network status`.
#[derive(Debug, Default, Clone)]
struct RouterView {
    id: String,
    error: Option<String>,
    links: Vec<JsonMap<String, J>>,
    connectors: Vec<JsonMap<String, J>>,
    listeners: Vec<JsonMap<String, J>>,
}

/// `tether network status`.
pub fn network_status(site_dir: Option<&Path>, output: OutputFormat) -> ExitCode {
    exit(network_status_inner(
        site_dir,
        output,
        NETWORK_QUERY_TIMEOUT,
    ))
}

/// How long `network status` waits for each router's answers.
const NETWORK_QUERY_TIMEOUT: Duration = Duration::from_secs(10);

fn network_status_inner(
    site_dir: Option<&Path>,
    output: OutputFormat,
    timeout: Duration,
) -> Result<(), String> {
    let site = SiteDir::resolve(site_dir)?;
    let state = site.load()?;
    if !site.is_running(&state) {
        return Err(format!(
            "site {} is not running; start it with `tether site start` (the network view comes \
             from its router)",
            state.site.name
        ));
    }
    let own = state.site.name.clone();
    let node_type = full_type_name("router.node");
    let mut ids = with_router(&state, None, timeout, async |c| {
        c.query_all(&node_type, &["id".to_string()])
            .await
            .map(|q| {
                q.rows
                    .iter()
                    .filter_map(|r| match r.first() {
                        Some(Value::String(s)) => Some(s.clone()),
                        _ => None,
                    })
                    .collect::<Vec<String>>()
            })
            .map_err(|e| format!("cannot list the routers in the network: {e}"))
    })?;
    if !ids.contains(&own) {
        ids.push(own.clone());
    }
    ids.sort();
    let views: Vec<RouterView> = ids
        .iter()
        .map(|id| {
            let target = if *id == own { None } else { Some(id.as_str()) };
            let conn_ty = full_type_name("connection");
            let tc_ty = full_type_name("tcpConnector");
            let tl_ty = full_type_name("tcpListener");
            let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<String>>();
            let result = with_router(&state, target, timeout, async |c| {
                let q = |e: MgmtError| e.to_string();
                let links = c
                    .query_all(
                        &conn_ty,
                        &strs(&["role", "dir", "container", "cost", "host"]),
                    )
                    .await
                    .map_err(q)?;
                let connectors = c
                    .query_all(
                        &tc_ty,
                        &strs(&["name", "address", "host", "port", "expose"]),
                    )
                    .await
                    .map_err(q)?;
                let listeners = c
                    .query_all(
                        &tl_ty,
                        &strs(&["name", "address", "host", "port", "operStatus"]),
                    )
                    .await
                    .map_err(q)?;
                Ok((links, connectors, listeners))
            });
            let json_rows = |q: &crate::mgmt_client::QueryResult| -> Vec<JsonMap<String, J>> {
                q.records()
                    .iter()
                    .map(crate::mgmt_client::attributes_to_json)
                    .collect()
            };
            match result {
                Ok((links, connectors, listeners)) => RouterView {
                    id: id.clone(),
                    error: None,
                    links: json_rows(&links)
                        .into_iter()
                        .filter(|r| r.get("role").and_then(J::as_str) == Some("inter-router"))
                        .collect(),
                    connectors: json_rows(&connectors),
                    listeners: json_rows(&listeners),
                },
                Err(e) => RouterView {
                    id: id.clone(),
                    error: Some(e),
                    ..RouterView::default()
                },
            }
        })
        .collect();
    let report = assemble_network(&views);
    match output {
        OutputFormat::Table => print!("{}", network_table(&report)),
        format => print!("{}", render_value(&report, format)),
    }
    if views.iter().any(|v| v.error.is_some()) {
        return Err("some routers did not answer (see above)".into());
    }
    Ok(())
}

/// The network report: `sites` (with their links) and `services` (per
/// routing key: where it is exposed and consumed, and whether reachable).
fn assemble_network(views: &[RouterView]) -> J {
    let sites: Vec<J> = views
        .iter()
        .map(|v| {
            let links: Vec<J> = v
                .links
                .iter()
                .map(|l| {
                    json!({
                        "peer": l.get("container").cloned().unwrap_or(J::Null),
                        "direction": l.get("dir").cloned().unwrap_or(J::Null),
                        "cost": l.get("cost").cloned().unwrap_or(J::Null),
                    })
                })
                .collect();
            let mut m = JsonMap::new();
            m.insert("site".into(), json!(v.id));
            if let Some(e) = &v.error {
                m.insert("error".into(), json!(e));
            }
            m.insert("links".into(), J::Array(links));
            J::Object(m)
        })
        .collect();
    let mut keys: Vec<String> = views
        .iter()
        .flat_map(|v| v.connectors.iter().chain(v.listeners.iter()))
        .filter_map(|r| r.get("address").and_then(J::as_str).map(str::to_string))
        .collect();
    keys.sort();
    keys.dedup();
    let services: Vec<J> = keys
        .iter()
        .map(|key| {
            let has_key = |r: &&JsonMap<String, J>| {
                r.get("address").and_then(J::as_str) == Some(key.as_str())
            };
            let mut exposed = Vec::new();
            let mut consumed = Vec::new();
            for v in views {
                for c in v.connectors.iter().filter(has_key) {
                    exposed.push(json!({
                        "site": v.id,
                        "name": c.get("name").cloned().unwrap_or(J::Null),
                        "host": c.get("host").cloned().unwrap_or(J::Null),
                        "port": number_or_text(c.get("port").cloned().unwrap_or(J::Null)),
                        "expose": c.get("expose").cloned().unwrap_or(J::Null),
                    }));
                }
                for l in v.listeners.iter().filter(has_key) {
                    consumed.push(json!({
                        "site": v.id,
                        "name": l.get("name").cloned().unwrap_or(J::Null),
                        "port": number_or_text(l.get("port").cloned().unwrap_or(J::Null)),
                        "status": l.get("operStatus").cloned().unwrap_or(J::Null),
                    }));
                }
            }
            let reachable = !exposed.is_empty();
            json!({
                "routing_key": key,
                "reachable": reachable,
                "exposed_at": exposed,
                "consumed_at": consumed,
            })
        })
        .collect();
    json!({ "sites": sites, "services": services })
}

fn network_table(report: &J) -> String {
    let mut out = String::from("Sites\n");
    let empty = Vec::new();
    let sites = report.get("sites").and_then(J::as_array).unwrap_or(&empty);
    let rows: Vec<Vec<J>> = sites
        .iter()
        .map(|s| {
            let links = s.get("links").and_then(J::as_array).unwrap_or(&empty);
            let text: Vec<String> = links
                .iter()
                .map(|l| {
                    let arrow = if l.get("direction").and_then(J::as_str) == Some("out") {
                        "->"
                    } else {
                        "<-"
                    };
                    format!(
                        "{arrow} {} (cost {})",
                        crate::cli_mgmt::cell_text(l.get("peer").unwrap_or(&J::Null)),
                        crate::cli_mgmt::cell_text(l.get("cost").unwrap_or(&J::Null))
                    )
                })
                .collect();
            let links = match s.get("error") {
                Some(e) => format!("error: {}", crate::cli_mgmt::cell_text(e)),
                None if text.is_empty() => "-".into(),
                None => text.join(", "),
            };
            vec![s.get("site").cloned().unwrap_or(J::Null), J::String(links)]
        })
        .collect();
    out.push_str(&render_table(&["site", "links"], &rows, 2));
    out.push_str("\nServices\n");
    let services = report
        .get("services")
        .and_then(J::as_array)
        .unwrap_or(&empty);
    let place = |items: &J, with_port: bool| -> String {
        let items = items.as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            return "-".into();
        }
        items
            .iter()
            .map(|i| {
                let site = crate::cli_mgmt::cell_text(i.get("site").unwrap_or(&J::Null));
                let port = crate::cli_mgmt::cell_text(i.get("port").unwrap_or(&J::Null));
                if with_port {
                    let status = i.get("status").and_then(J::as_str).unwrap_or("");
                    if status.is_empty() || status == "up" {
                        format!("{site}:{port}")
                    } else {
                        format!("{site}:{port} ({status})")
                    }
                } else {
                    let host = crate::cli_mgmt::cell_text(i.get("host").unwrap_or(&J::Null));
                    format!("{site} ({host}:{port})")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rows: Vec<Vec<J>> = services
        .iter()
        .map(|s| {
            vec![
                s.get("routing_key").cloned().unwrap_or(J::Null),
                J::String(place(s.get("exposed_at").unwrap_or(&J::Null), false)),
                J::String(place(s.get("consumed_at").unwrap_or(&J::Null), true)),
                J::String(
                    if s.get("reachable").and_then(J::as_bool) == Some(true) {
                        "yes"
                    } else {
                        "no"
                    }
                    .into(),
                ),
            ]
        })
        .collect();
    out.push_str(&render_table(
        &["routing key", "exposed at", "listeners at", "reachable"],
        &rows,
        2,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(pairs: &[(&str, J)]) -> JsonMap<String, J> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn network_report_groups_by_routing_key() {
        let views = vec![
            RouterView {
                id: "east".into(),
                links: vec![rec(&[
                    ("role", json!("inter-router")),
                    ("dir", json!("out")),
                    ("container", json!("west")),
                    ("cost", json!(1)),
                ])],
                listeners: vec![rec(&[
                    ("name", json!("auto-backend")),
                    ("address", json!("backend")),
                    ("port", json!("8080")),
                    ("operStatus", json!("up")),
                ])],
                ..RouterView::default()
            },
            RouterView {
                id: "west".into(),
                connectors: vec![rec(&[
                    ("name", json!("backend")),
                    ("address", json!("backend")),
                    ("host", json!("127.0.0.1")),
                    ("port", json!("8080")),
                    ("expose", json!(true)),
                ])],
                listeners: vec![rec(&[
                    ("name", json!("db")),
                    ("address", json!("db")),
                    ("port", json!("5432")),
                    ("operStatus", json!("down")),
                ])],
                ..RouterView::default()
            },
        ];
        let report = assemble_network(&views);
        let services = report["services"].as_array().expect("services");
        assert_eq!(services.len(), 2);
        assert_eq!(services[0]["routing_key"], "backend");
        assert_eq!(services[0]["reachable"], true);
        assert_eq!(services[0]["consumed_at"][0]["port"], 8080);
        assert_eq!(services[1]["reachable"], false);
        let table = network_table(&report);
        assert!(table.contains("east  -> west (cost 1)"), "{table}");
        assert!(table.contains("west (127.0.0.1:8080)"), "{table}");
        assert!(table.contains("east:8080"), "{table}");
        assert!(table.contains("west:5432 (down)"), "{table}");
    }

    #[test]
    fn routing_keys() {
        validate_routing_key("backend.v2/api").expect("ok");
        assert!(validate_routing_key("a b").is_err());
        assert!(validate_routing_key("").is_err());
    }
}
