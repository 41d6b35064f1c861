//! Sites linked by tokens, made only with the CLI in temporary folders:
//! `tether site create` + `tether site start` for two sites, `tether token
//! issue` on east and `tether token redeem` on west → the link comes up
//! (seen by both routers' management). Then what a user must be refused
//! with a message that says why: a one-time token used twice, an expired
//! token, a tampered token (its CA replaced by another site's). And what
//! must last: `tether link delete` on west takes the link down on both
//! sides; a restart of west keeps the link.
//!
//! Every command runs bounded (`run_bounded`), every site process is killed
//! by PID when its handle drops, every wait has a deadline.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tether_tests::binary::{run_bounded, wait_bounded, Output, Tether};
use tether_tests::net::wait_until_connectable;

/// Deadline of one CLI command.
const CLI_TIMEOUT: Duration = Duration::from_secs(20);
/// Time a site gets to start (router, management and grant server up).
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a link gets to come up or go down.
const LINK_TIMEOUT: Duration = Duration::from_secs(10);

/// One site: its folder and, while started, its `tether site start` process.
struct Site {
    name: String,
    dir: PathBuf,
    /// XDG_DATA_HOME / HOME for the commands: never the user's own.
    home: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Site {
    /// `tether site create NAME --site-dir ROOT/NAME`.
    fn create(root: &Path, name: &str) -> Site {
        let site = Site {
            name: name.to_string(),
            dir: root.join(name),
            home: root.join("home"),
            child: None,
            log: root.join(format!("{name}.log")),
        };
        let out = site.cli(&["site", "create", name]);
        assert!(out.success(), "site create {name}: {}", out.describe());
        assert!(site.dir.join("site.toml").is_file());
        site
    }

    fn command(&self) -> Command {
        let mut cmd = Tether::locate().command();
        cmd.env("HOME", &self.home)
            .env("XDG_DATA_HOME", &self.home)
            .env_remove("TETHER_SITE_DIR")
            .arg("--site-dir")
            .arg(&self.dir);
        cmd
    }

    /// Runs `tether --site-dir DIR ARGS`, bounded.
    fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = self.command();
        cmd.args(args);
        run_bounded(cmd, CLI_TIMEOUT)
    }

    /// Runs a command that must succeed; returns its stdout.
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

    /// Runs a command that must fail; returns its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            !out.success() && !out.timed_out,
            "{}: tether {} should have failed: {}",
            self.name,
            args.join(" "),
            out.describe()
        );
        out.stderr
    }

    /// A port recorded in `site.toml` (`[ports] KEY = N`).
    fn port(&self, key: &str) -> u16 {
        let text = std::fs::read_to_string(self.dir.join("site.toml")).expect("site.toml");
        let prefix = format!("{key} = ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} port in site.toml:\n{text}"))
    }

    /// `tether site start` in the background, waited for until its
    /// management and grant ports answer.
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
        let child = cmd.spawn().expect("spawn tether site start");
        self.child = Some(child);
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

    /// Stops the site (SIGTERM, then SIGKILL if it lingers), by PID.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) on the PID of our own child, not yet reaped.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
            let (_status, _timed_out) = wait_bounded(&mut child, Duration::from_secs(5));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `tether query connection -o json`: this router's connections.
    fn connections(&self) -> Vec<serde_json::Value> {
        let text = self.ok(&["query", "connection", "-o", "json"]);
        match serde_json::from_str(&text) {
            Ok(serde_json::Value::Array(rows)) => rows,
            other => panic!("{}: query connection gave {other:?}:\n{text}", self.name),
        }
    }

    /// Whether an inter-router connection with router `peer` is open.
    fn linked_to(&self, peer: &str) -> bool {
        self.connections().iter().any(|c| {
            c["role"] == "inter-router" && (c["container"] == peer || c["peerRouter"] == peer)
        })
    }

    /// Waits until `linked_to(peer) == up`; returns how long it took.
    fn wait_linked(&self, peer: &str, up: bool) -> Duration {
        let start = Instant::now();
        let max_polls = LINK_TIMEOUT.as_millis() / 100 + 1;
        for _ in 0..max_polls {
            if self.linked_to(peer) == up {
                return start.elapsed();
            }
            if start.elapsed() >= LINK_TIMEOUT {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{}: the link with {peer} did not go {} within {LINK_TIMEOUT:?}; connections: {:#?}\n\
             --- site log ---\n{}",
            self.name,
            if up { "up" } else { "down" },
            self.connections(),
            self.log_text()
        );
    }

    fn site_toml(&self) -> String {
        std::fs::read_to_string(self.dir.join("site.toml")).expect("site.toml")
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = wait_bounded(&mut child, Duration::from_secs(5));
        }
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temporary path")
}

/// Two sites, east and west, both started.
fn two_sites(root: &Path) -> (Site, Site) {
    let mut east = Site::create(root, "east");
    let mut west = Site::create(root, "west");
    east.start();
    west.start();
    (east, west)
}

/// The seconds in "... in 0.12 s." of `token redeem`'s last line.
fn reported_seconds(stdout: &str) -> f64 {
    stdout
        .lines()
        .rev()
        .find_map(|l| {
            let rest = l.rsplit_once(" in ")?.1;
            rest.strip_suffix(" s.")?.parse::<f64>().ok()
        })
        .unwrap_or_else(|| panic!("no \"in N s.\" in:\n{stdout}"))
}

#[test]
fn token_links_two_sites_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (east, west) = two_sites(tmp.path());
    let token = tmp.path().join("east-token.yaml");
    let token_s = path_str(&token);

    east.ok(&["token", "issue", token_s]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token)
            .expect("token")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "token files are private");
    }
    let text = std::fs::read_to_string(&token).expect("token");
    assert!(text.contains("kind: tether-token"), "{text}");
    assert!(east.site_toml().contains("[[grant]]"));
    assert!(
        !east.site_toml().contains(
            text.lines()
                .find_map(|l| l.strip_prefix("code: "))
                .expect("code")
        ),
        "site.toml keeps only the code's hash"
    );

    let started = Instant::now();
    let out = west.ok(&["token", "redeem", token_s]);
    let wall = started.elapsed();
    assert!(out.contains("Link east is up"), "{out}");
    let up_in = reported_seconds(&out);
    eprintln!("token redeem -> link up: {up_in:.2} s (command wall time {wall:?})");
    assert!(
        up_in < 2.0,
        "redeem to link up took {up_in} s (target < 2 s)"
    );

    // Both routers see the link; the files and records are in place.
    east.wait_linked("west", true);
    west.wait_linked("east", true);
    assert!(west.dir.join("links/east/key.pem").is_file());
    assert!(west.site_toml().contains("[[link]]"));
    let east_state = east.site_toml();
    assert!(
        east_state.contains("[[issued]]") && east_state.contains("redeemed = 1"),
        "{east_state}"
    );
    let status = west.ok(&["link", "status", "-o", "json"]);
    let status: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert_eq!(status["outgoing"][0]["name"], "east");
    assert_eq!(status["outgoing"][0]["status"], "UP");
    let status = east.ok(&["link", "status", "-o", "json"]);
    let status: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert_eq!(status["incoming"][0]["site"], "west");
    assert_eq!(status["incoming"][0]["status"], "UP");

    // A one-time token cannot be used again.
    let err = west.fails(&["token", "redeem", token_s, "--name", "again"]);
    assert!(err.contains("already used"), "{err}");
    assert!(!west.site_toml().contains("again"));
}

