//! Q4_K·Q8_K, Q5_K·Q8_K and Q6_K·Q8_K: dot products (decode) and matrix products
//! (prefill), one weight row against a tile of up to four activation columns (eight for
//! Q6_K).
//!
//! Each row's super-block is unpacked once (nibbles, 6-bit scales and mins, with vector
//! operations) and used for the whole column tile; a dot product is the one-column tile, so
//! prefill and decode compute each output the same way, bit for bit. Integer sums per
//! super-block are exact; one float multiply-add per super-block (Q4_K) or one FMA per lane
//! (Q5_K and Q6_K: llama.cpp's x86 order, eight i32 lanes per super-block, which the scalar
//! reference follows; Q5_K's mins go into a float beside them).

use core::arch::x86_64::*;

use super::kquant_order::{blend_pair, blend_sub_blocks, pair_sub_blocks};
use super::kquant_q5_rows::Q5KRows;
use super::kquant_q6_rows::Q6KRows;
use super::kquant_unpack::{
    q5_k_sub_blocks, q6_k_chunk_scales, q6_k_half, q6_k_pair_scales, q8k_sub_block_sums,
};
use super::{arr, h2f, hsum, ld, ld16, prefetch_ahead};

/// Q8_K block layout: f32 scale, 256 quants, 16 i16 block sums.
pub(super) const Q8K_BYTES: usize = 292;
/// Q4_K super-block: f16 d, f16 dmin, 12 bytes of scales and mins, 128 bytes of nibbles.
pub(super) const Q4K_BYTES: usize = 144;
/// Q5_K super-block: f16 d, f16 dmin, 12 bytes of scales and mins, 32 of high bits, 128
/// of nibbles.
pub(super) const Q5K_BYTES: usize = 176;
/// Q6_K super-block: 128 bytes of low nibbles, 64 of high bits, 16 i8 scales, f16 d.
pub(super) const Q6K_BYTES: usize = 210;
pub(super) const Q8K_QS: usize = 4;
pub(super) const Q8K_BSUMS: usize = 260;
/// Columns per register tile.
const TILE: usize = 4;
/// Columns whose activations stay in L1/L2 while every row of the range passes them.
const PANEL: usize = 16;
/// From this many columns on, Q5_K and Q6_K rows are unpacked once per product
/// ([`super::kquant_q5_rows`], [`super::kquant_q6_rows`]) rather than once per tile: below
/// it, batched decode's few columns do not pay for the unpacked copy.
const ROWS_FIRST_COLS: usize = 8;
/// From this many columns on, Q4_K rows are transposed eight at a time into lanes
/// ([`super::kquant_q4_lanes`]). The transpose costs about as much as five columns'
/// products: one thread, 1536 rows of 768 values, 8 columns 61 against the tile's 86
/// GFLOP/s, 128 columns 96-113 against 83-87; the two meet near 23 columns.
const Q4K_LANES_FIRST_COLS: usize = 32;

#[inline]
pub(super) fn rd_f32(b: &[u8], at: usize) -> f32 {
    f32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A K-quant weight format with a column-tiled kernel.
trait KTile {
    /// Bytes per 256-value weight super-block.
    const WB: usize;
    /// Tiles of `2 · TILE` columns where a panel has them (and whose state fits the registers).
    const WIDE: bool = false;

    /// `out[c] = row · column c` for the `C` columns of `a` (stride `arb`); `first`: the
    /// first tile to read the row, which asks for its super-blocks ahead as it goes (the
    /// weights come from memory once; with a few columns, or one, a row gets too little
    /// work for the hardware's prefetch to hide the latency).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `row` holds whole super-blocks and every
    /// column of `a` as many Q8_K blocks.
    unsafe fn tile<const C: usize>(row: &[u8], a: &[u8], arb: usize, first: bool, out: &mut [f32]);
}

struct Q4KTile<const PAIRED: bool>;
/// Q4_K against Q8_K rows as they are (decode's one column).
type Q4K = Q4KTile<false>;
/// Q4_K against activations from [`pair_sub_blocks`] (products of several columns).
type Q4KPaired = Q4KTile<true>;
struct Q5K;
struct Q6KTile<const PAIRED: bool>;
/// Q6_K against Q8_K rows as they are (decode's one column).
type Q6K = Q6KTile<false>;
/// Q6_K against activations from [`blend_sub_blocks`] (products of several columns).
type Q6KPaired = Q6KTile<true>;

/// One Q4_K row · one Q8_K row.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w`/`a` are Q4_K/Q8_K rows of equal length.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q4_k(w: &[u8], a: &[u8]) -> f32 {
    let mut out = [0.0f32];
    // SAFETY: forwarded contract; one column.
    unsafe { Q4K::tile::<1>(w, a, a.len(), true, &mut out) };
    out[0]
}

