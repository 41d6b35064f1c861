//! Hand-written fast path for the `transfer` performative (AMQP 1.0 spec
//! section 2.7.5).
//!
//! Transfers are the only per-message frames, so they dominate the router's
//! frame rate. Decoding them through serde_amqp costs hundreds of
//! nanoseconds and copies the delivery tag and state; the scan here takes a
//! few tens of nanoseconds and hands out zero-copy `Bytes` slices of the
//! frame. The router's link layer consumes [`TransferHeader`] values from
//! [`crate::FrameDecoder`] and produces them with [`encode_transfer`].

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::frame::{put_frame_header, FRAME_HEADER_LEN};
use crate::wire::{code, read_size_count, skip_value, Reader};

/// The fields of a `transfer` performative, with the delivery tag and state
/// kept as raw bytes.
///
/// `Option` fields distinguish "absent/null" from an explicit value because
/// the spec gives absence its own meaning (e.g. an unset `settled` on a
/// continuation transfer inherits from earlier transfers). Boolean fields
/// whose spec default is `false` are plain `bool`s.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TransferHeader {
    /// Link handle (mandatory).
    pub handle: u32,
    /// Delivery id; may be omitted on continuation transfers.
    pub delivery_id: Option<u32>,
    /// Delivery tag (binary, at most 32 bytes per spec; not enforced here).
    pub delivery_tag: Option<Bytes>,
    /// Message format; 0 is the standard AMQP message format.
    pub message_format: Option<u32>,
    /// Whether the sender has settled the delivery.
    pub settled: Option<bool>,
    /// More transfers of this delivery follow.
    pub more: bool,
    /// Receiver settle mode override: 0 = first, 1 = second.
    pub rcv_settle_mode: Option<u8>,
    /// The raw encoded delivery-state value (a whole described value),
    /// passed through undecoded. [`encode_transfer`] writes it verbatim, so
    /// it must be a valid AMQP encoding.
    pub state: Option<Bytes>,
    /// Resumed delivery.
    pub resume: bool,
    /// Delivery aborted; the payload must be ignored.
    pub aborted: bool,
    /// Hint that dispositions need not be sent urgently.
    pub batchable: bool,
}

/// Length of the `transfer` descriptor starting at `body[0]`, if the body
/// starts with one in any of its legal encodings (smallulong, ulong,
/// symbol). Used by the frame decoder to route the body to the fast path.
#[inline]
pub(crate) fn transfer_descriptor_len(body: &[u8]) -> Option<usize> {
    const NAME: &[u8] = b"amqp:transfer:list";
    match body {
        [code::DESCRIBED, code::SMALLULONG, 0x14, ..] => Some(3),
        [code::DESCRIBED, code::ULONG, 0, 0, 0, 0, 0, 0, 0, 0x14, ..] => Some(10),
        [code::DESCRIBED, code::SYM8, 18, rest @ ..] if rest.starts_with(NAME) => Some(21),
        [code::DESCRIBED, code::SYM32, 0, 0, 0, 18, rest @ ..] if rest.starts_with(NAME) => {
            Some(24)
        }
        _ => None,
    }
}

/// Decodes the transfer fields list starting at `list_start` (just after
/// the descriptor) within `frame`, returning the header and the payload
/// (everything after the list up to the frame end).
///
/// This and [`scan_fields`] are forced inline into the frame decoder: as
/// calls, their results travel through memory and the whole-struct copies
/// that follow stall on store forwarding, which measured as about a quarter
/// of the total transfer decode time.
#[inline(always)]
pub(crate) fn decode_transfer(
    frame: Bytes,
    list_start: usize,
) -> Result<(TransferHeader, Bytes), DecodeError> {
    let s = scan_fields(&frame, list_start).map_err(DecodeError::MalformedTransfer)?;
    // Built in one go from scalars (not filled in field by field) for the
    // same store-forwarding reason.
    let transfer = TransferHeader {
        handle: s.handle,
        delivery_id: s.delivery_id,
        // Ranges were bounds-checked against the frame by the scan.
        delivery_tag: s.tag.map(|(b, e)| frame.slice(b..e)),
        message_format: s.message_format,
        settled: s.settled,
        more: s.more,
        rcv_settle_mode: s.rcv_settle_mode,
        state: s.state.map(|(b, e)| frame.slice(b..e)),
        resume: s.resume,
        aborted: s.aborted,
        batchable: s.batchable,
    };
    // Reuse the frame's own handle for the payload rather than slicing a new
    // one: Bytes refcounts are atomic and are a large part of the cost.
    let mut payload = frame;
    payload.advance(s.payload_start);
    Ok((transfer, payload))
}

