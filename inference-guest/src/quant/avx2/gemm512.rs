//! Q8_0 prefill on AVX-512 VNNI with 512-bit vectors: each ZMM register holds the eight
//! f32 lanes of two outputs side by side (one weight row × two activation columns), so one
//! `vpdpbusd`, one conversion and one FMA serve two outputs' blocks.
//!
//! Why not the 256-bit tile's sign trick: AVX-512 has no `vpsignb`. `vpdpbusd` multiplies
//! unsigned by signed bytes, so the weights go in as `w + 128` (a XOR, once per row and
//! block) and each lane starts from `-128 · Σa` over its four activation bytes (once per
//! column and block): `Σ (w + 128)·a − 128·Σa = Σ w·a`, the exact integers the decode kernel
//! sums in that lane, for every byte value. The floats then follow the decode kernel's order
//! (`acc = fma(dw·da, float(lane sum), acc)`, the eight lanes summed by [`super::hsum`]), so
//! prefill and decode agree to the bit.
//!
//! The weight scales are converted to f32 once per call ([`row_scales`]); each tile then
//! broadcasts them from memory instead of converting an f16 per row, block and panel.

use alloc::vec::Vec;
use core::arch::x86_64::*;

use super::gemm::{PANEL, Prepared, Q8_BYTES, ROW_BLOCK_BYTES};
use super::hsum;

/// Weight rows per register tile: 4 rows × 2 column pairs is 8 accumulators, which leaves
/// room among the 32 ZMM registers for the operands of a block.
const ROWS: usize = 4;

/// One tile's operands (as `gemm`'s tile, plus `ws`, the f32 weight scales at its first row,
/// `nb` per row).
#[derive(Clone, Copy)]
struct Tile {
    w: *const u8,
    ws: *const f32,
    wrb: usize,
    a: *const u8,
    arb: usize,
    nb: usize,
    out: *mut f32,
    stride: usize,
    sc: *const f32,
}

impl Tile {
    /// The tile `rows` rows and `cols` columns further on.
    ///
    /// # Safety
    /// The moved tile must lie inside the matrices `self` points into.
    unsafe fn at(self, rows: usize, cols: usize) -> Self {
        // SAFETY: the caller keeps the offsets inside the same allocations.
        unsafe {
            Self {
                w: self.w.add(rows * self.wrb),
                ws: self.ws.add(rows * self.nb),
                a: self.a.add(cols * self.arb),
                out: self.out.add(rows * self.stride + cols),
                sc: self.sc.add(cols),
                ..self
            }
        }
    }
}

/// `out[i * ncols + j] = w row i · act row j` for Q8_0 weights and activations.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C and AVX-512 F/VL/BW/VNNI.
///
/// # Panics
/// If the lengths do not describe `nrows` × `ncols` products of whole Q8_0 blocks.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
pub(super) unsafe fn matmul_q8_0(
    w: &[u8],
    nrows: usize,
    act: &[u8],
    ncols: usize,
    out: &mut [f32],
) {
    assert!(nrows > 0 && ncols > 0, "gemm512: empty product");
    let (wrb, arb) = (w.len() / nrows, act.len() / ncols);
    let nb = arb / Q8_BYTES;
    // These checks keep every pointer offset below inside the three slices.
    assert!(
        w.len() == nrows * wrb && wrb == nb * Q8_BYTES,
        "gemm512: bad weight length"
    );
    assert!(
        act.len() == ncols * arb && arb == nb * Q8_BYTES,
        "gemm512: bad activation length"
    );
    assert_eq!(out.len(), nrows * ncols, "gemm512: bad output length");
    let block_rows = (ROW_BLOCK_BYTES / wrb.max(1)).max(ROWS) / ROWS * ROWS;
    let ws = row_scales(w, wrb);
    let prep = Prepared::new(act, arb, nb, ncols, false);
    let base = Tile {
        w: w.as_ptr(),
        ws: ws.as_ptr(),
        wrb,
        a: act.as_ptr(),
        arb,
        nb,
        out: out.as_mut_ptr(),
        stride: ncols,
        sc: prep.scales.as_ptr(),
    };
    for i0 in (0..nrows).step_by(block_rows) {
        let nr = block_rows.min(nrows - i0);
        for j0 in (0..ncols).step_by(PANEL) {
            let nc = PANEL.min(ncols - j0);
            // SAFETY: rows i0..i0 + nr and columns j0..j0 + nc are inside the slices checked
            // above; the panel's scale table starts at its first column's entries.
            unsafe {
                let t = Tile {
                    sc: prep.scales.as_ptr().add((j0 / PANEL) * nb * PANEL),
                    ..base.at(i0, j0)
                };
                panel(t, nr, nc);
            }
        }
    }
}

