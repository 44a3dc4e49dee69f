//! Q4_K·Q8_K and Q6_K·Q8_K with AVX-512 VNNI: the build [`super::kquant`]'s AVX2 kernels give
//! way to when the CPU has AVX-512 F/BW/VL/VNNI (Q5_K's, on the same tiles and tables:
//! [`super::kquant_vnni_q5`]).
//!
//! `vpdpbusd` multiplies unsigned weight bytes by signed activation bytes and sums four
//! products into an i32 lane, exactly: Q4_K's nibbles and Q6_K's stored quants (0..63, their
//! `-32` applied as `32 · Σ bsums · scale`) are unsigned already, so one instruction does what
//! AVX2's `maddubs` + `madd` pair does, on 64 bytes at a time. The lane sums fit an i16, so
//! the sub-block scales enter with `madd`/`vpdpwssd` (Q4_K: [`Q4Block`]; Q6_K: its module).
//!
//! Every output keeps the float operations, and their order, of the scalar reference
//! (llama.cpp's x86 order); the integer sums behind them are exact whatever their grouping,
//! except Q6_K's eight lanes, whose byte partition the kernels here keep too. Prefill and
//! decode therefore agree to the bit with each other and with the AVX2 build.
//!
//! Prefill takes tiles of one weight row × sixteen activation columns: the row's super-block
//! is unpacked once per tile, the activations are read from a 64-byte aligned copy made once
//! per call ([`Q8KCols`]), Q4_K's per-column totals come out of one transposing reduction as
//! the lanes of a vector, and its float step runs on all sixteen columns at once.

use alloc::vec::Vec;
use core::arch::x86_64::*;

use super::kquant_vnni_reduce::reduce;
use super::{arr, h2f, ld, prefetch_ahead};

/// Q8_K block layout: f32 scale, 256 quants, 16 i16 block sums.
pub(super) const Q8K_BYTES: usize = 292;
pub(super) const Q8K_QS: usize = 4;
pub(super) const Q8K_BSUMS: usize = 260;
/// Columns per register tile: one lane of an f32 ZMM vector each.
pub(super) const TILE: usize = 16;
/// Columns whose activations stay in L1/L2 while every row of the range passes them.
const PANEL: usize = 16;
/// Bytes of a Q4_K super-block.
const Q4K_BYTES: usize = 144;

#[inline]
fn rd_f32(b: &[u8], at: usize) -> f32 {
    f32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// In the tile that first reads a weight row (the one at column 0), asks for every line of
/// super-block `x` ahead, as decode does: with a few columns a row gets too little work for
/// the hardware's prefetch to hide the latency.
#[inline]
pub(super) fn prefetch_first<const WB: usize>(x: &[u8], j: usize) {
    if j == 0 {
        prefetch_ahead(x.as_ptr(), WB.div_ceil(64));
    }
}

/// Unaligned 64-byte load.
///
/// # Safety
/// The CPU must support AVX-512 F.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn ld64(b: &[u8; 64]) -> __m512i {
    // SAFETY: `b` is 64 readable bytes and loadu has no alignment requirement.
    unsafe { _mm512_loadu_si512(b.as_ptr().cast()) }
}

/// One Q8_K block in vectors: its quants (64 a vector), its 16 i16 block sums and its scale.
#[derive(Clone, Copy)]
pub(super) struct Q8Block {
    pub(super) q: [__m512i; 4],
    pub(super) bsums: __m256i,
    pub(super) d: f32,
}

impl Q8Block {
    /// The block in place (292 bytes: its 64-byte loads split cache lines).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
    pub(super) fn load(y: &[u8; Q8K_BYTES]) -> Self {
        // SAFETY: AVX-512 F is this function's contract; the arrays are bounds-checked.
        unsafe {
            Self {
                q: core::array::from_fn(|c| ld64(arr(y, Q8K_QS + 64 * c))),
                bsums: ld(arr(y, Q8K_BSUMS)),
                d: rd_f32(y, 0),
            }
        }
    }

