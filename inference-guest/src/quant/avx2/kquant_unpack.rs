//! Unpacking of Q5_K and Q6_K super-blocks into `maddubs`-ready bytes and scales, and of a
//! Q8_K block's sub-block sums, shared by the column tiles (`kquant`, which unpack a row per
//! tile) and the row-first and row-per-lane products (`kquant_q5_rows`, `kquant_q6_rows`,
//! `kquant_q4_lanes`), so all compute the same values the same way.

use core::arch::x86_64::*;

use super::kquant::Q8K_BSUMS;
use super::{arr, ld, ld16};

/// The 5-bit quants (0..32) of Q5_K super-block `x`'s sub-blocks 2c and 2c + 1, from its
/// nibbles and `qh` (its 32 bytes of fifth bits, loaded once per super-block).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn q5_k_sub_blocks(x: &[u8], qh: __m256i, c: usize) -> (__m256i, __m256i) {
    let m4 = _mm256_set1_epi8(0xf);
    let b4 = _mm256_set1_epi8(0x10);
    // SAFETY: AVX2 is this function's contract; the array is bounds-checked.
    let q = unsafe { ld(arr(x, 48 + 32 * c)) };
    // Bit 2c (2c + 1) of qh[l] is bit 4 of quant l of sub-block 2c (2c + 1).
    let (sh0, sh1) = (
        _mm_cvtsi32_si128(2 * c as i32),
        _mm_cvtsi32_si128(2 * c as i32 + 1),
    );
    let h0 = _mm256_and_si256(_mm256_slli_epi16::<4>(_mm256_srl_epi16(qh, sh0)), b4);
    let h1 = _mm256_and_si256(_mm256_slli_epi16::<4>(_mm256_srl_epi16(qh, sh1)), b4);
    (
        _mm256_or_si256(_mm256_and_si256(q, m4), h0),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q), m4), h1),
    )
}

/// The stored 6-bit quants (0..64) of Q6_K super-block `x`'s chunks 4h .. 4h + 4 (half h):
/// low nibbles and high bit pairs put together.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn q6_k_half(x: &[u8], h: usize) -> [__m256i; 4] {
    let m4 = _mm256_set1_epi8(0xf);
    let m2 = _mm256_set1_epi8(3);
    let hbits = |v: __m256i| _mm256_slli_epi16::<4>(_mm256_and_si256(v, m2));
    // SAFETY: AVX2 is this function's contract; the arrays are bounds-checked.
    let (ql0, ql1, qh) = unsafe {
        (
            ld(arr(x, 64 * h)),
            ld(arr(x, 64 * h + 32)),
            ld(arr(x, 128 + 32 * h)),
        )
    };
    [
        _mm256_or_si256(_mm256_and_si256(ql0, m4), hbits(qh)),
        _mm256_or_si256(_mm256_and_si256(ql1, m4), hbits(_mm256_srli_epi16::<2>(qh))),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
            hbits(_mm256_srli_epi16::<4>(qh)),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
            hbits(_mm256_srli_epi16::<6>(qh)),
        ),
    ]
}

/// `pshufb` patterns over a Q6_K super-block's 16 i8 scales giving, once widened to i16,
/// the scales of 32-value chunk `c`: its first 16 values' group in the low 128-bit half,
/// the next group's in the high half (ggml's `get_scale_shuffle`; one shuffle and one widen
/// instead of building each half from scalars).
const Q6K_CHUNK_SCALES: [[u8; 16]; 8] = {
    let mut t = [[0u8; 16]; 8];
    let mut c = 0;
    while c < 8 {
        let mut i = 0;
        while i < 16 {
            t[c][i] = (2 * c + i / 8) as u8;
            i += 1;
        }
        c += 1;
    }
    t
};

/// As [`Q6K_CHUNK_SCALES`] for the woven chunks 2p and 2p + 1 (see `blend_pair`): i16
/// lanes alternate between chunk 2p's group and chunk 2p + 1's.
const Q6K_PAIR_SCALES: [[u8; 16]; 4] = {
    let mut t = [[0u8; 16]; 4];
    let mut p = 0;
    while p < 4 {
        let mut i = 0;
        while i < 16 {
            t[p][i] = (4 * p + i / 8 + 2 * (i % 2)) as u8;
            i += 1;
        }
        p += 1;
    }
    t
};

/// The i16 scales of Q6_K chunk `c` (0..8), from the super-block's 16 i8 `scales`.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn q6_k_chunk_scales(scales: __m128i, c: usize) -> __m256i {
    // SAFETY: AVX2 is this function's contract; the array is bounds-checked.
    let pattern = unsafe { ld16(&Q6K_CHUNK_SCALES[c]) };
    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, pattern))
}

/// The i16 scales of Q6_K's woven chunk pair `pair` (0..4: chunks 2·pair and 2·pair + 1),
/// lanes as `blend_pair` weaves the products.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn q6_k_pair_scales(scales: __m128i, pair: usize) -> __m256i {
    // SAFETY: AVX2 is this function's contract; the array is bounds-checked.
    let pattern = unsafe { ld16(&Q6K_PAIR_SCALES[pair]) };
    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, pattern))
}

/// The sums of Q8_K block `y`'s eight 32-value sub-blocks as i16 lanes: its 16 block sums
/// added in pairs (exact: |2 · 16 · 128| < 2¹⁵), what the K-quants' mins multiply.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn q8k_sub_block_sums(y: &[u8]) -> __m128i {
    // SAFETY: AVX2 is this function's contract; the array is bounds-checked.
    let bsums = unsafe { ld(arr(y, Q8K_BSUMS)) };
    _mm_hadd_epi16(
        _mm256_castsi256_si128(bsums),
        _mm256_extracti128_si256::<1>(bsums),
    )
}
