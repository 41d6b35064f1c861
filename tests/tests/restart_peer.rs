//! A peer that restarts again and again: the connector keeps coming back.
//!
//! Topology: east's inter-router connector dials west's listener; west has
//! the tcp_connector (an echo service), east the tcp_listener. West is
//! restarted 3 times (SIGTERM, must exit 0; started again on the same
//! port). After each restart east must log `link up` with peer=west again
//! and a 1 MiB byte-exact echo through east→west must work, all within
//! 12 s of the restart: the connector's reconnect backoff has to stay
//! capped (the links are short-lived, so it never gets reset by a long
//! uptime in between).
//!
//! The first two restarts are immediate; before the last one west stays
//! down for 6 s, long enough for an exponential backoff to grow to several
//! seconds, so the last recovery shows whether it is capped. The gaps between east's
//! failed connect attempts (from its log timestamps) are printed and must
//! stay within the same 12 s.

use std::time::{Duration, Instant};

use tether_tests::flows::echo_transfer;
use tether_tests::router::{describe, wait_connectable};
use tether_tests::{free_port, RouterConfig, RouterProc, Service, TestEnv};

const RESTARTS: usize = 3;
const RECOVERY_LIMIT: Duration = Duration::from_secs(12);
const ECHO_BYTES: u64 = 1 << 20;
/// How long west stays down before each restart.
const DOWNTIME: [Duration; RESTARTS] = [Duration::ZERO, Duration::ZERO, Duration::from_secs(6)];

/// Seconds since midnight of a log line starting with an RFC 3339 UTC
/// timestamp (`2026-11-27T03:22:35.018160Z ...`), if it does.
fn log_time(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?;
    let (_, time) = ts.split_once('T')?;
    let time = time.strip_suffix('Z')?;
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Gaps (s) between consecutive failed connect attempts east logged from
/// line `since` on (the link to west refused while west was down).
fn connect_failure_gaps(east: &RouterProc, since: usize) -> Vec<f64> {
    let times: Vec<f64> = east
        .matching_lines(since, |l| {
            l.contains("link to") && l.contains("connect failed")
        })
        .iter()
        .filter_map(|l| log_time(l))
        .collect();
    times
        .windows(2)
        .map(|w| {
            let d = w[1] - w[0];
            if d < 0.0 {
                d + 86_400.0 // across midnight
            } else {
                d
            }
        })
        .collect()
}

/// 1 MiB each way through `client`, byte-exact, or panic with the logs.
fn echo_1mib(client: u16, seed: u64, what: &str, routers: &[&RouterProc]) {
    match echo_transfer(client, ECHO_BYTES, seed, Duration::from_secs(10)) {
        Ok(r) if r.exact() && r.sent == ECHO_BYTES => {}
        Ok(r) => panic!(
            "{what}: 1 MiB echo not exact: sent {} received {} exact={}\n{}",
            r.sent,
            r.received,
            r.exact(),
            describe(routers)
        ),
        Err(e) => panic!("{what}: 1 MiB echo failed: {e}\n{}", describe(routers)),
    }
}

#[test]
fn link_and_traffic_come_back_after_each_of_three_peer_restarts() {
    let env = TestEnv::new("restart-peer");
    let svc = Service::echo();
    let link = free_port();
    let client = free_port();
    let west_cfg = RouterConfig::new("west")
        .listener(link, "site")
        .tcp_connector("backend", svc.port())
        .tls("site", env.tls_for("west"));
    let east = env.start_router(
        &RouterConfig::new("east")
            .connector(link, "site")
            .tcp_listener("backend", client)
            .tls("site", env.tls_for("east")),
    );
    let mut west = env.start_router(&west_cfg);
    RouterProc::check(
        east.wait_link_up("west", 0, Duration::from_secs(10)),
        &[&east, &west],
    );
    if let Err(e) = wait_connectable(client, Duration::from_secs(10), &[&east, &west]) {
        panic!("east's tcp_listener after the first link: {e}");
    }
    echo_1mib(client, 0xface_0000, "before any restart", &[&east, &west]);

    let mut recoveries = Vec::new();
    for (round, downtime) in (1..=RESTARTS).zip(DOWNTIME) {
        let mark = east.mark();
        match west.terminate(Duration::from_secs(5)) {
            Some(st) if st.success() => {}
            other => panic!(
                "restart {round}: west did not exit 0 within 5 s of SIGTERM: {other:?}\n{}",
                describe(&[&east, &west])
            ),
        }
        RouterProc::check(
            east.wait_link_down(mark, Duration::from_secs(5)),
            &[&east, &west],
        );
        if !downtime.is_zero() {
            std::thread::sleep(downtime);
        }
        west = env.start_router(&west_cfg);
        let restarted_at = Instant::now();
        let routers = [&east, &west];
        RouterProc::check(east.wait_link_up("west", mark, RECOVERY_LIMIT), &routers);
        let link_after = restarted_at.elapsed();
        let left = RECOVERY_LIMIT.saturating_sub(link_after);
        if let Err(e) = wait_connectable(client, left, &routers) {
            panic!("restart {round}: east's tcp_listener after the link came back: {e}");
        }
        echo_1mib(
            client,
            0xface_0000 + round as u64,
            &format!("restart {round}"),
            &routers,
        );
        let recovered = restarted_at.elapsed();
        let gaps = connect_failure_gaps(&east, mark);
        println!(
            "restart {round} (down {downtime:.0?}): link up {link_after:.2?}, 1 MiB echo done \
             {recovered:.2?} after the restart; gaps between failed connects: {gaps:.2?} s"
        );
        if let Some(g) = gaps
            .iter()
            .copied()
            .find(|g| *g > RECOVERY_LIMIT.as_secs_f64())
        {
            panic!(
                "restart {round}: east waited {g:.2} s between two connect attempts, more \
                 than {RECOVERY_LIMIT:?}: the reconnect backoff is not capped\n{}",
                describe(&routers)
            );
        }
        assert!(
            recovered <= RECOVERY_LIMIT,
            "restart {round}: recovery took {recovered:?}, more than {RECOVERY_LIMIT:?}: \
             the connector's reconnect backoff is not capped low enough\n{}",
            describe(&routers)
        );
        recoveries.push(recovered);
    }
    assert!(east.is_running(), "east exited during the restarts");
    println!("recoveries: {recoveries:.2?}");
}