/// Result of scanning a transfer's fields: plain values and byte ranges
/// into the frame, turned into a [`TransferHeader`] by the caller.
#[derive(Default)]
struct Scanned {
    handle: u32,
    delivery_id: Option<u32>,
    tag: Option<(usize, usize)>,
    message_format: Option<u32>,
    settled: Option<bool>,
    more: bool,
    rcv_settle_mode: Option<u8>,
    state: Option<(usize, usize)>,
    resume: bool,
    aborted: bool,
    batchable: bool,
    payload_start: usize,
}

#[inline(always)]
fn scan_fields(frame: &[u8], list_start: usize) -> Result<Scanned, &'static str> {
    let mut r = Reader::new(frame, list_start);
    let (count, end) = match r.u8()? {
        code::LIST0 => (0, r.pos),
        code::LIST8 => read_size_count(&mut r, false)?,
        code::LIST32 => read_size_count(&mut r, true)?,
        _ => return Err("performative is not a list"),
    };
    let mut r = r.limited(end);
    let mut s = Scanned {
        payload_start: end,
        ..Scanned::default()
    };
    let mut handle = None;
    let mut left = count;
    // Straight-line rather than a loop over a field index: each field is
    // decoded by its own code, so branches stay predictable.
    macro_rules! field {
        ($done:lifetime, $decode:expr) => {
            if left == 0 {
                break $done;
            }
            left -= 1;
            $decode
        };
    }
    'fields: {
        field!('fields, handle = read_uint(&mut r, "handle is not a uint")?);
        field!('fields, s.delivery_id = read_uint(&mut r, "delivery-id is not a uint")?);
        field!('fields, s.tag = read_binary(&mut r, "delivery-tag is not binary")?);
        field!('fields, s.message_format = read_uint(&mut r, "message-format is not a uint")?);
        field!('fields, s.settled = read_bool(&mut r, "settled is not a boolean")?);
        field!('fields, s.more = read_flag(&mut r, "more is not a boolean")?);
        field!('fields, s.rcv_settle_mode = read_settle_mode(&mut r)?);
        field!('fields, s.state = read_state(&mut r)?);
        field!('fields, s.resume = read_flag(&mut r, "resume is not a boolean")?);
        field!('fields, s.aborted = read_flag(&mut r, "aborted is not a boolean")?);
        field!('fields, s.batchable = read_flag(&mut r, "batchable is not a boolean")?);
        // Fields added by a later protocol revision: tolerate and skip.
        // Each takes at least one byte, so a huge `count` ends in a
        // truncation error rather than a long loop.
        while left > 0 {
            skip_value(&mut r, 0)?;
            left -= 1;
        }
    }
    if r.pos != end {
        return Err("transfer list size does not match its fields");
    }
    let Some(h) = handle else {
        return Err("transfer without a handle");
    };
    s.handle = h;
    Ok(s)
}

#[inline(always)]
fn read_uint(r: &mut Reader<'_>, err: &'static str) -> Result<Option<u32>, &'static str> {
    match r.u8()? {
        code::NULL => Ok(None),
        code::UINT0 => Ok(Some(0)),
        code::SMALLUINT => Ok(Some(u32::from(r.u8()?))),
        code::UINT => Ok(Some(r.u32()?)),
        _ => Err(err),
    }
}

#[inline(always)]
fn read_bool(r: &mut Reader<'_>, err: &'static str) -> Result<Option<bool>, &'static str> {
    match r.u8()? {
        code::NULL => Ok(None),
        code::TRUE => Ok(Some(true)),
        code::FALSE => Ok(Some(false)),
        code::BOOLEAN => match r.u8()? {
            0 => Ok(Some(false)),
            1 => Ok(Some(true)),
            _ => Err(err),
        },
        _ => Err(err),
    }
}

#[inline(always)]
fn read_flag(r: &mut Reader<'_>, err: &'static str) -> Result<bool, &'static str> {
    // Absent (null) means the spec default, false.
    read_bool(r, err).map(|b| b.unwrap_or(false))
}

/// Returns the (start, end) offsets of the binary's bytes.
#[inline(always)]
fn read_binary(
    r: &mut Reader<'_>,
    err: &'static str,
) -> Result<Option<(usize, usize)>, &'static str> {
    let len = match r.u8()? {
        code::NULL => return Ok(None),
        code::VBIN8 => r.u8()? as usize,
        code::VBIN32 => r.u32()? as usize,
        _ => return Err(err),
    };
    let start = r.skip(len)?;
    Ok(Some((start, r.pos)))
}

#[inline(always)]
fn read_settle_mode(r: &mut Reader<'_>) -> Result<Option<u8>, &'static str> {
    match r.u8()? {
        code::NULL => Ok(None),
        code::UBYTE => match r.u8()? {
            m @ (0 | 1) => Ok(Some(m)),
            _ => Err("rcv-settle-mode out of range"),
        },
        _ => Err("rcv-settle-mode is not a ubyte"),
    }
}

/// Returns the (start, end) offsets of the whole encoded state value.
#[inline(always)]
fn read_state(r: &mut Reader<'_>) -> Result<Option<(usize, usize)>, &'static str> {
    let start = r.pos;
    match r.u8()? {
        code::NULL => Ok(None),
        code::DESCRIBED => {
            // Rewind so the captured bytes include the 0x00 constructor.
            r.pos = start;
            skip_value(r, 0)?;
            Ok(Some((start, r.pos)))
        }
        _ => Err("state is not a described delivery-state"),
    }
}

/* ------------------------------- encoding ------------------------------- */

#[inline]
fn uint_len(v: u32) -> usize {
    match v {
        0 => 1,
        1..=255 => 2,
        _ => 5,
    }
}

#[inline]
fn opt_uint_len(v: Option<u32>) -> usize {
    v.map_or(1, uint_len)
}

#[inline]
fn binary_len(b: &[u8]) -> usize {
    if b.len() <= 255 {
        2 + b.len()
    } else {
        5 + b.len()
    }
}

/// Number of list fields to write: trailing absent/default fields are
/// omitted, as the spec allows, to keep frames small.
fn field_count(t: &TransferHeader) -> u32 {
    if t.batchable {
        11
    } else if t.aborted {
        10
    } else if t.resume {
        9
    } else if t.state.is_some() {
        8
    } else if t.rcv_settle_mode.is_some() {
        7
    } else if t.more {
        6
    } else if t.settled.is_some() {
        5
    } else if t.message_format.is_some() {
        4
    } else if t.delivery_tag.is_some() {
        3
    } else if t.delivery_id.is_some() {
        2
    } else {
        1
    }
}

/// Encoded size of the first `count` fields.
fn fields_len(t: &TransferHeader, count: u32) -> usize {
    let mut n = uint_len(t.handle);
    if count > 1 {
        n += opt_uint_len(t.delivery_id);
    }
    if count > 2 {
        n += t.delivery_tag.as_deref().map_or(1, binary_len);
    }
    if count > 3 {
        n += opt_uint_len(t.message_format);
    }
    if count > 4 {
        n += 1; // settled
    }
    if count > 5 {
        n += 1; // more
    }
    if count > 6 {
        n += if t.rcv_settle_mode.is_some() { 2 } else { 1 };
    }
    if count > 7 {
        n += t.state.as_ref().map_or(1, |s| s.len());
    }
    // resume, aborted, batchable: one byte each.
    n + (count.saturating_sub(8) as usize)
}

/// Size of the list encoding (constructor, size, count) for `fields` bytes
/// of fields, and whether list32 is needed.
#[inline]
fn list_header(fields: usize) -> (usize, bool) {
    // list8's size byte counts the count byte plus the fields.
    if fields < 255 {
        (3, false)
    } else {
        (9, true)
    }
}

/// Bytes [`encode_transfer`] writes before the payload: frame header plus
/// performative. The router uses this to work out how much payload fits
/// in a frame of the peer's max-frame-size.
pub fn transfer_frame_overhead(t: &TransferHeader) -> usize {
    let fields = fields_len(t, field_count(t));
    FRAME_HEADER_LEN + 3 + list_header(fields).0 + fields
}

/// Encodes a whole transfer frame: header, performative and payload.
///
/// Uses the most compact encoding of each field and omits trailing default
/// fields. `t.state`, if present, is copied verbatim and must be a valid
/// encoded described value.
///
/// # Panics
///
/// If the frame would exceed 4 GiB (the frame size field is a u32). Callers
/// bound payloads by the negotiated max-frame-size, so this is a caller bug.
pub fn encode_transfer(out: &mut BytesMut, channel: u16, t: &TransferHeader, payload: &[u8]) {
    encode_transfer_header(out, channel, t, payload.len());
    out.put_slice(payload);
}

/// Encodes the frame header and transfer performative of a frame whose
/// `payload_len` payload bytes the caller appends to `out` right after,
/// e.g. from several `Bytes` chunks without first concatenating them.
///
/// # Panics
///
/// If the frame would exceed 4 GiB, as for [`encode_transfer`].
pub fn encode_transfer_header(
    out: &mut BytesMut,
    channel: u16,
    t: &TransferHeader,
    payload_len: usize,
) {
    let count = field_count(t);
    let fields = fields_len(t, count);
    let (list_hdr, wide) = list_header(fields);
    let perf_len = 3 + list_hdr + fields;
    let frame_len = FRAME_HEADER_LEN
        .checked_add(perf_len)
        .and_then(|n| n.checked_add(payload_len))
        .and_then(|n| u32::try_from(n).ok());
    let Some(frame_len) = frame_len else {
        panic!("transfer frame larger than 4 GiB ({payload_len} byte payload)");
    };
    out.reserve(perf_len + FRAME_HEADER_LEN + payload_len);
    put_frame_header(out, frame_len, channel);
    out.put_slice(&[code::DESCRIBED, code::SMALLULONG, 0x14]);
    if wide {
        out.put_u8(code::LIST32);
        // Both values are below the u32 frame length checked above.
        out.put_u32((fields + 4) as u32);
        out.put_u32(count);
    } else {
        out.put_slice(&[code::LIST8, (fields + 1) as u8, count as u8]);
    }
    put_uint(out, t.handle);
    if count > 1 {
        put_opt_uint(out, t.delivery_id);
    }
    if count > 2 {
        match &t.delivery_tag {
            Some(tag) => put_binary(out, tag),
            None => out.put_u8(code::NULL),
        }
    }
    if count > 3 {
        put_opt_uint(out, t.message_format);
    }
    if count > 4 {
        put_opt_bool(out, t.settled);
    }
    if count > 5 {
        put_bool(out, t.more);
    }
    if count > 6 {
        match t.rcv_settle_mode {
            Some(m) => out.put_slice(&[code::UBYTE, m]),
            None => out.put_u8(code::NULL),
        }
    }
    if count > 7 {
        match &t.state {
            Some(s) => out.put_slice(s),
            None => out.put_u8(code::NULL),
        }
    }
    if count > 8 {
        put_bool(out, t.resume);
    }
    if count > 9 {
        put_bool(out, t.aborted);
    }
    if count > 10 {
        put_bool(out, t.batchable);
    }
}

#[inline]
fn put_uint(out: &mut BytesMut, v: u32) {
    match v {
        0 => out.put_u8(code::UINT0),
        1..=255 => out.put_slice(&[code::SMALLUINT, v as u8]),
        _ => {
            out.put_u8(code::UINT);
            out.put_u32(v);
        }
    }
}

#[inline]
fn put_opt_uint(out: &mut BytesMut, v: Option<u32>) {
    match v {
        Some(v) => put_uint(out, v),
        None => out.put_u8(code::NULL),
    }
}

#[inline]
fn put_bool(out: &mut BytesMut, v: bool) {
    out.put_u8(if v { code::TRUE } else { code::FALSE });
}

#[inline]
fn put_opt_bool(out: &mut BytesMut, v: Option<bool>) {
    match v {
        Some(v) => put_bool(out, v),
        None => out.put_u8(code::NULL),
    }
}

#[inline]
fn put_binary(out: &mut BytesMut, b: &[u8]) {
    if b.len() <= 255 {
        out.put_slice(&[code::VBIN8, b.len() as u8]);
    } else {
        out.put_u8(code::VBIN32);
        // Bounded by the u32 frame length checked by the caller.
        out.put_u32(b.len() as u32);
    }
    out.put_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{decode_one, expected_header, frame_bytes};
    use crate::types::definitions::{Handle, ReceiverSettleMode};
    use crate::types::messaging::{Accepted, DeliveryState, Modified, Received};
    use crate::types::performatives::Transfer;
    use crate::FrameBody;
    use serde_bytes::ByteBuf;

    fn decode_transfer_frame(bytes: &[u8]) -> Result<(TransferHeader, Bytes), DecodeError> {
        match decode_one(bytes)?.body {
            FrameBody::Transfer { transfer, payload } => Ok((transfer, payload)),
            other => panic!("expected a transfer, got {other:?}"),
        }
    }

    fn base_transfer() -> Transfer {
        Transfer {
            handle: Handle(0),
            delivery_id: None,
            delivery_tag: None,
            message_format: None,
            settled: None,
            more: false,
            rcv_settle_mode: None,
            state: None,
            resume: false,
            aborted: false,
            batchable: false,
        }
    }

    /// Encodes `t` with serde_amqp, decodes with the fast path, compares.
    fn check_against_serde(t: &Transfer, payload: &[u8]) {
        let mut body = serde_amqp::to_vec(t).expect("serde encodes");
        body.extend_from_slice(payload);
        let (h, p) = decode_transfer_frame(&frame_bytes(3, &body)).expect("decodes");
        assert_eq!(h, expected_header(t), "serde bytes: {body:02x?}");
        assert_eq!(&p[..], payload);
    }

    #[test]
    fn decodes_serde_encoded_transfers() {
        check_against_serde(&base_transfer(), b"");
        check_against_serde(
            &Transfer {
                handle: Handle(7),
                delivery_id: Some(0),
                delivery_tag: Some(ByteBuf::from(vec![0, 0, 0, 1])),
                message_format: Some(0),
                settled: Some(true),
                ..base_transfer()
            },
            b"hello",
        );
        check_against_serde(
            &Transfer {
                handle: Handle(u32::MAX),
                delivery_id: Some(200),
                delivery_tag: Some(ByteBuf::from(vec![9; 32])),
                message_format: Some(0x8001_3700),
                settled: Some(false),
                more: true,
                rcv_settle_mode: Some(ReceiverSettleMode::Second),
                state: Some(DeliveryState::Received(Received {
                    section_number: 3,
                    section_offset: 1 << 40,
                })),
                resume: true,
                aborted: true,
                batchable: true,
            },
            &[0xaa; 1000],
        );
        check_against_serde(
            &Transfer {
                handle: Handle(300),
                rcv_settle_mode: Some(ReceiverSettleMode::First),
                state: Some(DeliveryState::Accepted(Accepted {})),
                batchable: true,
                ..base_transfer()
            },
            b"x",
        );
        check_against_serde(
            &Transfer {
                handle: Handle(1),
                state: Some(DeliveryState::Modified(Modified {
                    delivery_failed: Some(true),
                    undeliverable_here: None,
                    message_annotations: None,
                })),
                ..base_transfer()
            },
            b"",
        );
    }

    #[test]
    fn state_bytes_decode_back_with_serde() {
        let state = DeliveryState::Received(Received {
            section_number: 1,
            section_offset: 2,
        });
        let t = Transfer {
            handle: Handle(1),
            state: Some(state.clone()),
            ..base_transfer()
        };
        let body = serde_amqp::to_vec(&t).expect("serde encodes");
        let (h, _) = decode_transfer_frame(&frame_bytes(0, &body)).expect("decodes");
        let raw = h.state.expect("state present");
        let back: DeliveryState = serde_amqp::from_slice(&raw).expect("state decodes");
        assert_eq!(back, state);
    }

    #[test]
    fn payload_and_tag_are_zero_copy() {
        let mut out = BytesMut::new();
        let t = TransferHeader {
            handle: 1,
            delivery_tag: Some(Bytes::from_static(b"tag")),
            ..Default::default()
        };
        encode_transfer(&mut out, 0, &t, b"payload bytes");
        let range = out.as_ptr() as usize..out.as_ptr() as usize + out.len();
        let frame = crate::FrameDecoder::new(u32::MAX)
            .decode(&mut out)
            .expect("decodes")
            .expect("whole frame");
        let FrameBody::Transfer { transfer, payload } = frame.body else {
            panic!("not a transfer");
        };
        assert!(range.contains(&(payload.as_ptr() as usize)));
        let tag = transfer.delivery_tag.expect("tag");
        assert!(range.contains(&(tag.as_ptr() as usize)));
        assert_eq!(&payload[..], b"payload bytes");
    }

    /// Hand-written bodies exercising every accepted primitive encoding.
    #[test]
    fn accepts_all_encodings() {
        // Descriptor as ulong, list32, uint as 0x70, bool as 0x56, vbin32 tag.
        let mut body = vec![0x00, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x14, 0xd0];
        let fields: Vec<u8> = [
            &[0x70, 0, 0, 0, 5][..],         // handle
            &[0x52, 9],                      // delivery-id smalluint
            &[0xb0, 0, 0, 0, 2, 0xab, 0xcd], // tag vbin32
            &[0x43],                         // message-format uint0
            &[0x56, 0x01],                   // settled
            &[0x56, 0x00],                   // more
            &[0x50, 0x01],                   // rcv-settle-mode
            &[0x40],                         // state
            &[0x40],                         // resume null -> false
            &[0x41],                         // aborted
            &[0x42],                         // batchable
        ]
        .concat();
        body.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
        body.extend_from_slice(&11u32.to_be_bytes());
        body.extend_from_slice(&fields);
        body.extend_from_slice(b"PAY");
        let (h, p) = decode_transfer_frame(&frame_bytes(0, &body)).expect("decodes");
        assert_eq!(
            h,
            TransferHeader {
                handle: 5,
                delivery_id: Some(9),
                delivery_tag: Some(Bytes::from_static(&[0xab, 0xcd])),
                message_format: Some(0),
                settled: Some(true),
                more: false,
                rcv_settle_mode: Some(1),
                state: None,
                resume: false,
                aborted: true,
                batchable: false,
            }
        );
        assert_eq!(&p[..], b"PAY");
    }

    #[test]
    fn accepts_symbolic_descriptors() {
        let list = [0xc0, 0x02, 0x01, 0x43];
        let mut sym8 = vec![0x00, 0xa3, 18];
        sym8.extend_from_slice(b"amqp:transfer:list");
        sym8.extend_from_slice(&list);
        let mut sym32 = vec![0x00, 0xb3, 0, 0, 0, 18];
        sym32.extend_from_slice(b"amqp:transfer:list");
        sym32.extend_from_slice(&list);
        for body in [sym8, sym32] {
            let (h, p) = decode_transfer_frame(&frame_bytes(0, &body)).expect("decodes");
            assert_eq!(h, TransferHeader::default());
            assert!(p.is_empty());
        }
    }

    #[test]
    fn skips_unknown_trailing_fields() {
        // 13 fields: the standard 11 (mostly null) plus a string and a list.
        let mut fields = vec![0x52, 4];
        fields.extend_from_slice(&[0x40; 10]);
        fields.extend_from_slice(&[0xa1, 2, b'h', b'i', 0xc0, 0x03, 0x01, 0x52, 0x07]);
        let mut body = vec![0x00, 0x53, 0x14, 0xc0, fields.len() as u8 + 1, 13];
        body.extend_from_slice(&fields);
        let (h, _) = decode_transfer_frame(&frame_bytes(0, &body)).expect("decodes");
        assert_eq!(h.handle, 4);
    }

    fn malformed(body: &[u8]) -> DecodeError {
        decode_transfer_frame(&frame_bytes(0, body)).expect_err("must be rejected")
    }

    #[test]
    fn rejects_malformed_transfers() {
        let cases: &[(&[u8], &str)] = &[
            (&[0x00, 0x53, 0x14, 0x45], "transfer without a handle"),
            (
                &[0x00, 0x53, 0x14, 0xc0, 0x02, 0x01, 0x40],
                "transfer without a handle",
            ),
            (
                &[0x00, 0x53, 0x14, 0xa1, 0x00],
                "performative is not a list",
            ),
            (
                &[0x00, 0x53, 0x14],
                "value runs past the end of its container",
            ),
            // list8 claims more bytes than the frame holds
            (
                &[0x00, 0x53, 0x14, 0xc0, 0x10, 0x01, 0x43],
                "value runs past the end of its container",
            ),
            // list size larger than its fields (fields end early)
            (
                &[0x00, 0x53, 0x14, 0xc0, 0x03, 0x01, 0x43, 0x40],
                "transfer list size does not match its fields",
            ),
            // count says 2 fields but size only covers one
            (
                &[0x00, 0x53, 0x14, 0xc0, 0x02, 0x02, 0x43, 0x43],
                "value runs past the end of its container",
            ),
            (
                &[0x00, 0x53, 0x14, 0xc0, 0x02, 0x01, 0xa1],
                "handle is not a uint",
            ),
            (
                &[0x00, 0x53, 0x14, 0xc0, 0x03, 0x02, 0x43, 0x41],
                "delivery-id is not a uint",
            ),
            (
                &[0x00, 0x53, 0x14, 0xc0, 0x04, 0x03, 0x43, 0x40, 0xa0],
                "value runs past the end of its container",
            ),
            (
                &[0x00, 0x53, 0x14, 0xc0, 0x05, 0x03, 0x43, 0x40, 0xa1, 0x00],
                "delivery-tag is not binary",
            ),
            (
                &[
                    0x00, 0x53, 0x14, 0xc0, 0x06, 0x05, 0x43, 0x40, 0x40, 0x40, 0x43,
                ],
                "settled is not a boolean",
            ),
            (
                &[
                    0x00, 0x53, 0x14, 0xc0, 0x07, 0x05, 0x43, 0x40, 0x40, 0x40, 0x56, 0x02,
                ],
                "settled is not a boolean",
            ),
            (
                &[
                    0x00, 0x53, 0x14, 0xc0, 0x09, 0x07, 0x43, 0x40, 0x40, 0x40, 0x40, 0x40, 0x50,
                    0x02,
                ],
                "rcv-settle-mode out of range",
            ),
            (
                &[
                    0x00, 0x53, 0x14, 0xc0, 0x09, 0x07, 0x43, 0x40, 0x40, 0x40, 0x40, 0x40, 0x52,
                    0x01,
                ],
                "rcv-settle-mode is not a ubyte",
            ),
            (
                &[
                    0x00, 0x53, 0x14, 0xc0, 0x0a, 0x08, 0x43, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40,
                    0x52, 0x01,
                ],
                "state is not a described delivery-state",
            ),
            // state: a described value whose list runs out
            (
                &[
                    0x00, 0x53, 0x14, 0xc0, 0x0c, 0x08, 0x43, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40,
                    0x00, 0x53, 0x24, 0xc0,
                ],
                "value runs past the end of its container",
            ),
        ];
        for (body, reason) in cases {
            assert_eq!(
                malformed(body),
                DecodeError::MalformedTransfer(reason),
                "body {body:02x?}"
            );
        }
        assert_eq!(
            malformed(&[0x00, 0x53, 0x14, 0x45]).condition(),
            "amqp:decode-error"
        );
    }

    #[test]
    fn huge_list_count_is_cheap() {
        // list32 claiming 4 billion fields in a few bytes must fail fast.
        let body = [
            0x00, 0x53, 0x14, 0xd0, 0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0x43,
        ];
        assert_eq!(
            malformed(&body),
            DecodeError::MalformedTransfer("value runs past the end of its container")
        );
    }

    #[test]
    fn encoding_is_compact() {
        let mut out = BytesMut::new();
        encode_transfer(&mut out, 1, &TransferHeader::default(), b"");
        // header + descriptor + list8(1 field: uint0)
        assert_eq!(
            &out[..],
            &[0, 0, 0, 15, 2, 0, 0, 1, 0x00, 0x53, 0x14, 0xc0, 2, 1, 0x43]
        );
        assert_eq!(transfer_frame_overhead(&TransferHeader::default()), 15);
    }

    #[test]
    fn overhead_matches_encoding() {
        let t = TransferHeader {
            handle: 70000,
            delivery_id: Some(5),
            delivery_tag: Some(Bytes::from(vec![1; 300])),
            message_format: Some(0),
            settled: Some(false),
            more: true,
            rcv_settle_mode: Some(0),
            state: Some(Bytes::from_static(&[0x00, 0x53, 0x24, 0x45])),
            resume: false,
            aborted: false,
            batchable: true,
        };
        let mut out = BytesMut::new();
        encode_transfer(&mut out, 0, &t, b"abc");
        assert_eq!(out.len(), transfer_frame_overhead(&t) + 3);
        // The 300-byte tag forces vbin32 and list32.
        let (h, p) = decode_transfer_frame(&out).expect("decodes");
        assert_eq!(h, t);
        assert_eq!(&p[..], b"abc");
        // serde_amqp agrees with our encoding.
        let size = out.len() - 3;
        let serde: Transfer = serde_amqp::from_slice(&out[8..size]).expect("serde decodes");
        assert_eq!(expected_header(&serde), t);
    }

    #[test]
    fn encode_transfer_header_then_payload_equals_encode_transfer() {
        let t = TransferHeader {
            handle: 2,
            delivery_id: Some(1),
            ..Default::default()
        };
        let mut a = BytesMut::new();
        encode_transfer(&mut a, 9, &t, b"0123456789");
        let mut b = BytesMut::new();
        encode_transfer_header(&mut b, 9, &t, 10);
        b.extend_from_slice(b"01234");
        b.extend_from_slice(b"56789");
        assert_eq!(a, b);
    }
}
