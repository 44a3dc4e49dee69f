//! Tool conversations the guest renders (`feature::GUEST_TOOLS`): the tool side of a chat
//! prompt, for a model whose template only the guest reads (a sealed one). The options
//! trailer's `TOOL_CHAT` record carries the tools the client declared and the calls earlier
//! assistant turns made; results are chat turns of role `tool`. The control queue's
//! `GetToolStyle` tells the host how the model writes a call, so that it can read the calls
//! back from the answer.
//!
//! ```text
//! TOOL_CHAT:     u16 tool_count | u16 call_count |
//!                tool_count × { u16 name_len | u16 reserved | u32 json_len |
//!                               u32 indented_len | name | json | indented } |
//!                call_count × { u32 turn | u16 name_len | u16 reserved | u32 args_len |
//!                               name | args }
//! GetToolStyle:  u32 model_id
//! ToolStyleReply: u32 model_id | u16 status | u8 style (0 none, 1 hermes, 2 llama3_json) |
//!                u8 reserved
//! ```
//!
//! Every string is UTF-8; names are 1..=`MAX_TOOL_NAME_BYTES`; calls come in turn order
//! and each `turn` indexes an assistant turn of the request's chat prompt (checked with the
//! request, which holds both).

use alloc::string::String;
use alloc::vec::Vec;

use crate::error::WireError;
use crate::spec::{MAX_TOOL_CALLS, MAX_TOOL_DEFS, MAX_TOOL_NAME_BYTES};
use crate::wire::codec::{Reader, Writer, check_len, len_u32};
use crate::wire::constraint::CallStyle;
use crate::wire::request::{ChatRole, ChatTurn};
use crate::wire::status::Status;
use crate::wire::{Message, ensure};

/// Message types on the control queues.
pub mod msg_type {
    /// [`super::GetToolStyle`] (control command).
    pub const GET_TOOL_STYLE: u16 = 0x010C;
    /// [`super::ToolStyleReply`] (control reply).
    pub const TOOL_STYLE_REPLY: u16 = 0x0205;
}

/// Bytes before a tool definition's strings, and before a call's.
const TOOL_HEAD: usize = 12;
const CALL_HEAD: usize = 12;

/// A function the model may call, as the template shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolDef {
    /// The function's name.
    pub name: String,
    /// The client's tool object as one line of JSON (`tojson`).
    pub json: String,
    /// The same, indented by four spaces (`tojson(indent=4)`).
    pub json_indented: String,
}

/// A call an earlier assistant turn made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnCall {
    /// The index of its assistant turn in the chat prompt.
    pub turn: u32,
    /// The function's name.
    pub name: String,
    /// Its arguments as JSON text.
    pub arguments: String,
}

/// The tool side of a chat prompt. Sent only when it holds a tool or a call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ToolChat {
    /// At most `MAX_TOOL_DEFS`.
    pub tools: Vec<ToolDef>,
    /// At most `MAX_TOOL_CALLS`, in turn order.
    pub calls: Vec<TurnCall>,
}

impl ToolChat {
    pub(crate) fn wire_len(&self) -> usize {
        let tools: usize = self
            .tools
            .iter()
            .map(|t| TOOL_HEAD + t.name.len() + t.json.len() + t.json_indented.len())
            .sum();
        let calls: usize = self
            .calls
            .iter()
            .map(|c| CALL_HEAD + c.name.len() + c.arguments.len())
            .sum();
        4 + tools + calls
    }

    /// Counts, names and call order (the record's size is the trailer's to check).
    pub(crate) fn validate(&self) -> Result<(), WireError> {
        check_len("tool definitions", self.tools.len(), MAX_TOOL_DEFS)?;
        check_len("tool calls", self.calls.len(), MAX_TOOL_CALLS)?;
        let empty = self.tools.is_empty() && self.calls.is_empty();
        ensure(!empty, "tool chat count", 0)?;
        for name in self.tools.iter().map(|t: &ToolDef| &t.name) {
            check_name(name)?;
        }
        let mut last = 0;
        for c in &self.calls {
            check_name(&c.name)?;
            ensure(c.turn >= last, "tool call turn order", c.turn.into())?;
            last = c.turn;
        }
        Ok(())
    }

    /// Checks that every call belongs to an assistant turn of `turns`.
    pub(crate) fn validate_turns(&self, turns: &[ChatTurn]) -> Result<(), WireError> {
        for c in &self.calls {
            let role = turns.get(c.turn as usize).map(|t| t.role);
            ensure(
                role == Some(ChatRole::Assistant),
                "tool call turn",
                c.turn.into(),
            )?;
        }
        Ok(())
    }

