//! OpenAI request bodies: `/v1/chat/completions` and `/v1/completions` parsed with a
//! precise error per field.

use super::fields;
use super::response::Endpoint;
use crate::serve::error::ApiError;
use crate::serve::keep_alive::{self, KeepAlive};
use inference_guest::tokenizer::ChatMessage;
use serde_json::{Map, Value};
use virtio_llm::wire::options::GenerateOptions;
use virtio_llm::wire::request::SamplingParams;

/// What to generate from.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Chat messages, rendered with the model's chat template.
    Chat(Vec<ChatMessage>),
    /// A raw text prompt (completions).
    Text(String),
    /// A prompt already in token ids (completions).
    Tokens(Vec<u32>),
    /// A request sealed to the guest's session key (`flexserve_sealed`,
    /// docs/sealed-session.md): `enc || ciphertext || tag`, opened only in the guest.
    Sealed(Vec<u8>),
}

/// A parsed generation request.
#[derive(Debug, Clone)]
pub struct GenRequest {
    /// `None`: the default model.
    pub model: Option<String>,
    pub input: Input,
    /// `None`: as many as the context allows (up to `limits.max_tokens`). More than that is
    /// clamped (the answer then ends with `finish_reason: "length"`), except in a sealed
    /// request, which binds it.
    pub max_tokens: Option<u32>,
    /// Sampling; its `max_tokens` is filled in once the prompt length is known, its `seed`
    /// (0 here when none was given) once the daemon drew one.
    pub sampling: SamplingParams,
    /// The seed the client gave; `None`: the daemon draws one and returns it.
    pub seed: Option<u64>,
    /// Penalties, logit bias, logprobs, the response format.
    pub options: GenerateOptions,
    /// Tools the model may call (chat only); the guest's constraint for them is made once
    /// the model, and so its call format, is known.
    pub tools: Option<super::tools::Tools>,
    /// How many choices to answer with (`n`, 1..=[`super::choices::MAX_CHOICES`]); the
    /// daemon runs them one after another (`serve::choices`), each as a request of its own.
    pub n: u32,
    pub stream: bool,
    pub include_usage: bool,
    pub stop: Vec<String>,
    pub user: Option<String>,
    /// How long its model stays resident after it (`None`: `models.keep_alive`).
    pub keep_alive: Option<KeepAlive>,
    /// The model the client asks next (`flexserve.next_model`), prefetched into the
    /// guest's free budget (`None`: as `[[workflows]]` says, if any).
    pub next_model: Option<String>,
}

pub(super) fn obj(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::BadJson("expected a JSON object".into())),
        Err(e) => Err(ApiError::BadJson(e.to_string())),
    }
}

pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Absent and `null` are both "not given", as OpenAI treats them.
pub(super) fn field<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.get(key).filter(|v| !v.is_null())
}

pub(super) fn number(
    m: &Map<String, Value>,
    key: &'static str,
    lo: f64,
    hi: f64,
) -> Result<Option<f64>, ApiError> {
    let Some(v) = field(m, key) else {
        return Ok(None);
    };
    let n = v.as_f64().ok_or_else(|| {
        ApiError::invalid(
            key,
            format!("`{key}` must be a number, not {}", type_name(v)),
        )
    })?;
    in_range(key, n, lo, hi).map(Some)
}

/// `n` if it lies in `lo..=hi`, else an error naming `key`.
fn in_range<T: PartialOrd + std::fmt::Display>(
    key: &'static str,
    n: T,
    lo: T,
    hi: T,
) -> Result<T, ApiError> {
    if lo <= n && n <= hi {
        Ok(n)
    } else {
        Err(ApiError::invalid(
            key,
            format!("`{key}` must be between {lo} and {hi}, not {n}"),
        ))
    }
}

pub(super) fn integer(
    m: &Map<String, Value>,
    key: &'static str,
    lo: u64,
    hi: u64,
) -> Result<Option<u64>, ApiError> {
    let Some(v) = field(m, key) else {
        return Ok(None);
    };
    let n = v.as_u64().ok_or_else(|| {
        if v.is_number() {
            ApiError::invalid(
                key,
                format!("`{key}` must be an integer between {lo} and {hi}, not {v}"),
            )
        } else {
            ApiError::invalid(
                key,
                format!("`{key}` must be an integer, not {}", type_name(v)),
            )
        }
    })?;
    in_range(key, n, lo, hi).map(Some)
}

fn boolean(m: &Map<String, Value>, key: &'static str) -> Result<bool, ApiError> {
    match field(m, key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(ApiError::invalid(
            key,
            format!("`{key}` must be a boolean, not {}", type_name(v)),
        )),
    }
}

fn string(m: &Map<String, Value>, key: &'static str) -> Result<Option<String>, ApiError> {
    match field(m, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(ApiError::invalid(
            key,
            format!("`{key}` must be a string, not {}", type_name(v)),
        )),
    }
}

