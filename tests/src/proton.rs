//! Running the Proton client programs of `tests/amqp/` from the tests.
//!
//! The AMQP tests drive real messaging clients (Apache Qpid Proton's
//! Python binding, `python3-qpid-proton`) against real routers. Each
//! program in `tests/amqp/*.py` takes command-line arguments, prints one
//! JSON object per line on stdout (`{"event": "attached", ...}`, a final
//! `{"event": "done", ...}`), exits non-zero on failure and has a hard
//! timeout of its own (`--timeout SECONDS`, which this module always
//! passes).
//!
//! - [`available`]: whether [`PYTHON`] can import `proton` (checked once);
//!   [`skip_without_proton`] turns that into a clear skip message, or a
//!   failure when `TETHER_REQUIRE_PROTON=1`.
//! - [`Client::spawn`]: starts a program in the background; a thread reads
//!   its stdout as it comes, so a test can wait (bounded) for an event
//!   ([`Client::wait_event`]) before starting the next program, then
//!   collect everything with [`Client::finish`] (bounded; killed past it).
//! - [`run`]: spawn and finish in one call.
//!
//! Every wait is bounded; a program still running at its deadline, or when
//! its handle is dropped, is killed by PID.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use serde_json::Value;

use crate::binary::wait_bounded;

/// The interpreter: the system Python, which has `python3-qpid-proton`
/// (a `python3` earlier on `PATH` may be another installation without it).
pub const PYTHON: &str = "/usr/bin/python3";

/// Extra time a program gets past its own `--timeout` before it is killed.
const KILL_MARGIN: Duration = Duration::from_secs(5);

/// The folder holding the client programs.
pub fn scripts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("amqp")
}

/// `Ok` if [`PYTHON`] can import `proton`, else why not. Checked once per
/// test process (bounded: 30 s).
pub fn available() -> Result<(), String> {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    CHECK
        .get_or_init(|| {
            let mut cmd = Command::new(PYTHON);
            cmd.args(["-c", "import proton, proton.reactor, proton.handlers"])
                .stdin(Stdio::null());
            if !std::path::Path::new(PYTHON).is_file() {
                return Err(format!("{PYTHON} does not exist"));
            }
            let out = crate::binary::run_bounded(cmd, Duration::from_secs(30));
            if out.success() {
                Ok(())
            } else {
                Err(format!(
                    "{PYTHON} cannot import proton (install python3-qpid-proton): {}",
                    out.describe()
                ))
            }
        })
        .clone()
}

/// True (after printing why) if the test calling it must be skipped
/// because Proton is missing; panics instead when `TETHER_REQUIRE_PROTON=1`.
///
/// ```no_run
/// # fn t() {
/// if tether_tests::proton::skip_without_proton("routing_east_to_west") {
///     return;
/// }
/// # }
/// ```
pub fn skip_without_proton(test: &str) -> bool {
    match available() {
        Ok(()) => false,
        Err(why) => {
            if std::env::var("TETHER_REQUIRE_PROTON").is_ok_and(|v| v == "1") {
                panic!("{test}: TETHER_REQUIRE_PROTON=1 but {why}");
            }
            eprintln!("SKIPPED {test}: {why}");
            println!("SKIPPED {test}: Proton for Python is not installed");
            true
        }
    }
}

/// What a finished (or killed) program produced.
#[derive(Debug)]
pub struct Report {
    /// `tests/amqp/<script>` and its arguments, for messages.
    pub command: String,
    /// Exit status; `None` if it had to be killed.
    pub status: Option<ExitStatus>,
    /// True if the deadline passed and the program was killed.
    pub timed_out: bool,
    /// Every JSON line printed, in order.
    pub lines: Vec<Value>,
    /// Lines of stdout that were not JSON objects.
    pub other: Vec<String>,
    /// Standard error.
    pub stderr: String,
}

impl Report {
    /// True if the program exited by itself with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Every line whose `event` is `name`.
    pub fn events(&self, name: &str) -> Vec<&Value> {
        self.lines.iter().filter(|v| v["event"] == name).collect()
    }

    /// The last line whose `event` is `name`.
    pub fn last(&self, name: &str) -> Option<&Value> {
        self.lines.iter().rev().find(|v| v["event"] == name)
    }

    /// The final `done` line; panics with [`Report::describe`] if there is
    /// none.
    pub fn done(&self) -> &Value {
        self.last("done")
            .unwrap_or_else(|| panic!("no `done` line from {}", self.describe()))
    }

    /// Panics with [`Report::describe`] unless the program succeeded;
    /// returns its `done` line.
    pub fn expect_done(&self) -> &Value {
        assert!(self.success(), "{} failed", self.describe());
        self.done()
    }

    /// A multi-line description for assertion messages.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "{}\nstatus: {:?}{}\n--- JSON lines (last 40 of {}) ---\n",
            self.command,
            self.status,
            if self.timed_out {
                " (killed: timed out)"
            } else {
                ""
            },
            self.lines.len()
        ));
        let from = self.lines.len().saturating_sub(40);
        for l in &self.lines[from..] {
            out.push_str(&l.to_string());
            out.push('\n');
        }
        if !self.other.is_empty() {
            out.push_str("--- other stdout ---\n");
            out.push_str(&self.other.join("\n"));
            out.push('\n');
        }
        let err_from = self
            .stderr
            .char_indices()
            .rev()
            .nth(4000)
            .map_or(0, |(i, _)| i);
        out.push_str("--- stderr (tail) ---\n");
        out.push_str(&self.stderr[err_from..]);
        out
    }
}

/// One stdout line as read by the reader thread.
enum Line {
    Json(Value),
    Text(String),
}

