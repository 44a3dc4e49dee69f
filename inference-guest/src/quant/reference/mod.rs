//! Scalar reference kernels: the numerics every SIMD version must reproduce.
//!
//! Weight quantisers port ggml's `quantize_row_*_ref` functions operation for operation (same
//! float expression order, no fused multiply-add) so converted files are byte-identical to
//! llama.cpp's. Activation quantisers reproduce what llama.cpp's x86 AVX2 build runs.

mod act;
pub(crate) mod bf16;
mod dot;
pub(crate) mod expf;
mod iq4;
mod kquant;
pub(crate) mod num;
mod q5;
mod q5_k;
mod simple;

use crate::ggml_type::GgmlType;

pub(crate) use act::quantize_act;
pub(crate) use dot::dot;
#[allow(unused_imports)] // used by the SIMD back ends
pub(crate) use iq4::{KVALUES as IQ4_VALUES, iq4_xs_scales};
#[allow(unused_imports)] // used by the SIMD back ends
pub(crate) use kquant::q4_k_scales_mins;
#[allow(unused_imports)] // used by the SIMD back ends
pub(crate) use q5::q5_quants;
#[allow(unused_imports)] // used by the SIMD back ends
pub(crate) use q5_k::q5_k_unpack;

/// Reads the little-endian f16 at `b[at..at + 2]` as f32.
#[inline(always)]
pub(crate) fn rd_f16(b: &[u8], at: usize) -> f32 {
    crate::quant::f16::f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Reads the little-endian f32 at `b[at..at + 4]`.
#[inline(always)]
pub(crate) fn rd_f32(b: &[u8], at: usize) -> f32 {
    f32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Quantises `x` into weight format `ty` (reference converter path, ggml `_ref` numerics).
/// `out.len()` must equal `ty.row_bytes(x.len())`.
pub fn quantize_row(ty: GgmlType, x: &[f32], out: &mut [u8]) {
    assert_eq!(
        Some(out.len()),
        ty.row_bytes(x.len()),
        "{}: bad row length",
        ty.name()
    );
    match ty {
        GgmlType::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(x) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&crate::quant::f16::f32_to_f16(*v).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&bf16::f32_to_bf16(*v).to_le_bytes());
            }
        }
        GgmlType::Q4_0 => simple::quantize_q4_0(x, out),
        GgmlType::Q4_1 => simple::quantize_q4_1(x, out),
        GgmlType::Q5_0 => q5::quantize_q5_0(x, out),
        GgmlType::Q5_1 => q5::quantize_q5_1(x, out),
        GgmlType::Q8_0 => simple::quantize_q8_0(x, out),
        GgmlType::Q4K => kquant::quantize_q4_k(x, out),
        GgmlType::Q5K => q5_k::quantize_q5_k(x, out),
        GgmlType::Q6K => kquant::quantize_q6_k(x, out),
        GgmlType::IQ4NL => iq4::quantize_iq4_nl(x, out),
        GgmlType::IQ4XS => iq4::quantize_iq4_xs(x, out),
    }
}

/// Expands one row of `ty` into f32. Lengths are checked by the caller.
pub(crate) fn dequantize_row(ty: GgmlType, src: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = rd_f32(b, 0);
            }
        }
        GgmlType::F16 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = rd_f16(b, 0);
            }
        }
        GgmlType::BF16 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = bf16::bf16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        GgmlType::Q4_0 => simple::dequantize_q4_0(src, out),
        GgmlType::Q4_1 => simple::dequantize_q4_1(src, out),
        GgmlType::Q5_0 => q5::dequantize_q5_0(src, out),
        GgmlType::Q5_1 => q5::dequantize_q5_1(src, out),
        GgmlType::Q8_0 => simple::dequantize_q8_0(src, out),
        GgmlType::Q4K => kquant::dequantize_q4_k(src, out),
        GgmlType::Q5K => q5_k::dequantize_q5_k(src, out),
        GgmlType::Q6K => kquant::dequantize_q6_k(src, out),
        GgmlType::IQ4NL => iq4::dequantize_iq4_nl(src, out),
        GgmlType::IQ4XS => iq4::dequantize_iq4_xs(src, out),
    }
}
