//! Client-side traffic generators for the data-path tests.
//!
//! - [`echo_transfer`]: one flow against an echo service: a writer thread
//!   sends N seeded-random bytes and half-closes while the calling thread
//!   reads the echo to EOF; SHA-256 of both directions are compared.
//! - [`download_for`]: against the source/sink service: asks for an
//!   endless stream and counts what arrives in a fixed time window.
//! - [`probe_echo`]: after a failure, opens a new short echo flow every few
//!   milliseconds (concurrently, each with a short timeout) and reports
//!   when the first one completed: the recovery time a client sees.
//! - [`watch_close`]: a thread that reads an open flow until it ends, to
//!   time how long a broken flow takes to end while the test does more.
//!
//! All are bounded by an absolute deadline.

use std::io::{ErrorKind, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

use crate::net::{addr, connect, expect_closed, read_exact_by, read_some_by, Closed};

/// What one echo transfer did.
#[derive(Debug, Clone)]
pub struct TransferReport {
    /// Bytes written by the client.
    pub sent: u64,
    /// Bytes read back before EOF.
    pub received: u64,
    /// SHA-256 of what was sent.
    pub sent_sha: [u8; 32],
    /// SHA-256 of what came back.
    pub received_sha: [u8; 32],
    /// From connect to EOF.
    pub elapsed: Duration,
}

impl TransferReport {
    /// True if the echo was byte-exact.
    pub fn exact(&self) -> bool {
        self.sent == self.received && self.sent_sha == self.received_sha
    }
}

/// Sends `nbytes` of random data (from `seed`) to the echo service behind
/// `port` while reading the echo concurrently; half-closes after the last
/// byte and reads to EOF. Bounded by `timeout` overall.
pub fn echo_transfer(
    port: u16,
    nbytes: u64,
    seed: u64,
    timeout: Duration,
) -> Result<TransferReport, String> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut reader = connect(port).map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
    let mut writer = reader.try_clone().map_err(|e| format!("clone: {e}"))?;
    let w = std::thread::Builder::new()
        .name(format!("writer-{seed}"))
        .stack_size(256 * 1024)
        .spawn(move || write_random(&mut writer, nbytes, seed, deadline))
        .map_err(|e| format!("spawn writer: {e}"))?;

    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    let mut read_err = None;
    // Bounded: each read returns data, EOF, or fails at the deadline; the
    // echo is at most `nbytes` long (+ one extra chunk to detect excess).
    let max_reads = nbytes + 2;
    for _ in 0..max_reads {
        match read_some_by(&mut reader, &mut buf, deadline) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                received += n as u64;
                if received > nbytes {
                    read_err = Some(format!("echo longer than sent: {received} > {nbytes}"));
                    break;
                }
            }
            Err(e) => {
                read_err = Some(format!("read after {received} of {nbytes} bytes: {e}"));
                break;
            }
        }
    }
    if read_err.is_some() {
        // Unblock the writer if it is stuck on a full window.
        let _ = reader.shutdown(Shutdown::Both);
    }
    let w = w.join().map_err(|_| "writer thread panicked".to_string())?;
    let (sent, sent_sha) = match w {
        Ok(v) => v,
        Err(e) => return Err(read_err.unwrap_or(e)),
    };
    if let Some(e) = read_err {
        return Err(e);
    }
    Ok(TransferReport {
        sent,
        received,
        sent_sha,
        received_sha: hasher.finalize().into(),
        elapsed: start.elapsed(),
    })
}

fn write_random(
    s: &mut TcpStream,
    nbytes: u64,
    seed: u64,
    deadline: Instant,
) -> Result<(u64, [u8; 32]), String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    let max_chunks = nbytes / chunk.len() as u64 + 2;
    for _ in 0..max_chunks {
        if sent >= nbytes {
            break;
        }
        let k = (nbytes - sent).min(chunk.len() as u64) as usize;
        rng.fill_bytes(&mut chunk[..k]);
        hasher.update(&chunk[..k]);
        write_all_by(s, &chunk[..k], deadline)
            .map_err(|e| format!("write after {sent} of {nbytes} bytes: {e}"))?;
        sent += k as u64;
    }
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown(Write): {e}"))?;
    Ok((sent, hasher.finalize().into()))
}

/// `write_all` bounded by `deadline`.
pub fn write_all_by(s: &mut TcpStream, data: &[u8], deadline: Instant) -> std::io::Result<()> {
    let mut off = 0;
    for _ in 0..=data.len() + 1000 {
        if off == data.len() {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                ErrorKind::TimedOut,
                "write deadline passed",
            ));
        }
        s.set_write_timeout(Some(left))?;
        match s.write(&data[off..]) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    ErrorKind::WriteZero,
                    "write returned 0",
                ))
            }
            Ok(n) => off += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(std::io::Error::new(
                    ErrorKind::TimedOut,
                    "write deadline passed",
                ))
            }
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("write made no progress"))
}

