//! Q4_K prefill on AVX2: eight weight rows side by side, one per i32 lane (what
//! `gemm_q4_0` does for Q4_0).
//!
//! Q4_K's decode arithmetic (`kquant`'s tile, llama.cpp's x86 order) sums a super-block
//! into two exact integers per output, `itot = Σ_j s_j · (q · y over sub-block j)` and
//! `mtot = Σ_j m_j · (y's sum over sub-block j)`, then adds `d·yd·itot − dmin·yd·mtot` to
//! one f32. So lane k of a register can hold row k's totals: a sub-block is eight
//! `maddubs`, each multiplying four nibbles of every row by the same four activation bytes
//! (broadcast from memory), summed in i16 (exact: 8 · 2 · 15 · 128 < 2¹⁵) and scaled by a
//! `madd` with the rows' scales; the float step runs lane-wise with the same operations in
//! the same order. The column tile instead unpacked every row once per four columns and
//! reduced each column's lanes with a tree of `hadd`s per super-block.
//!
//! A row block's groups of eight rows are transposed into that layout ([`Group`]) once,
//! and stay in L2 while each 16-column panel passes over them.

use alloc::vec::Vec;
use core::arch::x86_64::*;

use super::gemm::ROW_BLOCK_BYTES;
use super::kquant::{Q4K_BYTES, Q8K_BYTES, Q8K_QS, rd_f32};
use super::kquant_rows::PANEL;
use super::kquant_unpack::q8k_sub_block_sums;
use super::{arr, h2f, ld};
use crate::quant::reference::q4_k_scales_mins;

/// Weight rows per group: one per i32 lane of a YMM register.
const LANES: usize = 8;
/// Columns per register tile: four i16 and four i32 sums beside a weight vector and a
/// broadcast activation dword, inside the 16 YMM registers.
const COLS: usize = 4;

/// One super-block of a group of eight rows, lane k being row k.
#[derive(Clone, Copy)]
struct Group {
    /// `q[8j + g]`: values `4g..4g + 4` of sub-block j (0..16 each).
    q: [__m256i; 64],
    /// `scales[j]`: the i16 pair `(s_j, s_j)`, for `madd` against `maddubs`' i16 pairs.
    scales: [__m256i; 8],
    /// `mins[p]`: the i16 pair `(m_2p, m_2p+1)`.
    mins: [__m256i; 4],
    d: __m256,
    dmin: __m256,
}

impl Group {
    /// Super-block `b` of the eight rows at `rows[k]` (rows past the last repeat it).
    #[target_feature(enable = "avx2,f16c")]
    fn load(rows: &[&[u8]; LANES], b: usize) -> Self {
        let m4 = _mm256_set1_epi8(0xf);
        let x: [&[u8]; LANES] = core::array::from_fn(|k| &rows[k][b * Q4K_BYTES..]);
        let mut q = [_mm256_setzero_si256(); 64];
        for c in 0..4 {
            // SAFETY: AVX2 is this function's contract; the arrays are bounds-checked.
            let v: [__m256i; LANES] =
                core::array::from_fn(|k| unsafe { ld(arr(x[k], 16 + 32 * c)) });
            // An 8 × 8 dword transpose: t[g]'s lane k is row k's bytes 4g..4g + 4 of chunk c.
            let t = transpose8(v);
            // Byte l's low nibble is value l of sub-block 2c, its high nibble of 2c + 1.
            for (g, tg) in t.into_iter().enumerate() {
                q[8 * (2 * c) + g] = _mm256_and_si256(tg, m4);
                q[8 * (2 * c + 1) + g] = _mm256_and_si256(_mm256_srli_epi16::<4>(tg), m4);
            }
        }
        let sm: [([u8; 8], [u8; 8]); LANES] =
            core::array::from_fn(|k| q4_k_scales_mins(&x[k][4..16]));
        let pair = |lo: u8, hi: u8| i32::from(lo) | (i32::from(hi) << 16);
        // SAFETY: `v` is 32 readable bytes; loadu has no alignment requirement.
        let lanes = |v: [i32; LANES]| unsafe { _mm256_loadu_si256(v.as_ptr().cast()) };
        let floats = |at: usize| {
            let v: [f32; LANES] = core::array::from_fn(|k| h2f(x[k], at));
            // SAFETY: `v` is 32 readable bytes; loadu has no alignment requirement.
            unsafe { _mm256_loadu_ps(v.as_ptr()) }
        };
        Self {
            q,
            scales: core::array::from_fn(|j| {
                lanes(core::array::from_fn(|k| pair(sm[k].0[j], sm[k].0[j])))
            }),
            mins: core::array::from_fn(|p| {
                lanes(core::array::from_fn(|k| {
                    pair(sm[k].1[2 * p], sm[k].1[2 * p + 1])
                }))
            }),
            d: floats(0),
            dmin: floats(2),
        }
    }
}

