//! An in-process TCP relay for cutting or silencing one inter-router link.
//!
//! A test puts a [`Relay`] between a router's inter-router connector and its
//! peer's listener (the connector dials [`Relay::port`], the relay dials
//! the listener) and then breaks the link in one of two ways:
//!
//! - [`Relay::kill`]: every relayed connection is shut down on both sides
//!   at once (both routers read EOF), and the listening socket is shut down
//!   so that new connections are refused. Final: a killed relay stays dead.
//! - [`Relay::freeze`]: nothing is forwarded any more in either direction,
//!   but every socket stays open (no FIN, no RST): a silent link that only
//!   the routers' dead interval can detect. New connections are still
//!   accepted, but the relay does not dial the target for them until
//!   [`Relay::thaw`]. When `freeze` returns, no further byte is written.
//!
//! Forwarding is byte-exact and keeps half-closes (EOF on one side becomes
//! `shutdown(Write)` on the other); a read or write error on either side
//! shuts both sockets down. [`Relay::bytes`] counts the bytes forwarded, so
//! a test can tell whether a flow's data took the link.
//!
//! Threads: one accept thread (polling its socket every 100 ms), and per
//! relayed connection two pump threads whose reads and writes time out
//! every 50 ms to recheck the relay's state. Every loop is bounded by
//! [`MAX_LIFETIME`]; dropping the relay shuts every socket down and joins
//! every thread.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::net::{addr, free_port};

/// Longest a relay runs, whatever the test does.
pub const MAX_LIFETIME: Duration = Duration::from_secs(600);
/// How often blocked pump reads and writes recheck the relay's state.
const SLICE: Duration = Duration::from_millis(50);
/// How often the accept thread rechecks the relay's state.
const ACCEPT_SLICE_MS: i32 = 100;
/// Timeout for dialling the target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Size of each pump's buffer.
const BUF: usize = 64 * 1024;

/// What a relay does with its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forwarding both ways.
    Forwarding,
    /// Holding every socket open, forwarding nothing.
    Frozen,
    /// Every connection shut down, new ones refused. Final.
    Killed,
}