/// One Q5_K row · one Q8_K row.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w`/`a` are Q5_K/Q8_K rows of equal length.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q5_k(w: &[u8], a: &[u8]) -> f32 {
    let mut out = [0.0f32];
    // SAFETY: forwarded contract; one column.
    unsafe { Q5K::tile::<1>(w, a, a.len(), true, &mut out) };
    out[0]
}

/// One Q6_K row · one Q8_K row.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w`/`a` are Q6_K/Q8_K rows of equal length.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q6_k(w: &[u8], a: &[u8]) -> f32 {
    let mut out = [0.0f32];
    // SAFETY: forwarded contract; one column.
    unsafe { Q6K::tile::<1>(w, a, a.len(), true, &mut out) };
    out[0]
}

/// `out[i * ncols + j] = w row i · act row j` for Q4_K weights.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` holds `nrows` Q4_K rows and `act` `ncols`
/// Q8_K rows of the same length; `out.len() == nrows * ncols`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn matmul_q4_k(
    w: &[u8],
    nrows: usize,
    act: &[u8],
    ncols: usize,
    out: &mut [f32],
) {
    if ncols >= Q4K_LANES_FIRST_COLS {
        // SAFETY: forwarded contract.
        return unsafe { super::kquant_q4_lanes::matmul_q4_k(w, nrows, act, ncols, out) };
    }
    let paired = pair_sub_blocks(act);
    // SAFETY: forwarded contract; `paired` is `act` with its quants reordered in place.
    unsafe { panels::<Q4KPaired>(w, nrows, &paired, ncols, out) }
}

/// As [`matmul_q4_k`], for Q5_K weights.
///
/// # Safety
/// As [`matmul_q4_k`], with Q5_K rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn matmul_q5_k(
    w: &[u8],
    nrows: usize,
    act: &[u8],
    ncols: usize,
    out: &mut [f32],
) {
    // SAFETY: forwarded contract; `blended` is `act` with its quants reordered in place.
    unsafe {
        if ncols >= ROWS_FIRST_COLS {
            let blended = blend_sub_blocks(act);
            super::kquant_rows::matmul::<Q5KRows>(w, nrows, &blended, ncols, out)
        } else {
            panels::<Q5K>(w, nrows, act, ncols, out)
        }
    }
}

/// As [`matmul_q4_k`], for Q6_K weights.
///
/// # Safety
/// As [`matmul_q4_k`], with Q6_K rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn matmul_q6_k(
    w: &[u8],
    nrows: usize,
    act: &[u8],
    ncols: usize,
    out: &mut [f32],
) {
    let blended = blend_sub_blocks(act);
    // SAFETY: forwarded contract; `blended` is `act` with its quants reordered in place.
    unsafe {
        if ncols >= ROWS_FIRST_COLS {
            super::kquant_rows::matmul::<Q6KRows>(w, nrows, &blended, ncols, out)
        } else {
            panels::<Q6KPaired>(w, nrows, &blended, ncols, out)
        }
    }
}

