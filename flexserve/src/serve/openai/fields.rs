//! Which request fields the daemon takes, and the sampling options among them (penalties,
//! logit bias, logprobs, stop strings).
//!
//! Nothing is silently ignored: a field the daemon does not support yet is refused with a
//! 400 naming it, and so is a field it does not know, as OpenAI answers "Unrecognized
//! request argument supplied" (a misspelt `max_token` would otherwise run with the
//! default). A few fields that change nothing about the answer are accepted: `metadata`,
//! `store` (nothing is stored), `service_tier`, `user` (the scheduler's lane),
//! `parallel_tool_calls` without `tools`.

use super::request::{field, integer, number, type_name};
use super::response::Endpoint;
use crate::serve::error::ApiError;
use serde_json::{Map, Value};
use virtio_llm::spec::{
    MAX_LOGIT_BIAS, MAX_LOGIT_BIAS_VALUE, MAX_OPENAI_PENALTY, MAX_STOP_BYTES, MAX_STOP_STRINGS,
    MAX_TOKEN_ID, MAX_TOP_LOGPROBS,
};
use virtio_llm::wire::options::{GenerateOptions, Penalties};

/// Fields either endpoint takes.
const COMMON: &[&str] = &[
    "model",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "seed",
    "stream",
    "stream_options",
    "stop",
    "user",
    "ignore_eos",
    "keep_alive",
    "flexserve_sealed",
    "flexserve",
    // Accepted, and change nothing (module doc).
    "metadata",
    "store",
    "service_tier",
    "parallel_tool_calls",
];
const CHAT_ONLY: &[&str] = &[
    "messages",
    "top_logprobs",
    "tools",
    "tool_choice",
    "response_format",
];
const COMPLETION_ONLY: &[&str] = &["prompt", "echo", "suffix", "best_of"];

/// Fields OpenAI defines that the daemon does not support yet: refused by name.
const NOT_YET: &[&str] = &[
    "functions",
    "function_call",
    "audio",
    "prediction",
    "web_search_options",
    "reasoning_effort",
];

/// The window the presence and frequency penalties look at, as llama.cpp's default
/// `penalty_last_n` (the repeat penalty shares it): the last 64 tokens of the context,
/// prompt included, where OpenAI counts the generated text only.
pub const PENALTY_LAST_N: u32 = 64;

/// Refuses every field of `m` the endpoint does not take (see the module doc); `null` is
/// "not given", as everywhere.
pub(super) fn check_known(m: &Map<String, Value>, endpoint: Endpoint) -> Result<(), ApiError> {
    let own = match endpoint {
        Endpoint::Chat => CHAT_ONLY,
        Endpoint::Completion => COMPLETION_ONLY,
    };
    for (key, v) in m {
        if v.is_null() {
            continue;
        }
        if let Some(&name) = NOT_YET.iter().find(|&&k| k == key) {
            return Err(ApiError::invalid(
                name,
                format!("`{name}` is not supported by this server yet"),
            ));
        }
        match key.as_str() {
            "modalities" => modalities(v)?,
            k if COMMON.contains(&k) || own.contains(&k) => {}
            _ => return Err(ApiError::Unrecognized(key.clone())),
        }
    }
    Ok(())
}

/// Text out is all there is: `["text"]` is accepted.
fn modalities(v: &Value) -> Result<(), ApiError> {
    match v {
        Value::Array(a) if a.iter().all(|m| m.as_str() == Some("text")) => Ok(()),
        _ => Err(ApiError::invalid(
            "modalities",
            "`modalities` other than [\"text\"] is not supported by this server",
        )),
    }
}

/// The options a request asks of the sampler: penalties, logit bias, logprobs.
pub(super) fn options(
    m: &Map<String, Value>,
    endpoint: Endpoint,
) -> Result<GenerateOptions, ApiError> {
    let max = f64::from(MAX_OPENAI_PENALTY);
    let presence = number(m, "presence_penalty", -max, max)?.unwrap_or(0.0) as f32;
    let frequency = number(m, "frequency_penalty", -max, max)?.unwrap_or(0.0) as f32;
    let penalties = (presence != 0.0 || frequency != 0.0).then_some(Penalties {
        presence,
        frequency,
        last_n: PENALTY_LAST_N,
    });
    Ok(GenerateOptions {
        penalties,
        logit_bias: logit_bias(m)?,
        logprobs: logprobs(m, endpoint)?,
        // Chat's `response_format` and `tools` are parsed apart (`structured`, `tools`).
        ..GenerateOptions::default()
    })
}

