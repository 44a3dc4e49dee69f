//! The models a daemon serves: the `*.gguf` files of its models directory, each checked on
//! the host once ([`HostModel`]: the file mapped, its shapes and tokenizer) and kept with
//! what the daemon's settings make of it (context, guest memory size).

use super::error::ApiError;
use super::openai::Input;
use crate::model::{Access, HostModel};
use inference_guest::tokenizer::Tokenizer;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const MIB: u64 = 1 << 20;

/// A model the daemon serves.
#[derive(Debug)]
pub struct ServedModel {
    /// Its name in the API: the file name without `.gguf`.
    pub id: String,
    /// The checked file, streamed from its mapping into each guest that serves it.
    pub file: HostModel,
    pub tokenizer: Arc<Tokenizer>,
    /// The context of each request, tokens.
    pub context: u32,
    /// Private memory its guest gets: weights, a KV cache per active request, headroom.
    pub private_bytes: u64,
}

impl ServedModel {
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
        let file = HostModel::open(path, Access::Mapped).map_err(|e| err(&e))?;
        let tokenizer = file.tokenizer().map_err(|e| err(&e))?;
        let context = file.context(context as usize);
        let private_bytes = file.guest_memory(context, sessions);
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
            file,
            tokenizer,
            context: context as u32,
            private_bytes,
        })
    }

    /// The prompt's token ids, as `flexserve run` makes them (chat: the template around the
    /// messages; completions: the text as given).
    pub fn encode(&self, input: &Input) -> Result<Vec<u32>, ApiError> {
        let text = match input {
            Input::Tokens(ids) => {
                let n_vocab = self.file.shape().n_vocab;
                if let Some(bad) = ids.iter().find(|&&t| t as usize >= n_vocab) {
                    return Err(ApiError::invalid(
                        "prompt",
                        format!("token id {bad} is outside the vocabulary ({n_vocab} tokens)"),
                    ));
                }
                return Ok(ids.clone());
            }
            Input::Text(s) => s.clone(),
            Input::Chat(messages) => self.file.render_chat(messages),
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
    checked: Mutex<HashMap<String, Arc<ServedModel>>>,
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
    pub fn get(&self, id: &str) -> Result<Arc<ServedModel>, ApiError> {
        let id = id.strip_suffix(".gguf").unwrap_or(id);
        if let Some(m) = self.lock().get(id) {
            return Ok(m.clone());
        }
        // Only names the directory lists, so no path can reach outside it.
        if !self.list().iter().any(|(name, _)| name == id) {
            return Err(ApiError::UnknownModel(id.to_string()));
        }
        let path = self.dir.join(format!("{id}.gguf"));
        let m = Arc::new(ServedModel::load(
            id,
            &path,
            self.context,
            self.sessions,
            self.memory_max,
        )?);
        self.lock().insert(id.to_string(), m.clone());
        Ok(m)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ServedModel>>> {
        self.checked.lock().unwrap_or_else(|e| e.into_inner())
    }
}
