//! Ollama's `options` object mapped onto the engine's sampling. Each option is honoured,
//! accepted only at the value that changes nothing, or refused with a 400 naming it:
//! nothing is silently ignored.
//!
//! Defaults are Ollama's own (temperature 0.8, top_k 40, top_p 0.9, repeat_penalty 1.1
//! over the last 64 tokens), so that a client written for Ollama gets the sampling it
//! expects; without a seed the daemon draws one, as on the OpenAI routes.

use super::json::{in_range, type_name};
use crate::serve::error::ApiError;
use serde_json::Value;
use virtio_llm::spec::MAX_TEMPERATURE;
use virtio_llm::wire::request::SamplingParams;

/// The most stop strings one request may have (each is scanned for on every token).
pub const MAX_STOPS: usize = 16;
/// The engine's repeat-penalty window, tokens (`inference_guest::sampler`); the only
/// `repeat_last_n` it can honour.
const REPEAT_LAST_N: u64 = 64;
/// The engine's largest repeat penalty (`inference_guest::sampler`).
const MAX_REPEAT_PENALTY: f64 = 10.0;

/// What a request's `options` ask for.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// Its `max_tokens` is 1 here: the route fills it in once the prompt is known.
    pub sampling: SamplingParams,
    /// `num_predict`; `None`: until the context is full (`-1`, `-2` or absent).
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    /// `num_ctx`: the context this request may use (refused later if more than the
    /// model's served context).
    pub num_ctx: Option<u32>,
    /// The seed the client gave; `None`: the daemon draws one (as on the OpenAI routes).
    pub seed: Option<u64>,
}

impl Options {
    fn defaults() -> Self {
        Self {
            sampling: SamplingParams {
                temperature: 0.8,
                top_k: 40,
                top_p: 0.9,
                min_p: 0.0,
                repeat_penalty: 1.1,
                ..SamplingParams::greedy(1)
            },
            max_tokens: None,
            stop: Vec::new(),
            num_ctx: None,
            seed: None,
        }
    }
}

/// Options that change nothing at this value (Ollama's own "off"), accepted as such; any
/// other value is refused. Everything outside this list and the supported ones is refused.
const NEUTRAL: [(&str, f64); 6] = [
    ("typical_p", 1.0),
    ("tfs_z", 1.0),
    ("presence_penalty", 0.0),
    ("frequency_penalty", 0.0),
    ("mirostat", 0.0),
    ("repeat_last_n", REPEAT_LAST_N as f64),
];

/// Options the engine cannot honour, and why (for the 400's message).
const REFUSED: [(&str, &str); 19] = [
    ("num_keep", "the engine never shifts the context"),
    ("mirostat_tau", "mirostat sampling is not supported"),
    ("mirostat_eta", "mirostat sampling is not supported"),
    ("penalize_newline", "newlines are penalised like any token"),
    ("numa", "the guest's placement is the daemon's"),
    ("num_batch", "the guest's batch size is the daemon's"),
    ("num_gpu", "the engine runs on the guest's CPUs"),
    ("main_gpu", "the engine runs on the guest's CPUs"),
    ("low_vram", "the engine runs on the guest's CPUs"),
    ("f16_kv", "the KV cache type is the engine's"),
    ("logits_all", "logits are not returned"),
    ("vocab_only", "the model is always loaded whole"),
    ("use_mmap", "the model is streamed into the guest"),
    ("use_mlock", "the model is streamed into the guest"),
    (
        "embedding_only",
        "embeddings have their own routes (`/api/embed`)",
    ),
    (
        "num_thread",
        "the guest's vCPUs are the daemon's (`guest.vcpus`)",
    ),
    ("num_gqa", "the model's shape is its file's"),
    ("rope_frequency_base", "the model's RoPE is its file's"),
    ("rope_frequency_scale", "the model's RoPE is its file's"),
];

/// Parses `options` (absent or `null`: the defaults); `max_tokens_limit` is the daemon's
/// `limits.max_tokens`.
pub fn parse(v: Option<&Value>, max_tokens_limit: u32) -> Result<Options, ApiError> {
    let mut o = Options::defaults();
    let m = match v {
        None | Some(Value::Null) => return Ok(o),
        Some(Value::Object(m)) => m,
        Some(v) => {
            return Err(invalid(format!(
                "`options` must be an object, not {}",
                type_name(v)
            )));
        }
    };
    for (key, value) in m {
        if value.is_null() {
            continue;
        }
        let bad = |want: &str| invalid(format!("`options.{key}` must be {want}, not {value}"));
        let s = &mut o.sampling;
        match key.as_str() {
            "temperature" => {
                s.temperature = in_range(value, 0.0, f64::from(MAX_TEMPERATURE))
                    .ok_or_else(|| bad(&format!("a number from 0 to {MAX_TEMPERATURE}")))?
            }
            "top_p" => {
                s.top_p = in_range(value, 0.0, 1.0).ok_or_else(|| bad("a number from 0 to 1"))?
            }
            "min_p" => {
                s.min_p = in_range(value, 0.0, 1.0).ok_or_else(|| bad("a number from 0 to 1"))?
            }
            "repeat_penalty" => {
                s.repeat_penalty =
                    repeat_penalty(value).ok_or_else(|| bad("a number in (0, 10]"))?
            }
            // The engine's top-k is at most the vocabulary anyway.
            "top_k" => {
                let k = value
                    .as_u64()
                    .ok_or_else(|| bad("an integer of 0 or more"))?;
                s.top_k = k.min(1 << 24) as u32;
            }
            "seed" => {
                s.seed = value
                    .as_u64()
                    .or_else(|| value.as_i64().map(|i| i as u64))
                    .ok_or_else(|| bad("an integer"))?;
                o.seed = Some(s.seed);
            }
            "num_predict" => o.max_tokens = num_predict(value, max_tokens_limit)?,
            "num_ctx" => {
                let n = value
                    .as_u64()
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| bad("a positive integer"))?;
                o.num_ctx = Some(u32::try_from(n).unwrap_or(u32::MAX));
            }
            "stop" => o.stop = stops(value)?,
            other => refuse(other, value)?,
        }
    }
    Ok(o)
}

