//! Chat prompts in the ChatML format (the SmolLM2 template; llama.cpp's `chatml`).

use alloc::string::String;
use alloc::vec::Vec;

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
/// today; other models get [`parts`]' plain form).
pub fn is_chatml(template: Option<&str>) -> bool {
    template.is_some_and(|t| t.contains("<|im_start|>"))
}

/// A conversation as parts to tokenize with [`super::Tokenizer::encode_parts`]: the
/// template's markers and roles (special tokens parsed) around each message's content
/// (plain text: a message cannot close its turn or forge a role), with the assistant's turn
/// opened; without a ChatML template the contents one per line, all plain text. The host
/// (for plain models) and the guest (for models only it can read) both use this, so a
/// conversation is the same tokens either way.
pub fn parts(messages: &[ChatMessage], chatml: bool) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if chatml {
            out.push((alloc::format!("<|im_start|>{}\n", m.role), true));
            out.push((m.content.clone(), false));
            out.push((String::from("<|im_end|>\n"), true));
        } else {
            if i > 0 {
                out.push((String::from("\n"), false));
            }
            out.push((m.content.clone(), false));
        }
    }
    if chatml {
        out.push((String::from("<|im_start|>assistant\n"), true));
    }
    out
}

impl super::Tokenizer {
    /// A conversation's tokens ([`parts`], a beginning-of-sequence token first if the model
    /// wants one): the template's markers special, the messages' contents plain text.
    pub fn encode_chat(&self, messages: &[ChatMessage], chatml: bool) -> Vec<u32> {
        let parts = parts(messages, chatml);
        let refs: Vec<(&str, bool)> = parts.iter().map(|(s, sp)| (s.as_str(), *sp)).collect();
        self.encode_parts(&refs, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn the_parts_join_into_the_template_and_only_markers_are_special() {
        let msgs = vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
        ];
        let joined = |chatml| {
            parts(&msgs, chatml)
                .into_iter()
                .map(|(s, _)| s)
                .collect::<String>()
        };
        assert_eq!(joined(false), "Be brief.\nHi");
        assert_eq!(joined(true), apply_chatml(&msgs, true));
        assert!(parts(&msgs, false).iter().all(|(_, special)| !special));
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
