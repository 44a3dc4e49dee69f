//! OpenAI tool calling: `tools`, `tool_choice` and `parallel_tool_calls` in a request, the
//! `tool` role and assistant `tool_calls` in its history, and the calls found in an answer.
//!
//! The model sees the tools in its own family's format (`inference_guest`'s
//! `ToolFormat`); a model whose family has none is refused, never served without its tools.

mod answer;
mod python_json;

pub use answer::{AnswerCalls, ToolStream, answer_calls, deltas, into_full};
pub use python_json::compact as python_json_compact;

use super::request::{field, type_name};
use crate::serve::error::ApiError;
use inference_guest::tokenizer::{ToolCall, ToolSpec};
use serde_json::{Map, Value};

/// Most tools one request may declare (llama.cpp's server has no limit; 128 is OpenAI's).
pub const MAX_TOOLS: usize = 128;

/// Whether and which function the model must call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model answers in prose; the tools are not shown to it.
    None,
    /// The model chooses between prose and calls.
    Auto,
    /// The model must call one of the tools.
    Required,
    /// The model must call this one.
    Function(String),
}

/// A declared tool: what the template shows and the schema its arguments must follow.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDef {
    pub spec: ToolSpec,
    /// The arguments' JSON schema (`{"type": "object"}` when the client gave none).
    pub parameters: Value,
}

/// A request's tools.
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    pub defs: Vec<ToolDef>,
    pub choice: ToolChoice,
    /// `parallel_tool_calls`: more than one call per answer (OpenAI's default).
    pub parallel: bool,
}

impl Tools {
    /// The tools the template shows (none for `tool_choice: "none"`).
    pub fn shown(&self) -> Vec<ToolSpec> {
        match self.choice {
            ToolChoice::None => Vec::new(),
            _ => self.defs.iter().map(|d| d.spec.clone()).collect(),
        }
    }
}

fn function_name(v: Option<&Value>, at: &str) -> Result<String, ApiError> {
    let bad = || {
        ApiError::invalid(
            "tools",
            format!("{at}: `name` must be 1 to 64 letters, digits, `_` or `-`"),
        )
    };
    let name = v.and_then(Value::as_str).ok_or_else(bad)?;
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok { Ok(name.to_string()) } else { Err(bad()) }
}

fn tool_def(i: usize, v: &Value) -> Result<ToolDef, ApiError> {
    let at = format!("`tools[{i}]`");
    let bad = |what: &str| ApiError::invalid("tools", format!("{at}: {what}"));
    let Value::Object(o) = v else {
        return Err(bad("must be an object"));
    };
    match o.get("type").and_then(Value::as_str) {
        Some("function") => {}
        Some(t) => {
            return Err(bad(&format!(
                "type {t:?} is not supported (only \"function\")"
            )));
        }
        None => return Err(bad("`type` must be \"function\"")),
    }
    let Some(Value::Object(f)) = o.get("function") else {
        return Err(bad("`function` must be an object"));
    };
    let name = function_name(f.get("name"), &at)?;
    if let Some(d) = field(f, "description")
        && !d.is_string()
    {
        return Err(bad("`function.description` must be a string"));
    }
    let parameters = match field(f, "parameters") {
        None => serde_json::json!({"type": "object", "properties": {}}),
        Some(p @ Value::Object(_)) => {
            super::structured::checked_schema(p, "tools")
                .map_err(|e| bad(&format!("`function.parameters`: {e}")))?;
            p.clone()
        }
        Some(p) => {
            return Err(bad(&format!(
                "`function.parameters` must be a JSON schema object, not {}",
                type_name(p)
            )));
        }
    };
    Ok(ToolDef {
        spec: ToolSpec {
            name,
            json: python_json::compact(v),
            json_indented: python_json::indented(v, 4),
        },
        parameters,
    })
}

