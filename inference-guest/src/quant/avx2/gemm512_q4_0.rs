//! Q4_0 prefill on AVX-512 VNNI: sixteen weight rows side by side, one per i32 lane.
//!
//! Q4_0's decode arithmetic keeps one f32 per output and adds each block's exact integer
//! total with one FMA (`acc = fma(float(total), dw·da, acc)`, ggml's repacked kernels). So
//! the lanes of a register need not be parts of one output's sum: here lane k holds row k's
//! block total, and a block product is eight `vpdpbusd`, each multiplying four nibbles of
//! every row by the same four activation bytes (broadcast from memory). No horizontal
//! reduction is left, where the 256-bit tile spends a tree of `hadd`s per block.
//!
//! The rows' nibbles are transposed into that layout ([`Rows::load`]) once per group of
//! sixteen rows and reused for every column; the f32 block scales come with them.

use alloc::vec;
use alloc::vec::Vec;
use core::arch::x86_64::*;

use super::gemm::{PANEL, Prepared, Q8_BYTES};
use super::gemm_q4_0::{Cols, lane_rows};
use super::sink::Sink;

/// Bytes of a Q4_0 block: f16 scale, 16 bytes of nibbles.
const Q4_BYTES: usize = 18;
/// Weight rows per group: one per i32 lane of a ZMM register.
const LANES: usize = 16;
/// Columns per register tile: 8 f32 and 8 i32 accumulators, 16 of the 32 ZMM registers.
const COLS: usize = 8;

/// Sixteen rows' blocks in lane order: for block b, eight vectors `q[b][j]` whose lane k
/// holds row k's values `4j..4j + 4` (as the stored `q + 8`), and `d[b]`, the rows' scales.
struct Rows {
    q: Vec<__m512i>,
    d: Vec<__m512>,
}

impl Rows {
    #[target_feature(enable = "avx512f")]
    fn new(nb: usize) -> Self {
        Self {
            q: vec![_mm512_setzero_si512(); nb * 8],
            d: vec![_mm512_setzero_ps(); nb],
        }
    }

    /// Transposes the rows at `row[0..16]` (`nb` blocks each) into `self`.
    ///
    /// # Safety
    /// AVX-512 F/BW and F16C; each `row[k]` points at a readable Q4_0 row of `nb` blocks.
    #[target_feature(enable = "avx2,f16c,avx512f,avx512bw")]
    unsafe fn load(&mut self, row: &[*const u8; LANES], nb: usize) {
        let m4 = _mm512_set1_epi8(0xf);
        for b in 0..nb {
            // SAFETY: block b of every row is readable (contract); loads are unaligned.
            unsafe {
                let quants = |k: usize| _mm_loadu_si128(row[k].add(b * Q4_BYTES + 2).cast());
                // y[m]'s 128-bit lane l: row m + 4l's 16 bytes of nibbles.
                let mut y = [_mm512_setzero_si512(); 4];
                for (m, ym) in y.iter_mut().enumerate() {
                    let v = _mm512_castsi128_si512(quants(m));
                    let v = _mm512_inserti32x4::<1>(v, quants(m + 4));
                    let v = _mm512_inserti32x4::<2>(v, quants(m + 8));
                    *ym = _mm512_inserti32x4::<3>(v, quants(m + 12));
                }
                // A 4 × 4 dword transpose in each 128-bit lane: t[j]'s lane k is row k's
                // dword j (lane 4l + m holds row 4l + m, so the lanes come out in row order).
                let lo01 = _mm512_unpacklo_epi32(y[0], y[1]);
                let hi01 = _mm512_unpackhi_epi32(y[0], y[1]);
                let lo23 = _mm512_unpacklo_epi32(y[2], y[3]);
                let hi23 = _mm512_unpackhi_epi32(y[2], y[3]);
                let t = [
                    _mm512_unpacklo_epi64(lo01, lo23),
                    _mm512_unpackhi_epi64(lo01, lo23),
                    _mm512_unpacklo_epi64(hi01, hi23),
                    _mm512_unpackhi_epi64(hi01, hi23),
                ];
                // Byte i's low nibble is value i, its high nibble value 16 + i.
                for (j, tj) in t.into_iter().enumerate() {
                    self.q[b * 8 + j] = _mm512_and_si512(tj, m4);
                    self.q[b * 8 + 4 + j] = _mm512_and_si512(_mm512_srli_epi16::<4>(tj), m4);
                }
                let mut d = [0.0f32; LANES];
                for (k, dk) in d.iter_mut().enumerate() {
                    *dk = super::gemm::f16_at(row[k].add(b * Q4_BYTES));
                }
                self.d[b] = _mm512_loadu_ps(d.as_ptr());
            }
        }
    }
}

