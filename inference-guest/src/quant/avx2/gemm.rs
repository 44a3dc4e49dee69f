//! Prefill products (two or more activation columns) of Q8_0 weights with Q8_0 activations,
//! shaped like llama.cpp's tinyBLAS: a register tile of weight rows × activation columns,
//! block scales converted four at a time with F16C, and no bounds checks or stack spills
//! inside the block loop (the `blocks32` tiles, generic over six formats, had both, and ran
//! at about half tinyBLAS's speed).
//!
//! Each output is computed with the same operations, in the same order, as the `blocks32`
//! decode kernel computes it (tinyBLAS's: eight f32 lanes per output,
//! `acc = fma(dw·da, float(lane sums), acc)`, then the lanes summed), so prefill and decode
//! agree to the bit and both keep llama.cpp's numerics.
//!
//! Rows are taken in blocks that stay in L2 while each 16-column activation panel (in L1)
//! passes over them; otherwise a 512-token prompt re-reads every weight from L3 per panel.
//!
//! This is the AVX2 build ([`base`]). Q4_0 has its own layout (`gemm_q4_0`, one row per
//! lane); where AVX-512 VNNI is there, `gemm512` (Q8_0) and `gemm512_q4_0` tile in 512-bit
//! registers instead, with the same per-output arithmetic. The pieces they share (the
//! activation tables, the f16 reader) live here.

use alloc::vec;
use alloc::vec::Vec;
use core::arch::x86_64::*;

use super::blocks32::pairsum_avx2;
use super::hsum;
use crate::ggml_type::GgmlType;

/// Bytes of a Q8_0 block (weights and activations alike): f16 scale, 32 × i8.
pub(super) const Q8_BYTES: usize = 34;
/// Activation columns per panel: 16 × a 1536-value row is 26 KiB, inside L1 with the tile's
/// weight rows.
pub(super) const PANEL: usize = 16;
/// Weight bytes per row block: half of a Zen 3 L2, leaving room for the activations.
pub(super) const ROW_BLOCK_BYTES: usize = 256 * 1024;

/// Whether this module computes `ty`'s products.
pub(super) fn handles(ty: GgmlType) -> bool {
    ty == GgmlType::Q8_0
}

/// One tile's operands: `w` at its first weight row, `a` at its first activation column,
/// `out` at the output of both (row stride `stride`); `sc` at the first column's
/// entries of the panel's [`Prepared`] tables.
#[derive(Clone, Copy)]
struct Tile {
    w: *const u8,
    wrb: usize,
    a: *const u8,
    arb: usize,
    nb: usize,
    out: *mut f32,
    stride: usize,
    sc: *const f32,
}

/// Per-column block data every weight row reuses, computed once per call, laid out
/// `[panel][block][PANEL]` so a tile reads four columns' values with one load.
pub(super) struct Prepared {
    /// Activation block scales as f32.
    pub(super) scales: Vec<f32>,
    /// `8 · Σ quants` of each activation block (Q4_0's `q + 8` offset); empty for Q8_0.
    pub(super) offsets: Vec<i32>,
}

impl Prepared {
    /// The tables for `ncols` activation rows of `nb` Q8_0 blocks (`arb` bytes each), with 4
    /// entries of padding so a 4-lane load at the last column stays inside.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn new(act: &[u8], arb: usize, nb: usize, ncols: usize, offsets: bool) -> Self {
        let len = ncols.div_ceil(PANEL) * nb * PANEL + 4;
        let mut p = Self {
            scales: vec![0.0; len],
            offsets: vec![0; if offsets { len } else { 0 }],
        };
        for (j, row) in act.chunks_exact(arb).enumerate() {
            for (b, blk) in row.chunks_exact(Q8_BYTES).enumerate() {
                let at = ((j / PANEL) * nb + b) * PANEL + j % PANEL;
                p.scales[at] = super::h2f(blk, 0);
                if offsets {
                    // SAFETY: AVX2 is this function's contract; `blk` is one whole block.
                    let q = unsafe { super::ld(super::arr(blk, 2)) };
                    p.offsets[at] = super::hsum_i32(pairsum_avx2(_mm256_set1_epi8(8), q));
                }
            }
        }
        p
    }
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
                a: self.a.add(cols * self.arb),
                out: self.out.add(rows * self.stride + cols),
                sc: self.sc.add(cols),
                ..self
            }
        }
    }
}

