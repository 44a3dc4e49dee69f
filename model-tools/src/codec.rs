//! The row (de)quantisers the converter and tiny-model generator use: the engine's scalar
//! reference kernels, so a converted file holds exactly what the engine's own quantiser
//! produces (quantisation is never re-implemented here).

use inference_guest::ggml_type::GgmlType;
use inference_guest::quant::{self, Kernels};

/// Quantises `x` into `out`; `out.len() == ty.row_bytes(x.len())`.
pub fn quantize_row(ty: GgmlType, x: &[f32], out: &mut [u8]) {
    quant::quantize_row(ty, x, out);
}

/// Dequantises `src` into `out` (`out.len()` elements).
pub fn dequantize_row(ty: GgmlType, src: &[u8], out: &mut [f32]) {
    Kernels::scalar().dequantize_row(ty, src, out);
}

/// llama.cpp's `llama_ftype` for a file whose weights are all `ty` (K-quants map to the
/// `_M` mixes llama.cpp names them after).
pub fn file_type(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::BF16 => 32,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::Q4K => 15,
        GgmlType::Q5K => 17,
        GgmlType::Q6K => 18,
        GgmlType::IQ4NL => 25,
        GgmlType::IQ4XS => 30,
    }
}
