//! Request queue messages (device to driver, queue 2): start a generation, or cancel one.

use alloc::string::String;
use alloc::vec::Vec;

use crate::error::WireError;
use crate::spec::{
    MAX_CHAT_MESSAGES, MAX_GENERATED_TOKENS, MAX_MODEL_NAME_BYTES, MAX_PROMPT_TEXT_BYTES,
    MAX_PROMPT_TOKENS, MAX_REPEAT_PENALTY, MAX_SEALED_REQUEST_BYTES, MAX_TEMPERATURE, MAX_TOKEN_ID,
};
use crate::wire::codec::{Reader, Writer, check_len, decode_frame, len_u32};
use crate::wire::options::GenerateOptions;
use crate::wire::{Message, decode_checked, ensure};

/// Message types of the request queue.
pub mod msg_type {
    /// [`super::GenerateRequest`].
    pub const GENERATE: u16 = 0x0301;
    /// [`super::CancelRequest`].
    pub const CANCEL: u16 = 0x0302;
    /// [`super::PreemptRequest`].
    pub const PREEMPT: u16 = 0x0304;
}

/// `prompt_kind` values.
const PROMPT_TOKENS: u8 = 0;
const PROMPT_TEXT: u8 = 1;
const PROMPT_CHAT: u8 = 2;
const PROMPT_SEALED: u8 = 3;
const PROMPT_CONTINUE: u8 = 4;
/// Bytes before each chat message's content: role, reserved, content length.
const CHAT_RECORD_BYTES: usize = 8;
/// `flags` bit 0: do not stop at end-of-generation tokens.
const FLAG_IGNORE_EOG: u8 = 1;
/// `flags` bit 1 (`feature::OPTIONS`): an options trailer follows the prompt.
const FLAG_OPTIONS: u8 = 2;

/// How to pick each token. Ranges are checked on both encode and decode; a value outside
/// them is a `FieldOutOfRange` carrying the float's bits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy; otherwise 0..=`MAX_TEMPERATURE`, finite.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 = off; at most `MAX_TOKEN_ID`.
    pub top_k: u32,
    /// Nucleus mass, 0..=1 (1 = off).
    pub top_p: f32,
    /// Drop tokens below `min_p` times the best probability, 0..=1 (0 = off).
    pub min_p: f32,
    /// Penalty on repeated tokens, (0, `MAX_REPEAT_PENALTY`] (1 = off).
    pub repeat_penalty: f32,
    /// Seed of the sampler's PRNG, so runs are reproducible.
    pub seed: u64,
    /// Stop after this many tokens, 1..=`MAX_GENERATED_TOKENS`.
    pub max_tokens: u32,
    /// Keep going past end-of-generation tokens (benchmarks need exactly `max_tokens`).
    pub ignore_eog: bool,
}

impl SamplingParams {
    /// Greedy decoding of up to `max_tokens` tokens, every other filter off.
    pub fn greedy(max_tokens: u32) -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            seed: 0,
            max_tokens,
            ignore_eog: false,
        }
    }

    fn validate(&self) -> Result<(), WireError> {
        let bits = |v: f32| u64::from(v.to_bits());
        // `contains` is false for NaN, so NaN and infinities fall out with the range checks.
        let t = self.temperature;
        ensure((0.0..=MAX_TEMPERATURE).contains(&t), "temperature", bits(t))?;
        ensure(self.top_k <= MAX_TOKEN_ID, "top_k", self.top_k.into())?;
        let p = self.top_p;
        ensure((0.0..=1.0).contains(&p), "top_p", bits(p))?;
        let m = self.min_p;
        ensure((0.0..=1.0).contains(&m), "min_p", bits(m))?;
        let r = self.repeat_penalty;
        let r_ok = r > 0.0 && r <= MAX_REPEAT_PENALTY;
        ensure(r_ok, "repeat_penalty", bits(r))?;
        let n = self.max_tokens;
        ensure(
            (1..=MAX_GENERATED_TOKENS).contains(&n),
            "max_tokens",
            n.into(),
        )
    }
}

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ChatRole {
    System = 0,
    User = 1,
    Assistant = 2,
    /// A tool's result (`feature::GUEST_TOOLS`).
    Tool = 3,
}

impl ChatRole {
    /// The role's name in chat templates.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
        }
    }
}

impl TryFrom<u8> for ChatRole {
    type Error = WireError;
    fn try_from(v: u8) -> Result<Self, WireError> {
        Ok(match v {
            0 => Self::System,
            1 => Self::User,
            2 => Self::Assistant,
            3 => Self::Tool,
            _ => {
                return Err(WireError::FieldOutOfRange {
                    field: "chat role",
                    value: v.into(),
                });
            }
        })
    }
}