/// Stamps out a panel walker: tiles of `$r` rows × 4 columns, then the row and column tails
/// with smaller tiles of the same kernel.
macro_rules! panel {
    ($name:ident, $tile:ident, $r:literal, $feat:literal) => {
        /// All `nr` rows × `nc` (≤ [`PANEL`]) columns from `t`.
        ///
        /// # Safety
        /// The CPU supports `$feat`; `t` points at `nr` readable rows, `nc` columns and
        /// outputs.
        #[target_feature(enable = $feat)]
        unsafe fn $name(t: Tile, nr: usize, nc: usize) {
            let mut i = 0;
            // SAFETY: every tile below stays inside rows 0..nr and columns 0..nc of `t`.
            unsafe {
                while i < nr {
                    let r = if i + $r <= nr { $r } else { 1 };
                    let mut j = 0;
                    while j + 4 <= nc {
                        let u = t.at(i, j);
                        if r == $r {
                            $tile::<$r, 4>(u)
                        } else {
                            $tile::<1, 4>(u)
                        }
                        j += 4;
                    }
                    let u = t.at(i, j);
                    match (r == $r, nc - j) {
                        (true, 3) => $tile::<$r, 3>(u),
                        (true, 2) => $tile::<$r, 2>(u),
                        (true, 1) => $tile::<$r, 1>(u),
                        (false, 3) => $tile::<1, 3>(u),
                        (false, 2) => $tile::<1, 2>(u),
                        (false, 1) => $tile::<1, 1>(u),
                        _ => {}
                    }
                    i += r;
                }
            }
        }
    };
}

/// One f16 (little-endian at `p`) as f32.
///
/// # Safety
/// F16C; `p` points at 2 readable bytes.
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY: 2 readable bytes by contract; unaligned read.
    let h = unsafe { p.cast::<u16>().read_unaligned() };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h))))
}

/// The scales of block `b` of columns `0..4` (those past `C` are other columns' or 0).
///
/// # Safety
/// `t.sc` points into a [`Prepared`] table at a column of this panel, `b < nb`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn col_scales(t: Tile, b: usize) -> __m128 {
    // SAFETY: the table has an entry for every (block, panel column) plus 4 of padding.
    unsafe { _mm_loadu_ps(t.sc.add(b * PANEL)) }
}

/// Lane `c` of each 128-bit half of `v`, broadcast.
#[inline]
#[target_feature(enable = "avx2")]
fn lane(v: __m256, c: usize) -> __m256 {
    match c {
        0 => _mm256_shuffle_ps::<0x00>(v, v),
        1 => _mm256_shuffle_ps::<0x55>(v, v),
        2 => _mm256_shuffle_ps::<0xaa>(v, v),
        _ => _mm256_shuffle_ps::<0xff>(v, v),
    }
}

