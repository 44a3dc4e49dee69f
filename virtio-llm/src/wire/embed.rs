//! Embeddings (`feature::EMBED`): the device asks for the pooled embedding of a prompt on a
//! loaded model (`EmbedRequest`, request queue) and the driver answers with the vector
//! (`Embedding`, response queue) or an `Error`.
//!
//! The request names a model, not a session: an embedding is computed on a KV cache of its
//! own that the driver frees once the vector is out, so it can never leave state that a
//! later generation on any session would reuse.

use alloc::vec::Vec;

use crate::error::WireError;
use crate::spec::{MAX_CONTEXT_LEN, MAX_EMBEDDING_DIM};
use crate::wire::codec::{Reader, Writer, check_len, len_u32};
use crate::wire::request::{Prompt, decode_prompt, encode_prompt, prompt_kind_len};
use crate::wire::{Message, ensure};

/// Message types of the embedding pair.
pub mod msg_type {
    /// [`super::EmbedRequest`], on the request queue.
    pub const EMBED: u16 = 0x0305;
    /// [`super::Embedding`], on the response queue.
    pub const EMBEDDING: u16 = 0x0405;
}

/// The pooled embedding of `prompt` on model `model_id`: the driver evaluates the prompt
/// from position 0 on a KV cache of its own, mean-pools the final hidden state (after the
/// last RMSNorm, before the output projection) over the prompt's tokens and L2-normalises
/// it. Answered by exactly one `Embedding` or `Error` with the same `request_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedRequest {
    /// Id the device chooses; unique among requests in flight.
    pub request_id: u64,
    /// The loaded model to run.
    pub model_id: u32,
    /// Token ids, or (with `feature::TEXT_PROMPT`) text the driver tokenizes. Chat and
    /// sealed prompts are not embedded.
    pub prompt: Prompt,
}

impl Message<'_> for EmbedRequest {
    const TYPE: u16 = msg_type::EMBED;
    fn encode_body(&self, w: &mut Writer<'_>) {
        let (kind, len) = prompt_kind_len(&self.prompt);
        w.u64(self.request_id);
        w.u32(self.model_id);
        w.u8(kind);
        w.zeros(3);
        w.u32(len_u32(len));
        w.zeros(4);
        encode_prompt(w, &self.prompt);
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let request_id = r.u64()?;
        let model_id = r.u32()?;
        let kind = r.u8()?;
        r.reserved(3, "embed.reserved0")?;
        let len = r.u32()? as usize;
        r.reserved(4, "embed.reserved1")?;
        // Only the plain kinds: refused before a chat or sealed prompt is read.
        ensure(kind <= 1, "embed prompt_kind", kind.into())?;
        let prompt = decode_prompt(r, kind, len)?;
        Ok(Self {
            request_id,
            model_id,
            prompt,
        })
    }

    fn validate(&self) -> Result<(), WireError> {
        match &self.prompt {
            Prompt::Tokens(_) | Prompt::Text(_) => {
                crate::wire::request::validate_prompt(&self.prompt)
            }
            _ => ensure(
                false,
                "embed prompt_kind",
                prompt_kind_len(&self.prompt).0.into(),
            ),
        }
    }
}

/// The answer to an `EmbedRequest`: a unit-length vector of the model's embedding width.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// The request answered.
    pub request_id: u64,
    /// The prompt's tokens (after the driver tokenized it), at most `MAX_CONTEXT_LEN`.
    pub prompt_tokens: u32,
    /// Time the driver spent evaluating the prompt, ns.
    pub prompt_ns: u64,
    /// 1..=`MAX_EMBEDDING_DIM` finite values.
    pub values: Vec<f32>,
}

impl Message<'_> for Embedding {
    const TYPE: u16 = msg_type::EMBEDDING;
    fn encode_body(&self, w: &mut Writer<'_>) {
        w.u64(self.request_id);
        w.u32(len_u32(self.values.len()));
        w.u32(self.prompt_tokens);
        w.u64(self.prompt_ns);
        for &v in &self.values {
            w.f32(v);
        }
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let request_id = r.u64()?;
        let dim = r.u32()? as usize;
        let prompt_tokens = r.u32()?;
        let prompt_ns = r.u64()?;
        check_len("embedding dim", dim, MAX_EMBEDDING_DIM)?;
        // Checked against the bytes left too before allocating for them.
        check_len("embedding dim", dim, r.remaining() / 4)?;
        let mut values = Vec::with_capacity(dim);
        for _ in 0..dim {
            values.push(r.f32()?);
        }
        Ok(Self {
            request_id,
            prompt_tokens,
            prompt_ns,
            values,
        })
    }

    fn validate(&self) -> Result<(), WireError> {
        let n = self.values.len();
        check_len("embedding dim", n, MAX_EMBEDDING_DIM)?;
        ensure(n > 0, "embedding dim", 0)?;
        let p = self.prompt_tokens;
        ensure(
            p > 0 && p <= MAX_CONTEXT_LEN,
            "embedding prompt_tokens",
            p.into(),
        )?;
        match self.values.iter().find(|v| !v.is_finite()) {
            Some(v) => ensure(false, "embedding value", v.to_bits().into()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
#[path = "embed_tests.rs"]
pub(crate) mod tests;
