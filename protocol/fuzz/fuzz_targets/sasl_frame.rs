//! libFuzzer target for the SASL frame decoder: the first bytes a client
//! can make the router decode, before it has authenticated. Panics,
//! aborts, out-of-memory and timeouts are all findings.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tether_protocol::{decode_sasl_frame, encode_sasl_frame, DecodeError};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the max frame size and chunking, as for
    // `frame_decoder`.
    let Some((&knob, data)) = data.split_first() else {
        return;
    };
    let max = 512u32 << (knob & 0x0f);
    let chunk = usize::from(knob >> 4) + 1;
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decode_sasl_frame(&mut buf, max) {
                Ok(Some(frame)) => {
                    // Whatever decodes must encode again.
                    let mut out = BytesMut::new();
                    let _ = encode_sasl_frame(&mut out, &frame);
                }
                Ok(None) => break,
                Err(DecodeError::MalformedSasl(m)) if m.contains("panicked") => {
                    panic!("serde_amqp panicked: {m}");
                }
                Err(_) => return,
            }
        }
    }
});
