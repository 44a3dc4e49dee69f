//! The options trailer of a `GenerateRequest` (`feature::OPTIONS`): what a request asks of
//! the sampler beyond the fixed fields, as versioned type-length-value records so that later
//! options (a response format, tools) are added without another message layout.
//!
//! ```text
//! u8 version (1) | u8 reserved | u16 count (1..=MAX_OPTION_RECORDS)
//! count × { u16 type | u32 len (..=MAX_OPTION_RECORD_BYTES) | u8[len] value }
//! ```
//!
//! Records come in ascending type order, each type at most once, so one set of options has
//! one encoding. A type this version does not define (reserved ones included) is an error:
//! a guest must not quietly sample differently from what the host asked.

use alloc::vec::Vec;

pub use crate::wire::constraint::{CallStyle, ResponseFormat, ToolConstraint};
pub use crate::wire::tool_chat::{ToolChat, ToolDef, TurnCall};

use crate::error::WireError;
use crate::spec::{
    MAX_CONTEXT_LEN, MAX_LOGIT_BIAS, MAX_LOGIT_BIAS_VALUE, MAX_OPENAI_PENALTY,
    MAX_OPTION_RECORD_BYTES, MAX_OPTION_RECORDS, MAX_TOKEN_ID, MAX_TOP_LOGPROBS,
};
use crate::wire::codec::{Reader, Writer, check_len, len_u32};
use crate::wire::ensure;

/// Version of the trailer layout.
pub const OPTIONS_VERSION: u8 = 1;

/// Record types of the options trailer.
pub mod record {
    /// [`super::Penalties`]: presence and frequency penalties and their window (12 bytes).
    pub const PENALTIES: u16 = 0x0001;
    /// [`super::GenerateOptions::logit_bias`]: `count` u32, then `count` × (id u32, bias f32).
    pub const LOGIT_BIAS: u16 = 0x0002;
    /// [`super::GenerateOptions::logprobs`]: `top_n` u8 (0..=20), 3 reserved bytes.
    pub const LOGPROBS: u16 = 0x0003;
    /// [`super::GenerateOptions::response_format`]: JSON schema text or `json_object`,
    /// compiled to a grammar in the guest (`wire::constraint`).
    pub const RESPONSE_FORMAT: u16 = 0x0004;
    /// [`super::GenerateOptions::tools`]: the functions a call may name, their schemas, and
    /// how the call is written (`wire::constraint`).
    pub const TOOLS: u16 = 0x0005;
    /// [`super::GenerateOptions::tool_chat`] (`feature::GUEST_TOOLS`): the tools a chat
    /// prompt declares and the calls its assistant turns made (`wire::tool_chat`).
    pub const TOOL_CHAT: u16 = 0x0006;
}

/// Bytes before each record's value: its type and length.
const RECORD_HEAD: usize = 6;
const PENALTIES_BYTES: usize = 12;
const LOGPROBS_BYTES: usize = 4;

/// OpenAI's presence and frequency penalties, with llama.cpp's numerics: a token seen `c`
/// times among the last `last_n` tokens of the session's context loses
/// `c × frequency + presence` from its logit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Penalties {
    /// -2..=2, finite.
    pub presence: f32,
    /// -2..=2, finite.
    pub frequency: f32,
    /// How many of the latest tokens the penalties (the repeat penalty too) look at,
    /// 0..=`MAX_CONTEXT_LEN`.
    pub last_n: u32,
}

