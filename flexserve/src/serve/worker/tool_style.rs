//! A sealed model's tool calls are rendered and constrained in the guest in its template's
//! own style (`CallStyle::Template`); the job's handler needs that style to read the calls
//! back, so the worker asks the guest before the answer starts.

use super::{Event, Job};
use inference_guest::tokenizer::ToolFormat;
use virtio_llm::wire::options::{CallStyle, GenerateOptions};
use virtio_llm::wire::request::Prompt;
use vmm::guest_vm::{GuestError, GuestVm};

/// Sends the job's handler the call style of guest model `guest_model` when the job leaves
/// the style to the template. A template with no tool format sends nothing: the guest
/// refuses the request itself, naming the template.
pub(super) fn tell_tool_style(
    vm: &mut GuestVm,
    job: &Job,
    guest_model: u32,
) -> Result<(), GuestError> {
    if !asks_tool_style(job) {
        return Ok(());
    }
    let format = match vm.tool_style(guest_model)? {
        Some(CallStyle::Hermes) => ToolFormat::Hermes,
        Some(CallStyle::Llama3Json) => ToolFormat::Llama3Json,
        Some(CallStyle::Mistral) => ToolFormat::Mistral,
        Some(CallStyle::Template) | None => return Ok(()),
    };
    let _ = job.events.send(Event::ToolStyle(format));
    Ok(())
}

/// Whether the job leaves its tool calls' style to the template (the worker must ask the
/// guest, which reads it from the loaded model).
pub(super) fn asks_tool_style(job: &Job) -> bool {
    job.options
        .tools
        .as_ref()
        .is_some_and(|t| t.style == CallStyle::Template)
}

/// A slice's options: the job's, without the tools and earlier calls unless the slice
/// carries the chat they belong to (the first); later slices go on from a token, under the
/// same constraint.
pub(super) fn slice_options(options: &GenerateOptions, prompt: &Prompt) -> GenerateOptions {
    let chat = matches!(prompt, Prompt::Chat(_));
    GenerateOptions {
        tool_chat: options.tool_chat.clone().filter(|_| chat),
        ..options.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_llm::wire::options::{ToolChat, TurnCall};

    #[test]
    fn only_the_chat_slice_carries_the_tool_chat() {
        let options = GenerateOptions {
            logprobs: Some(1),
            tool_chat: Some(ToolChat {
                tools: Vec::new(),
                calls: vec![TurnCall {
                    turn: 0,
                    name: "f".into(),
                    arguments: "{}".into(),
                }],
            }),
            ..GenerateOptions::default()
        };
        let first = slice_options(&options, &Prompt::Chat(Vec::new()));
        assert_eq!(first, options);
        let next = slice_options(&options, &Prompt::Tokens(vec![7]));
        assert_eq!(next.tool_chat, None);
        assert_eq!(next.logprobs, Some(1));
    }
}
