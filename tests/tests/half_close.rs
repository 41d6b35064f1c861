//! Half-close and reset are carried end to end.
//!
//! Topology: client → east (tcp_listener) ═TLS═ west (tcp_connector) →
//! a per-test service that plays one side of the exchange.

use std::io::{ErrorKind, Write};
use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tether_tests::halfclose::{
    greet_then_count, next_report, random_bytes, reply_after_eof, summary,
};
use tether_tests::net::{connect, read_exact_by, read_some_by, read_to_end_by, reset};
use tether_tests::{Pair, PairSpec, Service, TestEnv};

/// The client half-closes; the service reads to EOF, then sends a reply
/// (a summary line and 1 MiB) that the client must receive in full,
/// followed by EOF.
#[test]
fn client_half_close_then_service_replies() {
    const REPLY_BODY: usize = 1 << 20;
    let body = random_bytes(REPLY_BODY, 42);
    let svc = reply_after_eof(body.clone());
    let env = TestEnv::new("half-close-client");
    let pair = Pair::start(&env, PairSpec::new(&env, &[("backend", svc.port())]));

    let payload = random_bytes(100 * 1024, 7);
    let mut s = connect(pair.client_port()).expect("connect");
    s.write_all(&payload).expect("send payload");
    s.shutdown(Shutdown::Write).expect("half-close");
    let got = read_to_end_by(&mut s, 4 << 20, Instant::now() + Duration::from_secs(30))
        .unwrap_or_else(|e| {
            panic!(
                "reading the reply after our half-close: {e}\n{}",
                pair.describe()
            )
        });
    let expected_line = summary(&payload);
    assert!(
        got.starts_with(expected_line.as_bytes()),
        "service's summary differs: expected {expected_line:?}, got {:?}",
        String::from_utf8_lossy(&got[..got.len().min(120)])
    );
    assert_eq!(
        got.len(),
        expected_line.len() + REPLY_BODY,
        "reply length after half-close"
    );
    assert!(got[expected_line.len()..] == body[..], "reply body differs");
}

/// The service sends a greeting and half-closes first; the client sees the
/// greeting then EOF, and can still send 1 MiB that the service receives
/// in full.
#[test]
fn service_half_close_then_client_still_sends() {
    let (rx, svc) = greet_then_count();
    let env = TestEnv::new("half-close-service");
    let pair = Pair::start(&env, PairSpec::new(&env, &[("backend", svc.port())]));

    let mut s = connect(pair.client_port()).expect("connect");
    let greeting = read_to_end_by(&mut s, 1 << 20, Instant::now() + Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("reading greeting then EOF: {e}\n{}", pair.describe()));
    assert_eq!(greeting, b"hello from the service\n", "greeting before EOF");

    let payload = random_bytes(1 << 20, 9);
    s.write_all(&payload).unwrap_or_else(|e| {
        panic!(
            "sending after the service's half-close: {e}\n{}",
            pair.describe()
        )
    });
    s.shutdown(Shutdown::Write).expect("half-close");
    // Reports from Pair::start's readiness probes (0 bytes) are skipped.
    let report = next_report(&rx, Duration::from_secs(30));
    let (n, sha) =
        report.unwrap_or_else(|| panic!("the service never saw our EOF\n{}", pair.describe()));
    assert_eq!(
        n,
        payload.len() as u64,
        "bytes the service received after its half-close"
    );
    assert_eq!(
        sha,
        Sha256::digest(&payload).to_vec(),
        "data the service received differs"
    );
}

