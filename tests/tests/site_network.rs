//! Networks of sites made only with the CLI, in temporary folders, with the
//! release binary:
//!
//! - three sites east, hub and west, east and west linked to hub by tokens:
//!   a connector on west and a listener on east carry an echo service
//!   byte-exact through hub (east and west are not linked: hub is transit),
//!   and `tether network status` shows the three sites and both links;
//! - `tether expose` on west gives east and hub working `auto-web`
//!   listeners with no command there, a fourth site that links later gets
//!   one too, and `tether unexpose` takes them all away;
//! - `tether link generate` / `link apply` link two sites without a grant
//!   server, and `tether link revoke` on the generating site takes the link
//!   down for good (the applying site keeps redialling and is refused);
//! - a site made with `--no-auto-listeners` gets no automatic listener.
//!
//! Every command runs bounded (`run_bounded`), every wait has a deadline,
//! and every `tether site start` is stopped by PID when its handle drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tether_tests::binary::{run_bounded, wait_bounded, Output, Tether};
use tether_tests::flows::echo_transfer;
use tether_tests::net::{free_port, wait_until_connectable};
use tether_tests::services::Service;

/// Deadline of one CLI command (a few management round trips on loopback;
/// the `--wait` of a mutating command is bounded by its own `--timeout`).
const CLI_TIMEOUT: Duration = Duration::from_secs(15);
/// Time a site gets to open its management and grant ports.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for a change to spread through the network (a link up or down, an
/// automatic listener opened or closed).
const SPREAD_TIMEOUT: Duration = Duration::from_secs(10);
/// One echo transfer through the network.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);

/// One site: its folder and, while started, its `tether site start`.
struct Site {
    tether: Tether,
    name: String,
    dir: PathBuf,
    /// HOME and XDG_DATA_HOME of every command: never the user's own.
    home: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Site {
    /// `tether site create NAME [EXTRA...] --site-dir ROOT/NAME`.
    fn create(tether: &Tether, root: &Path, name: &str, extra: &[&str]) -> Site {
        let site = Site {
            tether: tether.clone(),
            name: name.to_string(),
            dir: root.join(name),
            home: root.join("home"),
            log: root.join(format!("{name}.log")),
            child: None,
        };
        let mut args = vec!["site", "create", name];
        args.extend_from_slice(extra);
        site.ok(&args);
        site
    }

    /// Created and started.
    fn started(tether: &Tether, root: &Path, name: &str, extra: &[&str]) -> Site {
        let mut site = Site::create(tether, root, name, extra);
        site.start();
        site
    }

    fn command(&self) -> Command {
        let mut cmd = self.tether.command();
        cmd.env("HOME", &self.home)
            .env("XDG_DATA_HOME", &self.home)
            .env_remove("TETHER_SITE_DIR")
            .arg("--site-dir")
            .arg(&self.dir);
        cmd
    }

    /// `tether --site-dir DIR ARGS`, bounded.
    fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = self.command();
        cmd.args(args);
        run_bounded(cmd, CLI_TIMEOUT)
    }

