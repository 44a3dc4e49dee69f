//! The HTTP API: routes, request checks, queueing, and the answers (whole or as
//! server-sent events in OpenAI's format).

use super::Shared;
use super::error::ApiError;
use super::generation::{self, Pending, Piece};
use super::listen::ConnId;
use super::metrics::GuestState;
use super::openai::tools;
use super::openai::{
    Answer, Endpoint, Input, Logprobs, SEED_HEADER, Usage, json_response, with_logprobs,
};
use super::scheduler::Principal;
use super::sealed_api::{self, SealedPending};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Extension, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Largest request body (a prompt of the largest context fits many times over).
const MAX_BODY_BYTES: usize = 4 << 20;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(super::models_api::models))
        .route("/v1/models/{id}", get(super::models_api::model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route(
            "/v1/embeddings",
            post(super::embeddings::openai::embeddings),
        )
        .route("/v1/flexserve/guest", get(super::sealed_api::guest))
        .merge(super::ollama::routes())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            super::guard::guard,
        ))
        .with_state(shared)
}

/// 200 while a guest is up to serve, or stopped because no model was resident
/// (`models.keep_alive`) and booting again on demand; 503 while none is otherwise (before
/// the first boot with `guest.start = "lazy"`, while booting, after a crash until the new
/// one is up), so that a health check sees what a request would.
async fn health(State(s): State<Arc<Shared>>) -> Response {
    let guest = s.metrics.guest();
    // A guest stopped because no model was resident (keep_alive) is not a failure: the
    // next request boots one.
    let idle = s.metrics.guest_idle();
    let (status, word) = if guest == GuestState::Up || s.metrics.resting() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    json_response(
        status,
        &json!({
            "status": word,
            "guest": guest.name(),
            "idle": idle,
            "isolation": s.metrics.isolation().map(|l| l.name()),
            "key_root": s.root.description,
            "queued": s.queue.len(),
        }),
    )
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    s.metrics
        .queue_depth
        .store(s.queue.len() as u64, Ordering::Relaxed);
    let mut text = s.metrics.render();
    s.conns.render(&mut text);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn not_found(uri: Uri) -> Response {
    let e = ApiError::NotFound(uri.path().to_string());
    if super::ollama::is_ollama_path(uri.path()) {
        return super::ollama::error(e);
    }
    e.into_response()
}

async fn chat(
    State(s): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnId>,
    Extension(who): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generate(s, (who, conn), Endpoint::Chat, body).await
}

async fn completions(
    State(s): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnId>,
    Extension(who): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generate(s, (who, conn), Endpoint::Completion, body).await
}

async fn generate(
    s: Arc<Shared>,
    conn: (Principal, ConnId),
    endpoint: Endpoint,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let arrived = Instant::now();
    let queued = async {
        let body = read_body(body)?;
        let limit = s.config.max_tokens;
        let req = match endpoint {
            Endpoint::Chat => super::openai::parse_chat(&body, limit)?,
            Endpoint::Completion => super::openai::parse_completion(&body, limit)?,
        };
        generation::submit(&s, conn, endpoint, req, None, arrived).await
    };
    let pending = match queued.await {
        Ok(p) => p,
        Err(e) => {
            s.metrics.request(generation::refused_outcome(&e));
            return e.into_response();
        }
    };
    let n = s.next_id.fetch_add(1, Ordering::Relaxed);
    let answer = Answer::new(endpoint, n, &pending.model.id);
    if matches!(pending.req.input, Input::Sealed(_)) {
        let stream = pending.req.stream;
        let sealed = SealedPending {
            events: pending.events,
            include_usage: pending.req.include_usage,
            cancel: Box::new(pending.cancel),
        };
        return if stream {
            sealed_api::stream(answer, sealed)
        } else {
            sealed_api::whole(answer, sealed).await
        };
    }
    if pending.req.stream {
        stream(answer, pending)
    } else {
        whole(answer, pending).await
    }
}

/// The body as axum read it, or the error that says why it could not (too large, cut).
pub(super) fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(MAX_BODY_BYTES)
        } else {
            ApiError::Body(e.body_text())
        }
    })
}

/// The whole answer with its logprobs, tool calls and seed (in the body and `SEED_HEADER`).
fn whole_answer(answer: &Answer, p: &mut Pending, text: &str, finish: &str, u: Usage) -> Response {
    let mut v = answer.full(text, finish, u);
    v = with_logprobs(v, p.logprobs.as_mut().map(Logprobs::take));
    if let (Some(format), Some(t)) = (p.tool_format, &p.req.tools)
        && let Some(calls) = tools::answer_calls(format, t, text, &format!("call_{}", answer.id))
    {
        tools::into_full(&mut v, calls);
    }
    v["seed"] = p.seed.into();
    let mut r = json_response(StatusCode::OK, &v);
    r.headers_mut()
        .insert(SEED_HEADER, axum::http::HeaderValue::from(p.seed));
    r
}

