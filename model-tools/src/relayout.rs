//! Re-lays a GGUF for sealing: the same metadata and tensors, with each layer's tensors
//! contiguous and the layers in forward order (embeddings first, the output last), so a
//! guest can authenticate, decrypt and use one layer while the next is still arriving.

use std::ops::Range;

use inference_guest::gguf::writer::{GgufWriteError, GgufWriter};
use inference_guest::gguf::{Gguf, GgufError, TensorInfo};

/// Why a model could not be re-laid.
#[derive(Debug, thiserror::Error)]
pub enum RelayoutError {
    #[error("cannot write the re-laid GGUF: {0}")]
    Write(#[from] GgufWriteError),
    #[error("the re-laid GGUF does not parse back ({0}); this is a bug in flexserve-model")]
    Reparse(#[from] GgufError),
    #[error("the model has no tensors")]
    NoTensors,
}

/// A re-laid GGUF and its layers' byte ranges, contiguous from 0 to its end.
pub struct Relaid {
    pub bytes: Vec<u8>,
    pub layers: Vec<Range<u64>>,
}

/// Where a tensor goes in forward order: the embeddings (with the GGUF header and
/// metadata before them, and llama3's RoPE factors, which the engine reads with them), each
/// block in turn, then everything else (final norm, output).
fn rank(name: &str) -> usize {
    if name.starts_with("token_embd.") || name.starts_with("rope_freqs.") {
        return 0;
    }
    name.strip_prefix("blk.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|n| n.parse::<usize>().ok())
        .map_or(usize::MAX, |n| n.saturating_add(1))
}

/// Re-lays `input` (see the module documentation).
pub fn relayout(input: &Gguf<'_>) -> Result<Relaid, RelayoutError> {
    let mut out = if input.get("general.alignment").is_some() {
        GgufWriter::with_alignment(input.alignment() as u32)?
    } else {
        GgufWriter::new()
    };
    for (key, value) in input.metadata() {
        if *key != "general.alignment" {
            out.add(key, value)?;
        }
    }
    let mut tensors: Vec<&TensorInfo<'_>> = input.tensors().iter().collect();
    if tensors.is_empty() {
        return Err(RelayoutError::NoTensors);
    }
    // Stable: within a layer the file's own order stays.
    tensors.sort_by_key(|t| rank(t.name));
    for t in &tensors {
        out.add_tensor(t.name, t.ty, &t.dims, t.data.to_vec())?;
    }
    let bytes = out.to_bytes()?;
    let layers = {
        let relaid = Gguf::parse(&bytes)?;
        let base = relaid.data_offset() as u64;
        let mut starts: Vec<u64> = vec![0];
        let mut last_rank = rank(relaid.tensors()[0].name);
        for t in relaid.tensors() {
            let r = rank(t.name);
            if r != last_rank {
                starts.push(base + t.offset);
                last_rank = r;
            }
        }
        let end = bytes.len() as u64;
        starts
            .iter()
            .zip(starts.iter().skip(1).chain(std::iter::once(&end)))
            .map(|(&a, &b)| a..b)
            .collect()
    };
    Ok(Relaid { bytes, layers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_rank_in_forward_order() {
        assert_eq!(rank("token_embd.weight"), 0);
        assert_eq!(rank("rope_freqs.weight"), 0);
        assert_eq!(rank("blk.0.attn_q.weight"), 1);
        assert_eq!(rank("blk.11.ffn_down.weight"), 12);
        assert_eq!(rank("output_norm.weight"), usize::MAX);
        assert_eq!(rank("output.weight"), usize::MAX);
    }
}