    /// A command that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.success(),
            "{}: tether {}: {}\n--- site log ---\n{}",
            self.name,
            args.join(" "),
            out.describe(),
            self.log_text()
        );
        out.stdout
    }

    /// A read command with `-o json` that must succeed, parsed.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend_from_slice(&["-o", "json"]);
        let text = self.ok(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "{}: tether {} gave no JSON ({e}):\n{text}",
                self.name,
                all.join(" ")
            )
        })
    }

    /// A port recorded in `site.toml` (`[ports] KEY = N`).
    fn port(&self, key: &str) -> u16 {
        let text = self.site_toml();
        let prefix = format!("{key} = ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} port in site.toml:\n{text}"))
    }

    fn site_toml(&self) -> String {
        std::fs::read_to_string(self.dir.join("site.toml")).expect("site.toml")
    }

    /// `tether site start` in the background, waited for until its
    /// management and grant ports accept connections.
    fn start(&mut self) {
        assert!(self.child.is_none(), "{} already started", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = self.command();
        cmd.args(["site", "start"])
            .stdout(Stdio::from(log.try_clone().expect("clone")))
            .stderr(Stdio::from(log));
        self.child = Some(cmd.spawn().expect("spawn tether site start"));
        for key in ["amqp", "grant"] {
            let port = self.port(key);
            if wait_until_connectable(port, START_TIMEOUT).is_none() {
                panic!(
                    "site {} did not open its {key} port {port} within {START_TIMEOUT:?}:\n{}",
                    self.name,
                    self.log_text()
                );
            }
        }
    }

    /// Stops `site start` by PID: SIGTERM, then SIGKILL after 5 s.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) on the PID of our own child, not yet reaped.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
            let _ = wait_bounded(&mut child, Duration::from_secs(5));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `token issue` here, `token redeem` on `other`: `other` links here.
    /// Returns how long the redemption (until link up) took.
    fn link_from(&self, other: &Site, token: &Path) -> Duration {
        let token = path_str(token);
        self.ok(&["token", "issue", token]);
        let started = Instant::now();
        let out = other.ok(&["token", "redeem", token]);
        let took = started.elapsed();
        assert!(
            out.contains(&format!("Link {} is up", self.name)),
            "{}: token redeem: {out}",
            other.name
        );
        took
    }

    /// The inter-router connections of this site's router, by peer id.
    fn router_peers(&self) -> Vec<String> {
        let rows = self.json(&["query", "connection"]);
        rows.as_array()
            .map(|rows| {
                rows.iter()
                    .filter(|c| c["role"] == "inter-router")
                    .map(|c| {
                        let p = c["peerRouter"].as_str().unwrap_or_default();
                        if p.is_empty() {
                            c["container"].as_str().unwrap_or_default().to_string()
                        } else {
                            p.to_string()
                        }
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The listener `name` from `tether listener status -o json`, if it is
    /// there and up: its port.
    fn listener_up(&self, name: &str) -> Option<u16> {
        let rows = self.json(&["listener", "status"]);
        rows.as_array()?
            .iter()
            .find(|r| r["name"] == name && r["status"] == "up")
            .and_then(|r| r["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
    }

    /// Whether `tether listener status` lists `name` at all.
    fn has_listener(&self, name: &str) -> bool {
        self.json(&["listener", "status"])
            .as_array()
            .is_some_and(|rows| rows.iter().any(|r| r["name"] == name))
    }

    /// Waits for an automatic listener `auto-KEY` to be up; its port.
    fn wait_auto_listener(&self, key: &str) -> u16 {
        let name = format!("auto-{key}");
        let mut port = None;
        let found = eventually(SPREAD_TIMEOUT, || {
            port = self.listener_up(&name);
            port.is_some()
        });
        assert!(
            found,
            "{}: no {name} listener up within {SPREAD_TIMEOUT:?}; listeners:\n{}\n--- site log ---\n{}",
            self.name,
            self.ok(&["listener", "status"]),
            self.log_text()
        );
        port.expect("port")
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.stop();
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temporary path")
}

/// Polls `f` every 100 ms until it returns true, up to `timeout`.
fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    let max_polls = timeout.as_millis() / 100 + 2;
    for _ in 0..max_polls {
        if f() {
            return true;
        }
        if start.elapsed() >= timeout {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Checks `f` every 100 ms for `duration`; the first failure's
/// description, if any.
fn holds_for(duration: Duration, mut f: impl FnMut() -> Result<(), String>) -> Result<(), String> {
    let start = Instant::now();
    let max_polls = duration.as_millis() / 100 + 2;
    for _ in 0..max_polls {
        f().map_err(|e| format!("after {:?}: {e}", start.elapsed()))?;
        if start.elapsed() >= duration {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// An echo transfer of `nbytes` through `port` that must be byte-exact.
fn assert_echo(port: u16, nbytes: u64, seed: u64, through: &str) {
    let report = echo_transfer(port, nbytes, seed, TRANSFER_TIMEOUT)
        .unwrap_or_else(|e| panic!("echo through {through} (port {port}): {e}"));
    assert!(
        report.exact(),
        "not byte-exact through {through}: {report:?}"
    );
    eprintln!(
        "{through}: {nbytes} bytes echoed byte-exact in {:?}",
        report.elapsed
    );
}

/// The peers of `site` in `tether network status -o json` `sites`, as
/// "direction peer" strings.
fn network_links(report: &Value, site: &str) -> Vec<String> {
    report["sites"]
        .as_array()
        .and_then(|sites| sites.iter().find(|s| s["site"] == site))
        .and_then(|s| s["links"].as_array())
        .map(|links| {
            let mut v: Vec<String> = links
                .iter()
                .map(|l| {
                    format!(
                        "{} {}",
                        l["direction"].as_str().unwrap_or("?"),
                        l["peer"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            v.sort();
            v
        })
        .unwrap_or_default()
}

#[test]
fn three_sites_carry_traffic_through_a_transit_hub() {
    let tether = Tether::locate();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let east = Site::started(&tether, root, "east", &[]);
    let hub = Site::started(&tether, root, "hub", &[]);
    let west = Site::started(&tether, root, "west", &[]);

    // east -> hub and west -> hub, by tokens issued on hub.
    let t1 = hub.link_from(&east, &root.join("east-token.yaml"));
    let t2 = hub.link_from(&west, &root.join("west-token.yaml"));
    eprintln!("token redeem -> link up: east {t1:?}, west {t2:?}");

    // The service on west, a listener for it on east.
    let echo = Service::echo();
    let out = west.ok(&["connector", "create", "backend", &echo.port().to_string()]);
    assert!(out.contains("(live)"), "{out}");
    let listen_port = free_port();
    east.ok(&[
        "listener",
        "create",
        "backend",
        &listen_port.to_string(),
        "--host",
        "127.0.0.1",
    ]);
    assert!(
        wait_until_connectable(listen_port, SPREAD_TIMEOUT).is_some(),
        "east's listener for backend did not open"
    );
    assert_echo(listen_port, 1 << 20, 11, "east -> hub -> west");
    assert!(echo.accepted() >= 1);

    // east and west are not linked to each other: hub carried it.
    let east_peers = east.router_peers();
    assert_eq!(east_peers, vec!["hub".to_string()], "east's links");
    let west_peers = west.router_peers();
    assert_eq!(west_peers, vec!["hub".to_string()], "west's links");
    let mut hub_peers = hub.router_peers();
    hub_peers.sort();
    assert_eq!(hub_peers, vec!["east".to_string(), "west".to_string()]);

    // The network view, from an edge site: three sites, two links.
    let mut report = Value::Null;
    let complete = eventually(SPREAD_TIMEOUT, || {
        report = east.json(&["network", "status"]);
        network_links(&report, "hub") == ["in east", "in west"]
    });
    assert!(complete, "network status from east: {report:#}");
    let mut sites: Vec<&str> = report["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .filter_map(|s| s["site"].as_str())
        .collect();
    sites.sort();
    assert_eq!(sites, ["east", "hub", "west"], "{report:#}");
    assert_eq!(network_links(&report, "east"), ["out hub"], "{report:#}");
    assert_eq!(network_links(&report, "west"), ["out hub"], "{report:#}");
    let backend = report["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["routing_key"] == "backend"))
        .unwrap_or_else(|| panic!("no backend service: {report:#}"));
    assert_eq!(backend["reachable"], true, "{report:#}");
    assert_eq!(backend["exposed_at"][0]["site"], "west", "{report:#}");
    assert_eq!(backend["consumed_at"][0]["site"], "east", "{report:#}");

    // The table form names the same.
    let table = hub.ok(&["network", "status"]);
    for s in ["east", "hub", "west", "backend"] {
        assert!(table.contains(s), "{s} missing:\n{table}");
    }
}

#[test]
fn expose_reaches_every_site_including_one_that_joins_later() {
    let tether = Tether::locate();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let east = Site::started(&tether, root, "east", &[]);
    let hub = Site::started(&tether, root, "hub", &[]);
    let west = Site::started(&tether, root, "west", &[]);
    hub.link_from(&east, &root.join("east-token.yaml"));
    hub.link_from(&west, &root.join("west-token.yaml"));

    // Exposed on west; its own port is taken on this host, so the other
    // sites open their automatic listeners on free ports.
    let echo = Service::echo();
    let out = west.ok(&["expose", "web", &echo.port().to_string()]);
    assert!(out.contains("exposed web"), "{out}");
    let east_port = east.wait_auto_listener("web");
    let hub_port = hub.wait_auto_listener("web");
    assert!(!west.has_listener("auto-web"), "west exposes web itself");
    assert_echo(east_port, 512 * 1024, 21, "east's auto-web");
    assert_echo(hub_port, 512 * 1024, 22, "hub's auto-web");

    // Also in management, under the same name.
    let rows = east.json(&["query", "tcpListener"]);
    assert!(
        rows.as_array()
            .is_some_and(|r| r.iter().any(|l| l["name"] == "auto-web")),
        "east's tcpListeners: {rows:#}"
    );

    // A fourth site links later (token from hub): it gets one too, with
    // no command about web there.
    let late = Site::started(&tether, root, "late", &[]);
    hub.link_from(&late, &root.join("late-token.yaml"));
    let late_port = late.wait_auto_listener("web");
    assert_echo(late_port, 512 * 1024, 23, "late's auto-web");

    // Unexposed on west: gone on every other site, ports closed.
    west.ok(&["unexpose", "web"]);
    for (site, port) in [(&east, east_port), (&hub, hub_port), (&late, late_port)] {
        let gone = eventually(SPREAD_TIMEOUT, || {
            !site.has_listener("auto-web")
                && std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        });
        assert!(
            gone,
            "{}: auto-web still there {SPREAD_TIMEOUT:?} after unexpose:\n{}",
            site.name,
            site.ok(&["listener", "status"])
        );
    }
    assert!(!west.site_toml().contains("name = \"web\""));
}

#[test]
fn generated_link_applies_and_revocation_keeps_it_down() {
    let tether = Tether::locate();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let mut hub = Site::started(&tether, root, "hub", &[]);
    let app = Site::started(&tether, root, "app", &[]);

    // `tether link generate > hub-link.yaml` on hub, `link apply` on app.
    let link_file = root.join("hub-link.yaml");
    let yaml = hub.ok(&["link", "generate"]);
    assert!(yaml.contains("kind: tether-link"), "{yaml}");
    std::fs::write(&link_file, &yaml).expect("write link file");
    let out = app.ok(&["link", "apply", path_str(&link_file)]);
    assert!(out.contains("Link hub is up"), "{out}");
    assert!(
        eventually(SPREAD_TIMEOUT, || hub.router_peers() == ["app"]),
        "hub does not see app's link: {:?}",
        hub.router_peers()
    );

    // The peer as hub's `link status` lists what it issued.
    let status = hub.json(&["link", "status"]);
    let issued = status["incoming"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["via"] == "link generate"))
        .unwrap_or_else(|| panic!("no generated link under incoming: {status:#}"));
    let peer = issued["site"].as_str().expect("peer name").to_string();
    assert!(peer.starts_with("link-"), "{status:#}");
    assert_eq!(issued["revoked"], false);

    let out = hub.ok(&["link", "revoke", &peer]);
    assert!(out.contains("refuses and closes"), "{out}");
    let app_link_status = || -> String {
        let rows = app.json(&["query", "connector"]);
        rows.as_array()
            .and_then(|r| r.iter().find(|c| c["name"] == "hub"))
            .map(|c| c["connectionStatus"].as_str().unwrap_or("?").to_string())
            .unwrap_or_else(|| "absent".into())
    };
    assert!(
        eventually(SPREAD_TIMEOUT, || app_link_status() != "UP"
            && hub.router_peers().is_empty()),
        "the link stayed up after revoke: app's connector {}, hub's peers {:?}",
        app_link_status(),
        hub.router_peers()
    );
    // It stays down: app's connector keeps redialling and is refused.
    let stays_down = |hub: &Site| {
        holds_for(Duration::from_secs(3), || {
            let st = app_link_status();
            let peers = hub.router_peers();
            if st == "UP" || !peers.is_empty() {
                Err(format!("app's connector {st}, hub's peers {peers:?}"))
            } else {
                Ok(())
            }
        })
    };
    stays_down(&hub).unwrap_or_else(|e| panic!("the revoked link came back {e}"));
    let status = hub.json(&["link", "status"]);
    assert!(
        status["incoming"].as_array().is_some_and(|r| r
            .iter()
            .any(|i| i["site"] == peer.as_str() && i["revoked"] == true)),
        "{status:#}"
    );

    // A restart of hub keeps the revocation (router.toml).
    hub.stop();
    hub.start();
    stays_down(&hub).unwrap_or_else(|e| panic!("the revoked link came back after a restart {e}"));
}

#[test]
fn site_without_auto_listeners_gets_none() {
    let tether = Tether::locate();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let hub = Site::started(&tether, root, "hub", &[]);
    let west = Site::started(&tether, root, "west", &[]);
    let quiet = Site::started(&tether, root, "quiet", &["--no-auto-listeners"]);
    assert!(
        quiet.site_toml().contains("auto_listeners = false"),
        "{}",
        quiet.site_toml()
    );
    hub.link_from(&west, &root.join("west-token.yaml"));
    hub.link_from(&quiet, &root.join("quiet-token.yaml"));

    let echo = Service::echo();
    west.ok(&["expose", "web", &echo.port().to_string()]);
    // hub, a site with the default, opens one: the expose is in effect.
    let hub_port = hub.wait_auto_listener("web");
    assert_echo(hub_port, 64 * 1024, 31, "hub's auto-web");
    // quiet sees web exposed in the network ...
    assert!(
        eventually(SPREAD_TIMEOUT, || {
            let report = quiet.json(&["network", "status"]);
            report["services"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|s| s["routing_key"] == "web" && s["reachable"] == true)
            })
        }),
        "quiet does not see web in the network:\n{}",
        quiet.ok(&["network", "status"])
    );
    // ... and opens no listener for it.
    holds_for(Duration::from_secs(2), || {
        let rows = quiet.json(&["listener", "status"]);
        match rows.as_array() {
            Some(r) if r.is_empty() => Ok(()),
            _ => Err(format!("quiet has listeners: {rows:#}")),
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let tcp = quiet.json(&["query", "tcpListener"]);
    assert!(
        tcp.as_array().is_some_and(|r| r.is_empty()),
        "quiet's tcpListeners: {tcp:#}"
    );

    // It can still open one by hand.
    let port = free_port();
    quiet.ok(&[
        "listener",
        "create",
        "web",
        &port.to_string(),
        "--host",
        "127.0.0.1",
    ]);
    assert!(wait_until_connectable(port, SPREAD_TIMEOUT).is_some());
    assert_echo(port, 64 * 1024, 32, "quiet's own listener");
}
