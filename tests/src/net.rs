//! Loopback networking helpers: free ports, bounded connects and reads.
//!
//! Ports: [`free_port`] hands out ports that are free now and were never
//! handed out before in this process. It prefers ports *below* the kernel's
//! ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`), because a
//! port inside that range can be taken meanwhile as the source port of any
//! outgoing connection (the tests open thousands) and a client polling an
//! unbound port inside the range can even connect to itself. Each process
//! starts at a random offset in that range (parallel test processes rarely
//! meet) and walks it with a process-wide atomic counter, checking each
//! candidate by binding it. If the range below is too small it falls back to
//! "bind 127.0.0.1:0, read the port, drop" plus a process-wide set of ports
//! already given out.
//!
//! Sockets: [`connect`] returns a stream with read and write timeouts set;
//! [`read_exact_by`], [`read_to_end_by`] and [`expect_closed`] bound every
//! read by an absolute deadline. [`wait_until_connectable`] and
//! [`refused_for`] poll with a bounded number of attempts.

use std::collections::HashSet;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Default per-operation socket timeout for test clients.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// `127.0.0.1:port`.
pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

struct PortRange {
    lo: u32,
    len: u32,
    start: u32,
}

fn port_range() -> Option<&'static PortRange> {
    static RANGE: OnceLock<Option<PortRange>> = OnceLock::new();
    RANGE
        .get_or_init(|| {
            let (eph_lo, eph_hi) =
                std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
                    .ok()
                    .and_then(|s| {
                        let mut it = s.split_whitespace().map(|x| x.parse::<u32>().ok());
                        Some((it.next()??, it.next()??))
                    })
                    .unwrap_or((32768, 60999));
            // Prefer [10000, eph_lo); else (eph_hi, 65535].
            let (lo, hi) = if eph_lo > 12000 {
                (10000, eph_lo)
            } else if eph_hi < 63000 {
                (eph_hi + 1, 65536)
            } else {
                return None;
            };
            let len = hi - lo;
            let seed = std::process::id() as u64
                ^ std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
            let start = (rand::random::<u32>() ^ (seed as u32)) % len;
            Some(PortRange { lo, len, start })
        })
        .as_ref()
}

/// A TCP port on 127.0.0.1 that is free now and was not handed out before
/// by this process (see the module docs). Panics if none can be found in a
/// bounded number of attempts.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    if let Some(r) = port_range() {
        for _ in 0..2000 {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            if n >= r.len {
                break; // walked the whole range once: fall back
            }
            let port = (r.lo + (r.start + n) % r.len) as u16;
            if port_is_free(port) {
                given.lock().unwrap_or_else(|e| e.into_inner()).insert(port);
                return port;
            }
        }
    }
    for _ in 0..1000 {
        let l = TcpListener::bind(addr(0)).expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local_addr").port();
        drop(l);
        if given.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
    panic!("no free port found on 127.0.0.1");
}

fn port_is_free(port: u16) -> bool {
    // std sets SO_REUSEADDR on listeners, as the router's listeners will,
    // so TIME_WAIT leftovers do not count as busy; anything bound does.
    TcpListener::bind(addr(port)).is_ok()
}

