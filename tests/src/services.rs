//! Threaded TCP services that stand for the "real service" behind a
//! `tcp_connector`.
//!
//! [`Service::spawn`] binds a free port on 127.0.0.1 and runs a bounded
//! accept loop on its own thread; each accepted connection gets a thread
//! running the handler. Handlers use [`Ctx`] for I/O that wakes up every
//! second to honour the service's stop flag and lifetime, so dropping a
//! [`Service`] ends all of its threads within about a second.
//!
//! Ready-made services:
//! - [`Service::echo`]: echoes until EOF, then half-closes (shutdown Write)
//!   and keeps reading until the client closes.
//! - [`Service::source_sink`]: the first byte picks the mode: `S` + u64
//!   (big-endian) count: send that many bytes (`u64::MAX`: until the client
//!   goes away), then half-close; `K`: read and discard to EOF, then send the
//!   byte count as a u64 and half-close; `E`: echo as above.
//! - [`Service::tagged_echo`]: sends `<tag>\n` first, then echoes as above,
//!   so a client can tell which of several sites answered ([`read_tag`]).
//!
//! [`Stats`] counts connections and bytes, for readiness ("the router opened
//! 1000 service connections") and for "the stalled flow stopped growing".

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::net::free_port;

/// Longest a service runs, whatever the test does.
pub const MAX_LIFETIME: Duration = Duration::from_secs(600);
/// I/O slice: how often blocked handler I/O rechecks stop and lifetime.
const SLICE: Duration = Duration::from_secs(1);

/// Counters of one service.
#[derive(Default, Debug)]
pub struct Stats {
    /// Connections accepted.
    pub accepted: AtomicUsize,
    /// Connections whose handler has returned.
    pub finished: AtomicUsize,
    /// Bytes written by handlers (through [`Ctx::write_all`]).
    pub sent: AtomicU64,
    /// Bytes read by handlers (through [`Ctx::read`]).
    pub received: AtomicU64,
}

/// What a handler gets besides its stream.
pub struct Ctx {
    stop: Arc<AtomicBool>,
    deadline: Instant,
    /// The service's counters.
    pub stats: Arc<Stats>,
}

impl Ctx {
    /// True once the service is being dropped or its lifetime is over.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }

