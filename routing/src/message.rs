//! Routing messages exchanged between neighbouring routers.
//!
//! Encoded compactly by hand (they ride inside an AMQP Data section on the
//! inter-router control link): a one-byte kind, then fields with u16/u32
//! big-endian lengths. Decoding is total: any input gives a message or a
//! [`DecodeError`], never a panic.

use std::fmt;

/// Message kinds on the wire.
const KIND_ADDRESS_UPDATE: u8 = 1;

/// Longest address accepted on the wire.
pub const MAX_ADDRESS_LEN: usize = 1024;
/// Most addresses one update may carry.
pub const MAX_ADDRESSES: usize = 1_000_000;

/// A message from one router to its neighbours.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouterMessage {
    /// The complete set of addresses `router_id` offers locally, replacing
    /// any earlier update with a lower `seq`.
    AddressUpdate {
        router_id: String,
        seq: u64,
        addresses: Vec<String>,
    },
}

/// Why a routing message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    Truncated,
    UnknownKind(u8),
    TooLong { what: &'static str, len: usize },
    NotUtf8,
    TrailingBytes(usize),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "routing message truncated"),
            DecodeError::UnknownKind(k) => write!(f, "unknown routing message kind {k}"),
            DecodeError::TooLong { what, len } => write!(f, "{what} too long ({len})"),
            DecodeError::NotUtf8 => write!(f, "string is not UTF-8"),
            DecodeError::TrailingBytes(n) => write!(f, "{n} trailing bytes after routing message"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl RouterMessage {
    /// Appends the encoded message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            RouterMessage::AddressUpdate {
                router_id,
                seq,
                addresses,
            } => {
                out.push(KIND_ADDRESS_UPDATE);
                put_str(out, router_id);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&(addresses.len() as u32).to_be_bytes());
                for a in addresses {
                    put_str(out, a);
                }
            }
        }
    }

    /// Decodes exactly one message filling `input`.
    pub fn decode(input: &[u8]) -> Result<RouterMessage, DecodeError> {
        let mut r = Reader { buf: input };
        let kind = r.u8()?;
        let msg = match kind {
            KIND_ADDRESS_UPDATE => {
                let router_id = r.str("router id")?;
                let seq = r.u64()?;
                let n = r.u32()? as usize;
                if n > MAX_ADDRESSES {
                    return Err(DecodeError::TooLong {
                        what: "address list",
                        len: n,
                    });
                }
                // Each address takes at least 2 bytes, so a short input
                // cannot make us reserve much.
                let mut addresses = Vec::with_capacity(n.min(r.buf.len() / 2));
                for _ in 0..n {
                    addresses.push(r.str("address")?);
                }
                RouterMessage::AddressUpdate {
                    router_id,
                    seq,
                    addresses,
                }
            }
            other => return Err(DecodeError::UnknownKind(other)),
        };
        if !r.buf.is_empty() {
            return Err(DecodeError::TrailingBytes(r.buf.len()));
        }
        Ok(msg)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn str(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let b = self.take(2)?;
        let len = u16::from_be_bytes([b[0], b[1]]) as usize;
        if len > MAX_ADDRESS_LEN {
            return Err(DecodeError::TooLong { what, len });
        }
        let s = self.take(len)?;
        String::from_utf8(s.to_vec()).map_err(|_| DecodeError::NotUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_update_round_trips() {
        let m = RouterMessage::AddressUpdate {
            router_id: "east".into(),
            seq: 42,
            addresses: vec!["backend".into(), "db".into()],
        };
        let mut buf = Vec::new();
        m.encode(&mut buf);
        assert_eq!(RouterMessage::decode(&buf), Ok(m));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let m = RouterMessage::AddressUpdate {
            router_id: "east".into(),
            seq: 1,
            addresses: vec!["a".into(), "bb".into()],
        };
        let mut buf = Vec::new();
        m.encode(&mut buf);
        for cut in 0..buf.len() {
            assert!(RouterMessage::decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
        buf.push(0);
        assert_eq!(
            RouterMessage::decode(&buf),
            Err(DecodeError::TrailingBytes(1))
        );
    }

    #[test]
    fn unknown_kind_and_huge_counts_are_refused() {
        assert_eq!(
            RouterMessage::decode(&[9]),
            Err(DecodeError::UnknownKind(9))
        );
        let mut buf = vec![KIND_ADDRESS_UPDATE, 0, 1, b'x'];
        buf.extend_from_slice(&1u64.to_be_bytes());
        buf.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            RouterMessage::decode(&buf),
            Err(DecodeError::TooLong { .. })
        ));
    }
}
