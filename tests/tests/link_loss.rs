//! Losing the egress router: open flows end, the listener closes, and both
//! come back when the router does.
//!
//! Topology: east's inter-router connector dials west's listener; west has
//! the tcp_connector (an echo service), east the tcp_listener. Both run
//! with hello_interval_ms = 200 and dead_interval_ms = 1000.
//!
//! 1. A flow is open and carries a round trip.
//! 2. West is killed with SIGKILL: the client's connection must end (EOF or
//!    reset) within dead_interval + 2 s, never hang; east's tcp_listener
//!    must refuse connections within a few seconds (no tcp_connector is
//!    reachable any more) and keep refusing.
//! 3. West is started again with the same config (same ports): east's
//!    connector reconnects (with backoff), the listener accepts again and a
//!    round trip works, all within 15 s of the restart.

use std::time::{Duration, Instant};

use tether_tests::net::{
    connect, echo_until_ok, expect_closed, refused_for, round_trip, wait_until_connectable,
};
use tether_tests::router::{describe, wait_connectable};
use tether_tests::{free_port, RouterConfig, RouterProc, Service, TestEnv};

const HELLO_MS: u64 = 200;
const DEAD_MS: u64 = 1000;
/// How long east's tcp_listener may keep accepting after west died.
const LISTENER_CLOSE_LIMIT: Duration = Duration::from_secs(4);
/// How long the whole recovery may take after west is started again.
const RECOVERY_LIMIT: Duration = Duration::from_secs(15);

/// West's and east's configs (see the module docs) and the client port.
fn configs(env: &TestEnv, service_port: u16) -> (RouterConfig, RouterConfig, u16) {
    let link = free_port();
    let client = free_port();
    let west = RouterConfig::new("west")
        .timers(HELLO_MS, DEAD_MS)
        .listener(link, "site")
        .tcp_connector("backend", service_port)
        .tls("site", env.tls_for("west"));
    let east = RouterConfig::new("east")
        .timers(HELLO_MS, DEAD_MS)
        .connector(link, "site")
        .tcp_listener("backend", client)
        .tls("site", env.tls_for("east"));
    (west, east, client)
}

/// Starts west then east and waits for the link and the client port.
fn start_linked(
    env: &TestEnv,
    west_cfg: &RouterConfig,
    east_cfg: &RouterConfig,
    client: u16,
) -> (RouterProc, RouterProc) {
    let west = env.start_router(west_cfg);
    let east = env.start_router(east_cfg);
    RouterProc::check(
        east.wait_link_up("west", 0, Duration::from_secs(10)),
        &[&east, &west],
    );
    RouterProc::check(
        west.wait_link_up("east", 0, Duration::from_secs(10)),
        &[&east, &west],
    );
    if let Err(e) = wait_connectable(client, Duration::from_secs(10), &[&east, &west]) {
        panic!("east's tcp_listener after the link came up: {e}");
    }
    (west, east)
}

