//! Routing messages exchanged between neighbouring routers.
//!
//! Encoded compactly by hand (they ride inside an AMQP Data section on the
//! inter-router control link): a one-byte kind, then fields with u16/u32
//! big-endian lengths. Decoding is total: any input gives a message or a
//! [`DecodeError`], never a panic.
//!
//! Kinds 2-7 are the link-state protocol of [`crate::linkstate`] (HELLO, RA,
//! LSU, LSR, MAU, MAR); their field layout is documented there and on each
//! struct below. Kind 1 (a direct-neighbour address snapshot, replaced by
//! MAU) is retired: it decodes as [`DecodeError::UnknownKind`] like any
//! other unknown kind.

use std::fmt;

/// Message kinds on the wire (1 is retired, see the module documentation).
const KIND_HELLO: u8 = 2;
const KIND_RA: u8 = 3;
const KIND_LSU: u8 = 4;
const KIND_LSR: u8 = 5;
const KIND_MAU: u8 = 6;
const KIND_MAR: u8 = 7;

/// RA flag: the advertisement carries the sender's database summary.
const RA_FLAG_SUMMARY: u8 = 1;
/// MAU modes.
const MAU_INCREMENTAL: u8 = 0;
const MAU_FULL: u8 = 1;

/// Longest address accepted on the wire.
pub const MAX_ADDRESS_LEN: usize = 1024;
/// Most addresses one update may carry.
pub const MAX_ADDRESSES: usize = 1_000_000;
/// Most router ids (neighbours, summary entries, requested ids) one
/// link-state message may carry.
pub const MAX_ROUTERS: usize = 1_000_000;

/// A message from one router to its neighbours.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouterMessage {
    /// Link-state neighbour discovery (kind 2).
    Hello(Hello),
    /// Router advertisement (kind 3).
    RouterAdvertisement(RouterAdvertisement),
    /// Link-state update (kind 4).
    LinkStateUpdate(LinkStateUpdate),
    /// Link-state request (kind 5).
    LinkStateRequest(LinkStateRequest),
    /// Mobile-address update (kind 6).
    MobileAddressUpdate(MobileAddressUpdate),
    /// Mobile-address request (kind 7).
    MobileAddressRequest(MobileAddressRequest),
}

/// HELLO: sent on one link every HELLO interval (and at once when a new
/// router is heard on it). `seen` lists the router ids heard on this link
/// within the dead interval; a receiver finding its own id there knows the
/// link works both ways.
///
/// Wire: `str router_id, u64 instance, u32 cost, u32 n, n × str seen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub router_id: String,
    /// Changes each time the router starts; a new value means a restart.
    pub instance: u64,
    /// The sender's cost setting for this link (the link's cost is the larger
    /// of the two ends' settings).
    pub cost: u32,
    pub seen: Vec<String>,
}

/// Router advertisement: the sender's own sequence numbers and a digest of
/// its link-state database, sent to each neighbour every RA interval;
/// with `summary` the full database summary, sent when an adjacency comes
/// up and when the digests stay different for a whole interval.
///
/// Wire: `str router_id, u64 instance, u64 ls_seq, u64 mobile_seq,
/// u64 digest, u8 flags (bit 0: summary present), [u32 n, n × entry]` where
/// an entry is `str router_id, u64 ls_instance, u64 ls_seq,
/// u64 mobile_instance, u64 mobile_seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterAdvertisement {
    pub router_id: String,
    pub instance: u64,
    pub ls_seq: u64,
    pub mobile_seq: u64,
    pub digest: u64,
    pub summary: Option<Vec<SummaryEntry>>,
}

/// What the sender holds for one router: the versions of its link state and
/// mobile addresses (`seq` 0 = nothing held).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryEntry {
    pub router_id: String,
    pub ls_instance: u64,
    pub ls_seq: u64,
    pub mobile_instance: u64,
    pub mobile_seq: u64,
}

/// Link-state update: `origin`'s two-way neighbours and the cost of the
/// link to each, version `(instance, seq)`. Flooded hop by hop.
///
/// Wire: `str origin, u64 instance, u64 seq, u32 n, n × (str router_id,
/// u32 cost)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStateUpdate {
    pub origin: String,
    pub instance: u64,
    pub seq: u64,
    pub links: Vec<LsLink>,
}

/// One neighbour in a [`LinkStateUpdate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LsLink {
    pub router_id: String,
    pub cost: u32,
}

/// Link-state request: asks the neighbour for its LSU of each router in
/// `wanted`.
///
/// Wire: `str router_id, u32 n, n × str wanted`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStateRequest {
    pub router_id: String,
    pub wanted: Vec<String>,
}

