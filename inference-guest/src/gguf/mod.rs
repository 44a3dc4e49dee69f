//! GGUF v2/v3 reader: validates every offset, size, count, type and alignment, and hands out
//! borrowed views into the caller's buffer (no tensor data is copied).
//!
//! CONTRACT (other modules code against exactly this API):
//! ```ignore
//! let g = Gguf::parse(&bytes)?;                    // Result<Gguf<'_>, GgufError>
//! let g = Gguf::parse_prefix(&bytes[..n], len)?;   // a file of `len` bytes still arriving:
//!                                                  // Err(NeedMoreBytes { needed, .. }) until
//!                                                  // the tensor infos are in; tensors past
//!                                                  // `n` have empty `data`
//! g.file_len(); g.available();                     // declared length; bytes the parse had
//! g.file_range(t);                                 // Range<usize> of `t`'s bytes in the file
//! g.version();                                     // 2 or 3
//! g.alignment();                                   // general.alignment or 32
//! g.get("llama.block_count");                      // Option<&Value<'_>>
//! g.get_u32("llama.block_count")?;                 // Result<Option<u32>, GgufError>: any int type that fits
//! g.get_f32("llama.rope.freq_base")?;              // Result<Option<f32>, GgufError>: F32 or F64
//! g.get_str("general.architecture")?;              // Result<Option<&str>, GgufError>
//! g.get_str_array("tokenizer.ggml.tokens")?;       // Result<Option<Vec<&str>>, GgufError>
//! g.get_f32_array("tokenizer.ggml.scores")?;       // Result<Option<Vec<f32>>, GgufError>
//! g.get_i32_array("tokenizer.ggml.token_type")?;   // Result<Option<Vec<i32>>, GgufError>
//! g.metadata();                                    // &[(&str, Value<'_>)], in file order
//! g.tensors();                                     // &[TensorInfo<'_>], in file order
//! g.tensor("blk.0.attn_q.weight");                 // Option<&TensorInfo<'_>>
//! t.name; t.ty /* GgmlType */; t.dims /* &[u64], ne[0] first */; t.data /* &[u8], exact size */;
//! t.n_elements(); t.row_len() /* ne[0] */; t.n_rows() /* product of ne[1..] */; t.n_bytes()
//! ```
//! Wrong-typed metadata (`get_u32` on a string, say) is a `GgufError::MetadataType` naming the key.

mod access;
mod cursor;
mod error;
mod reader;
mod value;
#[cfg(feature = "std")]
pub mod writer;

pub use error::GgufError;
pub use reader::{DEFAULT_ALIGNMENT, Gguf, MAX_ARRAY_DEPTH, TensorInfo};
pub use value::{Value, ValueType};

#[cfg(all(test, feature = "std"))]
mod tests;
