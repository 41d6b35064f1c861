//! Tests of the client-connection engine.
//!
//! Two kinds: a real AMQP client (fe2o3-amqp) driven against the engine
//! over `tokio::io::duplex` by a tiny in-test driver loop, and a raw peer
//! that writes frames with `tether-protocol` and checks exactly what the
//! engine answers (error conditions, windows, ranges), on virtual time.
//! Property tests feed hostile input and random router actions.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::CreditMode;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::messaging::{Accepted, Outcome};
use fe2o3_amqp::{Connection, Receiver, Sendable, Sender, Session};
use proptest::prelude::*;
use tether_protocol::types::definitions::{self, ErrorCondition, Handle, Role};
use tether_protocol::types::messaging::{Source, Target, TargetArchetype};
use tether_protocol::types::performatives::{
    Attach, Begin, Close, Detach, Disposition, End, Flow, Open,
};
use tether_protocol::{
    encode_performative, encode_transfer, FrameBody, FrameDecoder, Performative, TransferHeader,
    AMQP_PROTOCOL_HEADER, SASL_PROTOCOL_HEADER,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

/* ------------------------------ in-test driver ------------------------------ */

fn config(sasl: SaslConfig) -> ConnectionConfig {
    ConnectionConfig {
        container_id: "tether-test".into(),
        max_frame_size: 64 * 1024,
        idle_timeout: Duration::from_secs(10),
        sasl,
    }
}

fn anonymous() -> SaslConfig {
    SaslConfig {
        allow_no_sasl: false,
        anonymous: true,
        plain: None,
    }
}

fn plain() -> SaslConfig {
    SaslConfig {
        allow_no_sasl: false,
        anonymous: false,
        plain: Some(Arc::new(HashMap::from([(
            "alice".to_owned(),
            "s3cret".to_owned(),
        )]))),
    }
}

/// What the driver loop ended with.
struct Served {
    events: Vec<Event>,
    error: Option<ConnectionError>,
}

/// The driver, as the router would run it: read -> handle_input -> events
/// (to `on_event`, standing in for the router) -> poll_transmit -> write,
/// and the timer. Ends when the connection is closed or the client hangs up.
async fn serve(
    io: DuplexStream,
    mut conn: ClientConnection,
    mut on_event: impl FnMut(&mut ClientConnection, &Event),
) -> Served {
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut wbuf = BytesMut::new();
    let mut events = Vec::new();
    let mut error = None;
    loop {
        while let Some(ev) = conn.poll_event() {
            on_event(&mut conn, &ev);
            events.push(ev);
        }
        conn.poll_transmit(&mut wbuf);
        if std::env::var_os("AMQP_TRACE").is_some() && !wbuf.is_empty() {
            eprintln!("OUT {:?}", decode_output(&wbuf));
        }
        if !wbuf.is_empty() {
            if wr.write_all(&wbuf).await.is_err() {
                break;
            }
            wbuf.clear();
        }
        if conn.is_closed() {
            break;
        }
        let deadline = conn.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            r = rd.read_buf(&mut rbuf) => match r {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if std::env::var_os("AMQP_TRACE").is_some() {
                        eprintln!("IN {:02x?}", &rbuf[..rbuf.len().min(400)]);
                    }
                    if let Err(e) = conn.handle_input(Instant::now(), &mut rbuf) {
                        error = Some(e);
                    }
                }
            },
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)),
                if deadline.is_some() => conn.handle_timeout(Instant::now()),
        }
    }
    while let Some(ev) = conn.poll_event() {
        events.push(ev);
    }
    let _ = wr.shutdown().await;
    Served { events, error }
}

/// Runs a client (given its end of the pipe) against a served engine;
/// both must finish within 20 s.
async fn run<C, F>(
    cfg: ConnectionConfig,
    on_event: impl FnMut(&mut ClientConnection, &Event),
    client: impl FnOnce(DuplexStream) -> F,
) -> (Served, C)
where
    F: std::future::Future<Output = C>,
{
    let (server_io, client_io) = tokio::io::duplex(256 * 1024);
    let conn = ClientConnection::new(cfg, Instant::now());
    let both = async move { tokio::join!(serve(server_io, conn, on_event), client(client_io)) };
    tokio::time::timeout(Duration::from_secs(20), both)
        .await
        .expect("test timed out")
}

async fn connect(
    io: DuplexStream,
    profile: Option<SaslProfile>,
) -> Result<ConnectionHandle<()>, String> {
    let mut builder = Connection::builder()
        .container_id("fe2o3-client")
        .idle_time_out(20_000u32);
    if let Some(p) = profile {
        builder = builder.sasl_profile(p);
    }
    builder
        .open_with_stream(io)
        .await
        .map_err(|e| e.to_string())
}

/// A router stand-in that accepts every attach, grants 100 credit to
/// senders and accepts every unsettled delivery once complete.
fn accept_all(conn: &mut ClientConnection, ev: &Event) {
    match ev {
        Event::SenderAttached { link, .. } => {
            conn.accept_attach(*link, None);
            conn.set_credit(*link, 100);
        }
        Event::ReceiverAttached { link, .. } => conn.accept_attach(*link, None),
        Event::Transfer {
            link,
            delivery,
            settled: false,
            more: false,
            aborted: false,
            ..
        } => conn.dispose_incoming(
            *link,
            *delivery,
            Some(DeliveryState::Accepted(Accepted {})),
            true,
        ),
        _ => {}
    }
}

fn transfers(events: &[Event]) -> Vec<(bool, bool, Bytes)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Transfer {
                settled,
                more,
                payload,
                ..
            } => Some((*settled, *more, payload.clone())),
            _ => None,
        })
        .collect()
}

/// An AMQP message with one amqp-value string section, hand-encoded.
fn string_message(s: &str) -> Vec<u8> {
    let mut v = vec![0x00, 0x53, 0x77];
    if s.len() < 256 {
        v.extend_from_slice(&[0xa1, s.len() as u8]);
    } else {
        v.push(0xb1);
        v.extend_from_slice(&(s.len() as u32).to_be_bytes());
    }
    v.extend_from_slice(s.as_bytes());
    v
}

/* --------------------------- with a real client ----------------------------- */

#[tokio::test]
async fn sasl_anonymous_sender_settled_and_unsettled() {
    let (served, outcome) = run(config(anonymous()), accept_all, |io| async move {
        let mut connection = connect(io, Some(SaslProfile::Anonymous))
            .await
            .expect("open");
        let mut session = Session::begin(&mut connection).await.expect("begin");
        let mut sender = Sender::attach(&mut session, "sender-1", "queue-a")
            .await
            .expect("attach");
        let settled = Sendable::builder()
            .message("pre-settled")
            .settled(true)
            .build();
        sender.send(settled).await.expect("settled send");
        let outcome = sender.send("unsettled").await.expect("unsettled send");
        sender.close().await.expect("detach");
        session.end().await.expect("end");
        connection.close().await.expect("close");
        outcome
    })
    .await;
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    assert!(served.error.is_none(), "{:?}", served.error);
    let ev = &served.events;
    assert!(
        matches!(&ev[0], Event::Opened { container_id, user: None } if container_id == "fe2o3-client")
    );
    assert!(ev.iter().any(|e| matches!(e,
        Event::SenderAttached { name, target: Some(t), dynamic: false, .. } if name == "sender-1" && t == "queue-a")));
    let t = transfers(ev);
    assert_eq!(t.len(), 2);
    assert!(t[0].0 && !t[0].1 && t[0].2.ends_with(b"pre-settled"));
    assert!(!t[1].0 && t[1].2.ends_with(b"unsettled"));
    assert!(ev
        .iter()
        .any(|e| matches!(e, Event::Detached { error: None, .. })));
    assert_eq!(ev.last(), Some(&Event::Closed { error: None }));
}

