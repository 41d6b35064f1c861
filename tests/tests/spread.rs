//! With several tcp_connectors for one address, new flows are spread
//! across them.
//!
//! 1. Two egress routers: west1 and west2 each have a tcp_connector for
//!    `backend` pointing at their own echo service and connect to east's
//!    inter-router listener; east has the tcp_listener. 20 sequential short
//!    flows (connect, one round trip, close) through east: each service must
//!    see at least 3 of them.
//! 2. One egress router with two tcp_connectors for `backend` (two echo
//!    services): both services get flows (at least 3 of 20 each).
//! 3. The same with the tcp_connectors on the ingress router itself (the
//!    local path: no inter-router link involved).
//!
//! The flows are sequential on purpose: each one is closed (EOF both ways)
//! before the next is opened, so "spread" cannot come from load alone.

use std::time::Duration;

use tether_tests::net::echo_once;
use tether_tests::router::{describe, wait_connectable};
use tether_tests::{free_port, Pair, PairSpec, RouterConfig, RouterProc, Service, TestEnv};

const FLOWS: usize = 20;
const MIN_EACH: usize = 3;
const READY: Duration = Duration::from_secs(10);
/// Time for the routing updates that follow `link up` to reach east, and
/// for the readiness probes' own flows to reach a service before counting.
const SETTLE: Duration = Duration::from_millis(500);

/// Runs `FLOWS` sequential echo flows through `port` and returns how many
/// connections each service accepted meanwhile.
fn sequential_flows(port: u16, services: &[&Service], routers: &[&RouterProc]) -> Vec<usize> {
    let before: Vec<usize> = services.iter().map(|s| s.accepted()).collect();
    for i in 0..FLOWS {
        let payload = format!("flow {i}: spread me");
        if let Err(e) = echo_once(port, payload.as_bytes(), Duration::from_secs(5)) {
            panic!(
                "sequential flow {i} through 127.0.0.1:{port}: {e}\n{}",
                describe(routers)
            );
        }
    }
    // echo_once returns after the echo came back, so every flow has reached
    // a service by now; the counters are final.
    services
        .iter()
        .zip(before)
        .map(|(s, b)| s.accepted() - b)
        .collect()
}

fn assert_spread(what: &str, names: &[&str], counts: &[usize], routers: &[&RouterProc]) {
    let summary = names
        .iter()
        .zip(counts)
        .map(|(n, c)| format!("{n}: {c}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!("{what}: {FLOWS} sequential flows -> {summary}");
    // At least: a readiness probe's flow may still reach a service late.
    assert!(
        counts.iter().sum::<usize>() >= FLOWS,
        "{what}: the services saw {summary}, fewer than the {FLOWS} flows opened"
    );
    for (n, c) in names.iter().zip(counts) {
        assert!(
            *c >= MIN_EACH,
            "{what}: new flows are not spread across the tcp_connectors for one address: \
             {FLOWS} sequential flows went {summary} (expected at least {MIN_EACH} to {n})\n{}",
            describe(routers)
        );
    }
}

#[test]
fn sequential_flows_are_spread_across_two_egress_routers() {
    let env = TestEnv::new("spread-routers");
    let svc1 = Service::echo();
    let svc2 = Service::echo();
    let link = free_port();
    let client = free_port();
    let east = env.start_router(
        &RouterConfig::new("east")
            .listener(link, "site")
            .tcp_listener("backend", client)
            .tls("site", env.tls_for("east")),
    );
    let west1 = env.start_router(
        &RouterConfig::new("west1")
            .connector(link, "site")
            .tcp_connector("backend", svc1.port())
            .tls("site", env.tls_for("west1")),
    );
    let west2 = env.start_router(
        &RouterConfig::new("west2")
            .connector(link, "site")
            .tcp_connector("backend", svc2.port())
            .tls("site", env.tls_for("west2")),
    );
    let routers = [&east, &west1, &west2];
    RouterProc::check(east.wait_link_up("west1", 0, READY), &routers);
    RouterProc::check(east.wait_link_up("west2", 0, READY), &routers);
    RouterProc::check(west1.wait_link_up("east", 0, READY), &routers);
    RouterProc::check(west2.wait_link_up("east", 0, READY), &routers);
    if let Err(e) = wait_connectable(client, READY, &routers) {
        panic!("east's tcp_listener after both links came up: {e}");
    }
    std::thread::sleep(SETTLE);

    let counts = sequential_flows(client, &[&svc1, &svc2], &routers);
    assert_spread(
        "two egress routers",
        &["west1's service", "west2's service"],
        &counts,
        &routers,
    );
}

#[test]
fn sequential_flows_are_spread_across_two_connectors_on_one_egress_router() {
    let env = TestEnv::new("spread-connectors");
    let svc_a = Service::echo();
    let svc_b = Service::echo();
    let mut spec = PairSpec::new(&env, &[("backend", svc_a.port())]);
    spec.west = spec.west.tcp_connector("backend", svc_b.port());
    let pair = Pair::start(&env, spec);
    std::thread::sleep(SETTLE);

    let routers = pair.routers();
    let counts = sequential_flows(pair.client_port(), &[&svc_a, &svc_b], &routers);
    assert_spread(
        "one egress router, two tcp_connectors",
        &["service A", "service B"],
        &counts,
        &routers,
    );
}

#[test]
fn sequential_flows_are_spread_across_two_local_connectors() {
    let env = TestEnv::new("spread-local");
    let svc_a = Service::echo();
    let svc_b = Service::echo();
    let client = free_port();
    let link = free_port();
    // A single router: the tcp_listener and both tcp_connectors are local.
    let solo = env.start_router(
        &RouterConfig::new("solo")
            .listener(link, "site")
            .tcp_listener("backend", client)
            .tcp_connector("backend", svc_a.port())
            .tcp_connector("backend", svc_b.port())
            .tls("site", env.tls_for("solo")),
    );
    if let Err(e) = wait_connectable(client, READY, &[&solo]) {
        panic!("the local tcp_listener never accepted: {e}");
    }
    // Let the readiness probe's service connection land before counting.
    std::thread::sleep(SETTLE);

    let counts = sequential_flows(client, &[&svc_a, &svc_b], &[&solo]);
    assert_spread(
        "one router, two local tcp_connectors",
        &["service A", "service B"],
        &counts,
        &[&solo],
    );
}
