//! One column's float sum (`f32`: decode) or four columns' (`float32x4_t`, lane c for column
//! c: a tile): the 32-value formats write their float step once over [`Lanes`], so a column
//! gets the same IEEE operations in the same order at either width, and decode keeps scalar
//! code (no vector work for three idle lanes).

use core::arch::aarch64::*;

use super::dot::h2f4;
use crate::quant::f16::f16_to_f32;

pub(super) trait Lanes: Copy {
    fn zero() -> Self;
    /// Column c's exact block sum (the lanes of `acc[c]` added) as f32, for the first
    /// one or four columns.
    fn sums(acc: &[int32x4_t; 4]) -> Self;
    /// The f16 values `h[c]` widened (exactly), for the first one or four columns.
    fn widen(h: &[u16; 4]) -> Self;
    fn add(self, b: Self) -> Self;
    fn mul(self, b: Self) -> Self;
    fn mul_n(self, s: f32) -> Self;
    /// `self + a·b`, rounded once.
    fn fma(self, a: Self, b: Self) -> Self;
    /// The first `out.len()` (one, or up to four) columns.
    fn store(self, out: &mut [f32]);
}

impl Lanes for f32 {
    #[inline]
    fn zero() -> Self {
        0.0
    }

    #[inline]
    fn sums(acc: &[int32x4_t; 4]) -> Self {
        // SAFETY: NEON is the aarch64 baseline.
        (unsafe { vaddvq_s32(acc[0]) }) as f32
    }

    #[inline]
    fn widen(h: &[u16; 4]) -> Self {
        f16_to_f32(h[0])
    }

    #[inline]
    fn add(self, b: Self) -> Self {
        self + b
    }

    #[inline]
    fn mul(self, b: Self) -> Self {
        self * b
    }

    #[inline]
    fn mul_n(self, s: f32) -> Self {
        self * s
    }

    #[inline]
    fn fma(self, a: Self, b: Self) -> Self {
        libm::fmaf(a, b, self)
    }

    #[inline]
    fn store(self, out: &mut [f32]) {
        out[0] = self;
    }
}

impl Lanes for float32x4_t {
    #[inline]
    fn zero() -> Self {
        // SAFETY: NEON is the aarch64 baseline.
        unsafe { vdupq_n_f32(0.0) }
    }

    #[inline]
    fn sums(acc: &[int32x4_t; 4]) -> Self {
        // SAFETY: NEON is the aarch64 baseline.
        unsafe {
            let s = vpaddq_s32(vpaddq_s32(acc[0], acc[1]), vpaddq_s32(acc[2], acc[3]));
            vcvtq_f32_s32(s)
        }
    }

    #[inline]
    fn widen(h: &[u16; 4]) -> Self {
        // SAFETY: NEON is the aarch64 baseline; `h` is 4 readable u16s.
        unsafe { h2f4(vld1_u16(h.as_ptr())) }
    }

    #[inline]
    fn add(self, b: Self) -> Self {
        // SAFETY: NEON is the aarch64 baseline.
        unsafe { vaddq_f32(self, b) }
    }

    #[inline]
    fn mul(self, b: Self) -> Self {
        // SAFETY: NEON is the aarch64 baseline.
        unsafe { vmulq_f32(self, b) }
    }

    #[inline]
    fn mul_n(self, s: f32) -> Self {
        // SAFETY: NEON is the aarch64 baseline.
        unsafe { vmulq_n_f32(self, s) }
    }

    #[inline]
    fn fma(self, a: Self, b: Self) -> Self {
        // SAFETY: NEON is the aarch64 baseline.
        unsafe { vfmaq_f32(self, a, b) }
    }

    #[inline]
    fn store(self, out: &mut [f32]) {
        let mut lanes = [0.0f32; 4];
        // SAFETY: NEON is the aarch64 baseline; `lanes` is 4 writable f32s.
        unsafe { vst1q_f32(lanes.as_mut_ptr(), self) };
        let n = out.len();
        out.copy_from_slice(&lanes[..n]);
    }
}
