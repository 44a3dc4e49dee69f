//! Errors: what a schema asked that this crate cannot do, and where.

use alloc::string::String;

/// Why a schema could not become a grammar. The daemon answers these with HTTP 400; each
/// message names the keyword and the JSON pointer (`#/properties/name`) where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// The schema text is not JSON.
    #[error("the schema is not valid JSON")]
    NotJson,
    /// A keyword outside the supported subset (`pattern`, `not`, `if`, ...).
    #[error("unsupported JSON-schema keyword `{keyword}` at {pointer}")]
    Unsupported { keyword: String, pointer: String },
    /// A supported keyword with a value of the wrong shape or out of range.
    #[error("invalid value for `{keyword}` at {pointer}: {why}")]
    Invalid {
        keyword: String,
        pointer: String,
        why: &'static str,
    },
    /// A `$ref` that is not `#`, `#/$defs/..` or `#/definitions/..`, or names nothing.
    #[error(
        "unresolvable `$ref` \"{reference}\" at {pointer}: only local #/$defs/ and #/definitions/ references are supported"
    )]
    Ref { reference: String, pointer: String },
    /// The grammar the schema compiles to is unusable (too large, left-recursive).
    #[error(transparent)]
    Grammar(#[from] GrammarError),
}

/// A grammar the matcher cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrammarError {
    /// More elements than the limit (huge `maxLength`/`maxItems` or fan-out).
    #[error("the schema compiles to too large a grammar")]
    TooLarge,
    /// A rule that can reach itself without consuming input (`$ref` loops such as
    /// `{"$ref": "#"}` or `anyOf` containing its own `$ref`).
    #[error(
        "the schema is left-recursive through {0} (a $ref that reaches itself before any text)"
    )]
    LeftRecursion(String),
}

/// Why a token could not be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    /// The token's bytes do not continue the grammar (the caller sampled a masked token).
    #[error("token {0} does not continue the grammar")]
    Rejected(u32),
    /// An end-of-generation token before the output is complete.
    #[error("end of generation before the structured output is complete")]
    Incomplete,
}
