//! Sites made only with the CLI (`tether site create/start`, `token`,
//! `connector`, `listener`, `expose`), in temporary folders, with the real
//! binary: two sites linked by a token carry an echo service byte-exact;
//! a change made while a site is stopped takes effect at its start; a
//! restart keeps links and services.
//!
//! Every command runs with a bounded wait; `site start` processes are
//! stopped by PID (SIGTERM, then SIGKILL) when the test ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use tether_tests::binary::{run_bounded, Output, Tether};
use tether_tests::flows::echo_transfer;
use tether_tests::net::wait_until_connectable;
use tether_tests::services::Service;

/// How long one CLI command may take (they do at most a few management
/// round trips on loopback; `--wait` is bounded by `--timeout`).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// One site folder and, while started, its `tether site start` process.
struct Site {
    tether: Tether,
    dir: PathBuf,
    /// Where `site start` writes its log (stderr).
    log: PathBuf,
    process: Option<Child>,
}

impl Site {
    /// `tether site create NAME --site-dir ROOT/NAME`.
    fn create(tether: &Tether, root: &Path, name: &str) -> Site {
        let site = Site {
            tether: tether.clone(),
            dir: root.join(name),
            log: root.join(format!("{name}.log")),
            process: None,
        };
        let out = site.run(&["site", "create", name]);
        assert!(out.success(), "site create {name}: {}", out.describe());
        site
    }

