//! Tool conversations rendered in the guest (`feature::GUEST_TOOLS`), for a model whose
//! template only the guest reads (a sealed one): a chat prompt's `tool` turns and its
//! `TOOL_CHAT` record (the tools declared, the calls earlier turns made) rendered in the
//! template's own tool format, a `TOOLS` record's "the template's" call style resolved, and
//! `GetToolStyle` answered so the host can read the calls back.

use super::generation::{Refusal, refuse};
use super::{LoadedModel, Service};
use crate::service::text::tokens;
use alloc::string::ToString;
use alloc::vec::Vec;
use inference_guest::tokenizer::{
    ChatMessage, ChatTemplate, Tokenizer, ToolCall, ToolFormat, ToolSpec, ToolTemplateError,
};
use llm_grammar::CallStyle as GrammarStyle;
use virtio_llm::Status;
use virtio_llm::wire::options::{CallStyle, ToolChat};
use virtio_llm::wire::request::{ChatRole, ChatTurn, GenerateRequest, Prompt};
use virtio_llm::wire::tool_chat::{GetToolStyle, ToolStyleReply};

impl LoadedModel {
    /// The request's prompt in tokens: a tool conversation rendered with its tools, any
    /// other prompt as [`LoadedModel::prompt_tokens`] renders it.
    pub(super) fn request_tokens(&mut self, g: &GenerateRequest) -> Result<Vec<u32>, Refusal> {
        if let Prompt::Tokens(ids) = &g.prompt {
            return Ok(ids.clone());
        }
        let template = self.template;
        let tokenizer = self
            .tokenizer()
            .map_err(|e| refuse(Status::BadModel, &e.to_string()))?;
        request_tokens(g, tokenizer, template)
    }
}

/// `g`'s prompt in tokens with `tokenizer` and `template` (text and chat prompts).
pub(super) fn request_tokens(
    g: &GenerateRequest,
    tokenizer: &Tokenizer,
    template: ChatTemplate,
) -> Result<Vec<u32>, Refusal> {
    match (&g.prompt, &g.options.tool_chat) {
        (Prompt::Chat(turns), chat) if chat.is_some() || has_tool_turns(turns) => {
            let (messages, tools) = tool_messages(turns, chat.as_ref());
            tokenizer
                .encode_chat_with_tools(&messages, &tools, template)
                .map_err(|e| no_tool_format(&e))
        }
        (prompt, _) => Ok(tokens(prompt, tokenizer, template)),
    }
}

fn has_tool_turns(turns: &[ChatTurn]) -> bool {
    turns.iter().any(|t| t.role == ChatRole::Tool)
}

/// The conversation as the renderer takes it: each call on its assistant turn.
fn tool_messages(turns: &[ChatTurn], chat: Option<&ToolChat>) -> (Vec<ChatMessage>, Vec<ToolSpec>) {
    let mut messages: Vec<ChatMessage> = turns
        .iter()
        .map(|t| ChatMessage::new(t.role.as_str(), t.content.clone()))
        .collect();
    let Some(chat) = chat else {
        return (messages, Vec::new());
    };
    for c in &chat.calls {
        // The wire checked that `turn` is an assistant turn of this prompt.
        if let Some(m) = messages.get_mut(c.turn as usize) {
            m.tool_calls.push(ToolCall {
                name: c.name.clone(),
                arguments: c.arguments.clone(),
            });
        }
    }
    let tools = chat
        .tools
        .iter()
        .map(|t| ToolSpec {
            name: t.name.clone(),
            json: t.json.clone(),
            json_indented: t.json_indented.clone(),
        })
        .collect();
    (messages, tools)
}

fn no_tool_format(e: &ToolTemplateError) -> Refusal {
    refuse(Status::BadRequest, &e.to_string())
}

