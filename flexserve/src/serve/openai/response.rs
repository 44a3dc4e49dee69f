//! OpenAI answers: whole JSON bodies and stream chunks, finish reasons, usage.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use virtio_llm::wire::response::StopReason;

/// The response header that carries the seed a request ran with (the client's, or the one
/// the daemon or the proxy drew), so that a run can be reproduced.
pub const SEED_HEADER: &str = "x-flexserve-seed";

/// OpenAI's `finish_reason` for how a generation stopped.
pub fn finish_reason(r: StopReason) -> &'static str {
    match r {
        StopReason::EndOfGeneration | StopReason::Cancelled => "stop",
        StopReason::MaxTokens | StopReason::ContextFull => "length",
        // Never a request's last word: the worker resumes a preempted request.
        StopReason::Preempted => "length",
    }
}

/// Token counts of a finished request.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub prompt: u32,
    pub completion: u32,
    /// Of `prompt`, the tokens whose KV cache the guest kept from an earlier request.
    pub cached: u32,
}

impl Usage {
    pub fn json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
            "prompt_tokens_details": { "cached_tokens": self.cached },
        })
    }
}

/// The two endpoints' shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
}

/// Identity of one answer: its id, creation time and model.
#[derive(Clone, Debug)]
pub struct Answer {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Answer {
    pub fn new(endpoint: Endpoint, n: u64, model: &str) -> Self {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let id = match endpoint {
            Endpoint::Chat => format!("chatcmpl-{n}"),
            Endpoint::Completion => format!("cmpl-{n}"),
        };
        Self {
            endpoint,
            id,
            created,
            model: model.to_string(),
        }
    }

    /// The whole answer of a non-streaming request.
    pub fn full(&self, text: &str, finish: &str, usage: Usage) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": finish,
            }),
            Endpoint::Completion => json!({
                "index": 0, "text": text, "logprobs": null, "finish_reason": finish,
            }),
        };
        json!({
            "id": self.id,
            "object": match self.endpoint { Endpoint::Chat => "chat.completion", Endpoint::Completion => "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage.json(),
        })
    }

    /// One stream chunk: `text` (and, for chat, the role on the first), `finish` on the
    /// last, `usage` on the last.
    pub fn chunk(
        &self,
        text: Option<&str>,
        first: bool,
        finish: Option<&str>,
        usage: Option<Usage>,
    ) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let mut delta = Map::new();
                if first {
                    delta.insert("role".into(), "assistant".into());
                }
                if let Some(t) = text {
                    delta.insert("content".into(), t.into());
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Endpoint::Completion => {
                json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish})
            }
        };
        let mut v = json!({
            "id": self.id,
            "object": match self.endpoint { Endpoint::Chat => "chat.completion.chunk", Endpoint::Completion => "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        if let Some(u) = usage {
            v["usage"] = u.json();
        }
        v
    }
}

/// A JSON body with its content type.
pub fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_have_openai_shapes() {
        let a = Answer::new(Endpoint::Chat, 7, "m");
        let c = a.chunk(Some("Hi"), true, None, None);
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(c["choices"][0]["delta"]["content"], "Hi");
        let last = a.chunk(
            None,
            false,
            Some("stop"),
            Some(Usage {
                prompt: 3,
                completion: 2,
                cached: 1,
            }),
        );
        assert_eq!(last["usage"]["total_tokens"], 5);
        assert_eq!(last["usage"]["prompt_tokens_details"]["cached_tokens"], 1);
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        let f = Answer::new(Endpoint::Completion, 8, "m").full("x", "length", Usage::default());
        assert_eq!(f["object"], "text_completion");
        assert_eq!(f["choices"][0]["text"], "x");
    }
}