/// Output (i, j) = w row i · act row j into `out`, for Q4_0 weights and Q8_0 activations.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C and AVX-512 F/VL/BW/VNNI.
///
/// # Panics
/// If the lengths do not describe `nrows` × `ncols` products of whole blocks.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
pub(super) unsafe fn matmul_q4_0(
    w: &[u8],
    nrows: usize,
    act: &[u8],
    ncols: usize,
    out: &mut impl Sink,
) {
    assert!(nrows > 0 && ncols > 0, "gemm512_q4_0: empty product");
    let (wrb, arb) = (w.len() / nrows, act.len() / ncols);
    let nb = arb / Q8_BYTES;
    // These checks keep every pointer offset below inside the three slices.
    assert!(
        w.len() == nrows * wrb && wrb == nb * Q4_BYTES,
        "gemm512_q4_0: bad weight length"
    );
    assert!(
        act.len() == ncols * arb,
        "gemm512_q4_0: bad activation length"
    );
    let prep = Prepared::new(act, arb, nb, ncols, true);
    let mut rows = Rows::new(nb);
    for i0 in (0..nrows).step_by(LANES) {
        let live = LANES.min(nrows - i0);
        let row = lane_rows(w, wrb, i0, nrows);
        // SAFETY: every row index is below nrows; the CPU features are this function's.
        unsafe { rows.load(&row, nb) };
        let mut j = 0;
        while j < ncols {
            let c = COLS.min(ncols - j).min(PANEL - j % PANEL);
            let t = Cols::new((act, arb, nb), &prep, j, i0, live);
            // SAFETY: columns j..j + c and rows i0..i0 + live are inside the slices
            // checked above; `t.sc`/`t.off` point at column j's entries of its panel.
            unsafe {
                match c {
                    8 => tile::<8>(&rows, t, nb, out),
                    7 => tile::<7>(&rows, t, nb, out),
                    6 => tile::<6>(&rows, t, nb, out),
                    5 => tile::<5>(&rows, t, nb, out),
                    4 => tile::<4>(&rows, t, nb, out),
                    3 => tile::<3>(&rows, t, nb, out),
                    2 => tile::<2>(&rows, t, nb, out),
                    _ => tile::<1>(&rows, t, nb, out),
                }
            }
            j += c;
        }
    }
}

/// The group's sixteen rows × columns `0..C` of `t`.
///
/// # Safety
/// AVX-512 VNNI and the rest of [`matmul_q4_0`]'s features; `t` describes `C` columns of
/// `nb` blocks inside one panel, and `live` rows of outputs.
#[allow(clippy::needless_range_loop)] // c indexes the accumulators and the columns alike
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
unsafe fn tile<const C: usize>(rows: &Rows, t: Cols, nb: usize, out: &mut impl Sink) {
    let mut acc = [_mm512_setzero_ps(); C];
    for b in 0..nb {
        let q = &rows.q[b * 8..b * 8 + 8];
        let mut sum = [_mm512_setzero_si512(); C];
        // SAFETY: columns < C and blocks < nb are inside the activations and the panel's
        // tables (contract); the reads are unaligned-safe.
        unsafe {
            for (j, qj) in q.iter().enumerate() {
                for c in 0..C {
                    let at = t.a.add(c * t.arb + b * Q8_BYTES + 2 + 4 * j);
                    let a4 = _mm512_set1_epi32(at.cast::<i32>().read_unaligned());
                    sum[c] = _mm512_dpbusd_epi32(sum[c], *qj, a4);
                }
            }
            for c in 0..C {
                // (q + 8)·a − 8·a = q·a; exact.
                let off = _mm512_set1_epi32(*t.off.add(b * PANEL + c));
                let total = _mm512_sub_epi32(sum[c], off);
                let scale = _mm512_mul_ps(rows.d[b], _mm512_set1_ps(*t.sc.add(b * PANEL + c)));
                acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total), scale, acc[c]);
            }
        }
    }
    for c in 0..C {
        let mut lanes = [0.0f32; LANES];
        // SAFETY: `lanes` is 16 writable f32s; storeu has no alignment requirement.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc[c]) };
        out.put_rows(t.i0, t.j + c, &lanes[..t.live]);
    }
}
