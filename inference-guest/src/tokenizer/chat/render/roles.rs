//! Families that wrap each message in fixed text chosen by its role (the role's name itself
//! is not written), described as tables.

use super::{ChatMessage, ChatTemplate, Out, trim};
use ChatTemplate as T;

/// The text around one role's messages.
#[derive(Clone, Copy)]
struct Wrap {
    before: &'static str,
    after: &'static str,
    trim: bool,
}

const fn w(before: &'static str, after: &'static str) -> Option<Wrap> {
    Some(Wrap {
        before,
        after,
        trim: false,
    })
}

const fn trimmed(before: &'static str, after: &'static str) -> Option<Wrap> {
    Some(Wrap {
        before,
        after,
        trim: true,
    })
}

/// A family: the wrap for each role (`None`: the family drops such messages), what opens
/// the prompt, and what opens the assistant's turn.
struct Roles {
    start: &'static str,
    system: Option<Wrap>,
    user: Option<Wrap>,
    assistant: Option<Wrap>,
    tool: Option<Wrap>,
    /// Any other role.
    other: Option<Wrap>,
    generation: &'static str,
}

const NONE: Roles = Roles {
    start: "",
    system: None,
    user: None,
    assistant: None,
    tool: None,
    other: None,
    generation: "",
};

/// The table of family `t`; families written as code elsewhere get an empty one.
fn table(t: ChatTemplate) -> Roles {
    match t {
        T::Vicuna | T::VicunaOrca => Roles {
            system: match t {
                T::VicunaOrca => w("SYSTEM: ", "\n"),
                _ => w("", "\n\n"),
            },
            user: w("USER: ", "\n"),
            assistant: w("ASSISTANT: ", "</s>\n"),
            generation: "ASSISTANT:",
            ..NONE
        },
        T::DeepSeek => Roles {
            system: w("", ""),
            user: w("### Instruction:\n", "\n"),
            assistant: w("### Response:\n", "\n<|EOT|>\n"),
            generation: "### Response:\n",
            ..NONE
        },
        T::DeepSeek2 => Roles {
            system: w("", "\n\n"),
            user: w("User: ", "\n\n"),
            assistant: w("Assistant: ", "<｜end▁of▁sentence｜>"),
            generation: "Assistant:",
            ..NONE
        },
        T::DeepSeek3 => Roles {
            system: w("", "\n\n"),
            user: w("<｜User｜>", ""),
            assistant: w("<｜Assistant｜>", "<｜end▁of▁sentence｜>"),
            generation: "<｜Assistant｜>",
            ..NONE
        },
        T::CommandR => Roles {
            system: trimmed(
                "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>",
                "<|END_OF_TURN_TOKEN|>",
            ),
            user: trimmed(
                "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>",
                "<|END_OF_TURN_TOKEN|>",
            ),
            assistant: trimmed(
                "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
                "<|END_OF_TURN_TOKEN|>",
            ),
            generation: "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
            ..NONE
        },
        T::Exaone3 | T::Exaone4 => Roles {
            system: trimmed("[|system|]", "[|endofturn|]\n"),
            user: trimmed("[|user|]", "\n"),
            assistant: trimmed("[|assistant|]", "[|endofturn|]\n"),
            tool: match t {
                T::Exaone4 => trimmed("[|tool|]", "[|endofturn|]\n"),
                _ => None,
            },
            generation: "[|assistant|]",
            ..NONE
        },
        T::ExaoneMoe => Roles {
            system: trimmed("<|system|>\n", "<|endofturn|>\n"),
            user: trimmed("<|user|>\n", "<|endofturn|>\n"),
            assistant: trimmed("<|assistant|>\n", "<|endofturn|>\n"),
            tool: trimmed("<|tool|>\n", "<|endofturn|>\n"),
            generation: "<|assistant|>\n",
            ..NONE
        },
        _ => table_more(t),
    }
}

/// The rest of [`table`].
fn table_more(t: ChatTemplate) -> Roles {
    match t {
        T::Yandex => Roles {
            user: w(" Пользователь: ", "\n\n"),
            assistant: w(" Ассистент: ", "\n\n"),
            generation: " Ассистент:[SEP]",
            ..NONE
        },
        T::SmolVlm => {
            let answer = w("Assistant: ", "<end_of_utterance>\n");
            Roles {
                start: "<|im_start|>",
                system: w("", "\n\n"),
                user: w("User: ", "<end_of_utterance>\n"),
                assistant: answer,
                tool: answer,
                other: answer,
                generation: "Assistant:",
            }
        }
        T::Dots1 => {
            let answer = w("<|response|>", "<|endofresponse|>");
            Roles {
                system: w("<|system|>", "<|endofsystem|>"),
                user: w("<|userprompt|>", "<|endofuserprompt|>"),
                assistant: answer,
                tool: answer,
                other: answer,
                generation: "<|response|>",
                ..NONE
            }
        }
        T::HunyuanMoe => {
            let ask = w("<|startoftext|>", "<|extra_0|>");
            Roles {
                system: w("<|startoftext|>", "<|extra_4|>"),
                user: ask,
                assistant: w("", "<|eos|>"),
                tool: ask,
                other: ask,
                ..NONE
            }
        }
        T::KimiK2 => Roles {
            system: w("<|im_system|>system<|im_middle|>", "<|im_end|>"),
            user: w("<|im_user|>user<|im_middle|>", "<|im_end|>"),
            assistant: w("<|im_assistant|>assistant<|im_middle|>", "<|im_end|>"),
            tool: w("<|im_system|>tool<|im_middle|>", "<|im_end|>"),
            // llama.cpp writes the content of any other role without a header.
            other: w("", "<|im_end|>"),
            generation: "<|im_assistant|>assistant<|im_middle|>",
            ..NONE
        },
        T::Grok2 => Roles {
            system: trimmed("System: ", "<|separator|>\n\n"),
            user: trimmed("Human: ", "<|separator|>\n\n"),
            assistant: w("Assistant: ", "<|separator|>\n\n"),
            generation: "Assistant:",
            ..NONE
        },
        _ => NONE,
    }
}

/// The families [`table`] describes.
pub(super) fn by_role(t: ChatTemplate, out: &mut Out, messages: &[ChatMessage], generation: bool) {
    let f = table(t);
    out.mark(f.start);
    for m in messages {
        let wrap = match m.role.as_str() {
            "system" => f.system,
            "user" => f.user,
            "assistant" => f.assistant,
            "tool" => f.tool,
            _ => f.other,
        };
        let Some(wrap) = wrap else { continue };
        out.mark(wrap.before);
        out.text(if wrap.trim {
            trim(&m.content)
        } else {
            &m.content
        });
        out.mark(wrap.after);
    }
    if generation {
        out.mark(f.generation);
    }
}
