//! `tether demo`: three routers, traffic flowing, and a clean exit.
//!
//! Runs `tether demo --duration 4 --base-port P` (P..P+9 checked bindable
//! first) with a 60 s bound and checks:
//! - it exits 0 by itself and prints `network up`;
//! - it prints at least 3 throughput lines (`Mbit/s`), and every line after
//!   the first shows a non-zero round-trip rate;
//! - its three `tether router` children (whose command lines name the
//!   demo's folder, `tether-demo-<pid of demo>`) were seen while it ran and
//!   are all gone once it has exited; the folder is removed.
//!
//! If the demo overstays or fails, its leftover children are killed by PID
//! (found by that folder name, which is unique to this demo process).

use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tether_tests::binary::wait_bounded;
use tether_tests::TestEnv;

/// Ports the demo takes from its base (it says ten; it uses six).
const DEMO_PORTS: u16 = 10;
const DEMO_TIMEOUT: Duration = Duration::from_secs(60);
const ROUTERS: usize = 3;

/// A base port P with P..P+DEMO_PORTS bindable on 127.0.0.1 now, below the
/// ephemeral range when there is room (so outgoing connections cannot take
/// them meanwhile). Bounded attempts.
fn free_port_block() -> u16 {
    let (eph_lo, eph_hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    let span = u32::from(DEMO_PORTS);
    let (lo, hi) = if eph_lo > 12000 + span {
        (12000, eph_lo - span)
    } else {
        (eph_hi + 1, 65535 - span)
    };
    for _ in 0..200 {
        let base = lo + rand::random::<u32>() % (hi - lo);
        let base = base as u16;
        let held: Vec<TcpListener> = (0..DEMO_PORTS)
            .map_while(|i| TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == DEMO_PORTS as usize {
            return base;
        }
    }
    panic!("no block of {DEMO_PORTS} free ports found on 127.0.0.1");
}

/// PIDs of live processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten().take(100_000) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push((pid, cmdline.trim_end().to_string()));
        }
    }
    found
}

/// Kills (SIGKILL, by PID) the leftover processes of this demo run.
struct KillLeftovers(String);

impl Drop for KillLeftovers {
    fn drop(&mut self) {
        for (pid, cmd) in processes_with(&self.0) {
            eprintln!("killing leftover demo process {pid}: {cmd}");
            let _ = tether_tests::procfs::signal(pid, libc::SIGKILL);
        }
    }
}

fn read_file(mut f: File) -> String {
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    s
}

/// The round trips/s column of a throughput line: the number right after
/// `Mbit/s`.
fn round_trips_per_s(line: &str) -> Option<f64> {
    let (_, after) = line.split_once("Mbit/s")?;
    after.split_whitespace().next()?.parse().ok()
}

#[test]
fn demo_runs_prints_throughput_and_leaves_no_process_behind() {
    let env = TestEnv::new("demo");
    let base = free_port_block();
    let out_path = env.dir().join("demo.stdout");
    let err_path = env.dir().join("demo.stderr");
    let mut cmd = env.bin.command();
    cmd.arg("demo")
        .arg("--duration")
        .arg("4")
        .arg("--base-port")
        .arg(base.to_string())
        .current_dir(env.dir())
        .stdout(Stdio::from(File::create(&out_path).expect("stdout file")))
        .stderr(Stdio::from(File::create(&err_path).expect("stderr file")));
    let start = Instant::now();
    let mut child = cmd.spawn().expect("start tether demo");
    let demo_pid = child.id();
    let folder_tag = format!("tether-demo-{demo_pid}");
    // With the slash: `tether-demo-12` must not match `tether-demo-123/`.
    let needle = format!("{folder_tag}/");
    let _cleanup = KillLeftovers(needle.clone());

    // Watch for the router children while the demo runs (bounded polls).
    let mut seen: Vec<(u32, String)> = Vec::new();
    let mut exited = None;
    for _ in 0..(DEMO_TIMEOUT.as_millis() / 100 + 2) {
        if let Ok(Some(st)) = child.try_wait() {
            exited = Some(st);
            break;
        }
        for p in processes_with(&needle) {
            if p.1.contains("router") && !seen.iter().any(|s| s.0 == p.0) {
                seen.push(p);
            }
        }
        if start.elapsed() >= DEMO_TIMEOUT {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = match exited {
        Some(st) => Some(st),
        None => wait_bounded(&mut child, Duration::ZERO).0,
    };
    let elapsed = start.elapsed();
    let stdout = read_file(File::open(&out_path).expect("read stdout"));
    let stderr = read_file(File::open(&err_path).expect("read stderr"));
    let report = format!(
        "status: {status:?} after {elapsed:.1?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    println!("{report}");

    assert!(
        status.is_some_and(|s| s.success()),
        "`tether demo --duration 4` did not exit 0 within {DEMO_TIMEOUT:?}\n{report}"
    );
    assert!(
        stdout.contains("network up"),
        "no `network up` line\n{report}"
    );
    let lines: Vec<&str> = stdout.lines().filter(|l| l.contains("Mbit/s")).collect();
    assert!(
        lines.len() >= 3,
        "{} throughput lines, expected at least 3\n{report}",
        lines.len()
    );
    for (i, l) in lines.iter().enumerate().skip(1) {
        match round_trips_per_s(l) {
            Some(rt) if rt > 0.0 => {}
            Some(_) => panic!("throughput line {i} shows 0 round trips/s: {l:?}\n{report}"),
            None => panic!("throughput line {i} has no round-trip rate after Mbit/s: {l:?}"),
        }
    }

    // The children: seen while running, gone now.
    assert_eq!(
        seen.len(),
        ROUTERS,
        "expected {ROUTERS} `tether router` children naming {folder_tag} while the demo ran, \
         saw {seen:?}\n{report}"
    );
    let mut left = processes_with(&needle);
    for _ in 0..20 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        left = processes_with(&needle);
    }
    assert!(
        left.is_empty(),
        "processes of the demo still running 2 s after it exited: {left:?}\n{report}"
    );
    let folder = std::env::temp_dir().join(&folder_tag);
    assert!(
        !folder.exists(),
        "the demo left its folder {} behind",
        folder.display()
    );
    println!(
        "demo exited 0 after {elapsed:.1?}; {} throughput lines; children {:?} gone",
        lines.len(),
        seen.iter().map(|s| s.0).collect::<Vec<_>>()
    );
}