#[tokio::test]
async fn sasl_plain_good_password() {
    let (served, ok) = run(config(plain()), accept_all, |io| async move {
        let profile = SaslProfile::Plain {
            username: "alice".into(),
            password: "s3cret".into(),
        };
        let mut connection = connect(io, Some(profile)).await.expect("open");
        connection.close().await.is_ok()
    })
    .await;
    assert!(ok);
    assert_eq!(
        served.events.first(),
        Some(&Event::Opened {
            container_id: "fe2o3-client".into(),
            user: Some("alice".into())
        })
    );
}

#[tokio::test]
async fn sasl_plain_bad_password() {
    let (served, result) = run(config(plain()), accept_all, |io| async move {
        let profile = SaslProfile::Plain {
            username: "alice".into(),
            password: "guess".into(),
        };
        connect(io, Some(profile)).await.map(|_| ())
    })
    .await;
    assert!(result.is_err(), "the client must fail to open");
    assert!(matches!(
        served.error,
        Some(ConnectionError::Authentication(_))
    ));
    let Some(Event::Closed {
        error: Some((cond, _)),
    }) = served.events.last()
    else {
        panic!("expected Closed: {:?}", served.events);
    };
    assert_eq!(cond, COND_UNAUTHORIZED);
}

#[tokio::test]
async fn sasl_mechanism_not_offered() {
    // PLAIN credentials against a server that only offers ANONYMOUS.
    let (served, result) = run(config(anonymous()), accept_all, |io| async move {
        let profile = SaslProfile::Plain {
            username: "alice".into(),
            password: "s3cret".into(),
        };
        connect(io, Some(profile)).await.map(|_| ())
    })
    .await;
    // fe2o3 sees PLAIN is not offered and hangs up without trying.
    assert!(result.is_err());
    assert!(!served
        .events
        .iter()
        .any(|e| matches!(e, Event::Opened { .. })));
}

#[test]
fn mechanism_not_offered_fails_with_outcome_auth() {
    let mut p = Peer::new(config(anonymous()));
    let mut bytes = BytesMut::from(&SASL_PROTOCOL_HEADER[..]);
    let init = tether_protocol::SaslFrame::Init(tether_protocol::types::sasl::SaslInit {
        mechanism: "PLAIN".into(),
        initial_response: Some(b"\0alice\0s3cret".to_vec().into()),
        hostname: None,
    });
    tether_protocol::encode_sasl_frame(&mut bytes, &init).expect("encodes");
    let e = p.raw(&bytes).expect_err("not offered");
    assert!(matches!(e, ConnectionError::Authentication(_)), "{e:?}");
    let mut out = p.bytes();
    let _ = out.split_to(8);
    let _mechanisms = tether_protocol::decode_sasl_frame(&mut out, u32::MAX).expect("sasl");
    let outcome = tether_protocol::decode_sasl_frame(&mut out, u32::MAX).expect("sasl");
    assert!(matches!(
        outcome,
        Some(tether_protocol::SaslFrame::Outcome(o)) if o.code == tether_protocol::types::sasl::SaslCode::Auth
    ));
    // A second init after the failure is never looked at.
    assert!(p.conn.is_closed());
}

#[tokio::test]
async fn no_sasl_when_allowed() {
    let sasl = SaslConfig {
        allow_no_sasl: true,
        ..SaslConfig::default()
    };
    let (served, ok) = run(config(sasl), accept_all, |io| async move {
        let mut connection = connect(io, None).await.expect("open");
        connection.close().await.is_ok()
    })
    .await;
    assert!(ok);
    assert!(matches!(
        served.events.first(),
        Some(Event::Opened { user: None, .. })
    ));
}

#[tokio::test]
async fn no_sasl_when_required_is_refused() {
    let (served, result) = run(config(anonymous()), accept_all, |io| async move {
        connect(io, None).await.map(|_| ())
    })
    .await;
    assert!(result.is_err());
    assert!(matches!(
        served.error,
        Some(ConnectionError::ProtocolHeader { .. })
    ));
}

#[tokio::test]
async fn receiver_gets_messages_within_credit() {
    const COUNT: usize = 25;
    let mut sent = 0usize;
    let on_event = move |conn: &mut ClientConnection, ev: &Event| match ev {
        Event::ReceiverAttached { link, source, .. } => {
            assert_eq!(source.as_deref(), Some("queue-b"));
            conn.accept_attach(*link, None);
        }
        Event::Credit { link, .. } => {
            while sent < COUNT && conn.credit(*link) > 0 {
                let t = OutgoingTransfer {
                    tag: Bytes::from((sent as u32).to_be_bytes().to_vec()),
                    ..Default::default()
                };
                let body = string_message(&format!("message {sent}"));
                conn.send_transfer(*link, &t, &body, false).expect("send");
                sent += 1;
            }
        }
        _ => {}
    };
    let (served, received) = run(config(anonymous()), on_event, |io| async move {
        let mut connection = connect(io, Some(SaslProfile::Anonymous))
            .await
            .expect("open");
        let mut session = Session::begin(&mut connection).await.expect("begin");
        let mut receiver = Receiver::builder()
            .name("receiver-1")
            .source("queue-b")
            .credit_mode(CreditMode::Manual)
            .attach(&mut session)
            .await
            .expect("attach");
        let mut got = Vec::new();
        // Credit in small batches: the server only sends within credit.
        while got.len() < COUNT {
            receiver.set_credit(10).await.expect("credit");
            for _ in 0..10.min(COUNT - got.len()) {
                let d = receiver.recv::<String>().await.expect("recv");
                receiver.accept(&d).await.expect("accept");
                got.push(d.into_body());
            }
        }
        receiver.close().await.expect("detach");
        connection.close().await.expect("close");
        got
    })
    .await;
    let expected: Vec<String> = (0..COUNT).map(|i| format!("message {i}")).collect();
    assert_eq!(received, expected);
    let accepted = served
        .events
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::Disposition {
                    settled: true,
                    state: Some(DeliveryState::Accepted(_)),
                    ..
                }
            )
        })
        .count();
    assert_eq!(accepted, COUNT, "{:?}", served.events);
}

#[tokio::test]
async fn one_mib_message_both_ways() {
    let big = "x".repeat(1024 * 1024);
    let big_for_server = big.clone();
    let mut incoming = BytesMut::new();
    let mut frames = 0;
    let on_event = move |conn: &mut ClientConnection, ev: &Event| match ev {
        Event::SenderAttached { .. } | Event::ReceiverAttached { .. } => accept_all(conn, ev),
        Event::Transfer {
            link,
            delivery,
            payload,
            more,
            ..
        } => {
            frames += 1;
            incoming.extend_from_slice(payload);
            if !more {
                let complete = incoming.split().freeze();
                assert!(frames > 1, "a 1 MiB message arrives in several frames");
                assert!(complete.ends_with(big_for_server.as_bytes()));
                conn.dispose_incoming(
                    *link,
                    *delivery,
                    Some(DeliveryState::Accepted(Accepted {})),
                    true,
                );
            }
        }
        Event::Credit { link, credit, .. } if *credit > 0 && conn.can_send(*link) => {
            let t = OutgoingTransfer {
                tag: Bytes::from_static(b"big"),
                settled: true,
                ..Default::default()
            };
            let body = string_message(&big_for_server);
            // Two calls: a delivery streamed in pieces (each split further
            // to the client's max-frame-size).
            let (a, b) = body.split_at(300_000);
            let id = conn.send_transfer(*link, &t, a, true).expect("first part");
            let t = OutgoingTransfer {
                continuing: Some(id),
                ..t
            };
            conn.send_transfer(*link, &t, b, false).expect("last part");
        }
        _ => {}
    };
    let (served, received) = run(config(anonymous()), on_event, |io| async move {
        let mut connection = connect(io, Some(SaslProfile::Anonymous))
            .await
            .expect("open");
        let mut session = Session::begin(&mut connection).await.expect("begin");
        let mut sender = Sender::attach(&mut session, "big-sender", "q")
            .await
            .expect("attach");
        let outcome = sender.send(big.clone()).await.expect("send");
        assert!(matches!(outcome, Outcome::Accepted(_)));
        let mut receiver = Receiver::attach(&mut session, "big-receiver", "q")
            .await
            .expect("attach");
        let d = receiver.recv::<String>().await.expect("recv");
        connection.close().await.expect("close");
        d.into_body() == big
    })
    .await;
    assert!(received, "the client got the 1 MiB message intact");
    assert!(served.error.is_none());
}