    /// The quants in the order Q4_K's weights are unpacked in ([`Q4Block`]): per 128 values
    /// (sub-blocks s..s+4), the first 16 of sub-blocks s, s+2, s+1, s+3, then their last 16.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
    pub(super) fn q4_order(&self) -> [__m512i; 4] {
        // 16-byte pieces: a's 0, b's 0, a's 2, b's 2 (as qwords 0-1, 8-9, 4-5, 12-13), then
        // pieces 1 and 3 of each.
        let first = _mm512_set_epi64(13, 12, 5, 4, 9, 8, 1, 0);
        let last = _mm512_set_epi64(15, 14, 7, 6, 11, 10, 3, 2);
        let q = &self.q;
        [
            _mm512_permutex2var_epi64(q[0], first, q[1]),
            _mm512_permutex2var_epi64(q[0], last, q[1]),
            _mm512_permutex2var_epi64(q[2], first, q[3]),
            _mm512_permutex2var_epi64(q[2], last, q[3]),
        ]
    }
}

/// Q8_K activation rows copied once per product into 64-byte aligned vectors, so that no
/// load of the tiles splits a cache line, and laid out `[block][column]`, so that a tile
/// finds its columns' blocks side by side (`stride` columns: the product's and [`TILE`] of
/// zeros, which keep a tile's 16-lane loads of the scales inside).
pub(super) struct Q8KCols {
    stride: usize,
    q: Vec<[__m512i; 4]>,
    bsums: Vec<__m256i>,
    d: Vec<f32>,
}

/// Block `b` of `C` consecutive columns of a [`Q8KCols`], and the scales of the
/// [`TILE`] columns from the first.
pub(super) struct Q8KRow<'a> {
    pub(super) q: &'a [[__m512i; 4]],
    pub(super) bsums: &'a [__m256i],
    pub(super) d: &'a [f32; TILE],
}

impl Q8KCols {
    /// # Safety
    /// The CPU must support AVX-512 F; `act` holds whole rows of `nb` Q8_K blocks, `arb`
    /// bytes each.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
    /// `q4` puts the quants in [`Q8Block::q4_order`].
    pub(super) unsafe fn new(act: &[u8], arb: usize, nb: usize, q4: bool) -> Self {
        let ncols = act.len() / arb;
        let stride = ncols + TILE;
        // Filled in order rather than zeroed first: prefill builds this once per call, and
        // the model's row-split calls each build their own.
        let mut c = Self {
            stride,
            q: Vec::with_capacity(nb * stride),
            bsums: Vec::with_capacity(nb * stride),
            d: Vec::with_capacity(nb * stride),
        };
        for b in 0..nb {
            for j in 0..ncols {
                let blk = Q8Block::load(arr(act, j * arb + b * Q8K_BYTES));
                c.q.push(if q4 { blk.q4_order() } else { blk.q });
                c.bsums.push(blk.bsums);
                c.d.push(blk.d);
            }
            c.q.extend([[_mm512_setzero_si512(); 4]; TILE]);
            c.bsums.extend([_mm256_setzero_si256(); TILE]);
            c.d.extend([0.0; TILE]);
        }
        c
    }

    /// Block `b` of columns `j..j + C`.
    #[inline]
    pub(super) fn row<const C: usize>(&self, b: usize, j: usize) -> Q8KRow<'_> {
        let at = b * self.stride + j;
        Q8KRow {
            q: &self.q[at..at + C],
            bsums: &self.bsums[at..at + C],
            d: self.d[at..at + TILE].try_into().expect("TILE scales"),
        }
    }
}

/// A K-quant weight format with a VNNI column-tiled kernel.
pub(super) trait VTile {
    /// Bytes per 256-value weight super-block.
    const WB: usize;
    /// Per-column, per-block values the tiles read as vectors, built once per product.
    type Prep;

    /// The tables for the `ncols` columns of `nb` Q8_K blocks (`arb` bytes each) in `act`.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/VL/BW/VNNI.
    unsafe fn prep(act: &[u8], arb: usize, nb: usize, ncols: usize) -> Self::Prep;

