//! Q4_0 prefill on AVX2: eight weight rows side by side, one per i32 lane (the 256-bit
//! counterpart of `gemm512_q4_0`, and the layout of ggml's repacked `q4_0_8x8` kernels).
//!
//! Q4_0's decode arithmetic keeps one f32 per output and adds each block's exact integer
//! total with one FMA (`acc = fma(float(total), dw·da, acc)`). So lane k of a register can
//! hold row k's block total: a block product is eight `maddubs`, each multiplying four values
//! of every row by the same four activation bytes (broadcast from memory), added in i16
//! (exact: 8 × 2 × 15 × 128 < 2¹⁵) and widened once with `madd`. The register-tiled kernel of
//! `gemm` (two rows × four columns in one register) instead spent a tree of seven `hadd`s on
//! every block, which held Q4_0 prefill at 0.84x llama.cpp on the AVX2-only machine.
//!
//! The rows' nibbles are transposed into that layout ([`Groups::load`]) once per row block
//! and reused for every activation panel; the f32 block scales come with them. A row block's
//! groups stay in L2 while each 16-column panel (in L1) passes over them.

use alloc::vec;
use alloc::vec::Vec;
use core::arch::x86_64::*;

use super::gemm::{PANEL, Prepared, Q8_BYTES, ROW_BLOCK_BYTES};
use super::sink::Sink;

/// Bytes of a Q4_0 block: f16 scale, 16 bytes of nibbles.
const Q4_BYTES: usize = 18;
/// Weight rows per group: one per i32 lane of a YMM register.
const LANES: usize = 8;
/// Columns per register tile: 4 i16 sums and 4 f32 accumulators, with the weights and the
/// broadcast activations inside the 16 YMM registers.
const COLS: usize = 4;

/// Groups of eight rows in lane order: for group g and block b, eight vectors
/// `q[(g·nb + b)·8 + j]` whose lane k holds row k's values `4j..4j + 4` (as the stored
/// `q + 8`), and `d[g·nb + b]`, the rows' scales.
struct Groups {
    q: Vec<__m256i>,
    d: Vec<__m256>,
    nb: usize,
}

impl Groups {
    #[target_feature(enable = "avx2")]
    fn new(groups: usize, nb: usize) -> Self {
        Self {
            q: vec![_mm256_setzero_si256(); groups * nb * 8],
            d: vec![_mm256_setzero_ps(); groups * nb],
            nb,
        }
    }

    /// Transposes the rows at `row[0..8]` into group `g`.
    ///
    /// # Safety
    /// AVX2 and F16C; each `row[k]` points at a readable Q4_0 row of `nb` blocks; `g` is
    /// below the group count `self` was made for.
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn load(&mut self, g: usize, row: &[*const u8; LANES]) {
        let m4 = _mm256_set1_epi8(0xf);
        let nb = self.nb;
        for b in 0..nb {
            // SAFETY: block b of every row is readable (contract); loads are unaligned.
            unsafe {
                let quants = |k: usize| _mm_loadu_si128(row[k].add(b * Q4_BYTES + 2).cast());
                // y[m]'s 128-bit lane l: row m + 4l's 16 bytes of nibbles.
                let y: [__m256i; 4] =
                    core::array::from_fn(|m| _mm256_set_m128i(quants(m + 4), quants(m)));
                // A 4 × 4 dword transpose in each 128-bit lane: t[j]'s lane k is row k's
                // dword j (lane 4l + m holds row 4l + m, so the lanes come out in row order).
                let lo01 = _mm256_unpacklo_epi32(y[0], y[1]);
                let hi01 = _mm256_unpackhi_epi32(y[0], y[1]);
                let lo23 = _mm256_unpacklo_epi32(y[2], y[3]);
                let hi23 = _mm256_unpackhi_epi32(y[2], y[3]);
                let t = [
                    _mm256_unpacklo_epi64(lo01, lo23),
                    _mm256_unpackhi_epi64(lo01, lo23),
                    _mm256_unpacklo_epi64(hi01, hi23),
                    _mm256_unpackhi_epi64(hi01, hi23),
                ];
                // Byte i's low nibble is value i, its high nibble value 16 + i.
                let at = (g * nb + b) * 8;
                for (j, tj) in t.into_iter().enumerate() {
                    self.q[at + j] = _mm256_and_si256(tj, m4);
                    self.q[at + 4 + j] = _mm256_and_si256(_mm256_srli_epi16::<4>(tj), m4);
                }
                let d: [f32; LANES] =
                    core::array::from_fn(|k| super::gemm::f16_at(row[k].add(b * Q4_BYTES)));
                self.d[g * nb + b] = _mm256_loadu_ps(d.as_ptr());
            }
        }
    }
}

