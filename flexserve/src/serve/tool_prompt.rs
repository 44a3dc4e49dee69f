//! A chat that uses tools (declares them, or holds earlier calls and results): its prompt,
//! rendered with the tools in the model's own tool format, and the guest's constraint on
//! the calls the answer makes. A sealed model's template is the guest's to read: its tool
//! chat goes to the guest to render (`sealed_tools`).

use super::error::ApiError;
use super::models::ServedModel;
use super::openai::tools::{ToolChoice, Tools};
use inference_guest::tokenizer::{ChatMessage, ToolFormat};
use serde_json::json;
use virtio_llm::spec::MAX_OPTION_RECORD_BYTES;
use virtio_llm::wire::options::{CallStyle, ToolChat, ToolConstraint};
use virtio_llm::wire::request::Prompt;

/// A chat with tools as the guest gets it.
#[derive(Debug)]
pub struct ToolPrompt {
    pub prompt: Prompt,
    /// The guest's constraint on the calls (none for `tool_choice: "none"`).
    pub constraint: Option<ToolConstraint>,
    /// The model's call format, to read the calls back from the answer; `None` when no
    /// calls are to be read, or (a sealed model) until the guest names it.
    pub format: Option<ToolFormat>,
    /// A sealed model's tools and earlier calls, for the guest to render.
    pub chat: Option<ToolChat>,
}

/// Whether a conversation needs the tool-aware rendering.
pub fn uses_tools(messages: &[ChatMessage], tools: Option<&Tools>) -> bool {
    tools.is_some()
        || messages
            .iter()
            .any(|m| m.role == "tool" || !m.tool_calls.is_empty())
}

/// The prompt of a chat with `tools`, its constraint and the model's call format.
pub fn encode(
    model: &ServedModel,
    messages: &[ChatMessage],
    tools: Option<&Tools>,
) -> Result<ToolPrompt, ApiError> {
    let refused = |what: String| ApiError::invalid("tools", what);
    if model.file.is_sealed() {
        return super::sealed_tools::encode(messages, tools);
    }
    let failed = |e: crate::model::HostModelError| ApiError::Model(e.to_string());
    let template = model.file.chat_template().map_err(failed)?;
    let tokenizer = model.file.tokenizer().map_err(failed)?;
    let shown = tools.map(Tools::shown).unwrap_or_default();
    let ids = tokenizer
        .encode_chat_with_tools(messages, &shown, template)
        .map_err(|e| refused(e.to_string()))?;
    let format = template.tool_format();
    let constraint = match (tools, format) {
        (Some(t), Some(f)) if t.choice != ToolChoice::None => Some(constraint(t, f)?),
        _ => None,
    };
    let reading = tools.filter(|t| t.choice != ToolChoice::None).and(format);
    Ok(ToolPrompt {
        prompt: Prompt::Tokens(ids),
        constraint,
        format: reading,
        chat: None,
    })
}

/// The guest's constraint for `tools` written in `format`.
pub(super) fn constraint(tools: &Tools, format: ToolFormat) -> Result<ToolConstraint, ApiError> {
    let callable: Vec<_> = tools
        .defs
        .iter()
        .filter(|d| match &tools.choice {
            ToolChoice::Function(name) => &d.spec.name == name,
            _ => true,
        })
        .map(|d| json!({"name": d.spec.name, "parameters": d.parameters}))
        .collect();
    let text = serde_json::Value::Array(callable).to_string();
    if text.len() > MAX_OPTION_RECORD_BYTES - 4 {
        return Err(ApiError::invalid(
            "tools",
            format!(
                "the tools' schemas are longer than {} bytes",
                MAX_OPTION_RECORD_BYTES - 4
            ),
        ));
    }
    Ok(ToolConstraint {
        style: match format {
            ToolFormat::Hermes => CallStyle::Hermes,
            ToolFormat::Llama3Json => CallStyle::Llama3Json,
            ToolFormat::Mistral => CallStyle::Mistral,
        },
        lazy: tools.choice == ToolChoice::Auto,
        // A named function is called once, as OpenAI does.
        parallel: tools.parallel && !matches!(tools.choice, ToolChoice::Function(_)),
        tools: text,
    })
}