/// Column panels, then rows, then tiles of [`TILE`] columns (twice that where
/// [`KTile::WIDE`]): a row is unpacked once per
/// tile and stays in L1 across its panel's tiles; a panel's activations stay cached across
/// the rows.
///
/// # Safety
/// As [`matmul_q4_k`] for `K`'s rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn panels<K: KTile>(w: &[u8], nrows: usize, act: &[u8], ncols: usize, out: &mut [f32]) {
    let (wrb, arb) = (w.len() / nrows, act.len() / ncols);
    debug_assert_eq!(wrb / K::WB, arb / Q8K_BYTES);
    let mut j0 = 0;
    while j0 < ncols {
        let nc = PANEL.min(ncols - j0);
        for (i, row) in w.chunks_exact(wrb).enumerate() {
            let dst = &mut out[i * ncols + j0..i * ncols + j0 + nc];
            let mut j = 0;
            // SAFETY: forwarded contract; the slices are in bounds by construction.
            unsafe {
                while K::WIDE && j + 2 * TILE <= nc {
                    let a = &act[(j0 + j) * arb..(j0 + j + 2 * TILE) * arb];
                    K::tile::<{ 2 * TILE }>(row, a, arb, j0 + j == 0, &mut dst[j..j + 2 * TILE]);
                    j += 2 * TILE;
                }
                while j + TILE <= nc {
                    let a = &act[(j0 + j) * arb..(j0 + j + TILE) * arb];
                    K::tile::<TILE>(row, a, arb, j0 + j == 0, &mut dst[j..j + TILE]);
                    j += TILE;
                }
                let a = &act[(j0 + j) * arb..(j0 + nc) * arb];
                match nc - j {
                    3 => K::tile::<3>(row, a, arb, j0 + j == 0, &mut dst[j..]),
                    2 => K::tile::<2>(row, a, arb, j0 + j == 0, &mut dst[j..]),
                    1 => K::tile::<1>(row, a, arb, j0 + j == 0, &mut dst[j..]),
                    _ => {}
                }
            }
        }
        j0 += nc;
    }
}

/// Horizontal sums of up to four vectors of 8 i32 lanes (exact), as an array.
#[inline]
#[target_feature(enable = "avx2")]
fn hsums_i32<const C: usize>(v: &[__m256i; C]) -> [i32; 4] {
    let z = _mm256_setzero_si256();
    let at = |c: usize| if c < C { v[c] } else { z };
    let a = _mm256_hadd_epi32(at(0), at(1));
    let b = _mm256_hadd_epi32(at(2), at(3));
    let s = _mm256_hadd_epi32(a, b);
    let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
    let mut out = [0i32; 4];
    // SAFETY: `out` is 16 writable bytes; storeu has no alignment requirement.
    unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), s) };
    out
}

/// A Q4_K super-block's eight 6-bit scales as i16 (both 128-bit halves) and its eight
/// 6-bit mins as i16, unpacked with integer word operations (ggml's `utmp` shuffle).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn q4_k_scales_mins(packed: &[u8; 12]) -> (__m256i, __m128i) {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const TOP2: u32 = 0x0303_0303;
    let word = |i: usize| {
        u32::from_le_bytes([
            packed[4 * i],
            packed[4 * i + 1],
            packed[4 * i + 2],
            packed[4 * i + 3],
        ])
    };
    let (w0, w1, w2) = (word(0), word(1), word(2));
    // Scales 0-3 are the low 6 bits of bytes 0-3; scales 4-7 the low nibbles of bytes 8-11
    // with the top 2 bits of bytes 0-3. Mins likewise from bytes 4-7 and the high nibbles.
    let scales = [w0 & LOW6, (w2 & LOW4) | (((w0 >> 6) & TOP2) << 4)];
    let mins = [w1 & LOW6, ((w2 >> 4) & LOW4) | (((w1 >> 6) & TOP2) << 4)];
    let bytes = _mm_set_epi32(
        mins[1] as i32,
        mins[0] as i32,
        scales[1] as i32,
        scales[0] as i32,
    );
    let both = _mm256_cvtepu8_epi16(bytes);
    let sc = _mm256_castsi256_si128(both);
    (
        _mm256_set_m128i(sc, sc),
        _mm256_extracti128_si256::<1>(both),
    )
}