/// Every row's block scales as f32, `[row][block]`.
#[target_feature(enable = "avx2,f16c")]
fn row_scales(w: &[u8], wrb: usize) -> Vec<f32> {
    w.chunks_exact(Q8_BYTES)
        .map(|blk| super::h2f(blk, 0))
        .take(w.len() / wrb * (wrb / Q8_BYTES))
        .collect()
}

/// All `nr` rows × `nc` (≤ [`PANEL`]) columns from `t`: tiles of [`ROWS`] rows (then single
/// rows) × four columns (then the last one to three).
///
/// # Safety
/// As [`matmul_q8_0`]; `t` points at `nr` rows, `nc` columns and their outputs.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
unsafe fn panel(t: Tile, nr: usize, nc: usize) {
    let mut i = 0;
    // SAFETY: every tile below stays inside rows 0..nr and columns 0..nc of `t`.
    unsafe {
        while i < nr {
            let r = if i + ROWS <= nr { ROWS } else { 1 };
            let mut j = 0;
            while j < nc {
                let cols = (nc - j).min(4);
                let u = t.at(i, j);
                match (r == ROWS, cols > 2) {
                    (true, true) => tile::<ROWS, 2>(u, cols),
                    (true, false) => tile::<ROWS, 1>(u, cols),
                    (false, true) => tile::<1, 2>(u, cols),
                    (false, false) => tile::<1, 1>(u, cols),
                }
                j += cols;
            }
            i += r;
        }
    }
}

/// Rows `0..R` × columns `0..cols` (`cols` ≤ `2P`), two columns per register; a missing
/// second column of the last pair repeats the first and is not stored.
///
/// # Safety
/// As [`panel`]; `t` points at `R` rows and `cols` columns and their outputs.
// Register tiles index rows and pairs by number: each (r, p) pairs `wz`/`ws` of row r with
// pair p's activations and unrolls into fixed registers.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
unsafe fn tile<const R: usize, const P: usize>(t: Tile, cols: usize) {
    let bias = _mm512_set1_epi8(-128);
    // Lane k of pair p takes column 2p's scale in its low half and 2p + 1's in its high one.
    let pick = [
        _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
        _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3),
    ];
    let col = |c: usize| if c < cols { c } else { c - 1 };
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    for b in 0..t.nb {
        // SAFETY: rows < R, columns < cols and blocks < nb are inside the tile (contract);
        // the scale table has an entry for every (block, panel column) plus 4 of padding.
        unsafe {
            let ad = _mm512_castps128_ps512(_mm_loadu_ps(t.sc.add(b * PANEL)));
            let mut a = [_mm512_setzero_si512(); P];
            let mut from = [_mm512_setzero_si512(); P];
            let mut da = [_mm512_setzero_ps(); P];
            for p in 0..P {
                let at = |c: usize| t.a.add(col(c) * t.arb + b * Q8_BYTES + 2).cast();
                let lo = _mm512_castsi256_si512(_mm256_loadu_si256(at(2 * p)));
                a[p] = _mm512_inserti64x4::<1>(lo, _mm256_loadu_si256(at(2 * p + 1)));
                // −128 · Σa per lane, what the biased weights add.
                let biased = _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, a[p]);
                from[p] = _mm512_sub_epi32(_mm512_setzero_si512(), biased);
                da[p] = _mm512_permutexvar_ps(pick[p], ad);
            }
            for r in 0..R {
                let q = _mm256_loadu_si256(t.w.add(r * t.wrb + b * Q8_BYTES + 2).cast());
                let wz = _mm512_xor_si512(_mm512_broadcast_i64x4(q), bias);
                let dw = _mm512_set1_ps(*t.ws.add(r * t.nb + b));
                for p in 0..P {
                    let sum = _mm512_dpbusd_epi32(from[p], wz, a[p]);
                    let dd = _mm512_mul_ps(dw, da[p]);
                    acc[r][p] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(sum), acc[r][p]);
                }
            }
        }
    }
    for r in 0..R {
        for p in 0..P {
            let v = _mm512_castps_pd(acc[r][p]);
            let halves = [
                _mm256_castpd_ps(_mm512_castpd512_pd256(v)),
                _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(v)),
            ];
            for (h, half) in halves.into_iter().enumerate() {
                let c = 2 * p + h;
                if c < cols {
                    // SAFETY: output (r, c) is inside the tile (contract).
                    unsafe { *t.out.add(r * t.stride + c) = hsum(half) };
                }
            }
        }
    }
}
