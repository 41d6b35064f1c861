//! A peer with a valid certificate that sends malformed AMQP gets a Close
//! with an AMQP error condition and the connection dropped; the router keeps
//! running and logs why. Real `tether` process, real TLS.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rustls_pki_types::ServerName;
use tether_protocol::{FrameBody, FrameDecoder, Performative, AMQP_PROTOCOL_HEADER};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn start_router(dir: &Path, port: u16) -> Proc {
    let cfg = format!(
        "[router]\nid = \"west\"\n[[listener]]\nrole = \"inter-router\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"site\"\n\
         [tls.site]\nca = \"ca.pem\"\ncert = \"west.pem\"\nkey = \"west-key.pem\"\n"
    );
    std::fs::write(dir.join("west.toml"), cfg).unwrap();
    let log = std::fs::File::create(dir.join("west.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["router", "--config"])
        .arg(dir.join("west.toml"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start tether");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "router did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Proc(child)
}

/// Opens a TLS session as router "probe", sends the AMQP header and Open,
/// then `garbage`, and returns every frame the router sent back before it
/// closed the connection.
fn send_garbage(dir: &Path, port: u16, garbage: &[u8]) -> Vec<FrameBody> {
    let material = tether_router::tls::load_material(
        &dir.join("ca.pem"),
        &dir.join("probe.pem"),
        &dir.join("probe-key.pem"),
    )
    .unwrap();
    let mut conn = rustls::ClientConnection::new(
        Arc::clone(&material.client),
        ServerName::try_from("127.0.0.1").unwrap(),
    )
    .unwrap();
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let mut out = BytesMut::new();
    out.extend_from_slice(&AMQP_PROTOCOL_HEADER);
    let open = tether_protocol::types::performatives::Open {
        container_id: "probe".into(),
        hostname: None,
        max_frame_size: tether_protocol::types::performatives::MaxFrameSize(1 << 20),
        channel_max: tether_protocol::types::performatives::ChannelMax(0),
        idle_time_out: None,
        outgoing_locales: None,
        incoming_locales: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    };
    tether_protocol::encode_performative(&mut out, 0, &Performative::Open(open)).unwrap();
    out.extend_from_slice(garbage);
    tls.write_all(&out).unwrap();
    tls.flush().unwrap();

    let mut inbuf = BytesMut::new();
    let mut chunk = [0u8; 16384];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match tls.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => inbuf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    assert!(
        inbuf.len() >= 8 && inbuf[..8] == AMQP_PROTOCOL_HEADER,
        "router did not answer with the AMQP header"
    );
    let _ = inbuf.split_to(8);
    let decoder = FrameDecoder::new(1 << 20);
    let mut frames = Vec::new();
    while let Ok(Some(f)) = decoder.decode(&mut inbuf) {
        frames.push(f.body);
    }
    frames
}

fn close_condition(frames: &[FrameBody]) -> Option<String> {
    frames.iter().find_map(|f| match f {
        FrameBody::Performative(Performative::Close(c)) => {
            c.error.as_ref().map(|e| format!("{:?}", e.condition))
        }
        _ => None,
    })
}

#[test]
fn malformed_frames_close_the_link_with_an_amqp_error() {
    let dir = tempfile::tempdir().unwrap();
    tether_router::tls::generate_site_certs(dir.path(), &["west", "probe"]).unwrap();
    let port = free_port();
    let mut router = start_router(dir.path(), port);

    // A frame whose size field is below the 8-byte minimum.
    let frames = send_garbage(dir.path(), port, &[0, 0, 0, 4, 2, 0, 0, 0]);
    let cond = close_condition(&frames).expect("a Close with an error");
    assert!(
        cond.contains("framing-error") || cond.contains("FramingError"),
        "{cond}"
    );

    // A frame larger than the router's max-frame-size.
    let frames = send_garbage(dir.path(), port, &[0x7f, 0xff, 0xff, 0xff, 2, 0, 0, 0]);
    let cond = close_condition(&frames).expect("a Close with an error");
    assert!(
        cond.contains("framing-error") || cond.contains("FramingError"),
        "{cond}"
    );

    // A well-framed performative whose body is not valid AMQP.
    let frames = send_garbage(
        dir.path(),
        port,
        &[0, 0, 0, 12, 2, 0, 0, 0, 0x00, 0x53, 0x10, 0xff],
    );
    let cond = close_condition(&frames).expect("a Close with an error");
    assert!(
        cond.contains("decode-error") || cond.contains("DecodeError"),
        "{cond}"
    );

    // The same after the link is fully open (Begin sent): the link driver,
    // not the handshake, sees the bad frame.
    let mut begun = BytesMut::new();
    let begin = tether_protocol::types::performatives::Begin {
        remote_channel: None,
        next_outgoing_id: 0,
        incoming_window: 100,
        outgoing_window: 100,
        handle_max: tether_protocol::types::definitions::Handle(10),
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    };
    tether_protocol::encode_performative(&mut begun, 0, &Performative::Begin(begin)).unwrap();
    begun.extend_from_slice(&[0, 0, 0, 4, 2, 0, 0, 0]);
    let frames = send_garbage(dir.path(), port, &begun);
    assert!(
        frames
            .iter()
            .any(|f| matches!(f, FrameBody::Performative(Performative::Begin(_)))),
        "link did not open before the bad frame"
    );
    let cond = close_condition(&frames).expect("a Close with an error");
    assert!(
        cond.contains("framing-error") || cond.contains("FramingError"),
        "{cond}"
    );

    // The router survived all of them and says why it dropped them.
    assert!(router.0.try_wait().unwrap().is_none(), "router exited");
    let log = std::fs::read_to_string(dir.path().join("west.log")).unwrap();
    assert!(log.contains("malformed frame"), "log: {log}");
}