/// Mobile-address update: which addresses `origin` has consumers for,
/// version `(instance, seq)`. Flooded hop by hop.
///
/// Wire: `str origin, u64 instance, u64 seq, u8 mode, ...` with mode 0
/// (incremental) `u32 n, n × str added, u32 m, m × str removed`, mode 1
/// (full) `u32 n, n × str addresses`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MobileAddressUpdate {
    pub origin: String,
    pub instance: u64,
    pub seq: u64,
    pub change: AddressChange,
}

/// The body of a [`MobileAddressUpdate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressChange {
    /// Applies only on top of version `seq - 1` (or to nothing when `seq`
    /// is 1); a receiver that is further behind asks for a full update.
    Incremental {
        added: Vec<String>,
        removed: Vec<String>,
    },
    /// The complete set: applies on top of anything older.
    Full(Vec<String>),
}

/// Mobile-address request: asks the neighbour for a full
/// [`MobileAddressUpdate`] of each router in `wanted`.
///
/// Wire: `str router_id, u32 n, n × str wanted`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MobileAddressRequest {
    pub router_id: String,
    pub wanted: Vec<String>,
}

/// Why a routing message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    Truncated,
    UnknownKind(u8),
    TooLong {
        what: &'static str,
        len: usize,
    },
    NotUtf8,
    TrailingBytes(usize),
    /// A mobile-address update with an unknown mode byte.
    UnknownMode(u8),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "routing message truncated"),
            DecodeError::UnknownKind(k) => write!(f, "unknown routing message kind {k}"),
            DecodeError::TooLong { what, len } => write!(f, "{what} too long ({len})"),
            DecodeError::NotUtf8 => write!(f, "string is not UTF-8"),
            DecodeError::TrailingBytes(n) => write!(f, "{n} trailing bytes after routing message"),
            DecodeError::UnknownMode(m) => write!(f, "unknown address update mode {m}"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl RouterMessage {
    /// Appends the encoded message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            RouterMessage::Hello(h) => {
                out.push(KIND_HELLO);
                put_str(out, &h.router_id);
                put_u64(out, h.instance);
                out.extend_from_slice(&h.cost.to_be_bytes());
                put_strs(out, &h.seen);
            }
            RouterMessage::RouterAdvertisement(ra) => {
                out.push(KIND_RA);
                put_str(out, &ra.router_id);
                put_u64(out, ra.instance);
                put_u64(out, ra.ls_seq);
                put_u64(out, ra.mobile_seq);
                put_u64(out, ra.digest);
                match &ra.summary {
                    None => out.push(0),
                    Some(entries) => {
                        out.push(RA_FLAG_SUMMARY);
                        put_len(out, entries.len());
                        for e in entries {
                            put_str(out, &e.router_id);
                            put_u64(out, e.ls_instance);
                            put_u64(out, e.ls_seq);
                            put_u64(out, e.mobile_instance);
                            put_u64(out, e.mobile_seq);
                        }
                    }
                }
            }
            RouterMessage::LinkStateUpdate(lsu) => {
                out.push(KIND_LSU);
                put_str(out, &lsu.origin);
                put_u64(out, lsu.instance);
                put_u64(out, lsu.seq);
                put_len(out, lsu.links.len());
                for l in &lsu.links {
                    put_str(out, &l.router_id);
                    out.extend_from_slice(&l.cost.to_be_bytes());
                }
            }
            RouterMessage::LinkStateRequest(lsr) => {
                out.push(KIND_LSR);
                put_str(out, &lsr.router_id);
                put_strs(out, &lsr.wanted);
            }
            RouterMessage::MobileAddressUpdate(mau) => {
                out.push(KIND_MAU);
                put_str(out, &mau.origin);
                put_u64(out, mau.instance);
                put_u64(out, mau.seq);
                match &mau.change {
                    AddressChange::Incremental { added, removed } => {
                        out.push(MAU_INCREMENTAL);
                        put_strs(out, added);
                        put_strs(out, removed);
                    }
                    AddressChange::Full(addresses) => {
                        out.push(MAU_FULL);
                        put_strs(out, addresses);
                    }
                }
            }
            RouterMessage::MobileAddressRequest(mar) => {
                out.push(KIND_MAR);
                put_str(out, &mar.router_id);
                put_strs(out, &mar.wanted);
            }
        }
    }

    /// Decodes exactly one message filling `input`.
    pub fn decode(input: &[u8]) -> Result<RouterMessage, DecodeError> {
        let mut r = Reader { buf: input };
        let kind = r.u8()?;
        let msg = match kind {
            KIND_HELLO => RouterMessage::Hello(Hello {
                router_id: r.str("router id")?,
                instance: r.u64()?,
                cost: r.u32()?,
                seen: r.strs("seen list", MAX_ROUTERS)?,
            }),
            KIND_RA => {
                let router_id = r.str("router id")?;
                let instance = r.u64()?;
                let ls_seq = r.u64()?;
                let mobile_seq = r.u64()?;
                let digest = r.u64()?;
                let flags = r.u8()?;
                let summary = if flags & RA_FLAG_SUMMARY != 0 {
                    // An entry takes at least 2 + 32 bytes.
                    let n = r.count("summary", MAX_ROUTERS, 34)?;
                    let mut entries = Vec::with_capacity(n.min(r.buf.len() / 34));
                    for _ in 0..n {
                        entries.push(SummaryEntry {
                            router_id: r.str("router id")?,
                            ls_instance: r.u64()?,
                            ls_seq: r.u64()?,
                            mobile_instance: r.u64()?,
                            mobile_seq: r.u64()?,
                        });
                    }
                    Some(entries)
                } else {
                    None
                };
                RouterMessage::RouterAdvertisement(RouterAdvertisement {
                    router_id,
                    instance,
                    ls_seq,
                    mobile_seq,
                    digest,
                    summary,
                })
            }
            KIND_LSU => {
                let origin = r.str("router id")?;
                let instance = r.u64()?;
                let seq = r.u64()?;
                let n = r.count("link list", MAX_ROUTERS, 6)?;
                let mut links = Vec::with_capacity(n.min(r.buf.len() / 6));
                for _ in 0..n {
                    links.push(LsLink {
                        router_id: r.str("router id")?,
                        cost: r.u32()?,
                    });
                }
                RouterMessage::LinkStateUpdate(LinkStateUpdate {
                    origin,
                    instance,
                    seq,
                    links,
                })
            }
            KIND_LSR => RouterMessage::LinkStateRequest(LinkStateRequest {
                router_id: r.str("router id")?,
                wanted: r.strs("request list", MAX_ROUTERS)?,
            }),
            KIND_MAU => {
                let origin = r.str("router id")?;
                let instance = r.u64()?;
                let seq = r.u64()?;
                let change = match r.u8()? {
                    MAU_INCREMENTAL => AddressChange::Incremental {
                        added: r.strs("address list", MAX_ADDRESSES)?,
                        removed: r.strs("address list", MAX_ADDRESSES)?,
                    },
                    MAU_FULL => AddressChange::Full(r.strs("address list", MAX_ADDRESSES)?),
                    other => return Err(DecodeError::UnknownMode(other)),
                };
                RouterMessage::MobileAddressUpdate(MobileAddressUpdate {
                    origin,
                    instance,
                    seq,
                    change,
                })
            }
            KIND_MAR => RouterMessage::MobileAddressRequest(MobileAddressRequest {
                router_id: r.str("router id")?,
                wanted: r.strs("request list", MAX_ROUTERS)?,
            }),
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

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n.min(u32::MAX as usize) as u32).to_be_bytes());
}