/// Polls (bounded by `limit`) until connecting to `port` fails; returns the
/// time since `since` at that moment.
fn wait_refused(port: u16, since: Instant, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    for _ in 0..(limit.as_millis() / 50 + 2) {
        if wait_until_connectable(port, Duration::ZERO).is_none() {
            return Some(since.elapsed());
        }
        if start.elapsed() >= limit {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn killed_egress_router_ends_flows_closes_listener_and_recovers() {
    let env = TestEnv::new("link-loss");
    let svc = Service::echo();
    let (west_cfg, east_cfg, client) = configs(&env, svc.port());
    let (west, east) = start_linked(&env, &west_cfg, &east_cfg, client);

    // 1. An open flow that works.
    let mut flow =
        connect(client).unwrap_or_else(|e| panic!("connect: {e}\n{}", describe(&[&east, &west])));
    if let Err(e) = round_trip(&mut flow, b"before the loss", Duration::from_secs(5)) {
        panic!(
            "round trip before the loss: {e}\n{}",
            describe(&[&east, &west])
        );
    }

    // 2. Kill west (SIGKILL, by PID).
    let mark = east.mark();
    let killed_at = Instant::now();
    west.kill();
    assert!(!west.is_running(), "west survived SIGKILL");

    let limit = Duration::from_millis(DEAD_MS) + Duration::from_secs(2);
    let closed = expect_closed(&mut flow, limit);
    let closed_after = killed_at.elapsed();
    match closed {
        Ok(how) => println!("open flow ended with {how:?} {closed_after:.2?} after the kill"),
        Err(e) => panic!(
            "the client's connection through the killed router was not closed within \
             {limit:?} (dead_interval_ms = {DEAD_MS}): {e}\n{}",
            describe(&[&east])
        ),
    }
    drop(flow);
    RouterProc::check(east.wait_link_down(mark, Duration::from_secs(3)), &[&east]);

    // The listener must stop accepting: nothing behind it any more.
    let Some(refused_after) = wait_refused(client, killed_at, LISTENER_CLOSE_LIMIT) else {
        panic!(
            "east's tcp_listener still accepts {LISTENER_CLOSE_LIMIT:?} after the only \
             router with a tcp_connector was killed\n{}",
            describe(&[&east])
        );
    };
    println!("tcp_listener refused connections {refused_after:.2?} after the kill");
    if let Err(e) = refused_for(client, Duration::from_secs(1)) {
        panic!(
            "east's tcp_listener reopened while west is down: {e}\n{}",
            describe(&[&east])
        );
    }
    assert!(east.is_running(), "east exited after losing west");

    // 3. Start west again, same config and ports.
    drop(west);
    let mark = east.mark();
    let west2 = env.start_router(&west_cfg);
    let restarted_at = Instant::now();
    let routers = [&east, &west2];
    RouterProc::check(east.wait_link_up("west", mark, RECOVERY_LIMIT), &routers);
    let link_after = restarted_at.elapsed();
    let left = RECOVERY_LIMIT.saturating_sub(restarted_at.elapsed());
    if let Err(e) = wait_connectable(client, left, &routers) {
        panic!("east's tcp_listener after west came back: {e}");
    }
    let left = RECOVERY_LIMIT
        .saturating_sub(restarted_at.elapsed())
        .max(Duration::from_secs(1));
    if let Err(e) = echo_until_ok(client, b"after the restart", left) {
        panic!(
            "round trip after west came back: {e}\n{}",
            describe(&routers)
        );
    }
    let recovered = restarted_at.elapsed();
    println!("after the restart: link up in {link_after:.2?}, traffic flows in {recovered:.2?}");
    assert!(
        recovered <= RECOVERY_LIMIT + Duration::from_secs(1),
        "recovery took {recovered:?} (limit {RECOVERY_LIMIT:?})"
    );
}

/// The same loss without a FIN: west is frozen (SIGSTOP), so the kernel
/// keeps its sockets open and only the dead interval can tell. The open
/// flow must still end within dead_interval + 2 s, the listener must close,
/// and after SIGCONT traffic flows again.
#[test]
fn frozen_egress_router_ends_open_flows_within_dead_interval() {
    let env = TestEnv::new("link-loss-frozen");
    let svc = Service::echo();
    let (west_cfg, east_cfg, client) = configs(&env, svc.port());
    let (west, east) = start_linked(&env, &west_cfg, &east_cfg, client);
    let routers = [&east, &west];

    let mut flow =
        connect(client).unwrap_or_else(|e| panic!("connect: {e}\n{}", describe(&routers)));
    if let Err(e) = round_trip(&mut flow, b"before the freeze", Duration::from_secs(5)) {
        panic!("round trip before the freeze: {e}\n{}", describe(&routers));
    }

    let mark = east.mark();
    let frozen_at = Instant::now();
    west.signal(libc::SIGSTOP).expect("SIGSTOP west");
    let limit = Duration::from_millis(DEAD_MS) + Duration::from_secs(2);
    let closed = expect_closed(&mut flow, limit);
    let closed_after = frozen_at.elapsed();
    let how = match closed {
        Ok(how) => how,
        Err(e) => {
            let _ = west.signal(libc::SIGCONT);
            panic!(
                "the client's connection through the frozen router was not closed within \
                 {limit:?} (dead_interval_ms = {DEAD_MS}): {e}\n{}",
                describe(&[&east])
            );
        }
    };
    println!("open flow ended with {how:?} {closed_after:.2?} after the freeze");
    drop(flow);
    if let Err(e) = east.wait_link_down(mark, Duration::from_secs(1)) {
        let _ = west.signal(libc::SIGCONT);
        panic!("{e}");
    }
    let Some(refused_after) = wait_refused(client, frozen_at, LISTENER_CLOSE_LIMIT) else {
        let _ = west.signal(libc::SIGCONT);
        panic!(
            "east's tcp_listener still accepts {LISTENER_CLOSE_LIMIT:?} after the only \
             router with a tcp_connector froze\n{}",
            describe(&[&east])
        );
    };
    println!("tcp_listener refused connections {refused_after:.2?} after the freeze");

    let mark = east.mark();
    west.signal(libc::SIGCONT).expect("SIGCONT west");
    let thawed_at = Instant::now();
    RouterProc::check(east.wait_link_up("west", mark, RECOVERY_LIMIT), &routers);
    let left = RECOVERY_LIMIT
        .saturating_sub(thawed_at.elapsed())
        .max(Duration::from_secs(1));
    if let Err(e) = echo_until_ok(client, b"after the thaw", left) {
        panic!("round trip after west thawed: {e}\n{}", describe(&routers));
    }
    println!(
        "traffic flows again {:.2?} after SIGCONT",
        thawed_at.elapsed()
    );
}