/// Asks the source/sink service behind `port` for an endless stream,
/// discards the first `warmup`, then counts bytes for `window`. Returns
/// bytes per second. The connection is then closed (with unread data: a
/// reset, which the service tolerates).
pub fn download_for(port: u16, warmup: Duration, window: Duration) -> Result<f64, String> {
    let mut s = connect(port).map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
    let mut req = vec![b'S'];
    req.extend_from_slice(&u64::MAX.to_be_bytes());
    s.write_all(&req).map_err(|e| format!("request: {e}"))?;
    let mut buf = vec![0u8; 256 * 1024];
    let t0 = Instant::now();
    let warm_end = t0 + warmup;
    let hard = t0 + warmup + window + Duration::from_secs(10);
    let mut counting: Option<(Instant, u64)> = None;
    // Bounded by the hard deadline (each read times out at it).
    for _ in 0..100_000_000u64 {
        let n = read_some_by(&mut s, &mut buf, hard).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the source ended the stream early".into());
        }
        let now = Instant::now();
        match &mut counting {
            None if now >= warm_end => counting = Some((now, 0)),
            None => {}
            Some((since, total)) => {
                *total += n as u64;
                let dt = now - *since;
                if dt >= window {
                    return Ok(*total as f64 / dt.as_secs_f64());
                }
            }
        }
    }
    Err("download loop bound reached".into())
}

/// What [`probe_echo`] saw.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    /// From `since` to the completion of the first successful probe.
    pub first_ok: Duration,
    /// Probes started.
    pub started: usize,
    /// Probes that had failed or timed out when the first one succeeded
    /// (probes still running then are not counted).
    pub failed: usize,
}

/// Starts a new echo probe against 127.0.0.1:`port` every `interval`
/// until one succeeds or `limit` has passed since the call: each probe
/// connects, sends 16 bytes, reads them back, all within `probe_timeout`,
/// on its own thread (so a probe that hangs does not delay the next).
/// Returns the time from `since` (e.g. the moment a link was cut) to the
/// completion of the first successful probe; `Err` (with the last error
/// seen) if none succeeded. Waits for every probe thread before
/// returning, so it takes at most `limit + probe_timeout`.
pub fn probe_echo(
    port: u16,
    since: Instant,
    interval: Duration,
    probe_timeout: Duration,
    limit: Duration,
) -> Result<ProbeReport, String> {
    let start = Instant::now();
    let first: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let failed = Arc::new(AtomicUsize::new(0));
    let last_err: Arc<Mutex<String>> = Arc::new(Mutex::new("no probe finished".into()));
    let mut handles: Vec<JoinHandle<()>> = Vec::new();
    let mut started = 0usize;
    let max_probes = (limit.as_micros() / interval.as_micros().max(1)) as usize + 2;
    for i in 0..max_probes {
        if first.lock().unwrap_or_else(|e| e.into_inner()).is_some() || start.elapsed() >= limit {
            break;
        }
        let (first2, failed2, last2) = (first.clone(), failed.clone(), last_err.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("probe-{i}"))
            .stack_size(128 * 1024)
            .spawn(move || {
                let payload = format!("probe {i:>10}\n");
                match probe_once(port, payload.as_bytes(), probe_timeout) {
                    Ok(()) => {
                        let now = Instant::now();
                        let mut f = first2.lock().unwrap_or_else(|e| e.into_inner());
                        if f.is_none_or(|t| now < t) {
                            *f = Some(now);
                        }
                    }
                    Err(e) => {
                        failed2.fetch_add(1, Ordering::Relaxed);
                        *last2.lock().unwrap_or_else(|e| e.into_inner()) = e;
                    }
                }
            });
        match spawned {
            Ok(h) => {
                handles.push(h);
                started += 1;
            }
            Err(e) => *last_err.lock().unwrap_or_else(|e| e.into_inner()) = format!("spawn: {e}"),
        }
        handles.retain(|h| !h.is_finished());
        std::thread::sleep(interval);
    }
    let failed_at_first = failed.load(Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let first = *first.lock().unwrap_or_else(|e| e.into_inner());
    match first {
        Some(t) => Ok(ProbeReport {
            first_ok: t.saturating_duration_since(since),
            started,
            failed: failed_at_first,
        }),
        None => Err(format!(
            "no echo probe succeeded within {limit:?} ({started} started; last error: {})",
            last_err.lock().unwrap_or_else(|e| e.into_inner())
        )),
    }
}

/// One probe: connect, write `payload`, read it back, all within `timeout`.
fn probe_once(port: u16, payload: &[u8], timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut s =
        TcpStream::connect_timeout(&addr(port), timeout).map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_nodelay(true);
    write_all_by(&mut s, payload, deadline).map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0u8; payload.len()];
    read_exact_by(&mut s, &mut back, deadline).map_err(|e| format!("read: {e}"))?;
    if back != payload {
        return Err("echo payload mismatch".into());
    }
    Ok(())
}

/// How and when a watched flow ended ([`watch_close`]).
#[derive(Debug)]
pub struct CloseReport {
    /// How it ended, or `Err` if it was still open at the deadline.
    pub outcome: Result<Closed, String>,
    /// From `since` to the end (or to the deadline).
    pub after: Duration,
}

/// Reads `s` on a new thread until it ends (EOF or error) or until
/// `since + limit`; join the handle for the report.
pub fn watch_close(mut s: TcpStream, since: Instant, limit: Duration) -> JoinHandle<CloseReport> {
    std::thread::Builder::new()
        .name("watch-close".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            let left = (since + limit).saturating_duration_since(Instant::now());
            let outcome = expect_closed(&mut s, left.max(Duration::from_millis(1)));
            CloseReport {
                outcome,
                after: since.elapsed(),
            }
        })
        .expect("spawn watch-close thread")
}
