//! The proxy's OpenAI API: the two generation endpoints sealed and opened, the model list
//! relayed, `/health` its own. Any OpenAI client works unchanged with `base_url` here.

use super::client::{Client, ClientError, Reply};
use super::unseal::StreamItem;
use crate::serve::openai::{Endpoint, json_response};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::sync::Arc;

/// Largest request body, as the daemon's.
const MAX_BODY_BYTES: usize = 4 << 20;
/// The header that returns the seed the proxy chose for a request that gave none, so the
/// answer can be reproduced.
pub use crate::serve::openai::SEED_HEADER;

pub fn router(client: Arc<Client>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(client)
}

fn error(status: StatusCode, kind: &str, message: String) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": kind}});
    json_response(status, &body)
}

fn client_error(e: &ClientError) -> Response {
    json_response(e.status_and_type().0, &e.body())
}

/// A daemon answer passed on as it came (status and JSON body).
fn relayed(status: StatusCode, body: Bytes) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn relay(c: &Client, path: &str) -> Response {
    match c.upstream.get(path).await {
        Ok((status, body)) => relayed(status, body),
        Err(e) => client_error(&e.into()),
    }
}

async fn models(State(c): State<Arc<Client>>) -> Response {
    relay(&c, "/v1/models").await
}

async fn model(State(c): State<Arc<Client>>, Path(id): Path<String>) -> Response {
    // The id goes into a path: only names a model file can have.
    if id.is_empty()
        || !id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch))
    {
        return error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("the model `{id}` does not exist"),
        );
    }
    relay(&c, &format!("/v1/models/{id}")).await
}

/// The daemon's health, with what the proxy seals to.
async fn health(State(c): State<Arc<Client>>) -> Response {
    let (status, body) = match c.upstream.get("/health").await {
        Ok(r) => r,
        Err(e) => return client_error(&e.into()),
    };
    let mut v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let proxy = match &c.guest {
        Some(g) => json!({"sealed": true, "session_key": g.session_key().to_string(),
            "key_root": g.signed.statement.key_root.name(),
            "isolation": g.signed.statement.isolation.name()}),
        None => json!({"sealed": false}),
    };
    if !v.is_object() {
        v = json!({"daemon": v});
    }
    v["proxy"] = proxy;
    json_response(status, &v)
}

async fn not_found(uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("no route for {}", uri.path()),
    )
}

async fn chat(State(c): State<Arc<Client>>, body: Bytes) -> Response {
    generate(&c, Endpoint::Chat, &body).await
}

async fn completions(State(c): State<Arc<Client>>, body: Bytes) -> Response {
    generate(&c, Endpoint::Completion, &body).await
}

async fn generate(c: &Client, endpoint: Endpoint, body: &[u8]) -> Response {
    let (reply, seed) = match c.generate(endpoint, body).await {
        Ok(r) => r,
        Err(e) => return client_error(&e),
    };
    let mut response = match reply {
        Reply::Refused { status, body } => relayed(status, body),
        Reply::Whole { json, .. } => json_response(StatusCode::OK, &json),
        Reply::Stream(stream) => {
            let events = futures_util::stream::unfold(Some(stream), |stream| async move {
                let mut stream = stream?;
                let (bytes, go_on) = match stream.next().await? {
                    Ok(StreamItem::Chunk(v, _)) => (format!("data: {v}\n\n"), true),
                    Ok(StreamItem::Done) => ("data: [DONE]\n\n".to_string(), false),
                    Ok(StreamItem::Error(v)) => (format!("data: {v}\n\n"), false),
                    // No `[DONE]` after a refused answer: OpenAI's clients raise the error.
                    Err(e) => (format!("data: {}\n\n", e.body()), false),
                };
                let next = go_on.then_some(stream);
                Some((Ok::<_, std::convert::Infallible>(Bytes::from(bytes)), next))
            });
            (
                [
                    (header::CONTENT_TYPE, "text/event-stream"),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                Body::from_stream(events),
            )
                .into_response()
        }
    };
    if let Some(seed) = seed {
        response
            .headers_mut()
            .insert(SEED_HEADER, HeaderValue::from(seed));
    }
    response
}