/// One message of a chat prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTurn {
    pub role: ChatRole,
    /// UTF-8, possibly empty.
    pub content: String,
}

/// The prompt: token ids; or (with `feature::TEXT_PROMPT`) text the driver tokenizes; or
/// (with `feature::GUEST_TEXT`) chat messages the driver renders with the model's template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// 1..=`MAX_PROMPT_TOKENS` ids, each below `MAX_TOKEN_ID`.
    Tokens(Vec<u32>),
    /// 1..=`MAX_PROMPT_TEXT_BYTES` bytes of UTF-8.
    Text(String),
    /// 1..=`MAX_CHAT_MESSAGES` messages, `MAX_PROMPT_TEXT_BYTES` at most on the wire.
    Chat(Vec<ChatTurn>),
    /// With `feature::SEALED_SESSION`: a client's request sealed to the guest's session key
    /// (docs/sealed-session.md); the guest opens it, and the answer goes back sealed.
    Sealed(SealedPrompt),
    /// With `feature::SEALED_SESSION`: go on with a preempted sealed answer on this session
    /// from the token the guest holds (the host never learns it).
    Continue,
}

/// A sealed request as the device relays it: the client's public fields the guest binds
/// (with the request's sampling) and the sealed bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedPrompt {
    /// The model name the client asked for, at most `MAX_MODEL_NAME_BYTES`.
    pub model: String,
    /// Whether the client asked for a streamed answer.
    pub stream: bool,
    /// `enc || ciphertext || tag`, at most `MAX_SEALED_REQUEST_BYTES`.
    pub request: Vec<u8>,
}

/// Bytes before a sealed prompt's model name: its length, the stream flag, reserved.
const SEALED_PROMPT_HEAD: usize = 8;

/// Bytes of a chat prompt on the wire.
fn chat_wire_len(turns: &[ChatTurn]) -> usize {
    turns
        .iter()
        .map(|t| CHAT_RECORD_BYTES + t.content.len())
        .sum()
}

/// Reads the chat messages of a `len`-byte prompt.
fn decode_chat(r: &mut Reader<'_>, len: usize) -> Result<Vec<ChatTurn>, WireError> {
    check_len("prompt chat", len, MAX_PROMPT_TEXT_BYTES)?;
    let mut records = Reader::new(r.bytes(len)?);
    let mut turns = Vec::new();
    while records.remaining() > 0 {
        check_len("chat messages", turns.len() + 1, MAX_CHAT_MESSAGES)?;
        let role = ChatRole::try_from(records.u8()?)?;
        records.reserved(3, "chat.reserved")?;
        let n = records.u32()? as usize;
        let raw = records.bytes(n)?;
        let content = core::str::from_utf8(raw).map_err(|_| WireError::InvalidUtf8 {
            field: "chat content",
        })?;
        turns.push(ChatTurn {
            role,
            content: String::from(content),
        });
    }
    Ok(turns)
}

/// Generate tokens on a session. The driver streams `Tokens` and ends with exactly one
/// `EndOfStream` or `Error` for this `request_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// Id the device chooses; unique among requests in flight.
    pub request_id: u64,
    /// The session (and so the model and KV cache) to run on.
    pub session_id: u32,
    /// Sampling parameters.
    pub sampling: SamplingParams,
    /// The prompt, appended to the session's context.
    pub prompt: Prompt,
    /// With `feature::OPTIONS`: penalties, logit bias, logprobs (sent as a trailer after
    /// the prompt when any is asked).
    pub options: GenerateOptions,
}

