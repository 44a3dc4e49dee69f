//! Rendering a conversation as llama.cpp's `llm_chat_apply_template` does, family by family,
//! but as parts: the template's own text (special-token text parsed) apart from the messages'
//! contents (plain text). Joined, the parts are llama.cpp's string byte for byte.
//!
//! Roles are written into the template's text, as llama.cpp does: they come from the caller,
//! who writes the whole conversation anyway (the daemon accepts only `system`, `developer`,
//! `user` and `assistant`); the contents may carry text from anyone.

mod inst;
mod roles;
mod turns;
mod various;

use super::{ChatMessage, ChatTemplate};
use ChatTemplate as T;
use alloc::string::String;
use alloc::vec::Vec;

/// The parts of a prompt being rendered; neighbours of one kind are kept as one part.
#[derive(Default)]
pub(super) struct Out {
    parts: Vec<(String, bool)>,
}

impl Out {
    /// The template's own text: markers, roles, separators.
    pub(super) fn mark(&mut self, s: &str) {
        self.push(s, true);
    }

    /// A message's content.
    pub(super) fn text(&mut self, s: &str) {
        self.push(s, false);
    }

    /// The parts, neighbours of one kind joined.
    pub(super) fn into_parts(self) -> Vec<(String, bool)> {
        self.parts
    }

    fn push(&mut self, s: &str, special: bool) {
        if s.is_empty() {
            return;
        }
        match self.parts.last_mut() {
            Some((last, kind)) if *kind == special => last.push_str(s),
            _ => self.parts.push((String::from(s), special)),
        }
    }
}

/// `s` without the ASCII whitespace C's `isspace` knows at either end (llama.cpp's `trim`).
pub(super) fn trim(s: &str) -> &str {
    s.trim_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r'])
}

/// `messages` rendered in `template`'s family, with the assistant's turn opened when
/// `add_generation_prompt` (families whose llama.cpp rendering never opens it ignore it).
pub(super) fn render(
    template: ChatTemplate,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
) -> Vec<(String, bool)> {
    let mut out = Out::default();
    let (o, m, g) = (&mut out, messages, add_generation_prompt);
    match template {
        T::ChatMl | T::Phi3 | T::Phi4 | T::Falcon3 | T::Zephyr | T::Llama3 | T::Llama4 => {
            turns::headed(template, o, m, g)
        }
        T::ChatGlm3 | T::ChatGlm4 | T::GlmEdge | T::Megrez | T::SolarOpen | T::SeedOss => {
            turns::headed(template, o, m, g)
        }
        T::Monarch => turns::monarch(o, m, g),
        T::GptOss => turns::gpt_oss(o, m, g),
        T::Granite3 | T::Granite40 | T::Granite41 => turns::granite(template, o, m, g),
        T::Bailing | T::BailingThink | T::Bailing2 => turns::bailing(template, o, m, g),
        T::Llama2 | T::Llama2Sys | T::Llama2SysBos | T::Llama2SysStrip => {
            inst::llama2(template, o, m)
        }
        T::MistralV1 | T::MistralV3 | T::MistralV3Tekken => inst::mistral_v1_v3(template, o, m),
        T::MistralV7 | T::MistralV7Tekken => inst::mistral_v7(template, o, m),
        T::Gemma => various::gemma(o, m, g),
        T::Orion => various::orion(o, m),
        T::OpenChat => various::openchat(o, m, g),
        T::MiniCpm => various::minicpm(o, m),
        T::RwkvWorld => various::rwkv_world(o, m),
        T::GigaChat => various::gigachat(o, m, g),
        T::HunyuanDense => various::hunyuan_dense(o, m),
        T::HunyuanVl => various::hunyuan_vl(o, m),
        T::PanguEmbedded => various::pangu_embedded(o, m, g),
        T::DeepSeekOcr => m.iter().for_each(|msg| o.text(&msg.content)),
        T::Plain => plain(o, m),
        _ => roles::by_role(template, o, m, g),
    }
    out.parts
}

/// The fallback for a model without a recognised template: the contents one per line, no
/// markers at all.
fn plain(out: &mut Out, messages: &[ChatMessage]) {
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.text("\n");
        }
        out.text(&m.content);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_is_c_isspace_only() {
        assert_eq!(trim(" \t\n\x0b\x0c\rx y\r\n "), "x y");
        // Non-ASCII spaces are content to C's `isspace` in the "C" locale.
        assert_eq!(trim("\u{a0}x\u{3000}"), "\u{a0}x\u{3000}");
        assert_eq!(trim("   "), "");
    }

    #[test]
    fn parts_of_one_kind_merge_and_empty_ones_vanish() {
        let mut o = Out::default();
        o.mark("<a>");
        o.mark("b");
        o.text("");
        o.text("c");
        o.text("d");
        o.mark("");
        assert_eq!(
            o.parts,
            [(String::from("<a>b"), true), (String::from("cd"), false)]
        );
    }
}