/// Dword g of `v[k]` at lane k of `t[g]`.
#[inline]
#[target_feature(enable = "avx2")]
fn transpose8(v: [__m256i; LANES]) -> [__m256i; LANES] {
    let t: [__m256i; LANES] = core::array::from_fn(|i| {
        let (a, b) = (v[2 * (i / 2)], v[2 * (i / 2) + 1]);
        if i % 2 == 0 {
            _mm256_unpacklo_epi32(a, b)
        } else {
            _mm256_unpackhi_epi32(a, b)
        }
    });
    // u[4h + n]: rows 4h..4h + 4, dword n (low 128-bit half) and n + 4 (high half).
    let u: [__m256i; LANES] = core::array::from_fn(|i| {
        let (h, n) = (i / 4, i % 4);
        let (a, b) = (t[4 * h + n / 2], t[4 * h + 2 + n / 2]);
        if n % 2 == 0 {
            _mm256_unpacklo_epi64(a, b)
        } else {
            _mm256_unpackhi_epi64(a, b)
        }
    });
    core::array::from_fn(|g| {
        let (lo, hi) = (u[g % 4], u[4 + g % 4]);
        if g < 4 {
            _mm256_permute2x128_si256::<0x20>(lo, hi)
        } else {
            _mm256_permute2x128_si256::<0x31>(lo, hi)
        }
    })
}

/// Per column and super-block: the block sums of its eight sub-blocks in i16 pairs
/// (`(bs_2p, bs_2p+1)` at `pairs[p]`, exact: |16 · 2 · 128| < 2¹⁵) and its scale.
struct Cols {
    pairs: Vec<[i32; 4]>,
    yd: Vec<f32>,
}

impl Cols {
    #[target_feature(enable = "avx2")]
    fn new(act: &[u8]) -> Self {
        let blocks = act.len() / Q8K_BYTES;
        let mut t = Self {
            pairs: Vec::with_capacity(blocks),
            yd: Vec::with_capacity(blocks),
        };
        for y in act.chunks_exact(Q8K_BYTES) {
            let sums = q8k_sub_block_sums(y);
            let mut p = [0i32; 4];
            // SAFETY: `p` is 16 writable bytes; storeu has no alignment requirement.
            unsafe { _mm_storeu_si128(p.as_mut_ptr().cast(), sums) };
            t.pairs.push(p);
            t.yd.push(rd_f32(y, 0));
        }
        t
    }
}

