//! A chat that uses tools on a sealed model, whose template only the guest reads: the
//! messages go as chat turns (results as `tool` turns), the tools and earlier calls in a
//! `TOOL_CHAT` record, and the constraint leaves the call style to the template
//! (`feature::GUEST_TOOLS`). The guest renders it all in the model's tool format; the
//! worker asks it which format that is (`GetToolStyle`) so the calls can be read back.

use super::error::ApiError;
use super::openai::tools::{ToolChoice, Tools};
use super::tool_prompt::{ToolPrompt, constraint};
use inference_guest::tokenizer::{ChatMessage, ToolFormat};
use virtio_llm::wire::options::{CallStyle, GenerateOptions, ToolChat, ToolDef, TurnCall};
use virtio_llm::wire::request::{ChatRole, ChatTurn, Prompt};

/// The guest's prompt, tool record and constraint for `messages` with `tools`.
pub fn encode(messages: &[ChatMessage], tools: Option<&Tools>) -> Result<ToolPrompt, ApiError> {
    let turns = messages
        .iter()
        .map(|m| ChatTurn {
            role: role(&m.role),
            content: m.content.clone(),
        })
        .collect();
    let chat = tool_chat(messages, tools)?;
    let constraint = match tools {
        Some(t) if t.choice != ToolChoice::None => {
            // The schemas and flags are the host's to set; only the style is the guest's.
            let mut c = constraint(t, ToolFormat::Hermes)?;
            c.style = CallStyle::Template;
            Some(c)
        }
        _ => None,
    };
    Ok(ToolPrompt {
        prompt: Prompt::Chat(turns),
        constraint,
        // The worker learns it from the guest before the answer starts.
        format: None,
        chat,
    })
}

fn role(name: &str) -> ChatRole {
    match name {
        "system" => ChatRole::System,
        "assistant" => ChatRole::Assistant,
        "tool" => ChatRole::Tool,
        _ => ChatRole::User,
    }
}

/// The tools the template shows and the calls of earlier assistant turns, within the
/// protocol's bounds; `None` when there are neither.
fn tool_chat(
    messages: &[ChatMessage],
    tools: Option<&Tools>,
) -> Result<Option<ToolChat>, ApiError> {
    let shown = tools.map(Tools::shown).unwrap_or_default();
    let chat = ToolChat {
        tools: shown
            .into_iter()
            .map(|s| ToolDef {
                name: s.name,
                json: s.json,
                json_indented: s.json_indented,
            })
            .collect(),
        calls: messages
            .iter()
            .enumerate()
            .flat_map(|(i, m)| {
                m.tool_calls.iter().map(move |c| TurnCall {
                    turn: i as u32,
                    name: c.name.clone(),
                    arguments: c.arguments.clone(),
                })
            })
            .collect(),
    };
    if chat.tools.is_empty() && chat.calls.is_empty() {
        return Ok(None);
    }
    let options = GenerateOptions {
        tool_chat: Some(chat),
        ..GenerateOptions::default()
    };
    options.validate().map_err(|e| {
        ApiError::invalid(
            "tools",
            format!(
                "the tools and earlier tool calls do not fit one request to the sealed \
                 model's guest ({e}): declare fewer or shorter tools, or trim the history"
            ),
        )
    })?;
    Ok(options.tool_chat)
}

#[cfg(test)]
mod tests {
    use super::*;
    use inference_guest::tokenizer::{ToolCall, ToolSpec};
    use serde_json::json;

    fn tools(choice: ToolChoice) -> Tools {
        Tools {
            defs: vec![super::super::openai::tools::ToolDef {
                spec: ToolSpec {
                    name: "get_weather".into(),
                    json: r#"{"type": "function"}"#.into(),
                    json_indented: "{\n    \"type\": \"function\"\n}".into(),
                },
                parameters: json!({"type": "object"}),
            }],
            choice,
            parallel: true,
        }
    }

    fn history() -> Vec<ChatMessage> {
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls.push(ToolCall {
            name: "get_weather".into(),
            arguments: r#"{"city": "Paris"}"#.into(),
        });
        vec![
            ChatMessage::new("user", "Weather?"),
            call,
            ChatMessage::new("tool", "sunny"),
        ]
    }

    #[test]
    fn a_sealed_tool_chat_goes_as_turns_a_record_and_the_templates_style() {
        let p = encode(&history(), Some(&tools(ToolChoice::Required))).unwrap();
        let Prompt::Chat(turns) = &p.prompt else {
            panic!("{:?}", p.prompt);
        };
        let roles: Vec<_> = turns.iter().map(|t| t.role).collect();
        assert_eq!(roles, [ChatRole::User, ChatRole::Assistant, ChatRole::Tool]);
        let chat = p.chat.unwrap();
        assert_eq!(chat.tools[0].name, "get_weather");
        assert_eq!(chat.calls[0].turn, 1);
        let c = p.constraint.unwrap();
        assert_eq!(c.style, CallStyle::Template);
        assert!(!c.lazy);
        assert_eq!(p.format, None);
    }

    #[test]
    fn tool_choice_none_shows_no_tools_and_constrains_nothing() {
        let p = encode(&history()[..1], Some(&tools(ToolChoice::None))).unwrap();
        assert_eq!(p.chat, None);
        assert_eq!(p.constraint, None);
    }

    #[test]
    fn tools_beyond_the_record_are_a_400() {
        let mut t = tools(ToolChoice::Auto);
        t.defs[0].spec.json = "x".repeat(70_000);
        let e = encode(&history(), Some(&t)).unwrap_err();
        assert!(e.to_string().contains("do not fit"), "{e}");
    }
}
