//! Response queue messages (driver to device, queue 3): the token stream of a request and
//! its single terminal message, `EndOfStream` or `Error`.

use alloc::string::String;
use alloc::vec::Vec;

use crate::error::WireError;
use crate::spec::{
    MAX_CONTEXT_LEN, MAX_ERROR_MESSAGE_BYTES, MAX_GENERATED_TOKENS,
    MAX_LOGPROB_TOKENS_PER_RESPONSE, MAX_TOKEN_ID, MAX_TOKEN_TEXT_BYTES, MAX_TOKENS_PER_RESPONSE,
    MAX_TOP_LOGPROBS, MIN_LOGPROB,
};
use crate::wire::codec::{Reader, Writer, check_len, decode_frame, len_u32};
use crate::wire::status::Status;
use crate::wire::{Message, decode_checked, ensure};

/// Message types of the response queue.
pub mod msg_type {
    /// [`super::Tokens`].
    pub const TOKENS: u16 = 0x0401;
    /// [`super::ErrorResponse`].
    pub const ERROR: u16 = 0x0402;
    /// [`super::EndOfStream`].
    pub const END_OF_STREAM: u16 = 0x0403;
}

/// A generated token's logprob and the most likely alternatives at its step
/// (`feature::OPTIONS`, when the request asked for logprobs).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token's logprob, `MIN_LOGPROB..=0`.
    pub logprob: f32,
    /// The `top_n` most likely tokens and their logprobs, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Newly generated tokens of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokens {
    /// The request they belong to.
    pub request_id: u64,
    /// 1..=`MAX_TOKENS_PER_RESPONSE` ids, each below `MAX_TOKEN_ID`. For a sealed request
    /// (`Prompt::Sealed`) every id is 0: the host learns how many, not which; and the
    /// answer's last piece may come with none.
    pub token_ids: Vec<u32>,
    /// With `feature::GUEST_TEXT`: the bytes these tokens stand for, end-of-generation
    /// tokens excluded, at most `MAX_TOKEN_TEXT_BYTES`. Not necessarily UTF-8 on its own:
    /// a character may span two messages. Empty without the feature. For a sealed request:
    /// one sealed answer piece (docs/sealed-session.md).
    pub text: Vec<u8>,
    /// With `feature::OPTIONS`, when the request asked: one per id (then at most
    /// `MAX_LOGPROB_TOKENS_PER_RESPONSE` ids), each with the same number of alternatives.
    /// Empty otherwise, and always for a sealed request.
    pub logprobs: Vec<TokenLogprob>,
}

/// Writes the logprob block that follows a `Tokens` text: `top_n` u8, 3 reserved bytes,
/// then per token its logprob and `top_n` (id, logprob) pairs.
fn encode_logprobs(w: &mut Writer<'_>, logprobs: &[TokenLogprob]) {
    let top_n = logprobs.first().map_or(0, |l| l.top.len());
    w.u8(top_n as u8);
    w.zeros(3);
    for l in logprobs {
        w.f32(l.logprob);
        for &(id, lp) in &l.top {
            w.u32(id);
            w.f32(lp);
        }
    }
}

/// Reads the logprob block of `count` tokens, its limits checked before allocating.
fn decode_logprobs(r: &mut Reader<'_>, count: usize) -> Result<Vec<TokenLogprob>, WireError> {
    check_len("logprob tokens", count, MAX_LOGPROB_TOKENS_PER_RESPONSE)?;
    let top_n = usize::from(r.u8()?);
    check_len("top logprobs", top_n, MAX_TOP_LOGPROBS)?;
    r.reserved(3, "tokens.logprobs.reserved")?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let logprob = r.f32()?;
        let mut top = Vec::with_capacity(top_n);
        for _ in 0..top_n {
            top.push((r.u32()?, r.f32()?));
        }
        out.push(TokenLogprob { logprob, top });
    }
    Ok(out)
}

