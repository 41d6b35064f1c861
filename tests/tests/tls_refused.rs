//! Inter-router links are refused when TLS does not check out.
//!
//! Each case starts east (inter-router listener + a tcp_listener) and a
//! peer that must be refused. Checks: some router logs a line with
//! `refused` and the reason, no `link up` is logged, and east's
//! tcp_listener never accepts (the peer's tcp_connector is unreachable).
//! Where a router could refuse to start with the defective certificate
//! (an expired one), the peer on the wire is a rustls stand-in
//! ([`tether_tests::tlspeer`]) so the link-level check is still exercised.

use std::io::Write;
use std::time::Duration;

use tether_tests::net::{connect, expect_closed, refused_for};
use tether_tests::router::{describe, wait_connectable};
use tether_tests::tlspeer::{client_handshake, TlsServer};
use tether_tests::{free_port, RouterConfig, RouterProc, Service, TestEnv, TlsProfile};

/// How long to wait for the refusal to be logged.
const LOG_WAIT: Duration = Duration::from_secs(10);
/// How long east's tcp_listener must keep refusing afterwards.
const NOT_CONNECTABLE_FOR: Duration = Duration::from_secs(3);

/// Reasons a TLS refusal may name for each case (lowercase substrings).
const UNKNOWN_CA: &[&str] = &[
    "unknown ca",
    "unknownca",
    "unknown_ca",
    "unknownissuer",
    "unknown issuer",
    "unknown_issuer",
];
const EXPIRED: &[&str] = &["expired"];
const NOT_TLS: &[&str] = &[
    "not speak tls",
    "not tls",
    "plain",
    "corrupt",
    "invalidcontenttype",
    "invalid content type",
    "amqp",
];

/// Waits until one of `routers` logs a line containing `refused` and one of
/// `reasons`; returns (router label, line). Panics with all logs otherwise.
fn wait_refusal(routers: &[&RouterProc], since: &[usize], reasons: &[&str]) -> (String, String) {
    let deadline = std::time::Instant::now() + LOG_WAIT;
    let pred = |l: &str| l.contains("refused") && reasons.iter().any(|r| l.contains(r));
    for _ in 0..(LOG_WAIT.as_millis() / 50 + 2) {
        if let Some(dead) = routers.iter().find(|r| !r.is_running()) {
            // One last look at the logs, then fail.
            for (r, &m) in routers.iter().zip(since) {
                if let Some(line) = r.matching_lines(m, pred).into_iter().next() {
                    panic!(
                        "router {} exited after logging the refusal ({line})\n{}",
                        dead.label(),
                        describe(routers)
                    );
                }
            }
            panic!("router {} exited\n{}", dead.label(), describe(routers));
        }
        for (r, &m) in routers.iter().zip(since) {
            if let Some(line) = r.matching_lines(m, pred).into_iter().next() {
                return (r.label().to_string(), line);
            }
        }
        if std::time::Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "no router logged `refused` with one of {reasons:?} within {LOG_WAIT:?}\n{}",
        describe(routers)
    );
}

fn assert_no_link_up(routers: &[&RouterProc]) {
    for r in routers {
        let ups = r.matching_lines(0, |l| l.contains("link up"));
        assert!(
            ups.is_empty(),
            "router {} logged a link up that must have been refused: {ups:?}\n{}",
            r.label(),
            describe(routers)
        );
    }
}

/// East and a peer "west" with the given TLS profiles; west has the
/// tcp_connector for east's tcp_listener. Returns (east, west, client port).
fn start_pair(
    env: &TestEnv,
    east_tls: TlsProfile,
    west_id: &str,
    west_tls: TlsProfile,
    svc: &Service,
) -> (RouterProc, RouterProc, u16) {
    let link = free_port();
    let client = free_port();
    let east = env.start_router(
        &RouterConfig::new("east")
            .listener(link, "site")
            .tcp_listener("backend", client)
            .tls("site", east_tls),
    );
    let west = env.start_router(
        &RouterConfig::new(west_id)
            .connector(link, "site")
            .tcp_connector("backend", svc.port())
            .tls("site", west_tls),
    );
    (east, west, client)
}

fn assert_listener_stays_closed(client: u16, routers: &[&RouterProc]) {
    if let Err(e) = refused_for(client, NOT_CONNECTABLE_FOR) {
        panic!(
            "east's tcp_listener became connectable over a refused link: {e}\n{}",
            describe(routers)
        );
    }
}

