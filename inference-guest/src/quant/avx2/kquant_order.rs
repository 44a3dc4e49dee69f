//! The activation orders of the K-quant tiles' paired products (`kquant.rs`): a Q8_K row
//! copied with each 64-value chunk's two halves interleaved, so that one `maddubs` pair
//! and one `madd` take both halves of a chunk against weights unpacked the same way.

use core::arch::x86_64::*;

use super::kquant::{Q8K_BYTES, Q8K_QS};
use super::{arr, ld};
use alloc::vec::Vec;

/// `act` (whole Q8_K blocks) with each 64-value chunk's quants interleaved two by two:
/// values 2k, 2k + 1 of its first sub-block, then the same of its second, as
/// `unpacklo/hi_epi16` lay them out per 128-bit lane. Q4_K's paired tile unpacks its
/// nibbles the same way, so one `maddubs` covers both sub-blocks and their sums take
/// their two scales in one `madd`.
#[target_feature(enable = "avx2")]
pub(super) fn pair_sub_blocks(act: &[u8]) -> Vec<u8> {
    reorder_chunks::<false>(act)
}

/// `act` (whole Q8_K blocks) with each 64-value chunk's two 32-value halves woven word by
/// word as [`blend_pair`] weaves them: Q6_K's tile weaves chunk pairs of its quants the
/// same way, so one `maddubs` pair and one `madd` take both chunks while every i32 lane
/// still sums bytes 4m..4m + 4 of each chunk, the lanes llama.cpp's x86 order (and the
/// reference) turn into floats one by one. ([`pair_sub_blocks`]' order would mix the lanes;
/// Q4_K sums its lanes into one integer, so it may use either. Q5_K's row-first product
/// weaves its sub-block pairs this way: 3.1 -> 2.9 ms a 128-column product; its column
/// tiles do not, since there the unpacking of the high bits, not the products, sets the pace.)
#[target_feature(enable = "avx2")]
pub(super) fn blend_sub_blocks(act: &[u8]) -> Vec<u8> {
    reorder_chunks::<true>(act)
}

/// A copy of `act` with each 64-value chunk's halves reordered: woven by [`blend_pair`]
/// (`BLEND`) or interleaved by `unpacklo/hi_epi16`.
#[target_feature(enable = "avx2")]
fn reorder_chunks<const BLEND: bool>(act: &[u8]) -> Vec<u8> {
    let mut out = act.to_vec();
    for blk in out.chunks_exact_mut(Q8K_BYTES) {
        for c in 0..4 {
            let at = Q8K_QS + 64 * c;
            // SAFETY: AVX2 is this function's contract; the arrays are bounds-checked.
            let (y0, y1) = unsafe { (ld(arr(blk, at)), ld(arr(blk, at + 32))) };
            let (first, second) = if BLEND {
                blend_pair(y0, y1)
            } else {
                (_mm256_unpacklo_epi16(y0, y1), _mm256_unpackhi_epi16(y0, y1))
            };
            // SAFETY: 64 writable bytes at `at`; storeu has no alignment requirement.
            unsafe {
                _mm256_storeu_si256(blk[at..at + 32].as_mut_ptr().cast(), first);
                _mm256_storeu_si256(blk[at + 32..at + 64].as_mut_ptr().cast(), second);
            }
        }
    }
    out
}

/// Weaves two vectors by i16 words: `a`'s and `b`'s even words alternating, then their odd
/// words alternating. Word 2m of a `maddubs` of the first (second) result takes bytes 4m,
/// 4m + 1 (4m + 2, 4m + 3) of `a`, word 2m + 1 the same bytes of `b`.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn blend_pair(a: __m256i, b: __m256i) -> (__m256i, __m256i) {
    (
        _mm256_blend_epi16::<0xaa>(a, _mm256_slli_epi32::<16>(b)),
        _mm256_blend_epi16::<0xaa>(_mm256_srli_epi32::<16>(a), b),
    )
}