    /// `out[c] = row · column j + c` of `prep`'s activations for `C` (≤ [`TILE`]) columns.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/VL/BW/VNNI; `row` holds whole
    /// super-blocks, as many as `prep`'s columns hold Q8_K blocks; `j + C` columns exist.
    unsafe fn tile<const C: usize>(row: &[u8], prep: &Self::Prep, j: usize, out: &mut [f32]);
}

/// Column panels, then rows, then tiles of [`TILE`] columns (the tail in tiles of 8, 4, 2
/// and 1): a row is unpacked once per tile and stays in L1 across its panel's tiles; a
/// panel's activations stay cached across the rows.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C and AVX-512 F/VL/BW/VNNI; `w` holds `nrows` rows of
/// `K` and `act` `ncols` Q8_K rows of the same length; `out.len() == nrows * ncols`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
pub(super) unsafe fn panels<K: VTile>(
    w: &[u8],
    nrows: usize,
    act: &[u8],
    ncols: usize,
    out: &mut [f32],
) {
    let (wrb, arb) = (w.len() / nrows, act.len() / ncols);
    let nb = arb / Q8K_BYTES;
    debug_assert_eq!(wrb / K::WB, nb);
    // SAFETY: forwarded contract.
    let prep = unsafe { K::prep(act, arb, nb, ncols) };
    let mut j0 = 0;
    while j0 < ncols {
        let nc = PANEL.min(ncols - j0);
        for (i, row) in w.chunks_exact(wrb).enumerate() {
            let dst = &mut out[i * ncols + j0..i * ncols + j0 + nc];
            let mut j = 0;
            while j < nc {
                let c = [TILE, 8, 4, 2, 1]
                    .into_iter()
                    .find(|&c| c <= nc - j)
                    .unwrap_or(1);
                let d = &mut dst[j..j + c];
                let p = &prep;
                // SAFETY: forwarded contract; columns j0 + j + c ≤ ncols exist.
                unsafe {
                    match c {
                        TILE => K::tile::<TILE>(row, p, j0 + j, d),
                        8 => K::tile::<8>(row, p, j0 + j, d),
                        4 => K::tile::<4>(row, p, j0 + j, d),
                        2 => K::tile::<2>(row, p, j0 + j, d),
                        _ => K::tile::<1>(row, p, j0 + j, d),
                    }
                }
                j += c;
            }
        }
        j0 += nc;
    }
}

pub(super) struct Q4K;

/// The aligned activations, and their block sums added in pairs (one pair per Q4_K min) as
/// i16 pairs `[pair 2q, pair 2q + 1]`, laid out `[block][q][column]` (`stride` columns as in
/// [`Q8KCols`]).
pub(super) struct Q4Prep {
    stride: usize,
    pairs: Vec<i32>,
    pub(super) cols: Q8KCols,
}

