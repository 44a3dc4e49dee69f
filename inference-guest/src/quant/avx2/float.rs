//! F16·F16 (F16C widening, f32 accumulation) and F32·F32, four accumulators each.

use core::arch::x86_64::*;

use super::{arr, hsum, ld, ld16};
use crate::quant::f16::f16_to_f32;

/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w.len() == a.len()`, even.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_f16(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut wc = w.chunks_exact(64);
    let mut ac = a.chunks_exact(64);
    for (x, y) in (&mut wc).zip(&mut ac) {
        for (k, s) in acc.iter_mut().enumerate() {
            // SAFETY: AVX2/F16C is this function's contract; arrays are bounds-checked.
            let (xv, yv) = unsafe { (ld16(arr(x, 16 * k)), ld16(arr(y, 16 * k))) };
            *s = _mm256_fmadd_ps(_mm256_cvtph_ps(xv), _mm256_cvtph_ps(yv), *s);
        }
    }
    let mut sum = hsum(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ));
    for (x, y) in wc
        .remainder()
        .chunks_exact(2)
        .zip(ac.remainder().chunks_exact(2))
    {
        sum += f16_to_f32(u16::from_le_bytes([x[0], x[1]]))
            * f16_to_f32(u16::from_le_bytes([y[0], y[1]]));
    }
    sum
}

/// # Safety
/// The CPU must support AVX2 and FMA; `w.len() == a.len()`, a multiple of 4.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_f32(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut wc = w.chunks_exact(128);
    let mut ac = a.chunks_exact(128);
    for (x, y) in (&mut wc).zip(&mut ac) {
        for (k, s) in acc.iter_mut().enumerate() {
            // SAFETY: AVX2 is this function's contract; arrays are bounds-checked.
            let (xv, yv) = unsafe { (ld(arr(x, 32 * k)), ld(arr(y, 32 * k))) };
            *s = _mm256_fmadd_ps(_mm256_castsi256_ps(xv), _mm256_castsi256_ps(yv), *s);
        }
    }
    let mut sum = hsum(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ));
    for (x, y) in wc
        .remainder()
        .chunks_exact(4)
        .zip(ac.remainder().chunks_exact(4))
    {
        sum += f32::from_le_bytes([x[0], x[1], x[2], x[3]])
            * f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
    }
    sum
}
