//! Dead-peer detection and reconnection.
//!
//! Both routers run with hello_interval_ms = 200 and dead_interval_ms =
//! 1000. West (the connector side) is frozen with SIGSTOP: its TCP
//! connection stays open (the kernel still ACKs) but it sends no hellos, so
//! east must log `link down` within dead_interval + 1 s. After SIGCONT,
//! west's connector reconnects (with backoff) and traffic flows again.

use std::time::{Duration, Instant};

use tether_tests::net::{echo_once, echo_until_ok};
use tether_tests::{Pair, PairSpec, RouterProc, Service, TestEnv};

const HELLO_MS: u64 = 200;
const DEAD_MS: u64 = 1000;
/// Allowance for log polling (25 ms) and scheduling on a busy machine.
const SLACK: Duration = Duration::from_millis(250);

#[test]
fn frozen_peer_is_declared_dead_and_the_link_recovers() {
    let env = TestEnv::new("heartbeat");
    let svc = Service::echo();
    let spec =
        PairSpec::new(&env, &[("backend", svc.port())]).both(|c| c.timers(HELLO_MS, DEAD_MS));
    let pair = Pair::start(&env, spec);
    let routers = pair.routers();
    let port = pair.client_port();
    if let Err(e) = echo_once(port, b"before", Duration::from_secs(5)) {
        panic!("round trip before the freeze: {e}\n{}", pair.describe());
    }

    // Freeze west.
    let mark = pair.east.mark();
    pair.west.signal(libc::SIGSTOP).expect("SIGSTOP west");
    let frozen_at = Instant::now();
    let limit = Duration::from_millis(DEAD_MS + 1000) + SLACK;
    let down = pair.east.wait_link_down(mark, limit);
    let detected = frozen_at.elapsed();
    if let Err(e) = down {
        let _ = pair.west.signal(libc::SIGCONT);
        panic!(
            "{e}\n(dead_interval_ms = {DEAD_MS}: expected `link down` within {limit:?})\n{}",
            pair.describe()
        );
    }
    println!("east logged link down {detected:.2?} after west was frozen");
    assert!(
        detected <= limit,
        "link down after {detected:?} (limit {limit:?})"
    );

    // Thaw west: the link must come back and carry traffic.
    let mark = pair.east.mark();
    pair.west.signal(libc::SIGCONT).expect("SIGCONT west");
    let thawed_at = Instant::now();
    RouterProc::check(
        pair.east
            .wait_link_up("west", mark, Duration::from_secs(20)),
        &routers,
    );
    println!("link up again {:.2?} after SIGCONT", thawed_at.elapsed());
    if let Err(e) = echo_until_ok(port, b"after", Duration::from_secs(10)) {
        panic!(
            "round trip after the link came back: {e}\n{}",
            pair.describe()
        );
    }
}