/// `out[i * ncols + j] = w row i · act row j` for Q4_K weights and Q8_K activations as
/// they are, `ncols` ≥ 1.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
///
/// # Panics
/// If the lengths do not describe `nrows` × `ncols` products of whole super-blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn matmul_q4_k(
    w: &[u8],
    nrows: usize,
    act: &[u8],
    ncols: usize,
    out: &mut [f32],
) {
    assert!(nrows > 0 && ncols > 0, "q4_k lanes: empty product");
    let (wrb, arb) = (w.len() / nrows, act.len() / ncols);
    let nsb = wrb / Q4K_BYTES;
    assert!(
        w.len() == nrows * wrb && wrb == nsb * Q4K_BYTES && arb == nsb * Q8K_BYTES,
        "q4_k lanes: bad weight or activation length"
    );
    assert_eq!(out.len(), nrows * ncols, "q4_k lanes: bad output length");
    let cols = Cols::new(act);
    let ngroups = nrows.div_ceil(LANES);
    let block_groups = (ROW_BLOCK_BYTES / (nsb * size_of::<Group>())).clamp(1, ngroups);
    let mut groups: Vec<Group> = Vec::with_capacity(block_groups * nsb);
    for g0 in (0..ngroups).step_by(block_groups) {
        let gn = block_groups.min(ngroups - g0);
        groups.clear();
        for g in g0..g0 + gn {
            let rows: [&[u8]; LANES] =
                core::array::from_fn(|k| &w[(g * LANES + k).min(nrows - 1) * wrb..][..wrb]);
            for b in 0..nsb {
                groups.push(Group::load(&rows, b));
            }
        }
        for j0 in (0..ncols).step_by(PANEL) {
            let panel_end = ncols.min(j0 + PANEL);
            for (g, group) in groups.chunks_exact(nsb).enumerate() {
                let i0 = (g0 + g) * LANES;
                let live = LANES.min(nrows - i0);
                let mut j = j0;
                while j < panel_end {
                    let c = COLS.min(panel_end - j);
                    let t = Tile {
                        act,
                        arb,
                        cols: &cols,
                        j,
                    };
                    let sums = match c {
                        4 => tile::<4>(group, t),
                        3 => tile::<3>(group, t),
                        2 => tile::<2>(group, t),
                        _ => tile::<1>(group, t),
                    };
                    for (col, s) in sums.iter().take(c).enumerate() {
                        let mut lanes = [0.0f32; LANES];
                        // SAFETY: `lanes` is 8 writable f32s; storeu has no alignment requirement.
                        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *s) };
                        for (k, v) in lanes.iter().take(live).enumerate() {
                            out[(i0 + k) * ncols + j + col] = *v;
                        }
                    }
                    j += c;
                }
            }
        }
    }
}

/// A tile's columns: `j..` of `act` (`arb` bytes each) and their [`Cols`] entries.
#[derive(Clone, Copy)]
struct Tile<'a> {
    act: &'a [u8],
    arb: usize,
    cols: &'a Cols,
    j: usize,
}

/// A group's eight rows (its super-blocks `group`) × columns `t.j..t.j + C`: the outputs
/// of column c in the lanes of `sums[c]`.
#[allow(clippy::needless_range_loop)] // col indexes the sums and the columns alike
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile<const C: usize>(group: &[Group], t: Tile) -> [__m256; COLS] {
    let nsb = group.len();
    let mut sum = [_mm256_setzero_ps(); COLS];
    for (b, x) in group.iter().enumerate() {
        let y: [&[u8]; C] = core::array::from_fn(|col| {
            &t.act[(t.j + col) * t.arb + b * Q8K_BYTES + Q8K_QS..][..256]
        });
        let mut itot = [_mm256_setzero_si256(); C];
        for j in 0..8 {
            let mut s16 = [_mm256_setzero_si256(); C];
            for g in 0..8 {
                let q = x.q[8 * j + g];
                for col in 0..C {
                    let at = 32 * j + 4 * g;
                    let a4 = i32::from_le_bytes(*arr(y[col], at));
                    let p = _mm256_maddubs_epi16(q, _mm256_set1_epi32(a4));
                    s16[col] = _mm256_add_epi16(s16[col], p);
                }
            }
            for col in 0..C {
                itot[col] = _mm256_add_epi32(itot[col], _mm256_madd_epi16(s16[col], x.scales[j]));
            }
        }
        for col in 0..C {
            let at = (t.j + col) * nsb + b;
            let pairs = t.cols.pairs[at];
            let mut mtot = _mm256_setzero_si256();
            for (p, m) in x.mins.iter().enumerate() {
                mtot = _mm256_add_epi32(mtot, _mm256_madd_epi16(*m, _mm256_set1_epi32(pairs[p])));
            }
            // sum += d·yd·itot − dmin·yd·mtot, as `kquant`'s tile computes it per output.
            let yd = _mm256_set1_ps(t.cols.yd[at]);
            let pos = _mm256_mul_ps(_mm256_mul_ps(x.d, yd), _mm256_cvtepi32_ps(itot[col]));
            let neg = _mm256_mul_ps(_mm256_mul_ps(x.dmin, yd), _mm256_cvtepi32_ps(mtot));
            sum[col] = _mm256_add_ps(sum[col], _mm256_sub_ps(pos, neg));
        }
    }
    sum
}
