//! SASL frames (AMQP 1.0 part 5.3): the security layer a client may run
//! before the AMQP connection proper.
//!
//! A client that wants SASL sends [`SASL_PROTOCOL_HEADER`] instead of the
//! AMQP one; both sides then exchange SASL frames (frame type 1, channel
//! ignored) until the server sends `sasl-outcome`, after which the client
//! sends the AMQP protocol header and the connection continues as usual.
//! The router's client-connection engine (`tether-router`'s `amqp` module)
//! is the caller: it decodes the client's `sasl-init`/`sasl-response` with
//! [`decode_sasl_frame`] and answers with [`encode_sasl_frame`].
//!
//! The frame bodies are fe2o3-amqp-types' `sasl` structs, decoded with
//! serde_amqp behind the same structural pre-check as other performatives
//! (bounded nesting and array counts, serde_amqp panics contained): SASL
//! frames arrive before authentication, so they are the most exposed input
//! the router has.

use bytes::{Buf, BufMut, BytesMut};
use fe2o3_amqp_types::sasl::{SaslChallenge, SaslInit, SaslMechanisms, SaslOutcome, SaslResponse};
use serde_amqp::serde::Serialize;

use crate::error::{DecodeError, EncodeError};
use crate::frame::FRAME_HEADER_LEN;
use crate::wire::{code, skip_value, Reader};

/// The SASL protocol header (protocol id 3, version 1.0.0).
pub const SASL_PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x03\x01\x00\x00";

/// Frame type of SASL frames.
pub const FRAME_TYPE_SASL: u8 = 0x01;

/// One SASL frame body (spec 5.3.3).
#[derive(Debug, Clone)]
pub enum SaslFrame {
    /// `sasl-mechanisms` (server to client): the mechanisms on offer.
    Mechanisms(SaslMechanisms),
    /// `sasl-init` (client to server): the chosen mechanism and its
    /// initial response.
    Init(SaslInit),
    /// `sasl-challenge` (server to client).
    Challenge(SaslChallenge),
    /// `sasl-response` (client to server).
    Response(SaslResponse),
    /// `sasl-outcome` (server to client): ends the SASL exchange.
    Outcome(SaslOutcome),
}

impl SaslFrame {
    /// The frame's name, for logs and error messages.
    pub fn name(&self) -> &'static str {
        match self {
            SaslFrame::Mechanisms(_) => "sasl-mechanisms",
            SaslFrame::Init(_) => "sasl-init",
            SaslFrame::Challenge(_) => "sasl-challenge",
            SaslFrame::Response(_) => "sasl-response",
            SaslFrame::Outcome(_) => "sasl-outcome",
        }
    }
}

/// Descriptor codes of the SASL frame bodies (spec 5.3.3).
const SASL_MECHANISMS: u64 = 0x40;
const SASL_INIT: u64 = 0x41;
const SASL_CHALLENGE: u64 = 0x42;
const SASL_RESPONSE: u64 = 0x43;
const SASL_OUTCOME: u64 = 0x44;

/// Decodes one SASL frame from the front of `buf`.
///
/// Works like [`crate::FrameDecoder::decode`]: `Ok(None)` while the frame
/// is incomplete (`buf` untouched), header errors as soon as the 8 header
/// bytes are there, so an oversized frame is never buffered. A frame of
/// another type (e.g. an AMQP frame sent before the SASL outcome) is
/// [`DecodeError::UnsupportedFrameType`]; an empty frame or a body that is
/// not one of the five SASL bodies is [`DecodeError::MalformedSasl`].
///
/// The spec limits SASL frames to [`crate::MIN_MAX_FRAME_SIZE`] (512)
/// bytes until the outcome; `max_frame_size` lets a lenient server accept
/// larger ones (long PLAIN credentials), and is clamped to at least 512.
pub fn decode_sasl_frame(
    buf: &mut BytesMut,
    max_frame_size: u32,
) -> Result<Option<SaslFrame>, DecodeError> {
    let max = max_frame_size.max(crate::MIN_MAX_FRAME_SIZE);
    let Some(size_bytes) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let size = u32::from_be_bytes(*size_bytes);
    if size < FRAME_HEADER_LEN as u32 {
        return Err(DecodeError::FrameTooSmall { size });
    }
    if size > max {
        return Err(DecodeError::FrameTooLarge { size, max });
    }
    let Some(&[_, _, _, _, doff, frame_type, _, _]) = buf.first_chunk::<8>() else {
        return Ok(None);
    };
    let body_start = usize::from(doff) * 4;
    if doff < 2 || body_start > size as usize {
        return Err(DecodeError::BadDataOffset { doff, size });
    }
    if frame_type != FRAME_TYPE_SASL {
        return Err(DecodeError::UnsupportedFrameType(frame_type));
    }
    let size = size as usize;
    if buf.len() < size {
        return Ok(None);
    }
    // SASL frames are rare (one or two per connection): decode from the
    // borrowed bytes, then drop them.
    let result = buf
        .get(body_start..size)
        .ok_or(DecodeError::MalformedSasl("truncated frame".to_owned()))
        .and_then(decode_sasl_body);
    buf.advance(size);
    result.map(Some)
}

