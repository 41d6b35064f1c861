//! AMQP 1.0 messaging clients through the routers (issue 4): real Proton
//! clients (`tests/amqp/*.py`, run with the system Python by
//! [`tether_tests::proton`]) against real `tether` routers.
//!
//! Topologies (a link `a -> b` is a connector on `a` dialling `b`; every
//! router has an AMQP client listener with the defaults unless a test says
//! otherwise; `multi...` addresses are multicast):
//!
//! ```text
//!  pair:  east ──► west
//!  line:  east ──► hub ──► west
//!  star:  hub ◄── east ──► west
//! ```
//!
//! What is covered, by test:
//! - connections: SASL none / ANONYMOUS / PLAIN (good and bad passwords,
//!   unknown user), listeners refusing bare AMQP and ANONYMOUS, TLS with
//!   and without required client certificates; the Open offers
//!   `ANONYMOUS-RELAY`;
//! - routing: east -> west and through hub, bodies (Data, AmqpValue string
//!   and map) and properties intact, in order; anonymous relay (`to`);
//!   sender and receiver on one router;
//! - flow control: no credit while no receiver exists anywhere, credit once
//!   one attaches elsewhere; a slow receiver holds the sender to a bounded
//!   number of unsettled deliveries and the routers' RSS stays bounded;
//!   drain returns unused credit;
//! - settlement: accepted / rejected (with its error) / released / modified
//!   end to end; a receiver detaching, disconnecting, or its router killed
//!   before settling gives the sender released or modified, within a
//!   bound; pre-settled messages arrive at most once;
//! - dynamic addresses reachable from another router, request/reply;
//! - multicast to receivers on two routers; a 10 MiB message; balanced
//!   anycast over two routers.
//!
//! Every program has a hard timeout and every wait here is bounded. The
//! tests are skipped, with a message, only when `/usr/bin/python3` cannot
//! import `proton` (`TETHER_REQUIRE_PROTON=1` makes that a failure).
//!
//! `TETHER_AMQP_REFERENCE=1` runs the tests that need no router-specific
//! feature (TLS, PLAIN, killing a router) against `tests/amqp/minirouter.py`
//! instead: one Proton process with one port per router name. That checks
//! the client programs and these tests themselves, not tether.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tether_tests::args;
use tether_tests::proton::{self, Client, Report, Value};
use tether_tests::{certs, procfs, Distribution, Network, NetworkSpec, TestEnv};

/// The hard timeout of one client program.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(40);
/// How long a receiver may take to attach (connect, SASL, attach).
const ATTACH_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound for a sender to get an outcome for every delivery after the
/// receiver's link, connection or router went away.
const RELEASE_BOUND: Duration = Duration::from_secs(15);
/// A receiver's idle time that counts as "the sender is done".
const IDLE_S: &str = "3";

// ---------------------------------------------------------------------
// Where the clients connect
// ---------------------------------------------------------------------

/// Routers (or the reference stand-in) for one test.
struct Sites {
    // Dropped before `env`, so a failed test's logs are kept with it.
    // The reference stand-in is only held: dropping it kills it.
    _reference: Option<Client>,
    net: Option<Network>,
    ports: Vec<(String, u16)>,
    env: TestEnv,
    name: String,
}

/// What a test needs from the routers beyond plain AMQP routing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Needs {
    /// Plain routing: the reference stand-in can run it too.
    Routing,
    /// TLS, SASL PLAIN, router logs or killing a router: tether only.
    Tether,
}

impl Sites {
    /// Starts `routers` linked by `links` (each `(from, to)`, cost 1),
    /// every router with a default AMQP listener, `multi` multicast, and
    /// whatever `more` adds; or the reference stand-in. `None`: skip.
    fn start(
        name: &str,
        needs: Needs,
        routers: &[&str],
        links: &[(&str, &str)],
        more: impl FnOnce(NetworkSpec, &TestEnv) -> NetworkSpec,
    ) -> Option<Sites> {
        if proton::skip_without_proton(name) {
            return None;
        }
        let env = TestEnv::new(name);
        if reference_mode() {
            if needs == Needs::Tether {
                println!("SKIPPED {name}: needs tether (TETHER_AMQP_REFERENCE=1)");
                return None;
            }
            let ports: Vec<(String, u16)> = routers
                .iter()
                .map(|r| (r.to_string(), tether_tests::free_port()))
                .collect();
            let mut a = Vec::new();
            for (_, p) in &ports {
                a.extend(args!["--port", p]);
            }
            let mut mini = Client::spawn("minirouter.py", a, Duration::from_secs(600));
            if let Err(e) = mini.wait_event("listening", Duration::from_secs(15)) {
                panic!("reference router: {e}");
            }
            return Some(Sites {
                _reference: Some(mini),
                net: None,
                ports,
                env,
                name: name.to_string(),
            });
        }
        let mut spec = NetworkSpec::new(&env, routers)
            .amqp_everywhere()
            .address("multi", Distribution::Multicast);
        for (from, to) in links {
            spec = spec.link(from, to, 1);
        }
        let spec = more(spec, &env);
        let net = Network::start(&env, spec);
        let ports = routers
            .iter()
            .map(|r| (r.to_string(), net.amqp_port(r)))
            .collect();
        Some(Sites {
            _reference: None,
            net: Some(net),
            ports,
            env,
            name: name.to_string(),
        })
    }