impl Message<'_> for GenerateRequest {
    const TYPE: u16 = msg_type::GENERATE;
    fn encode_body(&self, w: &mut Writer<'_>) {
        let s = &self.sampling;
        w.u64(self.request_id);
        w.u32(self.session_id);
        w.u32(s.max_tokens);
        w.u64(s.seed);
        w.f32(s.temperature);
        w.u32(s.top_k);
        w.f32(s.top_p);
        w.f32(s.min_p);
        w.f32(s.repeat_penalty);
        let (kind, len) = prompt_kind_len(&self.prompt);
        w.u8(kind);
        let mut flags = if s.ignore_eog { FLAG_IGNORE_EOG } else { 0 };
        if !self.options.is_empty() {
            flags |= FLAG_OPTIONS;
        }
        w.u8(flags);
        w.zeros(2);
        w.u32(len_u32(len));
        w.zeros(4);
        encode_prompt(w, &self.prompt);
        if !self.options.is_empty() {
            self.options.encode(w);
        }
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let request_id = r.u64()?;
        let session_id = r.u32()?;
        let max_tokens = r.u32()?;
        let sampling = SamplingParams {
            seed: r.u64()?,
            temperature: r.f32()?,
            top_k: r.u32()?,
            top_p: r.f32()?,
            min_p: r.f32()?,
            repeat_penalty: r.f32()?,
            max_tokens,
            ignore_eog: false,
        };
        let kind = r.u8()?;
        let flags = r.u8()?;
        if flags & !(FLAG_IGNORE_EOG | FLAG_OPTIONS) != 0 {
            return Err(WireError::ReservedNotZero {
                field: "generate.flags",
            });
        }
        let sampling = SamplingParams {
            ignore_eog: flags & FLAG_IGNORE_EOG != 0,
            ..sampling
        };
        r.reserved(2, "generate.reserved0")?;
        let len = r.u32()? as usize;
        r.reserved(4, "generate.reserved1")?;
        let prompt = decode_prompt(r, kind, len)?;
        let options = if flags & FLAG_OPTIONS != 0 {
            GenerateOptions::decode(r)?
        } else {
            GenerateOptions::default()
        };
        Ok(Self {
            request_id,
            session_id,
            sampling,
            prompt,
            options,
        })
    }

    fn validate(&self) -> Result<(), WireError> {
        self.sampling.validate()?;
        self.options.validate()?;
        validate_prompt(&self.prompt)?;
        match (&self.options.tool_chat, &self.prompt) {
            (None, _) => Ok(()),
            (Some(c), Prompt::Chat(turns)) => c.validate_turns(turns),
            // Tools belong to a chat the guest renders.
            (Some(_), _) => ensure(false, "tool chat prompt_kind", 0),
        }
    }
}

/// Checks a prompt's lengths and token ids against the protocol's limits.
pub(crate) fn validate_prompt(prompt: &Prompt) -> Result<(), WireError> {
    match prompt {
        Prompt::Tokens(t) => {
            check_len("prompt tokens", t.len(), MAX_PROMPT_TOKENS)?;
            ensure(!t.is_empty(), "prompt_len", 0)?;
            match t.iter().find(|&&id| id >= MAX_TOKEN_ID) {
                Some(&id) => ensure(false, "prompt token", id.into()),
                None => Ok(()),
            }
        }
        Prompt::Text(s) => {
            check_len("prompt text", s.len(), MAX_PROMPT_TEXT_BYTES)?;
            ensure(!s.is_empty(), "prompt_len", 0)
        }
        Prompt::Chat(turns) => {
            check_len("prompt chat", chat_wire_len(turns), MAX_PROMPT_TEXT_BYTES)?;
            check_len("chat messages", turns.len(), MAX_CHAT_MESSAGES)?;
            ensure(!turns.is_empty(), "prompt_len", 0)
        }
        Prompt::Sealed(p) => {
            check_len("sealed model name", p.model.len(), MAX_MODEL_NAME_BYTES)?;
            check_len("sealed request", p.request.len(), MAX_SEALED_REQUEST_BYTES)?;
            ensure(!p.request.is_empty(), "prompt_len", 0)
        }
        Prompt::Continue => Ok(()),
    }
}

/// A prompt's `prompt_kind` and its length on the wire (ids for tokens, bytes otherwise).
pub(crate) fn prompt_kind_len(prompt: &Prompt) -> (u8, usize) {
    match prompt {
        Prompt::Tokens(t) => (PROMPT_TOKENS, t.len()),
        Prompt::Text(s) => (PROMPT_TEXT, s.len()),
        Prompt::Chat(turns) => (PROMPT_CHAT, chat_wire_len(turns)),
        Prompt::Sealed(p) => (
            PROMPT_SEALED,
            SEALED_PROMPT_HEAD + p.model.len() + p.request.len(),
        ),
        Prompt::Continue => (PROMPT_CONTINUE, 0),
    }
}

pub(crate) fn encode_prompt(w: &mut Writer<'_>, prompt: &Prompt) {
    match prompt {
        Prompt::Tokens(t) => w.u32_list(t),
        Prompt::Text(s) => w.bytes(s.as_bytes()),
        Prompt::Chat(turns) => {
            for t in turns {
                w.u8(t.role as u8);
                w.zeros(3);
                w.u32(len_u32(t.content.len()));
                w.bytes(t.content.as_bytes());
            }
        }
        Prompt::Sealed(p) => {
            w.u32(len_u32(p.model.len()));
            w.u8(u8::from(p.stream));
            w.zeros(3);
            w.bytes(p.model.as_bytes());
            w.bytes(&p.request);
        }
        Prompt::Continue => {}
    }
}