/// Appends a SASL frame carrying `frame`. On error `out` is left as it was.
pub fn encode_sasl_frame(out: &mut BytesMut, frame: &SaslFrame) -> Result<(), EncodeError> {
    let start = out.len();
    out.put_slice(&[0, 0, 0, 0, 2, FRAME_TYPE_SASL, 0, 0]);
    let mut ser = serde_amqp::ser::Serializer::new((&mut *out).writer());
    let result = match frame {
        SaslFrame::Mechanisms(v) => v.serialize(&mut ser),
        SaslFrame::Init(v) => v.serialize(&mut ser),
        SaslFrame::Challenge(v) => v.serialize(&mut ser),
        SaslFrame::Response(v) => v.serialize(&mut ser),
        SaslFrame::Outcome(v) => v.serialize(&mut ser),
    };
    if let Err(e) = result {
        out.truncate(start);
        return Err(EncodeError::Serialize(e.to_string()));
    }
    let size = out.len() - start;
    let Ok(size32) = u32::try_from(size) else {
        out.truncate(start);
        return Err(EncodeError::FrameTooLarge {
            size,
            max: u32::MAX,
        });
    };
    if let Some(field) = out.get_mut(start..start + 4) {
        field.copy_from_slice(&size32.to_be_bytes());
    }
    Ok(())
}

/// Decodes a SASL frame body: structural pre-check (as for performatives),
/// descriptor dispatch, then serde_amqp for the one matching type.
fn decode_sasl_body(body: &[u8]) -> Result<SaslFrame, DecodeError> {
    let malformed = |m: &str| DecodeError::MalformedSasl(m.to_owned());
    if body.is_empty() {
        return Err(malformed("empty SASL frame"));
    }
    let mut r = Reader::new(body, 0);
    skip_value(&mut r, 0).map_err(malformed)?;
    let encoded = body.get(..r.pos).unwrap_or_default();
    let descriptor = descriptor_code(encoded).ok_or_else(|| malformed("not a SASL frame body"))?;
    // serde_amqp is third-party code fed with unauthenticated bytes; a
    // panic in it is contained and reported like any other bad input.
    let decoded = std::panic::catch_unwind(|| -> Result<SaslFrame, serde_amqp::Error> {
        Ok(match descriptor {
            SASL_MECHANISMS => SaslFrame::Mechanisms(serde_amqp::from_slice(encoded)?),
            SASL_INIT => SaslFrame::Init(serde_amqp::from_slice(encoded)?),
            SASL_CHALLENGE => SaslFrame::Challenge(serde_amqp::from_slice(encoded)?),
            SASL_RESPONSE => SaslFrame::Response(serde_amqp::from_slice(encoded)?),
            _ => SaslFrame::Outcome(serde_amqp::from_slice(encoded)?),
        })
    });
    match decoded {
        Ok(Ok(frame)) => Ok(frame),
        Ok(Err(e)) => Err(DecodeError::MalformedSasl(e.to_string())),
        Err(_) => Err(malformed("serde_amqp panicked while decoding")),
    }
}

/// The SASL descriptor code of a described value, in any of its legal
/// encodings (smallulong, ulong, symbol), or `None` if it is not one of
/// the five SASL bodies.
fn descriptor_code(body: &[u8]) -> Option<u64> {
    let code = match body {
        [code::DESCRIBED, code::SMALLULONG, c, ..] => u64::from(*c),
        [code::DESCRIBED, code::ULONG, rest @ ..] => u64::from_be_bytes(*rest.first_chunk::<8>()?),
        [code::DESCRIBED, code::SYM8, len, rest @ ..] => {
            symbol_code(rest.get(..usize::from(*len))?)?
        }
        [code::DESCRIBED, code::SYM32, l0, l1, l2, l3, rest @ ..] => {
            let len = u32::from_be_bytes([*l0, *l1, *l2, *l3]) as usize;
            symbol_code(rest.get(..len)?)?
        }
        _ => return None,
    };
    (SASL_MECHANISMS..=SASL_OUTCOME)
        .contains(&code)
        .then_some(code)
}