/// Checks a `Tokens`' logprobs against its ids and the protocol's ranges.
fn validate_logprobs(t: &Tokens) -> Result<(), WireError> {
    if t.logprobs.is_empty() {
        return Ok(());
    }
    let n = t.token_ids.len();
    check_len("logprob tokens", n, MAX_LOGPROB_TOKENS_PER_RESPONSE)?;
    ensure(
        t.logprobs.len() == n,
        "logprob count",
        t.logprobs.len() as u64,
    )?;
    let top_n = t.logprobs[0].top.len();
    check_len("top logprobs", top_n, MAX_TOP_LOGPROBS)?;
    let ok = |lp: f32| (MIN_LOGPROB..=0.0).contains(&lp);
    for l in &t.logprobs {
        ensure(ok(l.logprob), "logprob", l.logprob.to_bits().into())?;
        ensure(l.top.len() == top_n, "top logprobs", l.top.len() as u64)?;
        for &(id, lp) in &l.top {
            ensure(id < MAX_TOKEN_ID, "logprob token", id.into())?;
            ensure(ok(lp), "logprob", lp.to_bits().into())?;
        }
    }
    Ok(())
}

impl Message<'_> for Tokens {
    const TYPE: u16 = msg_type::TOKENS;
    fn encode_body(&self, w: &mut Writer<'_>) {
        w.u64(self.request_id);
        w.u32(len_u32(self.token_ids.len()));
        w.u32(len_u32(self.text.len()));
        w.u32_list(&self.token_ids);
        w.bytes(&self.text);
        if !self.logprobs.is_empty() {
            encode_logprobs(w, &self.logprobs);
        }
    }
    fn decode_body(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let request_id = r.u64()?;
        let count = r.u32()? as usize;
        let text_len = r.u32()? as usize;
        check_len("response tokens", count, MAX_TOKENS_PER_RESPONSE)?;
        check_len("response text", text_len, MAX_TOKEN_TEXT_BYTES)?;
        let token_ids = r.u32_list(count)?;
        let text = r.bytes(text_len)?.to_vec();
        // The block is self-describing: bytes after the text can only be logprobs.
        let logprobs = if r.remaining() > 0 {
            decode_logprobs(r, count)?
        } else {
            Vec::new()
        };
        Ok(Self {
            request_id,
            token_ids,
            text,
            logprobs,
        })
    }
    fn validate(&self) -> Result<(), WireError> {
        check_len(
            "response tokens",
            self.token_ids.len(),
            MAX_TOKENS_PER_RESPONSE,
        )?;
        check_len("response text", self.text.len(), MAX_TOKEN_TEXT_BYTES)?;
        let empty = self.token_ids.is_empty() && self.text.is_empty();
        ensure(!empty, "token count", 0)?;
        if let Some(&id) = self.token_ids.iter().find(|&&id| id >= MAX_TOKEN_ID) {
            return ensure(false, "token id", id.into());
        }
        validate_logprobs(self)
    }
}

/// A request failed; nothing more follows for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    /// The request that failed.
    pub request_id: u64,
    /// Why; never `Status::Ok`.
    pub status: Status,
    /// Human-readable detail for the host log, UTF-8, at most `MAX_ERROR_MESSAGE_BYTES`.
    pub message: String,
}

impl Message<'_> for ErrorResponse {
    const TYPE: u16 = msg_type::ERROR;
    fn encode_body(&self, w: &mut Writer<'_>) {
        w.u64(self.request_id);
        w.u16(self.status.to_u16());
        // The limit is below 64 KiB, so the length fits the u16 once validated.
        w.u16(u16::try_from(self.message.len()).unwrap_or(u16::MAX));
        w.zeros(4);
        w.bytes(self.message.as_bytes());
    }
    fn decode_body(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let request_id = r.u64()?;
        let status = Status::try_from(r.u16()?)?;
        let len = usize::from(r.u16()?);
        r.reserved(4, "error.reserved")?;
        check_len("error message", len, MAX_ERROR_MESSAGE_BYTES)?;
        let raw = r.bytes(len)?;
        let message =
            core::str::from_utf8(raw).map_err(|_| WireError::InvalidUtf8 { field: "message" })?;
        Ok(Self {
            request_id,
            status,
            message: String::from(message),
        })
    }
    fn validate(&self) -> Result<(), WireError> {
        check_len("error message", self.message.len(), MAX_ERROR_MESSAGE_BYTES)?;
        ensure(self.status != Status::Ok, "error.status", 0)
    }
}

/// Why a generation stopped normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StopReason {
    /// `max_tokens` were generated.
    MaxTokens = 1,
    /// The model produced an end-of-generation token.
    EndOfGeneration = 2,
    /// The device cancelled the request (or closed its session).
    Cancelled = 3,
    /// The session's context filled up.
    ContextFull = 4,
    /// The device preempted the request (`PreemptRequest`, with `feature::PREEMPT`); the
    /// session keeps its state, and its next request resumes from the last token sent.
    Preempted = 5,
}