#[tokio::test]
async fn drain_advances_the_delivery_count() {
    let mut drained = false;
    let on_event = move |conn: &mut ClientConnection, ev: &Event| match ev {
        Event::ReceiverAttached { link, .. } => conn.accept_attach(*link, None),
        Event::Credit {
            link, drain: true, ..
        } if !drained => {
            // Two messages available, then nothing: drain the rest.
            for i in 0..2u8 {
                let t = OutgoingTransfer {
                    tag: Bytes::from(vec![i]),
                    settled: true,
                    ..Default::default()
                };
                conn.send_transfer(*link, &t, &string_message("m"), false)
                    .expect("send");
            }
            conn.drain_done(*link);
            assert_eq!(conn.credit(*link), 0);
            drained = true;
        }
        _ => {}
    };
    let (served, got) = run(config(anonymous()), on_event, |io| async move {
        let mut connection = connect(io, Some(SaslProfile::Anonymous))
            .await
            .expect("open");
        let mut session = Session::begin(&mut connection).await.expect("begin");
        let mut receiver = Receiver::builder()
            .name("drainer")
            .source("q")
            .credit_mode(CreditMode::Manual)
            .attach(&mut session)
            .await
            .expect("attach");
        receiver.set_credit(5).await.expect("credit");
        receiver.drain().await.expect("drain");
        let mut got = 0;
        for _ in 0..2 {
            receiver.recv::<String>().await.expect("recv");
            got += 1;
        }
        // Let the client take in our drain Flow before it grants again.
        tokio::time::sleep(Duration::from_millis(100)).await;
        receiver.set_credit(3).await.expect("credit");
        tokio::time::sleep(Duration::from_millis(100)).await;
        connection.close().await.expect("close");
        got
    })
    .await;
    assert_eq!(got, 2);
    let credits: Vec<(u32, bool)> = served
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Credit { credit, drain, .. } => Some((*credit, *drain)),
            _ => None,
        })
        .collect();
    // After the drain (5 credit: 2 used, 3 drained away) the client's new
    // grant of 3 is exactly 3: both ends agree on the delivery-count.
    assert_eq!(credits.last(), Some(&(3, false)), "{credits:?}");
}

#[tokio::test]
async fn router_detaches_and_refuses_links() {
    let on_event = |conn: &mut ClientConnection, ev: &Event| match ev {
        Event::SenderAttached { link, target, .. } if target.as_deref() == Some("nowhere") => {
            conn.refuse_attach(*link, "amqp:not-found", "no such address");
        }
        Event::SenderAttached { link, .. } => {
            conn.accept_attach(*link, None);
            conn.set_credit(*link, 10);
        }
        Event::Transfer { link, .. } => {
            conn.detach(*link, Some(("amqp:resource-deleted", "queue deleted")));
        }
        _ => {}
    };
    let (served, (refused, second_send_failed)) =
        run(config(anonymous()), on_event, |io| async move {
            let mut connection = connect(io, Some(SaslProfile::Anonymous))
                .await
                .expect("open");
            // Refusal on a session of its own: fe2o3 stops using a session
            // after one of its attaches is refused.
            let mut other = Session::begin(&mut connection).await.expect("begin");
            let refused = Sender::attach(&mut other, "s-refused", "nowhere")
                .await
                .is_err();
            let mut session = Session::begin(&mut connection).await.expect("begin");
            let mut sender = Sender::attach(&mut session, "s-ok", "somewhere")
                .await
                .expect("attach");
            let settled = Sendable::builder().message("one").settled(true).build();
            let _ = sender.send(settled).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let settled = Sendable::builder().message("two").settled(true).build();
            let failed = sender.send(settled).await.is_err();
            let _ = connection.close().await;
            (refused, failed)
        })
        .await;
    assert!(refused, "the refused attach fails at the client");
    assert!(second_send_failed, "sending on a detached link fails");
    // Links the router ended itself are not reported back to it.
    assert!(
        !served
            .events
            .iter()
            .any(|e| matches!(e, Event::Detached { .. })),
        "{:?}",
        served.events
    );
}

#[tokio::test]
async fn router_closes_the_connection_with_an_error() {
    let on_event = |conn: &mut ClientConnection, ev: &Event| {
        if let Event::Opened { .. } = ev {
            conn.close(Some(("amqp:connection:forced", "router shutting down")));
        }
    };
    let (served, ()) = run(config(anonymous()), on_event, |io| async move {
        let mut connection = connect(io, Some(SaslProfile::Anonymous))
            .await
            .expect("open");
        let err = connection.on_close().await;
        assert!(err.is_err(), "the client sees the remote close error");
    })
    .await;
    assert_eq!(served.events.last(), Some(&Event::Closed { error: None }));
}

#[tokio::test]
async fn client_heartbeats_keep_a_short_idle_timeout_alive() {
    let mut cfg = config(anonymous());
    cfg.idle_timeout = Duration::from_millis(200);
    let (served, ok) = run(cfg, accept_all, |io| async move {
        let mut connection = connect(io, Some(SaslProfile::Anonymous))
            .await
            .expect("open");
        // Idle for several of our idle-time-outs: fe2o3 heartbeats at
        // half of what we announced.
        tokio::time::sleep(Duration::from_millis(900)).await;
        connection.close().await.is_ok()
    })
    .await;
    assert!(ok, "{:?}", served.events);
    assert_eq!(served.events.last(), Some(&Event::Closed { error: None }));
}

#[tokio::test]
async fn silent_client_is_dropped_after_twice_the_idle_timeout() {
    let mut cfg = config(SaslConfig {
        allow_no_sasl: true,
        ..SaslConfig::default()
    });
    cfg.idle_timeout = Duration::from_millis(100);
    let started = Instant::now();
    let (served, reply) = run(cfg, accept_all, |io| async move {
        let mut io = io;
        let mut hello = BytesMut::from(&AMQP_PROTOCOL_HEADER[..]);
        encode_performative(&mut hello, 0, &open_frame("silent", None)).expect("encodes");
        io.write_all(&hello).await.expect("write");
        // Then say nothing; read until the server hangs up.
        let mut reply = Vec::new();
        let _ = io.read_to_end(&mut reply).await;
        reply
    })
    .await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    let Some(Event::Closed {
        error: Some((cond, _)),
    }) = served.events.last()
    else {
        panic!("{:?}", served.events);
    };
    assert_eq!(cond, COND_RESOURCE_LIMIT);
    let frames = decode_output(&reply);
    assert!(matches!(
        frames.last(),
        Some((0, Performative::Close(Close { error: Some(_) })))
    ));
}

/* ------------------------------ raw peer tests ------------------------------ */

