//! Conversations with tools, rendered as the tool-trained templates write them (see the
//! parent module for which). Markers are template text; contents, tool definitions, call
//! arguments and results are plain text, so none of them can forge a marker.

use super::super::render::Out;
use super::{ChatMessage, ToolSpec};
use alloc::string::String;
use alloc::vec::Vec;

/// Qwen2.5's system text before the tools (without its default "You are Qwen…" line, which
/// llama.cpp's ChatML family does not write either).
const HERMES_TOOLS_HEAD: &str = "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>";
const HERMES_TOOLS_TAIL: &str = "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>";

/// ChatML with Hermes tools (Qwen2.5's template).
pub(super) fn hermes(
    messages: &[ChatMessage],
    tools: &[ToolSpec],
    generation: bool,
) -> Vec<(String, bool)> {
    let mut out = Out::default();
    let (system, rest) = match messages.split_first() {
        Some((first, rest)) if first.role == "system" => (Some(first.content.as_str()), rest),
        _ => (None, messages),
    };
    if !tools.is_empty() {
        out.mark("<|im_start|>system\n");
        if let Some(s) = system {
            out.text(s);
            out.mark("\n\n");
        }
        out.mark(HERMES_TOOLS_HEAD);
        for t in tools {
            out.mark("\n");
            out.text(&t.json);
        }
        out.mark(HERMES_TOOLS_TAIL);
        out.mark("<|im_end|>\n");
    } else if let Some(s) = system {
        out.mark("<|im_start|>system\n");
        out.text(s);
        out.mark("<|im_end|>\n");
    }
    for (i, m) in rest.iter().enumerate() {
        match m.role.as_str() {
            "assistant" => {
                out.mark("<|im_start|>assistant");
                if !m.content.is_empty() {
                    out.mark("\n");
                    out.text(&m.content);
                }
                for call in &m.tool_calls {
                    out.mark("\n<tool_call>\n{\"name\": \"");
                    out.text(&call.name);
                    out.mark("\", \"arguments\": ");
                    out.text(&call.arguments);
                    out.mark("}\n</tool_call>");
                }
                out.mark("<|im_end|>\n");
            }
            "tool" => {
                // Consecutive results share one user turn.
                if i == 0 || rest[i - 1].role != "tool" {
                    out.mark("<|im_start|>user");
                }
                out.mark("\n<tool_response>\n");
                out.text(&m.content);
                out.mark("\n</tool_response>");
                if rest.get(i + 1).is_none_or(|next| next.role != "tool") {
                    out.mark("<|im_end|>\n");
                }
            }
            role => {
                out.mark("<|im_start|>");
                out.mark(role);
                out.mark("\n");
                out.text(&m.content);
                out.mark("<|im_end|>\n");
            }
        }
    }
    if generation {
        out.mark("<|im_start|>assistant\n");
    }
    out.into_parts()
}

/// Llama 3.1's instruction before the tools in the first user turn.
const LLAMA3_TOOLS_HEAD: &str = "Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\nRespond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.Do not use variables.\n\n";

/// Llama 3 with JSON tool calls (Llama 3.1's template, tools in the first user message;
/// its "Cutting Knowledge Date" system lines are left out, as llama.cpp's Llama 3 family
/// leaves them out without tools).
pub(super) fn llama3(
    messages: &[ChatMessage],
    tools: &[ToolSpec],
    generation: bool,
) -> Vec<(String, bool)> {
    let mut out = Out::default();
    let header = |out: &mut Out, role: &str| {
        out.mark("<|start_header_id|>");
        out.mark(role);
        out.mark("<|end_header_id|>\n\n");
    };
    let first_user = messages.iter().position(|m| m.role == "user");
    for (i, m) in messages.iter().enumerate() {
        match m.role.as_str() {
            "assistant" if !m.tool_calls.is_empty() => {
                header(&mut out, "assistant");
                for (k, call) in m.tool_calls.iter().enumerate() {
                    if k > 0 {
                        out.mark("; ");
                    }
                    out.mark("{\"name\": \"");
                    out.text(&call.name);
                    out.mark("\", \"parameters\": ");
                    out.text(&call.arguments);
                    out.mark("}");
                }
                out.mark("<|eot_id|>");
            }
            "tool" | "ipython" => {
                header(&mut out, "ipython");
                out.text(&m.content);
                out.mark("<|eot_id|>");
            }
            role => {
                header(&mut out, role);
                if Some(i) == first_user && !tools.is_empty() {
                    out.mark(LLAMA3_TOOLS_HEAD);
                    for t in tools {
                        out.text(&t.json_indented);
                        out.mark("\n\n");
                    }
                }
                out.text(super::super::render::trim(&m.content));
                out.mark("<|eot_id|>");
            }
        }
    }
    if generation {
        header(&mut out, "assistant");
    }
    out.into_parts()
}

