//! Helpers shared by the unit and property tests of this crate: building raw
//! frames around hand-made bodies, draining a decoder, and converting
//! between fe2o3's `Transfer` and our [`TransferHeader`].

use bytes::{Bytes, BytesMut};

use crate::types::performatives::Transfer;
use crate::{DecodeError, Frame, FrameDecoder, TransferHeader};

/// A complete AMQP frame (doff 2) around `body`.
pub(crate) fn frame_bytes(channel: u16, body: &[u8]) -> Vec<u8> {
    let size = u32::try_from(body.len() + 8).expect("test frame fits u32");
    let mut v = size.to_be_bytes().to_vec();
    v.extend_from_slice(&[2, 0]);
    v.extend_from_slice(&channel.to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// Decodes frames until the decoder wants more bytes.
pub(crate) fn decode_all(
    dec: &FrameDecoder,
    buf: &mut BytesMut,
) -> Result<Vec<Frame>, DecodeError> {
    let mut frames = Vec::new();
    while let Some(f) = dec.decode(buf)? {
        frames.push(f);
    }
    Ok(frames)
}

/// Decodes exactly one frame from `bytes`, which must be consumed entirely.
pub(crate) fn decode_one(bytes: &[u8]) -> Result<Frame, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let dec = FrameDecoder::new(u32::MAX);
    let f = dec.decode(&mut buf)?.expect("a whole frame");
    assert!(buf.is_empty(), "frame not consumed entirely");
    Ok(f)
}

/// What our fast path should make of a serde-encoded `Transfer`.
pub(crate) fn expected_header(t: &Transfer) -> TransferHeader {
    TransferHeader {
        handle: t.handle.0,
        delivery_id: t.delivery_id,
        delivery_tag: t.delivery_tag.as_ref().map(|b| Bytes::copy_from_slice(b)),
        message_format: t.message_format,
        settled: t.settled,
        more: t.more,
        rcv_settle_mode: t.rcv_settle_mode.as_ref().map(|m| match m {
            crate::types::definitions::ReceiverSettleMode::First => 0,
            crate::types::definitions::ReceiverSettleMode::Second => 1,
        }),
        state: t
            .state
            .as_ref()
            .map(|s| Bytes::from(serde_amqp::to_vec(s).expect("state encodes"))),
        resume: t.resume,
        aborted: t.aborted,
        batchable: t.batchable,
    }
}
