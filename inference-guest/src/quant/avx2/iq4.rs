//! IQ4_XS·Q8_K in llama.cpp's x86 AVX2 order (bit-identical to the scalar reference): table
//! lookups with `pshufb`, eight i32 lanes per super-block, one float FMA per super-block.

use core::arch::x86_64::*;

use super::{arr, h2f, hsum, ld, ld16};
use crate::quant::reference::{IQ4_VALUES, iq4_xs_scales};

/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w`/`a` are IQ4_XS/Q8_K rows of equal length.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_iq4_xs(w: &[u8], a: &[u8]) -> f32 {
    let t = IQ4_VALUES.map(|v| v as u8);
    // SAFETY: AVX2 is this function's contract; the array is 16 bytes.
    let table = unsafe { ld16(&t) };
    let table = _mm256_set_m128i(table, table);
    let m4 = _mm_set1_epi8(0xf);
    let mut acc = _mm256_setzero_ps();
    for (x, y) in w.chunks_exact(136).zip(a.chunks_exact(292)) {
        let mut isum = _mm256_setzero_si256();
        for (ib, ls) in iq4_xs_scales(x).into_iter().enumerate() {
            // SAFETY: as above; the arrays are bounds-checked.
            let (qb, yv) = unsafe { (ld16(arr(x, 8 + 16 * ib)), ld(arr(y, 4 + 32 * ib))) };
            let idx = _mm256_set_m128i(
                _mm_and_si128(_mm_srli_epi16::<4>(qb), m4),
                _mm_and_si128(qb, m4),
            );
            let q = _mm256_shuffle_epi8(table, idx);
            // |T[q]| <= 127 and |a| <= 127: the sign trick's pair sums fit i16.
            let p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(yv, q));
            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p16, _mm256_set1_epi16(ls as i16)));
        }
        let d = _mm256_set1_ps(h2f(x, 0) * f32::from_le_bytes(*arr::<4>(y, 0)));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum), acc);
    }
    hsum(acc)
}