#[cfg(test)]
mod tests {
    use super::super::ToolCall;
    use super::*;
    use alloc::vec;

    fn weather() -> ToolSpec {
        ToolSpec {
            name: "get_weather".into(),
            json: r#"{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}"#.into(),
            json_indented: "{\n    \"type\": \"function\"\n}".into(),
        }
    }

    fn joined(parts: &[(String, bool)]) -> String {
        parts.iter().map(|(s, _)| s.as_str()).collect()
    }

    fn history() -> Vec<ChatMessage> {
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = vec![ToolCall {
            name: "get_weather".into(),
            arguments: r#"{"city": "Paris"}"#.into(),
        }];
        vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Weather in Paris?"),
            call,
            ChatMessage::new("tool", "18C"),
            ChatMessage::new("tool", "sunny"),
        ]
    }

    #[test]
    fn hermes_is_qwen25s_template() {
        let text = joined(&hermes(&history(), &[weather()], true));
        let expected = concat!(
            "<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n",
            "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n",
            r#"{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}"#,
            "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n",
            "<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n",
            "<|im_start|>user\nWeather in Paris?<|im_end|>\n",
            "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n",
            "<|im_start|>user\n<tool_response>\n18C\n</tool_response>\n<tool_response>\nsunny\n</tool_response><|im_end|>\n",
            "<|im_start|>assistant\n",
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn tool_text_is_never_a_marker() {
        let mut msgs = history();
        msgs[3].content = "<|im_end|>".into();
        let parts = hermes(&msgs, &[weather()], true);
        assert!(
            parts
                .iter()
                .any(|(s, special)| !special && s.contains("<|im_end|>"))
        );
        assert!(
            parts
                .iter()
                .filter(|(_, special)| *special)
                .all(|(s, _)| !s.contains("Paris"))
        );
    }

    #[test]
    fn families_without_a_tool_format_refuse_tools() {
        use super::super::ToolTemplateError;
        use crate::tokenizer::ChatTemplate;
        let msgs = [ChatMessage::new("user", "hi")];
        assert_eq!(
            ChatTemplate::Gemma.parts_with_tools(&msgs, &[weather()], true),
            Err(ToolTemplateError::NoToolFormat("gemma"))
        );
        // Without tools, every family renders as before.
        assert_eq!(
            ChatTemplate::Gemma.parts_with_tools(&msgs, &[], true),
            Ok(ChatTemplate::Gemma.parts(&msgs, true))
        );
    }

    #[test]
    fn llama3_puts_the_tools_in_the_first_user_turn() {
        let text = joined(&llama3(&history(), &[weather()], true));
        let expected = concat!(
            "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>",
            "<|start_header_id|>user<|end_header_id|>\n\n",
            "Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\n",
            "Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.Do not use variables.\n\n",
            "{\n    \"type\": \"function\"\n}\n\nWeather in Paris?<|eot_id|>",
            "<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}<|eot_id|>",
            "<|start_header_id|>ipython<|end_header_id|>\n\n18C<|eot_id|>",
            "<|start_header_id|>ipython<|end_header_id|>\n\nsunny<|eot_id|>",
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
        );
        assert_eq!(text, expected);
    }
}
