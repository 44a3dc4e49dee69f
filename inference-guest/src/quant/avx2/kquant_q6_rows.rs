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

use alloc::vec::Vec;
use core::arch::x86_64::*;

use super::gemm::ROW_BLOCK_BYTES;
use super::kquant::{Q6K_BYTES, Q6K_PAIR_SCALES, Q8K_BSUMS, Q8K_BYTES, Q8K_QS, rd_f32};
use super::kquant_order::blend_pair;
use super::{arr, h2f, hsum, ld, ld16};

/// Columns per register tile: four i32 sums and four f32 accumulators beside a chunk
/// pair's weights and scales, inside the 16 YMM registers.
const TILE: usize = 4;
/// Columns whose activations stay in L1/L2 while every row of a row block passes them.
const PANEL: usize = 16;

/// One unpacked super-block of a row.
#[derive(Clone, Copy)]
struct Block {
    /// For half h and pair p, the woven chunks 4h + 2p and 4h + 2p + 1 ([`blend_pair`]) at
    /// `w[4h + 2p]` and `w[4h + 2p + 1]`: the stored quants, 0..64.
    w: [__m256i; 8],
    /// The i16 scales of pair (h, p) at `pair_scales[2h + p]`, lanes as the woven products.
    pair_scales: [__m256i; 4],
    /// The sixteen scales as i16, for the `+32` correction.
    scales: __m256i,
    d: f32,
}

/// A block of rows, unpacked: `blocks[r · nsb + b]` is row r's super-block b.
struct Rows {
    blocks: Vec<Block>,
    nsb: usize,
}

impl Rows {
    /// Unpacks `rows` (whole Q6_K rows of `nsb` super-blocks each, back to back).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn unpack(&mut self, rows: &[u8]) {
        let m4 = _mm256_set1_epi8(0xf);
        let m2 = _mm256_set1_epi8(3);
        let hbits = |v: __m256i| _mm256_slli_epi16::<4>(_mm256_and_si256(v, m2));
        self.blocks.clear();
        for x in rows.chunks_exact(Q6K_BYTES) {
            // SAFETY: AVX2 is this function's contract; the arrays are bounds-checked.
            let scales = unsafe { ld16(arr(x, 192)) };
            let mut w = [_mm256_setzero_si256(); 8];
            let mut pair_scales = [_mm256_setzero_si256(); 4];
            for h in 0..2 {
                // SAFETY: as above.
                let (ql0, ql1, qh) = unsafe {
                    (
                        ld(arr(x, 64 * h)),
                        ld(arr(x, 64 * h + 32)),
                        ld(arr(x, 128 + 32 * h)),
                    )
                };
                let q = [
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
                ];
                for p in 0..2 {
                    (w[4 * h + 2 * p], w[4 * h + 2 * p + 1]) = blend_pair(q[2 * p], q[2 * p + 1]);
                    // SAFETY: as above.
                    let pattern = unsafe { ld16(&Q6K_PAIR_SCALES[2 * h + p]) };
                    pair_scales[2 * h + p] =
                        _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, pattern));
                }
            }
            self.blocks.push(Block {
                w,
                pair_scales,
                scales: _mm256_cvtepi8_epi16(scales),
                d: h2f(x, 208),
            });
        }
    }
}

/// `out[i * ncols + j] = w row i · act row j` for Q6_K weights, with `act` from
/// `blend_sub_blocks` (each chunk pair woven as the weights are).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
///
/// # Panics
/// If the lengths do not describe `nrows` × `ncols` products of whole super-blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn matmul_q6_k(
    w: &[u8],
    nrows: usize,
    act: &[u8],
    ncols: usize,
    out: &mut [f32],
) {
    assert!(nrows > 0 && ncols > 0, "q6_k rows: empty product");
    let (wrb, arb) = (w.len() / nrows, act.len() / ncols);
    let nsb = wrb / Q6K_BYTES;
    assert!(
        w.len() == nrows * wrb && wrb == nsb * Q6K_BYTES && arb == nsb * Q8K_BYTES,
        "q6_k rows: bad weight or activation length"
    );
    assert_eq!(out.len(), nrows * ncols, "q6_k rows: bad output length");
    let block_rows = (ROW_BLOCK_BYTES / (nsb * size_of::<Block>())).max(1);
    let mut rows = Rows {
        blocks: Vec::with_capacity(block_rows.min(nrows) * nsb),
        nsb,
    };
    for i0 in (0..nrows).step_by(block_rows) {
        let nr = block_rows.min(nrows - i0);
        rows.unpack(&w[i0 * wrb..(i0 + nr) * wrb]);
        for j0 in (0..ncols).step_by(PANEL) {
            let nc = PANEL.min(ncols - j0);
            for r in 0..nr {
                let dst = &mut out[(i0 + r) * ncols + j0..][..nc];
                let mut j = 0;
                while j < nc {
                    let c = TILE.min(nc - j);
                    let a = &act[(j0 + j) * arb..(j0 + j + c) * arb];
                    let o = &mut dst[j..j + c];
                    match c {
                        4 => tile::<4>(&rows, r, a, arb, o),
                        3 => tile::<3>(&rows, r, a, arb, o),
                        2 => tile::<2>(&rows, r, a, arb, o),
                        _ => tile::<1>(&rows, r, a, arb, o),
                    }
                    j += c;
                }
            }
        }
    }
}

/// Row `r` of `rows` · the `C` columns of `a` (stride `arb`) into `out`.
#[allow(clippy::needless_range_loop)] // col indexes the sums, accumulators and columns alike
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile<const C: usize>(rows: &Rows, r: usize, a: &[u8], arb: usize, out: &mut [f32]) {
    let nsb = rows.nsb;
    let mut acc = [_mm256_setzero_ps(); C];
    for (b, x) in rows.blocks[r * nsb..(r + 1) * nsb].iter().enumerate() {
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
