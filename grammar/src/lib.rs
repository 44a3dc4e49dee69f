//! Structured output for FlexServe: a JSON schema becomes a grammar, a byte-level matcher
//! follows the output, and a trie walk over the vocabulary masks every token that would
//! leave the grammar. `no_std` + `alloc`: the guest compiles the schema the host forwards.
//!
//! ```ignore
//! let vocab = Vocab::new((0..n).map(|id| tok.token_bytes(id)));      // once per model
//! let mut c = Constraint::new(compile_schema(schema_text)?);           // once per request
//! c.mask_logits(&vocab, &eog_ids, logits, &mut mask);                  // each step
//! c.accept_token_id(&vocab, &eog_ids, chosen)?;
//! ```
//! `docs/structured-output.md` lists the supported subset and the measured cost.

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod constraint;
mod content;
mod error;
mod json;
mod matcher;
mod rules;
mod schema;
mod table;
mod trie;
mod vocab;
mod walk;

pub use constraint::Constraint;
pub use error::{ConstraintError, GrammarError, SchemaError};
pub use json::Json;
pub use matcher::Matcher;
pub use rules::Grammar;
pub use schema::{
    CallStyle, NoCallAnswer, ToolSchema, compile_schema, compile_value, json_object_grammar,
    tool_calls_grammar, tool_calls_or_answer_grammar,
};
pub use vocab::{TokenSet, Vocab, VocabStats};
