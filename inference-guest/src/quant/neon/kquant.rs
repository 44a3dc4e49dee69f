//! Q4_K·Q8_K and Q6_K·Q8_K tiles ([`Tile`]): dot products (decode, the one-column tile) and
//! matrix products (prefill), one weight row against up to four activation columns, as the
//! AVX2 kernels do.
//!
//! Each row's super-block is unpacked once per tile and every column's integer sum is exact,
//! so a dot product and a matrix product agree to the bit; the float arithmetic per
//! super-block is the reference's (llama.cpp's x86 order), so they agree with the oracle too.

use core::arch::aarch64::*;

use super::dot::{h, mac16, nibbles, rd_f32};
use super::tile::Tile;
use super::{arr, ld_s8, ld_u8};
use crate::quant::reference::q4_k_scales_mins;

pub(super) const Q8K_BYTES: usize = 292;
const Q8K_BSUMS: usize = 260;

/// Q4_K weights: 144-byte super-blocks (f16 d, f16 dmin, 12 bytes of scales, 128 of quants).
pub(super) struct Q4K;
/// Q6_K weights: 210-byte super-blocks (ql, qh, 16 i8 scales, f16 d).
pub(super) struct Q6K;

/// Σ_j bsums_j · weights_j over the 16 block sums of a Q8_K block (exact in i32).
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn bsums_dot(y: &[u8], weights: &[int16x8_t; 2]) -> i32 {
    let lo = vreinterpretq_s16_u8(ld_u8(arr(y, Q8K_BSUMS)));
    let hi = vreinterpretq_s16_u8(ld_u8(arr(y, Q8K_BSUMS + 16)));
    let p = vmull_s16(vget_low_s16(lo), vget_low_s16(weights[0]));
    let p = vmlal_high_s16(p, lo, weights[0]);
    let p = vmlal_s16(p, vget_low_s16(hi), vget_low_s16(weights[1]));
    vaddvq_s32(vmlal_high_s16(p, hi, weights[1]))
}

impl Tile for Q4K {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn tile<const C: usize>(row: &[u8], a: &[u8], arb: usize, out: &mut [f32]) {
        let mut sum = [0.0f32; C];
        for (b, x) in row.chunks_exact(144).enumerate() {
            let (sc, m) = q4_k_scales_mins(&x[4..16]);
            let mut isum = [vdupq_n_s32(0); C];
            for c in 0..4 {
                let (lo0, hi0) = nibbles(arr(x, 16 + 32 * c));
                let (lo1, hi1) = nibbles(arr(x, 32 + 32 * c));
                let yo = b * Q8K_BYTES + 4 + 64 * c;
                for (col, acc) in isum.iter_mut().enumerate() {
                    let y = &a[col * arb + yo..];
                    let s_lo = mac16(
                        mac16(vdupq_n_s32(0), lo0, ld_s8(arr(y, 0))),
                        lo1,
                        ld_s8(arr(y, 16)),
                    );
                    let s_hi = mac16(
                        mac16(vdupq_n_s32(0), hi0, ld_s8(arr(y, 32))),
                        hi1,
                        ld_s8(arr(y, 48)),
                    );
                    *acc = vmlaq_n_s32(*acc, s_lo, i32::from(sc[2 * c]));
                    *acc = vmlaq_n_s32(*acc, s_hi, i32::from(sc[2 * c + 1]));
                }
            }
            // Each min weighs the two 16-value block sums of its 32 values.
            let mins: [i16; 16] = core::array::from_fn(|j| i16::from(m[j / 2]));
            let mins = [vld1q_s16_arr(&mins, 0), vld1q_s16_arr(&mins, 8)];
            let (d, dmin) = (h(x, 0), h(x, 2));
            for col in 0..C {
                let y = &a[col * arb + b * Q8K_BYTES..];
                let yd = rd_f32(y, 0);
                let msum = bsums_dot(y, &mins);
                sum[col] += d * yd * vaddvq_s32(isum[col]) as f32 - dmin * yd * msum as f32;
            }
        }
        out[..C].copy_from_slice(&sum);
    }
}