/// The fields chat and completions share. `max_tokens` above `max_tokens_limit` is
/// clamped to it (and later to the prompt's room), except in a sealed request, which binds
/// it: there it is refused.
pub(super) fn common(
    m: &Map<String, Value>,
    input: Input,
    endpoint: Endpoint,
    max_tokens_limit: u32,
) -> Result<GenRequest, ApiError> {
    fields::check_known(m, endpoint)?;
    let model = string(m, "model")?;
    let top = match input {
        Input::Sealed(_) => max_tokens_limit.into(),
        _ => u64::MAX,
    };
    let mut max_tokens = integer(m, "max_tokens", 1, top)?;
    if let Some(n) = integer(m, "max_completion_tokens", 1, top)? {
        max_tokens = Some(n);
    }
    let max_tokens = max_tokens.map(|n| n.min(max_tokens_limit.into()) as u32);
    let n = integer(m, "n", 1, super::choices::MAX_CHOICES.into())?.unwrap_or(1) as u32;
    let seed = match field(m, "seed") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .or_else(|| v.as_i64().map(|i| i as u64))
                .ok_or_else(|| ApiError::invalid("seed", "`seed` must be an integer"))?,
        ),
    };
    let stream = boolean(m, "stream")?;
    let include_usage = match field(m, "stream_options") {
        None => false,
        Some(Value::Object(o)) => boolean(o, "include_usage")?,
        Some(v) => {
            return Err(ApiError::invalid(
                "stream_options",
                format!("`stream_options` must be an object, not {}", type_name(v)),
            ));
        }
    };
    let stop = fields::stop(m)?;
    let sampling = SamplingParams {
        temperature: number(m, "temperature", 0.0, 2.0)?.unwrap_or(1.0) as f32,
        top_p: number(m, "top_p", 0.0, 1.0)?.unwrap_or(1.0) as f32,
        top_k: integer(m, "top_k", 0, 1 << 24)?.unwrap_or(0) as u32,
        min_p: number(m, "min_p", 0.0, 1.0)?.unwrap_or(0.0) as f32,
        repeat_penalty: number(m, "repeat_penalty", 0.01, 10.0)?.unwrap_or(1.0) as f32,
        seed: seed.unwrap_or(0),
        max_tokens: 1,
        ignore_eog: boolean(m, "ignore_eos")?,
    };
    Ok(GenRequest {
        model,
        input,
        max_tokens,
        sampling,
        seed,
        options: fields::options(m, endpoint)?,
        tools: None,
        n,
        stream,
        include_usage,
        stop,
        user: string(m, "user")?,
        keep_alive: field(m, "keep_alive")
            .map(keep_alive::from_json)
            .transpose()
            .map_err(|e| ApiError::invalid("keep_alive", format!("`keep_alive`: {e}")))?,
        next_model: super::next_model::next_model(m)?,
    })
}

/// Parses a `/v1/chat/completions` body.
pub fn parse_chat(body: &[u8], max_tokens_limit: u32) -> Result<GenRequest, ApiError> {
    let m = obj(body)?;
    if let Some(sealed) = super::sealed::sealed_input(&m)? {
        return super::sealed::sealed_request(&m, sealed, Endpoint::Chat, max_tokens_limit);
    }
    let chat = super::messages::parse_messages(field(&m, "messages"))?;
    let mut req = common(&m, Input::Chat(chat), Endpoint::Chat, max_tokens_limit)?;
    req.tools = super::tools::parse_tools(&m)?;
    // Beside `tools`, the guest's grammar is a call or this format (docs/structured-output.md).
    req.options.response_format = super::structured::response_format(&m)?;
    Ok(req)
}

/// Parses a `/v1/completions` body.
pub fn parse_completion(body: &[u8], max_tokens_limit: u32) -> Result<GenRequest, ApiError> {
    let m = obj(body)?;
    if let Some(sealed) = super::sealed::sealed_input(&m)? {
        return super::sealed::sealed_request(&m, sealed, Endpoint::Completion, max_tokens_limit);
    }
    let bad_prompt = || {
        ApiError::invalid(
            "prompt",
            "`prompt` must be a non-empty string, an array of one string, or an array of token ids",
        )
    };
    let input = match field(&m, "prompt") {
        Some(Value::String(s)) if !s.is_empty() => Input::Text(s.clone()),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => match &a[0] {
            Value::String(s) if !s.is_empty() => Input::Text(s.clone()),
            _ => return Err(bad_prompt()),
        },
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_number) => Input::Tokens(
            a.iter()
                .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(bad_prompt)?,
        ),
        Some(Value::Array(a)) if a.len() > 1 && a.iter().all(Value::is_string) => {
            return Err(ApiError::Unsupported("more than one prompt per request"));
        }
        None => return Err(ApiError::invalid("prompt", "`prompt` is required")),
        Some(_) => return Err(bad_prompt()),
    };
    if boolean(&m, "echo")? {
        return Err(ApiError::Unsupported("`echo`"));
    }
    if field(&m, "suffix").is_some() {
        return Err(ApiError::Unsupported("`suffix`"));
    }
    if let Some(n) = integer(&m, "best_of", 1, u64::MAX)?
        && n != 1
    {
        return Err(ApiError::invalid(
            "best_of",
            "`best_of` other than 1 is not supported by this server",
        ));
    }
    common(&m, input, Endpoint::Completion, max_tokens_limit)
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
