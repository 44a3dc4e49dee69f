//! Q8_0·Q8_0, Q4_0·Q8_0 and Q4_1·Q8_1 tiles ([`Tile`]): one weight row against up to four
//! activation columns, each 32-value weight block unpacked once per tile; the one-column tile
//! is the decode dot.
//!
//! Every column's block sum is exact in i32 and is folded into that column's float sum with the
//! reference's operations in its order (`reference::dot`), so tile, dot and oracle agree to the
//! bit: a product over several columns (prefill, batched decode) gives each column what
//! decode gives it alone.

use core::arch::aarch64::*;

use super::dot::{h, mac16, nibbles};
use super::tile::Tile;
use super::{arr, ld_s8};

/// Q8_0 weights (34-byte blocks: f16 d, 32 i8) against Q8_0 activations.
pub(super) struct Q8_0;
/// Q4_0 weights (18-byte blocks: f16 d, 16 bytes of nibbles, quants stored + 8) against
/// Q8_0 activations.
pub(super) struct Q4_0;
/// Q4_1 weights (20-byte blocks: f16 d, f16 m, 16 bytes of nibbles) against Q8_1
/// activations (f16 d, f16 d·Σq, 32 i8).
pub(super) struct Q4_1;

/// Activation block bytes: Q8_0 and Q8_1 (the latter with its block sum).
const Q8_0_BYTES: usize = 34;
const Q8_1_BYTES: usize = 36;

impl Tile for Q8_0 {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn tile<const C: usize>(row: &[u8], a: &[u8], arb: usize, out: &mut [f32]) {
        let unpack = |x: &[u8]| ([ld_s8(arr(x, 2)), ld_s8(arr(x, 18))], [h(x, 0), 0.0]);
        let fold =
            |sum: f32, isum: i32, wd: [f32; 2], y: &[u8]| sum + isum as f32 * (wd[0] * h(y, 0));
        blocks::<C>((row, 34), (a, Q8_0_BYTES, arb), out, unpack, fold);
    }
}

impl Tile for Q4_0 {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn tile<const C: usize>(row: &[u8], a: &[u8], arb: usize, out: &mut [f32]) {
        let eight = vdupq_n_s8(8);
        let unpack = |x: &[u8]| {
            let (lo, hi) = nibbles(arr(x, 2));
            ([vsubq_s8(lo, eight), vsubq_s8(hi, eight)], [h(x, 0), 0.0])
        };
        // One fused multiply-add per block, as llama.cpp's x86 build (its repacked Q4_0
        // kernels) and so the reference do.
        let fold = |sum: f32, isum: i32, wd: [f32; 2], y: &[u8]| {
            libm::fmaf(isum as f32, wd[0] * h(y, 0), sum)
        };
        blocks::<C>((row, 18), (a, Q8_0_BYTES, arb), out, unpack, fold);
    }
}

impl Tile for Q4_1 {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn tile<const C: usize>(row: &[u8], a: &[u8], arb: usize, out: &mut [f32]) {
        let unpack = |x: &[u8]| {
            let (lo, hi) = nibbles(arr(x, 4));
            ([lo, hi], [h(x, 0), h(x, 2)])
        };
        // The min times the activations' block sum (f16 d·Σq) stands in for Σ m·y.
        let fold = |sum: f32, isum: i32, wd: [f32; 2], y: &[u8]| {
            sum + (isum as f32 * (wd[0] * h(y, 0)) + wd[1] * h(y, 2))
        };
        blocks::<C>((row, 20), (a, Q8_1_BYTES, arb), out, unpack, fold);
    }
}

/// The tile loop of the 32-value formats: `w = (row, weight block bytes)`,
/// `act = (C columns, activation block bytes, column stride)`. `unpack` gives a weight
/// block's 32 quants as i8 (values 0..16, 16..32) and its float scales; `fold` adds one
/// column's exact block sum to that column's float sum.
#[inline]
#[target_feature(enable = "neon")]
fn blocks<const C: usize>(
    (row, wb): (&[u8], usize),
    (a, ab, arb): (&[u8], usize, usize),
    out: &mut [f32],
    unpack: impl Fn(&[u8]) -> ([int8x16_t; 2], [f32; 2]),
    fold: impl Fn(f32, i32, [f32; 2], &[u8]) -> f32,
) {
    // The activation quants follow the block's f16 header (2 or 4 bytes).
    let qa = ab - 32;
    let mut sum = [0.0f32; C];
    for (b, x) in row.chunks_exact(wb).enumerate() {
        let ([w0, w1], wd) = unpack(x);
        for (col, s) in sum.iter_mut().enumerate() {
            let y = &a[col * arb + b * ab..][..ab];
            let acc = mac16(vdupq_n_s32(0), w0, ld_s8(arr(y, qa)));
            let acc = mac16(acc, w1, ld_s8(arr(y, qa + 16)));
            *s = fold(*s, vaddvq_s32(acc), wd, y);
        }
    }
    out[..C].copy_from_slice(&sum);
}
