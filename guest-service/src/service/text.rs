//! Text in the guest (`feature::TEXT_PROMPT`, `feature::GUEST_TEXT`): a prompt given as text
//! or as chat messages becomes tokens with the model's own tokenizer and chat template, so a
//! host that cannot read the model (a sealed one) needs no tokenizer of its own.

use super::LoadedModel;
use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec::Vec;
use inference_guest::gguf::Gguf;
use inference_guest::model::ModelError;
use inference_guest::tokenizer::{ChatMessage, Tokenizer, chat};
use virtio_llm::wire::request::Prompt;

impl LoadedModel {
    /// The model's tokenizer, built on first use (memory pressure may drop it again).
    pub(super) fn tokenizer(&mut self) -> Result<&Tokenizer, ModelError> {
        let built = match self.tokenizer.take() {
            Some(t) => t,
            None => Tokenizer::from_gguf(&Gguf::parse(&self.file)?)?,
        };
        Ok(self.tokenizer.insert(built))
    }

    /// The prompt's token ids: as given, or text tokenized (special-token text parsed, a
    /// beginning-of-sequence token first if the model wants one), or chat messages rendered
    /// with the model's template and then tokenized.
    pub(super) fn prompt_tokens(&mut self, prompt: &Prompt) -> Result<Vec<u32>, ModelError> {
        if let Prompt::Tokens(ids) = prompt {
            return Ok(ids.clone());
        }
        let chatml = self.chatml;
        Ok(tokens(prompt, self.tokenizer()?, chatml))
    }
}

/// `prompt`'s token ids with `tokenizer`, chat messages rendered as ChatML if `chatml`.
pub(super) fn tokens(prompt: &Prompt, tokenizer: &Tokenizer, chatml: bool) -> Vec<u32> {
    let text = match prompt {
        Prompt::Tokens(ids) => return ids.clone(),
        Prompt::Text(s) => Cow::Borrowed(s.as_str()),
        Prompt::Chat(turns) => {
            let messages: Vec<ChatMessage> = turns
                .iter()
                .map(|t| ChatMessage {
                    role: String::from(t.role.as_str()),
                    content: t.content.clone(),
                })
                .collect();
            Cow::Owned(chat::render(&messages, chatml))
        }
    };
    tokenizer.encode(&text, true, true)
}
