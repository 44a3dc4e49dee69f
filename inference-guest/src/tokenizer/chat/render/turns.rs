//! Families that write every message as a header naming its role, the content, and a
//! closing marker (ChatML and its many relatives).

use super::{ChatMessage, ChatTemplate, Out, trim};
use ChatTemplate as T;

/// How much of a message's content a family trims.
#[derive(Clone, Copy, PartialEq)]
enum Trim {
    None,
    All,
    Assistant,
}

/// `start`, then `open` role `mid` content `close` for every message, then `generation`
/// when the assistant's turn is to be opened.
struct Headed {
    start: &'static str,
    open: &'static str,
    mid: &'static str,
    close: &'static str,
    generation: &'static str,
    trim: Trim,
}

impl Headed {
    const fn new(open: &'static str, mid: &'static str, close: &'static str) -> Self {
        Headed {
            start: "",
            open,
            mid,
            close,
            generation: "",
            trim: Trim::None,
        }
    }

    fn of(t: ChatTemplate) -> Headed {
        let h = Headed::new;
        let (headed, generation) = match t {
            T::ChatMl => (
                h("<|im_start|>", "\n", "<|im_end|>\n"),
                "<|im_start|>assistant\n",
            ),
            T::Phi3 => (h("<|", "|>\n", "<|end|>\n"), "<|assistant|>\n"),
            T::Phi4 => (
                h("<|im_start|>", "<|im_sep|>", "<|im_end|>"),
                "<|im_start|>assistant<|im_sep|>",
            ),
            T::Falcon3 => (h("<|", "|>\n", "\n"), "<|assistant|>\n"),
            T::Zephyr => (h("<|", "|>\n", "<|endoftext|>\n"), "<|assistant|>\n"),
            T::Llama3 => (
                Headed {
                    trim: Trim::All,
                    ..h("<|start_header_id|>", "<|end_header_id|>\n\n", "<|eot_id|>")
                },
                "<|start_header_id|>assistant<|end_header_id|>\n\n",
            ),
            T::Llama4 => (
                Headed {
                    trim: Trim::All,
                    ..h("<|header_start|>", "<|header_end|>\n\n", "<|eot|>")
                },
                "<|header_start|>assistant<|header_end|>\n\n",
            ),
            T::ChatGlm3 => (
                Headed {
                    start: "[gMASK]sop",
                    ..h("<|", "|>\n ", "")
                },
                "<|assistant|>",
            ),
            T::ChatGlm4 => (
                Headed {
                    start: "[gMASK]<sop>",
                    ..h("<|", "|>\n", "")
                },
                "<|assistant|>\n",
            ),
            T::GlmEdge => (h("<|", "|>\n", ""), "<|assistant|>"),
            T::Megrez => (
                h("<|role_start|>", "<|role_end|>", "<|turn_end|>"),
                "<|role_start|>assistant<|role_end|>",
            ),
            T::SolarOpen => (
                h("<|begin|>", "<|content|>", "<|end|>"),
                "<|begin|>assistant",
            ),
            T::SeedOss => (
                Headed {
                    trim: Trim::Assistant,
                    ..h("<seed:bos>", "\n", "<seed:eos>")
                },
                "<seed:bos>assistant\n",
            ),
            // Only the families above come here (see `render`).
            _ => (h("", "", ""), ""),
        };
        Headed {
            generation,
            ..headed
        }
    }
}

/// The families [`Headed::of`] describes.
pub(super) fn headed(t: ChatTemplate, out: &mut Out, messages: &[ChatMessage], generation: bool) {
    let f = Headed::of(t);
    out.mark(f.start);
    for m in messages {
        let trimmed = match f.trim {
            Trim::All => true,
            Trim::Assistant => m.role == "assistant",
            Trim::None => false,
        };
        out.mark(f.open);
        out.mark(&m.role);
        out.mark(f.mid);
        out.text(if trimmed {
            trim(&m.content)
        } else {
            &m.content
        });
        out.mark(f.close);
    }
    if generation {
        out.mark(f.generation);
    }
}

/// AlphaMonarch: `<s>` opens every message but the first (the tokenizer adds that one).
pub(super) fn monarch(out: &mut Out, messages: &[ChatMessage], generation: bool) {
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.mark("<s>");
        }
        out.mark(&m.role);
        out.mark("\n");
        out.text(&m.content);
        out.mark("</s>\n");
    }
    if generation {
        out.mark("<s>assistant\n");
    }
}

/// gpt-oss (OpenAI's Harmony format, llama.cpp's simplified form).
pub(super) fn gpt_oss(out: &mut Out, messages: &[ChatMessage], generation: bool) {
    for m in messages {
        out.mark("<|start|>");
        out.mark(&m.role);
        out.mark("<|message|>");
        out.text(&m.content);
        out.mark(if m.role == "assistant" {
            "<|return|>"
        } else {
            "<|end|>"
        });
    }
    if generation {
        out.mark("<|start|>assistant");
    }
}

/// Granite 3.x, 4.0 and 4.1: an `assistant_tool_call` message is an assistant turn marked
/// `<|tool_call|>` (3.x keeps the role's own name in its header).
pub(super) fn granite(t: ChatTemplate, out: &mut Out, messages: &[ChatMessage], generation: bool) {
    for m in messages {
        let tool_call = m.role == "assistant_tool_call";
        out.mark("<|start_of_role|>");
        out.mark(if tool_call && t != T::Granite3 {
            "assistant"
        } else {
            &m.role
        });
        out.mark("<|end_of_role|>");
        if tool_call {
            out.mark("<|tool_call|>");
        }
        out.text(&m.content);
        out.mark("<|end_of_text|>\n");
    }
    if generation {
        out.mark("<|start_of_role|>assistant<|end_of_role|>");
    }
}

/// Ling (Bailing): upper-case roles, `user` as `HUMAN`; Ling 2.0 adds a default system turn
/// and `<|role_end|>`.
pub(super) fn bailing(t: ChatTemplate, out: &mut Out, messages: &[ChatMessage], generation: bool) {
    let v2 = t == T::Bailing2;
    let has_system = messages.first().is_some_and(|m| m.role == "system");
    if v2 && !has_system {
        out.mark("<role>SYSTEM</role>detailed thinking off<|role_end|>");
    }
    for m in messages {
        out.mark("<role>");
        if m.role == "user" {
            out.mark("HUMAN");
        } else {
            out.mark(&m.role.to_ascii_uppercase());
        }
        out.mark("</role>");
        out.text(&m.content);
        if v2 {
            out.mark("<|role_end|>");
        }
    }
    if generation {
        out.mark("<role>ASSISTANT</role>");
        if t == T::BailingThink {
            out.mark("<think>");
        }
    }
}
