//! The AVX2 + FMA computation shared by the x86_64-only `avxdot` program and the host test.

use core::arch::x86_64::*;

/// Deterministic inputs (exact in f32).
pub fn inputs() -> ([f32; 1024], [f32; 1024]) {
    let mut x = [0.0f32; 1024];
    let mut y = [0.0f32; 1024];
    for i in 0..1024 {
        x[i] = (i % 17) as f32 * 0.125 - 1.0;
        y[i] = (i % 13) as f32 * 0.25 + 0.5;
    }
    (x, y)
}

/// The f32 bits of Σ x·y computed with 8-lane FMAs and a fixed reduction order.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_bits() -> u32 {
    let (x, y) = inputs();
    let mut acc = _mm256_setzero_ps();
    for (xs, ys) in x.chunks_exact(8).zip(y.chunks_exact(8)) {
        // SAFETY: each chunk is exactly 8 f32s; loadu has no alignment requirement.
        let (a, b) = unsafe { (_mm256_loadu_ps(xs.as_ptr()), _mm256_loadu_ps(ys.as_ptr())) };
        acc = _mm256_fmadd_ps(a, b, acc);
    }
    let mut lanes = [0.0f32; 8];
    // SAFETY: `lanes` is 8 writable f32s.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
    lanes.iter().fold(0.0f32, |s, &v| s + v).to_bits()
}
