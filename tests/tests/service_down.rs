//! A service that refuses connections: the client is closed promptly.
//!
//! West's tcp_connector points at a port nothing listens on. East's
//! tcp_listener still binds (a router with a connector for the address is
//! reachable), so the client connects; the router must then close the
//! client's connection (EOF or reset) within 2 s and log the failure.

use std::io::Write;
use std::time::{Duration, Instant};

use tether_tests::net::{connect, expect_closed};
use tether_tests::{free_port, Pair, PairSpec, RouterProc, TestEnv};

#[test]
fn refused_service_closes_client_promptly_and_is_logged() {
    let env = TestEnv::new("service-down");
    let dead_port = free_port(); // never bound
    let pair = Pair::start(&env, PairSpec::new(&env, &[("backend", dead_port)]));

    for attempt in 0..3 {
        let start = Instant::now();
        let mut s = match connect(pair.client_port()) {
            Ok(s) => s,
            // The router accepted and reset the flow before connect()
            // returned: closed as promptly as it gets.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                println!(
                    "attempt {attempt}: reset before connect returned ({:.2?})",
                    start.elapsed()
                );
                continue;
            }
            Err(e) => panic!("attempt {attempt}: connect: {e}\n{}", pair.describe()),
        };
        let _ = s.write_all(b"hello?"); // may already fail: fine
        let closed = expect_closed(&mut s, Duration::from_secs(2));
        let elapsed = start.elapsed();
        match closed {
            Ok(how) => {
                println!("attempt {attempt}: client closed with {how:?} after {elapsed:.2?}")
            }
            Err(e) => panic!(
                "attempt {attempt}: the client's connection to a refused service was not closed \
                 within 2 s: {e}\n{}",
                pair.describe()
            ),
        }
        assert!(
            elapsed < Duration::from_secs(2),
            "attempt {attempt}: took {elapsed:?}"
        );
    }

    // Some router logs the failed connect: either the OS error text
    // ("Connection refused") or the service address with a failure word.
    let port_s = format!(":{dead_port}");
    let pred = |l: &str| {
        l.contains("refused")
            || (l.contains(&port_s)
                && ["fail", "error", "unreachable", "could not", "cannot"]
                    .iter()
                    .any(|w| l.contains(w)))
    };
    let found = pair
        .west
        .wait_for_line(
            0,
            Duration::from_secs(2),
            "the refused service connection",
            pred,
        )
        .or_else(|e| {
            pair.east
                .wait_for_line(
                    0,
                    Duration::from_millis(100),
                    "the refused service connection",
                    pred,
                )
                .map_err(|_| e)
        });
    let line = RouterProc::check(found, &pair.routers());
    println!("logged: {line}");
}
