//! The calls in a model's answer, as OpenAI's `tool_calls`: whole, or while the answer
//! streams (prose sent as it comes, what may become a call held back until it is known).

use super::{ToolChoice, Tools};
use inference_guest::tokenizer::ToolFormat;
use serde_json::{Value, json};

/// An answer with tools, split.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerCalls {
    /// The prose outside the calls (`None` when there is none).
    pub content: Option<String>,
    /// OpenAI `tool_calls` entries (`id`, `type`, `function.name`, `function.arguments`).
    pub calls: Vec<Value>,
}

/// The call in one JSON body the model wrote, if it names a declared tool.
fn call(format: ToolFormat, tools: &Tools, body: &str) -> Option<(String, Value)> {
    let Ok(Value::Object(mut o)) = serde_json::from_str::<Value>(body) else {
        return None;
    };
    let name = o.get("name")?.as_str()?.to_string();
    if !tools.defs.iter().any(|d| d.spec.name == name) {
        return None;
    }
    let key = match format {
        ToolFormat::Hermes | ToolFormat::Mistral => "arguments",
        ToolFormat::Llama3Json => "parameters",
    };
    let args = match o.remove(key) {
        None => json!({}),
        Some(a @ Value::Object(_)) => a,
        Some(_) => return None,
    };
    Some((name, args))
}

/// `text`'s calls as OpenAI `tool_calls` (ids `{id_prefix}_{k}`), or `None` when it made
/// none or one is not a call of a declared tool (then the whole text is the answer).
pub fn answer_calls(
    format: ToolFormat,
    tools: &Tools,
    text: &str,
    id_prefix: &str,
) -> Option<AnswerCalls> {
    if tools.choice == ToolChoice::None {
        return None;
    }
    let reply = format.parse(text);
    if reply.calls.is_empty() {
        return None;
    }
    let mut bodies = reply.calls.as_slice();
    // An answer cut by `max_tokens` in the middle of a call keeps the calls before it.
    if let [done @ .., last] = bodies
        && !done.is_empty()
        && call(format, tools, last).is_none()
    {
        bodies = done;
    }
    let mut found = bodies
        .iter()
        .map(|body| call(format, tools, body))
        .collect::<Option<Vec<_>>>()?;
    if !tools.parallel {
        found.truncate(1);
    }
    let calls = found
        .into_iter()
        .enumerate()
        .map(|(k, (name, args))| {
            json!({
                "id": format!("{id_prefix}_{k}"),
                "type": "function",
                "function": {"name": name, "arguments": args.to_string()},
            })
        })
        .collect();
    Some(AnswerCalls {
        content: Some(reply.content).filter(|c| !c.is_empty()),
        calls,
    })
}

/// A streaming answer with tools: the prose that is certainly not a call goes out as it
/// comes; the rest waits for the end.
#[derive(Debug)]
pub struct ToolStream {
    format: ToolFormat,
    text: String,
    sent: usize,
}

impl ToolStream {
    pub fn new(format: ToolFormat) -> Self {
        Self {
            format,
            text: String::new(),
            sent: 0,
        }
    }

    /// Takes the next piece of the answer; the content that can be sent now.
    pub fn push(&mut self, delta: &str) -> Option<String> {
        self.text.push_str(delta);
        let held = self.format.held_from(&self.text).max(self.sent);
        let out = self.text[self.sent..held].to_string();
        self.sent = held;
        Some(out).filter(|s| !s.is_empty())
    }

    /// At the end: the content still held back (when it held no call) and the calls.
    pub fn finish(self, tools: &Tools, id_prefix: &str) -> (Option<String>, Vec<Value>) {
        match answer_calls(self.format, tools, &self.text, id_prefix) {
            Some(a) => (None, a.calls),
            None => (
                Some(self.text[self.sent..].to_string()).filter(|s| !s.is_empty()),
                Vec::new(),
            ),
        }
    }
}

/// A whole chat answer `v` with its calls: the message's `tool_calls`, its content only the
/// prose around them (`null` when none), and `finish_reason` `tool_calls`.
pub fn into_full(v: &mut Value, calls: AnswerCalls) {
    let choice = &mut v["choices"][0];
    choice["message"]["content"] = calls.content.map_or(Value::Null, Value::String);
    choice["message"]["tool_calls"] = Value::Array(calls.calls);
    choice["finish_reason"] = "tool_calls".into();
}

/// The `delta.tool_calls` of a stream chunk that carries `calls` whole, each with its
/// `index` (the streaming clients accumulate deltas by index).
pub fn deltas(calls: Vec<Value>) -> Value {
    Value::Array(
        calls
            .into_iter()
            .enumerate()
            .map(|(k, mut c)| {
                c["index"] = k.into();
                c
            })
            .collect(),
    )
}
