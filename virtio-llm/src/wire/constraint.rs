//! The options trailer's two constraint records (`wire::options`): a response format
//! (`RESPONSE_FORMAT`) and tool calls (`TOOLS`). Each carries the JSON text the guest
//! compiles into a grammar; the guest, not the host, compiles it, because a sealed
//! request's schema is only ever text inside the guest.
//!
//! ```text
//! RESPONSE_FORMAT: u8 kind (1 json_object, 2 json_schema) | 3 reserved | schema (UTF-8)
//! TOOLS:           u8 style (1 hermes, 2 llama3_json, 3 mistral, 0x80 the template's) | u8 flags
//!                  (bit 0 lazy, bit 1 parallel) | 2 reserved | tools (UTF-8 JSON array of
//!                  {"name": …, "parameters": <schema>})
//! ```

use alloc::string::String;

use crate::error::WireError;
use crate::wire::codec::{Reader, Writer};
use crate::wire::ensure;

/// Bytes before a constraint record's text.
pub(crate) const CONSTRAINT_HEAD: usize = 4;

const FORMAT_JSON_OBJECT: u8 = 1;
const FORMAT_JSON_SCHEMA: u8 = 2;
const STYLE_HERMES: u8 = 1;
const STYLE_LLAMA3_JSON: u8 = 2;
const STYLE_MISTRAL: u8 = 3;
/// Out of the way of the styles still to come.
const STYLE_TEMPLATE: u8 = 0x80;
const TOOLS_LAZY: u8 = 1;
const TOOLS_PARALLEL: u8 = 2;

/// What the answer must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseFormat {
    /// Any JSON object.
    JsonObject,
    /// One JSON value of this schema (its text).
    JsonSchema(String),
}

/// How the model's template writes a tool call (`inference_guest`'s `ToolFormat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallStyle {
    Hermes,
    Llama3Json,
    /// `[TOOL_CALLS][…]` (added after the first two: a guest that predates it refuses the
    /// record as out of range rather than misreading it).
    Mistral,
    /// The model's own, which the guest reads from its template (`feature::GUEST_TOOLS`):
    /// for a model whose template the host cannot read.
    Template,
}

impl CallStyle {
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            CallStyle::Hermes => STYLE_HERMES,
            CallStyle::Llama3Json => STYLE_LLAMA3_JSON,
            CallStyle::Mistral => STYLE_MISTRAL,
            CallStyle::Template => STYLE_TEMPLATE,
        }
    }

    pub(crate) fn from_u8(v: u8) -> Result<Self, WireError> {
        Ok(match v {
            STYLE_HERMES => CallStyle::Hermes,
            STYLE_LLAMA3_JSON => CallStyle::Llama3Json,
            STYLE_MISTRAL => CallStyle::Mistral,
            STYLE_TEMPLATE => CallStyle::Template,
            other => {
                return Err(WireError::FieldOutOfRange {
                    field: "tools style",
                    value: other.into(),
                });
            }
        })
    }
}

/// The calls an answer may or must make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolConstraint {
    pub style: CallStyle,
    /// The answer is free until it starts a call (`tool_choice: auto`); otherwise it must
    /// be calls from its first token.
    pub lazy: bool,
    /// More than one call.
    pub parallel: bool,
    /// The functions that may be called: a JSON array of `{"name": …, "parameters": …}`.
    pub tools: String,
}

impl ResponseFormat {
    pub(crate) fn wire_len(&self) -> usize {
        CONSTRAINT_HEAD
            + match self {
                ResponseFormat::JsonObject => 0,
                ResponseFormat::JsonSchema(s) => s.len(),
            }
    }

    pub(crate) fn encode(&self, w: &mut Writer<'_>) {
        match self {
            ResponseFormat::JsonObject => {
                w.u8(FORMAT_JSON_OBJECT);
                w.zeros(3);
            }
            ResponseFormat::JsonSchema(s) => {
                w.u8(FORMAT_JSON_SCHEMA);
                w.zeros(3);
                w.bytes(s.as_bytes());
            }
        }
    }

    pub(crate) fn decode(v: &mut Reader<'_>) -> Result<Self, WireError> {
        let kind = v.u8()?;
        v.reserved(3, "response_format.reserved")?;
        let text = text(v, "response_format schema")?;
        match kind {
            FORMAT_JSON_OBJECT => {
                ensure(
                    text.is_empty(),
                    "json_object schema length",
                    text.len() as u64,
                )?;
                Ok(ResponseFormat::JsonObject)
            }
            FORMAT_JSON_SCHEMA => {
                ensure(!text.is_empty(), "json_schema length", 0)?;
                Ok(ResponseFormat::JsonSchema(text))
            }
            other => Err(WireError::FieldOutOfRange {
                field: "response_format kind",
                value: other.into(),
            }),
        }
    }
}

impl ToolConstraint {
    pub(crate) fn wire_len(&self) -> usize {
        CONSTRAINT_HEAD + self.tools.len()
    }

    pub(crate) fn encode(&self, w: &mut Writer<'_>) {
        w.u8(self.style.to_u8());
        let mut flags = 0;
        if self.lazy {
            flags |= TOOLS_LAZY;
        }
        if self.parallel {
            flags |= TOOLS_PARALLEL;
        }
        w.u8(flags);
        w.zeros(2);
        w.bytes(self.tools.as_bytes());
    }

    pub(crate) fn decode(v: &mut Reader<'_>) -> Result<Self, WireError> {
        let style = CallStyle::from_u8(v.u8()?)?;
        let flags = v.u8()?;
        if flags & !(TOOLS_LAZY | TOOLS_PARALLEL) != 0 {
            return Err(WireError::ReservedNotZero {
                field: "tools.flags",
            });
        }
        v.reserved(2, "tools.reserved")?;
        let tools = text(v, "tools")?;
        ensure(!tools.is_empty(), "tools length", 0)?;
        Ok(ToolConstraint {
            style,
            lazy: flags & TOOLS_LAZY != 0,
            parallel: flags & TOOLS_PARALLEL != 0,
            tools,
        })
    }
}

/// The rest of a record's value as UTF-8 text.
fn text(v: &mut Reader<'_>, field: &'static str) -> Result<String, WireError> {
    let n = v.remaining();
    let raw = v.bytes(n)?;
    core::str::from_utf8(raw)
        .map(String::from)
        .map_err(|_| WireError::InvalidUtf8 { field })
}
