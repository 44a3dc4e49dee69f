//! Q4_K·Q8_K and Q6_K·Q8_K. Integer sums per super-block are exact; one float FMA per block.

use core::arch::x86_64::*;

use super::{arr, h2f, hsum, hsum_i32, ld, ld16};
use crate::quant::reference::q4_k_scales_mins;

#[inline]
fn rd_f32(b: &[u8], at: usize) -> f32 {
    f32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
fn bsum(y: &[u8], j: usize) -> i32 {
    i32::from(i16::from_le_bytes([y[260 + 2 * j], y[261 + 2 * j]]))
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w`/`a` are Q4_K/Q8_K rows of equal length.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q4_k(w: &[u8], a: &[u8]) -> f32 {
    let m4 = _mm256_set1_epi8(0xf);
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(144).zip(a.chunks_exact(292)) {
        let (sc, m) = q4_k_scales_mins(&x[4..16]);
        let mut isum = _mm256_setzero_si256();
        for c in 0..4 {
            // SAFETY: AVX2 is this function's contract; the arrays are bounds-checked.
            let (q, y0, y1) = unsafe {
                (
                    ld(arr(x, 16 + 32 * c)),
                    ld(arr(y, 4 + 64 * c)),
                    ld(arr(y, 36 + 64 * c)),
                )
            };
            let lo = _mm256_and_si256(q, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
            let p0 = _mm256_madd_epi16(
                _mm256_maddubs_epi16(lo, y0),
                _mm256_set1_epi16(i16::from(sc[2 * c])),
            );
            let p1 = _mm256_madd_epi16(
                _mm256_maddubs_epi16(hi, y1),
                _mm256_set1_epi16(i16::from(sc[2 * c + 1])),
            );
            isum = _mm256_add_epi32(isum, _mm256_add_epi32(p0, p1));
        }
        let msum: i32 = (0..16).map(|j| bsum(y, j) * i32::from(m[j / 2])).sum();
        let yd = rd_f32(y, 0);
        sum += h2f(x, 0) * yd * hsum_i32(isum) as f32 - h2f(x, 2) * yd * msum as f32;
    }
    sum
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w`/`a` are Q6_K/Q8_K rows of equal length.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q6_k(w: &[u8], a: &[u8]) -> f32 {
    let m4 = _mm256_set1_epi8(0xf);
    let m2 = _mm256_set1_epi8(3);
    let mut acc = _mm256_setzero_ps();
    for (x, y) in w.chunks_exact(210).zip(a.chunks_exact(292)) {
        let sc = |j: usize| i16::from(x[192 + j] as i8);
        let mut isum = _mm256_setzero_si256();
        for h in 0..2 {
            // SAFETY: AVX2 is this function's contract; the arrays are bounds-checked.
            let (ql0, ql1, qh) = unsafe {
                (
                    ld(arr(x, 64 * h)),
                    ld(arr(x, 64 * h + 32)),
                    ld(arr(x, 128 + 32 * h)),
                )
            };
            let hbits = |v: __m256i| _mm256_slli_epi16::<4>(_mm256_and_si256(v, m2));
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
            for (k, qk) in q.iter().enumerate() {
                // SAFETY: as above.
                let yk = unsafe { ld(arr(y, 4 + 128 * h + 32 * k)) };
                let s = 8 * h + 2 * k;
                let scv = _mm256_set_m128i(_mm_set1_epi16(sc(s + 1)), _mm_set1_epi16(sc(s)));
                isum =
                    _mm256_add_epi32(isum, _mm256_madd_epi16(_mm256_maddubs_epi16(*qk, yk), scv));
            }
        }
        // The quants are stored with +32: lane m removes 32·Σa of 16-value groups 2m and
        // 2m+1 (ggml's `q8sclsub`), then the lanes go to f32 separately, as in llama.cpp.
        // SAFETY: as above; 16 scales and 16 i16 block sums are in bounds.
        let (scales, bsums) = unsafe { (ld16(arr(x, 192)), ld(arr(y, 260))) };
        let corr = _mm256_slli_epi32::<5>(_mm256_madd_epi16(bsums, _mm256_cvtepi8_epi16(scales)));
        let d = _mm256_set1_ps(rd_f32(y, 0) * h2f(x, 208));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_sub_epi32(isum, corr)), acc);
    }
    hsum(acc)
}
