//! aarch64 NEON kernels (baseline NEON only: no `dotprod`, so i8 products use
//! `vmull_s8` + pairwise widening adds, exact for activations in [-127, 127]).
//!
//! Kernels are safe `#[target_feature(enable = "neon")]` fns; NEON is part of the aarch64
//! baseline, which is what the dispatching `unsafe` blocks rely on. Loads and stores go
//! through fixed-size arrays borrowed from bounds-checked slices.

mod act;
mod bf16;
mod dot;
mod iq4;
mod kquant;
mod lanes;
mod q5;
#[cfg(test)]
mod tests;
mod tile;
mod tile32;

use core::arch::aarch64::*;

use crate::ggml_type::GgmlType;
use crate::quant::act_format::ActFormat;

/// NEON back end (always available on aarch64).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Neon(());

impl Neon {
    pub(crate) fn new() -> Self {
        Self(())
    }

    pub(crate) fn quantize_act(self, fmt: ActFormat, x: &[f32], out: &mut [u8]) -> bool {
        // SAFETY: NEON is part of the aarch64 baseline; lengths were checked by `Kernels`.
        unsafe { act::quantize_act(fmt, x, out) }
    }

    pub(crate) fn dot(self, ty: GgmlType, w: &[u8], a: &[u8]) -> Option<f32> {
        // SAFETY: NEON is part of the aarch64 baseline; lengths were checked by `Kernels`.
        Some(unsafe {
            match ty {
                GgmlType::Q4_0 => tile::dot::<tile32::Q4_0>(w, a),
                GgmlType::Q8_0 => tile::dot::<tile32::Q8_0>(w, a),
                GgmlType::Q4_1 => tile::dot::<tile32::Q4_1>(w, a),
                GgmlType::Q5_0 => q5::dot_q5_0(w, a),
                GgmlType::Q5_1 => q5::dot_q5_1(w, a),
                GgmlType::Q4K => tile::dot::<kquant::Q4K>(w, a),
                GgmlType::Q5K => tile::dot::<q5::Q5K>(w, a),
                GgmlType::Q6K => tile::dot::<kquant::Q6K>(w, a),
                GgmlType::IQ4NL => iq4::dot_iq4_nl(w, a),
                GgmlType::IQ4XS => iq4::dot_iq4_xs(w, a),
                GgmlType::F16 => dot::dot_f16(w, a),
                GgmlType::BF16 => bf16::dot_bf16(w, a),
                GgmlType::F32 => dot::dot_f32(w, a),
            }
        })
    }

    /// Q8_0, Q4_0, Q4_1 and the K-quants tiled (prefill, batched decode), each column's
    /// output bit-identical to its `dot`; for every other type and for one column (decode)
    /// `Kernels::matmul` falls back to one NEON `dot` per output.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn matmul(
        self,
        ty: GgmlType,
        _n: usize,
        w: &[u8],
        nrows: usize,
        act: &[u8],
        ncols: usize,
        out: &mut [f32],
    ) -> bool {
        if ncols < 2 {
            return false;
        }
        let panels: unsafe fn(&[u8], usize, &[u8], usize, &mut [f32]) = match ty {
            GgmlType::Q8_0 => tile::panels::<tile32::Q8_0>,
            GgmlType::Q4_0 => tile::panels::<tile32::Q4_0>,
            GgmlType::Q4_1 => tile::panels::<tile32::Q4_1>,
            GgmlType::Q4K => tile::panels::<kquant::Q4K>,
            GgmlType::Q5K => tile::panels::<q5::Q5K>,
            GgmlType::Q6K => tile::panels::<kquant::Q6K>,
            _ => return false,
        };
        // SAFETY: NEON is part of the aarch64 baseline; lengths were checked by `Kernels`.
        unsafe { panels(w, nrows, act, ncols, out) };
        true
    }
}

#[inline]
#[target_feature(enable = "neon")]
fn arr<const N: usize>(s: &[u8], at: usize) -> &[u8; N] {
    s[at..at + N]
        .try_into()
        .expect("length is N by construction")
}

#[inline]
#[target_feature(enable = "neon")]
fn ld_u8(b: &[u8; 16]) -> uint8x16_t {
    // SAFETY: `b` is 16 readable bytes; vld1q has no alignment requirement beyond u8.
    unsafe { vld1q_u8(b.as_ptr()) }
}

#[inline]
#[target_feature(enable = "neon")]
fn ld_s8(b: &[u8; 16]) -> int8x16_t {
    vreinterpretq_s8_u8(ld_u8(b))
}

#[inline]
#[target_feature(enable = "neon")]
fn ld_f32(x: &[f32]) -> float32x4_t {
    let x: &[f32; 4] = x[..4].try_into().expect("4 floats by construction");
    // SAFETY: `x` is 4 readable f32s.
    unsafe { vld1q_f32(x.as_ptr()) }
}
