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
    /// `[TOOL_CALLS][{"name": …, "arguments": …}, …]`, a space after the marker allowed
    /// (Mistral v3 writes one, Nemo and v7 none).
    Mistral,
}

impl CallStyle {
    /// The text that opens the calls: a lazily constrained answer (`tool_choice: auto`) is
    /// free until it writes this, and constrained from it on.
    pub fn trigger(self) -> &'static str {
        match self {
            CallStyle::Hermes => "<tool_call>",
            CallStyle::Llama3Json => "{",
            CallStyle::Mistral => "[TOOL_CALLS]",
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

/// What an answer that makes no call must be instead: a `response_format` beside `tools`.
#[derive(Debug, Clone, Copy)]
pub enum NoCallAnswer<'a> {
    /// Any JSON object.
    JsonObject,
    /// One JSON value of this schema.
    Schema(&'a Json),
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
    let (mut b, calls) = calls_expr(b, prims, style, tools, parallel)?;
    let start = b.rule("root", &calls)?;
    Ok(b.finish(start)?)
}

/// A grammar for the calls of [`tool_calls_grammar`] or, instead, `answer`: the answer is
/// constrained from its first token either way, so it needs no trigger (where a free answer
/// is prose, only the calls are constrained, from the trigger on).
pub fn tool_calls_or_answer_grammar(
    style: CallStyle,
    tools: &[ToolSchema<'_>],
    parallel: bool,
    answer: NoCallAnswer<'_>,
) -> Result<Grammar, SchemaError> {
    let mut b = Builder::new();
    let prims = Prims::new(&mut b)?;
    let (mut b, calls) = calls_expr(b, prims, style, tools, parallel)?;
    let (mut b, value) = match answer {
        NoCallAnswer::JsonObject => {
            let obj = prims.object_of(&mut b, Expr::Rule(prims.value))?;
            (b, obj)
        }
        NoCallAnswer::Schema(schema) => compile_document(b, prims, schema)?,
    };
    // Neither alternative takes leading whitespace: the answer's first token chooses between
    // them, and a model sampled freely would otherwise mostly choose one of the many
    // whitespace tokens, which only the JSON allows, and hardly ever call.
    let start = b.rule("root", &Expr::Alt(alloc::vec![calls, value]))?;
    Ok(b.finish(start)?)
}

/// The calls' expression, its rules added to `b`.
fn calls_expr(
    mut b: Builder,
    prims: Prims,
    style: CallStyle,
    tools: &[ToolSchema<'_>],
    parallel: bool,
) -> Result<(Builder, Expr), SchemaError> {
    let key = match style {
        CallStyle::Hermes | CallStyle::Mistral => "arguments",
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
    // What opens and closes the calls, each call as written, and what parts two.
    let (open, close, one, sep) = match style {
        CallStyle::Hermes => (
            Expr::Seq(alloc::vec![]),
            "",
            Expr::Seq(alloc::vec![
                Expr::lit("<tool_call>\n"),
                call,
                Expr::lit("\n</tool_call>")
            ]),
            "\n",
        ),
        CallStyle::Llama3Json => (Expr::Seq(alloc::vec![]), "", call, "; "),
        CallStyle::Mistral => (
            Expr::Seq(alloc::vec![
                Expr::lit("[TOOL_CALLS]"),
                Expr::opt(Expr::lit(" ")),
                Expr::lit("["),
            ]),
            "]",
            call,
            ", ",
        ),
    };
    let one = Expr::Rule(b.rule("one_call", &one)?);
    let more = if parallel { MAX_CALLS - 1 } else { 0 };
    let calls = Expr::Seq(alloc::vec![
        open,
        one.clone(),
        Expr::repeat(Expr::Seq(alloc::vec![Expr::lit(sep), one]), 0, Some(more)),
        Expr::lit(close),
    ]);
    let calls = Expr::Rule(b.rule("calls", &calls)?);
    Ok((b, calls))
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
        let mistral = Arc::new(tool_calls_grammar(CallStyle::Mistral, &tools, true).unwrap());
        let two = "[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}, {\"name\": \"get_time\", \"arguments\": {}}]";
        assert!(accepts(&mistral, &alloc::format!("[TOOL_CALLS]{two}")));
        assert!(accepts(&mistral, &alloc::format!("[TOOL_CALLS] {two}")));
        assert!(!accepts(&mistral, two));
        let single = Arc::new(tool_calls_grammar(CallStyle::Mistral, &tools, false).unwrap());
        assert!(!accepts(&single, &alloc::format!("[TOOL_CALLS]{two}")));
        assert!(accepts(
            &single,
            "[TOOL_CALLS][{\"name\": \"get_time\", \"arguments\": {}}]"
        ));
    }

    #[test]
    fn calls_or_the_response_schema() {
        let weather = Json::parse(
            r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"],"additionalProperties":false}"#,
        )
        .unwrap();
        let tools = [ToolSchema {
            name: "get_weather",
            parameters: &weather,
        }];
        let answer = Json::parse(
            r#"{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"]}"#,
        )
        .unwrap();
        for style in [CallStyle::Hermes, CallStyle::Llama3Json, CallStyle::Mistral] {
            let g = Arc::new(
                tool_calls_or_answer_grammar(style, &tools, false, NoCallAnswer::Schema(&answer))
                    .unwrap(),
            );
            assert!(accepts(&g, "{\"n\": 3}"), "{style:?}");
            assert!(
                !accepts(&g, " {\"n\": 3}"),
                "no leading whitespace: {style:?}"
            );
            let call = match style {
                CallStyle::Hermes => {
                    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"A\"}}\n</tool_call>"
                }
                CallStyle::Llama3Json => {
                    "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"A\"}}"
                }
                CallStyle::Mistral => {
                    "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"A\"}}]"
                }
            };
            assert!(accepts(&g, call), "{style:?}");
            assert!(!accepts(&g, "{\"m\": 3}"), "{style:?}");
            assert!(!accepts(&g, "Sure."), "{style:?}");
        }
        let call = |style| {
            Arc::new(
                tool_calls_or_answer_grammar(style, &tools, false, NoCallAnswer::JsonObject)
                    .unwrap(),
            )
        };
        assert!(accepts(
            &call(CallStyle::Hermes),
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>"
        ));
        assert!(accepts(
            &call(CallStyle::Llama3Json),
            "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}"
        ));
        assert!(accepts(
            &call(CallStyle::Mistral),
            "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}]"
        ));
        assert!(accepts(&call(CallStyle::Mistral), "{\"any\": [1]}"));
        assert!(!accepts(&call(CallStyle::Mistral), "[1]"));
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