#[test]
fn expired_and_tampered_tokens_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut east = Site::create(tmp.path(), "east");
    let west = Site::create(tmp.path(), "west");
    let other = Site::create(tmp.path(), "other");
    east.start();

    // Expired.
    let expired = tmp.path().join("expired.yaml");
    east.ok(&[
        "token",
        "issue",
        path_str(&expired),
        "--expiration-window",
        "1s",
    ]);
    std::thread::sleep(Duration::from_millis(2100));
    let err = west.fails(&["token", "redeem", path_str(&expired)]);
    assert!(err.contains("expired"), "{err}");
    assert!(err.contains("ask east for a new one"), "{err}");

    // Tampered: the CA replaced by another site's, so the grant server
    // (east) cannot prove it is the site the token names.
    let good = tmp.path().join("good.yaml");
    east.ok(&["token", "issue", path_str(&good)]);
    let text = std::fs::read_to_string(&good).expect("token");
    let (head, _) = text.split_once("ca: |\n").expect("ca block");
    let other_ca = std::fs::read_to_string(other.dir.join("ca.pem")).expect("other CA");
    let mut tampered_text = format!("{head}ca: |\n");
    for line in other_ca.lines() {
        tampered_text.push_str("  ");
        tampered_text.push_str(line);
        tampered_text.push('\n');
    }
    let tampered = tmp.path().join("tampered.yaml");
    std::fs::write(&tampered, tampered_text).expect("write");
    let err = west.fails(&["token", "redeem", path_str(&tampered)]);
    assert!(
        err.contains(
            "the grant server's certificate is not signed by the CA in the token: \
             the token was altered or is for another site"
        ),
        "{err}"
    );
    // A refused redemption leaves nothing behind on either side.
    assert!(!west.site_toml().contains("[[link]]"));
    assert!(!west.dir.join("links/east").exists());
    assert!(!east.site_toml().contains("[[issued]]"));

    // The untouched token still works (it was not spent by the attempts).
    let out = west.ok(&["token", "redeem", path_str(&good), "--no-wait"]);
    assert!(out.contains("Link east to site east"), "{out}");
}

#[test]
fn deleted_link_goes_down_on_both_sides_and_restart_keeps_links() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (east, mut west) = two_sites(tmp.path());
    let token = tmp.path().join("token.yaml");
    east.ok(&["token", "issue", path_str(&token)]);
    west.ok(&["token", "redeem", path_str(&token)]);
    east.wait_linked("west", true);

    // A restart of west reads the link back from its site folder.
    west.stop();
    east.wait_linked("west", false);
    west.start();
    let back = east.wait_linked("west", true);
    eprintln!("link back {back:?} after west's restart");
    west.wait_linked("east", true);

    // Delete on west: down on both sides, gone from the folder.
    let out = west.ok(&["link", "delete", "east"]);
    assert!(out.contains("Link east is down"), "{out}");
    east.wait_linked("west", false);
    west.wait_linked("east", false);
    assert!(!west.site_toml().contains("[[link]]"));
    assert!(!west.dir.join("links/east").exists());
    let connectors = west.ok(&["query", "connector", "-o", "json"]);
    assert!(!connectors.contains("\"east\""), "{connectors}");

    // And it stays down: nothing brings it back on a restart.
    west.stop();
    west.start();
    std::thread::sleep(Duration::from_millis(500));
    assert!(!east.linked_to("west"));
}
