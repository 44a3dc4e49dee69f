//! Q5_K·Q8_K with AVX-512 VNNI (see [`super::kquant_vnni`] for the scheme).
//!
//! Q5_K is Q4_K with a fifth bit per quant: the 5-bit quants (0..31) are unsigned, so
//! `vpdpbusd` takes them as it takes Q4_K's nibbles, and the scales and mins are Q4_K's. The
//! reference, though, sums a super-block into eight i32 lanes (lane m takes bytes 4m..4m+4 of
//! every 32-value sub-block, times its scale) and turns each into f32 with its own FMA, as
//! Q6_K's does: the lanes' byte partition is part of the numerics. The quants are therefore
//! unpacked in value order, a ZMM vector holding two sub-blocks whose 256-bit halves, once
//! scaled, add up to exactly those eight lanes; the mins go into a float beside them.
//!
//! Prefill puts two columns' eight lanes in one ZMM vector for the conversion and the FMA
//! (lane for lane what decode does on a YMM vector) and the mins of sixteen columns in one
//! vector, from [`Q4Prep`]'s table of block-sum pairs.

use core::arch::x86_64::*;

use super::kquant_vnni::{
    Q4Prep, Q8Block, Q8K_BYTES, TILE, VTile, prefetch_first, q4_k_scales_mins,
};
use super::{arr, h2f, hsum, hsum_i32, ld, prefetch_ahead};

pub(super) struct Q5K;

/// Bytes of a Q5_K super-block: f16 d, f16 dmin, 12 bytes of scales and mins, qh[32],
/// qs[128].
const Q5K_BYTES: usize = 176;

/// For quants vector k (sub-blocks 2k and 2k + 1): the sub-block of each i32 lane.
const SCALE_IDX: [[i32; 16]; 4] = {
    let mut t = [[0i32; 16]; 4];
    let mut k = 0;
    while k < 4 {
        let mut l = 0;
        while l < 16 {
            t[k][l] = 2 * k as i32 + (l / 8) as i32;
            l += 1;
        }
        k += 1;
    }
    t
};

/// One Q5_K super-block, unpacked for `vpdpbusd`.
struct Q5Block {
    /// The 256 quants (0..31), 64 a vector, in the order of the Q8_K quants: vector k holds
    /// sub-blocks 2k and 2k + 1, the low and high nibbles of `qs[32k..32k + 32]`.
    q: [__m512i; 4],
    /// Vector k's scales, one an i32 lane (its high i16 zero, for `madd`).
    s: [__m512i; 4],
    /// The mins as eight i16 (as [`Q4Prep::mins`] takes them).
    mins: __m128i,
    d: f32,
    dmin: f32,
}

impl Q5Block {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
    fn new(x: &[u8; Q5K_BYTES]) -> Self {
        let m4 = _mm512_set1_epi8(0xf);
        let b4 = _mm512_set1_epi8(0x10);
        // Per 16-bit word: 0 in the low 256 bits, `hi` in the high.
        let halves =
            |hi: i16| _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi16(hi));
        let (sc, mins) = q4_k_scales_mins(arr(x, 4));
        let sc = _mm512_cvtepu8_epi32(_mm_cvtsi64_si128(sc as i64));
        // SAFETY: AVX2 is this function's contract; the array is bounds-checked.
        let qh = _mm512_broadcast_i64x4(unsafe { ld(arr(x, 16)) });
        // Bit 2k (2k + 1) of qh[l] is bit 4 of byte l of sub-block 2k (2k + 1): bits 0 and 1
        // brought to bit 0 of the two halves, two more bits down per vector.
        let mut h = _mm512_srlv_epi16(qh, halves(1));
        let nib = halves(4);
        let mut q = [_mm512_setzero_si512(); 4];
        for (k, q) in q.iter_mut().enumerate() {
            // SAFETY: as above.
            let qs = _mm512_broadcast_i64x4(unsafe { ld(arr(x, 48 + 32 * k)) });
            let lo_hi = _mm512_and_si512(_mm512_srlv_epi16(qs, nib), m4);
            *q = _mm512_or_si512(lo_hi, _mm512_and_si512(_mm512_slli_epi16::<4>(h), b4));
            h = _mm512_srli_epi16::<2>(h);
        }
        // SAFETY: AVX-512 F is this function's contract; each table is 64 bytes.
        let s = SCALE_IDX.map(|t| unsafe {
            _mm512_permutexvar_epi32(_mm512_loadu_si512(t.as_ptr().cast()), sc)
        });
        Self {
            q,
            s,
            mins: _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mins as i64)),
            d: h2f(x, 0),
            dmin: h2f(x, 2),
        }
    }

    /// The reference's eight scaled lane sums against the Q8_K quants `y` (value order),
    /// twice: lanes l and l + 8 add up to the reference's lane l. A lane of `vpdpbusd` fits
    /// its low i16 (|sum| ≤ 4 · 31 · 128 < 2^15) and the scale's high i16 is zero, so one
    /// `madd`/`vpdpwssd` scales it exactly.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
    fn lanes(&self, y: &[__m512i; 4]) -> __m512i {
        let z = _mm512_setzero_si512();
        let p = |k: usize| _mm512_dpbusd_epi32(z, self.q[k], y[k]);
        let mut r = _mm512_madd_epi16(p(0), self.s[0]);
        for k in 1..4 {
            r = _mm512_dpwssd_epi32(r, p(k), self.s[k]);
        }
        r
    }
}

