//! A running `tether router` process under test.
//!
//! [`RouterProc::start`] writes the config into the test folder, spawns
//! `tether router --config FILE` with stdout and stderr appended to a log
//! file in the same folder, and returns a handle. The handle greps the log
//! (case-insensitive, ANSI escapes removed) with bounded waits that fail
//! fast, with the log tail, if the router exits; sends signals (SIGTERM,
//! SIGSTOP, SIGCONT); rewrites its config file and sends SIGHUP
//! ([`RouterProc::reload`]); reads its RSS; and on drop kills the process by PID
//! (SIGKILL) and reaps it. When a test panics, every router handle dropped
//! during the unwind prints the tail of its log to stderr.
//!
//! Log matching follows the contract's log lines: `link up` with
//! `peer=<id>` ([`is_link_up`]), `link down` ([`is_link_down`]), `refused`
//! plus a reason, `duplicate router id`, and from the link-state router
//! `route to <router> via <neighbour> cost <n>` ([`parse_route`]) and
//! `router <id> unreachable` ([`is_unreachable`]).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::binary::strip_ansi;
use crate::config::RouterConfig;
use crate::procfs;
use crate::TestEnv;

/// One router process (see the module docs).
pub struct RouterProc {
    id: String,
    label: String,
    pid: u32,
    child: Mutex<Child>,
    exit: Mutex<Option<ExitStatus>>,
    log_path: PathBuf,
    config_path: PathBuf,
    started: Instant,
}

impl RouterProc {
    /// Writes `cfg` as `<dir>/<id>-<n>.toml` and starts
    /// `tether router --config` on it; the log goes to `<dir>/<id>-<n>.log`.
    ///
    /// Returns as soon as the process is spawned: readiness is for the
    /// caller to wait for (a log line, or a port becoming connectable).
    pub fn start(env: &TestEnv, cfg: &RouterConfig) -> RouterProc {
        RouterProc::start_in(env, cfg, env.dir())
    }

