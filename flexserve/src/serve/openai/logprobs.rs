//! Logprobs in OpenAI's shapes, from the ids and logprobs the guest sends: chat's
//! `logprobs.content[]` (`token`, `logprob`, `bytes`, `top_logprobs[]`) and the legacy
//! completions object (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`).
//!
//! The host names the tokens with its own tokenizer (a plain model's; logprobs on a model
//! whose file the host cannot read are refused before the request runs). What the numbers
//! mean is the guest's sampler's choice (docs/virtio-llm.md, *Options*): the log-softmax
//! after logit bias and penalties, before temperature and the top-k/top-p/min-p cuts.
//! End-of-generation tokens carry no text and get no entry, as in OpenAI's answers.

use super::response::Endpoint;
use inference_guest::tokenizer::Tokenizer;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use virtio_llm::wire::response::TokenLogprob;

/// The logprobs of an answer as its tokens arrive: taken out in pieces for stream chunks,
/// or whole at the end.
pub struct Logprobs {
    tokenizer: Arc<Tokenizer>,
    endpoint: Endpoint,
    /// Chat: `content[]` entries not taken yet.
    content: Vec<Value>,
    /// Completions: the four parallel lists not taken yet.
    tokens: Vec<Value>,
    token_logprobs: Vec<Value>,
    top: Vec<Value>,
    text_offset: Vec<Value>,
    /// Characters of the answer before the next token (completions' `text_offset`).
    offset: usize,
}

impl Logprobs {
    pub fn new(tokenizer: Arc<Tokenizer>, endpoint: Endpoint) -> Self {
        Self {
            tokenizer,
            endpoint,
            content: Vec::new(),
            tokens: Vec::new(),
            token_logprobs: Vec::new(),
            top: Vec::new(),
            text_offset: Vec::new(),
            offset: 0,
        }
    }

    /// Adds the tokens `ids` with their `logprobs` (one each; a guest that sent fewer
    /// gets entries for those it sent).
    pub fn push(&mut self, ids: &[u32], logprobs: &[TokenLogprob]) {
        for (&id, lp) in ids.iter().zip(logprobs) {
            if self.tokenizer.is_end_of_generation(id) {
                continue;
            }
            let text = self.text(id);
            match self.endpoint {
                Endpoint::Chat => {
                    let top: Vec<Value> = lp
                        .top
                        .iter()
                        .map(|&(t, l)| {
                            json!({"token": self.text(t), "logprob": l, "bytes": self.bytes(t)})
                        })
                        .collect();
                    self.content.push(json!({
                        "token": text,
                        "logprob": lp.logprob,
                        "bytes": self.bytes(id),
                        "top_logprobs": top,
                    }));
                }
                Endpoint::Completion => {
                    let mut top = Map::new();
                    for &(t, l) in &lp.top {
                        top.entry(self.text(t)).or_insert(json!(l));
                    }
                    self.tokens.push(json!(text));
                    self.token_logprobs.push(json!(lp.logprob));
                    self.top.push(Value::Object(top));
                    self.text_offset.push(json!(self.offset));
                    self.offset += text.chars().count();
                }
            }
        }
    }

    /// Whether entries wait to be taken.
    pub fn is_empty(&self) -> bool {
        self.content.is_empty() && self.tokens.is_empty()
    }

    /// The entries so far as a choice's `logprobs` object, and none left.
    pub fn take(&mut self) -> Value {
        match self.endpoint {
            Endpoint::Chat => json!({"content": std::mem::take(&mut self.content)}),
            Endpoint::Completion => json!({
                "tokens": std::mem::take(&mut self.tokens),
                "token_logprobs": std::mem::take(&mut self.token_logprobs),
                "top_logprobs": std::mem::take(&mut self.top),
                "text_offset": std::mem::take(&mut self.text_offset),
            }),
        }
    }

    fn text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.tokenizer.token_bytes(id)).into_owned()
    }

    fn bytes(&self, id: u32) -> Vec<u8> {
        self.tokenizer.token_bytes(id).to_vec()
    }
}

/// `v` (a whole answer or a chunk) with `logprobs` as its choice's.
pub fn with_logprobs(mut v: Value, logprobs: Option<Value>) -> Value {
    if let Some(lp) = logprobs
        && let Some(choice) = v["choices"].get_mut(0)
    {
        choice["logprobs"] = lp;
    }
    v
}
