//! 1000 concurrent flows through two routers.
//!
//! Opens 1000 client connections through east═west to an echo service and
//! holds them idle, then does one round trip on each (from 8 threads), and
//! checks every round trip is exact and every flow reached the service.
//! Reports both routers' RSS idle, with 1000 flows open and after closing
//! them; asserts it stays under 128 MiB.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use tether_tests::net::{connect, round_trip};
use tether_tests::procfs::raise_nofile;
use tether_tests::{Pair, PairSpec, Service, TestEnv};

const FLOWS: usize = 1000;
const RSS_LIMIT_KIB: u64 = 128 * 1024;

#[test]
fn thousand_concurrent_flows_round_trip_with_bounded_memory() {
    // 1000 client sockets + 1000 service sockets here; the routers inherit
    // the limit too (2000 sockets each).
    let limit = raise_nofile(16384);
    assert!(
        limit >= 4 * FLOWS as u64 + 100,
        "open-file limit {limit} too low for {FLOWS} flows"
    );
    let env = TestEnv::new("concurrency");
    let svc = Service::echo();
    let pair = Pair::start(&env, PairSpec::new(&env, &[("backend", svc.port())]));
    let port = pair.client_port();
    let rss = |p: &Pair| (p.east.rss_kib().unwrap_or(0), p.west.rss_kib().unwrap_or(0));
    let idle = rss(&pair);
    let base_accepted = svc.accepted();

    // Open all flows, idle.
    let start = Instant::now();
    let mut conns: Vec<TcpStream> = Vec::with_capacity(FLOWS);
    for i in 0..FLOWS {
        match connect(port) {
            Ok(s) => conns.push(s),
            Err(e) => panic!("flow {i}: connect: {e}\n{}", pair.describe()),
        }
    }
    let opened = start.elapsed();
    let reached = svc.wait_accepted(base_accepted + FLOWS, Duration::from_secs(10));
    println!(
        "{FLOWS} flows opened in {opened:.2?}; service connections while idle: {} ({})",
        svc.accepted() - base_accepted,
        if reached { "all" } else { "not all yet" }
    );
    let open_idle = rss(&pair);

    // One round trip on each, from 8 threads.
    let chunks: Vec<Vec<(usize, TcpStream)>> = {
        let mut v: Vec<Vec<(usize, TcpStream)>> = (0..8).map(|_| Vec::new()).collect();
        for (i, s) in conns.into_iter().enumerate() {
            v[i % 8].push((i, s));
        }
        v
    };
    let rt_start = Instant::now();
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                let mut kept = Vec::new();
                for (i, mut s) in chunk {
                    let payload = format!("flow {i:05} ping");
                    if let Err(e) = round_trip(&mut s, payload.as_bytes(), Duration::from_secs(30))
                    {
                        errors.push(format!("flow {i}: {e}"));
                    }
                    kept.push(s);
                }
                (errors, kept)
            })
        })
        .collect();
    let mut errors = Vec::new();
    let mut conns = Vec::new();
    for h in handles {
        let (e, k) = h.join().expect("round-trip thread panicked");
        errors.extend(e);
        conns.extend(k);
    }
    let rt = rt_start.elapsed();
    let loaded = rss(&pair);
    println!("{FLOWS} round trips in {rt:.2?}");
    assert!(
        errors.is_empty(),
        "{} of {FLOWS} round trips failed:\n{}\n{}",
        errors.len(),
        errors
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        pair.describe()
    );
    assert!(
        svc.accepted() >= base_accepted + FLOWS,
        "only {} of {FLOWS} flows reached the service",
        svc.accepted() - base_accepted
    );

    drop(conns);
    std::thread::sleep(Duration::from_millis(500));
    let after = rss(&pair);
    println!(
        "RSS KiB (east, west): idle {idle:?}; {FLOWS} flows open {open_idle:?}; after round trips {loaded:?}; \
         after closing {after:?}"
    );
    for (what, (e, w)) in [
        ("with flows open", open_idle),
        ("after round trips", loaded),
    ] {
        assert!(
            e < RSS_LIMIT_KIB && w < RSS_LIMIT_KIB,
            "router RSS {what}: east {e} KiB, west {w} KiB (limit {RSS_LIMIT_KIB} KiB)\n{}",
            pair.describe()
        );
    }
}