/// `logit_bias`: token id (as a string) to a bias in -100..=100, at most 300 entries;
/// sorted by id, as the wire wants them.
fn logit_bias(m: &Map<String, Value>) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(v) = field(m, "logit_bias") else {
        return Ok(Vec::new());
    };
    let Value::Object(o) = v else {
        return Err(ApiError::invalid(
            "logit_bias",
            format!(
                "`logit_bias` must be an object of token ids to numbers, not {}",
                type_name(v)
            ),
        ));
    };
    if o.len() > MAX_LOGIT_BIAS {
        return Err(ApiError::invalid(
            "logit_bias",
            format!(
                "`logit_bias` names {} tokens; at most {MAX_LOGIT_BIAS}",
                o.len()
            ),
        ));
    }
    let lim = f64::from(MAX_LOGIT_BIAS_VALUE);
    let mut out = Vec::with_capacity(o.len());
    for (k, b) in o {
        let id = k.parse::<u32>().ok().filter(|&id| id < MAX_TOKEN_ID);
        let bias = b.as_f64().filter(|b| (-lim..=lim).contains(b));
        match (id, bias) {
            (Some(id), Some(bias)) => out.push((id, bias as f32)),
            (None, _) => {
                return Err(ApiError::invalid(
                    "logit_bias",
                    format!("`logit_bias` key {k:?} is not a token id"),
                ));
            }
            (_, None) => {
                return Err(ApiError::invalid(
                    "logit_bias",
                    format!("`logit_bias[{k:?}]` must be a number between -{lim} and {lim}"),
                ));
            }
        }
    }
    out.sort_unstable_by_key(|&(id, _)| id);
    // "01" and "1" name one token twice.
    if out.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(ApiError::invalid(
            "logit_bias",
            "`logit_bias` names a token twice",
        ));
    }
    Ok(out)
}

/// Chat: `logprobs` (a boolean) and `top_logprobs` (0..=20, only with `logprobs`).
/// Completions: `logprobs` is the number of alternatives (0..=20).
fn logprobs(m: &Map<String, Value>, endpoint: Endpoint) -> Result<Option<u8>, ApiError> {
    let top_max = MAX_TOP_LOGPROBS as u64;
    if endpoint == Endpoint::Completion {
        return Ok(integer(m, "logprobs", 0, top_max)?.map(|n| n as u8));
    }
    let on = match field(m, "logprobs") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(ApiError::invalid(
                "logprobs",
                format!("`logprobs` must be a boolean, not {}", type_name(v)),
            ));
        }
    };
    let top = integer(m, "top_logprobs", 0, top_max)?;
    match (on, top) {
        (true, top) => Ok(Some(top.unwrap_or(0) as u8)),
        (false, Some(_)) => Err(ApiError::invalid(
            "top_logprobs",
            "`top_logprobs` needs `logprobs: true`",
        )),
        (false, None) => Ok(None),
    }
}

/// `stop`: a string or up to `MAX_STOP_STRINGS` strings of at most `MAX_STOP_BYTES` bytes
/// (empty ones dropped).
pub(super) fn stop(m: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let shape = || {
        ApiError::invalid(
            "stop",
            format!("`stop` must be a string or an array of up to {MAX_STOP_STRINGS} strings"),
        )
    };
    let stop = match field(m, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= MAX_STOP_STRINGS => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(shape)?,
        Some(_) => return Err(shape()),
    };
    if let Some(long) = stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "a stop string has {} bytes; at most {MAX_STOP_BYTES}",
                long.len()
            ),
        ));
    }
    Ok(stop.into_iter().filter(|s| !s.is_empty()).collect())
}

#[cfg(test)]
#[path = "fields_tests.rs"]
mod tests;
