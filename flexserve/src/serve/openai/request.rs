//! OpenAI request bodies: `/v1/chat/completions` and `/v1/completions` parsed with a
//! precise error per field.

use crate::serve::error::ApiError;
use crate::serve::keep_alive::{self, KeepAlive};
use inference_guest::tokenizer::ChatMessage;
use serde_json::{Map, Value};
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
    /// `None`: as many as the context allows (up to `limits.max_tokens`).
    pub max_tokens: Option<u32>,
    /// Sampling; its `max_tokens` is filled in once the prompt length is known.
    pub sampling: SamplingParams,
    pub stream: bool,
    pub include_usage: bool,
    pub stop: Vec<String>,
    pub user: Option<String>,
    /// How long its model stays resident after it (`None`: `models.keep_alive`).
    pub keep_alive: Option<KeepAlive>,
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

fn number(
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

fn integer(
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

/// The fields chat and completions share.
pub(super) fn common(
    m: &Map<String, Value>,
    input: Input,
    max_tokens_limit: u32,
) -> Result<GenRequest, ApiError> {
    let model = string(m, "model")?;
    let mut max_tokens = integer(m, "max_tokens", 1, max_tokens_limit.into())?;
    if let Some(n) = integer(m, "max_completion_tokens", 1, max_tokens_limit.into())? {
        max_tokens = Some(n);
    }
    if let Some(n) = integer(m, "n", 1, u64::MAX)?
        && n != 1
    {
        return Err(ApiError::Unsupported("`n` other than 1"));
    }
    for key in ["frequency_penalty", "presence_penalty"] {
        if let Some(v) = field(m, key)
            && v.as_f64() != Some(0.0)
        {
            return Err(ApiError::Unsupported(if key == "frequency_penalty" {
                "`frequency_penalty` (use `repeat_penalty`)"
            } else {
                "`presence_penalty` (use `repeat_penalty`)"
            }));
        }
    }
    if matches!(
        field(m, "logprobs"),
        Some(Value::Bool(true)) | Some(Value::Number(_))
    ) {
        return Err(ApiError::Unsupported("`logprobs`"));
    }
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
    let stop = match field(m, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= 4 => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ApiError::invalid(
                    "stop",
                    "`stop` must be a string or an array of up to 4 strings",
                )
            })?,
        Some(_) => {
            return Err(ApiError::invalid(
                "stop",
                "`stop` must be a string or an array of up to 4 strings",
            ));
        }
    };
    let stop: Vec<String> = stop.into_iter().filter(|s| !s.is_empty()).collect();
    let sampling = SamplingParams {
        temperature: number(m, "temperature", 0.0, 2.0)?.unwrap_or(1.0) as f32,
        top_p: number(m, "top_p", 0.0, 1.0)?.unwrap_or(1.0) as f32,
        top_k: integer(m, "top_k", 0, 1 << 24)?.unwrap_or(0) as u32,
        min_p: number(m, "min_p", 0.0, 1.0)?.unwrap_or(0.0) as f32,
        repeat_penalty: number(m, "repeat_penalty", 0.01, 100.0)?.unwrap_or(1.0) as f32,
        seed: match field(m, "seed") {
            None => 0,
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_i64().map(|i| i as u64))
                .ok_or_else(|| ApiError::invalid("seed", "`seed` must be an integer"))?,
        },
        max_tokens: 1,
        ignore_eog: boolean(m, "ignore_eos")?,
    };
    Ok(GenRequest {
        model,
        input,
        max_tokens: max_tokens.map(|n| n as u32),
        sampling,
        stream,
        include_usage,
        stop,
        user: string(m, "user")?,
        keep_alive: field(m, "keep_alive")
            .map(keep_alive::from_json)
            .transpose()
            .map_err(|e| ApiError::invalid("keep_alive", format!("`keep_alive`: {e}")))?,
    })
}