    /// Runs `tether ARGS --site-dir DIR`, bounded.
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.tether.command();
        cmd.args(args)
            .arg("--site-dir")
            .arg(&self.dir)
            // Never fall back to the user's own sites.
            .env("XDG_DATA_HOME", self.dir.join("no-default-root"));
        run_bounded(cmd, COMMAND_TIMEOUT)
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.success(),
            "tether {}: {}",
            args.join(" "),
            out.describe()
        );
        out.stdout
    }

    /// A port recorded in site.toml's `[ports]`.
    fn port(&self, key: &str) -> u16 {
        let text = std::fs::read_to_string(self.dir.join("site.toml")).expect("site.toml");
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == key).then(|| v.trim().parse::<u16>().ok())?
            })
            .unwrap_or_else(|| panic!("no {key} port in site.toml:\n{text}"))
    }

    /// `tether site start` in the background; returns once its
    /// management port accepts connections.
    fn start(&mut self) {
        assert!(self.process.is_none(), "already started");
        let log = std::fs::File::create(&self.log).expect("log file");
        let mut cmd = self.tether.command();
        cmd.args(["site", "start", "--site-dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let child = cmd.spawn().expect("spawn tether site start");
        self.process = Some(child);
        let amqp = self.port("amqp");
        if wait_until_connectable(amqp, Duration::from_secs(10)).is_none() {
            panic!(
                "site {} did not start within 10 s; log:\n{}",
                self.dir.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    /// Stops `site start` by PID: SIGTERM, then SIGKILL after 5 s.
    fn stop(&mut self) {
        let Some(mut child) = self.process.take() else {
            return;
        };
        let pid = child.id() as libc::pid_t;
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `f` every 50 ms until it returns true, up to `timeout`.
fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_sites_linked_by_token_carry_traffic_and_survive_restart() {
    let tether = Tether::locate();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut east = Site::create(&tether, tmp.path(), "east");
    let mut west = Site::create(&tether, tmp.path(), "west");
    for p in ["inter_router", "amqp", "grant", "http"] {
        assert_ne!(east.port(p), west.port(p), "sites share port {p}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in ["ca-key.pem", "router-key.pem"] {
            let mode = std::fs::metadata(east.dir.join(key))
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
    }
    east.start();
    west.start();

    // Link west -> east with a token.
    let token = tmp.path().join("east-token.yaml");
    east.ok(&["token", "issue", token.to_str().expect("utf-8 path")]);
    let started = Instant::now();
    let out = west.ok(&["token", "redeem", token.to_str().expect("utf-8 path")]);
    assert!(out.contains("up"), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Service on west, listener on east.
    let echo = Service::echo();
    let service_port = echo.port().to_string();
    let out = west.ok(&["connector", "create", "backend", &service_port]);
    assert!(out.contains("(live)"), "{out}");
    let listen_port = tether_tests::net::free_port();
    east.ok(&["listener", "create", "backend", &listen_port.to_string()]);
    assert!(
        wait_until_connectable(listen_port, Duration::from_secs(5)).is_some(),
        "east's listener did not open"
    );
    let report = echo_transfer(listen_port, 1 << 20, 7, Duration::from_secs(10))
        .expect("echo through east -> west");
    assert!(report.exact(), "not byte-exact: {report:?}");

    // Read commands, as JSON.
    let json = east.ok(&["listener", "status", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v[0]["name"], "backend");
    assert_eq!(v[0]["status"], "up");
    let net = east.ok(&["network", "status", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&net).expect("json");
    assert_eq!(v["services"][0]["routing_key"], "backend");
    assert_eq!(v["services"][0]["reachable"], true);
    let status = east.ok(&["status"]);
    assert!(status.contains("Router east"), "{status}");

    // Restart both: the link and the services come back from the site folders.
    east.stop();
    west.stop();
    east.start();
    west.start();
    assert!(
        eventually(Duration::from_secs(10), || {
            echo_transfer(listen_port, 64 * 1024, 8, Duration::from_secs(2))
                .is_ok_and(|r| r.exact())
        }),
        "traffic did not resume after restart; east log:\n{}",
        std::fs::read_to_string(&east.log).unwrap_or_default()
    );

    // Delete the listener live: its port closes.
    east.ok(&["listener", "delete", "backend"]);
    assert!(
        eventually(Duration::from_secs(5), || {
            std::net::TcpStream::connect(("127.0.0.1", listen_port)).is_err()
        }),
        "listener port still open after delete"
    );
}

#[test]
fn expose_gives_linked_site_an_automatic_listener() {
    let tether = Tether::locate();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut east = Site::create(&tether, tmp.path(), "east");
    let mut west = Site::create(&tether, tmp.path(), "west");
    east.start();
    west.start();
    let token = tmp.path().join("t.yaml");
    east.ok(&["token", "issue", token.to_str().expect("utf-8")]);
    west.ok(&["token", "redeem", token.to_str().expect("utf-8")]);

    let echo = Service::echo();
    // The same port as the service: taken on this host, so east picks a free one.
    west.ok(&["expose", "web", &echo.port().to_string()]);
    let mut auto_port = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(
                &east.ok(&["listener", "status", "-o", "json"]),
            ) else {
                return false;
            };
            auto_port = v.as_array().and_then(|rows| {
                rows.iter()
                    .find(|r| r["name"] == "auto-web" && r["status"] == "up")
                    .and_then(|r| r["port"].as_u64())
            });
            auto_port.is_some()
        }),
        "east did not open an automatic listener for web"
    );
    let port = auto_port.expect("port") as u16;
    let report = echo_transfer(port, 256 * 1024, 3, Duration::from_secs(10))
        .expect("echo via auto listener");
    assert!(report.exact());

    west.ok(&["unexpose", "web"]);
    assert!(
        eventually(Duration::from_secs(10), || {
            !east
                .ok(&["listener", "status", "-o", "json"])
                .contains("auto-web")
        }),
        "the automatic listener stayed after unexpose"
    );
}

#[test]
fn changes_while_stopped_apply_at_start_and_errors_say_what_to_do() {
    let tether = Tether::locate();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut east = Site::create(&tether, tmp.path(), "east");
    let out = east.ok(&["connector", "create", "db", "5432"]);
    assert!(out.contains("not running"), "{out}");
    assert!(out.contains("tether site start"), "{out}");

    // Mistakes are refused with a next step.
    let dup = east.run(&["connector", "create", "db", "5433"]);
    assert!(!dup.success());
    assert!(
        dup.stderr.contains("tether connector update db"),
        "{}",
        dup.describe()
    );
    let again = east.run(&["site", "create", "east"]);
    assert!(!again.success());
    assert!(
        again.stderr.contains("already holds site"),
        "{}",
        again.describe()
    );
    let bad = east.run(&["listener", "create", "Bad_Name", "80"]);
    assert!(
        !bad.success() && bad.stderr.contains("lowercase"),
        "{}",
        bad.describe()
    );

    east.start();
    let v: serde_json::Value =
        serde_json::from_str(&east.ok(&["connector", "status", "-o", "json"])).expect("json");
    assert_eq!(v[0]["name"], "db");
    assert_eq!(v[0]["status"], "ok");
    let del = east.run(&["site", "delete"]);
    assert!(
        !del.success() && del.stderr.contains("running"),
        "{}",
        del.describe()
    );
    east.stop();
    east.ok(&["site", "delete"]);
    assert!(!east.dir.exists());

    // The systemd unit and completion scripts.
    let mut site2 = Site::create(&tether, tmp.path(), "west");
    let unit = site2.ok(&["site", "install", "--dry-run"]);
    assert!(unit.contains("site start --site-dir"), "{unit}");
    site2.stop();
    let mut cmd = tether.command();
    cmd.args(["completion", "bash"]);
    let out = run_bounded(cmd, COMMAND_TIMEOUT);
    assert!(
        out.success() && out.stdout.contains("tether"),
        "{}",
        out.describe()
    );
}
