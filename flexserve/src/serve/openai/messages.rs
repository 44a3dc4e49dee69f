//! A chat request's `messages`: roles, text contents, and the tool calls and results of
//! earlier turns.

use super::request::type_name;
use super::tools::history_calls;
use crate::serve::error::ApiError;
use inference_guest::tokenizer::ChatMessage;
use serde_json::Value;

/// The conversation of a `/v1/chat/completions` body's `messages` (non-empty).
pub fn parse_messages(v: Option<&Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let messages = match v {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                "messages",
                "`messages` must not be empty",
            ));
        }
        Some(v) => {
            return Err(ApiError::invalid(
                "messages",
                format!("`messages` must be an array, not {}", type_name(v)),
            ));
        }
        None => return Err(ApiError::invalid("messages", "`messages` is required")),
    };
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| message(i, m))
        .collect()
}

fn message(i: usize, msg: &Value) -> Result<ChatMessage, ApiError> {
    let bad = |what: &str| ApiError::invalid("messages", format!("`messages[{i}]`: {what}"));
    let Value::Object(o) = msg else {
        return Err(bad("must be an object with `role` and `content`"));
    };
    let role = match o.get("role") {
        Some(Value::String(r)) if r == "developer" => "system",
        Some(Value::String(r))
            if matches!(r.as_str(), "system" | "user" | "assistant" | "tool") =>
        {
            r.as_str()
        }
        Some(Value::String(r)) => {
            return Err(bad(&format!(
                "role {r:?} is not system, developer, user, assistant or tool"
            )));
        }
        _ => return Err(bad("`role` must be a string")),
    };
    let tool_calls = match role {
        "assistant" => history_calls(i, o.get("tool_calls"))?,
        _ => Vec::new(),
    };
    let content = match o.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut s = String::new();
            for p in parts {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => s.push_str(t),
                    _ => return Err(bad("only text content parts are supported")),
                }
            }
            s
        }
        Some(Value::Null) | None if role == "assistant" => String::new(),
        _ => return Err(bad("`content` must be a string or an array of text parts")),
    };
    let mut m = ChatMessage::new(role, content);
    m.tool_calls = tool_calls;
    Ok(m)
}
