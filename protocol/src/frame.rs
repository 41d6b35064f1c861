//! AMQP 1.0 framing (spec section 2.3): splitting a received byte stream
//! into frames, and writing frames into an output buffer.
//!
//! The router's connection task owns a read `BytesMut`, appends socket bytes
//! to it and calls [`FrameDecoder::decode`] until it returns `Ok(None)`;
//! outgoing frames are appended to a write `BytesMut` with the `encode_*`
//! functions. Nothing here does I/O, so the same code serves TLS and plain
//! sockets, tests and fuzzing.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fe2o3_amqp_types::definitions::{Error as AmqpError, ErrorCondition};
use fe2o3_amqp_types::performatives::{Close, Performative};
use serde_amqp::primitives::Symbol;
use serde_amqp::serde::Serialize;

use crate::error::{DecodeError, EncodeError};
use crate::transfer::{decode_transfer, transfer_descriptor_len, TransferHeader};
use crate::wire::{skip_value, Reader};

/// The AMQP 1.0 protocol header (protocol id 0, version 1.0.0).
pub const AMQP_PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x01\x00\x00";
/// Size of the fixed frame header: size (4), doff (1), type (1), channel (2).
pub const FRAME_HEADER_LEN: usize = 8;
/// Largest frame size every peer must accept; the floor for max-frame-size.
pub const MIN_MAX_FRAME_SIZE: u32 = 512;

/// Longest error description [`encode_close_with_error`] sends.
pub const MAX_CLOSE_DESCRIPTION: usize = 256;

const FRAME_TYPE_AMQP: u8 = 0x00;
/// Data offset we write: body starts right after the 8-byte header.
const DOFF: u8 = 2;

/// One decoded AMQP frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Channel (session) number from the frame header.
    pub channel: u16,
    /// What the frame carries.
    pub body: FrameBody,
}

/// The body of an AMQP frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameBody {
    /// An empty frame, sent to keep an idle connection alive.
    Heartbeat,
    /// Any performative except `transfer` (decoded by serde_amqp).
    Performative(Performative),
    /// A `transfer`, decoded by the fast path, with its payload (a zero-copy
    /// slice of the received buffer).
    Transfer {
        /// The transfer performative's fields.
        transfer: TransferHeader,
        /// Frame bytes after the performative.
        payload: Bytes,
    },
}

/// Splits AMQP frames off the front of a receive buffer.
///
/// Holds only the max-frame-size we advertised; it is raised from the
/// initial [`MIN_MAX_FRAME_SIZE`] once the `open` exchange completes.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_frame_size: u32,
}

impl FrameDecoder {
    /// A decoder accepting frames of up to `max_frame_size` bytes (raised to
    /// [`MIN_MAX_FRAME_SIZE`] if lower, since the spec requires every peer to
    /// accept frames of that size).
    pub fn new(max_frame_size: u32) -> Self {
        FrameDecoder {
            max_frame_size: max_frame_size.max(MIN_MAX_FRAME_SIZE),
        }
    }

    /// Changes the accepted frame size (clamped like [`FrameDecoder::new`]).
    pub fn set_max_frame_size(&mut self, max: u32) {
        self.max_frame_size = max.max(MIN_MAX_FRAME_SIZE);
    }

    /// The largest frame currently accepted.
    pub fn max_frame_size(&self) -> u32 {
        self.max_frame_size
    }

