//! Q5_K·Q8_K, summed in llama.cpp's x86 order (bit-identical to the scalar reference):
//! eight i32 lanes per super-block, one float FMA per super-block, the mins in a scalar.

use core::arch::x86_64::*;

use super::{arr, h2f, hsum, ld};
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
/// The CPU must support AVX2, FMA and F16C; `w`/`a` are Q5_K/Q8_K rows of equal length.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q5_k(w: &[u8], a: &[u8]) -> f32 {
    let m4 = _mm256_set1_epi8(0xf);
    let b4 = _mm256_set1_epi8(0x10);
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0.0f32;
    for (x, y) in w.chunks_exact(176).zip(a.chunks_exact(292)) {
        let (sc, m) = q4_k_scales_mins(&x[4..16]);
        // SAFETY: AVX2 is this function's contract; the array is bounds-checked.
        let qh = unsafe { ld(arr(x, 16)) };
        let mut isum = _mm256_setzero_si256();
        for c in 0..4 {
            // SAFETY: as above.
            let (q, y0, y1) = unsafe {
                (
                    ld(arr(x, 48 + 32 * c)),
                    ld(arr(y, 4 + 64 * c)),
                    ld(arr(y, 36 + 64 * c)),
                )
            };
            // Bit 2c (2c + 1) of qh[l] moved to bit 4: shift by a run-time amount per chunk.
            let sh0 = _mm_cvtsi32_si128(2 * c as i32);
            let sh1 = _mm_cvtsi32_si128(2 * c as i32 + 1);
            let h0 = _mm256_and_si256(_mm256_slli_epi16::<4>(_mm256_srl_epi16(qh, sh0)), b4);
            let h1 = _mm256_and_si256(_mm256_slli_epi16::<4>(_mm256_srl_epi16(qh, sh1)), b4);
            let lo = _mm256_or_si256(_mm256_and_si256(q, m4), h0);
            let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q), m4), h1);
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
        let msum: i32 = (0..8)
            .map(|j| i32::from(m[j]) * (bsum(y, 2 * j) + bsum(y, 2 * j + 1)))
            .sum();
        let yd = rd_f32(y, 0);
        summs += -yd * h2f(x, 2) * msum as f32;
        let d = _mm256_set1_ps(yd * h2f(x, 0));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum), acc);
    }
    hsum(acc) + summs
}