impl Q4Prep {
    /// The tables for the `ncols` columns of `nb` Q8_K blocks (`arb` bytes each) in `act`,
    /// the quants in [`Q8Block::q4_order`] if `q4`, else in value order.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/VL/BW/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
    pub(super) unsafe fn new(act: &[u8], arb: usize, nb: usize, ncols: usize, q4: bool) -> Self {
        let stride = ncols + TILE;
        // SAFETY: forwarded contract.
        let cols = unsafe { Q8KCols::new(act, arb, nb, q4) };
        let mut pairs = Vec::with_capacity(nb * 4 * stride);
        for b in 0..nb {
            // The block sums added in pairs (|bsum| ≤ 16 · 128, so a pair fits an i16), as
            // four i32 of two pairs each.
            let quads: Vec<[i32; 4]> = cols.bsums[b * stride..b * stride + ncols]
                .iter()
                .map(|&v| {
                    let s =
                        _mm_hadd_epi16(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
                    let mut q = [0i32; 4];
                    // SAFETY: `q` is 16 writable bytes; storeu has no alignment requirement.
                    unsafe { _mm_storeu_si128(q.as_mut_ptr().cast(), s) };
                    q
                })
                .collect();
            for q in 0..4 {
                pairs.extend(quads.iter().map(|p| p[q]));
                pairs.extend([0; TILE]);
            }
        }
        Q4Prep {
            stride,
            pairs,
            cols,
        }
    }

    /// Σ_i m_i · (block sums 2i and 2i + 1) of block `b` for columns `j..j + TILE`, one a
    /// lane (exact), for the eight i16 mins `mins`: each min pair against its row of the table.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
    pub(super) fn mins(&self, b: usize, j: usize, mins: __m128i) -> __m512i {
        let mins = _mm512_castsi128_si512(mins);
        let mut mtot = _mm512_setzero_si512();
        for q in 0..4 {
            let at = (4 * b + q) * self.stride + j;
            let pairs: &[i32; TILE] = self.pairs[at..at + TILE].try_into().expect("TILE");
            // SAFETY: AVX-512 F is this function's contract; `pairs` is 64 bytes.
            let pairs = unsafe { _mm512_loadu_si512(pairs.as_ptr().cast()) };
            let m = _mm512_permutexvar_epi32(_mm512_set1_epi32(q as i32), mins);
            mtot = _mm512_dpwssd_epi32(mtot, pairs, m);
        }
        mtot
    }
}

/// For `packs_epi32` of [`Q4Block::isum`]'s two sums: the sub-block of each i16 lane. Its
/// 128-bit block b holds four lanes of sub-block σ(b), then four of 4 + σ(b), σ = 0, 2, 1, 3.
const SCALE_IDX: [i16; 32] = {
    let mut t = [0i16; 32];
    let mut l = 0;
    while l < 32 {
        let (b, second) = (l / 8, ((l % 8) / 4) as i16);
        t[l] = 4 * second + [0, 2, 1, 3][b];
        l += 1;
    }
    t
};

/// A Q4_K super-block's eight 6-bit scales and eight 6-bit mins as bytes (ggml's `utmp`
/// shuffle with word operations), each set packed little-endian in a `u64`.
#[inline]
pub(super) fn q4_k_scales_mins(packed: &[u8; 12]) -> (u64, u64) {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const TOP2: u32 = 0x0303_0303;
    let word = |i: usize| u32::from_le_bytes(*arr::<4>(packed, 4 * i));
    let (w0, w1, w2) = (word(0), word(1), word(2));
    // Scales 0-3 are the low 6 bits of bytes 0-3; scales 4-7 the low nibbles of bytes 8-11
    // with the top 2 bits of bytes 0-3. Mins likewise from bytes 4-7 and the high nibbles.
    let sc = [w0 & LOW6, (w2 & LOW4) | (((w0 >> 6) & TOP2) << 4)];
    let m = [w1 & LOW6, ((w2 >> 4) & LOW4) | (((w1 >> 6) & TOP2) << 4)];
    let join = |v: [u32; 2]| u64::from(v[0]) | (u64::from(v[1]) << 32);
    (join(sc), join(m))
}

/// One Q4_K super-block, unpacked for `vpdpbusd` so that two of them sum into the same
/// lanes for the same sub-block: per 128 values (sub-blocks s..s+4, 32 each), `w[2g]` holds
/// the first 16 of sub-blocks s, s+2, s+1, s+3 and `w[2g + 1]` their last 16 (the Q8_K quants
/// meet them in [`Q8Block::q4_order`]). The 32 lane sums of a super-block (8 products each,
/// |sum| ≤ 8 · 15 · 128 < 2^15) then take their scales with one `packs` and one `madd`.
struct Q4Block {
    w: [__m512i; 4],
    /// The scales as i16, placed for [`Q4Block::isum`]'s `packs`.
    s: __m512i,
    /// The mins as eight i16.
    mins: __m128i,
    d: f32,
    dmin: f32,
}

impl Q4Block {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
    fn new(x: &[u8; Q4K_BYTES]) -> Self {
        let m4 = _mm512_set1_epi8(0xf);
        let (sc, mins) = q4_k_scales_mins(arr(x, 4));
        let sc = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)));
        let mut w = [_mm512_setzero_si512(); 4];
        for h in 0..2 {
            // SAFETY: AVX-512 F is this function's contract; the array is bounds-checked.
            let q = unsafe { ld64(arr(x, 16 + 64 * h)) };
            let lo = _mm512_and_si512(q, m4);
            let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4);
            // lo: sub-blocks 4h, 4h + 2 (32 bytes each); hi: 4h + 1, 4h + 3.
            w[2 * h] = _mm512_shuffle_i64x2::<0b10_00_10_00>(lo, hi);
            w[2 * h + 1] = _mm512_shuffle_i64x2::<0b11_01_11_01>(lo, hi);
        }
        Self {
            w,
            // SAFETY: AVX-512 F is this function's contract; the table is 64 bytes.
            s: unsafe {
                _mm512_permutexvar_epi16(_mm512_loadu_si512(SCALE_IDX.as_ptr().cast()), sc)
            },
            mins: _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mins as i64)),
            d: h2f(x, 0),
            dmin: h2f(x, 2),
        }
    }

    /// Σ scale · (sub-block's quants · activation quants) of the Q8_K quants `y` (in
    /// [`Q8Block::q4_order`]), spread over 16 i32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
    fn isum(&self, y: &[__m512i; 4]) -> __m512i {
        let z = _mm512_setzero_si512();
        let half = |g: usize| {
            let p = _mm512_dpbusd_epi32(z, self.w[2 * g], y[2 * g]);
            _mm512_dpbusd_epi32(p, self.w[2 * g + 1], y[2 * g + 1])
        };
        _mm512_madd_epi16(_mm512_packs_epi32(half(0), half(1)), self.s)
    }
}