    /// east -> west.
    fn pair(name: &str, needs: Needs) -> Option<Sites> {
        Sites::start(
            name,
            needs,
            &["east", "west"],
            &[("east", "west")],
            |s, _| s,
        )
    }

    /// east -> hub -> west.
    fn line(name: &str) -> Option<Sites> {
        Sites::start(
            name,
            Needs::Routing,
            &["east", "hub", "west"],
            &[("east", "hub"), ("hub", "west")],
            |s, _| s,
        )
    }

    /// The AMQP port of `router`.
    fn port(&self, router: &str) -> u16 {
        self.ports
            .iter()
            .find(|(r, _)| r == router)
            .map(|(_, p)| *p)
            .unwrap_or_else(|| panic!("no router {router} in {}", self.name))
    }

    /// The running network (tether only).
    fn net(&self) -> &Network {
        self.net.as_ref().expect("a tether network")
    }

    /// Router log tails (empty for the reference).
    fn describe(&self) -> String {
        self.net.as_ref().map(Network::describe).unwrap_or_default()
    }

    /// A file name in the test folder (stop and probe files).
    fn file(&self, name: &str) -> PathBuf {
        self.env.dir().join(name)
    }

    /// Panics with the routers' log tails if `r` is an `Err`.
    fn check<T>(&self, r: Result<T, String>) -> T {
        r.unwrap_or_else(|e| panic!("{}: {e}\n{}", self.name, self.describe()))
    }

    /// The `done` line of a program that must have succeeded.
    fn done<'a>(&self, r: &'a Report) -> &'a Value {
        if !r.success() || r.last("done").is_none() {
            panic!(
                "{}: {} failed\n{}\n{}",
                self.name,
                r.command,
                r.describe(),
                self.describe()
            );
        }
        r.done()
    }

    /// Starts receive.py on `router` and waits until it is attached.
    fn receiver(&self, router: &str, extra: Vec<String>) -> Client {
        let mut a = args!["--port", self.port(router)];
        a.extend(extra);
        let mut c = Client::spawn("receive.py", a, SCRIPT_TIMEOUT);
        self.check(c.wait_event("attached", ATTACH_TIMEOUT));
        c
    }

    /// Starts send.py on `router` (not waiting for anything).
    fn sender(&self, router: &str, extra: Vec<String>) -> Client {
        let mut a = args!["--port", self.port(router)];
        a.extend(extra);
        Client::spawn("send.py", a, SCRIPT_TIMEOUT)
    }

    /// Runs send.py on `router` to the end.
    fn send(&self, router: &str, extra: Vec<String>) -> Report {
        self.sender(router, extra).finish()
    }

    /// Runs connect.py against `port` with `extra` options.
    fn connect(&self, port: u16, extra: Vec<String>) -> Report {
        let mut a = args!["--port", port];
        a.extend(extra);
        proton::run("connect.py", a, Duration::from_secs(20))
    }
}

fn reference_mode() -> bool {
    std::env::var("TETHER_AMQP_REFERENCE").is_ok_and(|v| v == "1")
}

fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("expected a number, got {v}"))
}

/// `done["outcomes"][name]`.
fn outcome(done: &Value, name: &str) -> u64 {
    done["outcomes"][name].as_u64().unwrap_or(0)
}

// ---------------------------------------------------------------------
// 1. Connections: SASL and TLS
// ---------------------------------------------------------------------