/// What a request asks of the sampler beyond `SamplingParams`. The default asks nothing,
/// and a request with default options carries no trailer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GenerateOptions {
    pub penalties: Option<Penalties>,
    /// (token id, bias) added to the token's logit before sampling, ids ascending and
    /// distinct, at most `MAX_LOGIT_BIAS`; -100 bans the token.
    pub logit_bias: Vec<(u32, f32)>,
    /// Report each generated token's logprob and its `top_n` most likely alternatives
    /// (0..=`MAX_TOP_LOGPROBS`).
    pub logprobs: Option<u8>,
    /// The answer is one JSON value of this format (structured output).
    pub response_format: Option<ResponseFormat>,
    /// The answer's tool calls must name these functions with valid arguments.
    pub tools: Option<ToolConstraint>,
    /// With a chat prompt: its tools and earlier calls, rendered by the guest.
    pub tool_chat: Option<ToolChat>,
}

impl GenerateOptions {
    /// Whether nothing is asked (no trailer is sent).
    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    fn count(&self) -> usize {
        usize::from(self.penalties.is_some())
            + usize::from(!self.logit_bias.is_empty())
            + usize::from(self.logprobs.is_some())
            + usize::from(self.response_format.is_some())
            + usize::from(self.tools.is_some())
            + usize::from(self.tool_chat.is_some())
    }

    /// Checks every value's range (shared by encoding and decoding).
    pub fn validate(&self) -> Result<(), WireError> {
        let bits = |v: f32| u64::from(v.to_bits());
        let penalty = -MAX_OPENAI_PENALTY..=MAX_OPENAI_PENALTY;
        if let Some(p) = self.penalties {
            ensure(
                penalty.contains(&p.presence),
                "presence_penalty",
                bits(p.presence),
            )?;
            ensure(
                penalty.contains(&p.frequency),
                "frequency_penalty",
                bits(p.frequency),
            )?;
            ensure(
                p.last_n <= MAX_CONTEXT_LEN,
                "penalty last_n",
                p.last_n.into(),
            )?;
        }
        check_len("logit bias", self.logit_bias.len(), MAX_LOGIT_BIAS)?;
        let bias = -MAX_LOGIT_BIAS_VALUE..=MAX_LOGIT_BIAS_VALUE;
        let mut prev = None;
        for &(id, b) in &self.logit_bias {
            ensure(id < MAX_TOKEN_ID, "logit bias token", id.into())?;
            // Ascending and distinct: one bias per token, one encoding per set.
            ensure(prev.is_none_or(|p| p < id), "logit bias order", id.into())?;
            ensure(bias.contains(&b), "logit bias", bits(b))?;
            prev = Some(id);
        }
        if let Some(n) = self.logprobs {
            ensure(usize::from(n) <= MAX_TOP_LOGPROBS, "top_logprobs", n.into())?;
        }
        if let Some(f) = &self.response_format {
            check_len("response_format", f.wire_len(), MAX_OPTION_RECORD_BYTES)?;
        }
        if let Some(t) = &self.tools {
            check_len("tools", t.wire_len(), MAX_OPTION_RECORD_BYTES)?;
        }
        if let Some(c) = &self.tool_chat {
            check_len("tool chat", c.wire_len(), MAX_OPTION_RECORD_BYTES)?;
            c.validate()?;
        }
        Ok(())
    }

    /// Bytes of the trailer (0 when empty).
    pub fn wire_len(&self) -> usize {
        if self.is_empty() {
            return 0;
        }
        let mut n = 4;
        if self.penalties.is_some() {
            n += RECORD_HEAD + PENALTIES_BYTES;
        }
        if !self.logit_bias.is_empty() {
            n += RECORD_HEAD + 4 + 8 * self.logit_bias.len();
        }
        if self.logprobs.is_some() {
            n += RECORD_HEAD + LOGPROBS_BYTES;
        }
        if let Some(f) = &self.response_format {
            n += RECORD_HEAD + f.wire_len();
        }
        if let Some(t) = &self.tools {
            n += RECORD_HEAD + t.wire_len();
        }
        if let Some(c) = &self.tool_chat {
            n += RECORD_HEAD + c.wire_len();
        }
        n
    }