fn symbol_code(name: &[u8]) -> Option<u64> {
    Some(match name {
        b"amqp:sasl-mechanisms:list" => SASL_MECHANISMS,
        b"amqp:sasl-init:list" => SASL_INIT,
        b"amqp:sasl-challenge:list" => SASL_CHALLENGE,
        b"amqp:sasl-response:list" => SASL_RESPONSE,
        b"amqp:sasl-outcome:list" => SASL_OUTCOME,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::primitives::{Array, Binary, Symbol};
    use crate::types::sasl::SaslCode;

    fn init(mechanism: &str, response: Option<&[u8]>) -> SaslFrame {
        SaslFrame::Init(SaslInit {
            mechanism: Symbol::from(mechanism),
            initial_response: response.map(|r| Binary::from(r.to_vec())),
            hostname: Some("example.org".into()),
        })
    }

    fn round_trip(frame: &SaslFrame) -> SaslFrame {
        let mut out = BytesMut::new();
        encode_sasl_frame(&mut out, frame).expect("encodes");
        assert_eq!(out[5], FRAME_TYPE_SASL);
        let mut buf = out.clone();
        let back = decode_sasl_frame(&mut buf, 512)
            .expect("decodes")
            .expect("whole frame");
        assert!(buf.is_empty());
        back
    }

    #[test]
    fn every_body_round_trips() {
        let frames = [
            SaslFrame::Mechanisms(SaslMechanisms {
                sasl_server_mechanisms: Array::from(vec![
                    Symbol::from("PLAIN"),
                    Symbol::from("ANONYMOUS"),
                ]),
            }),
            init("PLAIN", Some(b"\0user\0secret")),
            init("ANONYMOUS", None),
            SaslFrame::Challenge(SaslChallenge {
                challenge: Binary::from(vec![1, 2, 3]),
            }),
            SaslFrame::Response(SaslResponse {
                response: Binary::from(b"\0u\0p".to_vec()),
            }),
            SaslFrame::Outcome(SaslOutcome {
                code: SaslCode::Auth,
                additional_data: None,
            }),
        ];
        for f in &frames {
            let back = round_trip(f);
            assert_eq!(format!("{f:?}"), format!("{back:?}"));
            assert_eq!(f.name(), back.name());
        }
    }

    #[test]
    fn incomplete_frames_wait() {
        let mut full = BytesMut::new();
        encode_sasl_frame(&mut full, &init("ANONYMOUS", None)).expect("encodes");
        for n in 0..full.len() {
            let mut buf = BytesMut::from(&full[..n]);
            assert!(decode_sasl_frame(&mut buf, 512)
                .expect("no error")
                .is_none());
            assert_eq!(buf.len(), n);
        }
    }

    #[test]
    fn header_errors() {
        let dec = |b: &[u8], max| decode_sasl_frame(&mut BytesMut::from(b), max).unwrap_err();
        assert_eq!(
            dec(&[0, 0, 0, 4], 512),
            DecodeError::FrameTooSmall { size: 4 }
        );
        assert_eq!(
            dec(&[0, 0, 2, 1], 512),
            DecodeError::FrameTooLarge {
                size: 513,
                max: 512
            }
        );
        assert_eq!(
            dec(&[0, 0, 0, 8, 1, 1, 0, 0], 512),
            DecodeError::BadDataOffset { doff: 1, size: 8 }
        );
        // An AMQP frame where a SASL frame belongs.
        assert_eq!(
            dec(&[0, 0, 0, 8, 2, 0, 0, 0], 512),
            DecodeError::UnsupportedFrameType(0)
        );
        assert_eq!(
            dec(&[0, 0, 0, 8, 2, 0, 0, 0], 512).condition(),
            "amqp:connection:framing-error"
        );
    }

    #[test]
    fn bad_bodies() {
        let frame = |body: &[u8]| {
            let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
            v.extend_from_slice(&[2, 1, 0, 0]);
            v.extend_from_slice(body);
            BytesMut::from(&v[..])
        };
        for body in [
            &[][..],                                  // empty frame
            &[0x40],                                  // not described
            &[0x00, 0x53, 0x10, 0x45],                // an AMQP open descriptor
            &[0x00, 0x53, 0x41, 0x45],                // sasl-init without mechanism
            &[0x00, 0x53, 0x44, 0xc0, 2, 1],          // truncated list
            &[0x00, 0x53, 0x44, 0xc0, 3, 1, 0x50, 9], // bad sasl code
        ] {
            let mut buf = frame(body);
            let e = decode_sasl_frame(&mut buf, 512).expect_err("must fail");
            assert!(
                matches!(e, DecodeError::MalformedSasl(_)),
                "{body:02x?}: {e:?}"
            );
            assert_eq!(e.condition(), "amqp:decode-error");
            assert!(buf.is_empty(), "the bad frame is consumed");
        }
    }

    #[test]
    fn symbolic_descriptors() {
        // sasl-init with the descriptor as sym8 and as ulong.
        let mut sym = vec![0x00, 0xa3, 19];
        sym.extend_from_slice(b"amqp:sasl-init:list");
        let mut ulong = vec![0x00, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x41];
        for d in [&mut sym, &mut ulong] {
            d.extend_from_slice(&[0xc0, 0x07, 0x01, 0xa3, 0x04]);
            d.extend_from_slice(b"PLAN");
            let mut v = ((d.len() + 8) as u32).to_be_bytes().to_vec();
            v.extend_from_slice(&[2, 1, 0, 0]);
            v.extend_from_slice(d);
            let f = decode_sasl_frame(&mut BytesMut::from(&v[..]), 512)
                .expect("decodes")
                .expect("whole");
            let SaslFrame::Init(i) = f else {
                panic!("expected init");
            };
            assert_eq!(i.mechanism.0, "PLAN");
        }
    }
}