/// The lines of a `WB`-byte weight super-block a tile asks for ahead: all of them, decode's
/// one column included. (Decode once asked for one line a block and left the rest to the
/// hardware's prefetch, measured faster on an Intel Xeon; but these AVX2 tiles are what
/// AVX2-only CPUs run, and on the Zen 3 machine every line took Qwen2.5-Coder-1.5B's decode
/// from 14-16 to 18.5-21 tok/s (Q4_K_M), 12-14 to 20-22 (pure Q6_K), 14-14.5 to 15.5-17.5
/// (pure Q5_K), alternating builds.)
const fn lines_ahead<const WB: usize>() -> usize {
    WB.div_ceil(64)
}

/// Broadcasts i16 lane `i` (0..8) of each 128-bit half of `v` to the whole half.
#[inline]
#[target_feature(enable = "avx2")]
fn broadcast_i16(v: __m256i, i: usize) -> __m256i {
    let lo = (2 * i) as i8;
    let pattern = _mm256_set1_epi16(i16::from_le_bytes([lo as u8, lo as u8 + 1]));
    _mm256_shuffle_epi8(v, pattern)
}

/// The end of Q4_K super-block `b` (`x`) of a `C`-column tile, with its column sums
/// `isum` done: Σ_j bsum_j · m[j / 2] (the 16 block sums added in pairs, one per min, then
/// multiplied by the mins; exact in i16 and i32), and the reference's float step
/// `sum += d · yd · itot − dmin · yd · mtot` per column.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_k_block_end<const C: usize>(
    x: &[u8],
    a: &[u8],
    arb: usize,
    b: usize,
    mins: __m128i,
    isum: &[__m256i; C],
    sum: &mut [f32; C],
) {
    let mut mprod = [_mm256_setzero_si256(); C];
    for (col, p) in mprod.iter_mut().enumerate() {
        let y = &a[col * arb + b * Q8K_BYTES..];
        let pairs = q8k_sub_block_sums(y);
        *p = _mm256_set_m128i(_mm_setzero_si128(), _mm_madd_epi16(pairs, mins));
    }
    let (itot, mtot) = (hsums_i32(isum), hsums_i32(&mprod));
    let (d, dmin) = (h2f(x, 0), h2f(x, 2));
    for col in 0..C {
        let yd = rd_f32(a, col * arb + b * Q8K_BYTES);
        sum[col] += d * yd * itot[col] as f32 - dmin * yd * mtot[col] as f32;
    }
}

