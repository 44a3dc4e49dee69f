//! Q5_0·Q8_0 and Q5_1·Q8_1 dot products (integer block sums exact, one float multiply-add per
//! block), and the Q5_K·Q8_K tile ([`Tile`]: decode is its one-column case), whose float
//! arithmetic is the reference's, so tile, dot and oracle agree to the bit.

use core::arch::aarch64::*;

use super::dot::{h, mac16, nibbles, rd_f32};
use super::kquant::{Q8K_BYTES, bsums_dot, hsum8, quads, vld1q_s16_arr};
use super::tile::Tile;
use super::{arr, ld_s8, ld_u8};
use crate::quant::reference::q4_k_scales_mins;

/// 0x10 in lane i where bit i of `bits` is set (16 lanes, low byte first).
#[inline]
#[target_feature(enable = "neon")]
fn fifth_bits(bits: u16) -> uint8x16_t {
    let [b0, b1] = bits.to_le_bytes();
    let v = vcombine_u8(vdup_n_u8(b0), vdup_n_u8(b1));
    let mask = vreinterpretq_u8_u64(vdupq_n_u64(0x8040_2010_0804_0201));
    vandq_u8(vtstq_u8(v, mask), vdupq_n_u8(0x10))
}

/// The two halves (values 0..16, 16..32) of a 32-value Q5 block: quants 0..=31.
#[inline]
#[target_feature(enable = "neon")]
fn q5_halves(x: &[u8], qh_at: usize) -> (int8x16_t, int8x16_t) {
    let qh = u32::from_le_bytes(*arr::<4>(x, qh_at));
    let (lo, hi) = nibbles(arr(x, qh_at + 4));
    let lo = vorrq_u8(vreinterpretq_u8_s8(lo), fifth_bits(qh as u16));
    let hi = vorrq_u8(vreinterpretq_u8_s8(hi), fifth_bits((qh >> 16) as u16));
    (vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi))
}

#[target_feature(enable = "neon")]
pub(super) fn dot_q5_0(w: &[u8], a: &[u8]) -> f32 {
    let sixteen = vdupq_n_s8(16);
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(22).zip(a.chunks_exact(34)) {
        let (lo, hi) = q5_halves(x, 2);
        let acc = mac16(vdupq_n_s32(0), vsubq_s8(lo, sixteen), ld_s8(arr(y, 2)));
        let acc = mac16(acc, vsubq_s8(hi, sixteen), ld_s8(arr(y, 18)));
        sum += vaddvq_s32(acc) as f32 * (h(x, 0) * h(y, 0));
    }
    sum
}

#[target_feature(enable = "neon")]
pub(super) fn dot_q5_1(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(24).zip(a.chunks_exact(36)) {
        let (lo, hi) = q5_halves(x, 4);
        let acc = mac16(vdupq_n_s32(0), lo, ld_s8(arr(y, 4)));
        let acc = mac16(acc, hi, ld_s8(arr(y, 20)));
        sum += vaddvq_s32(acc) as f32 * (h(x, 0) * h(y, 0)) + h(x, 2) * h(y, 2);
    }
    sum
}

/// Q5_K weights: 176-byte super-blocks (f16 d, f16 dmin, 12 bytes of scales, qh[32], qs[128]).
pub(super) struct Q5K;

/// In the reference's (llama.cpp's x86) order: per column eight i32 lanes per super-block
/// (lane m takes values 4m..4m + 4 of each 32-value sub-block, times its scale), turned into
/// f32 and added with one fused multiply-add into eight float lanes; the mins go into one
/// scalar beside them; at the end `hsum8` plus that scalar.
impl Tile for Q5K {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn tile<const C: usize>(row: &[u8], a: &[u8], arb: usize, out: &mut [f32]) {
        let one = vdupq_n_u8(1);
        let mut acc = [[vdupq_n_f32(0.0); 2]; C];
        let mut summs = [0.0f32; C];
        for (b, x) in row.chunks_exact(176).enumerate() {
            let (sc, m) = q4_k_scales_mins(&x[4..16]);
            let qh = [ld_u8(arr(x, 16)), ld_u8(arr(x, 32))];
            // lanes[col][g]: lanes 4g..4g + 4, values 16g..16g + 16 of every sub-block.
            let mut lanes = [[vdupq_n_s32(0); 2]; C];
            for c in 0..4 {
                // Bit 2c (2c + 1) of qh[l] is bit 4 of value 64c + l (64c + 32 + l).
                let hb = |v: uint8x16_t, s: i32| {
                    vshlq_n_u8::<4>(vandq_u8(vshlq_u8(v, vdupq_n_s8(-(s as i8))), one))
                };
                let (s_lo, s_hi) = (i32::from(sc[2 * c]), i32::from(sc[2 * c + 1]));
                for (g, &qhg) in qh.iter().enumerate() {
                    let (lo, hi) = nibbles(arr(x, 48 + 32 * c + 16 * g));
                    let lo = vorrq_u8(vreinterpretq_u8_s8(lo), hb(qhg, 2 * c as i32));
                    let hi = vorrq_u8(vreinterpretq_u8_s8(hi), hb(qhg, 2 * c as i32 + 1));
                    let (lo, hi) = (vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi));
                    let yo = b * Q8K_BYTES + 4 + 64 * c + 16 * g;
                    for (col, l) in lanes.iter_mut().enumerate() {
                        let y = &a[col * arb + yo..];
                        l[g] = vmlaq_n_s32(l[g], quads(lo, ld_s8(arr(y, 0))), s_lo);
                        l[g] = vmlaq_n_s32(l[g], quads(hi, ld_s8(arr(y, 32))), s_hi);
                    }
                }
            }
            // Each min weighs the two 16-value block sums of its 32 values.
            let mins: [i16; 16] = core::array::from_fn(|j| i16::from(m[j / 2]));
            let mins = [vld1q_s16_arr(&mins, 0), vld1q_s16_arr(&mins, 8)];
            let (dx, dmin) = (h(x, 0), h(x, 2));
            for col in 0..C {
                let y = &a[col * arb + b * Q8K_BYTES..];
                let yd = rd_f32(y, 0);
                summs[col] += -yd * dmin * bsums_dot(y, &mins) as f32;
                let d = yd * dx;
                for (f, l) in acc[col].iter_mut().zip(lanes[col]) {
                    *f = vfmaq_n_f32(*f, vcvtq_f32_s32(l), d);
                }
            }
        }
        for col in 0..C {
            out[col] = hsum8(acc[col]) + summs[col];
        }
    }
}
