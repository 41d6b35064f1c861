//! Data and services for the half-close tests (`half_close.rs` through one
//! link, `multihop.rs` through a transit router).
//!
//! - [`random_bytes`]: seeded random data.
//! - [`summary`]: the line `got <n> bytes sha256 <hex>\n` for some data.
//! - [`reply_after_eof`]: reads to EOF, then replies.
//! - [`greet_then_count`]: greets and half-closes first, then counts.
//! - [`next_report`]: the next report of such a service that is not from a
//!   readiness probe.

use std::net::Shutdown;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

use crate::Service;

/// `n` random bytes from `seed`.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn summary_of(n: u64, sha: &[u8]) -> String {
    let hex: String = sha.iter().map(|b| format!("{b:02x}")).collect();
    format!("got {n} bytes sha256 {hex}\n")
}

/// The line [`reply_after_eof`] sends for `data`: its length and SHA-256.
pub fn summary(data: &[u8]) -> String {
    summary_of(data.len() as u64, &Sha256::digest(data))
}

/// Reads to EOF, then replies with the [`summary`] line of what it read and
/// `body`, then half-closes.
pub fn reply_after_eof(body: Vec<u8>) -> Service {
    Service::spawn("reply-after-eof", move |mut s, ctx| {
        let mut hasher = Sha256::new();
        let mut n = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        for _ in 0..1_000_000 {
            match ctx.read(&mut s, &mut buf) {
                Ok(0) => break,
                Ok(k) => {
                    hasher.update(&buf[..k]);
                    n += k as u64;
                }
                Err(_) => return,
            }
        }
        let line = summary_of(n, &hasher.finalize());
        if ctx.write_all(&mut s, line.as_bytes()).is_err() || ctx.write_all(&mut s, &body).is_err()
        {
            return;
        }
        let _ = s.shutdown(Shutdown::Write);
        ctx.drain(&mut s);
    })
}

/// Sends a greeting and half-closes, then reads to EOF and reports
/// (bytes, SHA-256) of what it read.
pub fn greet_then_count() -> (mpsc::Receiver<(u64, Vec<u8>)>, Service) {
    let (tx, rx) = mpsc::channel::<(u64, Vec<u8>)>();
    let tx = Mutex::new(tx);
    let svc = Service::spawn("greet-and-half-close", move |mut s, ctx| {
        if ctx.write_all(&mut s, b"hello from the service\n").is_err() {
            return;
        }
        let _ = s.shutdown(Shutdown::Write);
        let mut hasher = Sha256::new();
        let mut n = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        for _ in 0..1_000_000 {
            match ctx.read(&mut s, &mut buf) {
                Ok(0) => break,
                Ok(k) => {
                    hasher.update(&buf[..k]);
                    n += k as u64;
                }
                Err(_) => break,
            }
        }
        let _ = tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((n, hasher.finalize().to_vec()));
    });
    (rx, svc)
}

/// The next (bytes, outcome) report within `timeout`, skipping the reports
/// of readiness probes (0 bytes); None if none came.
pub fn next_report<T>(rx: &mpsc::Receiver<(u64, T)>, timeout: Duration) -> Option<(u64, T)> {
    let deadline = Instant::now() + timeout;
    for _ in 0..100 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((0, _)) => continue,
            Ok(r) => return Some(r),
            Err(_) => return None,
        }
    }
    None
}