/// One Q4_K row · one Q8_K row.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C and AVX-512 F/VL/BW/VNNI; `w`/`a` are Q4_K/Q8_K rows
/// of equal length.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
pub(super) unsafe fn dot_q4_k(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(Q4K_BYTES).zip(a.chunks_exact(Q8K_BYTES)) {
        // Decode streams the weights once: ask for them well ahead, as the 32-value kernels
        // do (a prefetch never faults, past the row's end included).
        prefetch_ahead(x.as_ptr(), 1);
        let blk = Q4Block::new(arr(x, 0));
        let r = blk.isum(&Q8Block::load(arr(y, 0)).q4_order());
        let r = _mm256_add_epi32(_mm512_castsi512_si256(r), _mm512_extracti64x4_epi64::<1>(r));
        // Σ_j bsum_j · m[j / 2], with each min repeated for its two block sums.
        let mins = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(
            _mm_packus_epi16(blk.mins, blk.mins),
            _mm_packus_epi16(blk.mins, blk.mins),
        ));
        // SAFETY: AVX2 is this function's contract; the array is bounds-checked.
        let m = _mm256_madd_epi16(unsafe { ld(arr(y, Q8K_BSUMS)) }, mins);
        // [r, m] lane sums: two rounds of pairwise adds, then the 128-bit halves.
        let s = _mm256_hadd_epi32(r, m);
        let s = _mm256_hadd_epi32(s, s);
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
        let (itot, mtot) = (_mm_cvtsi128_si32(s), _mm_extract_epi32::<1>(s));
        let yd = rd_f32(y, 0);
        sum += blk.d * yd * itot as f32 - blk.dmin * yd * mtot as f32;
    }
    sum
}

impl VTile for Q4K {
    const WB: usize = Q4K_BYTES;
    type Prep = Q4Prep;

