//! The HTTP API: routes, request checks, queueing, and the answers (whole or as
//! server-sent events in OpenAI's format).

use super::Shared;
use super::error::ApiError;
use super::listen::ConnId;
use super::metrics::GuestState;
use super::metrics::Outcome;
use super::models::ServedModel;
use super::openai::{
    Answer, Endpoint, GenRequest, Input, Logprobs, SEED_HEADER, Usage, finish_reason,
    json_response, with_logprobs,
};
use super::scheduler::{ClientKey, Lane, Principal, Rejected};
use super::sealed_api::{self, SealedPending};
use super::worker::{Event, Job};
use crate::text_stream::Utf8Stream;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Extension, Path, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use inference_guest::stop::StopScanner;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::sync::mpsc;
use virtio_llm::spec::MAX_PROMPT_TOKENS;
use virtio_llm::wire::request::{Prompt, SealedPrompt};

/// Largest request body (a prompt of the largest context fits many times over).
const MAX_BODY_BYTES: usize = 4 << 20;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/flexserve/guest", get(super::sealed_api::guest))
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

async fn models(State(s): State<Arc<Shared>>) -> Response {
    let data: Vec<_> = s
        .catalogue
        .list()
        .into_iter()
        .map(|(id, created)| json!({"id": id, "object": "model", "created": created, "owned_by": "flexserve"}))
        .collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

async fn model(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match s.catalogue.list().into_iter().find(|(name, _)| *name == id) {
        Some((id, created)) => json_response(
            StatusCode::OK,
            &json!({"id": id, "object": "model", "created": created, "owned_by": "flexserve"}),
        ),
        None => ApiError::UnknownModel(id).into_response(),
    }
}

async fn not_found(uri: Uri) -> Response {
    ApiError::NotFound(uri.path().to_string()).into_response()
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

/// Sets the job's cancel flag when the handler or its stream is dropped (the client went
/// away); the worker then skips the job or stops it between two tokens.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A queued request: what its answer needs.
struct Pending {
    req: GenRequest,
    model: Arc<ServedModel>,
    /// Known here when the host tokenized the prompt; else the guest counts it.
    prompt_tokens: Option<u32>,
    events: mpsc::UnboundedReceiver<Event>,
    cancel: CancelOnDrop,
    /// The seed the request runs with (returned in `SEED_HEADER` and the answer).
    seed: u64,
    /// The answer's logprobs, when asked for.
    logprobs: Option<Logprobs>,
}

impl Pending {
    /// The prompt's token count once a stop sequence cancelled the request: known here, or
    /// (the guest tokenized it) from the end of the stream the cancel brings.
    async fn prompt_tokens_after_stop(&mut self) -> u32 {
        if let Some(n) = self.prompt_tokens {
            return n;
        }
        while let Some(event) = self.events.recv().await {
            match event {
                Event::Done(end) => return end.prompt_tokens,
                Event::Failed(_) => break,
                Event::Tokens { .. } | Event::Booted => {}
            }
        }
        0
    }
}

async fn generate(
    s: Arc<Shared>,
    conn: (Principal, ConnId),
    endpoint: Endpoint,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let arrived = Instant::now();
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(MAX_BODY_BYTES)
        } else {
            ApiError::Body(e.body_text())
        }
    });
    let pending = match async { enqueue(&s, conn, endpoint, &body?, arrived).await }.await {
        Ok(p) => p,
        Err(e) => {
            s.metrics.request(match e {
                ApiError::QueueFull { .. }
                | ApiError::ClientShare { .. }
                | ApiError::ShuttingDown => Outcome::Rejected,
                ApiError::Model(_) | ApiError::Guest(_) => Outcome::Failed,
                _ => Outcome::Invalid,
            });
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

async fn enqueue(
    s: &Arc<Shared>,
    (who, conn): (Principal, ConnId),
    endpoint: Endpoint,
    body: &[u8],
    arrived: Instant,
) -> Result<Pending, ApiError> {
    let limit = s.config.max_tokens;
    let req = match endpoint {
        Endpoint::Chat => super::openai::parse_chat(body, limit)?,
        Endpoint::Completion => super::openai::parse_completion(body, limit)?,
    };
    let name = req
        .model
        .clone()
        .unwrap_or_else(|| s.config.default_model.clone());
    // The first request for a model reads and checks its file, and tokenizing a long prompt
    // takes a while: off the async threads, and only `limits.blocking_tasks` at once, so a
    // burst of requests cannot pile up blocking threads (each held to the end).
    let (model, prompt) = {
        let input = req.input.clone();
        let stream = req.stream;
        let s2 = s.clone();
        super::blocking::bounded(&s.blocking, move || {
            let model = s2.catalogue.get(&name)?;
            // Refused before tokenizing when the text cannot fit however it tokenizes.
            model.fits_roughly(&input)?;
            let prompt = match input {
                // Relayed untouched, with the public fields the guest binds it to.
                Input::Sealed(request) => Prompt::Sealed(SealedPrompt {
                    model: name,
                    stream,
                    request,
                }),
                input => model.encode(&input)?,
            };
            Ok::<_, ApiError>((model, prompt))
        })
        .await??
    };
    // A prompt the guest tokenizes is checked there (an empty one is refused, one that does
    // not fit ends with the context full).
    let prompt_tokens = match &prompt {
        Prompt::Tokens(ids) => Some(ids.len()),
        Prompt::Text(_) | Prompt::Chat(_) | Prompt::Sealed(_) | Prompt::Continue => None,
    };
    if prompt_tokens == Some(0) {
        return Err(ApiError::invalid("prompt", "the prompt is empty"));
    }
    let used = prompt_tokens.unwrap_or(0);
    if used >= model.context as usize || used > MAX_PROMPT_TOKENS {
        return Err(ApiError::PromptTooLong {
            prompt: used,
            context: model.context.min(MAX_PROMPT_TOKENS as u32),
        });
    }
    let room = model.context - used as u32;
    // More than the context has room for is clamped: the answer ends with "length".
    let max_tokens = req.max_tokens.unwrap_or(limit).min(limit).min(room);
    sealed_fits(&req, max_tokens, room)?;
    let (seed, logprobs) = super::sampling::prepare(&req, &model, endpoint)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let lane = match &req.user {
        Some(u) => Lane::User(u.clone()),
        None => Lane::Connection(conn.0),
    };
    let client = ClientKey { who, lane };
    let prompt_tokens = prompt_tokens.map(|n| n as u32);
    let job = Job {
        model: model.clone(),
        prompt,
        sampling: virtio_llm::wire::request::SamplingParams {
            max_tokens,
            seed,
            ..req.sampling
        },
        options: req.options.clone(),
        events: tx,
        cancel: cancel.clone(),
        arrived,
        boot_only: false,
        keep_alive: req.keep_alive,
    };
    s.queue
        .submit(client, job)
        .map_err(|(why, _)| rejected(s, why))?;
    s.metrics
        .queue_depth
        .store(s.queue.len() as u64, Ordering::Relaxed);
    Ok(Pending {
        req,
        model,
        prompt_tokens,
        events: rx,
        cancel: CancelOnDrop(cancel),
        seed,
        logprobs,
    })
}

/// The answer to a job the queue did not take.
fn rejected(s: &Shared, why: Rejected) -> ApiError {
    let retry_after = s.config.retry_after_secs;
    match why {
        Rejected::Full => ApiError::QueueFull { retry_after },
        Rejected::ClientShare => ApiError::ClientShare {
            share: s.config.client_share(),
            retry_after,
        },
        Rejected::ShuttingDown => ApiError::ShuttingDown,
    }
}

/// A sealed request's `max_tokens` is bound to its seal: refuse rather than change it.
fn sealed_fits(req: &GenRequest, max_tokens: u32, room: u32) -> Result<(), ApiError> {
    if matches!(req.input, Input::Sealed(_)) && req.max_tokens != Some(max_tokens) {
        return Err(ApiError::invalid(
            "max_tokens",
            format!("a sealed request's `max_tokens` must be at most the model's context ({room})"),
        ));
    }
    Ok(())
}

/// Turns the guest's streamed text into answer text: a character split over tokens waits
/// for its end, stop sequences cut the text. (End-of-generation tokens carry no text.)
struct Detok {
    utf8: Utf8Stream,
    stop: StopScanner,
    tokens: u32,
}

impl Detok {
    fn new(stops: Vec<String>) -> Self {
        Self {
            utf8: Utf8Stream::default(),
            stop: StopScanner::new(&stops),
            tokens: 0,
        }
    }

    /// Text that can be sent, and whether a stop sequence ended it. The scanner gets whole
    /// characters and cuts only where a stop sequence (whole characters too) starts, so what
    /// it releases is whole characters.
    fn push(&mut self, ids: &[u32], bytes: &[u8]) -> (String, bool) {
        self.tokens += ids.len() as u32;
        let (out, stopped) = self.stop.push(self.utf8.push(bytes).as_bytes());
        (String::from_utf8_lossy(&out).into_owned(), stopped)
    }

    fn finish(&mut self) -> String {
        let (out, stopped) = self.stop.push(self.utf8.finish().as_bytes());
        let mut text = String::from_utf8_lossy(&out).into_owned();
        if !stopped {
            text.push_str(&String::from_utf8_lossy(&self.stop.finish()));
        }
        text
    }
}

/// The whole answer with its logprobs and seed (in the body and `SEED_HEADER`).
fn whole_answer(answer: &Answer, p: &mut Pending, text: &str, finish: &str, u: Usage) -> Response {
    let mut v = answer.full(text, finish, u);
    v = with_logprobs(v, p.logprobs.as_mut().map(Logprobs::take));
    v["seed"] = p.seed.into();
    let mut r = json_response(StatusCode::OK, &v);
    r.headers_mut()
        .insert(SEED_HEADER, axum::http::HeaderValue::from(p.seed));
    r
}

/// A non-streaming answer: wait for the end, then one JSON object.
async fn whole(answer: Answer, mut p: Pending) -> Response {
    let mut detok = Detok::new(p.req.stop.clone());
    let mut text = String::new();
    loop {
        match p.events.recv().await {
            Some(Event::Tokens {
                ids,
                text: bytes,
                logprobs,
            }) => {
                if let Some(lp) = p.logprobs.as_mut() {
                    lp.push(&ids, &logprobs);
                }
                let (piece, stopped) = detok.push(&ids, &bytes);
                text.push_str(&piece);
                if stopped {
                    p.cancel.0.store(true, Ordering::Relaxed);
                    let usage = Usage {
                        prompt: p.prompt_tokens_after_stop().await,
                        completion: detok.tokens,
                        cached: 0,
                    };
                    return whole_answer(&answer, &mut p, &text, "stop", usage);
                }
            }
            Some(Event::Done(end)) => {
                text.push_str(&detok.finish());
                let usage = Usage {
                    prompt: end.prompt_tokens,
                    completion: end.generated_tokens,
                    cached: end.cached_tokens,
                };
                let finish = finish_reason(end.reason);
                return whole_answer(&answer, &mut p, &text, finish, usage);
            }
            Some(Event::Failed(e)) => return e.into_response(),
            Some(Event::Booted) => {}
            None => return ApiError::ShuttingDown.into_response(),
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
    detok: Detok,
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
        loop {
            match self.p.events.recv().await {
                Some(Event::Tokens {
                    ids,
                    text: bytes,
                    logprobs,
                }) => {
                    if let Some(lp) = self.p.logprobs.as_mut() {
                        lp.push(&ids, &logprobs);
                    }
                    let (text, stopped) = self.detok.push(&ids, &bytes);
                    if stopped {
                        self.p.cancel.0.store(true, Ordering::Relaxed);
                        let usage = Usage {
                            prompt: self.p.prompt_tokens_after_stop().await,
                            completion: self.detok.tokens,
                            cached: 0,
                        };
                        return Some(self.last(text, "stop", usage));
                    }
                    if !text.is_empty() {
                        let chunk = self.answer.chunk(Some(&text), false, None, None);
                        return Some(sse(&self.with_pending_logprobs(chunk)));
                    }
                }
                Some(Event::Done(end)) => {
                    let text = self.detok.finish();
                    let usage = Usage {
                        prompt: end.prompt_tokens,
                        completion: end.generated_tokens,
                        cached: end.cached_tokens,
                    };
                    return Some(self.last(text, finish_reason(end.reason), usage));
                }
                Some(Event::Failed(e)) => {
                    self.done = true;
                    return Some(sse(&e.body()));
                }
                Some(Event::Booted) => {}
                None => {
                    self.done = true;
                    return Some(sse(&ApiError::ShuttingDown.body()));
                }
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
        if !text.is_empty() {
            let chunk = self.answer.chunk(Some(&text), false, None, None);
            out.push_str(&sse(&self.with_pending_logprobs(chunk)));
        }
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
    let detok = Detok::new(p.req.stop.clone());
    let seed = p.seed;
    let state = Streaming {
        answer,
        p,
        detok,
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