fn put_strs(out: &mut Vec<u8>, list: &[String]) {
    put_len(out, list.len());
    for s in list {
        put_str(out, s);
    }
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
    /// A u32 count of items each at least `min_size` bytes long: refused
    /// above `max`, or when the rest of the input cannot hold that many.
    fn count(
        &mut self,
        what: &'static str,
        max: usize,
        min_size: usize,
    ) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(DecodeError::TooLong { what, len: n });
        }
        if n.saturating_mul(min_size) > self.buf.len() {
            return Err(DecodeError::Truncated);
        }
        Ok(n)
    }
    fn strs(&mut self, what: &'static str, max: usize) -> Result<Vec<String>, DecodeError> {
        let n = self.count(what, max, 2)?;
        let mut list = Vec::with_capacity(n);
        for _ in 0..n {
            list.push(self.str(what)?);
        }
        Ok(list)
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

    fn link_state_samples() -> Vec<RouterMessage> {
        vec![
            RouterMessage::Hello(Hello {
                router_id: "east".into(),
                instance: 7,
                cost: 3,
                seen: vec!["west".into()],
            }),
            RouterMessage::RouterAdvertisement(RouterAdvertisement {
                router_id: "east".into(),
                instance: 7,
                ls_seq: 4,
                mobile_seq: 2,
                digest: 0xdead_beef,
                summary: None,
            }),
            RouterMessage::RouterAdvertisement(RouterAdvertisement {
                router_id: "east".into(),
                instance: 7,
                ls_seq: 4,
                mobile_seq: 2,
                digest: 1,
                summary: Some(vec![SummaryEntry {
                    router_id: "west".into(),
                    ls_instance: 1,
                    ls_seq: 9,
                    mobile_instance: 1,
                    mobile_seq: 0,
                }]),
            }),
            RouterMessage::LinkStateUpdate(LinkStateUpdate {
                origin: "east".into(),
                instance: 7,
                seq: 4,
                links: vec![
                    LsLink {
                        router_id: "west".into(),
                        cost: 1,
                    },
                    LsLink {
                        router_id: "north".into(),
                        cost: 10,
                    },
                ],
            }),
            RouterMessage::LinkStateRequest(LinkStateRequest {
                router_id: "west".into(),
                wanted: vec!["east".into(), "north".into()],
            }),
            RouterMessage::MobileAddressUpdate(MobileAddressUpdate {
                origin: "east".into(),
                instance: 7,
                seq: 3,
                change: AddressChange::Incremental {
                    added: vec!["db".into()],
                    removed: vec!["cache".into(), "old".into()],
                },
            }),
            RouterMessage::MobileAddressUpdate(MobileAddressUpdate {
                origin: "east".into(),
                instance: 7,
                seq: 3,
                change: AddressChange::Full(vec![]),
            }),
            RouterMessage::MobileAddressRequest(MobileAddressRequest {
                router_id: "west".into(),
                wanted: vec!["east".into()],
            }),
        ]
    }

    #[test]
    fn link_state_messages_round_trip_and_truncations_fail() {
        for m in link_state_samples() {
            let mut buf = Vec::new();
            m.encode(&mut buf);
            assert_eq!(RouterMessage::decode(&buf), Ok(m.clone()));
            for cut in 0..buf.len() {
                assert!(
                    RouterMessage::decode(&buf[..cut]).is_err(),
                    "{m:?} cut at {cut}"
                );
            }
            buf.push(0);
            assert_eq!(
                RouterMessage::decode(&buf),
                Err(DecodeError::TrailingBytes(1))
            );
        }
    }

    /// A cheap fuzz: random bytes and random corruptions of valid messages
    /// decode to a message or an error, never a panic, and whatever decodes
    /// survives a re-encode.
    #[test]
    fn corrupted_input_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let samples: Vec<Vec<u8>> = link_state_samples()
            .iter()
            .map(|m| {
                let mut b = Vec::new();
                m.encode(&mut b);
                b
            })
            .collect();
        for i in 0..50_000 {
            let mut buf = if i % 2 == 0 {
                let len = rng.random_range(0..64);
                let mut b = vec![0u8; len];
                rng.fill(&mut b[..]);
                if let Some(first) = b.first_mut() {
                    *first = rng.random_range(1..=8);
                }
                b
            } else {
                samples[rng.random_range(0..samples.len())].clone()
            };
            for _ in 0..rng.random_range(0..4) {
                if buf.is_empty() {
                    break;
                }
                let at = rng.random_range(0..buf.len());
                buf[at] = rng.random();
            }
            if let Ok(m) = RouterMessage::decode(&buf) {
                let mut again = Vec::new();
                m.encode(&mut again);
                assert_eq!(RouterMessage::decode(&again), Ok(m));
            }
        }
    }

    #[test]
    fn counts_larger_than_the_input_are_refused_early() {
        // An RA claiming MAX_ROUTERS summary entries in a few bytes must
        // fail without allocating for them.
        let mut buf = vec![KIND_RA];
        put_str(&mut buf, "x");
        for _ in 0..4 {
            put_u64(&mut buf, 1);
        }
        buf.push(RA_FLAG_SUMMARY);
        put_len(&mut buf, MAX_ROUTERS);
        assert_eq!(RouterMessage::decode(&buf), Err(DecodeError::Truncated));
        let mut buf = vec![KIND_MAU];
        put_str(&mut buf, "x");
        put_u64(&mut buf, 1);
        put_u64(&mut buf, 1);
        buf.push(9);
        assert_eq!(
            RouterMessage::decode(&buf),
            Err(DecodeError::UnknownMode(9))
        );
    }

    /// Kind 1, the retired direct-neighbour address snapshot (`str
    /// router_id, u64 seq, u32 n, n × str address`), is an unknown kind
    /// like any other, whatever follows it.
    #[test]
    fn retired_kind_1_is_an_unknown_kind() {
        let mut buf = vec![1];
        put_str(&mut buf, "east");
        put_u64(&mut buf, 42);
        put_strs(&mut buf, &["backend".to_string(), "db".to_string()]);
        for cut in 1..=buf.len() {
            assert_eq!(
                RouterMessage::decode(&buf[..cut]),
                Err(DecodeError::UnknownKind(1)),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn unknown_kind_and_huge_counts_are_refused() {
        for kind in [0, 9, 255] {
            assert_eq!(
                RouterMessage::decode(&[kind]),
                Err(DecodeError::UnknownKind(kind))
            );
        }
        let mut buf = vec![KIND_LSR];
        put_str(&mut buf, "x");
        buf.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            RouterMessage::decode(&buf),
            Err(DecodeError::TooLong { .. })
        ));
    }
}
