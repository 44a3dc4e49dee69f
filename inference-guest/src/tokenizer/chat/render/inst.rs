//! The `[INST]` families: Llama 2 and its variants, Mistral v1/v3/v7. None of them opens the
//! assistant's turn: a prompt ending in `[/INST]` already asks for it.

use super::{ChatMessage, ChatTemplate, Out, trim};
use ChatTemplate as T;

/// Llama 2 (`llama2`, `-sys`, `-sys-bos`, `-sys-strip`). The first `<s>` is left to the
/// tokenizer's beginning-of-sequence token, as in llama.cpp.
pub(super) fn llama2(t: ChatTemplate, out: &mut Out, messages: &[ChatMessage]) {
    let system_block = t != T::Llama2;
    let bos_inside = t == T::Llama2SysBos;
    let strip = t == T::Llama2SysStrip;
    let mut inside_turn = true;
    out.mark("[INST] ");
    for m in messages {
        let content = if strip { trim(&m.content) } else { &m.content };
        if !inside_turn {
            inside_turn = true;
            out.mark(if bos_inside { "<s>[INST] " } else { "[INST] " });
        }
        match m.role.as_str() {
            "system" if system_block => {
                out.mark("<<SYS>>\n");
                out.text(content);
                out.mark("\n<</SYS>>\n\n");
            }
            // Without a system block the system message is the first line of the turn.
            "system" => {
                out.text(content);
                out.mark("\n");
            }
            "user" => {
                out.text(content);
                out.mark(" [/INST]");
            }
            _ => {
                out.text(content);
                out.mark("</s>");
                inside_turn = false;
            }
        }
    }
}

/// Mistral's v1, v3 and v3-tekken templates: they differ in the spaces around `[INST]` and
/// whether an assistant message is trimmed (v3).
pub(super) fn mistral_v1_v3(t: ChatTemplate, out: &mut Out, messages: &[ChatMessage]) {
    let leading = if t == T::MistralV1 { " " } else { "" };
    let trailing = if t == T::MistralV3Tekken { "" } else { " " };
    let trim_assistant = t == T::MistralV3;
    let mut inside_turn = false;
    for m in messages {
        if !inside_turn {
            out.mark(leading);
            out.mark("[INST]");
            out.mark(trailing);
            inside_turn = true;
        }
        match m.role.as_str() {
            "system" => {
                out.text(&m.content);
                out.mark("\n\n");
            }
            "user" => {
                out.text(&m.content);
                out.mark(leading);
                out.mark("[/INST]");
            }
            _ => {
                out.mark(trailing);
                out.text(if trim_assistant {
                    trim(&m.content)
                } else {
                    &m.content
                });
                out.mark("</s>");
                inside_turn = false;
            }
        }
    }
}

/// Mistral's v7 and v7-tekken templates: a space after each marker in v7, none in tekken.
pub(super) fn mistral_v7(t: ChatTemplate, out: &mut Out, messages: &[ChatMessage]) {
    let space = if t == T::MistralV7 { " " } else { "" };
    for m in messages {
        let (open, close) = match m.role.as_str() {
            "system" => ("[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"),
            "user" => ("[INST]", "[/INST]"),
            _ => ("", "</s>"),
        };
        out.mark(open);
        out.mark(space);
        out.text(&m.content);
        out.mark(close);
    }
}
