//! The daemon's sealed answer opened into a plain OpenAI answer, whole or as it streams.
//!
//! Every piece is opened in order with the request's `ResponseOpener`; text reaches the
//! client only once its piece authenticated, and an answer counts as finished only when the
//! authenticated last piece arrived. Any text the daemon sends outside the seal is refused:
//! it could only be the host's own words presented as the model's.

use crate::serve::openai::Endpoint;
use crate::serve::openai::sealed::{SEALED_FIELD, decode};
use crate::text_stream::Utf8Stream;
use sealed_session::{ResponseOpener, SessionError};
use serde_json::Value;

/// Largest stretch of an event stream without an event boundary.
const MAX_EVENT_BYTES: usize = 4 << 20;

/// Why an answer was refused.
#[derive(Debug, thiserror::Error)]
pub enum UnsealError {
    #[error("{0}")]
    Session(#[from] SessionError),
    #[error("answer piece {index} is not base64: {source}")]
    PieceBase64 {
        index: u64,
        source: base64::DecodeError,
    },
    #[error("the daemon's answer is not an OpenAI answer: {0}")]
    Shape(String),
    #[error(
        "the daemon's answer carries text outside the seal: refused, since only sealed \
         pieces come from the guest"
    )]
    Plaintext,
    #[error(
        "the daemon's answer has no sealed pieces (`{SEALED_FIELD}`): the daemon does not \
         serve sealed sessions, or stripped them"
    )]
    NotSealed,
    #[error("the answer stream ended before its end (`[DONE]`): {0}")]
    Cut(String),
}

/// The text of the answer's first choice: `message.content` (chat), `delta.content` (chat
/// chunk) or `text` (completions).
fn text_slot(v: &mut Value, endpoint: Endpoint, chunk: bool) -> Option<&mut Value> {
    let choice = v.get_mut("choices")?.get_mut(0)?;
    match endpoint {
        Endpoint::Chat => {
            let inner = choice.get_mut(if chunk { "delta" } else { "message" })?;
            let obj = inner.as_object_mut()?;
            Some(obj.entry("content").or_insert(Value::Null))
        }
        Endpoint::Completion => choice.get_mut("text"),
    }
}

fn visible_text(v: &mut Value, endpoint: Endpoint, chunk: bool) -> String {
    text_slot(v, endpoint, chunk)
        .and_then(|t| t.as_str())
        .unwrap_or("")
        .to_string()
}

/// Opens pieces into text, holding back a character split over two pieces.
struct TextOpener {
    opener: ResponseOpener,
    utf8: Utf8Stream,
}

impl TextOpener {
    fn open(&mut self, piece: &Value, index: u64) -> Result<String, UnsealError> {
        let b64 = piece
            .as_str()
            .ok_or_else(|| UnsealError::Shape(format!("piece {index} is not a string")))?;
        let bytes = decode(b64).map_err(|source| UnsealError::PieceBase64 { index, source })?;
        let opened = self.opener.open(&bytes)?;
        let mut text = self.utf8.push(&opened.text);
        if opened.last {
            text.push_str(&self.utf8.finish());
        }
        Ok(text)
    }
}

/// Opens a whole answer (`flexserve_sealed`: the pieces in order) in place: the text goes
/// where OpenAI's clients look for it. Returns the text.
pub fn open_whole(
    v: &mut Value,
    endpoint: Endpoint,
    opener: Option<ResponseOpener>,
) -> Result<String, UnsealError> {
    let Some(opener) = opener else {
        return Ok(visible_text(v, endpoint, false));
    };
    let pieces = match v.as_object_mut().and_then(|o| o.remove(SEALED_FIELD)) {
        Some(Value::Array(p)) => p,
        Some(_) => {
            return Err(UnsealError::Shape(format!(
                "`{SEALED_FIELD}` is not a list"
            )));
        }
        None => return Err(UnsealError::NotSealed),
    };
    if !visible_text(v, endpoint, false).is_empty() {
        return Err(UnsealError::Plaintext);
    }
    let mut t = TextOpener {
        opener,
        utf8: Utf8Stream::default(),
    };
    let mut text = String::new();
    for (i, p) in pieces.iter().enumerate() {
        text.push_str(&t.open(p, i as u64)?);
    }
    t.opener.finish()?;
    let slot = text_slot(v, endpoint, false)
        .ok_or_else(|| UnsealError::Shape("no `choices[0]` with a text".into()))?;
    *slot = Value::String(text.clone());
    Ok(text)
}

