//! Families whose rendering depends on more than each message's role: a system message
//! folded into the next turn, the first message treated apart, the last one ending the
//! prompt.

use super::{ChatMessage, Out, trim};

/// Gemma: no system turn, so system messages (trimmed, concatenated) open the next turn
/// that is not the model's; `assistant` is called `model`; every content trimmed.
pub(super) fn gemma(out: &mut Out, messages: &[ChatMessage], generation: bool) {
    let mut system: alloc::vec::Vec<&str> = alloc::vec::Vec::new();
    for m in messages {
        if m.role == "system" {
            system.push(trim(&m.content));
            continue;
        }
        let role = if m.role == "assistant" {
            "model"
        } else {
            &m.role
        };
        out.mark("<start_of_turn>");
        out.mark(role);
        out.mark("\n");
        if role != "model" && system.iter().any(|s| !s.is_empty()) {
            system.drain(..).for_each(|s| out.text(s));
            out.mark("\n\n");
        }
        out.text(trim(&m.content));
        out.mark("<end_of_turn>\n");
    }
    if generation {
        out.mark("<start_of_turn>model\n");
    }
}

/// Orion: system messages open the next user turn; every user turn ends with
/// `Assistant: </s>`, so the prompt already asks for the answer.
pub(super) fn orion(out: &mut Out, messages: &[ChatMessage]) {
    let mut system: alloc::vec::Vec<&str> = alloc::vec::Vec::new();
    for m in messages {
        match m.role.as_str() {
            "system" => system.push(&m.content),
            "user" => {
                out.mark("Human: ");
                if system.iter().any(|s| !s.is_empty()) {
                    system.drain(..).for_each(|s| out.text(s));
                    out.mark("\n\n");
                }
                out.text(&m.content);
                out.mark("\n\nAssistant: </s>");
            }
            _ => {
                out.text(&m.content);
                out.mark("</s>");
            }
        }
    }
}

/// OpenChat 3.5: `GPT4 Correct` and the role with its first letter in upper case.
pub(super) fn openchat(out: &mut Out, messages: &[ChatMessage], generation: bool) {
    for m in messages {
        if m.role != "system" {
            out.mark("GPT4 Correct ");
            let mut first = m.role.chars();
            if let Some(c) = first.next() {
                out.mark(c.to_ascii_uppercase().encode_utf8(&mut [0; 4]));
            }
            out.mark(first.as_str());
            out.mark(": ");
        }
        out.text(&m.content);
        out.mark("<|end_of_turn|>");
    }
    if generation {
        out.mark("GPT4 Correct Assistant:");
    }
}

/// MiniCPM: `<用户>` before and `<AI>` after a user message, everything trimmed, and the
/// prompt already ends in `<AI>`.
pub(super) fn minicpm(out: &mut Out, messages: &[ChatMessage]) {
    for m in messages {
        if m.role == "user" {
            out.mark("<用户>");
            out.text(trim(&m.content));
            out.mark("<AI>");
        } else {
            out.text(trim(&m.content));
        }
    }
}

/// RWKV World: the last user message (not the generation flag) opens `Assistant:`.
pub(super) fn rwkv_world(out: &mut Out, messages: &[ChatMessage]) {
    for (i, m) in messages.iter().enumerate() {
        let before = match m.role.as_str() {
            "system" => "System: ",
            "user" => "User: ",
            "assistant" => "Assistant: ",
            _ => continue,
        };
        out.mark(before);
        out.text(trim(&m.content));
        out.mark("\n\n");
        if m.role == "user" && i + 1 == messages.len() {
            out.mark("Assistant:");
        }
    }
}

/// GigaChat: `<s>` (and a first system message) written out, every user turn followed by
/// an empty function list.
pub(super) fn gigachat(out: &mut Out, messages: &[ChatMessage], generation: bool) {
    let has_system = messages.first().is_some_and(|m| m.role == "system");
    out.mark("<s>");
    if let Some(system) = messages.first().filter(|_| has_system) {
        out.text(&system.content);
        out.mark("<|message_sep|>");
    }
    for m in &messages[usize::from(has_system)..] {
        match m.role.as_str() {
            "user" => {
                out.mark("user<|role_sep|>");
                out.text(&m.content);
                out.mark("<|message_sep|>available functions<|role_sep|>[]<|message_sep|>");
            }
            "assistant" => {
                out.mark("assistant<|role_sep|>");
                out.text(&m.content);
                out.mark("<|message_sep|>");
            }
            _ => {}
        }
    }
    if generation {
        out.mark("assistant<|role_sep|>");
    }
}

/// Hunyuan 4B: a first system message, then user turns that already open the answer.
pub(super) fn hunyuan_dense(out: &mut Out, messages: &[ChatMessage]) {
    for (i, m) in messages.iter().enumerate() {
        if i == 0 && m.role == "system" {
            out.text(&m.content);
            out.mark("<｜hy_place▁holder▁no▁3｜>");
        }
        match m.role.as_str() {
            "assistant" => {
                out.mark("<｜hy_Assistant｜>");
                out.text(&m.content);
                out.mark("<｜hy_place▁holder▁no▁2｜>");
            }
            "user" => {
                out.mark("<｜hy_User｜>");
                out.text(&m.content);
                out.mark("<｜hy_Assistant｜>");
            }
            _ => {}
        }
    }
}

/// HunyuanOCR and HunyuanVL: each message's marker follows its content.
pub(super) fn hunyuan_vl(out: &mut Out, messages: &[ChatMessage]) {
    out.mark("<｜hy_begin▁of▁sentence｜>");
    for (i, m) in messages.iter().enumerate() {
        let after = match m.role.as_str() {
            "system" if i == 0 => "<｜hy_place▁holder▁no▁3｜>",
            "user" => "<｜hy_User｜>",
            "assistant" => "<｜hy_Assistant｜>",
            _ => continue,
        };
        out.text(&m.content);
        out.mark(after);
    }
}

/// openPangu Embedded: an empty system turn when the conversation has none first.
pub(super) fn pangu_embedded(out: &mut Out, messages: &[ChatMessage], generation: bool) {
    for (i, m) in messages.iter().enumerate() {
        if i == 0 && m.role != "system" {
            out.mark("[unused9]系统：[unused10]");
        }
        let who = match m.role.as_str() {
            "system" => "系统",
            "user" => "用户",
            "assistant" => "助手",
            "tool" => "工具",
            "function" => "方法",
            _ => continue,
        };
        out.mark("[unused9]");
        out.mark(who);
        out.mark("：");
        out.text(&m.content);
        out.mark("[unused10]");
    }
    if generation {
        out.mark("[unused9]助手：");
    }
}
