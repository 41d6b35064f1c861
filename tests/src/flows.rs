//! Client-side traffic generators for the data-path tests.
//!
//! - [`echo_transfer`]: one flow against an echo service: a writer thread
//!   sends N seeded-random bytes and half-closes while the calling thread
//!   reads the echo to EOF; SHA-256 of both directions are compared.
//! - [`download_for`]: against the source/sink service: asks for an
//!   endless stream and counts what arrives in a fixed time window.
//!
//! Both are bounded by an absolute deadline.

use std::io::{ErrorKind, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

use crate::net::{connect, read_some_by};

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