    /// Writes the trailer (the caller sends one only when [`Self::is_empty`] is false).
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.u8(OPTIONS_VERSION);
        w.u8(0);
        w.u16(self.count() as u16);
        if let Some(p) = self.penalties {
            w.u16(record::PENALTIES);
            w.u32(PENALTIES_BYTES as u32);
            w.f32(p.presence);
            w.f32(p.frequency);
            w.u32(p.last_n);
        }
        if !self.logit_bias.is_empty() {
            w.u16(record::LOGIT_BIAS);
            w.u32(len_u32(4 + 8 * self.logit_bias.len()));
            w.u32(len_u32(self.logit_bias.len()));
            for &(id, b) in &self.logit_bias {
                w.u32(id);
                w.f32(b);
            }
        }
        if let Some(n) = self.logprobs {
            w.u16(record::LOGPROBS);
            w.u32(LOGPROBS_BYTES as u32);
            w.u8(n);
            w.zeros(3);
        }
        if let Some(f) = &self.response_format {
            w.u16(record::RESPONSE_FORMAT);
            w.u32(len_u32(f.wire_len()));
            f.encode(w);
        }
        if let Some(t) = &self.tools {
            w.u16(record::TOOLS);
            w.u32(len_u32(t.wire_len()));
            t.encode(w);
        }
        if let Some(c) = &self.tool_chat {
            w.u16(record::TOOL_CHAT);
            w.u32(len_u32(c.wire_len()));
            c.encode(w);
        }
    }

    /// Reads a trailer; ranges are checked by [`Self::validate`] afterwards.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let version = r.u8()?;
        ensure(
            version == OPTIONS_VERSION,
            "options version",
            version.into(),
        )?;
        r.reserved(1, "options.reserved")?;
        let count = usize::from(r.u16()?);
        ensure(count >= 1, "options count", 0)?;
        check_len("option records", count, MAX_OPTION_RECORDS)?;
        let mut opts = Self::default();
        let mut last_type = 0u16;
        for _ in 0..count {
            let kind = r.u16()?;
            let len = r.u32()? as usize;
            check_len("option record", len, MAX_OPTION_RECORD_BYTES)?;
            // Ascending types: each at most once.
            ensure(kind > last_type, "option record order", kind.into())?;
            last_type = kind;
            let mut v = Reader::new(r.bytes(len)?);
            match kind {
                record::PENALTIES => {
                    ensure(len == PENALTIES_BYTES, "penalties length", len as u64)?;
                    opts.penalties = Some(Penalties {
                        presence: v.f32()?,
                        frequency: v.f32()?,
                        last_n: v.u32()?,
                    });
                }
                record::LOGIT_BIAS => opts.logit_bias = decode_bias(&mut v, len)?,
                record::LOGPROBS => {
                    ensure(len == LOGPROBS_BYTES, "logprobs length", len as u64)?;
                    opts.logprobs = Some(v.u8()?);
                    v.reserved(3, "logprobs.reserved")?;
                }
                record::RESPONSE_FORMAT => {
                    opts.response_format = Some(ResponseFormat::decode(&mut v)?);
                }
                record::TOOLS => opts.tools = Some(ToolConstraint::decode(&mut v)?),
                record::TOOL_CHAT => opts.tool_chat = Some(ToolChat::decode(&mut v)?),
                other => return Err(WireError::UnknownOption(other)),
            }
            v.finish()?;
        }
        Ok(opts)
    }
}

/// A logit bias record's value of `len` bytes: a count that must agree with `len`, then the
/// pairs.
fn decode_bias(v: &mut Reader<'_>, len: usize) -> Result<Vec<(u32, f32)>, WireError> {
    let n = v.u32()? as usize;
    check_len("logit bias", n, MAX_LOGIT_BIAS)?;
    ensure(n >= 1 && len == 4 + 8 * n, "logit bias length", len as u64)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push((v.u32()?, v.f32()?));
    }
    Ok(out)
}

#[cfg(test)]
#[path = "options_tests.rs"]
pub(crate) mod tests;