/// Bare AMQP (no SASL layer) and SASL ANONYMOUS both get in on a default
/// listener; the Open offers ANONYMOUS-RELAY and the connection is usable
/// (a receiver attaches).
#[test]
fn clients_connect_with_and_without_sasl() {
    let Some(s) = Sites::pair("amqp-connect-sasl", Needs::Routing) else {
        return;
    };
    for sasl in ["none", "anonymous", "default"] {
        let r = s.connect(s.port("east"), args!["--sasl", sasl, "--expect", "open"]);
        let done = s.done(&r);
        assert_eq!(done["attached"], true, "sasl {sasl}: {}", r.describe());
        let opened = r.last("opened").expect("an opened line");
        let caps: Vec<&str> = opened["offered_capabilities"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert!(
            caps.contains(&"ANONYMOUS-RELAY"),
            "sasl {sasl}: the router's Open must offer ANONYMOUS-RELAY, offered {caps:?}"
        );
    }
}

/// PLAIN against a users file: the right password gets in, a wrong one
/// or an unknown user is refused with an authentication error; ANONYMOUS
/// still works where it is offered.
#[test]
fn plain_checks_the_password() {
    let Some(s) = Sites::start("amqp-plain", Needs::Tether, &["east"], &[], |spec, env| {
        std::fs::write(
            env.dir().join("users.toml"),
            tether_tests::config::users_toml(&[("alice", "s3cret"), ("bob", "hunter2")]),
        )
        .expect("write users file");
        spec.amqp_with("east", "plain", |l| {
            l.sasl_mechanisms(&["ANONYMOUS", "PLAIN"])
                .users_file("users.toml")
        })
    }) else {
        return;
    };
    let port = s.net().amqp_port_named("east", "plain");
    let plain = |user: &str, pw: &str, expect: &str| {
        s.connect(
            port,
            args![
                "--sasl",
                "plain",
                "--user",
                user,
                "--password",
                pw,
                "--expect",
                expect
            ],
        )
    };
    for (user, pw) in [("alice", "s3cret"), ("bob", "hunter2")] {
        let r = plain(user, pw, "open");
        assert_eq!(s.done(&r)["attached"], true, "{user}: {}", r.describe());
    }
    for (user, pw, what) in [
        ("alice", "wrong", "a wrong password"),
        ("alice", "", "an empty password"),
        ("mallory", "s3cret", "an unknown user"),
    ] {
        let r = plain(user, pw, "refused");
        s.done(&r);
        let refused = r.last("refused").expect("a refused line");
        assert_eq!(
            refused["condition"],
            "amqp:unauthorized-access",
            "{what} must be refused with an authentication error: {}",
            r.describe()
        );
        assert_eq!(refused["opened"], false, "{what}: the router sent Open");
    }
    let r = s.connect(port, args!["--sasl", "anonymous", "--expect", "open"]);
    s.done(&r);
}

/// A listener offering only PLAIN and not allowing bare AMQP refuses
/// clients without SASL and ANONYMOUS ones, and lets PLAIN in.
#[test]
fn listener_can_refuse_bare_amqp_and_anonymous() {
    let Some(s) = Sites::start(
        "amqp-plain-only",
        Needs::Tether,
        &["east"],
        &[],
        |spec, env| {
            std::fs::write(
                env.dir().join("users.toml"),
                tether_tests::config::users_toml(&[("alice", "s3cret")]),
            )
            .expect("write users file");
            spec.amqp_with("east", "strict", |l| {
                l.sasl_mechanisms(&["PLAIN"])
                    .allow_no_sasl(false)
                    .users_file("users.toml")
            })
        },
    ) else {
        return;
    };
    let port = s.net().amqp_port_named("east", "strict");
    for sasl in ["none", "anonymous"] {
        let r = s.connect(port, args!["--sasl", sasl, "--expect", "refused"]);
        s.done(&r);
    }
    let r = s.connect(
        port,
        args![
            "--sasl",
            "plain",
            "--user",
            "alice",
            "--password",
            "s3cret",
            "--expect",
            "open"
        ],
    );
    s.done(&r);
}

/// TLS with the router's certificate (chain and host name checked by the
/// client), with and without SASL; a client speaking plain AMQP to the TLS
/// port is refused.
#[test]
fn tls_clients_connect() {
    let Some(s) = Sites::start("amqp-tls", Needs::Tether, &["east"], &[], |spec, _| {
        spec.amqp_with("east", "tls", |l| l.tls("site"))
    }) else {
        return;
    };
    let port = s.net().amqp_port_named("east", "tls");
    let ca = s.env.dir().join(certs::CA_FILE);
    let ca = ca.to_str().expect("UTF-8 path");
    for (verify, sasl) in [
        ("peer", "anonymous"),
        ("name", "anonymous"),
        ("peer", "none"),
    ] {
        let r = s.connect(
            port,
            args!["--tls", "--ca", ca, "--verify", verify, "--sasl", sasl, "--expect", "open"],
        );
        let done = s.done(&r);
        assert_eq!(done["attached"], true, "{}", r.describe());
    }
    let r = s.connect(port, args!["--sasl", "anonymous", "--expect", "refused"]);
    s.done(&r);
}

/// `require_client_cert`: a client certificate from the profile's CA gets
/// in; none, or one from another CA, is refused.
#[test]
fn tls_client_certificate_required() {
    let Some(s) = Sites::start(
        "amqp-tls-mutual",
        Needs::Tether,
        &["east"],
        &[],
        |spec, _| spec.amqp_with("east", "mtls", |l| l.tls("site").require_client_cert(true)),
    ) else {
        return;
    };
    let port = s.net().amqp_port_named("east", "mtls");
    let dir = s.env.dir();
    let path = |f: &str| dir.join(f).to_str().expect("UTF-8 path").to_string();
    let ca = path(certs::CA_FILE);
    let good = s.env.certs.leaf("client-app");
    let foreign = s.env.certs.foreign_leaf("client-app");
    let with_cert = |cert: &str, key: &str, expect: &str| {
        s.connect(
            port,
            args!["--tls", "--ca", &ca, "--cert", cert, "--key", key, "--expect", expect],
        )
    };
    let r = with_cert(&path(&good.cert), &path(&good.key), "open");
    assert_eq!(s.done(&r)["attached"], true, "{}", r.describe());
    let r = with_cert(&path(&foreign.cert), &path(&foreign.key), "refused");
    s.done(&r);
    let r = s.connect(port, args!["--tls", "--ca", &ca, "--expect", "refused"]);
    s.done(&r);
}

// ---------------------------------------------------------------------
// 2. Routing by address
// ---------------------------------------------------------------------

/// Sends `count` mixed-body messages from `from` to a receiver on `to`
/// and checks every one arrived intact, in order, accepted.
fn route_and_check(s: &Sites, from: &str, to: &str, address: &str, count: u64) {
    let rx = s.receiver(to, args!["--address", address, "--count", count, "--quiet"]);
    let tx = s.send(
        from,
        args![
            "--address",
            address,
            "--count",
            count,
            "--kind",
            "mixed",
            "--size",
            512
        ],
    );
    let sent = s.done(&tx);
    let rx = rx.finish();
    let got = s.done(&rx);
    assert_eq!(u(&got["received"]), count, "{}", rx.describe());
    assert_eq!(
        u(&got["bad"]),
        0,
        "messages changed on the way: {}",
        got["bad_examples"]
    );
    assert_eq!(got["in_order"], true, "out of order: {}", got["tags"]);
    assert_eq!(u(&got["duplicates"]), 0);
    assert_eq!(outcome(sent, "accepted"), count, "{}", tx.describe());
    println!(
        "{count} messages {from} -> {to}: {} msg/s",
        sent["msgs_per_s"]
    );
}

/// A receiver on west, a sender on east: every message arrives, bodies
/// (Data, AmqpValue string and map) and properties intact, in order.
#[test]
fn messages_cross_two_routers_intact_and_in_order() {
    let Some(s) = Sites::pair("amqp-route-pair", Needs::Routing) else {
        return;
    };
    let cpu = |s: &Sites| -> Option<Duration> {
        let net = s.net.as_ref()?;
        let e = procfs::cpu_time(net.router("east").pid())?;
        let w = procfs::cpu_time(net.router("west").pid())?;
        Some(e + w)
    };
    let before = cpu(&s);
    route_and_check(&s, "east", "west", "orders", 500);
    if let (Some(b), Some(a)) = (before, cpu(&s)) {
        println!(
            "router CPU (both): {:.1} µs per message (includes setup)",
            (a - b).as_secs_f64() * 1e6 / 500.0
        );
    }
}

/// The same through a transit router: east -> hub -> west.
#[test]
fn messages_cross_a_transit_router() {
    let Some(s) = Sites::line("amqp-route-line") else {
        return;
    };
    route_and_check(&s, "east", "west", "orders.line", 500);
    // And back the other way.
    route_and_check(&s, "west", "east", "orders.back", 100);
}

/// Sender and receiver on the same router.
#[test]
fn messages_between_clients_of_one_router() {
    let Some(s) = Sites::pair("amqp-route-local", Needs::Routing) else {
        return;
    };
    route_and_check(&s, "east", "east", "local.q", 300);
}

/// Anonymous relay: a sender with a null target sends each message with
/// `to` set, and it reaches the receiver of that address on the other
/// router, `to` intact.
#[test]
fn anonymous_relay_routes_by_to() {
    let Some(s) = Sites::pair("amqp-anonymous-relay", Needs::Routing) else {
        return;
    };
    for (from, to, address) in [
        ("east", "west", "relay.west"),
        ("west", "east", "relay.east"),
    ] {
        let rx = s.receiver(
            to,
            args![
                "--address",
                address,
                "--count",
                100,
                "--check-to",
                address,
                "--quiet"
            ],
        );
        let tx = s.send(
            from,
            args![
                "--address",
                address,
                "--anonymous",
                "--count",
                100,
                "--kind",
                "mixed"
            ],
        );
        let sent = s.done(&tx);
        let rx = rx.finish();
        let got = s.done(&rx);
        assert_eq!(u(&got["received"]), 100);
        assert_eq!(u(&got["bad"]), 0, "{}", got["bad_examples"]);
        assert_eq!(got["in_order"], true);
        assert_eq!(outcome(sent, "accepted"), 100, "{}", tx.describe());
    }
}

// ---------------------------------------------------------------------
// 3. Flow control
// ---------------------------------------------------------------------

/// A sender whose address has no receiver anywhere gets no credit (for
/// 2 s); once a receiver attaches on the other router it gets credit and
/// everything is delivered.
#[test]
fn sender_gets_credit_only_once_a_receiver_exists() {
    let Some(s) = Sites::pair("amqp-credit-on-receiver", Needs::Routing) else {
        return;
    };
    let mut tx = s.sender(
        "east",
        args!["--address", "later", "--count", 50, "--no-credit-for", 2],
    );
    s.check(tx.wait_event("no_credit", Duration::from_secs(20)));
    let attached = Instant::now();
    let rx = s.receiver(
        "west",
        args!["--address", "later", "--count", 50, "--quiet"],
    );
    let credit = s.check(tx.wait_event("credit", Duration::from_secs(15)));
    println!(
        "credit {:.0} ms after the remote receiver attached",
        attached.elapsed().as_secs_f64() * 1000.0
    );
    assert!(u(&credit["credit"]) > 0);
    let tx = tx.finish();
    let sent = s.done(&tx);
    assert_eq!(outcome(sent, "accepted"), 50);
    let rx = rx.finish();
    assert_eq!(u(&s.done(&rx)["received"]), 50);
}

/// A slow receiver (credit 10, one message per 2 ms) and a sender sending
/// unsettled as fast as credit allows: the sender is held to a bounded
/// number of unsettled deliveries (the routers pass credit back, they do
/// not buffer everything), the routers' RSS stays bounded, and every
/// message arrives in order.
#[test]
fn slow_receiver_holds_the_sender_back() {
    const COUNT: u64 = 3000;
    const SIZE: u64 = 16 * 1024;
    // Everything buffered would be COUNT x SIZE = 47 MiB; a router giving
    // a sender 250 credit holds 4 MiB of messages for it (measured: east
    // grew ~11 MiB with allocator slack, west ~6 MiB).
    const MAX_UNSETTLED: u64 = 1000;
    const RSS_GROWTH_LIMIT_KIB: u64 = 24 * 1024;
    let Some(s) = Sites::pair("amqp-slow-receiver", Needs::Routing) else {
        return;
    };
    let pids: Vec<(String, u32)> = s
        .net
        .as_ref()
        .map(|n| {
            n.routers()
                .iter()
                .map(|r| (r.id().to_string(), r.pid()))
                .collect()
        })
        .unwrap_or_default();
    let base: Vec<u64> = pids
        .iter()
        .map(|(_, p)| procfs::rss_kib(*p).unwrap_or(0))
        .collect();
    let sampler = RssSampler::start(pids.iter().map(|(_, p)| *p).collect());
    let rx = s.receiver(
        "west",
        args![
            "--address",
            "slow",
            "--count",
            COUNT,
            "--credit",
            10,
            "--delay-ms",
            2,
            "--quiet"
        ],
    );
    let tx = s.send(
        "east",
        args!["--address", "slow", "--count", COUNT, "--size", SIZE],
    );
    let rx = rx.finish();
    let peaks = sampler.stop();
    let sent = s.done(&tx);
    let got = s.done(&rx);
    println!(
        "slow receiver: {} msg/s, sender max unsettled {}, receiver {:.1} s",
        sent["msgs_per_s"], sent["max_unsettled"], got["elapsed_s"]
    );
    assert_eq!(u(&got["received"]), COUNT);
    assert_eq!(got["in_order"], true);
    assert_eq!(u(&got["bad"]), 0);
    assert_eq!(outcome(sent, "accepted"), COUNT);
    let max_unsettled = u(&sent["max_unsettled"]);
    assert!(
        max_unsettled <= MAX_UNSETTLED,
        "the sender had {max_unsettled} unsettled deliveries at once (limit {MAX_UNSETTLED}): \
         the routers gave credit for messages the receiver had not taken\n{}",
        s.describe()
    );
    for (((id, _), b), peak) in pids.iter().zip(&base).zip(&peaks) {
        let growth = peak.saturating_sub(*b);
        println!("{id}: RSS {b} KiB before, peak {peak} KiB");
        assert!(
            growth <= RSS_GROWTH_LIMIT_KIB,
            "{id}'s RSS grew by {growth} KiB (limit {RSS_GROWTH_LIMIT_KIB} KiB) \
             behind a slow receiver: messages are being buffered\n{}",
            s.describe()
        );
    }
}

/// Drain: a receiver asking for 10 in drain mode with nothing to receive
/// gets its credit back (credit 0, 10 drained) promptly; and a receiver on
/// west that got the 5 messages a sender on east had, then drains, gets
/// the rest of its credit back.
#[test]
fn drain_returns_unused_credit() {
    let Some(s) = Sites::pair("amqp-drain", Needs::Routing) else {
        return;
    };
    let r = proton::run(
        "receive.py",
        args![
            "--port",
            s.port("west"),
            "--address",
            "nothing.here",
            "--credit",
            0,
            "--drain",
            10
        ],
        SCRIPT_TIMEOUT,
    );
    let done = s.done(&r);
    let drain = &done["drain"];
    assert_eq!(u(&drain["credit_after"]), 0, "{}", r.describe());
    assert_eq!(u(&drain["drained"]), 10, "{}", r.describe());
    println!("drained 10 with nothing to receive in {} s", drain["secs"]);

    let rx = s.receiver(
        "west",
        args![
            "--address",
            "five",
            "--credit",
            10,
            "--count",
            5,
            "--drain",
            0
        ],
    );
    let tx = s.send("east", args!["--address", "five", "--count", 5]);
    s.done(&tx);
    let rx = rx.finish();
    let done = s.done(&rx);
    let drain = &done["drain"];
    assert_eq!(u(&done["received"]), 5);
    assert_eq!(u(&drain["credit_after"]), 0, "{}", rx.describe());
    assert_eq!(
        u(&drain["drained"]),
        u(&drain["credit_before"]),
        "all credit left must come back drained: {}",
        rx.describe()
    );
}

// ---------------------------------------------------------------------
// 4. Settlement
// ---------------------------------------------------------------------

/// Each outcome the receiver on west gives reaches the sender on east.
#[test]
fn receiver_outcomes_reach_the_sender() {
    let Some(s) = Sites::pair("amqp-outcomes", Needs::Routing) else {
        return;
    };
    for (disposition, outcome_name) in [
        ("accept", "accepted"),
        ("reject", "rejected"),
        ("release", "released"),
        ("modify", "modified"),
    ] {
        let address = format!("outcome.{disposition}");
        let rx = s.receiver(
            "west",
            args![
                "--address",
                address,
                "--count",
                20,
                "--disposition",
                disposition,
                "--quiet"
            ],
        );
        let tx = s.send(
            "east",
            args![
                "--address",
                address,
                "--count",
                20,
                "--expect",
                outcome_name
            ],
        );
        let sent = s.done(&tx);
        s.done(&rx.finish());
        assert_eq!(outcome(sent, outcome_name), 20, "{}", tx.describe());
        match outcome_name {
            "rejected" => {
                let conds = sent["rejected_conditions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                assert!(
                    !conds.is_empty()
                        && conds
                            .iter()
                            .all(|c| c["condition"] == "tether-test:rejected"),
                    "the receiver's rejection error must reach the sender: {}",
                    tx.describe()
                );
            }
            "modified" => assert_eq!(
                u(&sent["modified_failed"]),
                20,
                "delivery-failed must reach the sender: {}",
                tx.describe()
            ),
            _ => {}
        }
    }
}

/// A receiver that detaches while holding unsettled messages: the sender
/// gets released or modified for every one, within a bound.
#[test]
fn receiver_detaching_unsettled_releases_to_the_sender() {
    let Some(s) = Sites::pair("amqp-detach-unsettled", Needs::Routing) else {
        return;
    };
    let rx = s.receiver(
        "west",
        args![
            "--address",
            "held",
            "--disposition",
            "none",
            "--detach-after",
            20,
            "--quiet"
        ],
    );
    let started = Instant::now();
    let tx = s.send(
        "east",
        args![
            "--address",
            "held",
            "--count",
            20,
            "--expect",
            "released-or-modified"
        ],
    );
    let sent = s.done(&tx);
    let rx = rx.finish();
    assert_eq!(s.done(&rx)["detached"], true);
    assert_eq!(
        outcome(sent, "released") + outcome(sent, "modified"),
        20,
        "{}",
        tx.describe()
    );
    assert!(started.elapsed() < RELEASE_BOUND + Duration::from_secs(5));
}

/// Holds 20 unsettled messages at a receiver on west, then `cut` takes the
/// receiver away; the sender on east must get released or modified for
/// each within [`RELEASE_BOUND`].
fn held_then_cut(s: &Sites, address: &str, cut: impl FnOnce(Client)) {
    let mut rx = s.receiver(
        "west",
        args![
            "--address",
            address,
            "--disposition",
            "none",
            "--count",
            1000
        ],
    );
    let mut tx = s.sender(
        "east",
        args![
            "--address",
            address,
            "--count",
            20,
            "--expect",
            "released-or-modified"
        ],
    );
    for _ in 0..20 {
        s.check(rx.wait_event("message", Duration::from_secs(20)));
    }
    // The sender has all 20 out and none settled.
    let progress = s.check(
        tx.wait_line("progress with 20 sent", Duration::from_secs(5), |v| {
            v["event"] == "progress" && v["sent"] == 20
        }),
    );
    assert_eq!(
        u(&progress["settled"]),
        0,
        "settled before the cut: {progress}"
    );
    let cut_at = Instant::now();
    cut(rx);
    let done = s.check(tx.wait_event("done", RELEASE_BOUND));
    println!(
        "sender had every outcome {:.0} ms after the cut: {}",
        cut_at.elapsed().as_secs_f64() * 1000.0,
        done["outcomes"]
    );
    let tx = tx.finish();
    let sent = s.done(&tx);
    assert_eq!(
        outcome(sent, "released") + outcome(sent, "modified"),
        20,
        "{}",
        tx.describe()
    );
}

/// The receiver's connection drops (its process is killed) with 20
/// unsettled: the sender on the other router gets released/modified.
#[test]
fn receiver_connection_lost_releases_to_the_sender() {
    let Some(s) = Sites::pair("amqp-receiver-lost", Needs::Routing) else {
        return;
    };
    held_then_cut(&s, "lost", |rx| {
        rx.kill();
    });
}

/// The receiver's router is killed with 20 unsettled: the sender on east
/// gets released/modified.
#[test]
fn receiver_router_killed_releases_to_the_sender() {
    let Some(s) = Sites::pair("amqp-router-killed", Needs::Tether) else {
        return;
    };
    held_then_cut(&s, "doomed", |rx| {
        s.net().router("west").kill();
        drop(rx);
    });
}

/// Pre-settled messages arrive at most once, in order.
#[test]
fn presettled_messages_arrive_at_most_once() {
    let Some(s) = Sites::pair("amqp-presettled", Needs::Routing) else {
        return;
    };
    let rx = s.receiver(
        "west",
        args![
            "--address",
            "fire.forget",
            "--idle",
            IDLE_S,
            "--allow-gaps",
            "--credit",
            600,
            "--quiet"
        ],
    );
    let tx = s.send(
        "east",
        args!["--address", "fire.forget", "--count", 500, "--presettled"],
    );
    s.done(&tx);
    let rx = rx.finish();
    let got = s.done(&rx);
    let received = u(&got["received"]);
    println!("pre-settled: {received} of 500 arrived");
    assert!(received <= 500);
    assert!(
        received > 0,
        "no pre-settled message arrived: {}",
        rx.describe()
    );
    assert_eq!(
        u(&got["duplicates"]),
        0,
        "a pre-settled message arrived twice"
    );
    assert_eq!(got["in_order"], true);
    assert_eq!(u(&got["bad"]), 0);
}

// ---------------------------------------------------------------------
// 5. Dynamic addresses
// ---------------------------------------------------------------------

/// A receiver with a dynamic source on east gets an address that a sender
/// on west can send to.
#[test]
fn dynamic_address_is_reachable_from_another_router() {
    let Some(s) = Sites::pair("amqp-dynamic", Needs::Routing) else {
        return;
    };
    let a = args![
        "--port",
        s.port("east"),
        "--dynamic",
        "--count",
        20,
        "--credit",
        50,
        "--quiet"
    ];
    let mut rx = Client::spawn("receive.py", a, SCRIPT_TIMEOUT);
    let attached = s.check(rx.wait_event("attached", ATTACH_TIMEOUT));
    let address = attached["address"]
        .as_str()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| panic!("no dynamic address assigned: {attached}"))
        .to_string();
    println!("dynamic address: {address}");
    let tx = s.send("west", args!["--address", address, "--count", 20]);
    let sent = s.done(&tx);
    assert_eq!(outcome(sent, "accepted"), 20);
    let rx = rx.finish();
    assert_eq!(u(&s.done(&rx)["received"]), 20);
}