/// The grammar's call style for a `TOOLS` record's `style` on a model with `template`.
pub(super) fn grammar_style(
    style: CallStyle,
    template: ChatTemplate,
) -> Result<GrammarStyle, Refusal> {
    let format = match style {
        CallStyle::Hermes => ToolFormat::Hermes,
        CallStyle::Llama3Json => ToolFormat::Llama3Json,
        CallStyle::Mistral => ToolFormat::Mistral,
        CallStyle::Template => template
            .tool_format()
            .ok_or_else(|| no_tool_format(&ToolTemplateError::NoToolFormat(template.name())))?,
    };
    Ok(match format {
        ToolFormat::Hermes => GrammarStyle::Hermes,
        ToolFormat::Llama3Json => GrammarStyle::Llama3Json,
        ToolFormat::Mistral => GrammarStyle::Mistral,
    })
}

impl Service {
    /// The answer to `GetToolStyle`: how the model's template writes a call, if it can.
    pub(super) fn tool_style(&self, q: &GetToolStyle) -> ToolStyleReply {
        let Some(m) = self.models.get(&q.model_id) else {
            return ToolStyleReply {
                model_id: q.model_id,
                status: Status::NoSuchModel,
                style: None,
            };
        };
        ToolStyleReply {
            model_id: q.model_id,
            status: Status::Ok,
            style: m.template.tool_format().map(|f| match f {
                ToolFormat::Hermes => CallStyle::Hermes,
                ToolFormat::Llama3Json => CallStyle::Llama3Json,
                ToolFormat::Mistral => CallStyle::Mistral,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use virtio_llm::wire::options::{ToolDef, TurnCall};

    #[test]
    fn the_templates_style_is_its_own_and_none_is_a_bad_request() {
        let style = |s, t| grammar_style(s, t).map_err(|r| (r.status, r.message));
        assert_eq!(
            style(CallStyle::Template, ChatTemplate::ChatMl).ok(),
            Some(GrammarStyle::Hermes)
        );
        assert_eq!(
            style(CallStyle::Template, ChatTemplate::Llama3).ok(),
            Some(GrammarStyle::Llama3Json)
        );
        // A style the host named is the one used.
        assert_eq!(
            style(CallStyle::Llama3Json, ChatTemplate::ChatMl).ok(),
            Some(GrammarStyle::Llama3Json)
        );
        let Err((status, message)) = style(CallStyle::Template, ChatTemplate::Llama2) else {
            panic!("llama2 has no tool format");
        };
        assert_eq!(status, Status::BadRequest);
        assert!(message.contains("no tool-calling format"), "{message}");
    }

    #[test]
    fn calls_land_on_their_assistant_turns_and_tools_are_shown() {
        let turn = |role, content: &str| ChatTurn {
            role,
            content: content.into(),
        };
        let turns = [
            turn(ChatRole::User, "Weather?"),
            turn(ChatRole::Assistant, ""),
            turn(ChatRole::Tool, "sunny"),
        ];
        let chat = ToolChat {
            tools: vec![ToolDef {
                name: "w".into(),
                json: "{}".into(),
                json_indented: "{\n}".into(),
            }],
            calls: vec![TurnCall {
                turn: 1,
                name: "w".into(),
                arguments: "{\"city\": \"Paris\"}".into(),
            }],
        };
        let (messages, tools) = tool_messages(&turns, Some(&chat));
        let roles: Vec<&str> = messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["user", "assistant", "tool"]);
        assert!(messages[0].tool_calls.is_empty() && messages[2].tool_calls.is_empty());
        assert_eq!(messages[1].tool_calls[0].arguments, "{\"city\": \"Paris\"}");
        assert_eq!(tools[0].json_indented, "{\n}");
        // Rendered as the host renders a plain model's tool chat.
        let parts = ChatTemplate::ChatMl.parts_with_tools(&messages, &tools, true);
        let text: alloc::string::String = parts.unwrap().into_iter().map(|(s, _)| s).collect();
        assert!(
            text.contains("<tool_call>\n{\"name\": \"w\", \"arguments\": {\"city\""),
            "{text}"
        );
        assert!(
            text.contains("<tool_response>\nsunny\n</tool_response>"),
            "{text}"
        );
    }
}
