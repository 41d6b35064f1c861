//! Low-level AMQP 1.0 type-system helpers (spec part 1, "Types") used by the
//! hand-written fast paths: format codes, a bounds-checked reader and a
//! validating "skip one encoded value" routine.
//!
//! Only this crate calls into here. The frame decoder uses [`skip_value`] to
//! find where a performative ends and to reject hostile nesting before the
//! body is handed to serde_amqp; the transfer decoder uses it to capture the
//! raw `state` field. Every function works on untrusted bytes, so all access
//! goes through `get`/checked arithmetic and failures are reported as
//! `&'static str` reasons that callers wrap into their own error variant.

/// Format codes this crate reads or writes directly (spec part 1, section 1.6).
pub(crate) mod code {
    pub const DESCRIBED: u8 = 0x00;
    pub const NULL: u8 = 0x40;
    pub const TRUE: u8 = 0x41;
    pub const FALSE: u8 = 0x42;
    pub const UINT0: u8 = 0x43;
    pub const LIST0: u8 = 0x45;
    pub const UBYTE: u8 = 0x50;
    pub const SMALLUINT: u8 = 0x52;
    pub const SMALLULONG: u8 = 0x53;
    pub const BOOLEAN: u8 = 0x56;
    pub const UINT: u8 = 0x70;
    pub const ULONG: u8 = 0x80;
    pub const VBIN8: u8 = 0xa0;
    pub const SYM8: u8 = 0xa3;
    pub const VBIN32: u8 = 0xb0;
    pub const SYM32: u8 = 0xb3;
    pub const LIST8: u8 = 0xc0;
    pub const LIST32: u8 = 0xd0;
}

/// Deepest nesting of described/compound/array values we accept.
///
/// Legitimate performatives nest about eight levels (attach -> source ->
/// filter map -> described filter -> value). The bound exists because
/// serde_amqp decodes recursively: without it a single 64 KiB frame made of
/// nested list headers would overflow the stack, which aborts the process
/// and cannot be caught.
pub(crate) const MAX_NESTING_DEPTH: u32 = 32;

pub(crate) const ERR_TRUNCATED: &str = "value runs past the end of its container";
pub(crate) const ERR_BAD_CODE: &str = "invalid format code";
pub(crate) const ERR_TOO_DEEP: &str = "values nested too deeply";
pub(crate) const ERR_SIZE_MISMATCH: &str = "compound size does not match its contents";
pub(crate) const ERR_ODD_MAP: &str = "map with an odd number of elements";
pub(crate) const ERR_ARRAY_COUNT: &str = "array element count exceeds its size";

/// A cursor over an immutable byte slice that never reads out of bounds.
///
/// `end` lets a caller confine reads to a compound value's extent while
/// keeping offsets relative to the whole buffer, which is what the transfer
/// decoder needs to slice `Bytes` afterwards.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    pub(crate) fn new(buf: &'a [u8], pos: usize) -> Self {
        Reader { buf, pos }
    }

    /// The same bytes, cut off at `end` (clamped to the buffer).
    #[inline]
    pub(crate) fn limited(self, end: usize) -> Self {
        let end = end.min(self.buf.len());
        Reader {
            buf: self.buf.get(..end).unwrap_or(self.buf),
            pos: self.pos,
        }
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    #[inline(always)]
    pub(crate) fn u8(&mut self) -> Result<u8, &'static str> {
        let b = *self.buf.get(self.pos).ok_or(ERR_TRUNCATED)?;
        self.pos += 1;
        Ok(b)
    }

    #[inline(always)]
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let end = self.pos.checked_add(N).ok_or(ERR_TRUNCATED)?;
        let s = self.buf.get(self.pos..end).ok_or(ERR_TRUNCATED)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        self.pos = end;
        Ok(a)
    }

    #[inline(always)]
    pub(crate) fn u32(&mut self) -> Result<u32, &'static str> {
        self.array::<4>().map(u32::from_be_bytes)
    }

    /// Advances over `n` bytes, returning their start offset.
    #[inline(always)]
    pub(crate) fn skip(&mut self, n: usize) -> Result<usize, &'static str> {
        let start = self.pos;
        let end = start.checked_add(n).ok_or(ERR_TRUNCATED)?;
        if end > self.buf.len() {
            return Err(ERR_TRUNCATED);
        }
        self.pos = end;
        Ok(start)
    }
}

/// Width of the fixed-size data following a format code of subcategory
/// 0x4-0x9, or `None` for variable/compound/array codes.
#[inline]
fn fixed_width(code: u8) -> Option<usize> {
    match code >> 4 {
        0x4 => Some(0),
        0x5 => Some(1),
        0x6 => Some(2),
        0x7 => Some(4),
        0x8 => Some(8),
        0x9 => Some(16),
        _ => None,
    }
}