/// Output (i, j) = w row i · act row j into `out`, for Q4_0 weights and Q8_0 activations.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
///
/// # Panics
/// If the lengths do not describe `nrows` × `ncols` products of whole blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn matmul_q4_0(
    w: &[u8],
    nrows: usize,
    act: &[u8],
    ncols: usize,
    out: &mut impl Sink,
) {
    assert!(nrows > 0 && ncols > 0, "gemm_q4_0: empty product");
    let (wrb, arb) = (w.len() / nrows, act.len() / ncols);
    let nb = arb / Q8_BYTES;
    // These checks keep every pointer offset below inside the three slices.
    assert!(
        w.len() == nrows * wrb && wrb == nb * Q4_BYTES,
        "gemm_q4_0: bad weight length"
    );
    assert!(
        act.len() == ncols * arb && arb == nb * Q8_BYTES,
        "gemm_q4_0: bad activation length"
    );
    let prep = Prepared::new(act, arb, nb, ncols, true);
    // A group's transposed blocks take 9 × 32 bytes each.
    let group_bytes = nb * 9 * 32;
    let ngroups = nrows.div_ceil(LANES);
    let block_groups = (ROW_BLOCK_BYTES / group_bytes.max(1)).clamp(1, ngroups);
    let mut groups = Groups::new(block_groups, nb);
    for g0 in (0..ngroups).step_by(block_groups) {
        let gn = block_groups.min(ngroups - g0);
        for g in 0..gn {
            let i0 = (g0 + g) * LANES;
            let row = lane_rows(w, wrb, i0, nrows);
            // SAFETY: every row index is below nrows, g below the groups' count; the CPU
            // features are this function's.
            unsafe { groups.load(g, &row) };
        }
        for j0 in (0..ncols).step_by(PANEL) {
            let panel_end = ncols.min(j0 + PANEL);
            for g in 0..gn {
                let i0 = (g0 + g) * LANES;
                let mut j = j0;
                while j < panel_end {
                    let c = COLS.min(panel_end - j);
                    let t = Cols::new((act, arb, nb), &prep, j, i0, LANES.min(nrows - i0));
                    // SAFETY: columns j..j + c and rows i0..i0 + live are inside the slices
                    // checked above; `t.sc`/`t.off` point at column j's entries of its panel;
                    // group g was loaded above.
                    unsafe {
                        match c {
                            4 => tile::<4>(&groups, g, t, out),
                            3 => tile::<3>(&groups, g, t, out),
                            2 => tile::<2>(&groups, g, t, out),
                            _ => tile::<1>(&groups, g, t, out),
                        }
                    }
                    j += c;
                }
            }
        }
    }
}

/// A tile's columns: activations, their panel's scale and offset tables, and where its
/// outputs go (`live` rows of the group are real). `gemm512_q4_0`'s tiles take the same.
#[derive(Clone, Copy)]
pub(super) struct Cols {
    pub(super) a: *const u8,
    pub(super) arb: usize,
    pub(super) sc: *const f32,
    pub(super) off: *const i32,
    /// The product's row and column of the tile's first output.
    pub(super) i0: usize,
    pub(super) j: usize,
    pub(super) live: usize,
}

impl Cols {
    /// Columns `j..` of `act` (`arb` bytes, `nb` blocks each), with their entries of
    /// `prep`'s tables, for the `live` rows from `i0`.
    pub(super) fn new(
        (act, arb, nb): (&[u8], usize, usize),
        prep: &Prepared,
        j: usize,
        i0: usize,
        live: usize,
    ) -> Self {
        let at = (j / PANEL) * nb * PANEL + j % PANEL;
        Self {
            a: act[j * arb..].as_ptr(),
            arb,
            sc: prep.scales[at..].as_ptr(),
            off: prep.offsets[at..].as_ptr(),
            i0,
            j,
            live,
        }
    }
}

/// Pointers to the `N` rows (`wrb` bytes each) of `w` from `i0`, one per lane; lanes past
/// row `nrows - 1` repeat it (their outputs are not stored).
pub(super) fn lane_rows<const N: usize>(
    w: &[u8],
    wrb: usize,
    i0: usize,
    nrows: usize,
) -> [*const u8; N] {
    core::array::from_fn(|k| w[(i0 + k).min(nrows - 1) * wrb..].as_ptr())
}

/// Group `g`'s eight rows × columns `0..C` of `t`.
///
/// # Safety
/// AVX2, FMA and F16C; `t` describes `C` columns of `groups.nb` blocks inside one panel,
/// and `live` rows of outputs; group `g` is loaded.
#[allow(clippy::needless_range_loop)] // c indexes the accumulators and the columns alike
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const C: usize>(groups: &Groups, g: usize, t: Cols, out: &mut impl Sink) {
    let nb = groups.nb;
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); C];
    for b in 0..nb {
        let q = &groups.q[(g * nb + b) * 8..][..8];
        let mut sum = [_mm256_setzero_si256(); C];
        // SAFETY: columns < C and blocks < nb are inside the activations and the panel's
        // tables (contract); the reads are unaligned-safe.
        unsafe {
            for (j, qj) in q.iter().enumerate() {
                for c in 0..C {
                    let at = t.a.add(c * t.arb + b * Q8_BYTES + 2 + 4 * j);
                    let a4 = _mm256_set1_epi32(at.cast::<i32>().read_unaligned());
                    sum[c] = _mm256_add_epi16(sum[c], _mm256_maddubs_epi16(*qj, a4));
                }
            }
            let d = groups.d[g * nb + b];
            for c in 0..C {
                // (q + 8)·a − 8·a = q·a; exact.
                let off = _mm256_set1_epi32(*t.off.add(b * PANEL + c));
                let total = _mm256_sub_epi32(_mm256_madd_epi16(sum[c], ones), off);
                let scale = _mm256_mul_ps(d, _mm256_set1_ps(*t.sc.add(b * PANEL + c)));
                acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), scale, acc[c]);
            }
        }
    }
    for c in 0..C {
        let mut lanes = [0.0f32; LANES];
        // SAFETY: `lanes` is 8 writable f32s; storeu has no alignment requirement.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[c]) };
        out.put_rows(t.i0, t.j + c, &lanes[..t.live]);
    }
}
