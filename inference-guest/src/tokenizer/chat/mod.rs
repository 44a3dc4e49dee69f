//! Chat prompts: the template families llama.cpp renders without Jinja, detected from a
//! model's `tokenizer.chat_template` and rendered as llama.cpp renders them, so a
//! conversation is the same tokens here as in llama.cpp.
//!
//! A full Jinja engine would render any template, but the maintained one (`minijinja`)
//! needs `std`, and the guest is `no_std`; llama.cpp's own answer before it took on Jinja
//! was this list of families, which covers the templates real GGUFs carry.
//!
//! A rendered conversation is parts: the template's text (markers such as `<|im_start|>`,
//! roles, separators), where special-token text becomes its token, and each message's
//! content, always plain text, so a message that writes `<|im_end|>` cannot close its turn or
//! forge another role.

mod detect;
mod render;
mod template;
mod tools;

pub use template::ChatTemplate;
pub use tools::{ToolCall, ToolFormat, ToolReply, ToolSpec, ToolTemplateError};

use alloc::string::String;
use alloc::vec::Vec;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (any string is rendered as given).
    pub role: String,
    /// The message text.
    pub content: String,
    /// The calls an assistant message made (tool calling, [`ToolFormat`]).
    pub tool_calls: Vec<ToolCall>,
}

impl ChatMessage {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
        }
    }
}

impl ChatTemplate {
    /// `messages` as parts to tokenize with [`super::Tokenizer::encode_parts`]: the
    /// template's text `true` (special tokens parsed), the contents `false` (plain text),
    /// with the assistant's turn opened when `add_generation_prompt`. The host (for plain
    /// models) and the guest (for models only it can read) both use this, so a conversation
    /// is the same tokens either way.
    pub fn parts(
        self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Vec<(String, bool)> {
        render::render(self, messages, add_generation_prompt)
    }

    /// The prompt as one string, llama.cpp's `llama_chat_apply_template` byte for byte.
    /// Tokenizing it with special-token parsing lets a message forge markers; tokenize
    /// [`ChatTemplate::parts`] instead.
    pub fn render(self, messages: &[ChatMessage], add_generation_prompt: bool) -> String {
        self.parts(messages, add_generation_prompt)
            .into_iter()
            .map(|(s, _)| s)
            .collect()
    }
}

impl super::Tokenizer {
    /// A conversation's tokens in `template`, the assistant's turn opened
    /// ([`ChatTemplate::parts`], a beginning-of-sequence token first if the model wants
    /// one): the template's markers special, the messages' contents plain text.
    pub fn encode_chat(&self, messages: &[ChatMessage], template: ChatTemplate) -> Vec<u32> {
        let parts = template.parts(messages, true);
        let refs: Vec<(&str, bool)> = parts.iter().map(|(s, sp)| (s.as_str(), *sp)).collect();
        self.encode_parts(&refs, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn chatml_and_plain_as_before() {
        let msgs = vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
        ];
        assert_eq!(
            ChatTemplate::ChatMl.render(&msgs, true),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(ChatTemplate::ChatMl.render(&[], false), "");
        assert_eq!(ChatTemplate::Plain.render(&msgs, true), "Be brief.\nHi");
        assert!(
            ChatTemplate::Plain
                .parts(&msgs, true)
                .iter()
                .all(|(_, special)| !special)
        );
    }

    #[test]
    fn contents_are_the_only_plain_parts() {
        let msgs = vec![ChatMessage::new("user", "<|im_end|>")];
        let parts = ChatTemplate::ChatMl.parts(&msgs, true);
        let plain: Vec<&str> = parts
            .iter()
            .filter(|(_, special)| !special)
            .map(|(s, _)| s.as_str())
            .collect();
        assert_eq!(plain, ["<|im_end|>"]);
    }
}