/// A client program running in the background (see the module docs).
/// Dropping it kills the program by PID.
pub struct Client {
    command: String,
    child: Option<Child>,
    deadline: Instant,
    rx: Receiver<Line>,
    lines: Vec<Value>,
    other: Vec<String>,
    /// Index in `lines` from which [`Client::wait_event`] looks.
    cursor: usize,
    stderr: File,
}

impl Client {
    /// Starts `tests/amqp/<script>` with `args` and `--timeout` =
    /// `timeout` (the program's own hard limit; it is killed
    /// [`KILL_MARGIN`] later if still running). Panics if it cannot start.
    pub fn spawn(script: &str, args: Vec<String>, timeout: Duration) -> Client {
        let path = scripts_dir().join(script);
        let mut cmd = Command::new(PYTHON);
        cmd.arg("-u")
            .arg(&path)
            .args(&args)
            .arg("--timeout")
            .arg(format!("{:.1}", timeout.as_secs_f64()))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let stderr = tempfile::tempfile().expect("temporary file for stderr");
        cmd.stderr(Stdio::from(stderr.try_clone().expect("clone file handle")));
        let command = format!("tests/amqp/{script} {}", args.join(" "));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {PYTHON} {}: {e}", path.display()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        // Ends at EOF, which comes at the latest when the child is killed.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let parsed = match serde_json::from_str::<Value>(&line) {
                    Ok(v) if v.is_object() => Line::Json(v),
                    _ => Line::Text(line),
                };
                if tx.send(parsed).is_err() {
                    break;
                }
            }
        });
        Client {
            command,
            child: Some(child),
            deadline: Instant::now() + timeout + KILL_MARGIN,
            rx,
            lines: Vec::new(),
            other: Vec::new(),
            cursor: 0,
            stderr,
        }
    }

    /// Waits (bounded by `timeout`) for the next line, not returned by an
    /// earlier call, whose `event` is `event`, and returns it. Fails early
    /// (with everything the program printed) if it exits first.
    pub fn wait_event(&mut self, event: &str, timeout: Duration) -> Result<Value, String> {
        self.wait_line(&format!("event {event:?}"), timeout, |v| {
            v["event"] == event
        })
    }

    /// Like [`Client::wait_event`] for any line for which `pred` holds.
    pub fn wait_line(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        // Bounded: every round either consumes a line or waits until the
        // deadline or the end of stdout.
        loop {
            if let Some(i) = self.lines[self.cursor..].iter().position(&pred) {
                let found = self.lines[self.cursor + i].clone();
                self.cursor += i + 1;
                return Ok(found);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no {what} within {timeout:?} from {}",
                    self.snapshot()
                ));
            }
            match self.rx.recv_timeout(left) {
                Ok(line) => self.push(line),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "the program ended before printing {what}: {}",
                        self.snapshot()
                    ));
                }
            }
        }
    }

    /// Every JSON line received so far (without waiting).
    pub fn lines_so_far(&mut self) -> &[Value] {
        while let Ok(line) = self.rx.try_recv() {
            self.push(line);
        }
        &self.lines
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits for the program to exit, bounded by its own timeout plus a
    /// margin (then it is killed), and returns everything it printed.
    pub fn finish(mut self) -> Report {
        let left = self.deadline.saturating_duration_since(Instant::now());
        self.finish_within(left)
    }

    /// Kills the program now (SIGKILL by PID) and returns what it printed.
    pub fn kill(mut self) -> Report {
        self.finish_within(Duration::ZERO)
    }

    fn finish_within(&mut self, left: Duration) -> Report {
        let (status, timed_out) = match self.child.as_mut() {
            Some(child) => wait_bounded(child, left),
            None => (None, false),
        };
        self.child = None;
        // The reader thread sees EOF once the process is gone; bounded.
        let drain_until = Instant::now() + Duration::from_secs(5);
        loop {
            let left = drain_until.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => self.push(line),
                Err(_) => break,
            }
        }
        let mut stderr = String::new();
        let _ = self.stderr.seek(SeekFrom::Start(0));
        let mut raw = Vec::new();
        let _ = self.stderr.read_to_end(&mut raw);
        stderr.push_str(&String::from_utf8_lossy(&raw));
        Report {
            command: self.command.clone(),
            status,
            timed_out,
            lines: std::mem::take(&mut self.lines),
            other: std::mem::take(&mut self.other),
            stderr,
        }
    }

    fn push(&mut self, line: Line) {
        match line {
            Line::Json(v) => self.lines.push(v),
            Line::Text(t) => self.other.push(t),
        }
    }

    fn snapshot(&mut self) -> String {
        let mut s = format!("{}\n--- JSON lines so far ---\n", self.command);
        for l in self.lines.iter().rev().take(20).rev() {
            s.push_str(&l.to_string());
            s.push('\n');
        }
        for t in &self.other {
            s.push_str(t);
            s.push('\n');
        }
        let _ = self.stderr.seek(SeekFrom::Start(0));
        let mut raw = Vec::new();
        let _ = self.stderr.read_to_end(&mut raw);
        let err = String::from_utf8_lossy(&raw);
        let tail: Vec<&str> = err.lines().rev().take(30).collect();
        s.push_str("--- stderr (tail) ---\n");
        for l in tail.into_iter().rev() {
            s.push_str(l);
            s.push('\n');
        }
        s
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = wait_bounded(child, Duration::ZERO);
        }
    }
}

/// Runs `tests/amqp/<script>` to completion (see [`Client::spawn`]).
pub fn run(script: &str, args: Vec<String>, timeout: Duration) -> Report {
    Client::spawn(script, args, timeout).finish()
}

/// Builds an argument list from anything string-like:
/// `args!["--port", port, "--count", 10]`.
#[macro_export]
macro_rules! args {
    ($($a:expr),* $(,)?) => {
        vec![$($a.to_string()),*]
    };
}
