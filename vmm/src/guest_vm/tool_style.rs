//! How a loaded model writes a tool call, asked of the guest (`feature::GUEST_TOOLS`): a
//! sealed model's template is the guest's to read, and the host needs the style to read
//! the calls back from the answer.

use super::{GuestError, GuestVm};
use virtio_llm::Status;
use virtio_llm::spec::feature;
use virtio_llm::wire::control::{ControlCommand, ControlReply};
use virtio_llm::wire::options::CallStyle;
use virtio_llm::wire::tool_chat::GetToolStyle;

impl GuestVm {
    /// Whether the guest renders tool conversations itself (`feature::GUEST_TOOLS`).
    pub fn renders_tools(&self) -> bool {
        self.llm.negotiated(feature::GUEST_TOOLS)
    }

    /// The call style of guest model `model_id`'s template; `None` when it has no tool
    /// format.
    pub fn tool_style(&mut self, model_id: u32) -> Result<Option<CallStyle>, GuestError> {
        self.command(&ControlCommand::GetToolStyle(GetToolStyle { model_id }))?;
        match self.llm.recv_reply(self.deadlines.command) {
            Ok(ControlReply::ToolStyle(r)) if r.model_id != model_id => {
                Err(GuestError::Protocol(format!(
                    "asked model {model_id}'s tool style, got model {}'s",
                    r.model_id
                )))
            }
            Ok(ControlReply::ToolStyle(r)) if r.status == Status::Ok => Ok(r.style),
            Ok(ControlReply::ToolStyle(r)) => Err(GuestError::Refused {
                what: "the model's tool style",
                status: r.status,
            }),
            Ok(other) => Err(GuestError::Protocol(format!(
                "expected the model's tool style, got {other:?}"
            ))),
            Err(e) => Err(self.failure(e)),
        }
    }
}