/// Request/reply: requests from east to a service on west carry a dynamic
/// reply_to; every reply comes back intact.
#[test]
fn request_reply_through_a_dynamic_reply_address() {
    let Some(s) = Sites::pair("amqp-request-reply", Needs::Routing) else {
        return;
    };
    let stop = s.file("stop-service");
    let service = s.receiver(
        "west",
        args![
            "--address",
            "service.echo",
            "--reply",
            "--stop-file",
            stop.display(),
            "--quiet"
        ],
    );
    let r = proton::run(
        "request.py",
        args![
            "--port",
            s.port("east"),
            "--address",
            "service.echo",
            "--count",
            100,
            "--quiet"
        ],
        SCRIPT_TIMEOUT,
    );
    let done = s.done(&r);
    std::fs::write(&stop, b"").expect("stop file");
    assert_eq!(u(&done["replies"]), 100);
    let svc = service.finish();
    let svc_done = s.done(&svc);
    assert_eq!(
        u(&svc_done["replies"]["accepted"]),
        100,
        "{}",
        svc.describe()
    );
}

// ---------------------------------------------------------------------
// 6.-8. Multicast, a large message, balanced anycast
// ---------------------------------------------------------------------

/// Waits until every receiver printed a probe, then creates `file` so the
/// sender stops probing and sends the data.
fn wait_probes(s: &Sites, receivers: &mut [&mut Client], file: &PathBuf) {
    for rx in receivers.iter_mut() {
        s.check(rx.wait_event("probe", Duration::from_secs(20)));
    }
    std::fs::write(file, b"").expect("probe file");
}

