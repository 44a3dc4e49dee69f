//! Q8_0·Q8_0, Q4_0·Q8_0 and Q4_1·Q8_1 tiles ([`Tile`]): one weight row against up to four
//! activation columns, each 32-value weight block unpacked once per tile; the one-column tile
//! is the decode dot.
//!
//! Every column's block sum is exact in i32 and is folded into that column's float sum with the
//! reference's operations in its order (`reference::dot`), written once ([`Fold32`]) for one
//! column in scalar code and for four in the lanes of a vector ([`Lanes`]), so tile, dot and
//! oracle agree to the bit: a product over several columns (prefill, batched decode) gives
//! each column what decode gives it alone.

use core::arch::aarch64::*;

use super::dot::{h, mac16, nibbles};
use super::lanes::Lanes;
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

/// A 32-value format's float step: `sum` plus one block, from the block's exact integer
/// sum `isum` (as f32), the weight block's scales `wd` and the activation block's first two
/// f16 fields `ys` (widened), in the reference's operations and order.
trait Fold32 {
    fn fold<V: Lanes>(sum: V, isum: V, wd: [f32; 2], ys: [V; 2]) -> V;
}

impl Tile for Q8_0 {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn tile<const C: usize>(row: &[u8], a: &[u8], arb: usize, out: &mut [f32]) {
        let unpack = |x: &[u8]| ([ld_s8(arr(x, 2)), ld_s8(arr(x, 18))], [h(x, 0), 0.0]);
        blocks::<Self, C>((row, 34), (a, Q8_0_BYTES, arb), out, unpack);
    }
}

impl Fold32 for Q8_0 {
    /// `sum + isum·(dx·dy)`
    #[inline]
    fn fold<V: Lanes>(sum: V, isum: V, wd: [f32; 2], ys: [V; 2]) -> V {
        sum.add(isum.mul(ys[0].mul_n(wd[0])))
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
        blocks::<Self, C>((row, 18), (a, Q8_0_BYTES, arb), out, unpack);
    }
}

impl Fold32 for Q4_0 {
    /// `fma(isum, dx·dy, sum)`: one fused multiply-add per block, as llama.cpp's x86 build
    /// (its repacked Q4_0 kernels) and so the reference do.
    #[inline]
    fn fold<V: Lanes>(sum: V, isum: V, wd: [f32; 2], ys: [V; 2]) -> V {
        sum.fma(isum, ys[0].mul_n(wd[0]))
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
        blocks::<Self, C>((row, 20), (a, Q8_1_BYTES, arb), out, unpack);
    }
}

impl Fold32 for Q4_1 {
    /// `sum + (isum·(dx·dy) + mx·sy)`: the min times the activations' block sum (f16 d·Σq)
    /// stands in for Σ m·y.
    #[inline]
    fn fold<V: Lanes>(sum: V, isum: V, wd: [f32; 2], ys: [V; 2]) -> V {
        sum.add(isum.mul(ys[0].mul_n(wd[0])).add(ys[1].mul_n(wd[1])))
    }
}

/// The tile loop of the 32-value formats: `w = (row, weight block bytes)`,
/// `act = (C columns, activation block bytes, column stride)`; `unpack` gives a weight
/// block's 32 quants as i8 (values 0..16, 16..32) and its float scales.
///
/// Several columns share the float step in one vector (lane c: column c), which also widens
/// their f16 scales four at a time (a scalar widening per column and block costs more than
/// the block's integer products); one column (decode) runs it in scalar code.
#[inline]
#[target_feature(enable = "neon")]
fn blocks<B: Fold32, const C: usize>(
    w: (&[u8], usize),
    act: (&[u8], usize, usize),
    out: &mut [f32],
    unpack: impl Fn(&[u8]) -> ([int8x16_t; 2], [f32; 2]),
) {
    const { assert!(C >= 1 && C <= 4, "a tile is one to four columns") };
    if C == 1 {
        columns::<B, f32, C>(w, act, &mut out[..C], unpack);
    } else {
        columns::<B, float32x4_t, C>(w, act, &mut out[..C], unpack);
    }
}

/// [`blocks`] with the float sums in `V`.
#[inline]
#[target_feature(enable = "neon")]
fn columns<B: Fold32, V: Lanes, const C: usize>(
    (row, wb): (&[u8], usize),
    (a, ab, arb): (&[u8], usize, usize),
    out: &mut [f32],
    unpack: impl Fn(&[u8]) -> ([int8x16_t; 2], [f32; 2]),
) {
    // The activation quants follow the block's f16 header (2 or 4 bytes).
    let qa = ab - 32;
    let mut sum = V::zero();
    for (b, x) in row.chunks_exact(wb).enumerate() {
        let ([w0, w1], wd) = unpack(x);
        let mut acc = [vdupq_n_s32(0); 4];
        let mut hy = [[0u16; 4]; 2];
        for col in 0..C {
            let y = &a[col * arb + b * ab..][..ab];
            acc[col] = mac16(acc[col], w0, ld_s8(arr(y, qa)));
            acc[col] = mac16(acc[col], w1, ld_s8(arr(y, qa + 16)));
            hy[0][col] = u16::from_le_bytes([y[0], y[1]]);
            hy[1][col] = u16::from_le_bytes([y[2], y[3]]);
        }
        let ys = [V::widen(&hy[0]), V::widen(&hy[1])];
        sum = B::fold(sum, V::sums(&acc), wd, ys);
    }
    sum.store(out);
}
