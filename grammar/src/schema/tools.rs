//! Tool calls as a grammar: the exact text a tool-trained chat template asks the model to
//! write for a call (see `inference_guest::tokenizer::ToolFormat`), with each function's
//! arguments constrained by its parameters' schema, so that every call the model makes
//! names a declared function and its arguments are valid for it.

use super::{Prims, compile_document};
use crate::error::SchemaError;
use crate::json::Json;
use crate::rules::{Builder, Expr, Grammar};
use alloc::format;
use alloc::vec::Vec;

/// Calls in one answer at most: a model looping on calls stops at this many.
const MAX_CALLS: u32 = 16;

/// How the model's template writes a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallStyle {
    /// `<tool_call>\n{"name": …, "arguments": …}\n</tool_call>`, one block per call.
    Hermes,
    /// `{"name": …, "parameters": …}`, calls `; `-separated (Llama 3.1).
    Llama3Json,
}

impl CallStyle {
    /// The text that opens the calls: a lazily constrained answer (`tool_choice: auto`) is
    /// free until it writes this, and constrained from it on.
    pub fn trigger(self) -> &'static str {
        match self {
            CallStyle::Hermes => "<tool_call>",
            CallStyle::Llama3Json => "{",
        }
    }

    /// Whether the trigger counts only at the start of the answer (a Llama 3 call is the
    /// whole answer; prose may hold braces).
    pub fn trigger_at_start(self) -> bool {
        self == CallStyle::Llama3Json
    }
}

/// A function the model may call.
pub struct ToolSchema<'a> {
    /// The function's name.
    pub name: &'a str,
    /// Its parameters' JSON schema.
    pub parameters: &'a Json,
}

/// A grammar for one or more calls (at most one unless `parallel`) of `tools` in `style`,
/// starting with the style's trigger.
pub fn tool_calls_grammar(
    style: CallStyle,
    tools: &[ToolSchema<'_>],
    parallel: bool,
) -> Result<Grammar, SchemaError> {
    let mut b = Builder::new();
    let prims = Prims::new(&mut b)?;
    let key = match style {
        CallStyle::Hermes => "arguments",
        CallStyle::Llama3Json => "parameters",
    };
    let mut calls = Vec::with_capacity(tools.len());
    for t in tools {
        let name = Json::Str(t.name.into());
        let mut head = alloc::string::String::from("{\"name\": ");
        name.to_compact(&mut head);
        head.push_str(&format!(", \"{key}\": "));
        let (next, args) = compile_document(b, prims, t.parameters)?;
        b = next;
        calls.push(Expr::Seq(alloc::vec![
            Expr::lit(&head),
            args,
            Expr::lit("}")
        ]));
    }
    let call = Expr::Rule(b.rule("call", &Expr::Alt(calls))?);
    let (one, sep) = match style {
        CallStyle::Hermes => (
            Expr::Seq(alloc::vec![
                Expr::lit("<tool_call>\n"),
                call,
                Expr::lit("\n</tool_call>")
            ]),
            "\n",
        ),
        CallStyle::Llama3Json => (call, "; "),
    };
    let one = Expr::Rule(b.rule("one_call", &one)?);
    let more = if parallel { MAX_CALLS - 1 } else { 0 };
    let root = Expr::Seq(alloc::vec![
        one.clone(),
        Expr::repeat(Expr::Seq(alloc::vec![Expr::lit(sep), one]), 0, Some(more)),
    ]);
    let start = b.rule("root", &root)?;
    Ok(b.finish(start)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matcher::Matcher;
    use alloc::sync::Arc;

    fn accepts(g: &Arc<Grammar>, text: &str) -> bool {
        let mut m = Matcher::new(g.clone());
        m.accept_bytes(text.as_bytes()) && m.is_complete()
    }

    #[test]
    fn calls_follow_each_functions_schema() {
        let weather = Json::parse(
            r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"],"additionalProperties":false}"#,
        )
        .unwrap();
        let none = Json::parse(r#"{"type":"object","properties":{}}"#).unwrap();
        let tools = [
            ToolSchema {
                name: "get_weather",
                parameters: &weather,
            },
            ToolSchema {
                name: "get_time",
                parameters: &none,
            },
        ];
        let one = Arc::new(tool_calls_grammar(CallStyle::Hermes, &tools, false).unwrap());
        let call = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
        assert!(accepts(&one, call));
        assert!(accepts(
            &one,
            "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>"
        ));
        // An undeclared function, a missing argument, a second call without `parallel`.
        assert!(!accepts(
            &one,
            "<tool_call>\n{\"name\": \"rm\", \"arguments\": {}}\n</tool_call>"
        ));
        assert!(!accepts(
            &one,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>"
        ));
        assert!(!accepts(&one, &alloc::format!("{call}\n{call}")));
        let many = Arc::new(tool_calls_grammar(CallStyle::Hermes, &tools, true).unwrap());
        assert!(accepts(&many, &alloc::format!("{call}\n{call}")));
        let llama = Arc::new(tool_calls_grammar(CallStyle::Llama3Json, &tools, true).unwrap());
        assert!(accepts(
            &llama,
            "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}; {\"name\": \"get_time\", \"parameters\": {}}"
        ));
        assert!(!accepts(
            &llama,
            "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}"
        ));
    }

    #[test]
    fn a_bad_parameters_schema_is_refused() {
        let bad = Json::parse(r#"{"type":"string","pattern":"a+"}"#).unwrap();
        let tools = [ToolSchema {
            name: "f",
            parameters: &bad,
        }];
        assert!(matches!(
            tool_calls_grammar(CallStyle::Hermes, &tools, false),
            Err(SchemaError::Unsupported { .. })
        ));
    }
}
