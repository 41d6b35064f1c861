//! A tcp_listener is bound only while a tcp_connector for its address is
//! reachable.
//!
//! 1. east (tcp_listener "backend") linked to west without a tcp_connector:
//!    connections to the listener are refused.
//! 2. west is stopped (SIGTERM: must exit 0) and restarted with a
//!    tcp_connector for "backend": the listener must accept within 5 s of
//!    east logging the new link up (the contract says 1 s after
//!    reachability), and carry a round trip.
//! 3. west is killed: the listener must refuse connections again.

use std::time::{Duration, Instant};

use tether_tests::net::{echo_until_ok, refused_for, wait_until_connectable};
use tether_tests::router::{describe, wait_connectable};
use tether_tests::{free_port, RouterConfig, RouterProc, Service, TestEnv};

#[test]
fn tcp_listener_binds_only_while_a_connector_is_reachable() {
    let env = TestEnv::new("listener-gating");
    let svc = Service::echo();
    let link = free_port();
    let client = free_port();
    let east = env.start_router(
        &RouterConfig::new("east")
            .listener(link, "site")
            .tcp_listener("backend", client)
            .tls("site", env.tls_for("east")),
    );
    let west_plain = RouterConfig::new("west")
        .connector(link, "site")
        .tls("site", env.tls_for("west"));

    // 1. Linked, but no connector anywhere.
    let west1 = env.start_router(&west_plain);
    RouterProc::check(
        east.wait_link_up("west", 0, Duration::from_secs(10)),
        &[&east, &west1],
    );
    RouterProc::check(
        west1.wait_link_up("east", 0, Duration::from_secs(10)),
        &[&east, &west1],
    );
    if let Err(e) = refused_for(client, Duration::from_secs(2)) {
        panic!(
            "tcp_listener accepted while no tcp_connector exists: {e}\n{}",
            describe(&[&east, &west1])
        );
    }

    // 2. Restart west with a tcp_connector.
    let status = west1.terminate(Duration::from_secs(5));
    match status {
        Some(st) if st.success() => {}
        other => panic!(
            "west did not exit 0 within 5 s of SIGTERM: {other:?}\n{}",
            describe(&[&west1])
        ),
    }
    drop(west1);
    let mark = east.mark();
    let west2 = env.start_router(&west_plain.clone().tcp_connector("backend", svc.port()));
    RouterProc::check(
        east.wait_link_up("west", mark, Duration::from_secs(20)),
        &[&east, &west2],
    );
    let link_seen = Instant::now();
    match wait_connectable(client, Duration::from_secs(5), &[&east, &west2]) {
        Ok(_) => println!(
            "tcp_listener accepted {:.0?} after east logged the link up",
            link_seen.elapsed()
        ),
        Err(e) => panic!("tcp_listener did not accept within 5 s of the link to a router with a tcp_connector: {e}"),
    }
    if let Err(e) = echo_until_ok(client, b"gated hello", Duration::from_secs(10)) {
        panic!(
            "round trip through the newly bound listener: {e}\n{}",
            describe(&[&east, &west2])
        );
    }

    // 3. The connector goes away: the listener must close again.
    west2.kill();
    let start = Instant::now();
    let deadline = Duration::from_secs(8);
    let mut closed = false;
    for _ in 0..(deadline.as_millis() / 100 + 2) {
        if wait_until_connectable(client, Duration::ZERO).is_none() {
            closed = true;
            break;
        }
        if start.elapsed() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        closed,
        "tcp_listener still accepts {deadline:?} after the only tcp_connector's router died\n{}",
        describe(&[&east, &west2])
    );
    println!(
        "tcp_listener closed {:.0?} after west was killed",
        start.elapsed()
    );
}