/// A non-streaming answer: wait for the end, then one JSON object.
async fn whole(answer: Answer, mut p: Pending) -> Response {
    let mut text = String::new();
    loop {
        match p.next_piece().await {
            Piece::Text(piece) => text.push_str(&piece),
            Piece::End(end) => {
                text.push_str(&end.text);
                return whole_answer(&answer, &mut p, &text, end.finish, end.usage);
            }
            Piece::Failed(e) => return e.into_response(),
        }
    }
}

fn sse(v: &serde_json::Value) -> String {
    format!("data: {v}\n\n")
}

/// The state of one event stream.
struct Streaming {
    answer: Answer,
    p: Pending,
    /// The prose of an answer that may make tool calls, held back where it may be a call.
    calls: Option<tools::ToolStream>,
    started: bool,
    done: bool,
}

impl Streaming {
    /// The next bytes to send; `None` once the stream is over.
    async fn next(&mut self) -> Option<String> {
        if self.done {
            return None;
        }
        if !self.started && self.answer.endpoint == Endpoint::Chat {
            self.started = true;
            return Some(sse(&self.answer.chunk(Some(""), true, None, None)));
        }
        let piece = self.p.next_piece().await;
        // A sealed model's call format arrives from its guest before its first text.
        if self.calls.is_none() {
            self.calls = self.p.tool_format.map(tools::ToolStream::new);
        }
        match piece {
            Piece::Text(text) => {
                let text = match self.calls.as_mut() {
                    Some(calls) => calls.push(&text).unwrap_or_default(),
                    None => text,
                };
                let chunk = self.answer.chunk(Some(&text), false, None, None);
                Some(sse(&self.with_pending_logprobs(chunk)))
            }
            Piece::End(end) => Some(self.last(end.text, end.finish, end.usage)),
            Piece::Failed(e) => {
                self.done = true;
                Some(sse(&e.body()))
            }
        }
    }

    /// `chunk` with the logprobs of the tokens since the last chunk, if any wait.
    fn with_pending_logprobs(&mut self, chunk: serde_json::Value) -> serde_json::Value {
        let pending = self.p.logprobs.as_mut().filter(|lp| !lp.is_empty());
        with_logprobs(chunk, pending.map(Logprobs::take))
    }

    /// The last text, the chunk with the finish reason and usage, and `[DONE]`.
    fn last(&mut self, text: String, finish: &str, usage: Usage) -> String {
        self.done = true;
        let mut out = String::new();
        let (text, calls) = match self.calls.take() {
            Some(mut stream) => {
                let sendable = stream.push(&text).unwrap_or_default();
                let id = format!("call_{}", self.answer.id);
                let (rest, calls) = match &self.p.req.tools {
                    Some(t) => stream.finish(t, &id),
                    None => (None, Vec::new()),
                };
                (sendable + &rest.unwrap_or_default(), calls)
            }
            None => (text, Vec::new()),
        };
        if !text.is_empty() {
            let chunk = self.answer.chunk(Some(&text), false, None, None);
            out.push_str(&sse(&self.with_pending_logprobs(chunk)));
        }
        let finish = match calls.is_empty() {
            true => finish,
            false => {
                let mut chunk = self.answer.chunk(None, false, None, None);
                chunk["choices"][0]["delta"]["tool_calls"] = tools::deltas(calls);
                out.push_str(&sse(&chunk));
                "tool_calls"
            }
        };
        let mut chunk = self.answer.chunk(None, false, Some(finish), Some(usage));
        chunk["seed"] = self.p.seed.into();
        out.push_str(&sse(&self.with_pending_logprobs(chunk)));
        if self.p.req.include_usage {
            let mut u = self.answer.chunk(None, false, None, Some(usage));
            u["choices"] = json!([]);
            out.push_str(&sse(&u));
        }
        out.push_str("data: [DONE]\n\n");
        out
    }
}

/// A streaming answer: server-sent events as tokens arrive. When the client goes away the
/// body (and with it the job's receiver and cancel guard) is dropped: the worker stops the
/// generation.
fn stream(answer: Answer, p: Pending) -> Response {
    let seed = p.seed;
    let calls = p.tool_format.map(tools::ToolStream::new);
    let state = Streaming {
        answer,
        p,
        calls,
        started: false,
        done: false,
    };
    let body = futures_util::stream::unfold(state, |mut st| async move {
        let chunk = st.next().await?;
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(chunk)), st))
    });
    let mut r = (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response();
    r.headers_mut()
        .insert(SEED_HEADER, axum::http::HeaderValue::from(seed));
    r
}
