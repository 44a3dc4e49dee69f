//! `convert`: re-types every 2-D weight of a GGUF file, like llama.cpp's
//! `llama-quantize --allow-requantize --pure`. 1-D tensors (norms, biases) become/stay F32;
//! metadata is copied verbatim except `general.file_type`.

use inference_guest::ggml_type::GgmlType;
use inference_guest::gguf::writer::{GgufWriteError, GgufWriter};
use inference_guest::gguf::{Gguf, TensorInfo, Value};

use crate::codec::{CodecError, RowCodec, file_type};

/// Why a conversion failed.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// A weight's rows cannot be cut into the target's blocks.
    #[error(
        "tensor '{tensor}' has rows of {row_len} elements, not a multiple of {target}'s block of {block_len}; choose another --type (e.g. Q8_0 or Q4_0, block 32)"
    )]
    RowNotWholeBlocks {
        tensor: String,
        row_len: usize,
        target: &'static str,
        block_len: usize,
    },
    /// (De)quantisation is not available for a type.
    #[error("tensor '{tensor}' could not be re-typed")]
    Codec {
        tensor: String,
        #[source]
        source: CodecError,
    },
    /// Building the output failed.
    #[error(transparent)]
    Write(#[from] GgufWriteError),
}

/// Whether a tensor is a weight matrix to be re-typed (as opposed to a norm or bias).
pub fn is_weight(t: &TensorInfo<'_>) -> bool {
    t.dims.len() >= 2
}

/// Builds the converted file. `progress(i, n, name)` is called before each tensor.
pub fn convert(
    input: &Gguf<'_>,
    target: GgmlType,
    codec: &dyn RowCodec,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<GgufWriter, ConvertError> {
    // Fail before doing seconds of work, naming the first tensor that cannot be converted.
    for t in input.tensors().iter().filter(|t| is_weight(t)) {
        if !t.row_len().is_multiple_of(target.block_len()) {
            return Err(ConvertError::RowNotWholeBlocks {
                tensor: t.name.to_owned(),
                row_len: t.row_len(),
                target: target.name(),
                block_len: target.block_len(),
            });
        }
    }
    let mut out = if input.get("general.alignment").is_some() {
        GgufWriter::with_alignment(input.alignment() as u32)?
    } else {
        GgufWriter::new()
    };
    let ftype = Value::U32(file_type(target));
    for (key, value) in input.metadata() {
        match *key {
            "general.alignment" => {} // written by `with_alignment`
            "general.file_type" => out.add(key, &ftype)?,
            _ => out.add(key, value)?,
        }
    }
    if input.get("general.file_type").is_none() {
        out.add("general.file_type", &ftype)?;
    }
    let n = input.tensors().len();
    for (i, t) in input.tensors().iter().enumerate() {
        progress(i + 1, n, t.name);
        let ty = if is_weight(t) { target } else { GgmlType::F32 };
        let data = retype(t, ty, codec).map_err(|source| ConvertError::Codec {
            tensor: t.name.to_owned(),
            source,
        })?;
        out.add_tensor(t.name, ty, &t.dims, data)?;
    }
    Ok(out)
}

/// The tensor's data as type `ty`, row by row through f32 (a plain copy when unchanged, so
/// untouched tensors stay bit-identical).
fn retype(t: &TensorInfo<'_>, ty: GgmlType, codec: &dyn RowCodec) -> Result<Vec<u8>, CodecError> {
    if t.ty == ty {
        return Ok(t.data.to_vec());
    }
    let row_len = t.row_len();
    // Shapes were validated by the reader (source) and by `convert` (target).
    let src_row = t.ty.row_bytes(row_len).unwrap_or(0).max(1);
    let dst_row = ty.row_bytes(row_len).unwrap_or(0);
    let mut out = vec![0u8; dst_row * t.n_rows()];
    let mut row = vec![0f32; row_len];
    for (src, dst) in t
        .data
        .chunks_exact(src_row)
        .zip(out.chunks_exact_mut(dst_row.max(1)))
    {
        codec.dequantize_row(t.ty, src, &mut row)?;
        codec.quantize_row(ty, &row, dst)?;
    }
    Ok(out)
}