/// Skips one complete encoded value (constructor + data) starting at
/// `r.pos`, validating its structure, and leaves `r.pos` just after it.
///
/// Types are recognised by format-code subcategory (spec 1.2), which is how
/// the spec lets decoders skip types they do not know. Compound values are
/// walked element by element so that their declared size and count must
/// agree, and nesting is bounded by [`MAX_NESTING_DEPTH`]. Work is linear in
/// the bytes examined: zero-width array elements are counted, not iterated.
pub(crate) fn skip_value(r: &mut Reader<'_>, depth: u32) -> Result<(), &'static str> {
    let code = r.u8()?;
    if code == code::DESCRIBED {
        let depth = descend(depth)?;
        // The descriptor is itself a value (ulong or symbol in practice).
        skip_value(r, depth)?;
        return skip_value(r, depth);
    }
    skip_data(r, code, depth)
}

#[inline]
fn descend(depth: u32) -> Result<u32, &'static str> {
    if depth >= MAX_NESTING_DEPTH {
        Err(ERR_TOO_DEEP)
    } else {
        Ok(depth + 1)
    }
}

/// Skips the data that follows an already-consumed format code.
fn skip_data(r: &mut Reader<'_>, code: u8, depth: u32) -> Result<(), &'static str> {
    if let Some(w) = fixed_width(code) {
        r.skip(w)?;
        return Ok(());
    }
    match code >> 4 {
        0xa => {
            let len = r.u8()? as usize;
            r.skip(len)?;
        }
        0xb => {
            let len = r.u32()? as usize;
            r.skip(len)?;
        }
        0xc | 0xd => {
            let wide = code >> 4 == 0xd;
            let (count, end) = read_size_count(r, wide)?;
            // Maps are lists of alternating keys and values.
            if code & 0x0f == 0x1 && count % 2 != 0 {
                return Err(ERR_ODD_MAP);
            }
            let depth = descend(depth)?;
            let mut inner = r.limited(end);
            // Each element takes at least one byte, so this loop is bounded
            // by the region size even if `count` is huge.
            for _ in 0..count {
                skip_value(&mut inner, depth)?;
            }
            if inner.pos != end {
                return Err(ERR_SIZE_MISMATCH);
            }
            r.pos = end;
        }
        0xe | 0xf => {
            let wide = code >> 4 == 0xf;
            let (count, end) = read_size_count(r, wide)?;
            let size = end.saturating_sub(r.pos);
            let depth = descend(depth)?;
            let mut inner = r.limited(end);
            // Array constructor: a primitive format code, optionally
            // preceded by a descriptor shared by all elements.
            let mut elem = inner.u8()?;
            if elem == code::DESCRIBED {
                skip_value(&mut inner, depth)?;
                elem = inner.u8()?;
                if elem == code::DESCRIBED {
                    return Err(ERR_BAD_CODE);
                }
            }
            let count = count as usize;
            if count > size {
                // Only zero-width element types (null, true, uint0, ...) can
                // legitimately exceed this, and nobody sends those in
                // performatives. Capping them keeps decoders that
                // materialise elements (serde_amqp) proportional to the
                // frame: otherwise a 10-byte array could demand 4 billion
                // elements.
                return Err(ERR_ARRAY_COUNT);
            }
            if let Some(w) = fixed_width(elem) {
                let total = w.checked_mul(count).ok_or(ERR_TRUNCATED)?;
                inner.skip(total)?;
            } else {
                for _ in 0..count {
                    skip_data(&mut inner, elem, depth)?;
                }
            }
            if inner.pos != end {
                return Err(ERR_SIZE_MISMATCH);
            }
            r.pos = end;
        }
        _ => return Err(ERR_BAD_CODE),
    }
    Ok(())
}

/// Reads the size and count fields of a compound or array encoding and
/// returns the element count plus the offset where the value ends. The size
/// field counts the bytes after itself, count field included, so the end is
/// measured from where the count field starts.
pub(crate) fn read_size_count(
    r: &mut Reader<'_>,
    wide: bool,
) -> Result<(u32, usize), &'static str> {
    let (size, count_start) = if wide {
        (r.u32()? as usize, r.pos)
    } else {
        (r.u8()? as usize, r.pos)
    };
    let end = count_start.checked_add(size).ok_or(ERR_TRUNCATED)?;
    if end > r.len() {
        return Err(ERR_TRUNCATED);
    }
    let count = if wide { r.u32()? } else { r.u8()? as u32 };
    // A size too small to even hold the count field.
    if r.pos > end {
        return Err(ERR_SIZE_MISMATCH);
    }
    Ok((count, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skip(bytes: &[u8]) -> Result<usize, &'static str> {
        let mut r = Reader::new(bytes, 0);
        skip_value(&mut r, 0).map(|()| r.pos)
    }

    #[test]
    fn fixed_width_codes() {
        for (bytes, len) in [
            (&[0x40][..], 1),
            (&[0x45], 1),
            (&[0x50, 1], 2),
            (&[0x56, 1], 2),
            (&[0x60, 1, 2], 3),
            (&[0x70, 1, 2, 3, 4], 5),
            (&[0x83, 0, 0, 0, 0, 0, 0, 0, 0], 9),
            (&[0x98, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 17),
        ] {
            assert_eq!(skip(bytes), Ok(len), "{bytes:02x?}");
        }
    }

    #[test]
    fn variable_and_compound_codes() {
        assert_eq!(skip(&[0xa1, 2, b'h', b'i', 0xff]), Ok(4));
        assert_eq!(skip(&[0xb3, 0, 0, 0, 1, b'x']), Ok(6));
        assert_eq!(skip(&[0xc0, 3, 2, 0x41, 0x42]), Ok(5));
        assert_eq!(skip(&[0xc1, 5, 2, 0xa3, 1, b'k', 0x40]), Ok(7));
        assert_eq!(skip(&[0xd0, 0, 0, 0, 4, 0, 0, 0, 0]), Ok(9));
        // array8 of 3 uints with smalluint constructor
        assert_eq!(skip(&[0xe0, 5, 3, 0x52, 1, 2, 3]), Ok(7));
        // array8 of 2 sym8
        assert_eq!(skip(&[0xe0, 7, 2, 0xa3, 1, b'a', 2, b'b', b'c']), Ok(9));
        // array of described lists (descriptor shared)
        assert_eq!(
            skip(&[0xe0, 9, 2, 0x00, 0x53, 0x24, 0xc0, 1, 0, 1, 0]),
            Ok(11)
        );
        // described value
        assert_eq!(skip(&[0x00, 0x53, 0x24, 0x45]), Ok(4));
        // array32 of zero-width elements within the count bound
        assert_eq!(skip(&[0xf0, 0, 0, 0, 5, 0, 0, 0, 1, 0x40]), Ok(10));
    }

    #[test]
    fn errors() {
        for (bytes, err) in [
            (&[][..], ERR_TRUNCATED),
            (&[0x01], ERR_BAD_CODE),
            (&[0x3f], ERR_BAD_CODE),
            (&[0x70, 1, 2], ERR_TRUNCATED),
            (&[0xa1, 3, b'a'], ERR_TRUNCATED),
            (&[0xb1, 0xff, 0xff, 0xff, 0xff], ERR_TRUNCATED),
            (&[0xc0, 0], ERR_TRUNCATED),
            (&[0xc0, 0, 0x40], ERR_SIZE_MISMATCH),
            (&[0xc0, 3, 1, 0x40, 0x40], ERR_SIZE_MISMATCH),
            (&[0xc0, 2, 2, 0x40, 0x40], ERR_TRUNCATED),
            (&[0xc1, 2, 1, 0x40], ERR_ODD_MAP),
            (&[0xd0, 0, 0, 0, 3, 0, 0, 0, 0], ERR_SIZE_MISMATCH),
            (&[0xe0, 2, 1, 0x00, 0x53], ERR_TRUNCATED),
            (&[0xe0, 4, 1, 0x00, 0x40, 0x00], ERR_BAD_CODE),
            (&[0xe0, 2, 5, 0x40], ERR_ARRAY_COUNT),
            (&[0xe0, 4, 1, 0x52, 1, 2], ERR_SIZE_MISMATCH),
            (&[0x00, 0x53], ERR_TRUNCATED),
        ] {
            assert_eq!(skip(bytes), Err(err), "{bytes:02x?}");
        }
    }

    #[test]
    fn described_chain_depth_is_bounded() {
        // 0x00 0x00 0x00 ... : descriptors of descriptors.
        let bytes = vec![0x00; 1000];
        assert_eq!(skip(&bytes), Err(ERR_TOO_DEEP));
        // Exactly MAX_NESTING_DEPTH levels of list nesting is allowed.
        let mut v = vec![0x45u8];
        for _ in 0..MAX_NESTING_DEPTH {
            let mut outer = vec![0xc0, v.len() as u8 + 1, 1];
            outer.extend_from_slice(&v);
            v = outer;
        }
        assert_eq!(skip(&v), Ok(v.len()));
        let mut deeper = vec![0xc0, v.len() as u8 + 1, 1];
        deeper.extend_from_slice(&v);
        assert_eq!(skip(&deeper), Err(ERR_TOO_DEEP));
    }

    #[test]
    fn limited_reader_stops_at_end() {
        let mut r = Reader::new(&[1, 2, 3, 4], 1).limited(3);
        assert_eq!(r.u8(), Ok(2));
        assert_eq!(r.u8(), Ok(3));
        assert_eq!(r.u8(), Err(ERR_TRUNCATED));
        assert_eq!(r.skip(usize::MAX), Err(ERR_TRUNCATED));
    }
}
