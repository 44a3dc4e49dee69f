//! What can go wrong loading or running a model.

use crate::ggml_type::GgmlType;
use crate::gguf::GgufError;
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
        "model architecture `{0}` is not supported (supported: llama, mistral, qwen2); \
         use a llama-family GGUF"
    )]
    UnsupportedArchitecture(String),
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
    #[error(
        "tensor `{name}` has type {ty:?}, which this engine cannot use there; \
         convert the model with `flexserve-model convert` to F16, Q8_0, Q4_0 or Q4_1"
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
}
