//! Q5_K prefill on AVX2 from rows unpacked once per call, not once per column tile.
//!
//! `kquant`'s Q5_K tile unpacks a row's super-block (nibbles, the fifth bits, the 6-bit
//! scales and mins) for every four columns it multiplies: on the AVX2-only machine that
//! unpacking and the per-column block-sum reduction cost more than the products, and held
//! pure-Q5_K prefill at 0.64-0.81x llama.cpp. Here a block of rows (in L2) is unpacked
//! into 5-bit bytes, scales as `maddwd`-ready dword pairs, mins, `d` and `dmin`
//! ([`Block`]), the columns' block-sum pairs and scales into a table ([`Cols`]), and the
//! tiles only load, multiply and add. The mins' products of four columns reduce together.
//!
//! Every output keeps the operations, in their order, of `kquant`'s tile (llama.cpp's x86
//! order: eight exact i32 lanes per super-block, one FMA per lane with `yd · d`, the mins
//! as `summs += -yd · dmin · msum`, then `hsum(acc) + summs`), so prefill stays
//! bit-identical to decode.

use alloc::vec;
use alloc::vec::Vec;
use core::arch::x86_64::*;

use super::kquant::{Q5K_BYTES, Q8K_BYTES, q4_k_scales_mins, rd_f32};
use super::kquant_order::blend_pair;
use super::kquant_rows::{PANEL, RowsKernel, Tile};
use super::kquant_unpack::{q5_k_sub_blocks, q8k_sub_block_sums};
use super::{arr, h2f, hsum, ld};

/// One unpacked super-block of a row.
#[derive(Clone, Copy)]
pub(super) struct Block {
    /// Sub-blocks 2c and 2c + 1 as 5-bit values (0..32), woven by [`blend_pair`] into
    /// `q[2c]` and `q[2c + 1]`.
    q: [__m256i; 8],
    /// Scales 2c and 2c + 1 as the i16 pair `(s_2c, s_2c+1)`, for `madd` against the
    /// woven products' i16 pairs.
    scales: [i32; 4],
    /// The eight mins as i16.
    mins: __m128i,
    d: f32,
    dmin: f32,
}

/// Per column and super-block, what every row reuses: the 16 block sums added in pairs
/// (one per min; exact in i16) and the block's scale, laid out `[panel][block][PANEL]` so a
/// tile reads its columns' scales with one load (4 entries of padding keep it inside).
pub(super) struct Cols {
    pairs: Vec<__m128i>,
    yd: Vec<f32>,
}

/// Q5_K for `kquant_rows::matmul`, against activations from `blend_sub_blocks` (each
/// sub-block pair woven as the weights are).
pub(super) struct Q5KRows;

