//! AMQP 1.0 encoding of management answers, written straight to bytes.
//!
//! A QUERY answer is a list of rows of attribute values. Building it as a
//! tree of `serde_amqp::Value`s and serializing that cost the router about
//! 0.5 ms for a 100-row page of addresses (allocation, drop and the
//! serializer's per-compound buffers were most of it), on the thread that
//! forwards traffic. Here each attribute is encoded once, when the
//! entity's [`Record`] is built, and an answer is assembled by copying
//! those bytes: no intermediate values. The encodings are the spec's
//! (AMQP 1.0 part 1, 1.6), checked against `serde_amqp`'s decoder in the
//! tests.

use serde_amqp::Value;
use tether_protocol::types::messaging::MessageId;

/// The encoding of `null`.
pub const NULL: u8 = 0x40;

/// Appends `null`.
pub fn null(out: &mut Vec<u8>) {
    out.push(NULL);
}

/// Appends a boolean (one byte: `true` 0x41, `false` 0x42).
pub fn boolean(out: &mut Vec<u8>, b: bool) {
    out.push(if b { 0x41 } else { 0x42 });
}

/// Appends a `long` (smalllong when it fits a byte).
pub fn long(out: &mut Vec<u8>, n: i64) {
    match i8::try_from(n) {
        Ok(small) => out.extend_from_slice(&[0x55, small as u8]),
        Err(_) => {
            out.push(0x81);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

/// Appends an `int` (smallint when it fits a byte).
pub fn int(out: &mut Vec<u8>, n: i32) {
    match i8::try_from(n) {
        Ok(small) => out.extend_from_slice(&[0x54, small as u8]),
        Err(_) => {
            out.push(0x71);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

/// Appends a `ulong` (ulong0 / smallulong / ulong).
pub fn ulong(out: &mut Vec<u8>, n: u64) {
    match n {
        0 => out.push(0x44),
        1..=255 => out.extend_from_slice(&[0x53, n as u8]),
        _ => {
            out.push(0x80);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

/// Appends a variable-width value: the one-byte-size code when it fits,
/// else the four-byte-size one.
fn variable(out: &mut Vec<u8>, code8: u8, code32: u8, bytes: &[u8]) {
    match u8::try_from(bytes.len()) {
        Ok(len) => out.extend_from_slice(&[code8, len]),
        Err(_) => {
            out.push(code32);
            // Management values are far below 4 GiB; saturate rather
            // than wrap if one ever were not.
            out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
        }
    }
    out.extend_from_slice(bytes);
}

/// Appends a `string` (UTF-8).
pub fn string(out: &mut Vec<u8>, s: &str) {
    variable(out, 0xa1, 0xb1, s.as_bytes());
}

/// Appends a list of strings.
pub fn string_list<'a>(out: &mut Vec<u8>, items: impl Iterator<Item = &'a str>) {
    let list = Compound::list(out);
    let mut n = 0;
    for s in items {
        string(out, s);
        n += 1;
    }
    list.end(out, n);
}

/// Appends a `symbol`.
pub fn symbol(out: &mut Vec<u8>, s: &str) {
    variable(out, 0xa3, 0xb3, s.as_bytes());
}

/// Appends a `binary`.
pub fn binary(out: &mut Vec<u8>, b: &[u8]) {
    variable(out, 0xa0, 0xb0, b);
}

/// A list or map being appended: its elements follow [`Compound::list`]
/// or [`Compound::map`], then [`Compound::end`] writes its size and
/// count. Always the four-byte form, so nothing moves afterwards.
#[must_use = "a compound's size and count are written by `end`"]
pub struct Compound {
    at: usize,
}

impl Compound {
    /// Starts a `list32`.
    pub fn list(out: &mut Vec<u8>) -> Compound {
        Compound::start(out, 0xd0)
    }

    /// Starts a `map32`; its count is of keys and values both.
    pub fn map(out: &mut Vec<u8>) -> Compound {
        Compound::start(out, 0xd1)
    }

    fn start(out: &mut Vec<u8>, code: u8) -> Compound {
        let at = out.len();
        out.extend_from_slice(&[code, 0, 0, 0, 0, 0, 0, 0, 0]);
        Compound { at }
    }

    /// Closes the compound: `count` elements were appended since it began.
    pub fn end(self, out: &mut [u8], count: usize) {
        // The size counts the bytes after the size field: count + elements.
        let size = u32::try_from(out.len() - self.at - 5).unwrap_or(u32::MAX);
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        out[self.at + 1..self.at + 5].copy_from_slice(&size.to_be_bytes());
        out[self.at + 5..self.at + 9].copy_from_slice(&count.to_be_bytes());
    }
}

/// Appends any value. The kinds management answers carry are written
/// here; the rest (floats, decimals, arrays, described values, ...) go
/// through `serde_amqp`, which encodes them correctly, only slower.
pub fn value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => null(out),
        Value::Bool(b) => boolean(out, *b),
        Value::Ubyte(n) => out.extend_from_slice(&[0x50, *n]),
        Value::Ushort(n) => {
            out.push(0x60);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Value::Uint(n) => match *n {
            0 => out.push(0x43),
            1..=255 => out.extend_from_slice(&[0x52, *n as u8]),
            _ => {
                out.push(0x70);
                out.extend_from_slice(&n.to_be_bytes());
            }
        },
        Value::Ulong(n) => ulong(out, *n),
        Value::Byte(n) => out.extend_from_slice(&[0x51, *n as u8]),
        Value::Short(n) => {
            out.push(0x61);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Value::Int(n) => int(out, *n),
        Value::Long(n) => long(out, *n),
        Value::Timestamp(t) => {
            out.push(0x83);
            out.extend_from_slice(&t.milliseconds().to_be_bytes());
        }
        Value::Uuid(u) => {
            out.push(0x98);
            out.extend_from_slice(u.as_inner());
        }
        Value::Binary(b) => binary(out, b),
        Value::String(s) => string(out, s),
        Value::Symbol(s) => symbol(out, &s.0),
        Value::List(items) => {
            let list = Compound::list(out);
            for item in items {
                value(out, item);
            }
            list.end(out, items.len());
        }
        Value::Map(m) => {
            let map = Compound::map(out);
            for (k, item) in m.iter() {
                value(out, k);
                value(out, item);
            }
            map.end(out, m.len() * 2);
        }
        other => match serde_amqp::to_vec(other) {
            Ok(bytes) => out.extend_from_slice(&bytes),
            // Encoding a plain value cannot fail; if it ever did, null
            // keeps the answer well-formed.
            Err(_) => null(out),
        },
    }
}

/// Appends a message-id (the answer's `correlation_id`).
pub fn message_id(out: &mut Vec<u8>, id: &MessageId) {
    match id {
        MessageId::Ulong(n) => ulong(out, *n),
        MessageId::Uuid(u) => {
            out.push(0x98);
            out.extend_from_slice(u.as_inner());
        }
        MessageId::Binary(b) => binary(out, b),
        MessageId::String(s) => string(out, s),
    }
}

/// Appends a section header: the described-type constructor with the
/// section's smallulong descriptor (3.2: 0x73 properties, 0x74
/// application-properties, 0x77 amqp-value).
pub fn section(out: &mut Vec<u8>, descriptor: u8) {
    out.extend_from_slice(&[0x00, 0x53, descriptor]);
}

/// One entity's attribute values, each already encoded, in its type's
/// attribute order. Unset attributes are `null`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    bytes: Vec<u8>,
    /// Where each attribute's encoding is in `bytes`; empty = null.
    spans: Vec<(u32, u32)>,
}

impl Record {
    /// A record of `attributes` nulls, with room for about `bytes` bytes
    /// of values.
    pub fn new(attributes: usize, bytes: usize) -> Record {
        Record {
            bytes: Vec::with_capacity(bytes),
            spans: vec![(0, 0); attributes],
        }
    }

    /// A record holding `values`, in order.
    pub fn from_values(values: &[Value]) -> Record {
        let mut r = Record::new(values.len(), values.len() * 8);
        for (i, v) in values.iter().enumerate() {
            r.set_value(i, v);
        }
        r
    }

    /// How many attributes the record has.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// The bytes of its values' encodings, together.
    pub fn encoded_len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the record has no attributes.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Sets attribute `i` to what `encode` appends (one value). An index
    /// past the end is ignored.
    pub fn set_with(&mut self, i: usize, encode: impl FnOnce(&mut Vec<u8>)) {
        let Some(span) = self.spans.get_mut(i) else {
            return;
        };
        let start = self.bytes.len();
        encode(&mut self.bytes);
        let end = self.bytes.len();
        // A record is far below 4 GiB.
        *span = (start as u32, end as u32);
    }

    /// Sets attribute `i` to `v`.
    pub fn set_value(&mut self, i: usize, v: &Value) {
        self.set_with(i, |out| value(out, v));
    }

    /// Attribute `i`, encoded (`null` when unset or past the end).
    pub fn encoded(&self, i: usize) -> &[u8] {
        match self.spans.get(i) {
            Some(&(start, end)) if end > start => &self.bytes[start as usize..end as usize],
            _ => &[NULL],
        }
    }

    /// Attribute `i` as a value (`Null` when unset).
    pub fn value(&self, i: usize) -> Value {
        serde_amqp::from_slice(self.encoded(i)).unwrap_or(Value::Null)
    }

    /// Attribute `i` when it is a string or symbol.
    pub fn string(&self, i: usize) -> Option<&str> {
        let b = self.encoded(i);
        let body = match b.first()? {
            0xa1 | 0xa3 => b.get(2..)?,
            0xb1 | 0xb3 => b.get(5..)?,
            _ => return None,
        };
        std::str::from_utf8(body).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_amqp::primitives::{Binary, OrderedMap, Symbol, Timestamp, Uuid};

    fn round_trip(v: &Value) -> Value {
        let mut out = Vec::new();
        value(&mut out, v);
        serde_amqp::from_slice(&out).expect("serde_amqp decodes our encoding")
    }

    #[test]
    fn every_kind_decodes_to_itself() {
        let long_string = "x".repeat(300);
        let mut map = OrderedMap::new();
        map.insert(Value::String("k".into()), Value::Long(-5));
        map.insert(Value::Symbol(Symbol::from("s")), Value::Null);
        let values = vec![
            Value::Null,
            Value::Bool(true),
            Value::Bool(false),
            Value::Ubyte(7),
            Value::Ushort(65_000),
            Value::Uint(0),
            Value::Uint(200),
            Value::Uint(70_000),
            Value::Ulong(0),
            Value::Ulong(9),
            Value::Ulong(u64::MAX),
            Value::Byte(-3),
            Value::Short(-300),
            Value::Int(-1),
            Value::Int(i32::MIN),
            Value::Long(0),
            Value::Long(127),
            Value::Long(-128),
            Value::Long(128),
            Value::Long(i64::MAX),
            Value::Timestamp(Timestamp::from_milliseconds(1_700_000_000_000)),
            Value::Uuid(Uuid::from([3u8; 16])),
            Value::Binary(Binary::from(vec![1, 2, 3])),
            Value::String(String::new()),
            Value::String("é and ✓".into()),
            Value::String(long_string.clone()),
            Value::Symbol(Symbol::from(long_string.as_str())),
            Value::Double(1.5.into()),
            Value::List(vec![]),
            Value::List(vec![Value::Long(1), Value::List(vec![Value::Null])]),
            Value::Map(map),
        ];
        for v in &values {
            assert_eq!(&round_trip(v), v);
        }
        assert_eq!(
            round_trip(&Value::List(values.clone())),
            Value::List(values)
        );
    }

    #[test]
    fn record_keeps_values_by_position_and_reads_strings_back() {
        let mut r = Record::new(4, 0);
        r.set_with(1, |o| string(o, "name"));
        r.set_value(3, &Value::Long(1 << 40));
        r.set_with(9, |o| string(o, "ignored"));
        assert_eq!(r.len(), 4);
        assert_eq!(r.encoded(0), &[NULL]);
        assert_eq!(r.string(1), Some("name"));
        assert_eq!(r.string(3), None);
        assert_eq!(r.value(3), Value::Long(1 << 40));
        assert_eq!(r.value(2), Value::Null);
        // Set twice: the last value counts.
        r.set_with(1, |o| string(o, &"n".repeat(400)));
        assert_eq!(r.string(1).map(str::len), Some(400));
        let vals = [Value::String("a".into()), Value::Null, Value::Bool(true)];
        let from = Record::from_values(&vals);
        assert_eq!((0..3).map(|i| from.value(i)).collect::<Vec<_>>(), vals);
    }

    #[test]
    fn message_ids_encode_as_their_kind() {
        for id in [
            MessageId::Ulong(0),
            MessageId::Ulong(300),
            MessageId::String("m-1".into()),
            MessageId::Uuid(Uuid::from([9u8; 16])),
            MessageId::Binary(Binary::from(vec![0xff; 4])),
        ] {
            let mut out = Vec::new();
            message_id(&mut out, &id);
            let back: MessageId = serde_amqp::from_slice(&out).expect("decodes");
            assert_eq!(back, id);
        }
    }

    proptest::proptest! {
        #[test]
        fn nested_values_decode_to_themselves(
            longs in proptest::collection::vec(proptest::prelude::any::<i64>(), 0..20),
            strings in proptest::collection::vec(".{0,300}", 0..10),
            flags in proptest::collection::vec(proptest::prelude::any::<bool>(), 0..10),
        ) {
            let mut map = OrderedMap::new();
            for (i, s) in strings.iter().enumerate() {
                map.insert(Value::String(format!("{i}")), Value::String(s.clone()));
            }
            let v = Value::List(vec![
                Value::List(longs.into_iter().map(Value::Long).collect()),
                Value::Map(map),
                Value::List(flags.into_iter().map(Value::Bool).collect()),
            ]);
            proptest::prop_assert_eq!(round_trip(&v), v);
        }
    }
}