/// Two receivers (hub, west) for a multicast address and a pre-settled
/// sender on east: both get every message, once, in order.
#[test]
fn multicast_reaches_receivers_on_two_routers() {
    const COUNT: u64 = 200;
    let Some(s) = Sites::line("amqp-multicast") else {
        return;
    };
    let probe = s.file("probed");
    let a = || {
        args![
            "--address",
            "multi.news",
            "--count",
            COUNT,
            "--credit",
            250,
            "--quiet"
        ]
    };
    let mut hub = s.receiver("hub", a());
    let mut west = s.receiver("west", a());
    let tx = s.sender(
        "east",
        args![
            "--address",
            "multi.news",
            "--count",
            COUNT,
            "--presettled",
            "--probe-until",
            probe.display()
        ],
    );
    wait_probes(&s, &mut [&mut hub, &mut west], &probe);
    let tx = tx.finish();
    s.done(&tx);
    for (name, rx) in [("hub", hub), ("west", west)] {
        let rx = rx.finish();
        let got = s.done(&rx);
        assert_eq!(u(&got["received"]), COUNT, "{name}: {}", rx.describe());
        assert_eq!(u(&got["duplicates"]), 0, "{name}");
        assert_eq!(got["in_order"], true, "{name}");
        assert_eq!(u(&got["bad"]), 0, "{name}");
    }
}

