//! Helpers shared by the wire tests.

use alloc::vec::Vec;

use crate::spec::HEADER_BYTES;

/// splitmix64: a tiny, good-enough PRNG so the tests need no extra crate.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next pseudo-random value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Rewrites the header's body length to match the buffer, so a test reaches the body checks.
pub fn fix_len(frame: &mut [u8]) {
    if frame.len() >= HEADER_BYTES {
        let body = (frame.len() - HEADER_BYTES) as u32;
        frame[4..8].copy_from_slice(&body.to_le_bytes());
    }
}

/// Every strict prefix of `frame` must fail to decode, both as is (the length field then
/// disagrees) and with the length field fixed up (so the body itself is short).
/// `fails` decodes a buffer and says whether that was an error.
pub fn assert_every_truncation_fails(frame: &[u8], fails: impl Fn(&[u8]) -> bool) {
    for cut in 0..frame.len() {
        let mut short: Vec<u8> = frame[..cut].to_vec();
        assert!(fails(&short), "prefix {cut} decoded");
        fix_len(&mut short);
        assert!(fails(&short), "fixed prefix {cut} decoded");
    }
}

/// `frame` with one extra byte at the end and its length field fixed up.
pub fn with_trailing_byte(frame: &[u8]) -> Vec<u8> {
    let mut v = frame.to_vec();
    v.push(0);
    fix_len(&mut v);
    v
}
