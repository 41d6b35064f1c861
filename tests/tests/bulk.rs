//! Bulk data through two routers must arrive byte-exact, both ways.
//!
//! Topology: client → east (tcp_listener) ═TLS═ west (tcp_connector) → echo
//! service. The echo service echoes until EOF and then half-closes, so a
//! flow ends cleanly only if the client's half-close was carried too.

use std::time::{Duration, Instant};

use tether_tests::flows::echo_transfer;
use tether_tests::{mib_per_s, Pair, PairSpec, Service, TestEnv};

/// One flow, 64 MiB each way, written and read concurrently; the SHA-256
/// of what was sent must equal the SHA-256 of what came back.
#[test]
fn one_flow_64_mib_each_way_is_byte_exact() {
    let env = TestEnv::new("bulk-one");
    let svc = Service::echo();
    let pair = Pair::start(&env, PairSpec::new(&env, &[("backend", svc.port())]));

    let n: u64 = 64 << 20;
    let r = echo_transfer(pair.client_port(), n, 0x7e7e_0001, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("64 MiB transfer failed: {e}\n{}", pair.describe()));
    println!(
        "64 MiB each way in {:.2?} ({:.1} MiB/s each way)",
        r.elapsed,
        mib_per_s(n, r.elapsed.as_secs_f64())
    );
    assert_eq!(r.sent, n, "client did not send everything");
    assert_eq!(r.received, n, "echo length differs from what was sent");
    assert!(
        r.exact(),
        "echo differs from what was sent (SHA-256 mismatch)"
    );
}

/// 200 concurrent flows, 1 MiB each way each, all byte-exact.
#[test]
fn two_hundred_concurrent_flows_of_1_mib_are_byte_exact() {
    let env = TestEnv::new("bulk-many");
    let svc = Service::echo();
    let pair = Pair::start(&env, PairSpec::new(&env, &[("backend", svc.port())]));
    let port = pair.client_port();

    let flows = 200u64;
    let n: u64 = 1 << 20;
    let start = Instant::now();
    let handles: Vec<_> = (0..flows)
        .map(|i| {
            std::thread::Builder::new()
                .name(format!("flow-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || echo_transfer(port, n, 0x5eed_0000 + i, Duration::from_secs(120)))
                .expect("spawn flow thread")
        })
        .collect();
    let mut failures = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(r)) if r.exact() && r.sent == n => {}
            Ok(Ok(r)) => failures.push(format!(
                "flow {i}: sent {} received {} exact={}",
                r.sent,
                r.received,
                r.exact()
            )),
            Ok(Err(e)) => failures.push(format!("flow {i}: {e}")),
            Err(_) => failures.push(format!("flow {i}: thread panicked")),
        }
    }
    let elapsed = start.elapsed();
    println!(
        "{flows} flows x 1 MiB each way in {elapsed:.2?} ({:.1} MiB/s aggregate each way)",
        mib_per_s(flows * n, elapsed.as_secs_f64())
    );
    assert!(
        failures.is_empty(),
        "{} of {flows} flows failed:\n{}\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        pair.describe()
    );
}