/// Q4_K's tile; with `PAIRED` against activations from [`pair_sub_blocks`], whose order
/// lets one `maddubs` pair and one `madd` take both sub-blocks of a 64-value chunk (five
/// operations per column and chunk instead of six). Integer sums are exact either way.
impl<const PAIRED: bool> KTile for Q4KTile<PAIRED> {
    const WB: usize = Q4K_BYTES;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const C: usize>(row: &[u8], a: &[u8], arb: usize, first: bool, out: &mut [f32]) {
        let m4 = _mm256_set1_epi8(0xf);
        let mut sum = [0.0f32; C];
        for (b, x) in row.chunks_exact(Self::WB).enumerate() {
            if first {
                prefetch_ahead(x.as_ptr(), lines_ahead::<Q4K_BYTES>());
            }
            let (scales, mins) = q4_k_scales_mins(arr(x, 4));
            let mut isum = [_mm256_setzero_si256(); C];
            for c in 0..4 {
                // SAFETY: AVX2 is this function's contract; the arrays are bounds-checked.
                let q = unsafe { ld(arr(x, 16 + 32 * c)) };
                let lo = _mm256_and_si256(q, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
                let (s0, s1) = (
                    broadcast_i16(scales, 2 * c),
                    broadcast_i16(scales, 2 * c + 1),
                );
                // Paired: the activations' order (sub-blocks 2c and 2c + 1 two values at a
                // time) and i16 pairs [scale 2c, scale 2c + 1] for one `madd`.
                let (w0, w1, s) = if PAIRED {
                    let w = (_mm256_unpacklo_epi16(lo, hi), _mm256_unpackhi_epi16(lo, hi));
                    (w.0, w.1, _mm256_unpacklo_epi16(s0, s1))
                } else {
                    (lo, hi, s0)
                };
                for (col, acc) in isum.iter_mut().enumerate() {
                    let y = &a[col * arb + b * Q8K_BYTES..];
                    // SAFETY: as above.
                    let (y0, y1) = unsafe { (ld(arr(y, 4 + 64 * c)), ld(arr(y, 36 + 64 * c))) };
                    let (p0, p1) = (_mm256_maddubs_epi16(w0, y0), _mm256_maddubs_epi16(w1, y1));
                    let p = if PAIRED {
                        // Each i16 lane sums four products of one sub-block (|·| ≤ 4·15·128).
                        _mm256_madd_epi16(_mm256_add_epi16(p0, p1), s)
                    } else {
                        _mm256_add_epi32(_mm256_madd_epi16(p0, s), _mm256_madd_epi16(p1, s1))
                    };
                    *acc = _mm256_add_epi32(*acc, p);
                }
            }
            q4_k_block_end(x, a, arb, b, mins, &isum, &mut sum);
        }
        out[..C].copy_from_slice(&sum);
    }
}

impl KTile for Q5K {
    const WB: usize = Q5K_BYTES;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const C: usize>(row: &[u8], a: &[u8], arb: usize, first: bool, out: &mut [f32]) {
        let mut acc = [_mm256_setzero_ps(); C];
        let mut summs = [0.0f32; C];
        for (b, x) in row.chunks_exact(Self::WB).enumerate() {
            if first {
                prefetch_ahead(x.as_ptr(), lines_ahead::<Q5K_BYTES>());
            }
            let (scales, mins) = q4_k_scales_mins(arr(x, 4));
            // SAFETY: AVX2 is this function's contract; the arrays are bounds-checked.
            let qh = unsafe { ld(arr(x, 16)) };
            let mut isum = [_mm256_setzero_si256(); C];
            for c in 0..4 {
                let (lo, hi) = q5_k_sub_blocks(x, qh, c);
                let (s0, s1) = (
                    broadcast_i16(scales, 2 * c),
                    broadcast_i16(scales, 2 * c + 1),
                );
                for (col, isum) in isum.iter_mut().enumerate() {
                    let y = &a[col * arb + b * Q8K_BYTES..];
                    // SAFETY: as above.
                    let (y0, y1) = unsafe { (ld(arr(y, 4 + 64 * c)), ld(arr(y, 36 + 64 * c))) };
                    // |5-bit quant · i8| pairs stay far inside `maddubs`' i16 range.
                    let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, y0), s0);
                    let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, y1), s1);
                    *isum = _mm256_add_epi32(*isum, _mm256_add_epi32(p0, p1));
                }
            }
            let (d, dmin) = (h2f(x, 0), h2f(x, 2));
            for col in 0..C {
                let y = &a[col * arb + b * Q8K_BYTES..];
                // Σ_j m_j · (bsum 2j + bsum 2j+1), exact in i32.
                let pairs = q8k_sub_block_sums(y);
                let msum = hsum_i32x4(_mm_madd_epi16(pairs, mins));
                let yd = rd_f32(y, 0);
                summs[col] += -yd * dmin * msum as f32;
                let dv = _mm256_set1_ps(yd * d);
                acc[col] = _mm256_fmadd_ps(dv, _mm256_cvtepi32_ps(isum[col]), acc[col]);
            }
        }
        for col in 0..C {
            out[col] = hsum(acc[col]) + summs[col];
        }
    }
}