/// One event of an answer stream, for the client.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// A chunk, its text (opened) in place, and that text.
    Chunk(Value, String),
    /// The daemon's error event, passed on; the stream ends with it.
    Error(Value),
    /// `[DONE]`, after the authenticated end.
    Done,
}

/// Splits an event stream into events and opens their pieces, in order.
pub struct StreamUnsealer {
    endpoint: Endpoint,
    opener: Option<TextOpener>,
    buf: Vec<u8>,
    pieces: u64,
    over: bool,
}

impl StreamUnsealer {
    /// `opener: None` for a plain answer (its text is passed as the daemon sent it).
    pub fn new(endpoint: Endpoint, opener: Option<ResponseOpener>) -> Self {
        Self {
            endpoint,
            opener: opener.map(|opener| TextOpener {
                opener,
                utf8: Utf8Stream::default(),
            }),
            buf: Vec::new(),
            pieces: 0,
            over: false,
        }
    }

    /// Whether `[DONE]` or an error ended the stream.
    pub fn is_over(&self) -> bool {
        self.over
    }

    /// Takes the next bytes of the stream; returns the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<StreamItem>, UnsealError> {
        let mut out = Vec::new();
        if self.over {
            return Ok(out);
        }
        self.buf.extend_from_slice(bytes);
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.buf.drain(..end + 2).collect();
            let data: Vec<&str> = std::str::from_utf8(&event)
                .map_err(|_| UnsealError::Shape("an event is not UTF-8".into()))?
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d).trim_end_matches('\r'))
                .collect();
            if data.is_empty() {
                continue; // a comment or keep-alive
            }
            let item = self.event(&data.join("\n"))?;
            let over = !matches!(item, StreamItem::Chunk(..));
            out.push(item);
            if over {
                self.over = true;
                self.buf.clear();
                break;
            }
        }
        if self.buf.len() > MAX_EVENT_BYTES {
            return Err(UnsealError::Shape(format!(
                "an event is longer than {MAX_EVENT_BYTES} bytes"
            )));
        }
        Ok(out)
    }

    /// The daemon closed the stream: fine only after `[DONE]` or an error event.
    pub fn end(&self) -> Result<(), UnsealError> {
        if self.over {
            return Ok(());
        }
        if let Some(t) = &self.opener {
            t.opener
                .finish()
                .map_err(|e| UnsealError::Cut(e.to_string()))?;
        }
        Err(UnsealError::Cut("the connection closed".into()))
    }

    /// The authenticated end has arrived (always, for a plain answer).
    fn check_end(&self) -> Result<(), UnsealError> {
        match &self.opener {
            Some(t) => Ok(t.opener.finish()?),
            None => Ok(()),
        }
    }

    fn event(&mut self, data: &str) -> Result<StreamItem, UnsealError> {
        if data.trim() == "[DONE]" {
            self.check_end()?;
            return Ok(StreamItem::Done);
        }
        let mut v: Value = serde_json::from_str(data)
            .map_err(|e| UnsealError::Shape(format!("an event is not JSON: {e}")))?;
        if v.get("error").is_some() {
            return Ok(StreamItem::Error(v));
        }
        let piece = v.as_object_mut().and_then(|o| o.remove(SEALED_FIELD));
        let visible = visible_text(&mut v, self.endpoint, true);
        let text = match (&mut self.opener, piece) {
            (None, _) => visible,
            (Some(_), _) if !visible.is_empty() => return Err(UnsealError::Plaintext),
            (Some(t), Some(p)) => {
                self.pieces += 1;
                t.open(&p, self.pieces - 1)?
            }
            (Some(_), None) => String::new(),
        };
        let finished = v
            .get("choices")
            .and_then(Value::as_array)
            .is_some_and(|c| c.iter().any(|c| !c["finish_reason"].is_null()));
        if finished {
            self.check_end()?;
        }
        if self.opener.is_some()
            && let Some(slot) = text_slot(&mut v, self.endpoint, true)
        {
            *slot = Value::String(text.clone());
        }
        Ok(StreamItem::Chunk(v, text))
    }
}

#[cfg(test)]
#[path = "unseal_tests.rs"]
mod tests;