/// Connects to 127.0.0.1:`port` and sets read/write timeouts of
/// [`IO_TIMEOUT`] and TCP_NODELAY. The connect timeout is also
/// [`IO_TIMEOUT`]: a burst of connects can overflow a listen backlog, and a
/// dropped SYN is only retried after 1 s, then 3 s.
pub fn connect(port: u16) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr(port), IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Polls 127.0.0.1:`port` until a TCP connection succeeds or `timeout`
/// passes. Returns the time it took, or `None`. The probe connection is
/// closed at once (through a router this opens and closes one flow).
pub fn wait_until_connectable(port: u16, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    let deadline = start + timeout;
    let step = Duration::from_millis(25);
    let max_attempts = (timeout.as_millis() / step.as_millis()) as u64 + 2;
    for _ in 0..max_attempts {
        if let Ok(s) = TcpStream::connect_timeout(&addr(port), Duration::from_millis(500)) {
            drop(s);
            return Some(start.elapsed());
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(step);
    }
    None
}

/// Checks, for `duration`, every ~100 ms, that connecting to
/// 127.0.0.1:`port` fails. `Err` describes the first success.
pub fn refused_for(port: u16, duration: Duration) -> Result<(), String> {
    let start = Instant::now();
    let max_attempts = duration.as_millis() as u64 / 100 + 2;
    for _ in 0..max_attempts {
        if TcpStream::connect_timeout(&addr(port), Duration::from_millis(500)).is_ok() {
            return Err(format!(
                "127.0.0.1:{port} accepted a connection {:?} into a period where it must refuse",
                start.elapsed()
            ));
        }
        if start.elapsed() >= duration {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Makes the next `close` of this socket send a RST (SO_LINGER 0).
pub fn set_linger_zero(s: &TcpStream) -> io::Result<()> {
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd owned by `s`; pointer and length describe `lg`.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &lg as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Closes `s` with a RST instead of a FIN.
pub fn reset(s: TcpStream) {
    let _ = set_linger_zero(&s);
    drop(s);
}

fn remaining(deadline: Instant) -> io::Result<Duration> {
    let now = Instant::now();
    if now >= deadline {
        return Err(io::Error::new(ErrorKind::TimedOut, "deadline passed"));
    }
    Ok((deadline - now).max(Duration::from_millis(1)))
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// One `read` bounded by `deadline` (TimedOut past it).
pub fn read_some_by(s: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
    // A bounded number of EINTR retries.
    for _ in 0..100 {
        s.set_read_timeout(Some(remaining(deadline)?))?;
        match s.read(buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => {
                return Err(io::Error::new(ErrorKind::TimedOut, "read deadline passed"))
            }
            r => return r,
        }
    }
    Err(io::Error::other("read interrupted too often"))
}

/// Fills `buf` completely, bounded by `deadline`; EOF first is an error.
pub fn read_exact_by(s: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut got = 0;
    // Each read makes progress or returns; the count bound is the length.
    for _ in 0..=buf.len() {
        if got == buf.len() {
            return Ok(());
        }
        let n = read_some_by(s, &mut buf[got..], deadline)?;
        if n == 0 {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                format!("EOF after {got} of {} bytes", buf.len()),
            ));
        }
        got += n;
    }
    Ok(())
}

/// Reads until EOF (at most `max` bytes), bounded by `deadline`.
pub fn read_to_end_by(s: &mut TcpStream, max: usize, deadline: Instant) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..=max {
        let n = read_some_by(s, &mut buf, deadline)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
        if out.len() > max {
            return Err(io::Error::other(format!(
                "more than {max} bytes before EOF"
            )));
        }
    }
    Ok(out)
}

/// How a connection ended, as seen by a reader.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// Orderly EOF (FIN), after `n` more bytes.
    Eof(usize),
    /// An error other than a timeout (typically ECONNRESET), after `n` bytes.
    Error(ErrorKind, usize),
}

/// Reads and discards until the connection ends, bounded by `timeout`.
/// `Err` means it was still open at the deadline.
pub fn expect_closed(s: &mut TcpStream, timeout: Duration) -> Result<Closed, String> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    // Bounded: each round either reads data, ends, or times out.
    for _ in 0..1_000_000 {
        match read_some_by(s, &mut buf, deadline) {
            Ok(0) => return Ok(Closed::Eof(total)),
            Ok(n) => total += n,
            Err(e) if e.kind() == ErrorKind::TimedOut && Instant::now() >= deadline => {
                return Err(format!(
                    "connection still open after {timeout:?} ({total} bytes read)"
                ))
            }
            Err(e) => return Ok(Closed::Error(e.kind(), total)),
        }
    }
    Err("connection kept sending data".into())
}

/// One echo round trip on `s`: writes `payload`, reads the same length back
/// and checks it. Bounded by `timeout`.
pub fn round_trip(
    s: &mut TcpStream,
    payload: &[u8],
    timeout: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    let deadline = start + timeout;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| format!("set_write_timeout: {e}"))?;
    s.write_all(payload).map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0u8; payload.len()];
    read_exact_by(s, &mut back, deadline).map_err(|e| format!("read: {e}"))?;
    if back != payload {
        return Err("echo payload mismatch".into());
    }
    Ok(start.elapsed())
}

/// Connects to `port` and does one echo round trip of `payload`; closes the
/// connection politely (half-close, wait for the echo service's EOF).
pub fn echo_once(port: u16, payload: &[u8], timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let mut s = connect(port).map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
    round_trip(&mut s, payload, timeout)?;
    let _ = s.shutdown(Shutdown::Write);
    match expect_closed(&mut s, timeout) {
        Ok(Closed::Eof(0)) => Ok(start.elapsed()),
        Ok(other) => Err(format!(
            "after the round trip: {other:?}, expected a clean EOF"
        )),
        Err(e) => Err(e),
    }
}

/// Repeats [`echo_once`] until it succeeds or `timeout` passes (bounded
/// attempts, 100 ms apart). Returns the last error on failure.
pub fn echo_until_ok(port: u16, payload: &[u8], timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let mut last = String::from("no attempt made");
    let max_attempts = timeout.as_millis() as u64 / 100 + 2;
    for _ in 0..max_attempts {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            break;
        }
        match echo_once(port, payload, left.min(Duration::from_secs(5))) {
            Ok(_) => return Ok(start.elapsed()),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last)
}
