//! Locating the `tether` binary and running it with a bounded wait.
//!
//! The tests never build the binary: the test command runs
//! `cargo build --release -p tether-router` first. [`Tether::locate`] looks,
//! in order, at `$TETHER_BIN`, `<workspace>/target/release/tether` and
//! `<workspace>/target/debug/tether`, and panics with instructions if none
//! exists. [`run_bounded`] runs a short-lived command (`tether router
//! --check`, `tether certs`) with its output captured to files and kills it
//! by PID if it overstays its deadline.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The `tether` binary under test.
#[derive(Clone, Debug)]
pub struct Tether {
    /// Absolute path of the executable.
    pub path: PathBuf,
}

impl Tether {
    /// Finds the binary: `$TETHER_BIN`, else `target/release/tether`, else
    /// `target/debug/tether` (both relative to the workspace root).
    ///
    /// Panics with a clear message when none exists.
    pub fn locate() -> Tether {
        if let Some(p) = std::env::var_os("TETHER_BIN") {
            let path = PathBuf::from(p);
            assert!(
                path.is_file(),
                "TETHER_BIN={} does not name a file; build it with \
                 `cargo build --release -p tether-router` or fix TETHER_BIN",
                path.display()
            );
            return Tether { path };
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let candidates = [
            root.join("target/release/tether"),
            root.join("target/debug/tether"),
        ];
        for c in &candidates {
            if c.is_file() {
                let path = c.canonicalize().unwrap_or_else(|_| c.clone());
                return Tether { path };
            }
        }
        panic!(
            "the tether binary was not found (looked at $TETHER_BIN, {} and {}); \
             run `cargo build --release -p tether-router` before the tests, \
             or point TETHER_BIN at a built binary",
            candidates[0].display(),
            candidates[1].display()
        );
    }

    /// A `Command` for the binary with a clean, predictable environment for
    /// logging: `NO_COLOR=1` (no ANSI escapes in logs to grep) and
    /// `RUST_LOG` from `$TETHER_TEST_RUST_LOG`, default `info`.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.env("NO_COLOR", "1");
        cmd.env(
            "RUST_LOG",
            std::env::var("TETHER_TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs `tether router --check FILE` (bounded: 5 s; a check only
    /// parses and reads a few files).
    pub fn check_config(&self, file: &Path) -> Output {
        let mut cmd = self.command();
        cmd.arg("router").arg("--check").arg(file);
        run_bounded(cmd, Duration::from_secs(5))
    }

    /// Runs `tether router --config FILE` expecting it to fail at startup;
    /// bounded: a router still running after `timeout` is killed and the
    /// output says so (`timed_out`).
    pub fn run_config_expecting_failure(&self, file: &Path, timeout: Duration) -> Output {
        let mut cmd = self.command();
        cmd.arg("router").arg("--config").arg(file);
        run_bounded(cmd, timeout)
    }

    /// Runs `tether certs --out DIR NAME...` (bounded: 30 s).
    pub fn certs(&self, out: &Path, names: &[&str]) -> Output {
        let mut cmd = self.command();
        cmd.arg("certs").arg("--out").arg(out).args(names);
        run_bounded(cmd, Duration::from_secs(30))
    }
}

/// What a bounded run produced.
#[derive(Debug)]
pub struct Output {
    /// Exit status; `None` if the process had to be killed.
    pub status: Option<ExitStatus>,
    /// True if the deadline passed and the process was killed.
    pub timed_out: bool,
    /// Captured standard output (lossy UTF-8).
    pub stdout: String,
    /// Captured standard error (lossy UTF-8, ANSI escapes removed).
    pub stderr: String,
}

impl Output {
    /// True if the process exited by itself with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// A multi-line description for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "status: {:?}{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            if self.timed_out {
                " (killed: timed out)"
            } else {
                ""
            },
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `cmd` to completion with stdout and stderr captured into anonymous
/// temporary files (no pipe can fill and block the child). If it is still
/// running at `timeout` it is killed by PID (SIGKILL) and reaped.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Output {
    let mut out_f = tempfile::tempfile().expect("temporary file for stdout");
    let mut err_f = tempfile::tempfile().expect("temporary file for stderr");
    cmd.stdout(Stdio::from(out_f.try_clone().expect("clone file handle")));
    cmd.stderr(Stdio::from(err_f.try_clone().expect("clone file handle")));
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
    let (status, timed_out) = wait_bounded(&mut child, timeout);
    Output {
        status,
        timed_out,
        stdout: read_all(&mut out_f),
        stderr: strip_ansi(&read_all(&mut err_f)),
    }
}

/// Waits for `child` up to `timeout` (polling every 10 ms); past it, kills
/// it by PID and reaps it. Returns the status (None if killed) and whether
/// the deadline passed.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> (Option<ExitStatus>, bool) {
    let deadline = Instant::now() + timeout;
    let max_polls = timeout.as_millis() as u64 / 10 + 2;
    for _ in 0..max_polls {
        match child.try_wait() {
            Ok(Some(st)) => return (Some(st), false),
            Ok(None) => {}
            Err(_) => break,
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Ok(Some(st)) = child.try_wait() {
        return (Some(st), false);
    }
    let _ = child.kill();
    // SIGKILL cannot be ignored; reaping is prompt. Still bounded.
    for _ in 0..500 {
        if let Ok(Some(_)) | Err(_) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (None, true)
}

fn read_all(f: &mut File) -> String {
    let mut buf = Vec::new();
    let _ = f.seek(SeekFrom::Start(0));
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Removes ANSI escape sequences (CSI `ESC [ ... letter` and two-byte
/// `ESC x`) so that log lines can be matched as plain text even if the
/// binary colours its output.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('[') => {
                chars.next();
                // parameters and intermediates, then one final byte 0x40..=0x7e
                for c2 in chars.by_ref() {
                    if ('@'..='~').contains(&c2) {
                        break;
                    }
                }
            }
            Some(_) => {
                chars.next();
            }
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::strip_ansi;

    #[test]
    fn strips_colours() {
        let s = "\u{1b}[2m2024\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[3mpeer\u{1b}[0m\u{1b}[2m=\u{1b}[0mwest link up";
        assert_eq!(strip_ansi(s), "2024  INFO peer=west link up");
    }
}