/// One 10 MiB message from east to west, body intact (MD5).
#[test]
fn ten_mib_message_crosses_two_routers() {
    const SIZE: u64 = 10 * 1024 * 1024;
    let Some(s) = Sites::pair("amqp-10mib", Needs::Routing) else {
        return;
    };
    let rx = s.receiver("west", args!["--address", "big", "--count", 1]);
    let tx = s.send(
        "east",
        args!["--address", "big", "--count", 1, "--size", SIZE],
    );
    let sent = s.done(&tx);
    let rx = rx.finish();
    let got = s.done(&rx);
    let msg = rx.last("message").expect("a message line");
    assert_eq!(u(&msg["size"]), SIZE, "body length");
    assert_eq!(
        got["md5s"][0], sent["md5s"][0],
        "the 10 MiB body changed on the way"
    );
    assert_eq!(u(&got["bad"]), 0);
    assert_eq!(outcome(sent, "accepted"), 1);
    println!("10 MiB in {} s (sender's view)", sent["elapsed_s"]);
}

/// A 64 MiB message towards a receiver that stops reading (SIGSTOP) is
/// held back hop by hop by frame credit: no router buffers the message
/// (each stays well below its size), and once the receiver resumes the
/// message arrives intact.
#[test]
fn a_large_message_to_a_stalled_receiver_is_not_buffered_whole() {
    const SIZE: u64 = 64 * 1024 * 1024;
    const RSS_LIMIT_KIB: u64 = 48 * 1024;
    let Some(s) = Sites::pair("amqp-stalled-large", Needs::Routing) else {
        return;
    };
    let pids: Vec<u32> = s
        .net
        .as_ref()
        .map(|n| n.routers().iter().map(|r| r.pid()).collect())
        .unwrap_or_default();
    let rx = s.receiver(
        "west",
        args!["--address", "huge", "--count", 1, "--credit", 1],
    );
    let rx_pid = rx.pid().expect("receiver pid");
    procfs::signal(rx_pid, libc::SIGSTOP).expect("stop the receiver");
    let tx = s.sender(
        "east",
        args!["--address", "huge", "--count", 1, "--size", SIZE],
    );
    // While the receiver is stopped the message cannot go anywhere: give
    // it time to pile up if it were going to.
    let sampler = RssSampler::start(pids.clone());
    std::thread::sleep(Duration::from_secs(4));
    let peaks = sampler.stop();
    procfs::signal(rx_pid, libc::SIGCONT).expect("resume the receiver");
    let sent = tx.finish();
    let sent = s.done(&sent);
    let rx = rx.finish();
    let got = s.done(&rx);
    assert_eq!(
        got["md5s"][0], sent["md5s"][0],
        "the body changed on the way"
    );
    for (pid, peak) in pids.iter().zip(&peaks) {
        assert!(
            *peak < RSS_LIMIT_KIB,
            "router {pid} grew to {peak} KiB while a {SIZE}-byte message waited for a stalled receiver"
        );
    }
}

