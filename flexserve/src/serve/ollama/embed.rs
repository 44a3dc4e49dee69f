//! `/api/embed` (`input` a string or an array of strings → `{"model", "embeddings",
//! "total_duration", "load_duration", "prompt_eval_count"}`) and the older
//! `/api/embeddings` (`prompt` → `{"embedding"}`), on the same path as OpenAI's
//! `/v1/embeddings` (`crate::serve::embeddings`). Vectors are unit length on both (Ollama's
//! older route answers unnormalised ones); an input longer than the context is refused
//! rather than truncated, and `options` are refused: none changes an embedding here.

use super::json::{boolean, given, obj, string, type_name};
use super::request::catalogue_name;
use super::response::{self, json_response};
use crate::serve::Shared;
use crate::serve::api::read_body;
use crate::serve::embeddings::{self, EmbedCall, EmbedInput, MAX_INPUTS};
use crate::serve::error::ApiError;
use crate::serve::keep_alive;
use crate::serve::listen::ConnId;
use crate::serve::scheduler::Principal;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Extension, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Instant;

/// Which of the two routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// `/api/embed`: a batch.
    Embed,
    /// `/api/embeddings`: one `prompt`.
    Legacy,
}

pub async fn embed(
    State(s): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnId>,
    Extension(who): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    run(s, (who, conn), Route::Embed, body).await
}

pub async fn embeddings(
    State(s): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnId>,
    Extension(who): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    run(s, (who, conn), Route::Legacy, body).await
}

async fn run(
    s: Arc<Shared>,
    conn: (Principal, ConnId),
    route: Route,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let arrived = Instant::now();
    let (call, named) = match read_body(body).and_then(|b| parse(&b, route)) {
        Ok(r) => r,
        Err(e) => {
            s.metrics.request(crate::serve::metrics::Outcome::Invalid);
            return response::error(e);
        }
    };
    let (model, done) = match embeddings::run(&s, conn, call, arrived).await {
        Ok(r) => r,
        Err(e) => return response::error(e),
    };
    let v = match route {
        Route::Legacy => json!({"embedding": done.vectors.first()}),
        Route::Embed => json!({
            "model": if named.is_empty() { model.id.clone() } else { named },
            "embeddings": done.vectors,
            "total_duration": arrived.elapsed().as_nanos() as u64,
            "load_duration": done.load.as_nanos() as u64,
            "prompt_eval_count": done.prompt_tokens,
        }),
    };
    json_response(StatusCode::OK, &v)
}

/// The call, and the model as the client named it (echoed back).
fn parse(body: &[u8], route: Route) -> Result<(EmbedCall, String), ApiError> {
    let m = obj(body)?;
    let inputs = match route {
        Route::Embed => inputs(&m)?,
        Route::Legacy => match string(&m, "prompt")? {
            Some(p) if !p.is_empty() => vec![EmbedInput::Text(p)],
            _ => return Err(ApiError::invalid("prompt", "`prompt` is required")),
        },
    };
    if given(&m, "options").is_some() {
        return Err(ApiError::invalid(
            "options",
            "`options` are not taken by embeddings here: none changes the vector",
        ));
    }
    // Both ways the answer is the same: an input that does not fit is refused, never cut.
    boolean(&m, "truncate")?;
    let dimensions = match m.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().filter(|&d| d > 0).ok_or_else(|| {
            ApiError::invalid("dimensions", "`dimensions` must be a positive integer")
        })?),
    };
    let named = string(&m, "model")?.unwrap_or_default();
    let keep_alive = m
        .get("keep_alive")
        .filter(|v| !v.is_null())
        .map(keep_alive::from_json)
        .transpose()
        .map_err(|e| ApiError::invalid("keep_alive", format!("`keep_alive`: {e}")))?;
    let call = EmbedCall {
        model: (!named.is_empty()).then(|| catalogue_name(&named).to_string()),
        inputs,
        user: None,
        keep_alive,
        dimensions,
    };
    Ok((call, named))
}

/// `/api/embed`'s `input`: a string or 1..=`MAX_INPUTS` strings.
fn inputs(m: &Map<String, Value>) -> Result<Vec<EmbedInput>, ApiError> {
    let bad = |why: String| ApiError::invalid("input", why);
    match m.get("input") {
        Some(Value::String(s)) => Ok(vec![EmbedInput::Text(s.clone())]),
        Some(Value::Array(items)) if items.is_empty() => Err(bad("`input` is empty".into())),
        Some(Value::Array(items)) if items.len() > MAX_INPUTS => Err(bad(format!(
            "`input` has {} strings; at most {MAX_INPUTS} are embedded in one request",
            items.len()
        ))),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(EmbedInput::Text(s.clone())),
                v => Err(bad(format!(
                    "`input` must hold strings, not {}",
                    type_name(v)
                ))),
            })
            .collect(),
        None | Some(Value::Null) => Err(bad("`input` is required".into())),
        Some(v) => Err(bad(format!(
            "`input` must be a string or an array of strings, not {}",
            type_name(v)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(body: &str, route: Route) -> &'static str {
        match parse(body.as_bytes(), route) {
            Err(ApiError::Invalid { param, .. }) => param.unwrap_or("?"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bodies_are_read_as_ollama_writes_them() {
        let (call, named) = parse(
            br#"{"model":"m:latest","input":["a","b"],"truncate":true}"#,
            Route::Embed,
        )
        .unwrap();
        assert_eq!(named, "m:latest");
        assert_eq!(call.model.as_deref(), Some("m"));
        assert_eq!(call.inputs.len(), 2);
        let (call, _) = parse(br#"{"model":"m","prompt":"a"}"#, Route::Legacy).unwrap();
        assert_eq!(call.inputs, [EmbedInput::Text("a".into())]);
        let (call, _) = parse(br#"{"input":"a","keep_alive":0}"#, Route::Embed).unwrap();
        assert!(call.keep_alive.is_some());
    }

    #[test]
    fn what_cannot_be_taken_is_a_400_naming_the_field() {
        assert_eq!(param(r#"{"model":"m"}"#, Route::Embed), "input");
        assert_eq!(param(r#"{"input":[]}"#, Route::Embed), "input");
        assert_eq!(param(r#"{"input":[1]}"#, Route::Embed), "input");
        assert_eq!(
            param(r#"{"input":"a","options":{"num_ctx":8}}"#, Route::Embed),
            "options"
        );
        assert_eq!(
            param(r#"{"input":"a","truncate":"no"}"#, Route::Embed),
            "truncate"
        );
        assert_eq!(
            param(r#"{"input":"a","keep_alive":"soon"}"#, Route::Embed),
            "keep_alive"
        );
        assert_eq!(param(r#"{"model":"m"}"#, Route::Legacy), "prompt");
    }
}