fn open_frame(container: &str, idle_ms: Option<u32>) -> Performative {
    Performative::Open(Open {
        container_id: container.into(),
        hostname: None,
        max_frame_size: 16_384.into(),
        channel_max: 100.into(),
        idle_time_out: idle_ms,
        outgoing_locales: None,
        incoming_locales: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    })
}

fn begin_frame(incoming_window: u32) -> Performative {
    Performative::Begin(Begin {
        remote_channel: None,
        next_outgoing_id: 0,
        incoming_window,
        outgoing_window: 1000,
        handle_max: Handle(100),
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    })
}

fn attach_frame(name: &str, handle: u32, client_role: Role, address: &str) -> Performative {
    Performative::Attach(Attach {
        name: name.into(),
        handle: Handle(handle),
        role: client_role.clone(),
        snd_settle_mode: Default::default(),
        rcv_settle_mode: Default::default(),
        source: Some(Box::new(Source {
            address: Some(address.into()),
            ..Default::default()
        })),
        target: Some(Box::new(TargetArchetype::Target(Target {
            address: Some(address.into()),
            ..Default::default()
        }))),
        unsettled: None,
        incomplete_unsettled: false,
        initial_delivery_count: matches!(client_role, Role::Sender).then_some(0),
        max_message_size: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    })
}

fn flow_frame(handle: u32, delivery_count: u32, credit: u32, drain: bool) -> Performative {
    Performative::Flow(Flow {
        next_incoming_id: Some(0),
        incoming_window: 10_000,
        next_outgoing_id: 0,
        outgoing_window: 10_000,
        handle: Some(Handle(handle)),
        delivery_count: Some(delivery_count),
        link_credit: Some(credit),
        available: None,
        drain,
        echo: false,
        properties: None,
    })
}

/// Splits engine output into (channel, performative) pairs; transfers are
/// turned into `Performative::Transfer` stand-ins carrying handle, id,
/// flags (payload dropped). Protocol headers and SASL frames are skipped.
fn decode_output(bytes: &[u8]) -> Vec<(u16, Performative)> {
    decode_output_with_payloads(bytes)
        .into_iter()
        .map(|(c, p, _)| (c, p))
        .collect()
}

fn decode_output_with_payloads(bytes: &[u8]) -> Vec<(u16, Performative, Bytes)> {
    let mut buf = BytesMut::from(bytes);
    let dec = FrameDecoder::new(u32::MAX);
    let mut out = Vec::new();
    loop {
        if buf.starts_with(b"AMQP") {
            let _ = buf.split_to(8);
            continue;
        }
        if buf.len() >= 6 && buf[5] == 1 {
            let mut sasl = buf.clone();
            let before = sasl.len();
            let _ = tether_protocol::decode_sasl_frame(&mut sasl, u32::MAX).expect("sasl frame");
            let _ = buf.split_to(before - sasl.len());
            continue;
        }
        match dec.decode(&mut buf).expect("engine output decodes") {
            None => break,
            Some(f) => match f.body {
                FrameBody::Heartbeat => {}
                FrameBody::Performative(p) => out.push((f.channel, p, Bytes::new())),
                FrameBody::Transfer { transfer, payload } => out.push((
                    f.channel,
                    Performative::Transfer(tether_protocol::types::performatives::Transfer {
                        handle: Handle(transfer.handle),
                        delivery_id: transfer.delivery_id,
                        delivery_tag: None,
                        message_format: transfer.message_format,
                        settled: transfer.settled,
                        more: transfer.more,
                        rcv_settle_mode: None,
                        state: None,
                        resume: false,
                        aborted: transfer.aborted,
                        batchable: false,
                    }),
                    payload,
                )),
            },
        }
    }
    assert!(buf.is_empty(), "trailing partial frame in output");
    out
}

/// A client written by hand, on virtual time.
struct Peer {
    conn: ClientConnection,
    now: Instant,
}

impl Peer {
    fn new(cfg: ConnectionConfig) -> Self {
        let now = Instant::now();
        Peer {
            conn: ClientConnection::new(cfg, now),
            now,
        }
    }

    /// Protocol header, open and begin on channel 0 (client window given).
    fn opened(window: u32) -> Self {
        let mut p = Peer::new(config(SaslConfig {
            allow_no_sasl: true,
            ..SaslConfig::default()
        }));
        p.raw(&AMQP_PROTOCOL_HEADER).expect("header");
        p.send(0, open_frame("raw", None)).expect("open");
        p.send(0, begin_frame(window)).expect("begin");
        let out = p.output();
        assert!(matches!(out[0].1, Performative::Open(_)));
        assert!(matches!(
            out[1].1,
            Performative::Begin(Begin {
                remote_channel: Some(0),
                ..
            })
        ));
        assert!(matches!(p.conn.poll_event(), Some(Event::Opened { .. })));
        p
    }

    fn raw(&mut self, bytes: &[u8]) -> Result<(), ConnectionError> {
        let mut buf = BytesMut::from(bytes);
        let r = self.conn.handle_input(self.now, &mut buf);
        assert!(r.is_err() || buf.is_empty(), "whole frames are consumed");
        r
    }

    fn send(&mut self, channel: u16, p: Performative) -> Result<(), ConnectionError> {
        let mut buf = BytesMut::new();
        encode_performative(&mut buf, channel, &p).expect("encodes");
        self.raw(&buf)
    }

    fn transfer(
        &mut self,
        channel: u16,
        t: TransferHeader,
        payload: &[u8],
    ) -> Result<(), ConnectionError> {
        let mut buf = BytesMut::new();
        encode_transfer(&mut buf, channel, &t, payload);
        self.raw(&buf)
    }

    fn bytes(&mut self) -> BytesMut {
        let mut out = BytesMut::new();
        self.conn.poll_transmit(&mut out);
        out
    }

    fn output(&mut self) -> Vec<(u16, Performative)> {
        let b = self.bytes();
        decode_output(&b)
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.conn.poll_event()).collect()
    }

    /// Attaches a link of the client's `role` on channel 0 and accepts it.
    fn attach(&mut self, handle: u32, role: Role) -> LinkId {
        self.send(0, attach_frame(&format!("l{handle}"), handle, role, "addr"))
            .expect("attach");
        let link = match self.events().pop() {
            Some(Event::SenderAttached { link, .. } | Event::ReceiverAttached { link, .. }) => link,
            other => panic!("expected an attach event, got {other:?}"),
        };
        self.conn.accept_attach(link, None);
        self.output();
        link
    }
}

fn close_condition(frames: &[(u16, Performative)]) -> Option<String> {
    frames.iter().find_map(|(_, p)| match p {
        Performative::Close(Close { error: Some(e) }) => Some(condition_of(&e.condition)),
        _ => None,
    })
}

fn condition_of(c: &ErrorCondition) -> String {
    let bytes = serde_amqp::to_vec(c).expect("encodes");
    serde_amqp::from_slice::<serde_amqp::primitives::Symbol>(&bytes)
        .expect("symbol")
        .0
}

#[test]
fn wrong_protocol_header_gets_ours_back() {
    for (sasl, sent, expected) in [
        (anonymous(), *b"GET / HT", SASL_PROTOCOL_HEADER),
        (anonymous(), AMQP_PROTOCOL_HEADER, SASL_PROTOCOL_HEADER),
        (
            SaslConfig {
                allow_no_sasl: true,
                ..SaslConfig::default()
            },
            SASL_PROTOCOL_HEADER,
            AMQP_PROTOCOL_HEADER,
        ),
        (anonymous(), *b"AMQP\x02\x01\x00\x00", SASL_PROTOCOL_HEADER),
    ] {
        let mut p = Peer::new(config(sasl));
        let e = p.raw(&sent).expect_err("refused");
        assert!(matches!(e, ConnectionError::ProtocolHeader { .. }), "{e:?}");
        assert_eq!(&p.bytes()[..], &expected[..]);
        assert!(p.conn.is_closed());
        assert!(matches!(
            p.events().last(),
            Some(Event::Closed { error: Some(_) })
        ));
        assert_eq!(p.conn.poll_timeout(), None);
    }
}

