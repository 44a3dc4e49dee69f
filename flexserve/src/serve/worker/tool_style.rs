//! A sealed model's tool calls are rendered and constrained in the guest in its template's
//! own style (`CallStyle::Template`); the job's handler needs that style to read the calls
//! back, so the worker asks the guest before the answer starts.

use super::{Event, Job};
use inference_guest::tokenizer::ToolFormat;
use virtio_llm::wire::options::CallStyle;
use vmm::guest_vm::{GuestError, GuestVm};

/// Sends the job's handler the call style of guest model `guest_model` when the job leaves
/// the style to the template. A template with no tool format sends nothing: the guest
/// refuses the request itself, naming the template.
pub(super) fn tell_tool_style(
    vm: &mut GuestVm,
    job: &Job,
    guest_model: u32,
) -> Result<(), GuestError> {
    let asks = job
        .options
        .tools
        .as_ref()
        .is_some_and(|t| t.style == CallStyle::Template);
    if !asks {
        return Ok(());
    }
    let format = match vm.tool_style(guest_model)? {
        Some(CallStyle::Hermes) => ToolFormat::Hermes,
        Some(CallStyle::Llama3Json) => ToolFormat::Llama3Json,
        Some(CallStyle::Template) | None => return Ok(()),
    };
    let _ = job.events.send(Event::ToolStyle(format));
    Ok(())
}
