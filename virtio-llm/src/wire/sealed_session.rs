//! Sealed sessions (`feature::SEALED_SESSION`, docs/sealed-session.md): what a sealed
//! request holds once opened, the bytes it is bound to, and the control messages that fetch
//! the guest's signed statement.

use alloc::string::String;
use alloc::vec::Vec;

use crate::error::WireError;
use crate::spec::{MAX_STOP_BYTES, MAX_STOP_STRINGS, SIGNED_STATEMENT_BYTES};
use crate::wire::codec::{Reader, Writer, check_len, len_u32};
use crate::wire::request::{Prompt, SamplingParams, decode_prompt, encode_prompt};
use crate::wire::{Message, ensure};

/// Message types on the control queues.
pub mod msg_type {
    /// [`super::GetStatement`] (control command).
    pub const GET_STATEMENT: u16 = 0x010B;
    /// [`super::StatementReply`] (control reply).
    pub const STATEMENT_REPLY: u16 = 0x0204;
}

/// Prefix of a request's binding.
const BINDING_LABEL: &[u8] = b"flexserve request binding v1";

/// The bytes a sealed request is bound to (its HPKE AAD): the model name and stream flag the
/// client sent and every sampling field, as the guest receives them. The client computes the
/// same from what it asked for, so a daemon that changes any of them makes the request fail
/// to open.
pub fn binding(model: &str, stream: bool, sampling: &SamplingParams) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = Writer::new(&mut out);
    w.bytes(BINDING_LABEL);
    w.u32(len_u32(model.len()));
    w.bytes(model.as_bytes());
    w.u8(u8::from(stream));
    w.u8(u8::from(sampling.ignore_eog));
    w.u32(sampling.max_tokens);
    w.u64(sampling.seed);
    w.f32(sampling.temperature);
    w.u32(sampling.top_k);
    w.f32(sampling.top_p);
    w.f32(sampling.min_p);
    w.f32(sampling.repeat_penalty);
    out
}

/// What a sealed request holds: the prompt (text or chat messages) and the stop strings, which
/// are the user's too and so travel sealed and are applied in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedContent {
    /// `Prompt::Text` or `Prompt::Chat`.
    pub prompt: Prompt,
    /// At most `MAX_STOP_STRINGS`, each 1..=`MAX_STOP_BYTES` bytes.
    pub stop: Vec<String>,
}

impl SealedContent {
    /// `kind u8, 3 reserved, prompt_len u32, stop_count u32, 4 reserved`, the prompt as in a
    /// `GenerateRequest`, then each stop string as `len u32` and its bytes.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        self.validate()?;
        let (kind, len) = match &self.prompt {
            Prompt::Text(s) => (1u8, s.len()),
            Prompt::Chat(_) => {
                let mut body = Vec::new();
                encode_prompt(&mut Writer::new(&mut body), &self.prompt);
                (2u8, body.len())
            }
            _ => unreachable!("validate admits text and chat prompts only"),
        };
        let mut out = Vec::new();
        let mut w = Writer::new(&mut out);
        w.u8(kind);
        w.zeros(3);
        w.u32(len_u32(len));
        w.u32(len_u32(self.stop.len()));
        w.zeros(4);
        encode_prompt(&mut w, &self.prompt);
        for s in &self.stop {
            w.u32(len_u32(s.len()));
            w.bytes(s.as_bytes());
        }
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let kind = r.u8()?;
        ensure(kind == 1 || kind == 2, "sealed prompt kind", kind.into())?;
        r.reserved(3, "sealed_content.reserved0")?;
        let len = r.u32()? as usize;
        let count = r.u32()? as usize;
        r.reserved(4, "sealed_content.reserved1")?;
        let prompt = decode_prompt(&mut r, kind, len)?;
        check_len("stop strings", count, MAX_STOP_STRINGS)?;
        let mut stop = Vec::with_capacity(count);
        for _ in 0..count {
            let n = r.u32()? as usize;
            check_len("stop string", n, MAX_STOP_BYTES)?;
            let s = core::str::from_utf8(r.bytes(n)?)
                .map_err(|_| WireError::InvalidUtf8 { field: "stop" })?;
            stop.push(String::from(s));
        }
        r.finish()?;
        let content = Self { prompt, stop };
        content.validate()?;
        Ok(content)
    }

    fn validate(&self) -> Result<(), WireError> {
        let empty = match &self.prompt {
            Prompt::Text(s) => s.is_empty(),
            Prompt::Chat(turns) => turns.is_empty(),
            _ => {
                return Err(WireError::FieldOutOfRange {
                    field: "sealed prompt kind",
                    value: 0,
                });
            }
        };
        ensure(!empty, "sealed prompt_len", 0)?;
        check_len("stop strings", self.stop.len(), MAX_STOP_STRINGS)?;
        for s in &self.stop {
            check_len("stop string", s.len(), MAX_STOP_BYTES)?;
            ensure(!s.is_empty(), "stop string length", 0)?;
        }
        Ok(())
    }
}