    /// Decodes one frame from the front of `buf`.
    ///
    /// `Ok(None)` means `buf` does not hold a whole frame yet (normal; `buf`
    /// is left untouched). `Ok(Some(frame))` means the frame's bytes were
    /// split off the front of `buf`; payloads and transfer fields borrow
    /// them without copying. Header errors (size, data offset, frame type)
    /// are reported as soon as the header bytes are readable, before the
    /// body arrives, so an oversized frame is never buffered. Any error is
    /// fatal for the connection; see [`DecodeError::condition`].
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        let Some(size_bytes) = buf.first_chunk::<4>() else {
            return Ok(None);
        };
        let size = u32::from_be_bytes(*size_bytes);
        if size < FRAME_HEADER_LEN as u32 {
            return Err(DecodeError::FrameTooSmall { size });
        }
        if size > self.max_frame_size {
            return Err(DecodeError::FrameTooLarge {
                size,
                max: self.max_frame_size,
            });
        }
        let Some(&[_, _, _, _, doff, frame_type, ch_hi, ch_lo]) = buf.first_chunk::<8>() else {
            return Ok(None);
        };
        let body_start = usize::from(doff) * 4;
        if doff < DOFF || body_start > size as usize {
            return Err(DecodeError::BadDataOffset { doff, size });
        }
        if frame_type != FRAME_TYPE_AMQP {
            return Err(DecodeError::UnsupportedFrameType(frame_type));
        }
        let size = size as usize;
        if buf.len() < size {
            return Ok(None);
        }
        let channel = u16::from_be_bytes([ch_hi, ch_lo]);
        let frame = buf.split_to(size).freeze();
        // Each arm builds the final value in place: a Frame is a few hundred
        // bytes (fe2o3's Performative is large), and re-wrapping it layer by
        // layer costs copies on the hot path.
        let body = frame.get(body_start..).unwrap_or_default();
        if body.is_empty() {
            return Ok(Some(Frame {
                channel,
                body: FrameBody::Heartbeat,
            }));
        }
        if let Some(desc_len) = transfer_descriptor_len(body) {
            let (transfer, payload) = decode_transfer(frame, body_start + desc_len)?;
            return Ok(Some(Frame {
                channel,
                body: FrameBody::Transfer { transfer, payload },
            }));
        }
        let performative = decode_performative(body)?;
        Ok(Some(Frame {
            channel,
            body: FrameBody::Performative(performative),
        }))
    }
}

impl Default for FrameDecoder {
    /// A decoder at [`MIN_MAX_FRAME_SIZE`], the only safe limit before `open`.
    fn default() -> Self {
        FrameDecoder::new(MIN_MAX_FRAME_SIZE)
    }
}

/// Decodes a non-transfer performative with serde_amqp after a structural
/// pre-check.
///
/// The pre-check bounds nesting depth and array counts (serde_amqp would
/// otherwise recurse or allocate as the input dictates) and finds where the
/// performative ends; bytes after it are ignored, since only transfers
/// carry a payload.
#[inline(never)]
fn decode_performative(body: &[u8]) -> Result<Performative, DecodeError> {
    let mut r = Reader::new(body, 0);
    skip_value(&mut r, 0).map_err(|e| DecodeError::MalformedPerformative(e.to_owned()))?;
    let encoded = body.get(..r.pos).unwrap_or_default();
    // serde_amqp is third-party code fed with untrusted bytes; a panic in it
    // must not take the router down, so it is contained and reported as a
    // decode error like any other malformed input.
    let decoded = std::panic::catch_unwind(|| serde_amqp::from_slice::<Performative>(encoded));
    match decoded {
        Ok(Ok(Performative::Transfer(_))) => Err(DecodeError::MalformedPerformative(
            "transfer with an unrecognised descriptor encoding".to_owned(),
        )),
        Ok(Ok(p)) => Ok(p),
        Ok(Err(e)) => Err(DecodeError::MalformedPerformative(e.to_string())),
        Err(_) => Err(DecodeError::MalformedPerformative(
            "serde_amqp panicked while decoding".to_owned(),
        )),
    }
}

/// Reads the 8-byte protocol header a peer sends first.
///
/// Returns `Ok(None)` while fewer than 8 bytes are buffered, and the header
/// (consuming it) if it is [`AMQP_PROTOCOL_HEADER`]. Any other header
/// starting with `AMQP` (SASL or TLS protocol ids, other versions) is
/// [`DecodeError::UnsupportedProtocolHeader`]: the spec says to answer with
/// the header we do support and close. Anything else (a TLS ClientHello on
/// a plain port, HTTP, ...) is [`DecodeError::NotAmqp`]. On error `buf` is
/// left untouched.
pub fn decode_protocol_header(buf: &mut BytesMut) -> Result<Option<[u8; 8]>, DecodeError> {
    let Some(&header) = buf.first_chunk::<8>() else {
        return Ok(None);
    };
    if header == AMQP_PROTOCOL_HEADER {
        // advance, not split_to: nothing keeps the header bytes, and
        // advancing avoids turning the buffer into a shared one.
        buf.advance(8);
        return Ok(Some(header));
    }
    if header.starts_with(b"AMQP") {
        return Err(DecodeError::UnsupportedProtocolHeader(header));
    }
    Err(DecodeError::NotAmqp(header))
}