/// Reads a prompt of `kind` whose wire length is `len`, checking its limits first.
pub(crate) fn decode_prompt(r: &mut Reader<'_>, kind: u8, len: usize) -> Result<Prompt, WireError> {
    Ok(match kind {
        PROMPT_TOKENS => {
            check_len("prompt tokens", len, MAX_PROMPT_TOKENS)?;
            Prompt::Tokens(r.u32_list(len)?)
        }
        PROMPT_TEXT => {
            check_len("prompt text", len, MAX_PROMPT_TEXT_BYTES)?;
            let raw = r.bytes(len)?;
            let text = core::str::from_utf8(raw)
                .map_err(|_| WireError::InvalidUtf8 { field: "prompt" })?;
            Prompt::Text(String::from(text))
        }
        PROMPT_CHAT => Prompt::Chat(decode_chat(r, len)?),
        PROMPT_SEALED => Prompt::Sealed(decode_sealed(r, len)?),
        PROMPT_CONTINUE => {
            ensure(len == 0, "prompt_len", len as u64)?;
            Prompt::Continue
        }
        other => {
            return Err(WireError::FieldOutOfRange {
                field: "prompt_kind",
                value: other.into(),
            });
        }
    })
}

fn decode_sealed(r: &mut Reader<'_>, len: usize) -> Result<SealedPrompt, WireError> {
    let mut body = Reader::new(r.bytes(len)?);
    let model_len = body.u32()? as usize;
    let stream = match body.u8()? {
        0 => false,
        1 => true,
        v => {
            return Err(WireError::FieldOutOfRange {
                field: "sealed stream",
                value: v.into(),
            });
        }
    };
    body.reserved(3, "sealed.reserved")?;
    check_len("sealed model name", model_len, MAX_MODEL_NAME_BYTES)?;
    let model =
        core::str::from_utf8(body.bytes(model_len)?).map_err(|_| WireError::InvalidUtf8 {
            field: "sealed model name",
        })?;
    let rest = body.remaining();
    check_len("sealed request", rest, MAX_SEALED_REQUEST_BYTES)?;
    Ok(SealedPrompt {
        model: String::from(model),
        stream,
        request: body.bytes(rest)?.to_vec(),
    })
}

/// Stop a request. The driver answers with `EndOfStream` (reason `Cancelled`) unless the
/// request already ended; cancelling an unknown id is not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelRequest {
    /// The request to stop.
    pub request_id: u64,
}

impl Message<'_> for CancelRequest {
    const TYPE: u16 = msg_type::CANCEL;
    fn encode_body(&self, w: &mut Writer<'_>) {
        w.u64(self.request_id);
    }
    fn decode_body(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self {
            request_id: r.u64()?,
        })
    }
}

/// Stops a running request between two tokens so that another can run (with
/// `feature::PREEMPT`): it ends with `EndOfStream` reason `Preempted`, and its session keeps
/// its KV cache, so the next request on it resumes where this one stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreemptRequest {
    /// The request to stop.
    pub request_id: u64,
}

impl Message<'_> for PreemptRequest {
    const TYPE: u16 = msg_type::PREEMPT;
    fn encode_body(&self, w: &mut Writer<'_>) {
        w.u64(self.request_id);
    }
    fn decode_body(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self {
            request_id: r.u64()?,
        })
    }
}

/// Any message of the request queue.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestMsg {
    /// See [`GenerateRequest`].
    Generate(GenerateRequest),
    /// See [`CancelRequest`].
    Cancel(CancelRequest),
    /// See [`PreemptRequest`].
    Preempt(PreemptRequest),
    /// See [`EchoRequest`](crate::wire::echo::EchoRequest).
    Echo(crate::wire::echo::EchoRequest),
    /// See [`EmbedRequest`](crate::wire::embed::EmbedRequest).
    Embed(crate::wire::embed::EmbedRequest),
}

impl RequestMsg {
    /// Decodes whichever request `buf` holds.
    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        let (t, r) = decode_frame(buf)?;
        Ok(match t {
            msg_type::GENERATE => Self::Generate(decode_checked(r)?),
            msg_type::CANCEL => Self::Cancel(decode_checked(r)?),
            msg_type::PREEMPT => Self::Preempt(decode_checked(r)?),
            crate::wire::echo::msg_type::ECHO_REQUEST => Self::Echo(decode_checked(r)?),
            crate::wire::embed::msg_type::EMBED => Self::Embed(decode_checked(r)?),
            other => return Err(WireError::UnknownType(other)),
        })
    }

    /// Appends the frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        match self {
            Self::Generate(m) => m.encode(out),
            Self::Cancel(m) => m.encode(out),
            Self::Preempt(m) => m.encode(out),
            Self::Echo(m) => m.encode(out),
            Self::Embed(m) => m.encode(out),
        }
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
pub(crate) mod tests;