fn tool_choice(m: &Map<String, Value>, defs: &[ToolDef]) -> Result<ToolChoice, ApiError> {
    let bad = |what: String| ApiError::invalid("tool_choice", what);
    let choice = match field(m, "tool_choice") {
        None => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            _ => {
                return Err(bad(format!(
                    "`tool_choice` {s:?} is not none, auto, required or a function"
                )));
            }
        },
        Some(Value::Object(o)) => {
            let f = o.get("function").and_then(Value::as_object);
            let name = f.and_then(|f| f.get("name")).and_then(Value::as_str);
            match (o.get("type").and_then(Value::as_str), name) {
                (Some("function"), Some(n)) => ToolChoice::Function(n.to_string()),
                _ => {
                    return Err(bad(
                        "`tool_choice` must be {\"type\": \"function\", \"function\": {\"name\": …}}"
                            .into(),
                    ));
                }
            }
        }
        Some(v) => {
            return Err(bad(format!(
                "`tool_choice` must be a string or an object, not {}",
                type_name(v)
            )));
        }
    };
    if let ToolChoice::Function(n) = &choice
        && !defs.iter().any(|d| &d.spec.name == n)
    {
        return Err(bad(format!(
            "`tool_choice` names {n:?}, which is not in `tools`"
        )));
    }
    if matches!(choice, ToolChoice::Required | ToolChoice::Function(_)) && defs.is_empty() {
        return Err(bad(
            "`tool_choice` requires a call, but `tools` is empty".into()
        ));
    }
    Ok(choice)
}

/// The request's tools, or `None` when it declares none (and asks for no call).
pub fn parse_tools(m: &Map<String, Value>) -> Result<Option<Tools>, ApiError> {
    for old in ["functions", "function_call"] {
        if field(m, old).is_some() {
            return Err(ApiError::invalid(
                if old == "functions" {
                    "functions"
                } else {
                    "function_call"
                },
                format!(
                    "`{old}` is deprecated by OpenAI and not supported here; use `tools` and `tool_choice`"
                ),
            ));
        }
    }
    let defs = match field(m, "tools") {
        None => Vec::new(),
        Some(Value::Array(a)) if a.len() <= MAX_TOOLS => a
            .iter()
            .enumerate()
            .map(|(i, v)| tool_def(i, v))
            .collect::<Result<Vec<_>, _>>()?,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                "tools",
                format!("at most {MAX_TOOLS} tools per request"),
            ));
        }
        Some(v) => {
            return Err(ApiError::invalid(
                "tools",
                format!("`tools` must be an array, not {}", type_name(v)),
            ));
        }
    };
    for (i, d) in defs.iter().enumerate() {
        if defs[..i].iter().any(|e| e.spec.name == d.spec.name) {
            return Err(ApiError::invalid(
                "tools",
                format!("two tools are named {:?}", d.spec.name),
            ));
        }
    }
    let choice = tool_choice(m, &defs)?;
    let parallel = match field(m, "parallel_tool_calls") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(ApiError::invalid(
                "parallel_tool_calls",
                format!(
                    "`parallel_tool_calls` must be a boolean, not {}",
                    type_name(v)
                ),
            ));
        }
    };
    if defs.is_empty() {
        return Ok(None);
    }
    Ok(Some(Tools {
        defs,
        choice,
        parallel,
    }))
}

/// An assistant message's `tool_calls` as the template writes them (arguments that are a
/// JSON object written as the template's `tojson` would).
pub fn history_calls(i: usize, v: Option<&Value>) -> Result<Vec<ToolCall>, ApiError> {
    let bad =
        |what: &str| ApiError::invalid("messages", format!("`messages[{i}].tool_calls`: {what}"));
    let calls = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) if a.len() <= MAX_TOOLS => a,
        Some(_) => return Err(bad("must be an array of at most 128 calls")),
    };
    calls
        .iter()
        .map(|c| {
            let f = c
                .get("function")
                .and_then(Value::as_object)
                .ok_or_else(|| bad("each call needs a `function` object"))?;
            let name = function_name(f.get("name"), &format!("`messages[{i}].tool_calls`"))
                .map_err(|_| bad("a call's `function.name` is not a function name"))?;
            let arguments = match f.get("arguments") {
                Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
                    Ok(v) => python_json::compact(&v),
                    // Not JSON: shown as the client sent it.
                    Err(_) => s.clone(),
                },
                Some(v @ Value::Object(_)) => python_json::compact(v),
                _ => return Err(bad("a call's `function.arguments` must be a JSON string")),
            };
            Ok(ToolCall { name, arguments })
        })
        .collect()
}

#[cfg(test)]
mod tests;
