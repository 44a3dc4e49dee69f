//! `POST /v1/embeddings`, in OpenAI's shape: `input` a string, an array of strings, an
//! array of token ids or an array of arrays of token ids (at most [`MAX_INPUTS`]);
//! `model`; `encoding_format` `float` or `base64` (the little-endian f32 bytes);
//! `dimensions` only if it is the model's width (vectors are not shortened); `user`, the
//! lane in the fair queue. Answered `{"object": "list", "data": [{"object": "embedding",
//! "index", "embedding"}], "model", "usage": {"prompt_tokens", "total_tokens"}}`.

use super::{EmbedCall, EmbedInput, MAX_INPUTS};
use crate::serve::Shared;
use crate::serve::api::read_body;
use crate::serve::error::ApiError;
use crate::serve::listen::ConnId;
use crate::serve::openai::json_response;
use crate::serve::scheduler::Principal;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Instant;

/// A parsed `/v1/embeddings` body.
#[derive(Debug)]
pub struct OpenAiEmbed {
    pub call: EmbedCall,
    pub base64: bool,
}

pub async fn embeddings(
    State(s): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnId>,
    Extension(who): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let arrived = Instant::now();
    let parsed = read_body(body).and_then(|b| parse(&b));
    let req = match parsed {
        Ok(r) => r,
        Err(e) => {
            s.metrics.request(crate::serve::metrics::Outcome::Invalid);
            return e.into_response();
        }
    };
    let base64 = req.base64;
    let (model, done) = match super::run(&s, (who, conn), req.call, arrived).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let data: Vec<Value> = done
        .vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({
                "object": "embedding",
                "index": i,
                "embedding": if base64 { Value::String(encode_base64(v)) } else { json!(v) },
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "object": "list",
            "data": data,
            "model": model.id,
            "usage": {
                "prompt_tokens": done.prompt_tokens,
                "total_tokens": done.prompt_tokens,
            },
        }),
    )
}

/// The vector as OpenAI's `base64` encoding: its little-endian f32 bytes.
pub fn encode_base64(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Reads the body, with a 400 naming the field for anything it cannot take.
pub fn parse(body: &[u8]) -> Result<OpenAiEmbed, ApiError> {
    let m = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(ApiError::BadJson("expected a JSON object".into())),
        Err(e) => return Err(ApiError::BadJson(e.to_string())),
    };
    if let Some(k) = m.keys().find(|k| {
        !["input", "model", "encoding_format", "dimensions", "user"].contains(&k.as_str())
    }) {
        return Err(ApiError::Unrecognized(k.clone()));
    }
    let inputs = inputs(m.get("input"))?;
    let base64 = match m.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(_) => {
            return Err(ApiError::invalid(
                "encoding_format",
                "`encoding_format` must be \"float\" or \"base64\"",
            ));
        }
    };
    let dimensions = match m.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().filter(|&d| d > 0).ok_or_else(|| {
            ApiError::invalid("dimensions", "`dimensions` must be a positive integer")
        })?),
    };
    Ok(OpenAiEmbed {
        call: EmbedCall {
            model: optional_string(&m, "model")?,
            inputs,
            user: optional_string(&m, "user")?,
            keep_alive: None,
            dimensions,
        },
        base64,
    })
}

fn optional_string(m: &Map<String, Value>, key: &'static str) -> Result<Option<String>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(key, format!("`{key}` must be a string"))),
    }
}

/// `input` in any of OpenAI's four shapes.
fn inputs(v: Option<&Value>) -> Result<Vec<EmbedInput>, ApiError> {
    let bad = |why: &str| ApiError::invalid("input", format!("`input` {why}"));
    let shape = "must be a string, an array of strings, an array of token ids or an array \
                 of arrays of token ids";
    let items = match v {
        None | Some(Value::Null) => return Err(bad("is required")),
        Some(Value::String(s)) => return Ok(vec![EmbedInput::Text(s.clone())]),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(bad(shape)),
    };
    if items.is_empty() {
        return Err(bad("must not be empty"));
    }
    if items.iter().all(Value::is_number) {
        return Ok(vec![EmbedInput::Tokens(
            token_ids(items).ok_or_else(|| bad(shape))?,
        )]);
    }
    if items.len() > MAX_INPUTS {
        return Err(bad(&format!(
            "has {} inputs; at most {MAX_INPUTS} are embedded in one request",
            items.len()
        )));
    }
    items
        .iter()
        .map(|item| match item {
            Value::String(s) => Some(EmbedInput::Text(s.clone())),
            Value::Array(ids) => token_ids(ids).map(EmbedInput::Tokens),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| bad(shape))
}

/// Token ids (each a u32), or `None` if any is not one.
fn token_ids(items: &[Value]) -> Option<Vec<u32>> {
    items
        .iter()
        .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(body: &str) -> String {
        match parse(body.as_bytes()) {
            Err(ApiError::Invalid { param, .. }) => param.unwrap_or("?").to_string(),
            Err(ApiError::Unrecognized(name)) => name,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_four_input_shapes_are_taken() {
        let inputs = |body: &str| parse(body.as_bytes()).unwrap().call.inputs;
        let text = |s: &str| EmbedInput::Text(s.into());
        assert_eq!(inputs(r#"{"input":"a"}"#), [text("a")]);
        assert_eq!(inputs(r#"{"input":["a","b"]}"#), [text("a"), text("b")]);
        assert_eq!(
            inputs(r#"{"input":[1,2]}"#),
            [EmbedInput::Tokens(vec![1, 2])]
        );
        assert_eq!(
            inputs(r#"{"input":[[1],[2,3]]}"#),
            [EmbedInput::Tokens(vec![1]), EmbedInput::Tokens(vec![2, 3])]
        );
        let r = parse(
            br#"{"input":"a","encoding_format":"base64","dimensions":576,"user":"u","model":"m"}"#,
        )
        .unwrap();
        assert!(r.base64);
        assert_eq!(r.call.dimensions, Some(576));
        assert_eq!(r.call.user.as_deref(), Some("u"));
        assert_eq!(r.call.model.as_deref(), Some("m"));
    }

    #[test]
    fn what_cannot_be_taken_is_a_400_naming_the_field() {
        assert_eq!(param(r#"{}"#), "input");
        assert_eq!(param(r#"{"input":[]}"#), "input");
        assert_eq!(param(r#"{"input":3}"#), "input");
        assert_eq!(param(r#"{"input":[1,-2]}"#), "input");
        assert_eq!(param(r#"{"input":["a",1]}"#), "input");
        assert_eq!(param(r#"{"input":[[1],"a",{}]}"#), "input");
        let many = format!(
            r#"{{"input":[{}]}}"#,
            vec!["\"a\""; MAX_INPUTS + 1].join(",")
        );
        assert_eq!(param(&many), "input");
        assert_eq!(
            param(r#"{"input":"a","encoding_format":"int8"}"#),
            "encoding_format"
        );
        assert_eq!(param(r#"{"input":"a","dimensions":0}"#), "dimensions");
        assert_eq!(param(r#"{"input":"a","model":1}"#), "model");
        assert_eq!(param(r#"{"input":"a","stream":true}"#), "stream");
    }

    #[test]
    fn base64_is_the_little_endian_floats() {
        assert_eq!(encode_base64(&[1.0]), "AACAPw==");
    }
}
