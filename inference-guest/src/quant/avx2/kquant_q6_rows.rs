//! Q6_K prefill on AVX2 from rows unpacked once per call, not once per column tile (as
//! `kquant_q5_rows` does for Q5_K).
//!
//! `kquant`'s Q6_K tile rebuilds a row's 6-bit quants (low nibbles, high bit pairs), weaves
//! them into chunk pairs and shuffles out their scales for every eight columns it
//! multiplies. Here a block of rows (in L2) is unpacked once into the woven weights, the
//! pairs' i16 scales and the scales widened for the `+32` correction ([`Block`]); the tiles
//! only load, multiply and add.
//!
//! Every output keeps the operations, in their order, of `kquant`'s paired tile (llama.cpp's
//! x86 order: eight exact i32 lanes per super-block, the correction `32 · Σ bsums · scale`
//! taken from them, one FMA per lane with `yd · d`, then `hsum`), so prefill stays
//! bit-identical to decode.

use core::arch::x86_64::*;

use super::kquant::{Q6K_BYTES, Q8K_BSUMS, Q8K_BYTES, Q8K_QS, rd_f32};
use super::kquant_order::blend_pair;
use super::kquant_rows::{RowsKernel, Tile};
use super::kquant_unpack::{q6_k_half, q6_k_pair_scales};
use super::{arr, h2f, hsum, ld, ld16};

/// One unpacked super-block of a row.
#[derive(Clone, Copy)]
pub(super) struct Block {
    /// For half h and pair p, the woven chunks 4h + 2p and 4h + 2p + 1 ([`blend_pair`]) at
    /// `w[4h + 2p]` and `w[4h + 2p + 1]`: the stored quants, 0..64.
    w: [__m256i; 8],
    /// The i16 scales of pair (h, p) at `pair_scales[2h + p]`, lanes as the woven products.
    pair_scales: [__m256i; 4],
    /// The sixteen scales as i16, for the `+32` correction.
    scales: __m256i,
    d: f32,
}

/// Q6_K for `kquant_rows::matmul`, against activations from `blend_sub_blocks` (each
/// chunk pair woven as the weights are).
pub(super) struct Q6KRows;

impl RowsKernel for Q6KRows {
    const NAME: &'static str = "q6_k";
    const WB: usize = Q6K_BYTES;
    type Block = Block;
    /// Q6_K's tile reads each column's block sums and scale where it uses them.
    type Cols = ();

    unsafe fn cols(_: &[u8], _: usize, _: usize) {}

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(x: &[u8]) -> Block {
        // SAFETY: AVX2 is this function's contract; the array is bounds-checked.
        let scales = unsafe { ld16(arr(x, 192)) };
        let mut w = [_mm256_setzero_si256(); 8];
        let mut pair_scales = [_mm256_setzero_si256(); 4];
        for h in 0..2 {
            let q = q6_k_half(x, h);
            for p in 0..2 {
                (w[4 * h + 2 * p], w[4 * h + 2 * p + 1]) = blend_pair(q[2 * p], q[2 * p + 1]);
                pair_scales[2 * h + p] = q6_k_pair_scales(scales, 2 * h + p);
            }
        }
        Block {
            w,
            pair_scales,
            scales: _mm256_cvtepi8_epi16(scales),
            d: h2f(x, 208),
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const C: usize>(row: &[Block], _: &(), t: Tile, out: &mut [f32]) {
        tile::<C>(row, t.act, t.arb, out)
    }
}

/// `row` (its unpacked super-blocks) · the `C` columns of `a` (stride `arb`) into `out`.
#[allow(clippy::needless_range_loop)] // col indexes the sums, accumulators and columns alike
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile<const C: usize>(row: &[Block], a: &[u8], arb: usize, out: &mut [f32]) {
    let mut acc = [_mm256_setzero_ps(); C];
    for (b, x) in row.iter().enumerate() {
        let mut isum = [_mm256_setzero_si256(); C];
        for h in 0..2 {
            for p in 0..2 {
                let (w0, w1) = (x.w[4 * h + 2 * p], x.w[4 * h + 2 * p + 1]);
                let scv = x.pair_scales[2 * h + p];
                for col in 0..C {
                    let y = &a[col * arb + b * Q8K_BYTES + Q8K_QS + 128 * h + 64 * p..];
                    // SAFETY: AVX2 is this function's contract; the arrays are bounds-checked.
                    let (y0, y1) = unsafe { (ld(arr(y, 0)), ld(arr(y, 32))) };
                    // |4 products| ≤ 4 · 63 · 128 stays inside an i16.
                    let (p0, p1) = (_mm256_maddubs_epi16(w0, y0), _mm256_maddubs_epi16(w1, y1));
                    let v = _mm256_madd_epi16(_mm256_add_epi16(p0, p1), scv);
                    isum[col] = _mm256_add_epi32(isum[col], v);
                }
            }
        }
        for col in 0..C {
            let y = &a[col * arb + b * Q8K_BYTES..];
            // The +32 offset of the stored quants, as in `kquant`'s tile.
            // SAFETY: as above; 16 i16 block sums are in bounds.
            let bsums = unsafe { ld(arr(y, Q8K_BSUMS)) };
            let corr = _mm256_slli_epi32::<5>(_mm256_madd_epi16(bsums, x.scales));
            let d = _mm256_set1_ps(rd_f32(y, 0) * x.d);
            let v = _mm256_cvtepi32_ps(_mm256_sub_epi32(isum[col], corr));
            acc[col] = _mm256_fmadd_ps(d, v, acc[col]);
        }
    }
    for col in 0..C {
        out[col] = hsum(acc[col]);
    }
}