/// Parses a `/v1/chat/completions` body.
pub fn parse_chat(body: &[u8], max_tokens_limit: u32) -> Result<GenRequest, ApiError> {
    let m = obj(body)?;
    if let Some(sealed) = super::sealed::sealed_input(&m)? {
        return super::sealed::sealed_request(&m, sealed, max_tokens_limit);
    }
    let messages = match field(&m, "messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                "messages",
                "`messages` must not be empty",
            ));
        }
        Some(v) => {
            return Err(ApiError::invalid(
                "messages",
                format!("`messages` must be an array, not {}", type_name(v)),
            ));
        }
        None => return Err(ApiError::invalid("messages", "`messages` is required")),
    };
    let mut chat = Vec::with_capacity(messages.len());
    for (i, msg) in messages.iter().enumerate() {
        let bad = |what: &str| ApiError::invalid("messages", format!("`messages[{i}]`: {what}"));
        let Value::Object(o) = msg else {
            return Err(bad("must be an object with `role` and `content`"));
        };
        let role = match o.get("role") {
            Some(Value::String(r))
                if matches!(r.as_str(), "system" | "developer" | "user" | "assistant") =>
            {
                if r == "developer" {
                    "system".to_string()
                } else {
                    r.clone()
                }
            }
            Some(Value::String(r)) => {
                return Err(bad(&format!(
                    "role {r:?} is not system, developer, user or assistant"
                )));
            }
            _ => return Err(bad("`role` must be a string")),
        };
        let content = match o.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (
                        p.get("type").and_then(Value::as_str),
                        p.get("text").and_then(Value::as_str),
                    ) {
                        (Some("text"), Some(t)) => s.push_str(t),
                        _ => return Err(bad("only text content parts are supported")),
                    }
                }
                s
            }
            Some(Value::Null) | None if role == "assistant" => String::new(),
            _ => return Err(bad("`content` must be a string or an array of text parts")),
        };
        chat.push(ChatMessage::new(role, content));
    }
    common(&m, Input::Chat(chat), max_tokens_limit)
}

