//! What can go wrong loading or running a model.

use crate::ggml_type::{GgmlType, SUPPORTED_NAMES};
use crate::gguf::GgufError;
use crate::model::config::SUPPORTED_ARCHITECTURES;
use crate::tokenizer::TokenizerError;
use alloc::string::String;
use alloc::vec::Vec;

/// A model that cannot be loaded or a request it cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid GGUF file: {0}")]
    Gguf(#[from] GgufError),
    #[error("invalid tokenizer in the model file: {0}")]
    Tokenizer(#[from] TokenizerError),
    #[error("the model file has no `{key}` metadata; it is not a complete llama-family model")]
    MissingKey { key: String },
    #[error(
        "model architecture `{0}` is not supported (supported: {SUPPORTED_ARCHITECTURES}); \
         use a llama-family GGUF"
    )]
    UnsupportedArchitecture(String),
    /// RoPE scaling other than llama3's frequency factors (`rope_freqs`): YaRN, linear.
    #[error(
        "RoPE scaling `{0}` is not supported (only unscaled RoPE and llama3's \
         `rope_freqs` factors are)"
    )]
    UnsupportedRopeScaling(String),
    #[error("inconsistent model hyper-parameters: {0}")]
    BadHyperParameters(String),
    #[error("the model file has no tensor `{0}`; it is incomplete or not a llama-family model")]
    MissingTensor(String),
    #[error("tensor `{name}` has dimensions {found:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        found: Vec<u64>,
        expected: Vec<u64>,
    },
    /// A tensor the reader accepted, in a type its position does not take: in practice a
    /// quantised norm or bias (weight matrices take every type the reader accepts). The file
    /// parsed, so `flexserve-model convert` can read it, and it writes 1-D tensors as F32.
    #[error(
        "tensor `{name}` has type {}, which this engine cannot use there: norm and bias \
         vectors must be F32 or F16 (weight matrices may be any of {SUPPORTED_NAMES}); \
         `flexserve-model convert IN OUT --type <weight type>` reads this file and \
         writes every norm and bias as F32 (give the weights' current type, e.g. Q8_0, to \
         keep them as they are)",
        .ty.name()
    )]
    TensorType { name: String, ty: GgmlType },
    #[error(
        "{needed} tokens do not fit the context window of {n_ctx} tokens; \
         shorten the prompt or raise the context size"
    )]
    ContextFull { needed: usize, n_ctx: usize },
    #[error("token id {id} is outside the vocabulary of {n_vocab} tokens")]
    BadToken { id: u32, n_vocab: usize },
    #[error("empty batch: there is no token to evaluate")]
    EmptyBatch,
    /// A model file arriving in pieces did not arrive up to byte `needed`: the caller's
    /// [`super::FileArrival`] gave up (a failed or cancelled load), or broke its contract.
    #[error("the model file did not arrive up to byte {needed}: {reason}")]
    Arrival { needed: usize, reason: String },
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use crate::gguf::Gguf;
    use crate::gguf::writer::GgufWriter;
    use crate::model::Model;
    use crate::quant::Kernels;
    use alloc::string::ToString;
    use alloc::vec;

    /// A llama header, an F32 embedding and a Q8_0 norm: the engine stops at the norm.
    fn quantised_norm_model() -> Vec<u8> {
        let mut w = GgufWriter::new();
        w.add_str("general.architecture", "llama").unwrap();
        for (k, v) in [
            ("llama.embedding_length", 32),
            ("llama.block_count", 1),
            ("llama.attention.head_count", 1),
            ("llama.feed_forward_length", 32),
            ("llama.context_length", 8),
        ] {
            w.add_u32(k, v).unwrap();
        }
        w.add_f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
            .unwrap();
        w.add_tensor("token_embd.weight", GgmlType::F32, &[32, 2], vec![0; 256])
            .unwrap();
        w.add_tensor("blk.0.attn_norm.weight", GgmlType::Q8_0, &[32], vec![0; 34])
            .unwrap();
        w.to_bytes().unwrap()
    }

    #[test]
    fn tensor_type_fires_for_a_readable_file_and_gives_true_advice() {
        let bytes = quantised_norm_model();
        // The reader (which `flexserve-model convert` uses too) accepts the file ...
        let g = Gguf::parse(&bytes).unwrap();
        // ... and the model refuses the quantised norm.
        let err = Model::from_gguf(&g, Kernels::scalar()).err().unwrap();
        assert!(
            matches!(&err, ModelError::TensorType { name, ty: GgmlType::Q8_0 }
                if name == "blk.0.attn_norm.weight")
        );
        let msg = err.to_string();
        assert!(msg.contains("`blk.0.attn_norm.weight` has type Q8_0"));
        assert!(msg.contains("must be F32 or F16"));
        assert!(msg.contains(crate::ggml_type::SUPPORTED_NAMES));
        assert!(msg.contains("`flexserve-model convert IN OUT --type"));
    }
}
