//! `tether demo`: a three-site network on loopback with traffic flowing.
//!
//! Generates a CA and router certificates in a temporary folder, starts
//! three `tether router` processes linked in a triangle (east, west, north;
//! the direct east-west link dearer than the path through north),
//! runs a small echo service behind a `tcp_connector` in west and reaches it
//! through a `tcp_listener` in east (relayed by north), then drives request/response and bulk
//! traffic through it and prints, once a second, what flows where with
//! throughput and latency. Stops on Ctrl-C or after `--duration`; every
//! process it started is stopped by PID and the folder removed.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const SITES: [&str; 3] = ["east", "west", "north"];
const PING_CLIENTS: usize = 2;
const PING_SIZE: usize = 64;
const BULK_CHUNK: usize = 256 * 1024;

struct Stats {
    bytes: AtomicU64,
    round_trips: AtomicU64,
    flows: AtomicU64,
    errors: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
}

struct Children(Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the demo; see the module documentation.
pub fn run(duration: Option<u64>, base_port: u16) -> Result<(), String> {
    let dir = TempDir(std::env::temp_dir().join(format!("tether-demo-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)
        .map_err(|e| format!("cannot create {}: {e}", dir.0.display()))?;
    crate::tls::generate_site_certs(&dir.0, &SITES).map_err(|e| format!("certificates: {e}"))?;

    let port = |i: u16| base_port + i;
    let (service_port, east_listener_port, north_listener_port) = (port(3), port(4), port(5));
    // Inter-router listeners: east port(0), west port(1), north port(2).
    // Triangle: east->west (cost 5), east->north (1), west->north (1): the
    // least-cost path from east to west goes through north.
    let links: [(usize, u16, u32); 3] = [(0, port(1), 5), (0, port(2), 1), (1, port(2), 1)];
    for (i, site) in SITES.iter().enumerate() {
        let mut cfg = format!(
            "[router]\nid = \"{site}\"\nhello_interval_ms = 500\ndead_interval_ms = 1500\n\n\
             [[listener]]\nrole = \"inter-router\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"site\"\n\n",
            port(i as u16)
        );
        for (from, to, cost) in links {
            if from == i {
                cfg += &format!(
                    "[[connector]]\nrole = \"inter-router\"\nhost = \"127.0.0.1\"\nport = {to}\ncost = {cost}\ntls = \"site\"\n\n"
                );
            }
        }
        match *site {
            "east" => {
                cfg += &format!("[[tcp_listener]]\naddress = \"echo\"\nhost = \"127.0.0.1\"\nport = {east_listener_port}\n\n")
            }
            "west" => {
                cfg += &format!("[[tcp_connector]]\naddress = \"echo\"\nhost = \"127.0.0.1\"\nport = {service_port}\n\n")
            }
            _ => {
                cfg += &format!("[[tcp_listener]]\naddress = \"echo\"\nhost = \"127.0.0.1\"\nport = {north_listener_port}\n\n")
            }
        }
        cfg += &format!(
            "[tls.site]\nca = \"ca.pem\"\ncert = \"{site}.pem\"\nkey = \"{site}-key.pem\"\n"
        );
        std::fs::write(dir.0.join(format!("{site}.toml")), cfg).map_err(|e| e.to_string())?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    install_ctrl_c(stop.clone());

    let service = TcpListener::bind(("127.0.0.1", service_port))
        .map_err(|e| format!("echo service on port {service_port}: {e}"))?;
    let svc_stop = stop.clone();
    thread::spawn(move || echo_service(service, svc_stop));

    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut children = Children(Vec::new());
    for site in SITES {
        let log =
            std::fs::File::create(dir.0.join(format!("{site}.log"))).map_err(|e| e.to_string())?;
        let child = Command::new(&exe)
            .arg("router")
            .arg("--config")
            .arg(dir.0.join(format!("{site}.toml")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start router {site}: {e}"))?;
        println!("started router {site} (pid {})", child.id());
        children.0.push((site.to_string(), child));
    }
    println!(
        "sites: east, west, north linked in a triangle over mutual TLS (certificates in {});\n\
         link costs east-west 5, east-north 1, north-west 1: east reaches west through north",
        dir.0.display()
    );
    println!(
        "service 'echo' runs in west on 127.0.0.1:{service_port}; east offers it on 127.0.0.1:{east_listener_port}, north on 127.0.0.1:{north_listener_port}"
    );

    // The listener opens once west's connector is reachable.
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", east_listener_port)).is_err()
        || TcpStream::connect(("127.0.0.1", north_listener_port)).is_err()
    {
        if Instant::now() > deadline || stop.load(Ordering::Relaxed) {
            print_logs(&dir.0);
            return Err("the network did not come up within 15 s (router logs above)".into());
        }
        thread::sleep(Duration::from_millis(100));
    }
    println!("network up: 'echo' reachable from east and north\n");

    let stats = Arc::new(Stats {
        bytes: AtomicU64::new(0),
        round_trips: AtomicU64::new(0),
        flows: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        latencies_us: Mutex::new(Vec::new()),
    });
    let mut workers = Vec::new();
    for _ in 0..PING_CLIENTS {
        let (s, st) = (stats.clone(), stop.clone());
        workers.push(thread::spawn(move || {
            ping_client(east_listener_port, s, st)
        }));
    }
    {
        let (s, st) = (stats.clone(), stop.clone());
        workers.push(thread::spawn(move || {
            bulk_client(east_listener_port, s, st)
        }));
    }
    {
        let (s, st) = (stats.clone(), stop.clone());
        workers.push(thread::spawn(move || {
            ping_client(north_listener_port, s, st)
        }));
    }

    let started = Instant::now();
    let mut last_bytes = 0;
    let mut last_rt = 0;
    let mut tick = Instant::now();
    println!("  time  flows  path                                        throughput     round trips/s  rtt p50   rtt p99  errors");
    while !stop.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(1000));
        let elapsed = tick.elapsed().as_secs_f64();
        tick = Instant::now();
        let bytes = stats.bytes.load(Ordering::Relaxed);
        let rt = stats.round_trips.load(Ordering::Relaxed);
        let mut lat = std::mem::take(&mut *stats.latencies_us.lock().map_err(|_| "stats lock")?);
        lat.sort_unstable();
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        println!(
            "{:>5}s  {:>5}  east:{east_listener_port} (via north), north:{north_listener_port} -> west:{service_port}  {:>8.1} Mbit/s  {:>12.0}  {:>6} us  {:>6} us  {}",
            started.elapsed().as_secs(),
            stats.flows.load(Ordering::Relaxed),
            (bytes - last_bytes) as f64 * 8.0 / elapsed / 1e6,
            (rt - last_rt) as f64 / elapsed,
            pct(0.5),
            pct(0.99),
            stats.errors.load(Ordering::Relaxed),
        );
        last_bytes = bytes;
        last_rt = rt;
        for (site, child) in &mut children.0 {
            if let Ok(Some(status)) = child.try_wait() {
                print_logs(&dir.0);
                return Err(format!("router {site} exited: {status}"));
            }
        }
        if duration.is_some_and(|d| started.elapsed() >= Duration::from_secs(d)) {
            stop.store(true, Ordering::Relaxed);
        }
    }
    for w in workers {
        let _ = w.join();
    }
    drop(children);
    println!(
        "\nstopped all routers; total {} MB echoed, {} round trips",
        stats.bytes.load(Ordering::Relaxed) / 1_000_000,
        stats.round_trips.load(Ordering::Relaxed)
    );
    Ok(())
}

fn print_logs(dir: &Path) {
    for site in SITES {
        if let Ok(s) = std::fs::read_to_string(dir.join(format!("{site}.log"))) {
            eprintln!("--- {site}.log ---\n{s}");
        }
    }
}

fn install_ctrl_c(stop: Arc<AtomicBool>) {
    thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
        stop.store(true, Ordering::Relaxed);
    });
}

fn echo_service(listener: TcpListener, stop: Arc<AtomicBool>) {
    let _ = listener.set_nonblocking(true);
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut s, _)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_nodelay(true);
                thread::spawn(move || {
                    let mut buf = vec![0u8; 256 * 1024];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = s.shutdown(Shutdown::Write);
                });
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn connect(port: u16) -> Option<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    Some(s)
}

/// Request/response on one connection; reconnects every 2,000 round trips
/// so new flows keep appearing.
fn ping_client(port: u16, stats: Arc<Stats>, stop: Arc<AtomicBool>) {
    let msg = [0x5au8; PING_SIZE];
    let mut buf = [0u8; PING_SIZE];
    while !stop.load(Ordering::Relaxed) {
        let Some(mut s) = connect(port) else {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            thread::sleep(Duration::from_millis(200));
            continue;
        };
        stats.flows.fetch_add(1, Ordering::Relaxed);
        for _ in 0..2000 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let t = Instant::now();
            if s.write_all(&msg).is_err() || s.read_exact(&mut buf).is_err() || buf != msg {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
            let us = t.elapsed().as_micros().min(u32::MAX as u128) as u32;
            stats.round_trips.fetch_add(1, Ordering::Relaxed);
            stats.bytes.fetch_add(PING_SIZE as u64, Ordering::Relaxed);
            if let Ok(mut l) = stats.latencies_us.lock() {
                if l.len() < 200_000 {
                    l.push(us);
                }
            }
            // Leave room for the bulk flow: this is a demo, not a benchmark.
            thread::sleep(Duration::from_micros(200));
        }
        stats.flows.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Streams data through the echo and reads it back.
fn bulk_client(port: u16, stats: Arc<Stats>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Some(s) = connect(port) else {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            thread::sleep(Duration::from_millis(200));
            continue;
        };
        stats.flows.fetch_add(1, Ordering::Relaxed);
        let Ok(mut reader) = s.try_clone() else { break };
        let rstats = stats.clone();
        let r = thread::spawn(move || {
            let mut buf = vec![0u8; BULK_CHUNK];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                rstats.bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
        let chunk = vec![0xa5u8; BULK_CHUNK];
        let mut w = s;
        // A bulk flow lasts about 5 s, then a new one starts.
        let t = Instant::now();
        while !stop.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(5) {
            if w.write_all(&chunk).is_err() {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        let _ = w.shutdown(Shutdown::Write);
        let _ = r.join();
        stats.flows.fetch_sub(1, Ordering::Relaxed);
    }
}
