//! The row (de)quantisers the converter and tiny-model generator use.
//!
//! Quantisation is the engine's job (`inference_guest::quant`, reference kernels), never
//! re-implemented here. This small trait keeps model-tools compiling while that module is
//! still on its own branch: with the `engine-quant` feature the engine's kernels do the
//! work; without it only F32 (a plain byte copy) is available and every other type is a
//! clear error.

use inference_guest::ggml_type::GgmlType;

/// A type this build cannot (de)quantise.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The engine's quantisers are not compiled in.
    #[error(
        "{ty} needs the engine's quantisers, which this build lacks; rebuild model-tools with `--features engine-quant`"
    )]
    Unsupported { ty: &'static str },
}

/// Converts whole rows between f32 and a tensor type.
pub trait RowCodec {
    /// Quantises `x` into `out`; `out.len() == ty.row_bytes(x.len())`.
    fn quantize_row(&self, ty: GgmlType, x: &[f32], out: &mut [u8]) -> Result<(), CodecError>;
    /// Dequantises `src` into `out` (`out.len()` elements).
    fn dequantize_row(&self, ty: GgmlType, src: &[u8], out: &mut [f32]) -> Result<(), CodecError>;
}

/// The engine's reference kernels (or F32 only, without `engine-quant`).
#[derive(Clone, Copy, Debug, Default)]
pub struct EngineCodec;

impl RowCodec for EngineCodec {
    fn quantize_row(&self, ty: GgmlType, x: &[f32], out: &mut [u8]) -> Result<(), CodecError> {
        if ty == GgmlType::F32 {
            for (o, v) in out.chunks_exact_mut(4).zip(x) {
                o.copy_from_slice(&v.to_le_bytes());
            }
            return Ok(());
        }
        engine_quantize(ty, x, out)
    }

    fn dequantize_row(&self, ty: GgmlType, src: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
        if ty == GgmlType::F32 {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            return Ok(());
        }
        engine_dequantize(ty, src, out)
    }
}

#[cfg(feature = "engine-quant")]
fn engine_quantize(ty: GgmlType, x: &[f32], out: &mut [u8]) -> Result<(), CodecError> {
    inference_guest::quant::quantize_row(ty, x, out);
    Ok(())
}

#[cfg(feature = "engine-quant")]
fn engine_dequantize(ty: GgmlType, src: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
    inference_guest::quant::Kernels::scalar().dequantize_row(ty, src, out);
    Ok(())
}

#[cfg(not(feature = "engine-quant"))]
fn engine_quantize(ty: GgmlType, _: &[f32], _: &mut [u8]) -> Result<(), CodecError> {
    Err(CodecError::Unsupported { ty: ty.name() })
}

#[cfg(not(feature = "engine-quant"))]
fn engine_dequantize(ty: GgmlType, _: &[u8], _: &mut [f32]) -> Result<(), CodecError> {
    Err(CodecError::Unsupported { ty: ty.name() })
}

/// llama.cpp's `llama_ftype` for a file whose weights are all `ty` (K-quants map to the
/// `_M` mixes llama.cpp names them after).
pub fn file_type(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q4K => 15,
        GgmlType::Q6K => 18,
    }
}