/// In the reference's (llama.cpp's x86) order: per column eight i32 lanes per super-block
/// (lane m takes values 4m..4m + 4 of each 32-value chunk, times its 16-value group's scale,
/// less 32 × chunk m's scaled block sums: the quants are stored with +32), turned into f32 and
/// added with one fused multiply-add into eight float lanes, `hsum8` at the end.
impl Tile for Q6K {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn tile<const C: usize>(row: &[u8], a: &[u8], arb: usize, out: &mut [f32]) {
        let m4 = vdupq_n_u8(0xf);
        let m2 = vdupq_n_u8(3);
        let mut acc = [[vdupq_n_f32(0.0); 2]; C];
        for (b, x) in row.chunks_exact(210).enumerate() {
            let sc = |j: usize| i32::from(x[192 + j] as i8);
            // lanes[col][g]: lanes 4g..4g + 4, values 16g..16g + 16 of every 32-value chunk.
            let mut lanes = [[vdupq_n_s32(0); 2]; C];
            for hf in 0..2 {
                for g in 0..2 {
                    // 16 values of each of the four 32-value chunks of this half.
                    let ql0 = ld_u8(arr(x, 64 * hf + 16 * g));
                    let ql1 = ld_u8(arr(x, 64 * hf + 32 + 16 * g));
                    let qh = ld_u8(arr(x, 128 + 32 * hf + 16 * g));
                    let hb = |v: uint8x16_t| vshlq_n_u8::<4>(vandq_u8(v, m2));
                    let q = [
                        vorrq_u8(vandq_u8(ql0, m4), hb(qh)),
                        vorrq_u8(vandq_u8(ql1, m4), hb(vshrq_n_u8::<2>(qh))),
                        vorrq_u8(vshrq_n_u8::<4>(ql0), hb(vshrq_n_u8::<4>(qh))),
                        vorrq_u8(vshrq_n_u8::<4>(ql1), hb(vshrq_n_u8::<6>(qh))),
                    ];
                    for (k, qk) in q.iter().enumerate() {
                        let qk = vreinterpretq_s8_u8(*qk);
                        let s = sc(8 * hf + 2 * k + g);
                        let yo = b * Q8K_BYTES + 4 + 128 * hf + 32 * k + 16 * g;
                        for (col, l) in lanes.iter_mut().enumerate() {
                            let yk = ld_s8(arr(&a[col * arb + yo..], 0));
                            l[g] = vmlaq_n_s32(l[g], quads(qk, yk), s);
                        }
                    }
                }
            }
            let scales = vmovl_s8(vget_low_s8(ld_s8(arr(x, 192))));
            let scales = [scales, vmovl_high_s8(ld_s8(arr(x, 192)))];
            let dx = h(x, 208);
            for col in 0..C {
                let y = &a[col * arb + b * Q8K_BYTES..];
                let corr = bsums_pairs(y, &scales);
                let d = rd_f32(y, 0) * dx;
                for ((f, l), c) in acc[col].iter_mut().zip(lanes[col]).zip(corr) {
                    *f = vfmaq_n_f32(*f, vcvtq_f32_s32(vmlsq_n_s32(l, c, 32)), d);
                }
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            *o = hsum8(a);
        }
    }
}

/// Lane m (of eight): bsums_2m · weights_2m + bsums_2m+1 · weights_2m+1 over the 16 block
/// sums of a Q8_K block (exact in i32).
#[inline]
#[target_feature(enable = "neon")]
fn bsums_pairs(y: &[u8], weights: &[int16x8_t; 2]) -> [int32x4_t; 2] {
    let bs = [
        vreinterpretq_s16_u8(ld_u8(arr(y, Q8K_BSUMS))),
        vreinterpretq_s16_u8(ld_u8(arr(y, Q8K_BSUMS + 16))),
    ];
    core::array::from_fn(|i| {
        let lo = vmull_s16(vget_low_s16(bs[i]), vget_low_s16(weights[i]));
        vpaddq_s32(lo, vmull_high_s16(bs[i], weights[i]))
    })
}

/// ggml's `hsum_float_8` of eight float lanes (0..4, 4..8): lanes l and 4 + l, then
/// (0 + 2) + (1 + 3).
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn hsum8(acc: [float32x4_t; 2]) -> f32 {
    let r = vaddq_f32(acc[1], acc[0]);
    (vgetq_lane_f32::<0>(r) + vgetq_lane_f32::<2>(r))
        + (vgetq_lane_f32::<1>(r) + vgetq_lane_f32::<3>(r))
}

/// Σ of each 4 consecutive products of 16 i8 lanes: 4 i32 lanes, values 0-3, 4-7, 8-11,
/// 12-15 (each i16 pair sum is at most 2·63·128: exact).
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn quads(a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    vpaddlq_s16(vpaddq_s16(lo, vmull_high_s8(a, b)))
}

/// Eight i16 of `v` from `at` as a vector.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn vld1q_s16_arr(v: &[i16; 16], at: usize) -> int16x8_t {
    let part: &[i16; 8] = v[at..at + 8].try_into().expect("8 lanes by construction");
    // SAFETY: `part` is 8 readable i16s; vld1q has no alignment requirement beyond i16.
    unsafe { vld1q_s16(part.as_ptr()) }
}