/// Parses a `/v1/completions` body.
pub fn parse_completion(body: &[u8], max_tokens_limit: u32) -> Result<GenRequest, ApiError> {
    let m = obj(body)?;
    if let Some(sealed) = super::sealed::sealed_input(&m)? {
        return super::sealed::sealed_request(&m, sealed, max_tokens_limit);
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
    common(&m, input, max_tokens_limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<GenRequest, ApiError> {
        parse_chat(body.as_bytes(), 4096)
    }

    #[test]
    fn a_chat_request_parses() {
        let r = chat(
            r#"{"model":"m","messages":[{"role":"system","content":"Be brief."},
                {"role":"user","content":[{"type":"text","text":"Hi"}]}],
                "temperature":0,"max_tokens":16,"stream":true,"stop":"\n","seed":3}"#,
        )
        .unwrap();
        assert_eq!(r.model.as_deref(), Some("m"));
        assert_eq!(
            r.input,
            Input::Chat(vec![
                ChatMessage::new("system", "Be brief."),
                ChatMessage::new("user", "Hi")
            ])
        );
        assert_eq!(
            (r.max_tokens, r.stream, r.sampling.seed),
            (Some(16), true, 3)
        );
        assert_eq!(r.sampling.temperature, 0.0);
        assert_eq!(r.stop, ["\n"]);
        assert_eq!(r.keep_alive, None);
        let keep = |k: &str| {
            let body =
                format!(r#"{{"messages":[{{"role":"user","content":"x"}}],"keep_alive":{k}}}"#);
            chat(&body).unwrap().keep_alive
        };
        let secs = |s| Some(KeepAlive::For(std::time::Duration::from_secs(s)));
        assert_eq!(keep(r#""10m""#), secs(600));
        assert_eq!(keep("0"), secs(0));
        assert_eq!(keep("-1"), Some(KeepAlive::Forever));
        assert_eq!(keep("null"), None);
    }

    #[test]
    fn bad_fields_are_named() {
        let param = |body: &str| match chat(body) {
            Err(ApiError::Invalid { param, .. }) => param,
            other => panic!("{body}: {other:?}"),
        };
        let m = r#""messages":[{"role":"user","content":"x"}]"#;
        assert_eq!(
            param(&format!(r#"{{{m},"temperature":"hot"}}"#)),
            Some("temperature")
        );
        assert_eq!(
            param(&format!(r#"{{{m},"temperature":7}}"#)),
            Some("temperature")
        );
        assert_eq!(
            param(&format!(r#"{{{m},"max_tokens":0}}"#)),
            Some("max_tokens")
        );
        assert_eq!(
            param(&format!(r#"{{{m},"max_tokens":1e12}}"#)),
            Some("max_tokens")
        );
        assert_eq!(
            param(&format!(r#"{{{m},"max_tokens":-5}}"#)),
            Some("max_tokens")
        );
        assert_eq!(param(&format!(r#"{{{m},"top_p":2}}"#)), Some("top_p"));
        assert_eq!(param(&format!(r#"{{{m},"stream":"yes"}}"#)), Some("stream"));
        for bad in [r#""soon""#, "true", "[1]"] {
            assert_eq!(
                param(&format!(r#"{{{m},"keep_alive":{bad}}}"#)),
                Some("keep_alive")
            );
        }
        assert_eq!(param(r#"{"messages":[]}"#), Some("messages"));
        assert_eq!(param(r#"{"messages":"hi"}"#), Some("messages"));
        assert_eq!(
            param(r#"{"messages":[{"role":"robot","content":"x"}]}"#),
            Some("messages")
        );
        assert_eq!(param(r#"{"model":"m"}"#), Some("messages"));
        assert!(matches!(chat("{nope"), Err(ApiError::BadJson(_))));
        assert!(matches!(chat("[1]"), Err(ApiError::BadJson(_))));
        assert!(matches!(
            chat(&format!(r#"{{{m},"n":3}}"#)),
            Err(ApiError::Unsupported(_))
        ));
    }

    #[test]
    fn completion_prompts_parse() {
        let p = |b: &str| parse_completion(b.as_bytes(), 100).map(|r| r.input);
        let keep = |b: &str| parse_completion(b.as_bytes(), 100).map(|r| r.keep_alive);
        assert_eq!(
            keep(r#"{"prompt":"Once","keep_alive":"30s"}"#).unwrap(),
            Some(KeepAlive::For(std::time::Duration::from_secs(30)))
        );
        assert!(matches!(
            keep(r#"{"prompt":"Once","keep_alive":"later"}"#),
            Err(ApiError::Invalid {
                param: Some("keep_alive"),
                ..
            })
        ));
        assert_eq!(
            p(r#"{"prompt":"Once"}"#).unwrap(),
            Input::Text("Once".into())
        );
        assert_eq!(
            p(r#"{"prompt":["Once"]}"#).unwrap(),
            Input::Text("Once".into())
        );
        assert_eq!(
            p(r#"{"prompt":[1,2,3]}"#).unwrap(),
            Input::Tokens(vec![1, 2, 3])
        );
        assert!(p(r#"{"prompt":""}"#).is_err());
        assert!(p(r#"{"prompt":[-1]}"#).is_err());
        assert!(p(r#"{"prompt":5}"#).is_err());
        assert!(p(r#"{}"#).is_err());
    }

    #[test]
    fn no_body_makes_the_parsers_panic() {
        // Type confusion on every field, then random mutations of a valid body.
        let keys = [
            "model",
            "messages",
            "prompt",
            "max_tokens",
            "max_completion_tokens",
            "n",
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "repeat_penalty",
            "seed",
            "stream",
            "stream_options",
            "stop",
            "user",
            "logprobs",
            "echo",
            "suffix",
            "ignore_eos",
            "frequency_penalty",
            "presence_penalty",
        ];
        let values = [
            "null",
            "true",
            "-1",
            "0",
            "1e400",
            "-1e400",
            "18446744073709551616",
            "3.5",
            "\"\"",
            "\"x\"",
            "[]",
            "[1]",
            "[\"a\",\"b\",\"c\",\"d\",\"e\"]",
            "{}",
            "[{}]",
            "[{\"role\":\"user\"}]",
            "[{\"role\":\"user\",\"content\":[{\"type\":\"image\"}]}]",
        ];
        for k in keys {
            for v in values {
                let body = format!(
                    r#"{{"messages":[{{"role":"user","content":"x"}}],"prompt":"x","{k}":{v}}}"#
                );
                let _ = parse_chat(body.as_bytes(), 4096);
                let _ = parse_completion(body.as_bytes(), 4096);
            }
        }
        let valid = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"prompt":[1,2],"temperature":0.5,"stop":["a"],"stream":true}"#;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut b = valid.to_vec();
            for _ in 0..(x % 4 + 1) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x as usize) % b.len();
                b[at] = (x >> 32) as u8;
            }
            let _ = parse_chat(&b, 4096);
            let _ = parse_completion(&b, 4096);
        }
    }
}
