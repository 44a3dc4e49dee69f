//! The client side of sealed sessions, shared by `flexserve proxy` and `flexserve chat`: a
//! plain OpenAI request in, sealed to the trusted guest, sent to the daemon, and its answer
//! opened (whole, or event by event as it streams). With no guest (`--plain`) requests go
//! through as they are.

use super::seal::{SealError, seal};
use super::trust::{self, GuestInfo, TrustError};
use super::unseal::{StreamItem, StreamUnsealer, UnsealError, open_whole};
use super::upstream::{Upstream, UpstreamError, read_body};
use crate::serve::openai::Endpoint;
use axum::body::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, StatusCode};
use sealed_session::SessionPublicKey;
use serde_json::Value;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("{0}")]
    Unseal(#[from] UnsealError),
}

impl ClientError {
    /// The HTTP status and OpenAI error `type` to answer a client with.
    pub fn status_and_type(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Seal(e) if e.is_client_error() => {
                (StatusCode::BAD_REQUEST, "invalid_request_error")
            }
            Self::Seal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "sealed_session_error"),
            Self::Upstream(_) => (StatusCode::BAD_GATEWAY, "upstream_error"),
            Self::Unseal(_) => (StatusCode::BAD_GATEWAY, "sealed_session_error"),
        }
    }

    /// The OpenAI error object (the client's own mistakes keep the daemon parser's words
    /// and `param`).
    pub fn body(&self) -> Value {
        if let Self::Seal(SealError::Invalid(api)) = self {
            return api.body();
        }
        let (_, kind) = self.status_and_type();
        serde_json::json!({"error": {
            "message": self.to_string(), "type": kind, "param": null, "code": kind,
        }})
    }
}

/// A daemon's answer to a generation request.
pub enum Reply {
    /// A whole answer, opened.
    Whole { json: Value, text: String },
    /// A stream, opened as it is read (boxed: the opener's cipher state is large).
    Stream(Box<AnswerStream>),
    /// The daemon refused the request (an OpenAI error, passed on as it came).
    Refused { status: StatusCode, body: Bytes },
}

/// A streamed answer being opened.
pub struct AnswerStream {
    body: Incoming,
    unsealer: StreamUnsealer,
    pending: std::collections::VecDeque<StreamItem>,
    ended: bool,
}

impl AnswerStream {
    /// The next event, an error that ends the stream, or `None` after the end.
    pub async fn next(&mut self) -> Option<Result<StreamItem, ClientError>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(Ok(item));
            }
            if self.ended || self.unsealer.is_over() {
                return None;
            }
            let frame = match self.body.frame().await {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    self.ended = true;
                    return Some(Err(UnsealError::Cut(e.to_string()).into()));
                }
                None => {
                    self.ended = true;
                    return self.unsealer.end().err().map(|e| Err(e.into()));
                }
            };
            let Ok(data) = frame.into_data() else {
                continue; // trailers carry no text
            };
            match self.unsealer.push(&data) {
                Ok(items) => self.pending.extend(items),
                Err(e) => {
                    self.ended = true;
                    return Some(Err(e.into()));
                }
            }
        }
    }
}

/// A daemon, and the guest its requests are sealed to (`None`: plain requests).
#[derive(Clone, Debug)]
pub struct Client {
    pub upstream: Upstream,
    pub guest: Option<GuestInfo>,
}

impl Client {
    /// A client that seals to the daemon's guest (verified, pinned or trusted on first use),
    /// or, with `sealed` false, sends plain requests.
    pub async fn connect(
        upstream: Upstream,
        sealed: bool,
        pinned: Option<SessionPublicKey>,
    ) -> Result<Self, TrustError> {
        let guest = if sealed {
            Some(trust::fetch(&upstream, pinned).await?)
        } else {
            None
        };
        Ok(Self { upstream, guest })
    }

    /// Sends a plain OpenAI request (`body`) for `endpoint`, sealed when there is a guest.
    /// Returns the answer and the seed chosen for it (a request without one gets one).
    pub async fn generate(
        &self,
        endpoint: Endpoint,
        body: &[u8],
    ) -> Result<(Reply, Option<u64>), ClientError> {
        let (body, opener, seed) = match &self.guest {
            Some(g) => {
                let call = seal(endpoint, body, g)?;
                (call.body, Some(call.opener), call.chosen_seed)
            }
            None => (body.to_vec(), None, None),
        };
        let path = match endpoint {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completion => "/v1/completions",
        };
        let r = self
            .upstream
            .send(Method::POST, path, Some(body.into()))
            .await?;
        let status = r.status();
        if !status.is_success() {
            let body = read_body(r.into_body()).await?;
            return Ok((Reply::Refused { status, body }, seed));
        }
        let is_stream = r
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if is_stream {
            let stream = Box::new(AnswerStream {
                body: r.into_body(),
                unsealer: StreamUnsealer::new(endpoint, opener),
                pending: Default::default(),
                ended: false,
            });
            return Ok((Reply::Stream(stream), seed));
        }
        let bytes = read_body(r.into_body()).await?;
        let mut json: Value = serde_json::from_slice(&bytes)
            .map_err(|e| UnsealError::Shape(format!("the answer is not JSON: {e}")))?;
        let text = open_whole(&mut json, endpoint, opener)?;
        Ok((Reply::Whole { json, text }, seed))
    }
}