#[test]
fn pipelined_sasl_header_init_and_open() {
    // SASL header, sasl-init, AMQP header and open in one write, as Proton does.
    let mut bytes = BytesMut::from(&SASL_PROTOCOL_HEADER[..]);
    let init = tether_protocol::SaslFrame::Init(tether_protocol::types::sasl::SaslInit {
        mechanism: "PLAIN".into(),
        initial_response: Some(b"\0alice\0s3cret".to_vec().into()),
        hostname: None,
    });
    tether_protocol::encode_sasl_frame(&mut bytes, &init).expect("encodes");
    bytes.extend_from_slice(&AMQP_PROTOCOL_HEADER);
    encode_performative(&mut bytes, 0, &open_frame("pipelined", None)).expect("encodes");
    let mut p = Peer::new(config(plain()));
    p.raw(&bytes).expect("accepted");
    assert_eq!(
        p.events(),
        vec![Event::Opened {
            container_id: "pipelined".into(),
            user: Some("alice".into())
        }]
    );
    let out = p.bytes();
    assert!(out.starts_with(&SASL_PROTOCOL_HEADER));
    let frames = decode_output(&out);
    let Some((0, Performative::Open(open))) = frames.first() else {
        panic!("{frames:?}");
    };
    assert_eq!(open.container_id, "tether-test");
    assert!(open
        .offered_capabilities
        .as_ref()
        .is_some_and(|c| c.0.iter().any(|s| s.0 == CAP_ANONYMOUS_RELAY)));
}

#[test]
fn plain_without_initial_response_gets_a_challenge() {
    let mut p = Peer::new(config(plain()));
    let mut bytes = BytesMut::from(&SASL_PROTOCOL_HEADER[..]);
    let init = tether_protocol::SaslFrame::Init(tether_protocol::types::sasl::SaslInit {
        mechanism: "PLAIN".into(),
        initial_response: None,
        hostname: None,
    });
    tether_protocol::encode_sasl_frame(&mut bytes, &init).expect("encodes");
    p.raw(&bytes).expect("ok");
    let mut bytes = BytesMut::new();
    let response =
        tether_protocol::SaslFrame::Response(tether_protocol::types::sasl::SaslResponse {
            response: b"\0alice\0wrong".to_vec().into(),
        });
    tether_protocol::encode_sasl_frame(&mut bytes, &response).expect("encodes");
    let e = p.raw(&bytes).expect_err("bad password");
    assert!(matches!(e, ConnectionError::Authentication(_)));
    // Mechanisms, challenge, outcome(auth).
    let mut out = p.bytes();
    let _ = out.split_to(8);
    let mut kinds = Vec::new();
    while let Some(f) = tether_protocol::decode_sasl_frame(&mut out, u32::MAX).expect("sasl") {
        kinds.push(match f {
            tether_protocol::SaslFrame::Outcome(o) => format!("outcome {:?}", o.code),
            other => other.name().to_owned(),
        });
    }
    assert_eq!(kinds, ["sasl-mechanisms", "sasl-challenge", "outcome Auth"]);
}

#[test]
fn frame_before_open_is_refused_with_open_then_close() {
    let mut p = Peer::new(config(SaslConfig {
        allow_no_sasl: true,
        ..SaslConfig::default()
    }));
    p.raw(&AMQP_PROTOCOL_HEADER).expect("header");
    let e = p.send(0, begin_frame(10)).expect_err("begin before open");
    assert_eq!(e.condition(), COND_NOT_ALLOWED);
    let out = p.output();
    assert!(matches!(out[0].1, Performative::Open(_)));
    assert_eq!(close_condition(&out).as_deref(), Some(COND_NOT_ALLOWED));
}

#[test]
fn oversized_frame_is_a_framing_error() {
    let mut p = Peer::opened(100);
    // A header announcing a frame larger than our 64 KiB.
    let e = p.raw(&[0, 2, 0, 0, 2, 0, 0, 0]).expect_err("too large");
    assert_eq!(e.condition(), "amqp:connection:framing-error");
    assert_eq!(
        close_condition(&p.output()).as_deref(),
        Some("amqp:connection:framing-error")
    );
    assert!(p.conn.is_closed());
}

#[test]
fn frames_on_unknown_channels_and_handles() {
    let mut p = Peer::opened(100);
    // Attach on a channel without a session: connection error.
    let e = p
        .send(5, attach_frame("x", 0, Role::Sender, "a"))
        .expect_err("no session");
    assert_eq!(e.condition(), COND_NOT_ALLOWED);

    // Transfer on an unattached handle: the session ends, the connection lives.
    let mut p = Peer::opened(100);
    let link = p.attach(0, Role::Sender);
    let t = TransferHeader {
        handle: 9,
        delivery_id: Some(0),
        delivery_tag: Some(Bytes::from_static(b"t")),
        ..Default::default()
    };
    p.transfer(0, t, b"x").expect("session error only");
    let out = p.output();
    let Some((0, Performative::End(End { error: Some(e) }))) = out.last() else {
        panic!("{out:?}");
    };
    assert_eq!(condition_of(&e.condition), COND_UNATTACHED_HANDLE);
    // Its links are reported gone.
    assert_eq!(
        p.events(),
        vec![Event::Detached {
            link,
            error: Some((
                COND_UNATTACHED_HANDLE.into(),
                "transfer on handle 9, which is not attached".into()
            ))
        }]
    );
    // Frames on the ending session are ignored, its end frees the channel.
    p.send(0, flow_frame(3, 0, 0, false)).expect("ignored");
    p.send(0, Performative::End(End { error: None }))
        .expect("end");
    assert!(
        p.output().is_empty(),
        "no answer to the end of an ended session"
    );
    p.send(0, begin_frame(10)).expect("channel reusable");
    assert!(!p.conn.is_closed());

    // Handle beyond handle-max: framing error.
    let e = p
        .send(0, attach_frame("x", HANDLE_MAX + 1, Role::Sender, "a"))
        .expect_err("beyond handle-max");
    assert_eq!(e.condition(), COND_FRAMING_ERROR);
}

#[test]
fn transfer_without_credit_detaches_the_link() {
    let mut p = Peer::opened(100);
    let link = p.attach(0, Role::Sender);
    let t = TransferHeader {
        handle: 0,
        delivery_id: Some(0),
        delivery_tag: Some(Bytes::from_static(b"t")),
        ..Default::default()
    };
    p.transfer(0, t, b"x").expect("link error only");
    let out = p.output();
    let Some((
        0,
        Performative::Detach(Detach {
            closed: true,
            error: Some(e),
            ..
        }),
    )) = out.last()
    else {
        panic!("{out:?}");
    };
    assert_eq!(condition_of(&e.condition), COND_TRANSFER_LIMIT);
    assert!(matches!(&p.events()[..], [Event::Detached { link: l, error: Some(_) }] if *l == link));
    // The client's detach completes it; the link id is dead.
    p.send(
        0,
        Performative::Detach(Detach {
            handle: Handle(0),
            closed: true,
            error: None,
        }),
    )
    .expect("detach");
    assert!(p.events().is_empty());
    assert_eq!(p.conn.credit(link), 0);
    p.conn.set_credit(link, 5);
    assert!(p.output().is_empty(), "no-op on a gone link");
}