    unsafe fn prep(act: &[u8], arb: usize, nb: usize, ncols: usize) -> Q4Prep {
        // SAFETY: forwarded contract.
        unsafe { Q4Prep::new(act, arb, nb, ncols, true) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
    unsafe fn tile<const C: usize>(row: &[u8], prep: &Q4Prep, j: usize, out: &mut [f32]) {
        let mut sum = _mm512_setzero_ps();
        for (b, x) in row.chunks_exact(Self::WB).enumerate() {
            prefetch_first::<{ Self::WB }>(x, j);
            let blk = Q4Block::new(arr(x, 0));
            let y = prep.cols.row::<C>(b, j);
            let mut r = [_mm512_setzero_si512(); TILE];
            for (rc, q) in r.iter_mut().zip(y.q) {
                *rc = blk.isum(q);
            }
            let itot = reduce::<C>(&r);
            let mtot = prep.mins(b, j, blk.mins);
            // SAFETY: AVX-512 F is this function's contract; `y.d` is 16 readable f32.
            let yd = unsafe { _mm512_loadu_ps(y.d.as_ptr()) };
            // `sum += d · yd · itot − dmin · yd · mtot`, lane by lane as `dot_q4_k` does.
            let di = _mm512_mul_ps(
                _mm512_mul_ps(_mm512_set1_ps(blk.d), yd),
                _mm512_cvtepi32_ps(itot),
            );
            let dm = _mm512_mul_ps(
                _mm512_mul_ps(_mm512_set1_ps(blk.dmin), yd),
                _mm512_cvtepi32_ps(mtot),
            );
            sum = _mm512_add_ps(sum, _mm512_sub_ps(di, dm));
        }
        let mut all = [0.0f32; TILE];
        // SAFETY: `all` is 16 writable f32; storeu has no alignment requirement.
        unsafe { _mm512_storeu_ps(all.as_mut_ptr(), sum) };
        out[..C].copy_from_slice(&all[..C]);
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use super::super::kquant_vnni_q5::{Q5K, dot_q5_k};
    use super::super::kquant_vnni_q6::{Q6K, dot_q6_k};
    use super::{Q4K, VTile, dot_q4_k, panels};
    use crate::ggml_type::GgmlType;
    use crate::quant::act_format::ActFormat;
    use crate::quant::cpu_features::CpuFeatures;
    use crate::quant::reference;

    /// Values in [-s, s) from a seeded xorshift, with a heavy tail every 37th value so that
    /// scales and mins vary across sub-blocks.
    fn values(seed: &mut u64, len: usize, s: f32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                let v = ((*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * s;
                if i % 37 == 0 { 8.0 * v } else { v }
            })
            .collect()
    }

    fn products<K: VTile>(ty: GgmlType, dot: unsafe fn(&[u8], &[u8]) -> f32) {
        let (n, nrows) = (512, 3);
        let (wrb, arb) = (ty.row_bytes(n).unwrap(), ActFormat::Q8K.row_bytes(n));
        let mut seed = 0x2545_f491_4f6c_dd1d;
        let mut w = vec![0u8; wrb * nrows];
        for row in w.chunks_exact_mut(wrb) {
            reference::quantize_row(ty, &values(&mut seed, n, 0.5), row);
        }
        // Up to 40 columns: every tile width (16, 8, 4, 2, 1) and panel tail.
        for ncols in 1..=40 {
            let mut act = vec![0u8; arb * ncols];
            for col in act.chunks_exact_mut(arb) {
                reference::quantize_act(ActFormat::Q8K, &values(&mut seed, n, 3.0), col);
            }
            let mut out = vec![f32::NAN; nrows * ncols];
            // SAFETY: the caller checked the CPU; the lengths are whole rows.
            unsafe { panels::<K>(&w, nrows, &act, ncols, &mut out) };
            for (i, wr) in w.chunks_exact(wrb).enumerate() {
                for (j, ar) in act.chunks_exact(arb).enumerate() {
                    let want = reference::dot(ty, wr, ar).to_bits();
                    // SAFETY: as above.
                    let got = unsafe { dot(wr, ar) }.to_bits();
                    assert_eq!(got, want, "{} dot ({i},{j})", ty.name());
                    let got = out[i * ncols + j].to_bits();
                    assert_eq!(got, want, "{} {ncols} columns ({i},{j})", ty.name());
                }
            }
        }
    }

    /// Prefill (every tile width) and decode equal the reference to the bit, on a CPU with
    /// AVX-512 VNNI (elsewhere there is nothing of this build to run).
    #[test]
    fn every_tile_width_is_bit_identical_to_the_reference() {
        if !CpuFeatures::detect().contains(CpuFeatures::FOR_AVX512_VNNI) {
            return;
        }
        products::<Q4K>(GgmlType::Q4K, dot_q4_k);
        products::<Q6K>(GgmlType::Q6K, dot_q6_k);
        products::<Q5K>(GgmlType::Q5K, dot_q5_k);
    }
}