#[test]
fn peer_with_cert_from_another_ca_is_refused() {
    let env = TestEnv::new("tls-foreign-ca");
    let svc = Service::echo();
    // West trusts our CA (so it accepts east) but presents a leaf from an
    // unrelated CA: east must refuse it.
    let foreign = env.certs.foreign_leaf("west");
    let (east, west, client) = start_pair(
        &env,
        env.tls_for("east"),
        "west",
        TlsProfile::new("ca.pem", &foreign.cert, &foreign.key),
        &svc,
    );
    let routers = [&east, &west];
    let (who, line) = wait_refusal(&routers, &[0, 0], UNKNOWN_CA);
    println!("{who}: {line}");
    assert_listener_stays_closed(client, &routers);
    assert_no_link_up(&routers);
    assert!(
        east.is_running() && west.is_running(),
        "a router died\n{}",
        describe(&routers)
    );
}

#[test]
fn peer_trusting_another_ca_refuses_us() {
    let env = TestEnv::new("tls-foreign-trust");
    let svc = Service::echo();
    // West presents a leaf from the unrelated CA and trusts only that CA:
    // both sides must refuse.
    let foreign = env.certs.foreign_leaf("west");
    let (east, west, client) = start_pair(
        &env,
        env.tls_for("east"),
        "west",
        TlsProfile::new("other-ca.pem", &foreign.cert, &foreign.key),
        &svc,
    );
    let routers = [&east, &west];
    let (who, line) = wait_refusal(&routers, &[0, 0], UNKNOWN_CA);
    println!("{who}: {line}");
    assert_listener_stays_closed(client, &routers);
    assert_no_link_up(&routers);
}