impl RowsKernel for Q5KRows {
    const NAME: &'static str = "q5_k";
    const WB: usize = Q5K_BYTES;
    type Block = Block;
    type Cols = Cols;

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn cols(act: &[u8], arb: usize, nsb: usize) -> Cols {
        let ncols = act.len() / arb;
        let len = ncols.div_ceil(PANEL) * nsb * PANEL + 4;
        let mut t = Cols {
            pairs: vec![_mm_setzero_si128(); len],
            yd: vec![0.0; len],
        };
        for (j, col) in act.chunks_exact(arb).enumerate() {
            for (b, y) in col.chunks_exact(Q8K_BYTES).enumerate() {
                let at = ((j / PANEL) * nsb + b) * PANEL + j % PANEL;
                t.pairs[at] = q8k_sub_block_sums(y);
                t.yd[at] = rd_f32(y, 0);
            }
        }
        t
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(x: &[u8]) -> Block {
        let (scales, mins) = q4_k_scales_mins(arr(x, 4));
        let mut pairs = [0i32; 4];
        // SAFETY: `pairs` is 16 writable bytes; storeu has no alignment requirement. Dword c
        // of the scales' i16s is the pair (s_2c, s_2c+1).
        unsafe { _mm_storeu_si128(pairs.as_mut_ptr().cast(), _mm256_castsi256_si128(scales)) };
        // SAFETY: AVX2 is this function's contract; the array is bounds-checked.
        let qh = unsafe { ld(arr(x, 16)) };
        let mut q = [_mm256_setzero_si256(); 8];
        for c in 0..4 {
            let (lo, hi) = q5_k_sub_blocks(x, qh, c);
            (q[2 * c], q[2 * c + 1]) = blend_pair(lo, hi);
        }
        Block {
            q,
            scales: pairs,
            mins,
            d: h2f(x, 0),
            dmin: h2f(x, 2),
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const C: usize>(row: &[Block], cols: &Cols, t: Tile, out: &mut [f32]) {
        tile::<C>(row, cols, t, out)
    }
}

/// `row` (its unpacked super-blocks) · the `C` columns of `t` into `out`.
#[allow(clippy::needless_range_loop)] // col indexes the sums, accumulators and columns alike
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile<const C: usize>(row: &[Block], cols: &Cols, t: Tile, out: &mut [f32]) {
    let mut acc = [_mm256_setzero_ps(); C];
    let mut summs = _mm_setzero_ps();
    for (b, x) in row.iter().enumerate() {
        let mut isum = [_mm256_setzero_si256(); C];
        for c in 0..4 {
            let s = _mm256_set1_epi32(x.scales[c]);
            for col in 0..C {
                let y = &t.act[col * t.arb + b * Q8K_BYTES..];
                // SAFETY: AVX2 is this function's contract; the arrays are bounds-checked.
                let (y0, y1) = unsafe { (ld(arr(y, 4 + 64 * c)), ld(arr(y, 36 + 64 * c))) };
                // Word 2m (2m + 1) of the sum: bytes 4m..4m + 4 of sub-block 2c (2c + 1)
                // times their activations, |4 · 31 · 128| inside an i16; the `madd` makes
                // lane m the same i32 as the two sub-blocks' products apart would.
                let p = _mm256_add_epi16(
                    _mm256_maddubs_epi16(x.q[2 * c], y0),
                    _mm256_maddubs_epi16(x.q[2 * c + 1], y1),
                );
                isum[col] = _mm256_add_epi32(isum[col], _mm256_madd_epi16(p, s));
            }
        }
        let at = t.table + b * PANEL;
        // Σ_j m_j · (bsum 2j + bsum 2j+1) of each column, as lane `col` (exact in i32).
        let m: [__m128i; 4] = core::array::from_fn(|col| {
            if col < C {
                _mm_madd_epi16(cols.pairs[at + col], x.mins)
            } else {
                _mm_setzero_si128()
            }
        });
        let msum = _mm_hadd_epi32(_mm_hadd_epi32(m[0], m[1]), _mm_hadd_epi32(m[2], m[3]));
        // SAFETY: the table has 4 entries of padding past every panel's last column.
        let yd = unsafe { _mm_loadu_ps(cols.yd[at..at + 4].as_ptr()) };
        // summs += -yd · dmin · msum, lane by lane as the scalar tile does it.
        let neg_yd = _mm_xor_ps(yd, _mm_set1_ps(-0.0));
        let m_term = _mm_mul_ps(
            _mm_mul_ps(neg_yd, _mm_set1_ps(x.dmin)),
            _mm_cvtepi32_ps(msum),
        );
        summs = _mm_add_ps(summs, m_term);
        for col in 0..C {
            let dv = _mm256_set1_ps(cols.yd[at + col] * x.d);
            acc[col] = _mm256_fmadd_ps(dv, _mm256_cvtepi32_ps(isum[col]), acc[col]);
        }
    }
    let mut s = [0.0f32; 4];
    // SAFETY: `s` is 16 writable bytes; storeu has no alignment requirement.
    unsafe { _mm_storeu_ps(s.as_mut_ptr(), summs) };
    for col in 0..C {
        out[col] = hsum(acc[col]) + s[col];
    }
}