impl TryFrom<u8> for StopReason {
    type Error = WireError;
    fn try_from(v: u8) -> Result<Self, WireError> {
        Ok(match v {
            1 => Self::MaxTokens,
            2 => Self::EndOfGeneration,
            3 => Self::Cancelled,
            4 => Self::ContextFull,
            5 => Self::Preempted,
            _ => {
                return Err(WireError::FieldOutOfRange {
                    field: "reason",
                    value: v.into(),
                });
            }
        })
    }
}

/// Time the driver spent on a request, from its own clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timings {
    /// Prompt evaluation (prefill), ns.
    pub prompt_ns: u64,
    /// Token generation (decode), ns.
    pub generation_ns: u64,
}

/// A request finished; nothing more follows for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndOfStream {
    /// The request that finished.
    pub request_id: u64,
    /// Why it stopped.
    pub reason: StopReason,
    /// The prompt's tokens, at most `MAX_CONTEXT_LEN`.
    pub prompt_tokens: u32,
    /// Tokens generated, at most `MAX_GENERATED_TOKENS`.
    pub generated_tokens: u32,
    /// Of `prompt_tokens`, those whose KV came from a closed session's cache instead of
    /// being evaluated (docs/virtio-llm.md, *KV reuse*).
    pub cached_tokens: u32,
    /// Where the time went.
    pub timings: Timings,
}

impl Message<'_> for EndOfStream {
    const TYPE: u16 = msg_type::END_OF_STREAM;
    fn encode_body(&self, w: &mut Writer<'_>) {
        w.u64(self.request_id);
        w.u8(self.reason as u8);
        w.zeros(3);
        w.u32(self.prompt_tokens);
        w.u32(self.generated_tokens);
        w.u32(self.cached_tokens);
        w.u64(self.timings.prompt_ns);
        w.u64(self.timings.generation_ns);
    }
    fn decode_body(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let request_id = r.u64()?;
        let reason = StopReason::try_from(r.u8()?)?;
        r.reserved(3, "end_of_stream.reserved0")?;
        let prompt_tokens = r.u32()?;
        let generated_tokens = r.u32()?;
        let cached_tokens = r.u32()?;
        Ok(Self {
            request_id,
            reason,
            prompt_tokens,
            generated_tokens,
            cached_tokens,
            timings: Timings {
                prompt_ns: r.u64()?,
                generation_ns: r.u64()?,
            },
        })
    }
    fn validate(&self) -> Result<(), WireError> {
        let p = self.prompt_tokens;
        ensure(p <= MAX_CONTEXT_LEN, "prompt_tokens", p.into())?;
        let g = self.generated_tokens;
        ensure(g <= MAX_GENERATED_TOKENS, "generated_tokens", g.into())?;
        let c = self.cached_tokens;
        ensure(c <= p, "cached_tokens", c.into())
    }
}

/// Any message of the response queue.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseMsg {
    /// See [`Tokens`].
    Tokens(Tokens),
    /// See [`ErrorResponse`].
    Error(ErrorResponse),
    /// See [`EndOfStream`].
    EndOfStream(EndOfStream),
    /// See [`EchoReply`](crate::wire::echo::EchoReply).
    Echo(crate::wire::echo::EchoReply),
    /// See [`Embedding`](crate::wire::embed::Embedding).
    Embedding(crate::wire::embed::Embedding),
}

impl ResponseMsg {
    /// Decodes whichever response `buf` holds.
    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        let (t, r) = decode_frame(buf)?;
        Ok(match t {
            msg_type::TOKENS => Self::Tokens(decode_checked(r)?),
            msg_type::ERROR => Self::Error(decode_checked(r)?),
            msg_type::END_OF_STREAM => Self::EndOfStream(decode_checked(r)?),
            crate::wire::echo::msg_type::ECHO_REPLY => Self::Echo(decode_checked(r)?),
            crate::wire::embed::msg_type::EMBEDDING => Self::Embedding(decode_checked(r)?),
            other => return Err(WireError::UnknownType(other)),
        })
    }

    /// Appends the frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        match self {
            Self::Tokens(m) => m.encode(out),
            Self::Error(m) => m.encode(out),
            Self::EndOfStream(m) => m.encode(out),
            Self::Echo(m) => m.encode(out),
            Self::Embedding(m) => m.encode(out),
        }
    }
}

#[cfg(test)]
#[path = "response_tests.rs"]
pub(crate) mod tests;