/// One Q5_K row · one Q8_K row.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C and AVX-512 F/VL/BW/VNNI; `w`/`a` are Q5_K/Q8_K rows
/// of equal length.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
pub(super) unsafe fn dot_q5_k(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0.0f32;
    for (x, y) in w.chunks_exact(Q5K_BYTES).zip(a.chunks_exact(Q8K_BYTES)) {
        // Decode streams the weights once: ask for them well ahead.
        prefetch_ahead(x.as_ptr(), 1);
        let blk = Q5Block::new(arr(x, 0));
        let y = Q8Block::load(arr(y, 0));
        let r = blk.lanes(&y.q);
        let r = _mm256_add_epi32(_mm512_castsi512_si256(r), _mm512_extracti64x4_epi64::<1>(r));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y.d * blk.d), _mm256_cvtepi32_ps(r), acc);
        // Σ_j bsum_j · m[j / 2], with each min repeated for its two block sums.
        let m = _mm_packus_epi16(blk.mins, blk.mins);
        let mins = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m, m));
        let msum = hsum_i32(_mm256_madd_epi16(y.bsums, mins));
        summs += -y.d * blk.dmin * msum as f32;
    }
    hsum(acc) + summs
}

impl VTile for Q5K {
    const WB: usize = Q5K_BYTES;
    type Prep = Q4Prep;

    unsafe fn prep(act: &[u8], arb: usize, nb: usize, ncols: usize) -> Q4Prep {
        // SAFETY: forwarded contract.
        unsafe { Q4Prep::new(act, arb, nb, ncols, false) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
    unsafe fn tile<const C: usize>(row: &[u8], prep: &Q4Prep, j: usize, out: &mut [f32]) {
        // Columns in pairs, one ZMM accumulator each (an odd last column pairs with zeros);
        // the mins' sums of all sixteen columns in one.
        let mut acc = [_mm512_setzero_ps(); TILE / 2];
        let mut summs = _mm512_setzero_ps();
        let z = _mm512_setzero_si512();
        for (b, x) in row.chunks_exact(Q5K_BYTES).enumerate() {
            prefetch_first::<Q5K_BYTES>(x, j);
            let blk = Q5Block::new(arr(x, 0));
            let y = prep.cols.row::<C>(b, j);
            // SAFETY: AVX-512 F is this function's contract; `y.d` is 16 readable f32.
            let yd = unsafe { _mm512_loadu_ps(y.d.as_ptr()) };
            for (k, acc) in acc.iter_mut().enumerate().take(C.div_ceil(2)) {
                let ra = blk.lanes(&y.q[2 * k]);
                let rb = y.q.get(2 * k + 1).map_or(z, |q| blk.lanes(q));
                // Column 2k's eight lanes low, 2k + 1's high.
                let r = _mm512_add_epi32(
                    _mm512_shuffle_i64x2::<0b01_00_01_00>(ra, rb),
                    _mm512_shuffle_i64x2::<0b11_10_11_10>(ra, rb),
                );
                let (lo, hi) = (2 * k as i32, 2 * k as i32 + 1);
                let pair =
                    _mm512_mask_blend_epi32(0xff00, _mm512_set1_epi32(lo), _mm512_set1_epi32(hi));
                let d = _mm512_mul_ps(_mm512_permutexvar_ps(pair, yd), _mm512_set1_ps(blk.d));
                *acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(r), *acc);
            }
            // `summs += -yd · dmin · msum`, lane by lane as `dot_q5_k` does.
            let mtot = prep.mins(b, j, blk.mins);
            let neg_yd = _mm512_castsi512_ps(_mm512_xor_si512(
                _mm512_castps_si512(yd),
                _mm512_set1_epi32(i32::MIN),
            ));
            let t = _mm512_mul_ps(
                _mm512_mul_ps(neg_yd, _mm512_set1_ps(blk.dmin)),
                _mm512_cvtepi32_ps(mtot),
            );
            summs = _mm512_add_ps(summs, t);
        }
        let mut all = [0.0f32; TILE];
        // SAFETY: `all` is 16 writable f32; storeu has no alignment requirement.
        unsafe { _mm512_storeu_ps(all.as_mut_ptr(), summs) };
        for (k, acc) in acc.iter().enumerate().take(C.div_ceil(2)) {
            all[2 * k] += hsum(_mm512_castps512_ps256(*acc));
            all[2 * k + 1] += hsum(_mm256_castsi256_ps(_mm512_extracti64x4_epi64::<1>(
                _mm512_castps_si512(*acc),
            )));
        }
        out[..C].copy_from_slice(&all[..C]);
    }
}