fn invalid(message: String) -> ApiError {
    ApiError::invalid("options", message)
}

fn repeat_penalty(v: &Value) -> Option<f32> {
    v.as_f64()
        .filter(|p| *p > 0.0 && *p <= MAX_REPEAT_PENALTY)
        .map(|p| p as f32)
}

/// `num_predict`: a positive count up to `limit`, or -1 (until the end) / -2 (until the
/// context is full), which are the same here.
fn num_predict(v: &Value, limit: u32) -> Result<Option<u32>, ApiError> {
    match v.as_i64() {
        Some(-1 | -2) => Ok(None),
        Some(n) if n >= 1 && n <= i64::from(limit) => Ok(Some(n as u32)),
        _ => Err(invalid(format!(
            "`options.num_predict` must be between 1 and {limit} (`limits.max_tokens`), or -1 \
             for as many as the context allows, not {v}"
        ))),
    }
}

fn stops(v: &Value) -> Result<Vec<String>, ApiError> {
    let bad = || {
        invalid(format!(
            "`options.stop` must be an array of up to {MAX_STOPS} strings"
        ))
    };
    let list = match v {
        // Ollama's Modelfiles write one stop per line; a single string is one stop too.
        Value::String(s) => vec![s.clone()],
        Value::Array(a) if a.len() <= MAX_STOPS => a
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    Ok(list.into_iter().filter(|s| !s.is_empty()).collect())
}

/// An option this engine does not honour: accepted at its neutral value, else refused.
fn refuse(key: &str, v: &Value) -> Result<(), ApiError> {
    if let Some((_, n)) = NEUTRAL.iter().find(|(k, _)| *k == key) {
        if v.as_f64() == Some(*n) {
            return Ok(());
        }
        return Err(invalid(format!(
            "`options.{key}` is not supported by this server (only {n}, which changes \
             nothing, is accepted), not {v}"
        )));
    }
    if let Some((_, why)) = REFUSED.iter().find(|(k, _)| *k == key) {
        return Err(invalid(format!(
            "`options.{key}` is not supported by this server: {why}"
        )));
    }
    Err(invalid(format!(
        "`options.{key}` is not an option this server knows"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts(v: Value) -> Result<Options, ApiError> {
        parse(Some(&v), 1000)
    }

    fn message(v: Value) -> String {
        match opts(v) {
            Err(ApiError::Invalid { message, param }) => {
                assert_eq!(param, Some("options"));
                message
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn supported_options_map_onto_the_sampler() {
        let o = opts(
            json!({"temperature": 0, "top_p": 0.5, "top_k": 7, "min_p": 0.1,
            "seed": -3, "num_predict": 12, "stop": ["a", ""], "repeat_penalty": 1.0,
            "num_ctx": 256, "typical_p": 1.0, "repeat_last_n": 64}),
        )
        .unwrap();
        let s = o.sampling;
        assert_eq!(
            (s.temperature, s.top_p, s.top_k, s.min_p),
            (0.0, 0.5, 7, 0.1)
        );
        assert_eq!((s.seed, s.repeat_penalty), (-3i64 as u64, 1.0));
        assert_eq!((o.max_tokens, o.num_ctx), (Some(12), Some(256)));
        assert_eq!(o.stop, ["a"]);
        assert_eq!(opts(json!({"num_predict": -1})).unwrap().max_tokens, None);
        let d = parse(None, 10).unwrap();
        assert_eq!(
            (
                d.sampling.temperature,
                d.sampling.top_k,
                d.sampling.repeat_penalty
            ),
            (0.8, 40, 1.1)
        );
    }

    #[test]
    fn options_the_engine_cannot_honour_are_named() {
        for (v, name) in [
            (json!({"mirostat": 2}), "options.mirostat"),
            (json!({"repeat_last_n": 32}), "options.repeat_last_n"),
            (json!({"num_gpu": 1}), "options.num_gpu"),
            (json!({"made_up": 1}), "options.made_up"),
            (json!({"num_predict": 0}), "options.num_predict"),
            (json!({"num_predict": 5000}), "options.num_predict"),
            (json!({"temperature": "hot"}), "options.temperature"),
            (json!({"temperature": -1}), "options.temperature"),
            (json!({"repeat_penalty": 50}), "options.repeat_penalty"),
            (json!({"top_k": -1}), "options.top_k"),
            (json!({"num_ctx": 0}), "options.num_ctx"),
            (json!({"stop": [1]}), "options.stop"),
        ] {
            assert!(
                message(v.clone()).contains(name),
                "{v}: {}",
                message(v.clone())
            );
        }
        assert!(message(json!([1])).contains("`options` must be an object"));
    }
}
