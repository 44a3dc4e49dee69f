//! Chat prompts in the ChatML format (the SmolLM2 template; llama.cpp's `chatml`).

use alloc::string::String;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (any string is rendered as given).
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Renders `messages` exactly as llama.cpp's ChatML template does:
/// `<|im_start|>{role}\n{content}<|im_end|>\n` per message, then `<|im_start|>assistant\n` when
/// `add_generation_prompt`. Encode the result with `parse_special = true`.
///
/// Content is inserted verbatim: a message containing `<|im_end|>` can close its own turn, so
/// untrusted content should be encoded separately with `parse_special = false` if that matters.
pub fn apply_chatml(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    for m in messages {
        out.push_str("<|im_start|>");
        out.push_str(&m.role);
        out.push('\n');
        out.push_str(&m.content);
        out.push_str("<|im_end|>\n");
    }
    if add_generation_prompt {
        out.push_str("<|im_start|>assistant\n");
    }
    out
}

/// Whether a model's `tokenizer.chat_template` is a ChatML one (the only family rendered
/// today; other models get [`render`]'s plain form).
pub fn is_chatml(template: Option<&str>) -> bool {
    template.is_some_and(|t| t.contains("<|im_start|>"))
}

/// A conversation as the text to tokenize (with `parse_special = true`): ChatML with the
/// assistant's turn opened when the model's template is ChatML, else the messages' contents
/// one per line. The host (for plain models) and the guest (for models only it can read)
/// both render with this, so a prompt is the same tokens either way.
pub fn render(messages: &[ChatMessage], chatml: bool) -> String {
    if chatml {
        return apply_chatml(messages, true);
    }
    let mut out = String::new();
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&m.content);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn without_chatml_the_contents_go_one_per_line() {
        let msgs = vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
        ];
        assert_eq!(render(&msgs, false), "Be brief.\nHi");
        assert_eq!(render(&msgs, true), apply_chatml(&msgs, true));
        assert!(is_chatml(Some(
            "{% for m in messages %}<|im_start|>{{ m.role }}"
        )));
        assert!(!is_chatml(Some("[INST] {{ m.content }} [/INST]")));
        assert!(!is_chatml(None));
    }

    #[test]
    fn chatml_matches_llama_cpp() {
        let msgs = vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
        ];
        assert_eq!(
            apply_chatml(&msgs, true),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(apply_chatml(&[], false), "");
    }
}
