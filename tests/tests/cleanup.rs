//! Flows leave nothing behind: after thousands of short flows (and flows
//! the client abandons mid-way), both routers' open sockets return to their
//! idle count and their memory does not grow with the number of flows.

use std::io::Write;
use std::time::{Duration, Instant};

use tether_tests::net::{connect, round_trip};
use tether_tests::{Pair, PairSpec, Service, TestEnv};

const FLOWS: usize = 3200;
const THREADS: usize = 4;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(usize::MAX)
}

#[test]
fn thousands_of_short_flows_release_every_socket() {
    let env = TestEnv::new("cleanup");
    let svc = Service::echo();
    let pair = Pair::start(&env, PairSpec::new(&env, &[("backend", svc.port())]));
    let port = pair.client_port();
    let (east, west) = (pair.east.pid(), pair.west.pid());

    // Warm up (allocator pools, first flow), then take the baseline.
    let mut s = connect(port).expect("connect");
    round_trip(&mut s, b"warm-up", Duration::from_secs(10)).expect("warm-up round trip");
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
    let base = (open_fds(east), open_fds(west));
    let rss_base = (
        pair.east.rss_kib().unwrap_or(0),
        pair.west.rss_kib().unwrap_or(0),
    );

    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                for i in 0..FLOWS / THREADS {
                    let Ok(mut s) = connect(port) else {
                        failures.push(format!("thread {t} flow {i}: connect failed"));
                        continue;
                    };
                    if i % 10 == 9 {
                        // Abandon the flow: send without reading, then close.
                        let _ = s.write_all(b"never read back");
                        continue;
                    }
                    let msg = format!("t{t} f{i}");
                    if let Err(e) = round_trip(&mut s, msg.as_bytes(), Duration::from_secs(10)) {
                        failures.push(format!("thread {t} flow {i}: {e}"));
                    }
                }
                failures
            })
        })
        .collect();
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.join().expect("worker"));
    }
    assert!(failures.is_empty(), "{failures:?}\n{}", pair.describe());

    // Every flow's sockets close: back to the idle count within 5 s.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut now = (open_fds(east), open_fds(west));
    while (now.0 > base.0 || now.1 > base.1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        now = (open_fds(east), open_fds(west));
    }
    let rss_after = (
        pair.east.rss_kib().unwrap_or(0),
        pair.west.rss_kib().unwrap_or(0),
    );
    println!(
        "open fds east/west: idle {base:?}, after {FLOWS} flows {now:?}; RSS KiB idle {rss_base:?}, after {rss_after:?}"
    );
    assert!(
        now.0 <= base.0 && now.1 <= base.1,
        "sockets left open after the flows ended: idle {base:?}, now {now:?}\n{}",
        pair.describe()
    );
    // Memory must not scale with the flows that came and went (3200 flows
    // leaking even 1 KiB each would be over 3 MiB).
    for (before, after) in [(rss_base.0, rss_after.0), (rss_base.1, rss_after.1)] {
        assert!(
            after <= before + 3072,
            "RSS grew from {before} KiB to {after} KiB over {FLOWS} short flows"
        );
    }
}
