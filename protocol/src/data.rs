//! Hot path for byte-stream adaptors (e.g. TCP): single-frame deliveries
//! whose payload is exactly one AMQP Data section.
//!
//! The TCP adaptor reserves a fixed-size header with
//! [`DataTransferSlot::begin`], reads socket bytes straight into the output
//! buffer behind it and then patches the header with
//! [`DataTransferSlot::finish`], so stream bytes are never copied between
//! the socket and the frame. On the receiving side
//! [`data_section_body`] recovers the stream bytes from a transfer payload
//! as a zero-copy slice.

use bytes::{Bytes, BytesMut};

use crate::error::DecodeError;
use crate::frame::FRAME_HEADER_LEN;
use crate::wire::code;

/// Descriptor code of the Data section (`amqp:data:binary`).
const DATA_DESCRIPTOR: u8 = 0x75;

/// Fixed performative of a slot transfer: descriptor (3), list8 header (3),
/// handle uint (5), delivery-id uint (5), tag vbin8 of 4 (6),
/// message-format uint0 (1) and settled (1).
const SLOT_PERFORMATIVE_LEN: usize = 24;
/// Data section header: descriptor (3) + vbin32 constructor and length (5).
const DATA_SECTION_HEADER_LEN: usize = 8;

/// Bytes [`DataTransferSlot::begin`] reserves in front of the payload:
/// frame header + fixed-width transfer performative + Data section header.
pub const DATA_TRANSFER_OVERHEAD: usize =
    FRAME_HEADER_LEN + SLOT_PERFORMATIVE_LEN + DATA_SECTION_HEADER_LEN;

/// A reserved, not yet filled in, transfer-frame header in an output buffer.
///
/// Deliberately neither `Clone` nor `Copy`: `finish`/`cancel` consume it so
/// a slot is patched or dropped exactly once.
#[derive(Debug)]
#[must_use = "a reserved slot must be finished or cancelled"]
pub struct DataTransferSlot {
    start: usize,
}

impl DataTransferSlot {
    /// Appends [`DATA_TRANSFER_OVERHEAD`] placeholder bytes to `out` and
    /// remembers where; the caller then appends the payload.
    pub fn begin(out: &mut BytesMut) -> Self {
        let start = out.len();
        out.resize(start + DATA_TRANSFER_OVERHEAD, 0);
        DataTransferSlot { start }
    }

    /// Largest payload that keeps the frame within `max_frame_size`.
    pub fn max_payload(max_frame_size: u32) -> usize {
        (max_frame_size as usize).saturating_sub(DATA_TRANSFER_OVERHEAD)
    }

    /// Number of payload bytes appended since [`DataTransferSlot::begin`].
    pub fn payload_len(&self, out: &BytesMut) -> usize {
        out.len()
            .saturating_sub(self.start + DATA_TRANSFER_OVERHEAD)
    }

    /// Patches the reserved header for the payload appended since `begin`:
    /// a transfer with `handle`, `delivery_id`, delivery-tag = `delivery_id`
    /// as 4 big-endian bytes, message-format 0, `settled`, more = false,
    /// whose payload is one Data section.
    ///
    /// Every field has a fixed-width encoding (uint 0x70, vbin8 tag, uint0
    /// message-format, vbin32 section length), which is what makes the
    /// header size constant.
    ///
    /// # Panics
    ///
    /// If `out` was truncated below the reserved header, or the frame would
    /// exceed 4 GiB; both are caller bugs, as the caller bounds the payload
    /// with [`DataTransferSlot::max_payload`].
    pub fn finish(
        self,
        out: &mut BytesMut,
        channel: u16,
        handle: u32,
        delivery_id: u32,
        settled: bool,
    ) {
        let payload_len = self.payload_len(out);
        let (Ok(frame_len), Ok(section_len)) = (
            u32::try_from(payload_len + DATA_TRANSFER_OVERHEAD),
            u32::try_from(payload_len),
        ) else {
            panic!("data transfer frame larger than 4 GiB");
        };
        let Some(header) = out.get_mut(self.start..self.start + DATA_TRANSFER_OVERHEAD) else {
            panic!("DataTransferSlot: output buffer truncated below the reserved header");
        };
        let [f0, f1, f2, f3] = frame_len.to_be_bytes();
        let [c0, c1] = channel.to_be_bytes();
        let [h0, h1, h2, h3] = handle.to_be_bytes();
        let [d0, d1, d2, d3] = delivery_id.to_be_bytes();
        let [l0, l1, l2, l3] = section_len.to_be_bytes();
        let settled = if settled { code::TRUE } else { code::FALSE };
        // Typed with the constant so a layout change that breaks the fixed
        // size fails to compile.
        #[rustfmt::skip]
        let bytes: [u8; DATA_TRANSFER_OVERHEAD] = [
            // Frame header: size, doff 2, type AMQP, channel.
            f0, f1, f2, f3, 2, 0, c0, c1,
            // transfer descriptor
            code::DESCRIBED, code::SMALLULONG, 0x14,
            // list8: size = count byte + 18 field bytes, 5 fields
            code::LIST8, 19, 5,
            code::UINT, h0, h1, h2, h3, // handle
            code::UINT, d0, d1, d2, d3, // delivery-id
            code::VBIN8, 4, d0, d1, d2, d3, // delivery-tag
            code::UINT0, // message-format 0
            settled,
            // Data section: descriptor + vbin32 length
            code::DESCRIBED, code::SMALLULONG, DATA_DESCRIPTOR,
            code::VBIN32, l0, l1, l2, l3,
        ];
        header.copy_from_slice(&bytes);
    }

