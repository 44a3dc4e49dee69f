//! `/api/chat` and `/api/generate`: parsed here, then the same path as the OpenAI routes
//! (`generation::submit`, `Pending::next_piece`); answered as one object with
//! `"stream": false`, else as newline-delimited JSON, one line per piece of text, as
//! Ollama does by default.

use super::request::{OllamaRequest, parse_chat, parse_generate};
use super::response::{self, Answer, Route};
use super::tools::{split_answer, stream_calls};
use crate::serve::Shared;
use crate::serve::api::read_body;
use crate::serve::error::ApiError;
use crate::serve::generation::{self, Pending, Piece};
use crate::serve::listen::ConnId;
use crate::serve::openai::Endpoint;
use crate::serve::openai::tools::ToolStream;
use crate::serve::scheduler::Principal;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Extension, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Instant;

pub async fn chat(
    State(s): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnId>,
    Extension(who): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    run(s, (who, conn), Route::Chat, body).await
}

pub async fn generate(
    State(s): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnId>,
    Extension(who): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    run(s, (who, conn), Route::Generate, body).await
}

async fn run(
    s: Arc<Shared>,
    conn: (Principal, ConnId),
    route: Route,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let arrived = Instant::now();
    let queued = async {
        let body = read_body(body)?;
        let limit = s.config.max_tokens;
        let r: OllamaRequest = match route {
            Route::Chat => parse_chat(&body, limit)?,
            Route::Generate => parse_generate(&body, limit)?,
        };
        let model = if r.model.is_empty() {
            s.config.default_model.clone()
        } else {
            r.model
        };
        let pending =
            generation::submit(&s, conn, Endpoint::Chat, r.request, r.num_ctx, arrived).await?;
        Ok::<_, ApiError>((model, pending))
    };
    let (model, pending) = match queued.await {
        Ok(q) => q,
        Err(e) => {
            s.metrics.request(generation::refused_outcome(&e));
            return response::error(e);
        }
    };
    let answer = Answer {
        route,
        model,
        arrived,
    };
    if pending.req.stream {
        stream(answer, pending)
    } else {
        whole(answer, pending).await
    }
}

/// `"stream": false`: the whole answer as one object.
async fn whole(answer: Answer, mut p: Pending) -> Response {
    let mut text = String::new();
    loop {
        match p.next_piece().await {
            Piece::Text(t) => text.push_str(&t),
            Piece::End(end) => {
                text.push_str(&end.text);
                let mut v = answer.last(&text, &end);
                let calls = p
                    .tool_format
                    .zip(p.req.tools.as_ref())
                    .and_then(|(format, tools)| split_answer(format, tools, &text));
                if let Some((content, calls)) = calls {
                    v["message"]["content"] = content.into();
                    v["message"]["tool_calls"] = calls;
                }
                return response::json_response(StatusCode::OK, &v);
            }
            Piece::Failed(e) => return response::error(e),
        }
    }
}

/// The state of one NDJSON stream.
struct Streaming {
    answer: Answer,
    p: Pending,
    /// A chat with tools: what may become a call is held back until the end, where the calls
    /// go out in one line, as Ollama sends them.
    calls: Option<ToolStream>,
    done: bool,
}

impl Streaming {
    /// The next lines to send; `None` once the stream is over.
    async fn next(&mut self) -> Option<String> {
        if self.done {
            return None;
        }
        match self.p.next_piece().await {
            Piece::Text(t) => Some(self.text_line(&t)),
            Piece::End(end) => {
                self.done = true;
                // Ollama's last line carries no text: what is left goes in lines before it.
                let mut out = self.text_line(&end.text);
                let held = match (self.calls.take(), &self.p.req.tools) {
                    (Some(s), Some(tools)) => Some(s.finish(tools, "call")),
                    _ => None,
                };
                if let Some((rest, calls)) = held {
                    if let Some(rest) = rest {
                        out.push_str(&format!("{}\n", self.answer.part(&rest)));
                    }
                    if let Some(calls) = stream_calls(calls) {
                        let mut line = self.answer.part("");
                        line["message"]["tool_calls"] = calls;
                        out.push_str(&format!("{line}\n"));
                    }
                }
                out.push_str(&format!("{}\n", self.answer.last("", &end)));
                Some(out)
            }
            Piece::Failed(e) => {
                self.done = true;
                Some(response::error_line(&e))
            }
        }
    }
}

impl Streaming {
    /// The line for a piece of text (none when it is empty or all held back).
    fn text_line(&mut self, t: &str) -> String {
        let sendable = match &mut self.calls {
            Some(s) => s.push(t),
            None => Some(t.to_string()).filter(|t| !t.is_empty()),
        };
        sendable.map_or_else(String::new, |t| format!("{}\n", self.answer.part(&t)))
    }
}

/// A streamed answer. When the client goes away the body (and with it the job's receiver
/// and cancel guard) is dropped: the worker stops the generation.
fn stream(answer: Answer, p: Pending) -> Response {
    let calls = p.tool_format.filter(|_| p.req.tools.is_some());
    let state = Streaming {
        answer,
        calls: calls.map(ToolStream::new),
        p,
        done: false,
    };
    let body = futures_util::stream::unfold(state, |mut st| async move {
        let lines = st.next().await?;
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(lines)), st))
    });
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}