    pub(crate) fn encode(&self, w: &mut Writer<'_>) {
        w.u16(self.tools.len() as u16);
        w.u16(self.calls.len() as u16);
        for t in &self.tools {
            w.u16(t.name.len() as u16);
            w.zeros(2);
            w.u32(len_u32(t.json.len()));
            w.u32(len_u32(t.json_indented.len()));
            w.bytes(t.name.as_bytes());
            w.bytes(t.json.as_bytes());
            w.bytes(t.json_indented.as_bytes());
        }
        for c in &self.calls {
            w.u32(c.turn);
            w.u16(c.name.len() as u16);
            w.zeros(2);
            w.u32(len_u32(c.arguments.len()));
            w.bytes(c.name.as_bytes());
            w.bytes(c.arguments.as_bytes());
        }
    }

    /// Reads a record's value; every length is checked against what is left before it is
    /// read, so a forged count or length costs nothing.
    pub(crate) fn decode(v: &mut Reader<'_>) -> Result<Self, WireError> {
        let n_tools = usize::from(v.u16()?);
        let n_calls = usize::from(v.u16()?);
        check_len("tool definitions", n_tools, MAX_TOOL_DEFS)?;
        check_len("tool calls", n_calls, MAX_TOOL_CALLS)?;
        let mut tools = Vec::with_capacity(n_tools);
        for _ in 0..n_tools {
            let name_len = usize::from(v.u16()?);
            v.reserved(2, "tool.reserved")?;
            let json_len = v.u32()? as usize;
            let indented_len = v.u32()? as usize;
            tools.push(ToolDef {
                name: text(v, name_len, "tool name")?,
                json: text(v, json_len, "tool json")?,
                json_indented: text(v, indented_len, "tool json")?,
            });
        }
        let mut calls = Vec::with_capacity(n_calls);
        for _ in 0..n_calls {
            let turn = v.u32()?;
            let name_len = usize::from(v.u16()?);
            v.reserved(2, "tool call.reserved")?;
            let args_len = v.u32()? as usize;
            calls.push(TurnCall {
                turn,
                name: text(v, name_len, "tool call name")?,
                arguments: text(v, args_len, "tool call arguments")?,
            });
        }
        let chat = Self { tools, calls };
        chat.validate()?;
        Ok(chat)
    }
}

fn check_name(name: &str) -> Result<(), WireError> {
    check_len("tool name", name.len(), MAX_TOOL_NAME_BYTES)?;
    ensure(!name.is_empty(), "tool name length", 0)
}

/// `n` bytes of UTF-8 text.
fn text(v: &mut Reader<'_>, n: usize, field: &'static str) -> Result<String, WireError> {
    let raw = v.bytes(n)?;
    core::str::from_utf8(raw)
        .map(String::from)
        .map_err(|_| WireError::InvalidUtf8 { field })
}

/// Asks how a loaded model's template writes a tool call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetToolStyle {
    pub model_id: u32,
}

impl Message<'_> for GetToolStyle {
    const TYPE: u16 = msg_type::GET_TOOL_STYLE;
    fn encode_body(&self, w: &mut Writer<'_>) {
        w.u32(self.model_id);
    }
    fn decode_body(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self { model_id: r.u32()? })
    }
}

/// The answer to [`GetToolStyle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolStyleReply {
    pub model_id: u32,
    /// `Ok`, or why there is no answer (`NoSuchModel`).
    pub status: Status,
    /// The template's call style; `None` when it has no tool format (or on an error).
    pub style: Option<CallStyle>,
}

impl Message<'_> for ToolStyleReply {
    const TYPE: u16 = msg_type::TOOL_STYLE_REPLY;
    fn encode_body(&self, w: &mut Writer<'_>) {
        w.u32(self.model_id);
        w.u16(self.status.to_u16());
        w.u8(self.style.map_or(0, CallStyle::to_u8));
        w.zeros(1);
    }
    fn decode_body(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let model_id = r.u32()?;
        let status = Status::try_from(r.u16()?)?;
        let style = match r.u8()? {
            0 => None,
            v => Some(CallStyle::from_u8(v)?),
        };
        r.reserved(1, "tool_style.reserved")?;
        Ok(Self {
            model_id,
            status,
            style,
        })
    }
    fn validate(&self) -> Result<(), WireError> {
        // A reply names the template's own style, never "the template's".
        let own = self.style != Some(CallStyle::Template);
        ensure(own, "tool style", 0x80)?;
        let answered = self.status == Status::Ok || self.style.is_none();
        ensure(answered, "tool style status", self.status.to_u16().into())
    }
}

#[cfg(test)]
#[path = "tool_chat_tests.rs"]
mod tests;
