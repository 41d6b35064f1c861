//! A stalled flow is held to its window and does not slow other flows on
//! the same inter-router link.
//!
//! Topology: two addresses over one east═west link, each with its own
//! source/sink service behind west. The "stalled" client asks for an
//! endless stream and never reads; the "fast" client downloads as fast as
//! it can. Checks:
//! 1. the stalled service's bytes sent stop growing (the flow is held to a
//!    bounded window: router windows plus kernel socket buffers);
//! 2. both routers' RSS stays under 64 MiB while the flow is stalled;
//! 3. the fast flow's throughput with the stalled flow present is at least
//!    80% of its throughput alone (solo measured before and after, averaged;
//!    the stalled case gets up to three tries, best counts, to ride out
//!    noise on a shared 2-core machine);
//! 4. the stalled flow resumes when its reader starts reading.
//!
//! One test function on purpose: the throughput figures must not share the
//! machine with other tests of this binary.

use std::io::Write;
use std::time::{Duration, Instant};

use tether_tests::flows::download_for;
use tether_tests::net::{connect, read_some_by};
use tether_tests::{Pair, PairSpec, Service, TestEnv};

const WINDOW: u64 = 1 << 20;
const RSS_LIMIT_KIB: u64 = 64 * 1024;
const MIN_RATIO: f64 = 0.8;
const WARMUP: Duration = Duration::from_millis(300);
const MEASURE: Duration = Duration::from_secs(2);

fn mib(x: f64) -> f64 {
    x / (1024.0 * 1024.0)
}

#[test]
fn stalled_flow_is_bounded_and_does_not_slow_others() {
    let env = TestEnv::new("flow-isolation");
    let stalled_svc = Service::source_sink();
    let fast_svc = Service::source_sink();
    let spec = PairSpec::new(&env, &[("stalled", stalled_svc.port()), ("fast", fast_svc.port())])
        .both(|c| c.flow_window(WINDOW));
    let pair = Pair::start(&env, spec);
    let (stalled_port, fast_port) = (pair.client_ports[0], pair.client_ports[1]);
    let fail = |what: String| -> ! { panic!("{what}\n{}", pair.describe()) };

    // 1. Solo throughput.
    let solo1 = download_for(fast_port, WARMUP, MEASURE).unwrap_or_else(|e| fail(format!("solo download: {e}")));
    println!("fast flow alone: {:.1} MiB/s", mib(solo1));

    // 2. The stalled flow: request an endless stream, never read.
    let mut stalled = connect(stalled_port).unwrap_or_else(|e| fail(format!("connect stalled: {e}")));
    let mut req = vec![b'S'];
    req.extend_from_slice(&u64::MAX.to_be_bytes());
    stalled.write_all(&req).expect("stalled request");
    // Wait until the service's bytes sent stop growing: < 64 KiB in 1 s.
    let start = Instant::now();
    let mut plateau = None;
    let mut prev = stalled_svc.sent();
    for _ in 0..30 {
        std::thread::sleep(Duration::from_secs(1));
        let now = stalled_svc.sent();
        if now > 0 && now - prev < 64 * 1024 {
            plateau = Some(now);
            break;
        }
        prev = now;
    }
    let plateau = plateau.unwrap_or_else(|| {
        fail(format!(
            "the stalled flow never stopped: its service has sent {:.1} MiB after {:.1?} and keeps going \
             (is the flow window enforced?)",
            mib(stalled_svc.sent() as f64),
            start.elapsed()
        ))
    });
    let (rss_e, rss_w) = (pair.east.rss_kib().unwrap_or(0), pair.west.rss_kib().unwrap_or(0));
    println!(
        "stalled flow held at {:.2} MiB sent by the service (window {} KiB per router + kernel buffers); \
         RSS east {} KiB, west {} KiB",
        mib(plateau as f64),
        WINDOW / 1024,
        rss_e,
        rss_w
    );
    assert!(
        rss_e < RSS_LIMIT_KIB && rss_w < RSS_LIMIT_KIB,
        "router RSS with a stalled flow: east {rss_e} KiB, west {rss_w} KiB (limit {RSS_LIMIT_KIB} KiB)\n{}",
        pair.describe()
    );

    // 3. Throughput with the stalled flow present: up to three tries.
    let mut with_stall = Vec::new();
    for _ in 0..3 {
        let r = download_for(fast_port, WARMUP, MEASURE)
            .unwrap_or_else(|e| fail(format!("download next to the stalled flow: {e}")));
        println!("fast flow next to the stalled one: {:.1} MiB/s", mib(r));
        with_stall.push(r);
        if r >= MIN_RATIO * solo1 {
            break;
        }
    }
    // Still stalled, still bounded?
    let after = stalled_svc.sent();
    assert!(
        after - plateau < 4 * WINDOW,
        "the stalled flow kept growing while the other flow ran: {:.2} → {:.2} MiB",
        mib(plateau as f64),
        mib(after as f64)
    );
    let rss_e2 = pair.east.rss_kib().unwrap_or(0);
    let rss_w2 = pair.west.rss_kib().unwrap_or(0);
    assert!(
        rss_e2 < RSS_LIMIT_KIB && rss_w2 < RSS_LIMIT_KIB,
        "router RSS after traffic next to a stalled flow: east {rss_e2} KiB, west {rss_w2} KiB (limit {RSS_LIMIT_KIB} KiB)"
    );

    // 4. The stalled reader starts reading: the flow must resume.
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    let want = plateau + 4 * WINDOW;
    for _ in 0..1_000_000 {
        if got >= want {
            break;
        }
        match read_some_by(&mut stalled, &mut buf, deadline) {
            Ok(0) => fail("the stalled flow ended instead of resuming".into()),
            Ok(n) => got += n as u64,
            Err(e) => fail(format!("the stalled flow did not resume: {e} after {got} bytes")),
        }
    }
    drop(stalled);

    // Solo again, now that the stalled flow is gone; average the two.
    let solo2 = download_for(fast_port, WARMUP, MEASURE).unwrap_or_else(|e| fail(format!("solo download: {e}")));
    println!("fast flow alone again: {:.1} MiB/s", mib(solo2));
    let solo = (solo1 + solo2) / 2.0;
    let best = with_stall.iter().cloned().fold(0.0, f64::max);
    let ratio = best / solo;
    println!(
        "fast flow next to a stalled flow: {:.1} MiB/s = {:.0}% of solo {:.1} MiB/s",
        mib(best),
        ratio * 100.0,
        mib(solo)
    );
    assert!(
        ratio >= MIN_RATIO,
        "a stalled flow slowed another flow on the same link to {:.0}% of its solo throughput \
         ({:.1} vs {:.1} MiB/s; tries {:?})\n{}",
        ratio * 100.0,
        mib(best),
        mib(solo),
        with_stall.iter().map(|x| format!("{:.1}", mib(*x))).collect::<Vec<_>>(),
        pair.describe()
    );
}
