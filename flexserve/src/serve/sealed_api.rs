//! The daemon's side of sealed sessions (docs/sealed-session.md): `GET /v1/flexserve/guest`
//! hands out the guest's signed statement, and a sealed request's answer is relayed as the
//! guest's sealed pieces, untouched, in OpenAI's shapes with empty text. The daemon never
//! holds the user's text; it sees the public fields, the token counts and the finish reason.

use super::Shared;
use super::error::ApiError;
use super::openai::sealed::{SEALED_FIELD, encode};
use super::openai::{Answer, Endpoint, Usage, finish_reason, json_response};
use super::scheduler::{ClientKey, Lane, Principal};
use super::worker::{Event, Job};
use axum::body::{Body, Bytes};
use axum::extract::Extension;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use sealed_session::SignedStatement;
use serde_json::{Value, json};
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;
use tokio::sync::mpsc;
use virtio_llm::wire::request::{Prompt, SamplingParams};
use virtio_llm::wire::response::EndOfStream;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn cached(s: &Shared) -> Option<[u8; virtio_llm::spec::SIGNED_STATEMENT_BYTES]> {
    *s.statement.lock().unwrap_or_else(|e| e.into_inner())
}

/// Boots the guest with the default model (as the first request would) to get a statement.
async fn boot(s: &Arc<Shared>, who: Principal) -> Result<(), ApiError> {
    let name = s.config.default_model.clone();
    let model = {
        let s2 = s.clone();
        super::blocking::bounded(&s.blocking, move || s2.catalogue.get(&name)).await??
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let job = Job {
        options: Default::default(),
        model,
        prompt: Prompt::Continue,
        sampling: SamplingParams::greedy(1),
        events: tx,
        cancel: Arc::new(AtomicBool::new(false)),
        arrived: Instant::now(),
        boot_only: true,
        embed: None,
        next_model: None,
        keep_alive: None,
    };
    let client = ClientKey {
        who,
        lane: Lane::Connection(0),
    };
    if s.queue.submit(client, job).is_err() {
        return Err(ApiError::QueueFull {
            retry_after: s.config.retry_after_secs,
        });
    }
    match rx.recv().await {
        Some(Event::Failed(e)) => Err(e),
        _ => Ok(()),
    }
}

/// `GET /v1/flexserve/guest`: the guest's signed statement and, for convenience, its fields.
pub async fn guest(State(s): State<Arc<Shared>>, Extension(who): Extension<Principal>) -> Response {
    if cached(&s).is_none()
        && let Err(e) = boot(&s, who).await
    {
        return e.into_response();
    }
    let Some(bytes) = cached(&s) else {
        return ApiError::Guest(
            "the guest gave no statement: it has no key root, or it refused (see the daemon's log)"
                .into(),
        )
        .into_response();
    };
    let signed = match SignedStatement::decode(&bytes) {
        Ok(signed) => signed,
        Err(e) => {
            return ApiError::Guest(format!("the guest's statement is invalid: {e}"))
                .into_response();
        }
    };
    let st = signed.statement;
    // Checking a model reads its file the first time: off the async threads.
    let listed = s.clone();
    let models: Vec<Value> = tokio::task::spawn_blocking(move || {
        let c = &listed.catalogue;
        c.list()
            .into_iter()
            .filter_map(|(id, _)| c.get(&id).ok())
            .map(|m| json!({"id": m.id, "context": m.context}))
            .collect()
    })
    .await
    .unwrap_or_default();
    json_response(
        StatusCode::OK,
        &json!({
            "statement": hex(&bytes),
            "session_key": st.session_key.to_string(),
            "sealing_key": st.sealing_key.to_string(),
            "measurement": hex(&st.measurement),
            "attestation_key": signed.attestation_key.to_string(),
            "isolation": st.isolation.name(),
            "key_root": st.key_root.name(),
            "default_model": s.config.default_model,
            "max_tokens": s.config.max_tokens,
            "models": models,
        }),
    )
}

/// What a sealed answer's handler receives.
pub struct SealedPending {
    pub events: mpsc::UnboundedReceiver<Event>,
    pub include_usage: bool,
    /// Dropping it cancels the job (the client went away).
    pub cancel: Box<dyn Send + Sync>,
}

fn usage(end: &EndOfStream) -> Usage {
    Usage {
        prompt: end.prompt_tokens,
        completion: end.generated_tokens,
        cached: end.cached_tokens,
    }
}

/// A whole sealed answer: every piece, in order, under `flexserve_sealed`.
pub async fn whole(answer: Answer, mut p: SealedPending) -> Response {
    let mut pieces = Vec::new();
    loop {
        match p.events.recv().await {
            Some(Event::Tokens { text, .. }) => pieces.push(Value::String(encode(&text))),
            Some(Event::Done(end)) => {
                let mut v = answer.full("", finish_reason(end.reason), usage(&end));
                v[SEALED_FIELD] = Value::Array(pieces);
                return json_response(StatusCode::OK, &v);
            }
            Some(Event::Failed(e)) => return e.into_response(),
            Some(Event::Booted | Event::ToolStyle(_)) => {}
            None => return ApiError::ShuttingDown.into_response(),
        }
    }
}

fn sse(v: &Value) -> String {
    format!("data: {v}\n\n")
}

/// The next bytes of a streamed sealed answer: one chunk per piece, then the finish.
async fn next_event(answer: &Answer, p: &mut SealedPending, started: &mut bool) -> Option<String> {
    if !*started && answer.endpoint == Endpoint::Chat {
        *started = true;
        return Some(sse(&answer.chunk(Some(""), true, None, None)));
    }
    loop {
        return match p.events.recv().await? {
            Event::Tokens { text, .. } => {
                let mut v = answer.chunk(None, false, None, None);
                v[SEALED_FIELD] = Value::String(encode(&text));
                Some(sse(&v))
            }
            Event::Done(end) => {
                let mut out = sse(&answer.chunk(
                    None,
                    false,
                    Some(finish_reason(end.reason)),
                    Some(usage(&end)),
                ));
                if p.include_usage {
                    let mut u = answer.chunk(None, false, None, Some(usage(&end)));
                    u["choices"] = json!([]);
                    out.push_str(&sse(&u));
                }
                out.push_str("data: [DONE]\n\n");
                p.events.close();
                Some(out)
            }
            Event::Failed(e) => {
                p.events.close();
                Some(sse(&e.body()))
            }
            Event::Booted | Event::ToolStyle(_) => continue,
        };
    }
}

/// A streamed sealed answer: server-sent events as pieces arrive.
pub fn stream(answer: Answer, p: SealedPending) -> Response {
    let body = futures_util::stream::unfold(
        (answer, p, false),
        |(answer, mut p, mut started)| async move {
            let chunk = next_event(&answer, &mut p, &mut started).await?;
            Some((
                Ok::<_, std::convert::Infallible>(Bytes::from(chunk)),
                (answer, p, started),
            ))
        },
    );
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}