    /// Like [`RouterProc::start`], but the config (and so the base of its
    /// relative TLS paths) and the log go into `dir`.
    pub fn start_in(env: &TestEnv, cfg: &RouterConfig, dir: &Path) -> RouterProc {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let label = format!("{}-{n}", cfg.id);
        let config_path = dir.join(format!("{label}.toml"));
        std::fs::write(&config_path, cfg.to_toml())
            .unwrap_or_else(|e| panic!("write {}: {e}", config_path.display()));
        let log_path = dir.join(format!("{label}.log"));
        let open_log = || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .unwrap_or_else(|e| panic!("open {}: {e}", log_path.display()))
        };
        let mut cmd = env.bin.command();
        cmd.arg("router")
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir)
            .stdout(Stdio::from(open_log()))
            .stderr(Stdio::from(open_log()));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", env.bin.path.display()));
        RouterProc {
            id: cfg.id.clone(),
            label,
            pid: child.id(),
            child: Mutex::new(child),
            exit: Mutex::new(None),
            log_path,
            config_path,
            started: Instant::now(),
        }
    }

    /// The router id from its config.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `<id>-<n>`: unique per process start, used in file names and messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// OS process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The log file (stdout and stderr of the router).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The config file the router was started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Time since the process was spawned.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The whole log so far, ANSI escapes removed.
    pub fn log(&self) -> String {
        let raw = std::fs::read(&self.log_path).unwrap_or_default();
        strip_ansi(&String::from_utf8_lossy(&raw))
    }

    /// The complete lines of the log so far (a trailing partial line is
    /// left out until it is finished).
    pub fn lines(&self) -> Vec<String> {
        let log = self.log();
        let complete = match log.rfind('\n') {
            Some(i) => &log[..i],
            None => "",
        };
        complete.lines().map(str::to_string).collect()
    }

    /// The number of complete log lines so far: pass it as `since` to
    /// [`RouterProc::wait_for_line`] to wait for something new.
    pub fn mark(&self) -> usize {
        self.lines().len()
    }

    /// The last `n` lines of the log, for messages.
    pub fn tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(n);
        lines[from..].join("\n")
    }

    /// Lines (from index `since`) for which `pred(lowercased line)` holds.
    pub fn matching_lines(&self, since: usize, pred: impl Fn(&str) -> bool) -> Vec<String> {
        self.lines()
            .into_iter()
            .skip(since)
            .filter(|l| pred(&l.to_lowercase()))
            .collect()
    }

    /// The exit status if the process has exited (reaping it), else `None`.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        let mut exit = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        if exit.is_none() {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            if let Ok(Some(st)) = child.try_wait() {
                *exit = Some(st);
            }
        }
        *exit
    }

    /// True while the process has not exited.
    pub fn is_running(&self) -> bool {
        self.exit_status().is_none()
    }

    /// Waits (bounded by `timeout`, polling every 25 ms) for a log line at
    /// index `since` or later for which `pred(lowercased line)` holds, and
    /// returns it. Fails early if the router exits. `what` describes the
    /// awaited line in the error message, which includes the log tail.
    pub fn wait_for_line(
        &self,
        since: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let max_polls = timeout.as_millis() as u64 / 25 + 2;
        for _ in 0..max_polls {
            // Check exit first, then the log: a line written just before exit
            // is still found.
            let exited = self.exit_status();
            if let Some(line) = self
                .lines()
                .into_iter()
                .skip(since)
                .find(|l| pred(&l.to_lowercase()))
            {
                return Ok(line);
            }
            if let Some(st) = exited {
                return Err(format!(
                    "router {} exited ({st}) before logging {what}; log tail:\n{}",
                    self.label,
                    self.tail(40)
                ));
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Err(format!(
            "router {} did not log {what} within {timeout:?}; log tail:\n{}",
            self.label,
            self.tail(40)
        ))
    }

    /// [`RouterProc::wait_for_line`] for a case-insensitive substring,
    /// from the start of the log.
    pub fn wait_for_log(&self, pattern: &str, timeout: Duration) -> Result<String, String> {
        let p = pattern.to_lowercase();
        self.wait_for_line(0, timeout, &format!("{pattern:?}"), |l| l.contains(&p))
    }

    /// Waits for `link up` with `peer=<peer>` at line `since` or later.
    pub fn wait_link_up(
        &self,
        peer: &str,
        since: usize,
        timeout: Duration,
    ) -> Result<String, String> {
        self.wait_for_line(
            since,
            timeout,
            &format!("`link up` with peer={peer}"),
            |l| is_link_up(l, peer),
        )
    }

    /// Waits for `link down` at line `since` or later.
    pub fn wait_link_down(&self, since: usize, timeout: Duration) -> Result<String, String> {
        self.wait_for_line(since, timeout, "`link down`", |l| l.contains("link down"))
    }

    /// Waits for a `route to <to> via <neighbour> cost <n>` line at line
    /// `since` or later, through `via` if given, and returns it parsed.
    pub fn wait_route(
        &self,
        to: &str,
        via: Option<&str>,
        since: usize,
        timeout: Duration,
    ) -> Result<RouteLine, String> {
        let what = match via {
            Some(v) => format!("`route to {to} via {v}`"),
            None => format!("`route to {to}`"),
        };
        let line = self.wait_for_line(since, timeout, &what, |l| {
            parse_route(l).is_some_and(|r| r.is(to, via))
        })?;
        parse_route(&line).ok_or_else(|| format!("unparsable route line {line:?}"))
    }

    /// The route to `to` according to the latest `route to <to> ...` or
    /// `router <to> unreachable` line: `None` if there is none, or if the
    /// latest says unreachable.
    pub fn current_route(&self, to: &str) -> Option<RouteLine> {
        let mut current = None;
        for l in self.lines() {
            let l = l.to_lowercase();
            if let Some(r) = parse_route(&l).filter(|r| r.is(to, None)) {
                current = Some(r);
            } else if is_unreachable(&l, to) {
                current = None;
            }
        }
        current
    }

    /// Sends a signal (e.g. `libc::SIGSTOP`) to the process by PID.
    pub fn signal(&self, sig: i32) -> std::io::Result<()> {
        if !self.is_running() {
            return Err(std::io::Error::other("process already exited"));
        }
        procfs::signal(self.pid, sig)
    }

    /// Replaces the config file the router was started with by `cfg`
    /// (written to a temporary file in the same folder, then renamed over
    /// it, so the router never reads half a file) without signalling it.
    pub fn rewrite_config(&self, cfg: &RouterConfig) -> std::io::Result<()> {
        let tmp = self.config_path.with_extension("toml.new");
        std::fs::write(&tmp, cfg.to_toml())?;
        std::fs::rename(&tmp, &self.config_path)
    }

    /// Rewrites the config file ([`RouterProc::rewrite_config`]) and sends
    /// SIGHUP: the router re-reads it and applies what it can change live
    /// (inter-router connector costs). A binary that does not handle SIGHUP
    /// dies of it (the default action), which the caller sees as an exit.
    pub fn reload(&self, cfg: &RouterConfig) -> std::io::Result<()> {
        self.rewrite_config(cfg)?;
        self.signal(libc::SIGHUP)
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; past it, kills
    /// the process (SIGKILL) and returns `None`.
    pub fn terminate(&self, timeout: Duration) -> Option<ExitStatus> {
        self.terminate_with(libc::SIGTERM, timeout)
    }

    /// Like [`RouterProc::terminate`] with another signal (e.g. SIGINT).
    pub fn terminate_with(&self, sig: i32, timeout: Duration) -> Option<ExitStatus> {
        if let Some(st) = self.exit_status() {
            return Some(st);
        }
        let _ = procfs::signal(self.pid, sig);
        let deadline = Instant::now() + timeout;
        let max_polls = timeout.as_millis() as u64 / 10 + 2;
        for _ in 0..max_polls {
            if let Some(st) = self.exit_status() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        None
    }

    /// Kills the process by PID (SIGKILL) and reaps it (bounded).
    pub fn kill(&self) {
        if self.exit_status().is_some() {
            return;
        }
        {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            let _ = child.kill();
        }
        for _ in 0..500 {
            if self.exit_status().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Resident set size in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> Option<u64> {
        procfs::rss_kib(self.pid)
    }

    /// Panics with `msg` and the log tails of `routers` if `r` is an `Err`.
    pub fn check<T>(r: Result<T, String>, routers: &[&RouterProc]) -> T {
        match r {
            Ok(v) => v,
            Err(e) => panic!("{e}\n{}", describe(routers)),
        }
    }
}

impl Drop for RouterProc {
    fn drop(&mut self) {
        let was_running = self.is_running();
        if was_running {
            // SIGCONT first in case a test stopped it, then SIGKILL by PID.
            let _ = procfs::signal(self.pid, libc::SIGCONT);
            self.kill();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- router {} (pid {}, {}) log tail: {} -----\n{}\n-----",
                self.label,
                self.pid,
                if was_running {
                    "was running"
                } else {
                    "had exited"
                },
                self.log_path.display(),
                self.tail(30)
            );
        }
    }
}

/// The log tails of several routers, for assertion messages.
pub fn describe(routers: &[&RouterProc]) -> String {
    let mut s = String::new();
    for r in routers {
        s.push_str(&format!(
            "----- router {} (pid {}, {}) -----\n{}\n",
            r.label,
            r.pid,
            match r.exit_status() {
                Some(st) => format!("exited: {st}"),
                None => "running".into(),
            },
            r.tail(25)
        ));
    }
    s
}

/// Polls 127.0.0.1:`port` until it accepts a connection (see
/// [`crate::net::wait_until_connectable`]), giving up early if one of
/// `routers` exits. `Err` carries the routers' log tails.
pub fn wait_connectable(
    port: u16,
    timeout: Duration,
    routers: &[&RouterProc],
) -> Result<Duration, String> {
    let start = Instant::now();
    let step = Duration::from_millis(250);
    let max_rounds = timeout.as_millis() as u64 / step.as_millis() as u64 + 2;
    for _ in 0..max_rounds {
        if let Some(dead) = routers.iter().find(|r| !r.is_running()) {
            return Err(format!(
                "router {} exited while waiting for 127.0.0.1:{port} to accept\n{}",
                dead.label(),
                describe(routers)
            ));
        }
        let left = timeout.saturating_sub(start.elapsed());
        if crate::net::wait_until_connectable(port, left.min(step)).is_some() {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            break;
        }
    }
    Err(format!(
        "127.0.0.1:{port} did not accept a connection within {timeout:?}\n{}",
        describe(routers)
    ))
}

/// True if the (lowercased) line says `link up` and names `peer` as
/// `peer=<id>` or `peer="<id>"`.
pub fn is_link_up(line: &str, peer: &str) -> bool {
    let l = line.to_lowercase();
    l.contains("link up") && names_peer(&l, &peer.to_lowercase())
}

/// True if the line contains `peer=<id>` / `peer="<id>"` with nothing
/// id-like right after the id (so `peer=west` does not match `peer=west2`).
pub fn names_peer(line: &str, peer: &str) -> bool {
    for form in [format!("peer={peer}"), format!("peer=\"{peer}\"")] {
        let mut from = 0;
        // Bounded by the number of occurrences.
        while let Some(i) = line[from..].find(&form) {
            let end = from + i + form.len();
            let next = line[end..].chars().next();
            if !next.is_some_and(|c| c.is_alphanumeric() || c == '-' || c == '_' || c == '.') {
                return true;
            }
            from = from + i + 1;
        }
    }
    false
}

/// True if the (lowercased) line says `link down` and names `peer`.
pub fn is_link_down(line: &str, peer: &str) -> bool {
    let l = line.to_lowercase();
    l.contains("link down") && names_peer(&l, &peer.to_lowercase())
}

/// A parsed `route to <router> via <neighbour> cost <n>` log line (ids
/// lowercased).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteLine {
    /// The destination router.
    pub to: String,
    /// The neighbour the route goes through.
    pub via: String,
    /// The path cost.
    pub cost: u64,
}

impl RouteLine {
    /// True if this is a route to `to` (through `via`, if given).
    pub fn is(&self, to: &str, via: Option<&str>) -> bool {
        self.to == to.to_lowercase() && via.is_none_or(|v| self.via == v.to_lowercase())
    }
}

/// Parses the first `route to <router> via <neighbour> cost <n>` in `line`
/// (case-insensitive; quotes and trailing punctuation around the values are
/// ignored, so `route to "west" via "hub" cost 2,` parses too).
pub fn parse_route(line: &str) -> Option<RouteLine> {
    let l = line.to_lowercase();
    let mut from = 0;
    // Bounded by the number of occurrences.
    while let Some(i) = l[from..].find("route to ") {
        let rest = &l[from + i + "route to ".len()..];
        let words: Vec<&str> = rest.split_whitespace().take(5).collect();
        if let [to, "via", via, "cost", cost] = words[..] {
            let digits: String = cost
                .trim_matches(|c: char| !c.is_ascii_alphanumeric())
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(cost) = digits.parse() {
                return Some(RouteLine {
                    to: trim_id(to),
                    via: trim_id(via),
                    cost,
                });
            }
        }
        from += i + 1;
    }
    None
}

/// True if the line says `router <id> unreachable` for `router`.
pub fn is_unreachable(line: &str, router: &str) -> bool {
    let l = line.to_lowercase();
    let want = router.to_lowercase();
    let words: Vec<&str> = l.split_whitespace().collect();
    words
        .windows(3)
        .any(|w| w[0] == "router" && trim_id(w[1]) == want && w[2].starts_with("unreachable"))
}

fn trim_id(w: &str) -> String {
    w.trim_matches(|c: char| matches!(c, '"' | '\'' | ',' | ';' | ':' | '(' | ')' | '`'))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_lines() {
        let r = parse_route("2024 INFO tether_router::core: route to west via hub cost 2")
            .expect("parsed");
        assert_eq!(
            r,
            RouteLine {
                to: "west".into(),
                via: "hub".into(),
                cost: 2
            }
        );
        assert!(r.is("West", Some("hub")) && r.is("west", None) && !r.is("west", Some("w")));
        let r = parse_route("INFO Route to \"west-2\" via \"hub\" cost 12, was 3").unwrap();
        assert_eq!(
            (r.to.as_str(), r.via.as_str(), r.cost),
            ("west-2", "hub", 12)
        );
        assert_eq!(parse_route("no route to west"), None);
        assert_eq!(parse_route("route to west via hub"), None);
        assert!(is_unreachable("WARN router west unreachable", "west"));
        assert!(is_unreachable(
            "warn tether: router \"west\" unreachable",
            "west"
        ));
        assert!(!is_unreachable("warn router west2 unreachable", "west"));
        assert!(!is_unreachable(
            "info tether_router::core: router west ready",
            "west"
        ));
        assert!(is_link_down(
            "WARN link down: peer=west: dead interval",
            "west"
        ));
        assert!(!is_link_down("WARN link down: peer=west2: eof", "west"));
    }

    #[test]
    fn link_up_lines() {
        assert!(is_link_up(
            "2024 INFO tether: link up peer=west cost=1",
            "west"
        ));
        assert!(is_link_up("INFO Link Up peer=\"west\"", "west"));
        assert!(!is_link_up("INFO link up peer=west2", "west"));
        assert!(!is_link_up("INFO link down peer=west", "west"));
        assert!(is_link_up("INFO link up peer=west2 peer=west", "west"));
    }
}
