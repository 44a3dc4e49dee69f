//! Bounds-checked little-endian reading and writing, and the common message header.
//!
//! Every read checks the remaining length first and returns `WireError::Truncated` instead of
//! indexing past the end; variable-length parts are checked against what is left before
//! anything is allocated, so a hostile count cannot make the receiver allocate.

use alloc::vec::Vec;

use crate::error::WireError;
use crate::spec::{HEADER_BYTES, MAX_MESSAGE_BYTES, PROTOCOL_VERSION};

/// A cursor over a byte slice that never reads past its end.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads `buf` from its start.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// The next `n` bytes, borrowed.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.buf.len() {
            return Err(WireError::Truncated {
                needed: n,
                available: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    /// A u8.
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A little-endian IEEE-754 binary32.
    pub fn f32(&mut self) -> Result<f32, WireError> {
        Ok(f32::from_bits(self.u32()?))
    }

    /// `n` reserved bytes that must all be zero.
    pub fn reserved(&mut self, n: usize, field: &'static str) -> Result<(), WireError> {
        if self.bytes(n)?.iter().any(|&b| b != 0) {
            return Err(WireError::ReservedNotZero { field });
        }
        Ok(())
    }

    /// `count` little-endian u32s. The byte size is checked against what is left before the
    /// vector is allocated.
    pub fn u32_list(&mut self, count: usize) -> Result<Vec<u32>, WireError> {
        let needed = count.checked_mul(4).ok_or(WireError::Truncated {
            needed: usize::MAX,
            available: self.buf.len(),
        })?;
        let raw = self.bytes(needed)?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Succeeds only if every byte has been read.
    pub fn finish(self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes {
                count: self.buf.len(),
            })
        }
    }
}

/// Appends little-endian fields to a vector.
#[derive(Debug)]
pub struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    /// Appends to `out`.
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        Self { out }
    }

    /// Raw bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b);
    }

    /// A u8.
    pub fn u8(&mut self, v: u8) {
        self.out.push(v);
    }

    /// A little-endian u16.
    pub fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }

    /// A little-endian u32.
    pub fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }

    /// A little-endian u64.
    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    /// A little-endian IEEE-754 binary32.
    pub fn f32(&mut self, v: f32) {
        self.u32(v.to_bits());
    }

    /// `n` zero bytes.
    pub fn zeros(&mut self, n: usize) {
        self.out.resize(self.out.len() + n, 0);
    }

    /// Little-endian u32s.
    pub fn u32_list(&mut self, v: &[u32]) {
        for &x in v {
            self.u32(x);
        }
    }
}

/// Writes one whole frame: the header for `msg_type`, then the body `body` writes. The body
/// length is patched in afterwards so encoders cannot get it wrong.
pub fn encode_frame(
    out: &mut Vec<u8>,
    msg_type: u16,
    body: impl FnOnce(&mut Writer<'_>),
) -> Result<(), WireError> {
    let start = out.len();
    let mut w = Writer::new(out);
    w.u16(msg_type);
    w.u8(PROTOCOL_VERSION);
    w.u8(0); // flags: none defined in version 1
    w.u32(0); // body length, patched below
    body(&mut w);
    let total = out.len() - start;
    if total > MAX_MESSAGE_BYTES {
        out.truncate(start);
        return Err(WireError::TooLong {
            what: "message",
            len: total,
            max: MAX_MESSAGE_BYTES,
        });
    }
    let body_len = u32::try_from(total - HEADER_BYTES).unwrap_or(u32::MAX);
    out[start + 4..start + 8].copy_from_slice(&body_len.to_le_bytes());
    Ok(())
}

/// Checks the header of `buf` and returns the message type and a reader over the body.
///
/// The frame must fill `buf` exactly: the receiver slices the buffer by the used length (or
/// descriptor length) it trusts least, and any disagreement is an error rather than a guess.
pub fn decode_frame(buf: &[u8]) -> Result<(u16, Reader<'_>), WireError> {
    if buf.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLong {
            what: "message",
            len: buf.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    let mut r = Reader::new(buf);
    let msg_type = r.u16()?;
    let version = r.u8()?;
    if version != PROTOCOL_VERSION {
        return Err(WireError::BadVersion(version));
    }
    if r.u8()? != 0 {
        return Err(WireError::ReservedNotZero { field: "flags" });
    }
    let declared = r.u32()? as usize;
    if declared != r.remaining() {
        return Err(WireError::LengthMismatch {
            declared,
            actual: r.remaining(),
        });
    }
    Ok((msg_type, r))
}

/// Checks that `len` elements fit `max`.
pub fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), WireError> {
    if len > max {
        Err(WireError::TooLong { what, len, max })
    } else {
        Ok(())
    }
}

/// A length as the u32 the wire carries; callers have checked it against a limit below 4 GiB.
pub fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_reports_truncation() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16(), Ok(0x0201));
        assert_eq!(
            r.u32(),
            Err(WireError::Truncated {
                needed: 4,
                available: 1
            })
        );
    }

    #[test]
    fn u32_list_checks_before_allocating() {
        let mut r = Reader::new(&[0; 8]);
        assert!(matches!(
            r.u32_list(usize::MAX / 2),
            Err(WireError::Truncated { .. })
        ));
        assert!(matches!(
            r.u32_list(3),
            Err(WireError::Truncated {
                needed: 12,
                available: 8
            })
        ));
        assert_eq!(r.u32_list(2), Ok(alloc::vec![0, 0]));
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn frame_round_trip_and_header_checks() {
        let mut out = Vec::new();
        encode_frame(&mut out, 0x1234, |w| w.u32(7)).unwrap();
        let (t, mut r) = decode_frame(&out).unwrap();
        assert_eq!((t, r.u32()), (0x1234, Ok(7)));

        let mut bad = out.clone();
        bad[2] = 2;
        assert_eq!(decode_frame(&bad).unwrap_err(), WireError::BadVersion(2));
        let mut bad = out.clone();
        bad[3] = 1;
        assert_eq!(
            decode_frame(&bad).unwrap_err(),
            WireError::ReservedNotZero { field: "flags" }
        );
        let mut bad = out.clone();
        bad.push(0);
        assert_eq!(
            decode_frame(&bad).unwrap_err(),
            WireError::LengthMismatch {
                declared: 4,
                actual: 5
            }
        );
    }

    #[test]
    fn oversized_frames_are_refused() {
        let mut out = Vec::new();
        let err = encode_frame(&mut out, 1, |w| w.zeros(MAX_MESSAGE_BYTES)).unwrap_err();
        assert!(matches!(err, WireError::TooLong { .. }));
        assert!(out.is_empty());
    }
}