/// Writes a frame header (type AMQP, doff 2) for a frame of `size` bytes.
#[inline]
pub(crate) fn put_frame_header(out: &mut BytesMut, size: u32, channel: u16) {
    let [s0, s1, s2, s3] = size.to_be_bytes();
    let [c0, c1] = channel.to_be_bytes();
    out.put_slice(&[s0, s1, s2, s3, DOFF, FRAME_TYPE_AMQP, c0, c1]);
}

/// Appends an empty frame, which keeps an idle connection from timing out.
pub fn encode_heartbeat(out: &mut BytesMut) {
    put_frame_header(out, FRAME_HEADER_LEN as u32, 0);
}

/// Appends a frame carrying `p` (with serde_amqp; a `Transfer` gets no
/// payload). On error `out` is left as it was.
pub fn encode_performative(
    out: &mut BytesMut,
    channel: u16,
    p: &Performative,
) -> Result<(), EncodeError> {
    encode_performative_limited(out, channel, p, u32::MAX)
}

/// Like [`encode_performative`], but fails with
/// [`EncodeError::FrameTooLarge`] (condition `amqp:frame-size-too-small`)
/// if the frame would exceed `max_frame_size`, the limit the peer announced
/// in its `open`. On error `out` is left as it was.
pub fn encode_performative_limited(
    out: &mut BytesMut,
    channel: u16,
    p: &Performative,
    max_frame_size: u32,
) -> Result<(), EncodeError> {
    let start = out.len();
    put_frame_header(out, 0, channel);
    // Serialise straight into `out` instead of via a temporary Vec.
    let mut ser = serde_amqp::ser::Serializer::new((&mut *out).writer());
    if let Err(e) = p.serialize(&mut ser) {
        out.truncate(start);
        return Err(EncodeError::Serialize(e.to_string()));
    }
    let size = out.len() - start;
    match u32::try_from(size) {
        Ok(s) if s <= max_frame_size => {
            if let Some(field) = out.get_mut(start..start + 4) {
                field.copy_from_slice(&s.to_be_bytes());
            }
            Ok(())
        }
        _ => {
            out.truncate(start);
            Err(EncodeError::FrameTooLarge {
                size,
                max: max_frame_size,
            })
        }
    }
}