/// Balanced anycast: receivers on hub and west (both one hop from east)
/// for one address; 400 messages from east are spread over both, each
/// delivered exactly once.
///
/// The receivers are slow (credit 20, 2 ms a message) and the sender keeps
/// 100 unsettled, so one receiver alone cannot take them as fast as they
/// come. No probe phase: probes (settled at once) would not show that east
/// knows both receivers, and 400 messages at 2 ms give east ample time to
/// learn the second one.
#[test]
fn balanced_anycast_uses_receivers_on_two_routers() {
    const COUNT: u64 = 400;
    let Some(s) = Sites::start(
        "amqp-balanced",
        Needs::Routing,
        &["east", "hub", "west"],
        &[("east", "hub"), ("east", "west")],
        |spec, _| spec.address("work", Distribution::Balanced),
    ) else {
        return;
    };
    let stop = s.file("stop");
    let a = || {
        args![
            "--address",
            "work.items",
            "--credit",
            20,
            "--delay-ms",
            2,
            "--stop-file",
            stop.display(),
            // Each receiver sees a subset, still in order.
            "--allow-gaps"
        ]
    };
    let hub = s.receiver("hub", a());
    let west = s.receiver("west", a());
    let tx = s.send(
        "east",
        args!["--address", "work.items", "--count", COUNT, "--window", 100],
    );
    let sent = s.done(&tx);
    assert_eq!(outcome(sent, "accepted"), COUNT, "{}", tx.describe());
    std::fs::write(&stop, b"").expect("stop file");
    let mut seen = std::collections::HashSet::new();
    let mut counts = Vec::new();
    for (name, rx) in [("hub", hub), ("west", west)] {
        let rx = rx.finish();
        let got = s.done(&rx);
        counts.push((name, u(&got["received"])));
        for m in rx.events("message") {
            let key = (m["tag"].to_string(), m["seq"].to_string());
            assert!(seen.insert(key), "{name} got a message twice: {m}");
        }
    }
    println!("balanced: {counts:?}");
    assert_eq!(counts.iter().map(|c| c.1).sum::<u64>(), COUNT);
    for (name, n) in &counts {
        assert!(*n > 0, "the receiver on {name} got nothing: {counts:?}");
    }
}

// ---------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------

/// Samples the RSS of some processes every 20 ms on a thread and keeps
/// each one's peak.
struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<u64>>,
}

impl RssSampler {
    fn start(pids: Vec<u32>) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peaks = vec![0u64; pids.len()];
            // Bounded: the test sets the flag; 10 minutes at most anyway.
            for _ in 0..30_000 {
                for (peak, pid) in peaks.iter_mut().zip(&pids) {
                    *peak = (*peak).max(procfs::rss_kib(*pid).unwrap_or(0));
                }
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peaks
        });
        RssSampler { stop, handle }
    }

    fn stop(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}