/// Stamps out the kernels for one instruction set: `$feat` are its target features,
/// `$pairsum` its byte-product sum and `$r8` the weight rows of a Q8_0 tile.
macro_rules! gemm_kernels {
    ($name:ident, $feat:literal, $pairsum:ident, $r8:literal) => {
        pub(super) mod $name {
            use super::*;

            /// `out[i * ncols + j] = w row i · act row j`.
            ///
            /// # Safety
            /// The CPU must support `$feat`.
            ///
            /// # Panics
            /// If `ty` is not handled here or the lengths do not describe `nrows` × `ncols`
            /// products of whole blocks.
            #[target_feature(enable = $feat)]
            pub(in crate::quant::avx2) unsafe fn matmul(
                ty: GgmlType,
                w: &[u8],
                nrows: usize,
                act: &[u8],
                ncols: usize,
                out: &mut [f32],
            ) {
                assert!(handles(ty), "gemm: {} is not Q8_0", ty.name());
                let wb = Q8_BYTES;
                assert!(nrows > 0 && ncols > 0, "gemm: empty product");
                let (wrb, arb) = (w.len() / nrows, act.len() / ncols);
                let nb = arb / Q8_BYTES;
                // These checks keep every pointer offset below inside the three slices.
                assert!(
                    w.len() == nrows * wrb && wrb == nb * wb,
                    "gemm: bad weight length"
                );
                assert!(
                    act.len() == ncols * arb && arb == nb * Q8_BYTES,
                    "gemm: bad activation length"
                );
                assert_eq!(out.len(), nrows * ncols, "gemm: bad output length");
                let block_rows = (ROW_BLOCK_BYTES / wrb.max(1)).max(4) / 4 * 4;
                let prep = Prepared::new(act, arb, nb, ncols, false);
                let base = Tile {
                    w: w.as_ptr(),
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
                        // SAFETY: rows i0..i0 + nr and columns j0..j0 + nc are inside the
                        // slices checked above; `$feat` is this function's contract.
                        unsafe {
                            let panel = (j0 / PANEL) * nb * PANEL;
                            let t = Tile {
                                sc: prep.scales.as_ptr().add(panel),
                                ..base.at(i0, j0)
                            };
                            panel_q8(t, nr, nc);
                        }
                    }
                }
            }

            panel!(panel_q8, tile_q8, $r8, $feat);

            /// Q8_0 rows `0..R` × columns `0..C`.
            ///
            /// # Safety
            /// `$feat`; `t` points at `R` Q8_0 weight rows, `C` activation columns and their
            /// outputs.
            // Register tiles index rows and columns by number: each (r, c) pairs `wq[r]`,
            // `dd[r]` and column c's quants, and unrolls into fixed registers.
            #[allow(clippy::needless_range_loop)]
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn tile_q8<const R: usize, const C: usize>(t: Tile) {
                let mut acc = [[_mm256_setzero_ps(); C]; R];
                for b in 0..t.nb {
                    // SAFETY: rows < R, columns < C and blocks < nb are inside the tile (contract).
                    unsafe {
                        let ad = col_scales(t, b);
                        let mut wq = [_mm256_setzero_si256(); R];
                        let mut dd = [_mm256_setzero_ps(); R];
                        for r in 0..R {
                            let blk = t.w.add(r * t.wrb + b * Q8_BYTES);
                            wq[r] = _mm256_loadu_si256(blk.add(2).cast());
                            // dw·da for the C columns, in both halves for `lane`.
                            let d = _mm_mul_ps(_mm_set1_ps(f16_at(blk)), ad);
                            dd[r] = _mm256_set_m128(d, d);
                        }
                        for c in 0..C {
                            let aq =
                                _mm256_loadu_si256(t.a.add(c * t.arb + b * Q8_BYTES + 2).cast());
                            for r in 0..R {
                                // |w| · (a with w's sign): exact, activations lie in [-127, 127].
                                let p = $pairsum(
                                    _mm256_sign_epi8(wq[r], wq[r]),
                                    _mm256_sign_epi8(aq, wq[r]),
                                );
                                acc[r][c] = _mm256_fmadd_ps(
                                    lane(dd[r], c),
                                    _mm256_cvtepi32_ps(p),
                                    acc[r][c],
                                );
                            }
                        }
                    }
                }
                for r in 0..R {
                    for c in 0..C {
                        // SAFETY: output (r, c) is inside the tile (contract).
                        unsafe { *t.out.add(r * t.stride + c) = hsum(acc[r][c]) };
                    }
                }
            }
        }
    };
}

gemm_kernels!(base, "avx2,fma,f16c", pairsum_avx2, 2);