    /// Drops the reserved header (and any payload appended after it).
    pub fn cancel(self, out: &mut BytesMut) {
        out.truncate(self.start);
    }
}

/// Returns the bytes of the single Data section that makes up `payload`, as
/// a zero-copy slice.
///
/// Accepts every valid encoding of the section: descriptor as smallulong,
/// ulong or the symbol `amqp:data:binary`, body as vbin8 or vbin32. Anything
/// else, including trailing bytes after the section, is
/// [`DecodeError::NotDataSection`].
pub fn data_section_body(payload: &Bytes) -> Result<Bytes, DecodeError> {
    const NAME: &[u8] = b"amqp:data:binary";
    let after_descriptor = match payload.as_ref() {
        [code::DESCRIBED, code::SMALLULONG, DATA_DESCRIPTOR, ..] => 3,
        [code::DESCRIBED, code::ULONG, 0, 0, 0, 0, 0, 0, 0, DATA_DESCRIPTOR, ..] => 10,
        [code::DESCRIBED, code::SYM8, 16, rest @ ..] if rest.starts_with(NAME) => 19,
        [code::DESCRIBED, code::SYM32, 0, 0, 0, 16, rest @ ..] if rest.starts_with(NAME) => 22,
        _ => return Err(DecodeError::NotDataSection),
    };
    let rest = payload.get(after_descriptor..).unwrap_or_default();
    let (start, len) = match rest {
        [code::VBIN8, len, ..] => (after_descriptor + 2, usize::from(*len)),
        [code::VBIN32, l0, l1, l2, l3, ..] => (
            after_descriptor + 5,
            u32::from_be_bytes([*l0, *l1, *l2, *l3]) as usize,
        ),
        _ => return Err(DecodeError::NotDataSection),
    };
    if start.checked_add(len) != Some(payload.len()) {
        return Err(DecodeError::NotDataSection);
    }
    Ok(payload.slice(start..))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::decode_one;
    use crate::{FrameBody, TransferHeader};

    #[test]
    fn overhead_is_forty_bytes() {
        assert_eq!(DATA_TRANSFER_OVERHEAD, 40);
        assert_eq!(DataTransferSlot::max_payload(512), 472);
        assert_eq!(DataTransferSlot::max_payload(10), 0);
    }

    #[test]
    fn slot_round_trip() {
        let mut out = BytesMut::from(&b"earlier frames"[..]);
        let slot = DataTransferSlot::begin(&mut out);
        assert_eq!(slot.payload_len(&out), 0);
        out.extend_from_slice(b"stream bytes");
        assert_eq!(slot.payload_len(&out), 12);
        slot.finish(&mut out, 4, 0x0102_0304, 77, true);
        let frame = decode_one(&out[14..]).expect("decodes");
        assert_eq!(frame.channel, 4);
        let FrameBody::Transfer { transfer, payload } = frame.body else {
            panic!("expected transfer");
        };
        assert_eq!(
            transfer,
            TransferHeader {
                handle: 0x0102_0304,
                delivery_id: Some(77),
                delivery_tag: Some(Bytes::from_static(&[0, 0, 0, 77])),
                message_format: Some(0),
                settled: Some(true),
                ..Default::default()
            }
        );
        assert_eq!(
            &data_section_body(&payload).expect("data section")[..],
            b"stream bytes"
        );
        // serde_amqp reads the same performative.
        let serde: crate::types::performatives::Transfer =
            serde_amqp::from_slice(&out[22..]).expect("serde decodes");
        assert_eq!(serde.handle.0, 0x0102_0304);
    }

    #[test]
    fn slot_with_empty_payload() {
        let mut out = BytesMut::new();
        DataTransferSlot::begin(&mut out).finish(&mut out, 0, 0, 0, false);
        assert_eq!(out.len(), DATA_TRANSFER_OVERHEAD);
        let FrameBody::Transfer { transfer, payload } = decode_one(&out).expect("decodes").body
        else {
            panic!("expected transfer");
        };
        assert_eq!(transfer.settled, Some(false));
        assert!(data_section_body(&payload).expect("data").is_empty());
    }

    #[test]
    fn cancel_truncates() {
        let mut out = BytesMut::from(&b"keep"[..]);
        let slot = DataTransferSlot::begin(&mut out);
        out.extend_from_slice(b"discard");
        slot.cancel(&mut out);
        assert_eq!(&out[..], b"keep");
    }

    fn section(descriptor: &[u8], body: &[u8], wide: bool) -> Bytes {
        let mut v = vec![0x00];
        v.extend_from_slice(descriptor);
        if wide {
            v.push(0xb0);
            v.extend_from_slice(&(body.len() as u32).to_be_bytes());
        } else {
            v.extend_from_slice(&[0xa0, body.len() as u8]);
        }
        v.extend_from_slice(body);
        Bytes::from(v)
    }

    #[test]
    fn data_section_encodings() {
        let mut sym8 = vec![0xa3, 16];
        sym8.extend_from_slice(b"amqp:data:binary");
        let mut sym32 = vec![0xb3, 0, 0, 0, 16];
        sym32.extend_from_slice(b"amqp:data:binary");
        let descriptors: [&[u8]; 4] = [
            &[0x53, 0x75],
            &[0x80, 0, 0, 0, 0, 0, 0, 0, 0x75],
            &sym8,
            &sym32,
        ];
        for d in descriptors {
            for wide in [false, true] {
                for body in [&b""[..], b"abc", &[7u8; 255]] {
                    let s = section(d, body, wide);
                    let got = data_section_body(&s).expect("data section");
                    assert_eq!(&got[..], body);
                    if !body.is_empty() {
                        // Zero-copy: the result points into the payload.
                        let range = s.as_ptr() as usize..s.as_ptr() as usize + s.len();
                        assert!(range.contains(&(got.as_ptr() as usize)));
                    }
                }
            }
        }
    }

    #[test]
    fn data_section_errors() {
        let good = section(&[0x53, 0x75], b"abc", false);
        let cases: Vec<Bytes> = vec![
            Bytes::new(),
            Bytes::from_static(&[0x00, 0x53]),
            // amqp-value section (0x77) rather than data
            section(&[0x53, 0x77], b"abc", false),
            // trailing bytes after the section
            Bytes::from([&good[..], &[0x40]].concat()),
            // truncated body
            good.slice(..good.len() - 1),
            // truncated vbin32 length
            Bytes::from_static(&[0x00, 0x53, 0x75, 0xb0, 0, 0]),
            // not binary
            Bytes::from_static(&[0x00, 0x53, 0x75, 0xa1, 0x00]),
            // huge declared length
            Bytes::from_static(&[0x00, 0x53, 0x75, 0xb0, 0xff, 0xff, 0xff, 0xff]),
            // wrong symbol
            Bytes::from_static(b"\x00\xa3\x10amqp:data:binarY\xa0\x00"),
        ];
        for c in cases {
            assert_eq!(
                data_section_body(&c),
                Err(DecodeError::NotDataSection),
                "{c:02x?}"
            );
        }
        assert_eq!(DecodeError::NotDataSection.condition(), "amqp:decode-error");
    }
}