/// A running relay (see the module docs). Dropping it stops everything.
pub struct Relay {
    port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Relay {
    /// Starts a relay on a free 127.0.0.1 port forwarding to
    /// 127.0.0.1:`target_port`. The target is dialled once per accepted
    /// connection; if it refuses, the accepted connection is closed.
    pub fn start(target_port: u16) -> Relay {
        // A free port can be raced for; retry a few times.
        let mut bound = None;
        for _ in 0..20 {
            let port = free_port();
            if let Ok(l) = TcpListener::bind(addr(port)) {
                bound = Some((l, port));
                break;
            }
        }
        let (listener, port) = bound.expect("bind a relay port");
        listener
            .set_nonblocking(true)
            .expect("nonblocking relay listener");
        let shared = Arc::new(Shared {
            target: target_port,
            mode: Mutex::new(Mode::Forwarding),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            deadline: Instant::now() + MAX_LIFETIME,
            listener: listener.try_clone().expect("clone relay listener"),
            conns: Mutex::new(HashMap::new()),
            workers: Mutex::new(Vec::new()),
            writing: AtomicUsize::new(0),
            to_target: AtomicU64::new(0),
            from_target: AtomicU64::new(0),
            accepted: AtomicUsize::new(0),
        });
        let s2 = shared.clone();
        let accept = std::thread::Builder::new()
            .name(format!("relay-{port}"))
            .spawn(move || accept_loop(listener, s2))
            .expect("spawn relay accept thread");
        Relay {
            port,
            shared,
            accept: Some(accept),
        }
    }

    /// The port the relay listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port it forwards to (127.0.0.1).
    pub fn target(&self) -> u16 {
        self.shared.target
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.shared.lock_mode()
    }

    /// Shuts down every relayed connection on both sides and the listening
    /// socket (new connections are refused). Final; idempotent.
    pub fn kill(&self) {
        self.shared.set_mode(Mode::Killed);
        self.shared.shutdown_all();
    }

    /// Stops forwarding in both directions, keeping every socket open.
    /// Returns once no pump is writing any more (bounded: a write times
    /// out after 50 ms). No effect on a killed relay.
    pub fn freeze(&self) {
        {
            let mut m = self.shared.lock_mode();
            if *m == Mode::Killed {
                return;
            }
            *m = Mode::Frozen;
        }
        // A pump announces a write (`writing`) before checking the mode,
        // so once the mode is Frozen, waiting for `writing == 0` waits for
        // the last write that saw Forwarding.
        let deadline = Instant::now() + SLICE * 10;
        for _ in 0..10_000 {
            if self.shared.writing.load(Ordering::SeqCst) == 0 || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Resumes forwarding after [`Relay::freeze`] (and dials the target for
    /// connections accepted meanwhile). No effect on a killed relay.
    pub fn thaw(&self) {
        let mut m = self.shared.lock_mode();
        if *m == Mode::Frozen {
            *m = Mode::Forwarding;
        }
        self.shared.changed.notify_all();
    }

    /// Bytes forwarded so far, both directions together (a byte counts
    /// once written to the far socket).
    pub fn bytes(&self) -> u64 {
        self.bytes_to_target() + self.bytes_from_target()
    }

    /// Bytes forwarded towards the target so far.
    pub fn bytes_to_target(&self) -> u64 {
        self.shared.to_target.load(Ordering::SeqCst)
    }

    /// Bytes forwarded from the target so far.
    pub fn bytes_from_target(&self) -> u64 {
        self.shared.from_target.load(Ordering::SeqCst)
    }

    /// Connections accepted so far (a reconnecting router adds one).
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Connections currently relayed or held (accepted and not yet ended).
    pub fn open_connections(&self) -> usize {
        self.shared.lock_conns().len()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.set_mode(Mode::Killed);
        self.shared.shutdown_all();
        if let Some(h) = self.accept.take() {
            if h.join().is_err() {
                eprintln!("relay {}: accept thread panicked", self.port);
            }
        }
        // The accept thread has ended: no new workers can appear.
        let workers = std::mem::take(
            &mut *self
                .shared
                .workers
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for h in workers {
            if h.join().is_err() {
                eprintln!("relay {}: connection thread panicked", self.port);
            }
        }
    }
}

/// State shared by the relay's threads.
struct Shared {
    target: u16,
    mode: Mutex<Mode>,
    /// Notified on every mode change.
    changed: Condvar,
    /// Set by Drop.
    stop: AtomicBool,
    deadline: Instant,
    /// A handle on the listening socket, to shut it down.
    listener: TcpListener,
    /// Clones of every live connection's sockets, by connection id.
    conns: Mutex<HashMap<u64, Vec<TcpStream>>>,
    /// Connection threads, joined on drop.
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Pumps inside a `write` call that saw `Forwarding`.
    writing: AtomicUsize,
    to_target: AtomicU64,
    from_target: AtomicU64,
    accepted: AtomicUsize,
}

impl Shared {
    fn lock_mode(&self) -> MutexGuard<'_, Mode> {
        self.mode.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_conns(&self) -> MutexGuard<'_, HashMap<u64, Vec<TcpStream>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_mode(&self, mode: Mode) {
        *self.lock_mode() = mode;
        self.changed.notify_all();
    }

    fn ending(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || Instant::now() >= self.deadline
    }

    /// Shuts down the listening socket (connects are refused from now on:
    /// on Linux a listening socket shut down for reading leaves the LISTEN
    /// state) and both sides of every connection.
    fn shutdown_all(&self) {
        // SAFETY: shutdown(2) on a descriptor owned by `self.listener`.
        unsafe {
            libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR);
        }
        for socks in self.lock_conns().values() {
            for s in socks {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// Registers a socket of connection `id`. Returns false (after shutting
    /// it down) if the relay was killed meanwhile: `kill` sets the mode
    /// before it walks the registry, and both happen under the registry's
    /// lock here, so no socket escapes a kill.
    fn register(&self, id: u64, s: &TcpStream) -> bool {
        let mut conns = self.lock_conns();
        if *self.lock_mode() == Mode::Killed || self.ending() {
            let _ = s.shutdown(Shutdown::Both);
            return false;
        }
        match s.try_clone() {
            Ok(c) => {
                conns.entry(id).or_default().push(c);
                true
            }
            Err(_) => {
                let _ = s.shutdown(Shutdown::Both);
                false
            }
        }
    }

    fn unregister(&self, id: u64) {
        self.lock_conns().remove(&id);
    }

    /// Blocks while the relay is frozen. True when forwarding; false when
    /// killed or stopping.
    fn wait_forwarding(&self) -> bool {
        let mut m = self.lock_mode();
        let max_waits = MAX_LIFETIME.as_millis() as u64 / SLICE.as_millis() as u64 + 2;
        for _ in 0..max_waits {
            if self.ending() {
                return false;
            }
            match *m {
                Mode::Forwarding => return true,
                Mode::Killed => return false,
                Mode::Frozen => {
                    m = self
                        .changed
                        .wait_timeout(m, SLICE)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
        false
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut next_id = 0u64;
    let max_rounds = MAX_LIFETIME.as_millis() as u64 / ACCEPT_SLICE_MS as u64 + 1_000_000;
    for _ in 0..max_rounds {
        if shared.ending() || *shared.lock_mode() == Mode::Killed {
            return;
        }
        if !poll_readable(&listener, ACCEPT_SLICE_MS) {
            continue;
        }
        match listener.accept() {
            Ok((s, _)) => {
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                let id = next_id;
                next_id += 1;
                let s2 = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("relay-conn-{id}"))
                    .stack_size(256 * 1024)
                    .spawn(move || relay_connection(id, s, &s2));
                let mut workers = shared.workers.lock().unwrap_or_else(|e| e.into_inner());
                workers.retain(|h| !h.is_finished());
                match spawned {
                    Ok(h) => workers.push(h),
                    Err(e) => eprintln!("relay: cannot spawn a connection thread: {e}"),
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                // EINVAL after kill's shutdown; anything else: back off.
                if *shared.lock_mode() == Mode::Killed {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// True if `listener` has a connection to accept (or an error) within
/// `timeout_ms`.
fn poll_readable(listener: &TcpListener, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for a descriptor owned by `listener`.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    rc > 0
}

/// Which way a pump forwards (for the byte counters).
#[derive(Clone, Copy)]
enum Direction {
    ToTarget,
    FromTarget,
}

/// One accepted connection: waits while frozen, dials the target, pumps
/// both ways (one direction on a second thread), then unregisters.
fn relay_connection(id: u64, down: TcpStream, shared: &Arc<Shared>) {
    if !shared.register(id, &down) {
        return;
    }
    let up = dial(shared);
    let up = match up {
        Some(up) if shared.register(id, &up) => up,
        _ => {
            shared.unregister(id);
            let _ = down.shutdown(Shutdown::Both);
            return;
        }
    };
    for s in [&down, &up] {
        let _ = s.set_nonblocking(false);
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(SLICE));
        let _ = s.set_write_timeout(Some(SLICE));
    }
    let clones = (up.try_clone(), down.try_clone());
    if let (Ok(up2), Ok(down2)) = clones {
        let s2 = shared.clone();
        let back = std::thread::Builder::new()
            .name(format!("relay-pump-{id}"))
            .stack_size(256 * 1024)
            .spawn(move || pump(up2, down2, Direction::FromTarget, &s2));
        pump(down, up, Direction::ToTarget, shared);
        if let Ok(h) = back {
            let _ = h.join();
        }
    } else {
        let _ = down.shutdown(Shutdown::Both);
        let _ = up.shutdown(Shutdown::Both);
    }
    shared.unregister(id);
}

/// Dials the target once forwarding is allowed.
fn dial(shared: &Shared) -> Option<TcpStream> {
    if !shared.wait_forwarding() {
        return None;
    }
    TcpStream::connect_timeout(&addr(shared.target), CONNECT_TIMEOUT).ok()
}

/// Copies `from` to `to` until EOF, an error, a kill or the relay's end.
/// EOF becomes `shutdown(Write)` on `to`; an error shuts both down.
fn pump(mut from: TcpStream, mut to: TcpStream, dir: Direction, shared: &Shared) {
    let mut buf = vec![0u8; BUF];
    let max_rounds = MAX_LIFETIME.as_millis() as u64 / SLICE.as_millis() as u64 + 100_000_000;
    for _ in 0..max_rounds {
        if !shared.wait_forwarding() {
            return;
        }
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if write_out(&mut to, &buf[..n], dir, shared).is_err() {
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                    return;
                }
            }
            Err(e) if is_retry(&e) => {}
            Err(_) => {
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

/// Writes all of `data`, pausing while frozen. Each `write` call is
/// announced in `writing` before the mode is checked (see
/// [`Relay::freeze`]).
fn write_out(to: &mut TcpStream, data: &[u8], dir: Direction, shared: &Shared) -> io::Result<()> {
    let counter = match dir {
        Direction::ToTarget => &shared.to_target,
        Direction::FromTarget => &shared.from_target,
    };
    let mut off = 0;
    let max_rounds =
        data.len() as u64 + MAX_LIFETIME.as_millis() as u64 / SLICE.as_millis() as u64 + 2;
    for _ in 0..max_rounds {
        if off == data.len() {
            return Ok(());
        }
        if !shared.wait_forwarding() {
            return Err(io::Error::other("relay killed or stopping"));
        }
        shared.writing.fetch_add(1, Ordering::SeqCst);
        if *shared.lock_mode() != Mode::Forwarding {
            shared.writing.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let r = to.write(&data[off..]);
        // Counted before `writing` drops, so the count is final when
        // `freeze` returns.
        if let Ok(n) = r {
            counter.fetch_add(n as u64, Ordering::SeqCst);
        }
        shared.writing.fetch_sub(1, Ordering::SeqCst);
        match r {
            Ok(0) => return Err(io::Error::new(ErrorKind::WriteZero, "write returned 0")),
            Ok(n) => off += n,
            Err(e) if is_retry(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(ErrorKind::TimedOut, "relay lifetime over"))
}

fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::echo_transfer;
    use crate::net::{connect, expect_closed, read_exact_by, read_some_by, round_trip, Closed};
    use crate::services::Service;
    use std::sync::mpsc;

    const T: Duration = Duration::from_secs(5);

    /// A one-connection-at-a-time server handing each accepted stream to
    /// the test over a channel.
    fn plain_server() -> (u16, mpsc::Receiver<TcpStream>, JoinHandle<()>) {
        let l = TcpListener::bind(addr(0)).expect("bind");
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = mpsc::channel();
        let h = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            for _ in 0..30_000 {
                if Instant::now() >= deadline {
                    return;
                }
                match l.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        if tx.send(s).is_err() {
                            return;
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        (port, rx, h)
    }

    #[test]
    fn forwards_byte_exact_both_ways_and_counts() {
        let svc = Service::echo();
        let relay = Relay::start(svc.port());
        let n = 4 << 20;
        let r = echo_transfer(relay.port(), n, 17, Duration::from_secs(30)).expect("transfer");
        assert!(r.exact() && r.sent == n, "echo through the relay differs");
        // The echo's half-close came back as EOF, so every byte was written.
        assert_eq!(relay.bytes_to_target(), n);
        assert_eq!(relay.bytes_from_target(), n);
        assert_eq!(relay.bytes(), 2 * n);
        assert_eq!(relay.connections(), 1);
    }

    #[test]
    fn keeps_half_close() {
        let (port, rx, _h) = plain_server();
        let relay = Relay::start(port);
        let mut c = connect(relay.port()).unwrap();
        let mut s = rx.recv_timeout(T).expect("relayed connection");
        c.write_all(b"ping").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut b = [0u8; 4];
        read_exact_by(&mut s, &mut b, Instant::now() + T).unwrap();
        assert_eq!(&b, b"ping");
        assert_eq!(expect_closed(&mut s, T), Ok(Closed::Eof(0)));
        // The other direction still works after the client's half-close.
        s.write_all(b"pong").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        read_exact_by(&mut c, &mut b, Instant::now() + T).unwrap();
        assert_eq!(&b, b"pong");
        assert_eq!(expect_closed(&mut c, T), Ok(Closed::Eof(0)));
    }

    #[test]
    fn kill_closes_both_sides_and_refuses_new_connections() {
        let (port, rx, _h) = plain_server();
        let relay = Relay::start(port);
        let mut c = connect(relay.port()).unwrap();
        let mut s = rx.recv_timeout(T).expect("relayed connection");
        round_trip_via(&mut c, &mut s);
        let start = Instant::now();
        relay.kill();
        let limit = Duration::from_millis(500);
        assert_closed(&mut c, limit);
        assert_closed(&mut s, limit);
        assert!(start.elapsed() < limit, "kill took {:?}", start.elapsed());
        let e = TcpStream::connect_timeout(&addr(relay.port()), T).expect_err("refused");
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
        assert_eq!(relay.mode(), Mode::Killed);
        relay.thaw();
        assert_eq!(relay.mode(), Mode::Killed, "kill is final");
    }

    #[test]
    fn freeze_holds_everything_open_and_thaw_resumes() {
        let (port, rx, _h) = plain_server();
        let relay = Relay::start(port);
        let mut c = connect(relay.port()).unwrap();
        let mut s = rx.recv_timeout(T).expect("relayed connection");
        round_trip_via(&mut c, &mut s);

        relay.freeze();
        let before = relay.bytes();
        c.write_all(b"held up").unwrap();
        s.write_all(b"held down").unwrap();
        let mut b = [0u8; 16];
        let quiet = Instant::now() + Duration::from_millis(300);
        // Nothing arrives and nothing closes: a timeout on both sides.
        let r = read_some_by(&mut s, &mut b, quiet);
        assert_eq!(r.map_err(|e| e.kind()), Err(ErrorKind::TimedOut));
        let r = read_some_by(&mut c, &mut b, Instant::now() + Duration::from_millis(50));
        assert_eq!(r.map_err(|e| e.kind()), Err(ErrorKind::TimedOut));
        assert_eq!(relay.bytes(), before, "bytes forwarded while frozen");
        // A new connection is accepted but not passed on.
        let mut c2 = connect(relay.port()).expect("accepted while frozen");
        c2.write_all(b"new").unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        assert_eq!(relay.connections(), 2);

        relay.thaw();
        let mut got = [0u8; 7];
        read_exact_by(&mut s, &mut got, Instant::now() + T).unwrap();
        assert_eq!(&got, b"held up");
        let mut got = [0u8; 9];
        read_exact_by(&mut c, &mut got, Instant::now() + T).unwrap();
        assert_eq!(&got, b"held down");
        let mut s2 = rx.recv_timeout(T).expect("held connection dialled on thaw");
        let mut got = [0u8; 3];
        read_exact_by(&mut s2, &mut got, Instant::now() + T).unwrap();
        assert_eq!(&got, b"new");
    }

    #[test]
    fn kill_while_frozen_closes_held_connections() {
        let (port, rx, _h) = plain_server();
        let relay = Relay::start(port);
        let mut c = connect(relay.port()).unwrap();
        let mut s = rx.recv_timeout(T).expect("relayed connection");
        relay.freeze();
        let mut held = connect(relay.port()).expect("accepted while frozen");
        relay.kill();
        let limit = Duration::from_millis(500);
        assert_closed(&mut c, limit);
        assert_closed(&mut s, limit);
        assert_closed(&mut held, limit);
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    }

    #[test]
    fn drop_stops_threads_and_closes_connections() {
        let svc = Service::echo();
        let relay = Relay::start(svc.port());
        let port = relay.port();
        let mut c = connect(port).unwrap();
        round_trip(&mut c, b"x", T).unwrap();
        relay.freeze();
        let mut held = connect(port).unwrap();
        let start = Instant::now();
        drop(relay);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "drop took {:?}",
            start.elapsed()
        );
        assert_closed(&mut c, T);
        assert_closed(&mut held, T);
        assert!(TcpStream::connect_timeout(&addr(port), T).is_err());
    }

    #[test]
    fn target_refusing_closes_the_accepted_connection() {
        let dead = free_port();
        let relay = Relay::start(dead);
        let mut c = connect(relay.port()).unwrap();
        assert_closed(&mut c, T);
        for _ in 0..100 {
            if relay.open_connections() == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(relay.open_connections(), 0);
    }

    /// The connection ends (EOF or error) within `limit`.
    fn assert_closed(s: &mut TcpStream, limit: Duration) {
        if let Err(e) = expect_closed(s, limit) {
            panic!("{e}");
        }
    }

    fn round_trip_via(c: &mut TcpStream, s: &mut TcpStream) {
        let mut b = [0u8; 5];
        c.write_all(b"hello").unwrap();
        read_exact_by(s, &mut b, Instant::now() + T).unwrap();
        s.write_all(&b).unwrap();
        read_exact_by(c, &mut b, Instant::now() + T).unwrap();
        assert_eq!(&b, b"hello");
    }
}
