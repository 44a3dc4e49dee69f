//! Tool calling in the chat template families whose models were trained on a tool format:
//! the tools and the calls and results of earlier turns rendered as those models' own
//! (Jinja) templates write them, and the calls a model writes found again in its text.
//!
//! Three formats cover the tool-trained models FlexServe's families run:
//! - [`ToolFormat::Hermes`], in ChatML: the tools as JSON lines in `<tools>` in the system
//!   turn, each call `<tool_call>\n{"name": …, "arguments": …}\n</tool_call>`, results in a
//!   user turn as `<tool_response>` (Qwen2.5's template, from NousResearch's Hermes 2 Pro);
//! - [`ToolFormat::Llama3Json`], in Llama 3: the tools indented in the first user turn, a
//!   call the whole answer `{"name": …, "parameters": …}`, results in an `ipython` turn
//!   (Llama 3.1's and 3.2's template, its "JSON based tool calling");
//! - [`ToolFormat::Mistral`], in the Mistral v3 and v7 families: `[AVAILABLE_TOOLS]` before
//!   the last user turn, the calls one `[TOOL_CALLS][{"name": …, "arguments": …}, …]` array,
//!   each result in `[TOOL_RESULTS]` (Mistral 7B v0.3's and Mistral Nemo's templates).
//!
//! Other families have no tool format here: a request with tools for them is refused,
//! never rendered without the tools.
//!
//! The tools' JSON is the caller's text, written as the templates' `tojson` writes it
//! (Python's `json.dumps`): this crate has no JSON serializer, and the host, which has one,
//! is the only writer of tools today.

mod mistral;
mod parse;
mod render;

pub use parse::ToolReply;

use super::{ChatMessage, ChatTemplate};
use alloc::string::String;
use alloc::vec::Vec;

/// A function the model may call, as the client declared it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolSpec {
    /// The function's name.
    pub name: String,
    /// The client's tool object (`{"type": "function", "function": {…}}`) as one line of
    /// JSON, `", "` and `": "` separators (`tojson`).
    pub json: String,
    /// The same object indented by four spaces (`tojson(indent=4)`).
    pub json_indented: String,
}

/// A call an assistant message made, in a conversation's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// The function's name.
    pub name: String,
    /// Its arguments as JSON text, as the template writes them (`tojson` of the object).
    pub arguments: String,
}

/// How a family writes tools, calls and results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// `<tool_call>` blocks (ChatML: Qwen2.5, Hermes).
    Hermes,
    /// The whole answer one JSON call with `parameters` (Llama 3.1 / 3.2).
    Llama3Json,
    /// A `[TOOL_CALLS]` JSON array of calls (Mistral v3, Nemo, v7).
    Mistral,
}

/// Why a conversation with tools cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolTemplateError {
    /// The family has no tool format.
    #[error(
        "the model's chat template ({0}) has no tool-calling format FlexServe renders; tools work with ChatML (Qwen2.5, Hermes), Llama 3.1+ and Mistral v3/v7 (Mistral 7B v0.3, Nemo, Small) models"
    )]
    NoToolFormat(&'static str),
}

impl ChatTemplate {
    /// The family's tool format, if it has one.
    pub fn tool_format(self) -> Option<ToolFormat> {
        match self {
            ChatTemplate::ChatMl => Some(ToolFormat::Hermes),
            ChatTemplate::Llama3 => Some(ToolFormat::Llama3Json),
            // v1 (Mistral 7B v0.1/v0.2) was not trained on tools.
            ChatTemplate::MistralV3
            | ChatTemplate::MistralV3Tekken
            | ChatTemplate::MistralV7
            | ChatTemplate::MistralV7Tekken => Some(ToolFormat::Mistral),
            _ => None,
        }
    }

    /// [`ChatTemplate::parts`] for a conversation that may declare `tools` and hold tool
    /// calls (`tool_calls`) and results (role `tool`): without either, exactly `parts`.
    pub fn parts_with_tools(
        self,
        messages: &[ChatMessage],
        tools: &[ToolSpec],
        add_generation_prompt: bool,
    ) -> Result<Vec<(String, bool)>, ToolTemplateError> {
        let uses_tools = !tools.is_empty()
            || messages
                .iter()
                .any(|m| m.role == "tool" || !m.tool_calls.is_empty());
        if !uses_tools {
            return Ok(self.parts(messages, add_generation_prompt));
        }
        match self.tool_format() {
            Some(ToolFormat::Hermes) => Ok(render::hermes(messages, tools, add_generation_prompt)),
            Some(ToolFormat::Llama3Json) => {
                Ok(render::llama3(messages, tools, add_generation_prompt))
            }
            Some(ToolFormat::Mistral) => Ok(mistral::mistral(self, messages, tools)),
            None => Err(ToolTemplateError::NoToolFormat(self.name())),
        }
    }
}

impl super::super::Tokenizer {
    /// [`super::super::Tokenizer::encode_chat`] with tools ([`ChatTemplate::parts_with_tools`]).
    pub fn encode_chat_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: &[ToolSpec],
        template: ChatTemplate,
    ) -> Result<Vec<u32>, ToolTemplateError> {
        let parts = template.parts_with_tools(messages, tools, true)?;
        let refs: Vec<(&str, bool)> = parts.iter().map(|(s, sp)| (s.as_str(), *sp)).collect();
        Ok(self.encode_parts(&refs, true))
    }
}