/// The sum of four i32 lanes (exact).
#[inline]
#[target_feature(enable = "avx2")]
fn hsum_i32x4(v: __m128i) -> i32 {
    let s = _mm_add_epi32(v, _mm_shuffle_epi32::<0b01_00_11_10>(v));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s)))
}

/// Q6_K's tile; with `PAIRED` against activations from [`blend_sub_blocks`]: chunks 2p and
/// 2p + 1 of a half share one `maddubs` pair, an i16 add and one `madd` per column
/// (|4 products| ≤ 4·63·128 in an i16), the i32 lanes unchanged.
impl<const PAIRED: bool> KTile for Q6KTile<PAIRED> {
    const WB: usize = Q6K_BYTES;
    // Eight columns a tile: prefill 82 -> 88 GFLOP/s, eight columns 81 -> 88 (one thread, Zen 3).
    // Q5_K measured slower with eight (73 -> 61): its per-column float state spills.
    const WIDE: bool = true;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const C: usize>(row: &[u8], a: &[u8], arb: usize, first: bool, out: &mut [f32]) {
        let mut acc = [_mm256_setzero_ps(); C];
        for (b, x) in row.chunks_exact(Self::WB).enumerate() {
            if first {
                prefetch_ahead(x.as_ptr(), lines_ahead::<Q6K_BYTES>());
            }
            // SAFETY: AVX2 is this function's contract; the array is bounds-checked.
            let scales = unsafe { ld16(arr(x, 192)) };
            let mut isum = [_mm256_setzero_si256(); C];
            for h in 0..2 {
                let q = q6_k_half(x, h);
                if PAIRED {
                    for p in 0..2 {
                        let (w0, w1) = blend_pair(q[2 * p], q[2 * p + 1]);
                        let scv = q6_k_pair_scales(scales, 2 * h + p);
                        for (col, acc) in isum.iter_mut().enumerate() {
                            let y = &a[col * arb + b * Q8K_BYTES + Q8K_QS + 128 * h + 64 * p..];
                            // SAFETY: as above.
                            let (y0, y1) = unsafe { (ld(arr(y, 0)), ld(arr(y, 32))) };
                            let (p0, p1) =
                                (_mm256_maddubs_epi16(w0, y0), _mm256_maddubs_epi16(w1, y1));
                            let v = _mm256_madd_epi16(_mm256_add_epi16(p0, p1), scv);
                            *acc = _mm256_add_epi32(*acc, v);
                        }
                    }
                } else {
                    for (k, qk) in q.iter().enumerate() {
                        let scv = q6_k_chunk_scales(scales, 4 * h + k);
                        for (col, acc) in isum.iter_mut().enumerate() {
                            let y = &a[col * arb + b * Q8K_BYTES..];
                            // SAFETY: as above.
                            let yk = unsafe { ld(arr(y, Q8K_QS + 128 * h + 32 * k)) };
                            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(*qk, yk), scv);
                            *acc = _mm256_add_epi32(*acc, p);
                        }
                    }
                }
            }
            // The +32 offset of the stored quants, as in `dot_q6_k`.
            let scales = _mm256_cvtepi8_epi16(scales);
            let xd = h2f(x, 208);
            for col in 0..C {
                let y = &a[col * arb + b * Q8K_BYTES..];
                // SAFETY: as above; 16 i16 block sums are in bounds.
                let bsums = unsafe { ld(arr(y, Q8K_BSUMS)) };
                let corr = _mm256_slli_epi32::<5>(_mm256_madd_epi16(bsums, scales));
                let d = _mm256_set1_ps(rd_f32(y, 0) * xd);
                let v = _mm256_cvtepi32_ps(_mm256_sub_epi32(isum[col], corr));
                acc[col] = _mm256_fmadd_ps(d, v, acc[col]);
            }
        }
        for col in 0..C {
            out[col] = hsum(acc[col]);
        }
    }
}