    /// Reads some bytes; waits as long as the service runs. `Ok(0)` is EOF;
    /// `Err(TimedOut)` means the service is stopping.
    pub fn read(&self, s: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        let max = MAX_LIFETIME.as_secs() / SLICE.as_secs() + 2;
        for _ in 0..max {
            match s.read(buf) {
                Ok(n) => {
                    self.stats.received.fetch_add(n as u64, Ordering::Relaxed);
                    return Ok(n);
                }
                Err(e) if is_retry(&e) => {
                    if self.stopping() {
                        return Err(io::Error::new(ErrorKind::TimedOut, "service stopping"));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(ErrorKind::TimedOut, "service lifetime over"))
    }

    /// Reads exactly `buf.len()` bytes (EOF first is an error).
    pub fn read_exact(&self, s: &mut TcpStream, buf: &mut [u8]) -> io::Result<()> {
        let mut got = 0;
        for _ in 0..=buf.len() {
            if got == buf.len() {
                return Ok(());
            }
            match self.read(s, &mut buf[got..])? {
                0 => return Err(io::Error::new(ErrorKind::UnexpectedEof, "EOF")),
                n => got += n,
            }
        }
        Ok(())
    }

    /// Writes all of `data`; waits as long as the service runs.
    pub fn write_all(&self, s: &mut TcpStream, data: &[u8]) -> io::Result<()> {
        let mut off = 0;
        // Each round writes something, or burns one SLICE of waiting.
        let max = data.len() as u64 + MAX_LIFETIME.as_secs() / SLICE.as_secs() + 2;
        for _ in 0..max {
            if off == data.len() {
                return Ok(());
            }
            match s.write(&data[off..]) {
                Ok(0) => return Err(io::Error::new(ErrorKind::WriteZero, "write returned 0")),
                Ok(n) => {
                    off += n;
                    self.stats.sent.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if is_retry(&e) => {
                    if self.stopping() {
                        return Err(io::Error::new(ErrorKind::TimedOut, "service stopping"));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(ErrorKind::TimedOut, "service lifetime over"))
    }

    /// Reads and discards until EOF, error or stop. Returns bytes read.
    pub fn drain(&self, s: &mut TcpStream) -> u64 {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        let max = MAX_LIFETIME.as_secs() / SLICE.as_secs() + 1_000_000;
        for _ in 0..max {
            match self.read(s, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
        total
    }

    /// The echo behaviour: echo until EOF, half-close, read until the peer
    /// closes.
    pub fn echo(&self, s: &mut TcpStream) {
        let mut buf = vec![0u8; 64 * 1024];
        let max = MAX_LIFETIME.as_secs() / SLICE.as_secs() + 100_000_000;
        for _ in 0..max {
            match self.read(s, &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if self.write_all(s, &buf[..n]).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        let _ = s.shutdown(Shutdown::Write);
        self.drain(s);
    }
}

fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

type Handler = dyn Fn(TcpStream, &Ctx) + Send + Sync + 'static;

/// A running service (see the module docs). Dropping it stops it.
pub struct Service {
    name: String,
    port: u16,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    accept: Option<JoinHandle<()>>,
}

impl Service {
    /// Starts a service on a free port running `handler` for every
    /// connection, each on its own thread.
    pub fn spawn(name: &str, handler: impl Fn(TcpStream, &Ctx) + Send + Sync + 'static) -> Service {
        let handler: Arc<Handler> = Arc::new(handler);
        // A free port can be raced for; retry a few times.
        let mut bound = None;
        for _ in 0..20 {
            let port = free_port();
            if let Ok(l) = listen_wide(port) {
                bound = Some((l, port));
                break;
            }
        }
        let (listener, port) = bound.expect("bind a service port");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let deadline = Instant::now() + MAX_LIFETIME;
        let (stop2, stats2) = (stop.clone(), stats.clone());
        let tname = format!("svc-{name}");
        let accept = std::thread::Builder::new()
            .name(tname.clone())
            .spawn(move || accept_loop(listener, handler, stop2, stats2, deadline, &tname))
            .expect("spawn accept thread");
        Service {
            name: name.to_string(),
            port,
            stop,
            stats,
            accept: Some(accept),
        }
    }

    /// The echo service (see the module docs).
    pub fn echo() -> Service {
        Service::spawn("echo", |mut s, ctx| ctx.echo(&mut s))
    }

    /// The echo service announcing `tag` first (see the module docs).
    pub fn tagged_echo(tag: &str) -> Service {
        let line = format!("{tag}\n").into_bytes();
        Service::spawn(&format!("echo-{tag}"), move |mut s, ctx| {
            if ctx.write_all(&mut s, &line).is_ok() {
                ctx.echo(&mut s);
            }
        })
    }

    /// The source/sink service (see the module docs).
    pub fn source_sink() -> Service {
        let pattern: Arc<Vec<u8>> = Arc::new({
            use rand::RngCore;
            let mut v = vec![0u8; 256 * 1024];
            rand::rng().fill_bytes(&mut v);
            v
        });
        Service::spawn("source-sink", move |mut s, ctx| {
            let mut mode = [0u8; 1];
            if ctx.read_exact(&mut s, &mut mode).is_err() {
                return;
            }
            match mode[0] {
                b'S' => {
                    let mut n = [0u8; 8];
                    if ctx.read_exact(&mut s, &mut n).is_err() {
                        return;
                    }
                    let count = u64::from_be_bytes(n);
                    let mut left = count;
                    // Bounded by `count` chunks or by the service lifetime.
                    let max_chunks = count / pattern.len() as u64 + 2;
                    for _ in 0..max_chunks.min(u64::MAX / 2) {
                        if left == 0 {
                            break;
                        }
                        let k = left.min(pattern.len() as u64) as usize;
                        if ctx.write_all(&mut s, &pattern[..k]).is_err() {
                            return;
                        }
                        if count != u64::MAX {
                            left -= k as u64;
                        }
                    }
                    let _ = s.shutdown(Shutdown::Write);
                    ctx.drain(&mut s);
                }
                b'K' => {
                    let got = ctx.drain(&mut s);
                    if ctx.write_all(&mut s, &got.to_be_bytes()).is_ok() {
                        let _ = s.shutdown(Shutdown::Write);
                        ctx.drain(&mut s);
                    }
                }
                b'E' => ctx.echo(&mut s),
                _ => {}
            }
        })
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.stats.accepted.load(Ordering::Relaxed)
    }

    /// Bytes sent by handlers so far.
    pub fn sent(&self) -> u64 {
        self.stats.sent.load(Ordering::Relaxed)
    }

    /// Waits (bounded) until at least `n` connections were accepted.
    pub fn wait_accepted(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let max_polls = timeout.as_millis() as u64 / 10 + 2;
        for _ in 0..max_polls {
            if self.accepted() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.accepted() >= n
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.accept.take() {
            if h.join().is_err() {
                eprintln!("service {}: accept thread panicked", self.name);
            }
        }
    }
}

/// Reads the `<tag>\n` line a [`Service::tagged_echo`] sends first,
/// bounded by `deadline`; returns the tag.
pub fn read_tag(s: &mut TcpStream, deadline: Instant) -> io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    // Byte by byte: nothing after the newline may be consumed.
    for _ in 0..256 {
        crate::net::read_exact_by(s, &mut b, deadline)?;
        if b[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(b[0]);
    }
    Err(io::Error::new(ErrorKind::InvalidData, "tag line too long"))
}

/// Binds 127.0.0.1:`port` with SO_REUSEADDR and a listen backlog of 4096
/// (std's `TcpListener::bind` uses 128, which a burst of 1000 connects
/// from a router overflows: the kernel then drops handshakes and the
/// service sees connections seconds late).
pub fn listen_wide(port: u16) -> io::Result<TcpListener> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket syscalls on a descriptor we own until it is
    // handed to TcpListener (which then owns and closes it).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let listener = TcpListener::from_raw_fd(fd);
        let one: libc::c_int = 1;
        if libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        if libc::bind(
            fd,
            &sin as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        if libc::listen(fd, 4096) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(listener)
    }
}

fn accept_loop(
    listener: TcpListener,
    handler: Arc<Handler>,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    deadline: Instant,
    name: &str,
) {
    let max_rounds = MAX_LIFETIME.as_millis() as u64 / 2 + 1_000_000;
    for _ in 0..max_rounds {
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            return;
        }
        match listener.accept() {
            Ok((s, _)) => {
                stats.accepted.fetch_add(1, Ordering::Relaxed);
                let _ = s.set_nonblocking(false);
                let _ = s.set_nodelay(true);
                let _ = s.set_read_timeout(Some(SLICE));
                let _ = s.set_write_timeout(Some(SLICE));
                let ctx = Ctx {
                    stop: stop.clone(),
                    deadline,
                    stats: stats.clone(),
                };
                let h = handler.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("{name}-conn"))
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        h(s, &ctx);
                        ctx.stats.finished.fetch_add(1, Ordering::Relaxed);
                    });
                if let Err(e) = spawned {
                    eprintln!("service {name}: cannot spawn a connection thread: {e}");
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => {
                // EMFILE and friends: back off, keep serving.
                eprintln!("service {name}: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