/// Asks the guest for its signed statement. The isolation level and key-root kind are the
/// host's report; the guest signs them as given (docs/sealed-session.md says what that is
/// worth).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetStatement {
    /// 0 none, 1 private-memory, 2 protected-vm.
    pub isolation: u8,
    /// 0 development, 1 production.
    pub key_root: u8,
}

impl Message<'_> for GetStatement {
    const TYPE: u16 = msg_type::GET_STATEMENT;
    fn encode_body(&self, w: &mut Writer<'_>) {
        w.u8(self.isolation);
        w.u8(self.key_root);
        w.zeros(6);
    }
    fn decode_body(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let isolation = r.u8()?;
        let key_root = r.u8()?;
        r.reserved(6, "get_statement.reserved")?;
        Ok(Self {
            isolation,
            key_root,
        })
    }
    fn validate(&self) -> Result<(), WireError> {
        ensure(self.isolation <= 2, "isolation", self.isolation.into())?;
        ensure(self.key_root <= 1, "key_root", self.key_root.into())
    }
}

/// The guest's signed statement (`sealed_session::SignedStatement`'s encoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementReply {
    pub statement: [u8; SIGNED_STATEMENT_BYTES],
}

impl Message<'_> for StatementReply {
    const TYPE: u16 = msg_type::STATEMENT_REPLY;
    fn encode_body(&self, w: &mut Writer<'_>) {
        w.bytes(&self.statement);
    }
    fn decode_body(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self {
            statement: r.array()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::request::{ChatRole, ChatTurn};
    use alloc::vec;

    #[test]
    fn content_round_trips_and_bad_content_is_refused() {
        let content = SealedContent {
            prompt: Prompt::Chat(vec![ChatTurn {
                role: ChatRole::User,
                content: "hi".into(),
            }]),
            stop: vec!["\n\n".into(), "END".into()],
        };
        let bytes = content.encode().unwrap();
        assert_eq!(SealedContent::decode(&bytes).unwrap(), content);
        assert!(SealedContent::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(SealedContent::decode(&extra).is_err());
        let tokens = SealedContent {
            prompt: Prompt::Tokens(vec![1]),
            stop: vec![],
        };
        assert!(tokens.encode().is_err());
        let empty_stop = SealedContent {
            prompt: Prompt::Text("x".into()),
            stop: vec![String::new()],
        };
        assert!(empty_stop.encode().is_err());
    }

    #[test]
    fn every_public_field_changes_the_binding() {
        let s = SamplingParams::greedy(16);
        let base = binding("m", false, &s);
        assert_ne!(base, binding("n", false, &s));
        assert_ne!(base, binding("m", true, &s));
        let changes = [
            SamplingParams {
                max_tokens: 17,
                ..s
            },
            SamplingParams { seed: 1, ..s },
            SamplingParams {
                temperature: 0.5,
                ..s
            },
            SamplingParams { top_k: 2, ..s },
            SamplingParams { top_p: 0.5, ..s },
            SamplingParams { min_p: 0.1, ..s },
            SamplingParams {
                repeat_penalty: 1.1,
                ..s
            },
            SamplingParams {
                ignore_eog: true,
                ..s
            },
        ];
        for c in changes {
            assert_ne!(base, binding("m", false, &c), "{c:?}");
        }
    }
}
