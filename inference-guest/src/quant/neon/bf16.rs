//! BF16·BF16: widen by a 16-bit shift, four f32 accumulators.

use core::arch::aarch64::*;

use super::{arr, ld_u8};
use crate::quant::reference::bf16::bf16_to_f32;

#[target_feature(enable = "neon")]
pub(super) fn dot_bf16(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut wc = w.chunks_exact(32);
    let mut ac = a.chunks_exact(32);
    let widen = |v: uint16x4_t| vreinterpretq_f32_u32(vshll_n_u16::<16>(v));
    for (x, y) in (&mut wc).zip(&mut ac) {
        for k in 0..2 {
            let xv = vreinterpretq_u16_u8(ld_u8(arr(x, 16 * k)));
            let yv = vreinterpretq_u16_u8(ld_u8(arr(y, 16 * k)));
            let (lo, hi) = (2 * k, 2 * k + 1);
            acc[lo] = vfmaq_f32(acc[lo], widen(vget_low_u16(xv)), widen(vget_low_u16(yv)));
            acc[hi] = vfmaq_f32(acc[hi], widen(vget_high_u16(xv)), widen(vget_high_u16(yv)));
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
        sum += bf16_to_f32(u16::from_le_bytes([x[0], x[1]]))
            * bf16_to_f32(u16::from_le_bytes([y[0], y[1]]));
    }
    sum
}
