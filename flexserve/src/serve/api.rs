//! The HTTP API: routes, request checks, queueing, and the answers (whole or as
//! server-sent events in OpenAI's format).

use super::Shared;
use super::error::ApiError;
use super::fan_out::Choices;
use super::generation::{self, Piece};
use super::listen::ConnId;
use super::metrics::GuestState;
use super::openai::{
    Answer, Endpoint, Input, Logprobs, SEED_HEADER, Usage, json_response, with_logprobs,
};
use super::openai::{choices, tools};
use super::scheduler::Principal;
use super::sealed_api::{self, SealedPending};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Extension, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
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
        generation::submit(&s, conn.clone(), endpoint, req, None, arrived).await
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
    let stream_it = pending.req.stream;
    let choices = Choices::new(s, conn, endpoint, pending);
    if stream_it {
        stream(answer, choices)
    } else {
        whole(answer, choices).await
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

/// One choice of a whole answer, numbered, with its logprobs and tool calls.
fn whole_choice(answer: &Answer, c: &mut Choices, text: &str, finish: &str) -> Value {
    let p = &mut c.current;
    let mut v = answer.full(text, finish, Usage::default());
    v = with_logprobs(v, p.logprobs.as_mut().map(Logprobs::take));
    let id = choices::call_prefix(&answer.id, c.index);
    if let (Some(format), Some(t)) = (p.tool_format, &p.req.tools)
        && let Some(calls) = tools::answer_calls(format, t, text, &id)
    {
        tools::into_full(&mut v, calls);
    }
    choices::choice_of(v, c.index)
}

/// A non-streaming answer: each choice to its end in turn, then one JSON object with
/// their usage and the seed (in the body and `SEED_HEADER`).
async fn whole(answer: Answer, mut c: Choices) -> Response {
    let mut done = Vec::new();
    loop {
        let mut text = String::new();
        let end = loop {
            match c.current.next_piece().await {
                Piece::Text(piece) => text.push_str(&piece),
                Piece::End(end) => break end,
                Piece::Failed(e) => return e.into_response(),
            }
        };
        text.push_str(&end.text);
        c.ended(end.usage);
        done.push(whole_choice(&answer, &mut c, &text, end.finish));
        if c.is_last() {
            break;
        }
        if let Err(e) = c.advance().await {
            return e.into_response();
        }
    }
    let mut v = choices::gathered(answer.full("", "stop", c.usage()), done, c.usage());
    v["seed"] = c.seed.into();
    let mut r = json_response(StatusCode::OK, &v);
    r.headers_mut()
        .insert(SEED_HEADER, axum::http::HeaderValue::from(c.seed));
    r
}

fn sse(v: &serde_json::Value) -> String {
    format!("data: {v}\n\n")
}

/// The state of one event stream: the choices' chunks one choice after another, each
/// carrying its choice's `index`.
struct Streaming {
    answer: Answer,
    c: Choices,
    /// The prose of an answer that may make tool calls, held back where it may be a call.
    calls: Option<tools::ToolStream>,
    /// Whether the running choice's first chunk (chat: its role) is out.
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
            return Some(self.sse(self.answer.chunk(Some(""), true, None, None)));
        }
        let piece = self.c.current.next_piece().await;
        // A sealed model's call format arrives from its guest before its first text.
        if self.calls.is_none() {
            self.calls = self.c.current.tool_format.map(tools::ToolStream::new);
        }
        match piece {
            Piece::Text(text) => {
                let text = match self.calls.as_mut() {
                    Some(calls) => calls.push(&text).unwrap_or_default(),
                    None => text,
                };
                let chunk = self.answer.chunk(Some(&text), false, None, None);
                let chunk = self.with_pending_logprobs(chunk);
                Some(self.sse(chunk))
            }
            Piece::End(end) => {
                self.c.ended(end.usage);
                let mut out = self.last(end.text, end.finish);
                out.push_str(&self.next_choice().await);
                Some(out)
            }
            Piece::Failed(e) => {
                self.done = true;
                Some(sse(&e.body()))
            }
        }
    }

    /// `chunk` as an event of the running choice.
    fn sse(&self, chunk: Value) -> String {
        sse(&choices::numbered(chunk, self.c.index))
    }

    /// `chunk` with the logprobs of the tokens since the last chunk, if any wait.
    fn with_pending_logprobs(&mut self, chunk: Value) -> Value {
        let pending = self.c.current.logprobs.as_mut().filter(|lp| !lp.is_empty());
        with_logprobs(chunk, pending.map(Logprobs::take))
    }

    /// A choice's last text and its chunk with the finish reason (and, on the last
    /// choice's, the usage of all).
    fn last(&mut self, text: String, finish: &str) -> String {
        let mut out = String::new();
        let (text, calls) = match self.calls.take() {
            Some(mut stream) => {
                let sendable = stream.push(&text).unwrap_or_default();
                let id = choices::call_prefix(&self.answer.id, self.c.index);
                let (rest, calls) = match &self.c.current.req.tools {
                    Some(t) => stream.finish(t, &id),
                    None => (None, Vec::new()),
                };
                (sendable + &rest.unwrap_or_default(), calls)
            }
            None => (text, Vec::new()),
        };
        if !text.is_empty() {
            let chunk = self.answer.chunk(Some(&text), false, None, None);
            let chunk = self.with_pending_logprobs(chunk);
            out.push_str(&self.sse(chunk));
        }
        let finish = match calls.is_empty() {
            true => finish,
            false => {
                let mut chunk = self.answer.chunk(None, false, None, None);
                chunk["choices"][0]["delta"]["tool_calls"] = tools::deltas(calls);
                out.push_str(&self.sse(chunk));
                "tool_calls"
            }
        };
        let usage = self.c.is_last().then(|| self.c.usage());
        let mut chunk = self.answer.chunk(None, false, Some(finish), usage);
        chunk["seed"] = self.c.seed.into();
        let chunk = self.with_pending_logprobs(chunk);
        out.push_str(&self.sse(chunk));
        out
    }

    /// After a choice's last chunk: the next choice queued, or (after the last) the usage
    /// chunk if asked for and `[DONE]`.
    async fn next_choice(&mut self) -> String {
        if !self.c.is_last() {
            if let Err(e) = self.c.advance().await {
                self.done = true;
                return sse(&e.body());
            }
            self.calls = self.c.current.tool_format.map(tools::ToolStream::new);
            self.started = false;
            return String::new();
        }
        self.done = true;
        let mut out = String::new();
        if self.c.current.req.include_usage {
            let mut u = self.answer.chunk(None, false, None, Some(self.c.usage()));
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
fn stream(answer: Answer, c: Choices) -> Response {
    let seed = c.seed;
    let calls = c.current.tool_format.map(tools::ToolStream::new);
    let state = Streaming {
        answer,
        c,
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
