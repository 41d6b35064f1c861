//! libFuzzer target for the frame engine: everything a peer can make the
//! router decode. Panics, aborts (stack overflow), out-of-memory and
//! timeouts are all findings.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tether_protocol::{
    data_section_body, decode_protocol_header, DecodeError, FrameBody, FrameDecoder,
};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the max frame size and chunking so the fuzzer
    // also explores the limit checks and incremental feeding.
    let Some((&knob, data)) = data.split_first() else {
        return;
    };
    let max = 512u32 << (knob & 0x0f);
    let chunk = usize::from(knob >> 4) + 1;

    let _ = decode_protocol_header(&mut BytesMut::from(data));
    let _ = data_section_body(&Bytes::copy_from_slice(data));

    let dec = FrameDecoder::new(max);
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    if let FrameBody::Transfer { payload, .. } = frame.body {
                        let _ = data_section_body(&payload);
                    }
                }
                Ok(None) => break,
                Err(DecodeError::MalformedPerformative(m)) if m.contains("panicked") => {
                    // The decoder contains serde_amqp panics; surface them here.
                    panic!("serde_amqp panicked: {m}");
                }
                Err(_) => return,
            }
        }
    }
});