/// A TLS client presenting an expired certificate (signed by the right CA)
/// is refused by a router's inter-router listener. The client is a rustls
/// stand-in, since a router may refuse to start with an expired
/// certificate of its own; a control run with a valid certificate shows the
/// stand-in itself is acceptable.
#[test]
fn expired_client_cert_is_refused() {
    let env = TestEnv::new("tls-expired-client");
    let link = free_port();
    let east = env.start_router(
        &RouterConfig::new("east")
            .listener(link, "site")
            .tls("site", env.tls_for("east")),
    );
    if let Err(e) = wait_connectable(link, Duration::from_secs(10), &[&east]) {
        panic!("east's inter-router listener: {e}");
    }
    // Control: the same client with a valid certificate is not refused by TLS.
    let valid = env.certs.leaf("west");
    let control = client_handshake(
        env.dir(),
        link,
        "ca.pem",
        &valid.cert,
        &valid.key,
        Duration::from_secs(10),
    );
    if let Err(e) = &control {
        let l = e.to_lowercase();
        assert!(
            !(l.contains("alert") || l.contains("certificate")),
            "the stand-in TLS client with a VALID certificate was refused: {e}\n{}",
            describe(&[&east])
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let mark = east.mark();

    let expired = env.certs.expired_leaf("west");
    let outcome = client_handshake(
        env.dir(),
        link,
        "ca.pem",
        &expired.cert,
        &expired.key,
        Duration::from_secs(10),
    );
    println!("client with an expired certificate: {outcome:?}");
    assert!(
        outcome.is_err(),
        "east kept a TLS connection from a client with an expired certificate open\n{}",
        describe(&[&east])
    );
    let (who, line) = wait_refusal(&[&east], &[mark], EXPIRED);
    println!("{who}: {line}");
    assert_no_link_up(&[&east]);
}

/// A router's connector refuses a server presenting an expired certificate.
/// West has two connectors: to a stand-in TLS server with a valid
/// certificate (control: the handshake completes) and to one with an
/// expired certificate (must be refused, logged with the reason).
#[test]
fn expired_server_cert_is_refused() {
    let env = TestEnv::new("tls-expired-server");
    let good = env.certs.leaf("east");
    let expired = env.certs.expired_leaf("east");
    let good_srv = TlsServer::start(env.dir(), "ca.pem", &good.cert, &good.key);
    let expired_srv = TlsServer::start(env.dir(), "ca.pem", &expired.cert, &expired.key);
    let west = env.start_router(
        &RouterConfig::new("west")
            .connector(good_srv.port(), "site")
            .connector(expired_srv.port(), "site")
            .tls("site", env.tls_for("west")),
    );
    let (who, line) = wait_refusal(&[&west], &[0], EXPIRED);
    println!("{who}: {line}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for _ in 0..200 {
        if good_srv.handshakes() > 0 || std::time::Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        good_srv.handshakes() > 0,
        "control: west never completed a handshake with the valid stand-in server\n{}",
        describe(&[&west])
    );
    assert_eq!(
        expired_srv.handshakes(),
        0,
        "west completed a TLS handshake with a server whose certificate expired"
    );
    assert_no_link_up(&[&west]);
}

/// A router configured with an expired certificate of its own never gets a
/// link: it either refuses to start (reporting the expiry) or its peer
/// refuses it. Either way east's tcp_listener stays closed.
#[test]
fn router_with_expired_cert_gets_no_link() {
    let env = TestEnv::new("tls-expired-router");
    let svc = Service::echo();
    let expired = env.certs.expired_leaf("west");
    let (east, west, client) = start_pair(
        &env,
        env.tls_for("east"),
        "west",
        TlsProfile::new("ca.pem", &expired.cert, &expired.key),
        &svc,
    );
    let routers = [&east, &west];
    let deadline = std::time::Instant::now() + LOG_WAIT;
    let mut verdict = None;
    for _ in 0..(LOG_WAIT.as_millis() / 50 + 2) {
        if let Some(st) = west.exit_status() {
            let log = west.log().to_lowercase();
            assert!(
                !st.success() && log.contains("expired"),
                "west exited ({st}) without reporting the expired certificate\n{}",
                describe(&routers)
            );
            verdict = Some(format!("west refused to start: {}", west.tail(1)));
            break;
        }
        let pred = |l: &str| l.contains("refused") && l.contains("expired");
        if let Some(l) = east
            .matching_lines(0, pred)
            .into_iter()
            .chain(west.matching_lines(0, pred))
            .next()
        {
            verdict = Some(format!("link refused: {l}"));
            break;
        }
        if std::time::Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let verdict = verdict.unwrap_or_else(|| {
        panic!(
            "within {LOG_WAIT:?} neither did west refuse to start nor did a router log `refused` + `expired`\n{}",
            describe(&routers)
        )
    });
    println!("{verdict}");
    assert_listener_stays_closed(client, &[&east]);
    assert_no_link_up(&routers);
}

#[test]
fn plain_tcp_peer_is_refused() {
    let env = TestEnv::new("tls-plain-peer");
    let link = free_port();
    let east = env.start_router(
        &RouterConfig::new("east")
            .listener(link, "site")
            .tls("site", env.tls_for("east")),
    );
    if let Err(e) = wait_connectable(link, Duration::from_secs(10), &[&east]) {
        panic!("east's inter-router listener: {e}");
    }
    // The readiness probe above was a TCP connect without TLS too; let its
    // log line (if any) land before taking the mark.
    std::thread::sleep(Duration::from_millis(500));
    let mark = east.mark();

    let mut s = connect(link).expect("connect to the inter-router port");
    s.write_all(b"AMQP\x00\x01\x00\x00")
        .expect("send an AMQP header");
    match expect_closed(&mut s, Duration::from_secs(5)) {
        Ok(how) => println!("plain peer's connection ended: {how:?}"),
        Err(e) => panic!(
            "router kept a plain-text peer connected: {e}\n{}",
            describe(&[&east])
        ),
    }
    let (_, line) = wait_refusal(&[&east], &[mark], NOT_TLS);
    println!("east: {line}");
    assert!(
        east.is_running(),
        "east died after a plain-text peer\n{}",
        describe(&[&east])
    );
}

#[test]
fn duplicate_router_id_is_refused() {
    let env = TestEnv::new("dup-router-id");
    let svc = Service::echo();
    // Both routers are called "east" (and both present the east leaf, so
    // only the id is wrong).
    let (east, dup, client) =
        start_pair(&env, env.tls_for("east"), "east", env.tls_for("east"), &svc);
    let routers = [&east, &dup];
    let deadline = std::time::Instant::now() + LOG_WAIT;
    let mut found = None;
    for _ in 0..(LOG_WAIT.as_millis() / 50 + 2) {
        if let Some(dead) = routers.iter().find(|r| !r.is_running()) {
            panic!("router {} exited\n{}", dead.label(), describe(&routers));
        }
        for r in routers {
            if let Some(l) = r
                .matching_lines(0, |l| l.contains("duplicate router id"))
                .into_iter()
                .next()
            {
                found = Some((r.label().to_string(), l));
            }
        }
        if found.is_some() || std::time::Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (who, line) = found.unwrap_or_else(|| {
        panic!(
            "no router logged `duplicate router id` within {LOG_WAIT:?}\n{}",
            describe(&routers)
        )
    });
    println!("{who}: {line}");
    assert_listener_stays_closed(client, &routers);
    assert_no_link_up(&routers);
}
