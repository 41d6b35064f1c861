//! A stalled flow is held to its window and does not slow other flows on
//! the same inter-router link.
//!
//! Topology: two addresses over one east═west link, each with its own
//! source/sink service behind west. The "stalled" client asks for an
//! endless stream and never reads; the "fast" client downloads as fast as
//! it can. Each round:
//! 1. measures the fast flow alone (2 s);
//! 2. opens the stalled flow and waits until its service's bytes sent stop
//!    growing (the flow is held to a bounded window: router windows plus
//!    kernel socket buffers), then checks both routers' RSS < 64 MiB;
//! 3. measures the fast flow next to the stalled one (2 s), checks the
//!    stalled flow did not grow meanwhile and RSS is still bounded;
//! 4. starts reading the stalled flow: it must resume; then closes it.
//!
//! The round passes if (3) is at least 80% of (1). Up to three rounds are
//! run to ride out noise on a shared 2-core machine; adjacent measurements
//! are compared, so slow drift of the machine does not count.
//!
//! One test function on purpose: the throughput figures must not share the
//! machine with other tests of this binary.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tether_tests::flows::download_for;
use tether_tests::net::{connect, read_some_by};
use tether_tests::{Pair, PairSpec, Service, TestEnv};

const WINDOW: u64 = 1 << 20;
const RSS_LIMIT_KIB: u64 = 64 * 1024;
const MIN_RATIO: f64 = 0.8;
const ROUNDS: usize = 3;
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
    let spec = PairSpec::new(
        &env,
        &[("stalled", stalled_svc.port()), ("fast", fast_svc.port())],
    )
    .both(|c| c.flow_window(WINDOW));
    let pair = Pair::start(&env, spec);
    let (stalled_port, fast_port) = (pair.client_ports[0], pair.client_ports[1]);
    let fail = |what: String| -> ! { panic!("{what}\n{}", pair.describe()) };
    let check_rss = |when: &str| {
        let (e, w) = (
            pair.east.rss_kib().unwrap_or(0),
            pair.west.rss_kib().unwrap_or(0),
        );
        println!("RSS {when}: east {e} KiB, west {w} KiB");
        if e >= RSS_LIMIT_KIB || w >= RSS_LIMIT_KIB {
            fail(format!(
                "router RSS {when}: east {e} KiB, west {w} KiB (limit {RSS_LIMIT_KIB} KiB)"
            ));
        }
    };

    let mut results = Vec::new();
    for round in 1..=ROUNDS {
        // 1. Alone.
        let solo = download_for(fast_port, WARMUP, MEASURE)
            .unwrap_or_else(|e| fail(format!("round {round}: solo download: {e}")));

        // 2. The stalled flow: request an endless stream, never read.
        let base = stalled_svc.sent();
        let mut stalled: TcpStream =
            connect(stalled_port).unwrap_or_else(|e| fail(format!("connect stalled: {e}")));
        let mut req = vec![b'S'];
        req.extend_from_slice(&u64::MAX.to_be_bytes());
        stalled.write_all(&req).expect("stalled request");
        let start = Instant::now();
        let mut plateau = None;
        let mut prev = base;
        for _ in 0..30 {
            std::thread::sleep(Duration::from_secs(1));
            let now = stalled_svc.sent();
            if now > base && now - prev < 64 * 1024 {
                plateau = Some(now - base);
                break;
            }
            prev = now;
        }
        let plateau = plateau.unwrap_or_else(|| {
            fail(format!(
                "the stalled flow never stopped: its service has sent {:.1} MiB after {:.1?} and \
                 keeps going (is the flow window enforced?)",
                mib((stalled_svc.sent() - base) as f64),
                start.elapsed()
            ))
        });
        println!(
            "round {round}: stalled flow held at {:.2} MiB sent by its service \
             (window {} KiB per router + kernel socket buffers)",
            mib(plateau as f64),
            WINDOW / 1024
        );
        check_rss("with a stalled flow");

        // 3. Next to the stalled flow.
        let with = download_for(fast_port, WARMUP, MEASURE).unwrap_or_else(|e| {
            fail(format!(
                "round {round}: download next to the stalled flow: {e}"
            ))
        });
        let grown = stalled_svc.sent() - base - plateau;
        if grown >= 4 * WINDOW {
            fail(format!(
                "the stalled flow kept growing while the other flow ran: +{:.2} MiB",
                mib(grown as f64)
            ));
        }
        check_rss("after a download next to a stalled flow");

        // 4. The stalled reader starts reading: the flow must resume.
        let want = stalled_svc.sent() - base + 4 * WINDOW;
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        let deadline = Instant::now() + Duration::from_secs(10);
        for _ in 0..1_000_000 {
            if got >= want {
                break;
            }
            match read_some_by(&mut stalled, &mut buf, deadline) {
                Ok(0) => fail("the stalled flow ended instead of resuming".into()),
                Ok(n) => got += n as u64,
                Err(e) => fail(format!(
                    "the stalled flow did not resume: {e} after {got} bytes"
                )),
            }
        }
        drop(stalled);

        let ratio = with / solo;
        println!(
            "round {round}: fast flow alone {:.1} MiB/s, next to a stalled flow {:.1} MiB/s = {:.0}%",
            mib(solo),
            mib(with),
            ratio * 100.0
        );
        results.push((solo, with, ratio));
        if ratio >= MIN_RATIO {
            return;
        }
    }
    fail(format!(
        "a stalled flow slowed another flow on the same link below {:.0}% of its solo throughput \
         in all {ROUNDS} rounds: {}",
        MIN_RATIO * 100.0,
        results
            .iter()
            .map(|(s, w, r)| format!("{:.1} → {:.1} MiB/s ({:.0}%)", mib(*s), mib(*w), r * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    ));
}