/// The service resets the connection (SO_LINGER 0): the client must see an
/// error (a reset), not a clean EOF and not a hang.
#[test]
fn service_reset_reaches_client() {
    let svc = Service::spawn("reset-after-hello", |mut s, ctx| {
        let mut hello = [0u8; 5];
        if ctx.read_exact(&mut s, &mut hello).is_ok() {
            reset(s);
        }
    });
    let env = TestEnv::new("reset-from-service");
    let pair = Pair::start(&env, PairSpec::new(&env, &[("backend", svc.port())]));

    let mut s = connect(pair.client_port()).expect("connect");
    s.write_all(b"hello").expect("send");
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    let outcome = read_some_by(&mut s, &mut buf, Instant::now() + Duration::from_secs(5));
    match outcome {
        Err(e) if e.kind() == ErrorKind::TimedOut => {
            panic!("the service's reset did not reach the client within 5 s (hang)\n{}", pair.describe())
        }
        Err(e) => println!("client saw {:?} ({e}) after {:.2?}", e.kind(), start.elapsed()),
        Ok(0) => panic!(
            "the service's reset reached the client as a clean EOF: a reset must be carried as a reset\n{}",
            pair.describe()
        ),
        Ok(n) => panic!("the client read {n} unexpected bytes instead of a reset"),
    }
}

/// The client resets the connection: the service must see an error (a
/// reset), not a clean EOF and not a hang.
#[test]
fn client_reset_reaches_service() {
    // (bytes read before the end, how it ended)
    let (tx, rx) = mpsc::channel::<(u64, Result<(), ErrorKind>)>();
    let tx = Mutex::new(tx);
    let svc = Service::spawn("observe-reset", move |mut s, ctx| {
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0u64;
        let mut outcome = Err(ErrorKind::Other);
        for _ in 0..1_000_000 {
            match ctx.read(&mut s, &mut buf) {
                Ok(0) => {
                    outcome = Ok(());
                    break;
                }
                Ok(k) => n += k as u64,
                Err(e) => {
                    outcome = Err(e.kind());
                    break;
                }
            }
        }
        let _ = tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((n, outcome));
    });
    let env = TestEnv::new("reset-from-client");
    let pair = Pair::start(&env, PairSpec::new(&env, &[("backend", svc.port())]));

    let mut s = connect(pair.client_port()).expect("connect");
    s.write_all(b"hello").expect("send");
    // Make sure the flow reached the service before resetting it.
    let received = &svc.stats().received;
    let deadline = Instant::now() + Duration::from_secs(10);
    for _ in 0..1000 {
        if received.load(Ordering::Relaxed) >= 5 || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        received.load(Ordering::Relaxed) >= 5,
        "the service never received the client's bytes\n{}",
        pair.describe()
    );
    reset(s);
    // Reports from Pair::start's readiness probes (0 bytes) are skipped.
    let outcome = next_report(&rx, Duration::from_secs(5)).map(|(_, r)| r);
    match outcome {
        Some(Err(kind)) if kind != ErrorKind::TimedOut => println!("service saw {kind:?}"),
        Some(Err(_)) | None => panic!(
            "the client's reset did not reach the service within 5 s (hang)\n{}",
            pair.describe()
        ),
        Some(Ok(())) => panic!(
            "the client's reset reached the service as a clean EOF: a reset must be carried as a reset\n{}",
            pair.describe()
        ),
    }
}

/// Harness self-check, no router: the reset helper really produces a
/// reset at the peer (ECONNRESET, not EOF), so a failure of the reset tests
/// above is the router's.
#[test]
fn harness_reset_direct() {
    let svc = Service::spawn("reset-direct", |mut s, ctx| {
        let mut hello = [0u8; 5];
        if ctx.read_exact(&mut s, &mut hello).is_ok() {
            reset(s);
        }
    });
    let mut s = connect(svc.port()).expect("connect");
    s.write_all(b"hello").expect("send");
    let mut buf = [0u8; 16];
    let r = read_some_by(&mut s, &mut buf, Instant::now() + Duration::from_secs(5));
    assert!(
        matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "direct reset seen as {r:?}"
    );
}

/// Harness self-check, no router: exact reads on a direct connection.
#[test]
fn harness_read_exact_direct() {
    let svc = Service::echo();
    let mut s = connect(svc.port()).expect("connect");
    s.write_all(b"abc").unwrap();
    let mut b = [0u8; 3];
    read_exact_by(&mut s, &mut b, Instant::now() + Duration::from_secs(5)).unwrap();
    assert_eq!(&b, b"abc");
}
