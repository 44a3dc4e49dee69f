//! The models a daemon serves: the `*.gguf` files of its models directory, each checked on
//! the host once (GGUF parse, model shapes) and kept with what the host needs for requests
//! (its tokenizer, chat template, context, guest memory size).

use super::error::ApiError;
use super::openai::Input;
use inference_guest::gguf::Gguf;
use inference_guest::model::Model;
use inference_guest::quant::Kernels;
use inference_guest::tokenizer::{Tokenizer, chat};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const MIB: u64 = 1 << 20;
/// Private memory beyond weights and KV cache, as `flexserve run` gives it: activations,
/// logits, the guest's tokenizer, allocator slack.
const HEADROOM: u64 = 96 * MIB;
/// Per further active request: its share of scratch and allocator slack, so that the guest
/// never has to evict an idle session's KV cache to make room for another's.
const SESSION_HEADROOM: u64 = 32 * MIB;

/// A model checked on the host.
#[derive(Debug)]
pub struct HostModel {
    /// Its name in the API: the file name without `.gguf`.
    pub id: String,
    pub path: PathBuf,
    pub tokenizer: Tokenizer,
    /// Whether chat messages are rendered with ChatML (the model's template uses it).
    pub chatml: bool,
    /// The context of each request, tokens.
    pub context: u32,
    /// Private memory its guest gets: weights, a KV cache per active request, headroom.
    pub private_bytes: u64,
    pub n_vocab: usize,
}

impl HostModel {
    /// Reads and checks `path`; `context` is capped at the model's training context;
    /// `sessions` KV caches must fit beside the weights.
    pub fn load(
        id: &str,
        path: &Path,
        context: u32,
        sessions: usize,
        memory_max: u64,
    ) -> Result<Self, ApiError> {
        let err = |e: &dyn std::fmt::Display| ApiError::Model(format!("model `{id}`: {e}"));
        let file = std::fs::read(path).map_err(|e| err(&e))?;
        let gguf = Gguf::parse(&file).map_err(|e| err(&e))?;
        let model = Model::from_gguf(&gguf, Kernels::detect()).map_err(|e| err(&e))?;
        let tokenizer = Tokenizer::from_gguf(&gguf).map_err(|e| err(&e))?;
        let chatml = gguf
            .get_str("tokenizer.chat_template")
            .ok()
            .flatten()
            .is_some_and(|t| t.contains("<|im_start|>"));
        let context = (context as usize).clamp(1, model.cfg.n_ctx_train) as u32;
        let kv = model.cfg.kv_cache_bytes(context as usize) as u64 * sessions as u64;
        let extra = SESSION_HEADROOM * (sessions.max(1) as u64 - 1);
        let private_bytes = (file.len() as u64 + kv + HEADROOM + extra).next_multiple_of(2 * MIB);
        if private_bytes > memory_max {
            return Err(err(&format_args!(
                "needs {} MiB of guest memory for {sessions} active requests of \
                 {context} tokens, more than guest.memory_max ({} MiB); lower \
                 limits.max_active or models.context",
                private_bytes / MIB,
                memory_max / MIB
            )));
        }
        Ok(Self {
            id: id.to_string(),
            path: path.to_path_buf(),
            tokenizer,
            chatml,
            context,
            private_bytes,
            n_vocab: model.cfg.n_vocab,
        })
    }

    /// The prompt's token ids, as `flexserve run` makes them (chat: the template around the
    /// messages; completions: the text as given).
    pub fn encode(&self, input: &Input) -> Result<Vec<u32>, ApiError> {
        let text = match input {
            Input::Tokens(ids) => {
                if let Some(bad) = ids.iter().find(|&&t| t as usize >= self.n_vocab) {
                    return Err(ApiError::invalid(
                        "prompt",
                        format!(
                            "token id {bad} is outside the vocabulary ({} tokens)",
                            self.n_vocab
                        ),
                    ));
                }
                return Ok(ids.clone());
            }
            Input::Text(s) => s.clone(),
            Input::Chat(messages) if self.chatml => chat::apply_chatml(messages, true),
            Input::Chat(messages) => messages
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        };
        Ok(self.tokenizer.encode(&text, true, true))
    }
}

/// The models directory and the models checked so far.
pub struct Catalogue {
    dir: PathBuf,
    context: u32,
    sessions: usize,
    memory_max: u64,
    checked: Mutex<HashMap<String, Arc<HostModel>>>,
}

impl Catalogue {
    pub fn new(dir: PathBuf, context: u32, sessions: usize, memory_max: u64) -> Self {
        Self {
            dir,
            context,
            sessions,
            memory_max,
            checked: Mutex::new(HashMap::new()),
        }
    }

    /// Model names in the directory with their files' modification times (seconds).
    pub fn list(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let id = name.strip_suffix(".gguf")?.to_string();
                let meta = e.metadata().ok().filter(|m| m.is_file())?;
                let t = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                Some((id, t))
            })
            .collect();
        out.sort();
        out
    }

    /// The model named `id` (with or without `.gguf`), checked on first use.
    pub fn get(&self, id: &str) -> Result<Arc<HostModel>, ApiError> {
        let id = id.strip_suffix(".gguf").unwrap_or(id);
        if let Some(m) = self.lock().get(id) {
            return Ok(m.clone());
        }
        // Only names the directory lists, so no path can reach outside it.
        if !self.list().iter().any(|(name, _)| name == id) {
            return Err(ApiError::UnknownModel(id.to_string()));
        }
        let path = self.dir.join(format!("{id}.gguf"));
        let m = Arc::new(HostModel::load(
            id,
            &path,
            self.context,
            self.sessions,
            self.memory_max,
        )?);
        self.lock().insert(id.to_string(), m.clone());
        Ok(m)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<HostModel>>> {
        self.checked.lock().unwrap_or_else(|e| e.into_inner())
    }
}
