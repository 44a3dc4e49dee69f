//! Text in the guest (`feature::TEXT_PROMPT`, `feature::GUEST_TEXT`): a prompt given as text
//! or as chat messages becomes tokens with the model's own tokenizer and chat template, so a
//! host that cannot read the model (a sealed one) needs no tokenizer of its own.

use super::LoadedModel;
use alloc::vec::Vec;
use inference_guest::gguf::Gguf;
use inference_guest::model::ModelError;
use inference_guest::tokenizer::{ChatMessage, ChatTemplate, Tokenizer};
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
        let template = self.template;
        Ok(tokens(prompt, self.tokenizer()?, template))
    }
}

/// `prompt`'s token ids with `tokenizer`: text as given (special-token text parsed: the
/// sender wrote the whole prompt), chat messages with the template's markers special and
/// their contents plain text, in the model's `template`.
pub(super) fn tokens(prompt: &Prompt, tokenizer: &Tokenizer, template: ChatTemplate) -> Vec<u32> {
    match prompt {
        Prompt::Tokens(ids) => ids.clone(),
        Prompt::Text(s) => tokenizer.encode(s, true, true),
        Prompt::Chat(turns) => {
            let messages: Vec<ChatMessage> = turns
                .iter()
                .map(|t| ChatMessage::new(t.role.as_str(), t.content.clone()))
                .collect();
            tokenizer.encode_chat(&messages, template)
        }
        // Opened before they get here (`Service::open_sealed`): nothing to tokenize.
        Prompt::Sealed(_) | Prompt::Continue => Vec::new(),
    }
}
