//! Errors from loading a tokenizer vocabulary.

use alloc::string::String;

/// Why a tokenizer could not be built from a vocabulary (GGUF metadata or in-memory parts).
///
/// Encoding and decoding never fail: every problem with untrusted vocabulary data is caught here,
/// at load time.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TokenizerError {
    /// A required metadata key is absent.
    #[error(
        "tokenizer metadata key `{0}` is missing; re-convert the model with a current llama.cpp convert script"
    )]
    MissingKey(&'static str),
    /// The GGUF reader rejected a tokenizer key (wrong type, bad array).
    #[error("tokenizer metadata key `{key}` is unreadable: {reason}")]
    BadMetadata {
        /// The key that failed.
        key: &'static str,
        /// The reader's explanation.
        reason: String,
    },
    /// `tokenizer.ggml.model` names a tokenizer this crate does not implement.
    #[error("tokenizer model `{0}` is not supported (supported: `gpt2`, `llama`)")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer this crate does not implement.
    #[error(
        "pre-tokenizer `{0}` is not supported (supported: default, gpt-2, smollm, starcoder, refact, \
         command-r, codeshell, exaone, minerva, llama3, llama-bpe, qwen2, stablelm2); \
         tokenizing with another one would silently produce wrong ids"
    )]
    UnsupportedPreTokenizer(String),
    /// The vocabulary has no tokens at all.
    #[error("the vocabulary is empty")]
    EmptyVocab,
    /// The vocabulary has more tokens than a `u32` id can address.
    #[error("the vocabulary has {0} tokens, more than a u32 token id can address")]
    VocabTooLarge(usize),
    /// A per-token array (scores, token types) is shorter than the token list.
    #[error("`{key}` has {len} entries but the vocabulary has {n_vocab} tokens")]
    ArrayLength {
        /// The offending key.
        key: &'static str,
        /// Its length.
        len: usize,
        /// The number of tokens.
        n_vocab: usize,
    },
    /// A special-token id from the metadata does not name a token.
    #[error("`{key}` = {id} is out of range for a vocabulary of {n_vocab} tokens")]
    TokenIdOutOfRange {
        /// The offending key.
        key: &'static str,
        /// The id found there.
        id: u64,
        /// The number of tokens.
        n_vocab: usize,
    },
    /// A byte token (type BYTE) whose text is not `<0xXX>`.
    #[error("token {id} has type BYTE but its text `{text}` is not of the form <0xXX>")]
    BadByteToken {
        /// The token id.
        id: u32,
        /// Its text.
        text: String,
    },
    /// A token score is NaN, which would make merge order undefined.
    #[error("token {0} has a NaN score")]
    NanScore(u32),
}
