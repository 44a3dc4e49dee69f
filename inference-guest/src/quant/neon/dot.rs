//! F16 and F32 dot products, and the helpers of the quantised kernels (block scales, exact
//! i8 multiply-accumulate, nibble unpacking).

use core::arch::aarch64::*;

use super::{arr, ld_u8};
use crate::quant::f16::f16_to_f32;

#[inline]
#[target_feature(enable = "neon")]
pub(super) fn h(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

#[inline]
#[target_feature(enable = "neon")]
pub(super) fn rd_f32(b: &[u8], at: usize) -> f32 {
    f32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Σ a·b over 16 i8 lanes into 4 i32 lanes (each i16 pair sum is at most 2·128·127).
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn mac16(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    let hi = vmull_high_s8(a, b);
    vpadalq_s16(vpadalq_s16(acc, lo), hi)
}

/// Low and high nibbles of 16 bytes as two i8 vectors (values 0..=15).
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn nibbles(b: &[u8; 16]) -> (int8x16_t, int8x16_t) {
    let q = ld_u8(b);
    (
        vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0xf))),
        vreinterpretq_s8_u8(vshrq_n_u8::<4>(q)),
    )
}

/// Widens 4 f16 to f32 exactly: shift into f32 position and rescale by 2^112 (exact for
/// normals and subnormals); infinities and NaNs get the all-ones exponent.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn h2f4(hv: uint16x4_t) -> float32x4_t {
    let w = vmovl_u16(hv);
    let sign = vshlq_n_u32::<16>(vandq_u32(w, vdupq_n_u32(0x8000)));
    let em = vandq_u32(w, vdupq_n_u32(0x7fff));
    let bits = vshlq_n_u32::<13>(em);
    let scaled = vmulq_f32(
        vreinterpretq_f32_u32(bits),
        vdupq_n_f32(f32::from_bits(0x7780_0000)),
    );
    let special = vcgeq_u32(em, vdupq_n_u32(0x7c00));
    let r = vbslq_u32(
        special,
        vorrq_u32(bits, vdupq_n_u32(0x7f80_0000)),
        vreinterpretq_u32_f32(scaled),
    );
    vreinterpretq_f32_u32(vorrq_u32(r, sign))
}

#[target_feature(enable = "neon")]
pub(super) fn dot_f16(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut wc = w.chunks_exact(32);
    let mut ac = a.chunks_exact(32);
    for (x, y) in (&mut wc).zip(&mut ac) {
        for k in 0..2 {
            let xv = vreinterpretq_u16_u8(ld_u8(arr(x, 16 * k)));
            let yv = vreinterpretq_u16_u8(ld_u8(arr(y, 16 * k)));
            acc[2 * k] = vfmaq_f32(acc[2 * k], h2f4(vget_low_u16(xv)), h2f4(vget_low_u16(yv)));
            acc[2 * k + 1] = vfmaq_f32(
                acc[2 * k + 1],
                h2f4(vget_high_u16(xv)),
                h2f4(vget_high_u16(yv)),
            );
        }
    }
    let mut sum = vaddvq_f32(vaddq_f32(
        vaddq_f32(acc[0], acc[1]),
        vaddq_f32(acc[2], acc[3]),
    ));
    for (x, y) in wc
        .remainder()
        .chunks_exact(2)
        .zip(ac.remainder().chunks_exact(2))
    {
        sum += h(x, 0) * h(y, 0);
    }
    sum
}

#[target_feature(enable = "neon")]
pub(super) fn dot_f32(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut wc = w.chunks_exact(64);
    let mut ac = a.chunks_exact(64);
    for (x, y) in (&mut wc).zip(&mut ac) {
        for (k, s) in acc.iter_mut().enumerate() {
            let xv = vreinterpretq_f32_u8(ld_u8(arr(x, 16 * k)));
            let yv = vreinterpretq_f32_u8(ld_u8(arr(y, 16 * k)));
            *s = vfmaq_f32(*s, xv, yv);
        }
    }
    let mut sum = vaddvq_f32(vaddq_f32(
        vaddq_f32(acc[0], acc[1]),
        vaddq_f32(acc[2], acc[3]),
    ));
    for (x, y) in wc
        .remainder()
        .chunks_exact(4)
        .zip(ac.remainder().chunks_exact(4))
    {
        sum += rd_f32(x, 0) * rd_f32(y, 0);
    }
    sum
}
