//! BF16·BF16 in llama.cpp's AVX2 order (`ggml_vec_dot_bf16`), bit-identical to the reference:
//! widen by a 16-bit shift, four accumulators of products rounded before the add.

use core::arch::x86_64::*;

use super::{arr, hsum, ld16};
use crate::quant::reference::bf16::bf16_to_f32;

/// Eight bf16 as f32 (exact).
#[inline]
#[target_feature(enable = "avx2")]
fn widen(v: __m128i) -> __m256 {
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(v)))
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w.len() == a.len()`, even.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_bf16(w: &[u8], a: &[u8]) -> f32 {
    let mut c = [_mm256_setzero_ps(); 4];
    let mut wc = w.chunks_exact(64);
    let mut ac = a.chunks_exact(64);
    for (x, y) in (&mut wc).zip(&mut ac) {
        for (k, s) in c.iter_mut().enumerate() {
            // SAFETY: AVX2 is this function's contract; arrays are bounds-checked.
            let (xv, yv) = unsafe { (ld16(arr(x, 16 * k)), ld16(arr(y, 16 * k))) };
            // Separate multiply and add, as llama.cpp's kernel (no FMA contraction).
            *s = _mm256_add_ps(_mm256_mul_ps(widen(xv), widen(yv)), *s);
        }
    }
    let lanes = _mm256_add_ps(_mm256_add_ps(c[0], c[2]), _mm256_add_ps(c[1], c[3]));
    let mut sum = f64::from(hsum(lanes));
    for (x, y) in wc
        .remainder()
        .chunks_exact(2)
        .zip(ac.remainder().chunks_exact(2))
    {
        let (p, q) = (
            bf16_to_f32(u16::from_le_bytes([x[0], x[1]])),
            bf16_to_f32(u16::from_le_bytes([y[0], y[1]])),
        );
        sum += f64::from(p * q);
    }
    sum as f32
}