/// Appends a `close` frame (channel 0) carrying an error, e.g.
/// `encode_close_with_error(out, err.condition(), &err.to_string())` after a
/// [`DecodeError`]. An empty description is omitted; a long one is cut to
/// [`MAX_CLOSE_DESCRIPTION`] bytes so the frame fits the 512-byte minimum
/// max-frame-size, the only limit known to hold when we close early.
pub fn encode_close_with_error(out: &mut BytesMut, condition: &str, description: &str) {
    let mut cut = description.len().min(MAX_CLOSE_DESCRIPTION);
    while !description.is_char_boundary(cut) {
        cut -= 1;
    }
    let description = description.get(..cut).unwrap_or_default();
    let error = AmqpError {
        condition: ErrorCondition::Custom(Symbol::from(condition)),
        description: (!description.is_empty()).then(|| description.to_owned()),
        info: None,
    };
    let close = Performative::Close(Close { error: Some(error) });
    // A close holding a symbol and a string always serialises; should that
    // ever change, fall back to a bare close so the peer still learns the
    // connection is going away.
    if encode_performative(out, 0, &close).is_err() {
        let _ = encode_performative(out, 0, &Performative::Close(Close { error: None }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{decode_all, decode_one, frame_bytes};
    use crate::types::definitions::AmqpError as AmqpErrorCode;
    use crate::types::performatives::{Begin, End, Flow, Open};

    fn open() -> Performative {
        Performative::Open(Open {
            container_id: "router-a".into(),
            hostname: Some("b.example".into()),
            max_frame_size: 65536.into(),
            channel_max: 255.into(),
            idle_time_out: Some(30_000),
            outgoing_locales: None,
            incoming_locales: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        })
    }

    #[test]
    fn heartbeat_round_trip() {
        let mut buf = BytesMut::new();
        encode_heartbeat(&mut buf);
        assert_eq!(&buf[..], &[0, 0, 0, 8, 2, 0, 0, 0]);
        let f = decode_one(&buf).expect("decodes");
        assert_eq!(
            f,
            Frame {
                channel: 0,
                body: FrameBody::Heartbeat
            }
        );
    }

    #[test]
    fn extended_header_is_skipped() {
        // doff 3: four bytes of extended header that must be ignored.
        let mut bytes = vec![0, 0, 0, 12, 3, 0, 0, 5, 0xde, 0xad, 0xbe, 0xef];
        assert_eq!(
            decode_one(&bytes).expect("decodes"),
            Frame {
                channel: 5,
                body: FrameBody::Heartbeat
            }
        );
        // Same with a performative after the extended header.
        let end = serde_amqp::to_vec(&Performative::End(End { error: None })).expect("encodes");
        bytes.extend_from_slice(&end);
        bytes[3] = 12 + end.len() as u8;
        assert_eq!(
            decode_one(&bytes).expect("decodes").body,
            FrameBody::Performative(Performative::End(End { error: None }))
        );
    }

    #[test]
    fn performative_round_trip() {
        let mut buf = BytesMut::new();
        encode_performative(&mut buf, 0, &open()).expect("encodes");
        let flow = Performative::Flow(Flow {
            next_incoming_id: Some(1),
            incoming_window: 2048,
            next_outgoing_id: 0,
            outgoing_window: u32::MAX,
            handle: Some(3.into()),
            delivery_count: Some(0),
            link_credit: Some(250),
            available: None,
            drain: false,
            echo: true,
            properties: None,
        });
        encode_performative(&mut buf, 7, &flow).expect("encodes");
        let frames = decode_all(&FrameDecoder::new(u32::MAX), &mut buf).expect("decodes");
        assert_eq!(
            frames,
            vec![
                Frame {
                    channel: 0,
                    body: FrameBody::Performative(open())
                },
                Frame {
                    channel: 7,
                    body: FrameBody::Performative(flow)
                },
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn incomplete_input_leaves_buffer_untouched() {
        let mut full = BytesMut::new();
        encode_performative(&mut full, 1, &open()).expect("encodes");
        let dec = FrameDecoder::new(u32::MAX);
        for n in 0..full.len() {
            let mut buf = BytesMut::from(&full[..n]);
            assert_eq!(dec.decode(&mut buf), Ok(None), "prefix of {n} bytes");
            assert_eq!(&buf[..], &full[..n]);
        }
    }

    fn decode_err(bytes: &[u8], max: u32) -> DecodeError {
        let mut buf = BytesMut::from(bytes);
        FrameDecoder::new(max)
            .decode(&mut buf)
            .expect_err("must fail")
    }

    #[test]
    fn frame_too_small() {
        for size in 0..8u32 {
            let e = decode_err(&size.to_be_bytes(), 512);
            assert_eq!(e, DecodeError::FrameTooSmall { size });
            assert_eq!(e.condition(), "amqp:connection:framing-error");
        }
    }

    #[test]
    fn frame_too_large_is_detected_from_the_size_alone() {
        assert_eq!(
            decode_err(&1025u32.to_be_bytes(), 1024),
            DecodeError::FrameTooLarge {
                size: 1025,
                max: 1024
            }
        );
        assert_eq!(
            decode_err(&[0xff, 0xff, 0xff, 0xff], u32::MAX - 1),
            DecodeError::FrameTooLarge {
                size: u32::MAX,
                max: u32::MAX - 1
            }
        );
        // Exactly at the limit is fine (and just incomplete here).
        let mut buf = BytesMut::from(&1024u32.to_be_bytes()[..]);
        assert_eq!(FrameDecoder::new(1024).decode(&mut buf), Ok(None));
    }

    #[test]
    fn max_frame_size_is_clamped_to_the_spec_minimum() {
        let mut dec = FrameDecoder::new(100);
        assert_eq!(dec.max_frame_size(), MIN_MAX_FRAME_SIZE);
        dec.set_max_frame_size(70_000);
        assert_eq!(dec.max_frame_size(), 70_000);
        dec.set_max_frame_size(0);
        assert_eq!(dec.max_frame_size(), 512);
        assert_eq!(FrameDecoder::default().max_frame_size(), 512);
    }

    #[test]
    fn bad_data_offset() {
        for doff in [0u8, 1] {
            assert_eq!(
                decode_err(&[0, 0, 0, 8, doff, 0, 0, 0], 512),
                DecodeError::BadDataOffset { doff, size: 8 }
            );
        }
        // doff 3 = 12 bytes, beyond a 10-byte frame; reported before the body arrives.
        assert_eq!(
            decode_err(&[0, 0, 0, 10, 3, 0, 0, 0], 512),
            DecodeError::BadDataOffset { doff: 3, size: 10 }
        );
        assert_eq!(
            decode_err(&[0, 0, 1, 0, 0xff, 0, 0, 0], 512),
            DecodeError::BadDataOffset {
                doff: 0xff,
                size: 256
            }
        );
    }

    #[test]
    fn unsupported_frame_types() {
        assert_eq!(
            decode_err(&[0, 0, 0, 8, 2, 1, 0, 0], 512),
            DecodeError::UnsupportedFrameType(1)
        );
        assert_eq!(
            decode_err(&[0, 0, 0, 20, 2, 0x7f, 0, 0], 512),
            DecodeError::UnsupportedFrameType(0x7f)
        );
    }

    #[test]
    fn protocol_header() {
        let mut buf = BytesMut::from(&b"AMQP\x00\x01\x00"[..]);
        assert_eq!(decode_protocol_header(&mut buf), Ok(None));
        buf.extend_from_slice(b"\x00\x00\x00\x00\x08");
        assert_eq!(
            decode_protocol_header(&mut buf),
            Ok(Some(AMQP_PROTOCOL_HEADER))
        );
        assert_eq!(&buf[..], &[0, 0, 0, 8], "only the header is consumed");

        for other in [
            *b"AMQP\x03\x01\x00\x00",
            *b"AMQP\x02\x01\x00\x00",
            *b"AMQP\x00\x00\x09\x01",
        ] {
            let mut buf = BytesMut::from(&other[..]);
            assert_eq!(
                decode_protocol_header(&mut buf),
                Err(DecodeError::UnsupportedProtocolHeader(other))
            );
            assert_eq!(buf.len(), 8, "left untouched on error");
        }
        // TLS ClientHello record header and an HTTP request.
        let tls = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01];
        for other in [tls, *b"GET / HT"] {
            let mut buf = BytesMut::from(&other[..]);
            assert_eq!(
                decode_protocol_header(&mut buf),
                Err(DecodeError::NotAmqp(other))
            );
        }
    }

    #[test]
    fn malformed_performatives() {
        let cases: &[&[u8]] = &[
            &[0x40],                                                 // not a described value
            &[0x00, 0x53, 0x99, 0x45],                               // unknown descriptor
            &[0x00, 0x53, 0x10, 0x45],                               // open without container-id
            &[0x00, 0x53, 0x11, 0xc0, 0x02, 0x01],                   // truncated inside the list
            &[0x00, 0x53, 0x13, 0xc0, 0x04, 0x02, 0xa1, 0x01, 0xff], // wrong types
            &[0x00],                                                 // truncated descriptor
        ];
        for body in cases {
            let e = decode_one(&frame_bytes(0, body)).expect_err("must fail");
            assert!(
                matches!(e, DecodeError::MalformedPerformative(_)),
                "{body:02x?}: {e:?}"
            );
            assert_eq!(e.condition(), "amqp:decode-error");
        }
    }

    #[test]
    fn deep_nesting_is_rejected_without_recursing() {
        // An Open whose container-id is 100_000 nested lists: serde_amqp
        // would recurse once per level and overflow the stack.
        const LEVELS: u32 = 100_000;
        let mut body = vec![0x00, 0x53, 0x10];
        for level in 0..LEVELS {
            // list32 holding one element: the next level, or list0 at the bottom.
            let inner = 9 * (LEVELS - 1 - level) + 1;
            body.push(0xd0);
            body.extend_from_slice(&(inner + 4).to_be_bytes());
            body.extend_from_slice(&1u32.to_be_bytes());
        }
        body.push(0x45);
        let e = decode_one(&frame_bytes(0, &body)).expect_err("must fail");
        assert_eq!(
            e,
            DecodeError::MalformedPerformative("values nested too deeply".into())
        );
    }

    #[test]
    fn array_count_bomb_is_rejected() {
        // Open with properties = {"k": array32 of 4 billion nulls}: a dozen
        // bytes that would make serde_amqp build an enormous Vec.
        let mut body = vec![0x00, 0x53, 0x10, 0xc0, 0x00, 0x0a, 0xa1, 0x01, b'c'];
        body.extend_from_slice(&[0x40; 8]);
        let map_start = body.len();
        body.extend_from_slice(&[0xc1, 0x00, 0x02, 0xa3, 0x01, b'k', 0xf0, 0, 0, 0, 5]);
        body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x40]);
        body[map_start + 1] = (body.len() - map_start - 2) as u8;
        body[4] = (body.len() - 5) as u8;
        let e = decode_one(&frame_bytes(0, &body)).expect_err("must fail");
        assert_eq!(
            e,
            DecodeError::MalformedPerformative("array element count exceeds its size".into())
        );
    }

    #[test]
    fn trailing_bytes_after_a_performative_are_ignored() {
        let mut body =
            serde_amqp::to_vec(&Performative::End(End { error: None })).expect("encodes");
        body.extend_from_slice(b"junk");
        assert_eq!(
            decode_one(&frame_bytes(2, &body)).expect("decodes").body,
            FrameBody::Performative(Performative::End(End { error: None }))
        );
    }

    #[test]
    fn encode_performative_limited_respects_the_limit() {
        let mut out = BytesMut::from(&b"prefix"[..]);
        let err = encode_performative_limited(&mut out, 0, &open(), 20).expect_err("too big");
        assert!(matches!(err, EncodeError::FrameTooLarge { max: 20, .. }));
        assert_eq!(err.condition(), "amqp:frame-size-too-small");
        assert_eq!(&out[..], b"prefix", "nothing written on error");
        encode_performative_limited(&mut out, 0, &open(), 512).expect("fits");
        assert!(out.len() > 6);
    }

    #[test]
    fn transfer_performative_encodes_through_serde() {
        let t = crate::types::performatives::Transfer {
            handle: 4.into(),
            delivery_id: Some(1),
            delivery_tag: None,
            message_format: None,
            settled: None,
            more: false,
            rcv_settle_mode: None,
            state: None,
            resume: false,
            aborted: false,
            batchable: false,
        };
        let mut out = BytesMut::new();
        encode_performative(&mut out, 0, &Performative::Transfer(t)).expect("encodes");
        let f = decode_one(&out).expect("decodes");
        let FrameBody::Transfer { transfer, payload } = f.body else {
            panic!("expected transfer");
        };
        assert_eq!(transfer.handle, 4);
        assert_eq!(transfer.delivery_id, Some(1));
        assert!(payload.is_empty());
    }

    #[test]
    fn close_with_error() {
        let mut out = BytesMut::new();
        let err = DecodeError::MalformedTransfer("transfer without a handle");
        encode_close_with_error(&mut out, err.condition(), &err.to_string());
        let Frame { channel, body } = decode_one(&out).expect("decodes");
        assert_eq!(channel, 0);
        let FrameBody::Performative(Performative::Close(Close { error: Some(e) })) = body else {
            panic!("expected close with error: {body:?}");
        };
        // Known conditions come back as fe2o3's typed variant.
        assert_eq!(
            e.condition,
            ErrorCondition::AmqpError(AmqpErrorCode::DecodeError)
        );
        assert_eq!(
            e.description.as_deref(),
            Some("malformed transfer: transfer without a handle")
        );

        // Long (multi-byte) descriptions are cut so the frame fits 512 bytes.
        let mut out = BytesMut::new();
        encode_close_with_error(&mut out, "amqp:connection:framing-error", &"é".repeat(1000));
        assert!(out.len() <= MIN_MAX_FRAME_SIZE as usize, "{}", out.len());
        let f = decode_one(&out).expect("decodes");
        let FrameBody::Performative(Performative::Close(Close { error: Some(e) })) = f.body else {
            panic!("expected close");
        };
        assert_eq!(e.description.map(|d| d.len()), Some(MAX_CLOSE_DESCRIPTION));

        // An empty description is omitted.
        let mut out = BytesMut::new();
        encode_close_with_error(&mut out, "amqp:internal-error", "");
        let f = decode_one(&out).expect("decodes");
        let FrameBody::Performative(Performative::Close(Close { error: Some(e) })) = f.body else {
            panic!("expected close");
        };
        assert_eq!(e.description, None);
    }

    #[test]
    fn non_transfer_frames_keep_their_channel() {
        let begin = Performative::Begin(Begin {
            remote_channel: Some(3),
            next_outgoing_id: 0,
            incoming_window: 100,
            outgoing_window: 100,
            handle_max: 7.into(),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        });
        let mut out = BytesMut::new();
        encode_performative(&mut out, 0xbeef, &begin).expect("encodes");
        assert_eq!(&out[4..8], &[2, 0, 0xbe, 0xef]);
        assert_eq!(decode_one(&out).expect("decodes").channel, 0xbeef);
    }
}