#[test]
fn incoming_multi_frame_abort_and_dispositions() {
    let mut p = Peer::opened(100);
    let link = p.attach(0, Role::Sender);
    p.conn.set_credit(link, 3);
    let out = p.output();
    assert!(matches!(
        &out[..],
        [(
            0,
            Performative::Flow(Flow {
                link_credit: Some(3),
                delivery_count: Some(0),
                ..
            })
        )]
    ));
    // Delivery 0 in two frames (the second omits id and tag), unsettled.
    let first = TransferHeader {
        handle: 0,
        delivery_id: Some(0),
        delivery_tag: Some(Bytes::from_static(b"t0")),
        message_format: Some(0),
        more: true,
        ..Default::default()
    };
    p.transfer(0, first, b"hel").expect("frame 1");
    p.transfer(
        0,
        TransferHeader {
            handle: 0,
            ..Default::default()
        },
        b"lo",
    )
    .expect("frame 2");
    // Delivery 1 aborted after one frame.
    p.transfer(
        0,
        TransferHeader {
            handle: 0,
            delivery_id: Some(1),
            delivery_tag: Some(Bytes::from_static(b"t1")),
            more: true,
            ..Default::default()
        },
        b"zz",
    )
    .expect("frame");
    p.transfer(
        0,
        TransferHeader {
            handle: 0,
            aborted: true,
            ..Default::default()
        },
        b"",
    )
    .expect("abort");
    // Delivery 2, unsettled, single frame.
    p.transfer(
        0,
        TransferHeader {
            handle: 0,
            delivery_id: Some(2),
            delivery_tag: Some(Bytes::from_static(b"t2")),
            ..Default::default()
        },
        b"x",
    )
    .expect("frame");
    let ev = p.events();
    let summary: Vec<(u32, bool, bool, bool, Vec<u8>)> = ev
        .iter()
        .map(|e| match e {
            Event::Transfer {
                delivery,
                first,
                more,
                aborted,
                payload,
                ..
            } => (delivery.0, *first, *more, *aborted, payload.to_vec()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (0, true, true, false, b"hel".to_vec()),
            (0, false, false, false, b"lo".to_vec()),
            (1, true, true, false, b"zz".to_vec()),
            (1, false, false, true, vec![]),
            (2, true, false, false, b"x".to_vec()),
        ]
    );
    assert_eq!(p.conn.credit(link), 0);
    // Dispositions for 0 and 2 (1 was aborted: settled, so a no-op).
    let accepted = || Some(DeliveryState::Accepted(Accepted {}));
    for id in [0, 1, 2] {
        p.conn
            .dispose_incoming(link, IncomingDeliveryId(id), accepted(), true);
    }
    // Again: already settled, no-op.
    p.conn
        .dispose_incoming(link, IncomingDeliveryId(0), accepted(), true);
    let out = p.output();
    let firsts: Vec<(u32, Option<u32>)> = out
        .iter()
        .map(|(_, f)| match f {
            Performative::Disposition(d) => {
                assert!(d.settled && matches!(d.role, Role::Receiver));
                (d.first, d.last)
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(firsts, vec![(0, None), (2, None)]);
}

#[test]
fn consecutive_dispositions_coalesce_into_a_range() {
    let mut p = Peer::opened(100);
    let link = p.attach(0, Role::Sender);
    p.conn.set_credit(link, 10);
    p.output();
    for id in 0..5 {
        p.transfer(
            0,
            TransferHeader {
                handle: 0,
                delivery_id: Some(id),
                delivery_tag: Some(Bytes::from(vec![id as u8])),
                ..Default::default()
            },
            b"m",
        )
        .expect("transfer");
    }
    p.events();
    for id in 0..5 {
        p.conn.dispose_incoming(
            link,
            IncomingDeliveryId(id),
            Some(DeliveryState::Accepted(Accepted {})),
            true,
        );
    }
    let out = p.output();
    assert!(
        matches!(
            &out[..],
            [(
                0,
                Performative::Disposition(Disposition {
                    first: 0,
                    last: Some(4),
                    settled: true,
                    ..
                })
            )]
        ),
        "{out:?}"
    );
}

#[test]
fn outgoing_dispositions_map_back_to_links_and_rcv_second_is_settled_by_us() {
    let mut p = Peer::opened(1000);
    let a = p.attach(0, Role::Receiver);
    let b = p.attach(1, Role::Receiver);
    p.send(0, flow_frame(0, 0, 10, false)).expect("credit a");
    p.send(0, flow_frame(1, 0, 10, false)).expect("credit b");
    assert_eq!((p.conn.credit(a), p.conn.credit(b)), (10, 10));
    p.events();
    let t = OutgoingTransfer {
        tag: Bytes::from_static(b"t"),
        ..Default::default()
    };
    // Deliveries 0 (a), 1 (b), 2 (a, settled), 3 (b).
    let ids: Vec<u32> = [(a, false), (b, false), (a, true), (b, false)]
        .iter()
        .map(|&(l, settled)| {
            let t = OutgoingTransfer {
                settled,
                ..t.clone()
            };
            p.conn.send_transfer(l, &t, b"m", false).expect("send").0
        })
        .collect();
    assert_eq!(ids, [0, 1, 2, 3]);
    assert_eq!(p.conn.credit(a), 8);
    p.output();
    // One disposition for 0..=3, terminal but unsettled: we settle.
    p.send(
        0,
        Performative::Disposition(Disposition {
            role: Role::Receiver,
            first: 0,
            last: Some(3),
            settled: false,
            state: Some(DeliveryState::Accepted(Accepted {})),
            batchable: false,
        }),
    )
    .expect("disposition");
    let got: Vec<(LinkId, u32, bool)> = p
        .events()
        .into_iter()
        .map(|e| match e {
            Event::Disposition {
                link,
                delivery,
                settled,
                ..
            } => (link, delivery.0, settled),
            other => panic!("{other:?}"),
        })
        .collect();
    // Delivery 2 was pre-settled: not reported.
    assert_eq!(got, vec![(a, 0, true), (b, 1, true), (b, 3, true)]);
    let out = p.output();
    assert!(matches!(
        &out[..],
        [(
            0,
            Performative::Disposition(Disposition {
                role: Role::Sender,
                settled: true,
                first: 0,
                last: Some(3),
                ..
            })
        )]
    ));
    // Repeated: nothing left to report.
    p.send(
        0,
        Performative::Disposition(Disposition {
            role: Role::Receiver,
            first: 0,
            last: Some(3),
            settled: true,
            state: None,
            batchable: false,
        }),
    )
    .expect("disposition");
    assert!(p.events().is_empty());
}

#[test]
fn session_window_holds_frames_and_reports_sendable() {
    // The client's session takes 2 transfer frames, max-frame-size 16 KiB.
    let mut p = Peer::opened(2);
    let link = p.attach(0, Role::Receiver);
    let mut f = flow_frame(0, 0, 10, false);
    if let Performative::Flow(flow) = &mut f {
        flow.incoming_window = 2;
    }
    p.send(0, f).expect("credit");
    p.events();
    let t = OutgoingTransfer {
        tag: Bytes::from_static(b"t"),
        settled: true,
        ..Default::default()
    };
    // 40 KiB: three frames; two go out, one is held.
    let payload = vec![7u8; 40 * 1024];
    p.conn
        .send_transfer(link, &t, &payload, false)
        .expect("send");
    let out = decode_output_with_payloads(&p.bytes());
    assert_eq!(out.len(), 2);
    assert!(!p.conn.can_send(link));
    assert_eq!(
        p.conn.send_transfer(link, &t, b"more", false),
        Err(SendError::SessionWindow)
    );
    assert!(p.output().is_empty(), "nothing emitted on SessionWindow");
    // The client opens its window (it has seen 2 transfers).
    let mut f = flow_frame(0, 1, 9, false);
    if let Performative::Flow(flow) = &mut f {
        flow.next_incoming_id = Some(2);
        flow.incoming_window = 5;
    }
    p.send(0, f).expect("flow");
    let ev = p.events();
    assert!(ev.contains(&Event::Sendable { link }), "{ev:?}");
    let rest = decode_output_with_payloads(&p.bytes());
    assert_eq!(rest.len(), 1, "the held frame goes out");
    let total: usize = out.iter().chain(&rest).map(|(_, _, b)| b.len()).sum();
    assert_eq!(total, payload.len());
    assert!(out
        .iter()
        .chain(&rest)
        .all(|(_, _, b)| b.len() <= 16 * 1024));
    assert!(p.conn.can_send(link));
    p.conn
        .send_transfer(link, &t, b"more", false)
        .expect("send again");
}

#[test]
fn send_errors_and_abort() {
    let mut p = Peer::opened(100);
    let sender_link = p.attach(0, Role::Sender);
    let link = p.attach(1, Role::Receiver);
    let t = OutgoingTransfer::default();
    assert_eq!(
        p.conn.send_transfer(sender_link, &t, b"", false),
        Err(SendError::WrongDirection)
    );
    assert_eq!(
        p.conn.send_transfer(link, &t, b"", false),
        Err(SendError::NoCredit)
    );
    assert_eq!(
        p.conn.send_transfer(12345, &t, b"", false),
        Err(SendError::UnknownLink)
    );
    p.send(0, flow_frame(1, 0, 2, false)).expect("credit");
    let id = p.conn.send_transfer(link, &t, b"part", true).expect("send");
    assert_eq!(
        p.conn.send_transfer(link, &t, b"", false),
        Err(SendError::DeliveryInProgress)
    );
    let wrong = OutgoingTransfer {
        continuing: Some(OutgoingDeliveryId(id.0 + 1)),
        ..Default::default()
    };
    assert_eq!(
        p.conn.send_transfer(link, &wrong, b"", false),
        Err(SendError::UnknownDelivery)
    );
    p.conn.abort_transfer(link, id);
    let out = p.output();
    assert!(matches!(
        out.last(),
        Some((0, Performative::Transfer(tr))) if tr.aborted && !tr.more
    ));
    // The next delivery can start; one credit left.
    p.conn.send_transfer(link, &t, b"x", false).expect("send");
    assert_eq!(p.conn.credit(link), 0);
}

#[test]
fn client_detach_of_unanswered_link_is_answered_and_reported() {
    let mut p = Peer::opened(100);
    p.send(0, attach_frame("pending", 4, Role::Receiver, "a"))
        .expect("attach");
    let Some(Event::ReceiverAttached { link, .. }) = p.events().pop() else {
        panic!("attach event");
    };
    p.send(
        0,
        Performative::Detach(Detach {
            handle: Handle(4),
            closed: true,
            error: None,
        }),
    )
    .expect("detach");
    assert_eq!(p.events(), vec![Event::Detached { link, error: None }]);
    let out = p.output();
    // Our (refusing) attach, then our detach.
    assert!(
        matches!(
            &out[..],
            [
                (0, Performative::Attach(Attach { source: None, .. })),
                (0, Performative::Detach(Detach { closed: true, .. }))
            ]
        ),
        "{out:?}"
    );
    // Too late to accept: a no-op.
    p.conn.accept_attach(link, None);
    assert!(p.output().is_empty());
}

#[test]
fn refusal_has_a_null_terminus_then_detach() {
    let mut p = Peer::opened(100);
    p.send(0, attach_frame("s", 0, Role::Sender, "a"))
        .expect("attach");
    let Some(Event::SenderAttached { link, .. }) = p.events().pop() else {
        panic!("attach event");
    };
    p.conn.refuse_attach(link, "amqp:not-found", "no route");
    let out = p.output();
    let [(0, Performative::Attach(a)), (0, Performative::Detach(d))] = &out[..] else {
        panic!("{out:?}");
    };
    assert!(a.target.is_none() && a.source.is_some() && matches!(a.role, Role::Receiver));
    assert_eq!(
        d.error
            .as_ref()
            .map(|e| condition_of(&e.condition))
            .as_deref(),
        Some("amqp:not-found")
    );
}

#[test]
fn dynamic_source_gets_the_assigned_address() {
    let mut p = Peer::opened(100);
    let mut attach = attach_frame("dyn", 0, Role::Receiver, "ignored");
    if let Performative::Attach(a) = &mut attach {
        a.source = Some(Box::new(Source {
            dynamic: true,
            ..Default::default()
        }));
    }
    p.send(0, attach).expect("attach");
    let Some(Event::ReceiverAttached {
        link,
        source: None,
        dynamic: true,
        ..
    }) = p.events().pop()
    else {
        panic!("dynamic receiver");
    };
    p.conn.accept_attach(link, Some("tmp/123"));
    let out = p.output();
    let [(0, Performative::Attach(a))] = &out[..] else {
        panic!("{out:?}");
    };
    assert_eq!(
        a.source.as_ref().and_then(|s| s.address.as_deref()),
        Some("tmp/123")
    );
    assert_eq!(a.initial_delivery_count, Some(0));
}

#[test]
fn heartbeats_and_idle_timeout_on_virtual_time() {
    let mut p = Peer::new(config(SaslConfig {
        allow_no_sasl: true,
        ..SaslConfig::default()
    }));
    p.raw(&AMQP_PROTOCOL_HEADER).expect("header");
    p.send(0, open_frame("hb", Some(4_000))).expect("open");
    p.output();
    let start = p.now;
    // Heartbeat due at half the client's 4 s idle-time-out.
    assert_eq!(p.conn.poll_timeout(), Some(start + Duration::from_secs(2)));
    p.now = start + Duration::from_secs(2);
    p.conn.handle_timeout(p.now);
    assert_eq!(&p.bytes()[..], &[0, 0, 0, 8, 2, 0, 0, 0]);
    assert_eq!(p.conn.poll_timeout(), Some(start + Duration::from_secs(4)));
    // A frame from the client pushes our idle deadline (2 x 10 s) back.
    p.now = start + Duration::from_secs(3);
    p.raw(&[0, 0, 0, 8, 2, 0, 0, 0]).expect("heartbeat in");
    let mut t = p.now;
    while let Some(next) = p.conn.poll_timeout() {
        assert!(next >= t, "timers move forward");
        t = next;
        p.conn.handle_timeout(t);
        p.output();
    }
    assert_eq!(t, start + Duration::from_secs(23));
    let Some(Event::Closed {
        error: Some((cond, _)),
    }) = p.events().pop()
    else {
        panic!("idle close");
    };
    assert_eq!(cond, COND_RESOURCE_LIMIT);
}

#[test]
fn client_close_is_answered() {
    let mut p = Peer::opened(100);
    p.attach(0, Role::Sender);
    let err = definitions::Error {
        condition: ErrorCondition::Custom("app:bye".into()),
        description: Some("done".into()),
        info: None,
    };
    p.send(0, Performative::Close(Close { error: Some(err) }))
        .expect("close");
    assert!(p.conn.is_closed());
    assert!(matches!(
        &p.output()[..],
        [(0, Performative::Close(Close { error: None }))]
    ));
    assert_eq!(
        p.events(),
        vec![Event::Closed {
            error: Some(("app:bye".into(), "done".into()))
        }]
    );
    // Input after the end is discarded.
    p.raw(b"garbage!").expect("ignored");
}

/* ------------------------------ property tests ------------------------------ */

/// Input prefixes that put the engine in each of its phases.
fn prefix(kind: u8) -> Vec<u8> {
    let mut b = BytesMut::new();
    match kind % 5 {
        0 => {}
        1 => b.extend_from_slice(&SASL_PROTOCOL_HEADER),
        2 => b.extend_from_slice(&AMQP_PROTOCOL_HEADER),
        3 => {
            b.extend_from_slice(&AMQP_PROTOCOL_HEADER);
            encode_performative(&mut b, 0, &open_frame("fuzz", Some(1000))).expect("encodes");
        }
        _ => {
            b.extend_from_slice(&AMQP_PROTOCOL_HEADER);
            encode_performative(&mut b, 0, &open_frame("fuzz", Some(1000))).expect("encodes");
            encode_performative(&mut b, 0, &begin_frame(3)).expect("encodes");
            encode_performative(&mut b, 0, &attach_frame("s", 0, Role::Sender, "a"))
                .expect("encodes");
            encode_performative(&mut b, 0, &attach_frame("r", 1, Role::Receiver, "a"))
                .expect("encodes");
        }
    }
    b.to_vec()
}

fn fuzz_config() -> ConnectionConfig {
    let mut c = config(SaslConfig {
        allow_no_sasl: true,
        anonymous: true,
        plain: Some(Arc::new(HashMap::from([("u".to_owned(), "p".to_owned())]))),
    });
    c.max_frame_size = 4096;
    c
}

/// A random router action on a random or known link.
fn act(conn: &mut ClientConnection, links: &[LinkId], op: u8, pick: usize, n: u32) {
    let link = links
        .get(pick % (links.len() + 1))
        .copied()
        .unwrap_or(u64::from(n));
    let t = OutgoingTransfer {
        tag: Bytes::from_static(b"tag"),
        settled: op & 0x10 != 0,
        message_format: 0,
        continuing: (op & 0x20 != 0).then_some(OutgoingDeliveryId(n % 4)),
    };
    match op % 10 {
        0 => conn.accept_attach(link, n.is_multiple_of(2).then_some("addr")),
        1 => conn.refuse_attach(link, "amqp:not-found", "x"),
        2 => conn.set_credit(link, n % 50),
        3 => {
            let _ = conn.send_transfer(link, &t, &vec![1u8; (n % 9000) as usize], op & 0x40 != 0);
        }
        4 => conn.abort_transfer(link, OutgoingDeliveryId(n % 4)),
        5 => conn.drain_done(link),
        6 => conn.dispose_incoming(
            link,
            IncomingDeliveryId(n % 8),
            Some(DeliveryState::Accepted(Accepted {})),
            !n.is_multiple_of(3),
        ),
        7 => conn.detach(link, n.is_multiple_of(2).then_some(("amqp:x", "y"))),
        8 => {
            let _ = conn.credit(link);
            let _ = conn.can_send(link);
        }
        _ => {
            if n.is_multiple_of(17) {
                conn.close(None);
            }
        }
    }
}

/// Drives the engine with `input` cut into `chunks`, interleaving router
/// actions and timers. Checks the contract: no panic, errors close the
/// connection with a final Closed event, output always decodes.
fn drive(pre: u8, input: &[u8], chunks: &[usize], actions: &[(u8, usize, u32)]) {
    let start = Instant::now();
    let mut conn = ClientConnection::new(fuzz_config(), start);
    let mut data = prefix(pre);
    data.extend_from_slice(input);
    let mut buf = BytesMut::new();
    let mut links = Vec::new();
    let mut out = BytesMut::new();
    let mut rest = &data[..];
    let mut step = 0usize;
    let mut now = start;
    while !rest.is_empty() {
        let n = chunks
            .get(step % chunks.len().max(1))
            .copied()
            .unwrap_or(rest.len())
            .max(1);
        let (piece, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        buf.extend_from_slice(piece);
        now += Duration::from_millis(300);
        let result = conn.handle_input(now, &mut buf);
        while let Some(ev) = conn.poll_event() {
            match ev {
                Event::SenderAttached { link, .. } | Event::ReceiverAttached { link, .. } => {
                    links.push(link)
                }
                Event::Closed { .. } => assert!(conn.is_closed()),
                _ => {}
            }
        }
        if result.is_err() {
            assert!(conn.is_closed(), "an error closes the connection");
        }
        if let Some(&(op, pick, n)) = actions.get(step % actions.len().max(1)) {
            act(&mut conn, &links, op, pick, n);
        }
        if conn.poll_timeout().is_some_and(|t| t <= now) {
            conn.handle_timeout(now);
        }
        conn.poll_transmit(&mut out);
        step += 1;
    }
    let _ = conn.poll_timeout();
    conn.handle_timeout(now + Duration::from_secs(60));
    assert!(conn.is_closed(), "a silent client is dropped eventually");
    while conn.poll_event().is_some() {}
}

fn arb_performative_bytes() -> impl Strategy<Value = Vec<u8>> {
    // Well-formed frames with small random numbers, to reach the states
    // behind the framing checks.
    (
        0u8..8,
        0u16..3,
        0u32..4,
        0u32..6,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(kind, channel, handle, n, flag, flag2)| {
            let mut b = BytesMut::new();
            let p = match kind {
                0 => begin_frame(n),
                1 => attach_frame(
                    "p",
                    handle,
                    if flag { Role::Sender } else { Role::Receiver },
                    "a",
                ),
                2 => flow_frame(handle, n, n * 3, flag2),
                3 => {
                    let t = TransferHeader {
                        handle,
                        delivery_id: flag.then_some(n),
                        delivery_tag: flag.then(|| Bytes::from_static(b"t")),
                        more: flag2,
                        aborted: n == 5,
                        settled: Some(n % 2 == 0),
                        ..Default::default()
                    };
                    encode_transfer(&mut b, channel, &t, &[9u8; 20]);
                    return b.to_vec();
                }
                4 => Performative::Disposition(Disposition {
                    role: if flag { Role::Sender } else { Role::Receiver },
                    first: n,
                    last: flag2.then_some(n + handle),
                    settled: flag,
                    state: Some(DeliveryState::Accepted(Accepted {})),
                    batchable: false,
                }),
                5 => Performative::Detach(Detach {
                    handle: Handle(handle),
                    closed: flag,
                    error: None,
                }),
                6 => Performative::End(End { error: None }),
                _ => open_frame("again", None),
            };
            encode_performative(&mut b, channel, &p).expect("encodes");
            b.to_vec()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn garbage_never_panics(
        pre in 0u8..5,
        input in proptest::collection::vec(any::<u8>(), 0..700),
        chunks in proptest::collection::vec(1usize..64, 1..6),
        actions in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u32>()), 1..8),
    ) {
        drive(pre, &input, &chunks, &actions);
    }

    #[test]
    fn random_performatives_never_panic(
        frames in proptest::collection::vec(arb_performative_bytes(), 1..25),
        chunks in proptest::collection::vec(1usize..200, 1..4),
        actions in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u32>()), 1..8),
    ) {
        let input: Vec<u8> = frames.concat();
        drive(4, &input, &chunks, &actions);
    }

    #[test]
    fn corrupted_session_traffic_never_panics(
        frames in proptest::collection::vec(arb_performative_bytes(), 1..10),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut input: Vec<u8> = frames.concat();
        for (i, b) in flips {
            let at = i.index(input.len());
            input[at] = b;
        }
        drive(4, &input, &[usize::MAX], &[(8, 0, 0)]);
    }
}
