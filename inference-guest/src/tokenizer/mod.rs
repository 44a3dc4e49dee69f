//! Tokenizers named in GGUF metadata (`tokenizer.ggml.model`): `gpt2` (byte-level BPE with the
//! pre-tokenizer named by `tokenizer.ggml.pre`) and `llama` (SentencePiece-style BPE with byte
//! fallback), special tokens, and chat templates (the families llama.cpp renders without
//! Jinja). Token ids match llama.cpp's.
//!
//! CONTRACT (other modules code against exactly this API):
//! ```ignore
//! let tok = Tokenizer::from_gguf(&gguf)?;                 // Result<Tokenizer, TokenizerError>
//! tok.encode(text, add_bos: bool, parse_special: bool) -> Vec<u32>  // add_bos honours add_bos_token
//! tok.token_bytes(id) -> &[u8]   // the raw bytes a token stands for (special tokens: their text)
//! tok.decode(&ids) -> Vec<u8>    // concatenated token_bytes (SPM: leading space of the first piece kept)
//! tok.n_vocab(); tok.bos() -> Option<u32>; tok.eos() -> Option<u32>;
//! tok.is_end_of_generation(id) -> bool                    // eos, eot, <|im_end|>, <|endoftext|> ...
//! let template = ChatTemplate::detect(gguf.get_str("tokenizer.chat_template")?);
//! tok.encode_chat(&[ChatMessage { role, content }], template) -> Vec<u32>  // markers special, contents plain
//! ```
//! Without a GGUF file, [`Tokenizer::from_spec`] builds the same tokenizer from a [`VocabSpec`].

mod bpe;
pub mod chat;
mod encode;
mod error;
mod from_gguf;
mod pretokenize;
mod spm;
mod unicode;
mod vocab;

pub use chat::{
    ChatMessage, ChatTemplate, ToolCall, ToolFormat, ToolReply, ToolSpec, ToolTemplateError,
};
pub use error::TokenizerError;
pub use vocab::{SpecialTokenIds, Tokenizer, TokenizerKind, VocabSpec};
