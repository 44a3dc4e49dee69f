//! The models a daemon serves: the `*.gguf` and sealed `*.fsm` files of its models
//! directory, each checked on the host once ([`HostModel`]: the file mapped; a plain model's
//! shapes and tokenizer, a sealed model's header) and kept with what the daemon's settings
//! make of it (context, guest memory size).

use super::error::ApiError;
use super::openai::Input;
use crate::model::info::ModelInfo;
use crate::model::{Access, HostModel};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use virtio_llm::wire::request::Prompt;

const MIB: u64 = 1 << 20;
/// Model file extensions: plain GGUF, sealed model.
const EXTENSIONS: [&str; 2] = [".gguf", ".fsm"];

/// A model the daemon serves.
#[derive(Debug)]
pub struct ServedModel {
    /// Its name in the API: the file name without `.gguf` or `.fsm`.
    pub id: String,
    /// The checked file, streamed from its mapping into each guest that serves it.
    pub file: HostModel,
    /// The context of each request, tokens.
    pub context: u32,
    /// Private memory its guest gets: weights, a KV cache per active request, headroom.
    pub private_bytes: u64,
    /// The most text bytes one token of the vocabulary stands for (0: not known here, as
    /// for a sealed model), to refuse a far too long prompt before tokenizing it.
    longest_token: usize,
}

impl ServedModel {
    /// Reads and checks `path`; `context` is capped at the model's context; `sessions` KV
    /// caches must fit beside the weights.
    pub fn load(
        id: &str,
        path: &Path,
        context: u32,
        sessions: usize,
        memory_max: u64,
    ) -> Result<Self, ApiError> {
        let err = |e: &dyn std::fmt::Display| ApiError::Model(format!("model `{id}`: {e}"));
        let file = HostModel::open(path, Access::Mapped).map_err(|e| err(&e))?;
        let mut longest_token = 0;
        if !file.is_sealed() {
            let t = file.tokenizer().map_err(|e| err(&e))?;
            longest_token = (0..t.n_vocab() as u32)
                .map(|id| {
                    t.token_bytes(id)
                        .len()
                        .max(t.token_text(id).map_or(0, str::len))
                })
                .max()
                .unwrap_or(0);
        }
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
            context: context as u32,
            private_bytes,
            longest_token,
        })
    }

    /// Refuses text that cannot fit the context whatever it tokenizes to: each token covers
    /// at most `longest_token` bytes of it (twice that, for any normalisation), so a 4 MiB
    /// prompt for a 2048-token context is refused without the seconds of tokenizing it.
    pub fn fits_roughly(&self, input: &Input) -> Result<(), ApiError> {
        let bytes = match input {
            Input::Text(t) => t.len(),
            Input::Chat(messages) => messages.iter().map(|m| m.content.len()).sum(),
            Input::Tokens(_) | Input::Sealed(_) => return Ok(()),
        };
        let most = (self.context as usize).saturating_mul(2 * self.longest_token.max(1));
        if self.longest_token > 0 && bytes > most {
            return Err(ApiError::PromptTooLong {
                prompt: bytes / (2 * self.longest_token),
                context: self.context,
            });
        }
        Ok(())
    }

    /// The prompt for the guest, as `flexserve run` makes it: a plain model's tokenized
    /// here (chat: the template around the messages; completions: the text as given); a
    /// sealed model's text or messages, which the guest renders and tokenizes.
    pub fn encode(&self, input: &Input) -> Result<Prompt, ApiError> {
        let model = |e: crate::model::HostModelError| ApiError::Model(e.to_string());
        match input {
            Input::Tokens(ids) => {
                // A sealed model's vocabulary is the guest's to check.
                if let Ok(shape) = self.file.shape()
                    && let Some(bad) = ids.iter().find(|&&t| t as usize >= shape.n_vocab)
                {
                    return Err(ApiError::invalid(
                        "prompt",
                        format!(
                            "token id {bad} is outside the vocabulary ({} tokens)",
                            shape.n_vocab
                        ),
                    ));
                }
                Ok(Prompt::Tokens(ids.clone()))
            }
            Input::Text(s) if self.file.is_sealed() => Ok(Prompt::Text(s.clone())),
            Input::Text(s) => Ok(Prompt::Tokens(
                self.file.tokenizer().map_err(model)?.encode(s, true, true),
            )),
            Input::Chat(messages) => self.file.guest_chat(messages).map_err(model),
            Input::Sealed(_) => Err(ApiError::invalid(
                "flexserve_sealed",
                "a sealed request goes to the guest as it is; it has no prompt to encode here",
            )),
        }
    }
}

/// A model file of the directory and what it says of itself.
#[derive(Clone, Debug)]
pub struct Listed {
    /// Its name in the API.
    pub id: String,
    /// Its file in the models directory.
    pub path: PathBuf,
    /// The file's modification time, seconds since the epoch.
    pub modified: u64,
    /// Its metadata, or why the file cannot be read (it is listed all the same: its name
    /// is there, and a request for it would say the same).
    pub info: Result<Arc<ModelInfo>, String>,
    /// The file's SHA-256 in hex, when a load or `flexserve run` hashed it already
    /// (hashing gigabytes to answer a listing would take seconds).
    pub digest: Option<String>,
    /// The context a request on it gets here: `models.context` capped at the model's.
    pub context: u32,
}

/// Metadata read so far, by file, with the size and modification time it was read at.
type InfoCache = HashMap<PathBuf, (u64, u64, Arc<ModelInfo>)>;

/// A model's place in the catalogue: empty until its file is checked.
type Slot = Arc<Mutex<Option<Arc<ServedModel>>>>;

/// The models directory and the models checked so far.
pub struct Catalogue {
    dir: PathBuf,
    context: u32,
    sessions: usize,
    memory_max: u64,
    /// Whether guests get a key root, without which sealed models are refused.
    can_unseal: bool,
    /// Each model's slot: its lock is held while the model is read and checked, so that
    /// concurrent first uses read the file once (the others wait and take the result).
    checked: Mutex<HashMap<String, Slot>>,
    /// Model files read and checked so far.
    loads: std::sync::atomic::AtomicU64,
    infos: Mutex<InfoCache>,
}

impl Catalogue {
    pub fn new(
        dir: PathBuf,
        context: u32,
        sessions: usize,
        memory_max: u64,
        can_unseal: bool,
    ) -> Self {
        Self {
            dir,
            context,
            sessions,
            memory_max,
            can_unseal,
            checked: Mutex::new(HashMap::new()),
            loads: Default::default(),
            infos: Mutex::new(HashMap::new()),
        }
    }

    /// How many times a model file was read and checked.
    pub fn loads(&self) -> u64 {
        self.loads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Model names in the directory with their files' modification times (seconds).
    pub fn list(&self) -> Vec<(String, u64)> {
        self.files().into_iter().map(|(id, _, t)| (id, t)).collect()
    }

    /// Every model of the directory with its metadata (blocking: it maps each file not
    /// described since it last changed and reads its header).
    pub fn describe_all(&self) -> Vec<Listed> {
        self.files()
            .into_iter()
            .map(|(id, path, modified)| self.describe_file(id, &path, modified))
            .collect()
    }

    /// The model named `id` with its metadata.
    pub fn describe(&self, id: &str) -> Result<Listed, ApiError> {
        let id = EXTENSIONS
            .iter()
            .find_map(|ext| id.strip_suffix(ext))
            .unwrap_or(id);
        self.files()
            .into_iter()
            .find(|(name, _, _)| name == id)
            .map(|(id, path, modified)| self.describe_file(id, &path, modified))
            .ok_or_else(|| ApiError::UnknownModel(id.to_string()))
    }

    fn describe_file(&self, id: String, path: &Path, modified: u64) -> Listed {
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        let cached = {
            let infos = self.infos.lock().unwrap_or_else(|e| e.into_inner());
            infos
                .get(path)
                .filter(|(s, t, _)| (*s, *t) == (size, modified))
                .map(|(_, _, i)| i.clone())
        };
        let info = match cached {
            Some(i) => Ok(i),
            None => ModelInfo::read(path)
                .map(Arc::new)
                .map_err(|e| e.to_string()),
        };
        if let Ok(i) = &info {
            let mut infos = self.infos.lock().unwrap_or_else(|e| e.into_inner());
            infos.insert(path.to_path_buf(), (size, modified, i.clone()));
        }
        let context = match &info {
            Ok(i) if i.context_length > 0 => self.context.clamp(1, i.context_length),
            _ => self.context,
        };
        Listed {
            id,
            path: path.to_path_buf(),
            modified,
            info,
            digest: crate::model::digest_cache::lookup(path)
                .map(|d| d.iter().map(|b| format!("{b:02x}")).collect()),
            context,
        }
    }

    /// Model names, their files and modification times. A name with both a `.gguf` and a
    /// `.fsm` file is the sealed one: the owner shipped it sealed for a reason.
    fn files(&self) -> Vec<(String, PathBuf, u64)> {
        let mut out: Vec<(String, PathBuf, u64)> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let id = EXTENSIONS
                    .iter()
                    .find_map(|ext| name.strip_suffix(ext))?
                    .to_string();
                // Follows symlinks: a models directory often links to files kept elsewhere.
                let meta = std::fs::metadata(e.path()).ok().filter(|m| m.is_file())?;
                let t = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                Some((id, e.path(), t))
            })
            .collect();
        // `x.fsm` sorts before `x.gguf`, and `dedup_by` keeps the first of each name.
        out.sort();
        out.dedup_by(|next, first| next.0 == first.0);
        out
    }

    /// The model named `id` (with or without `.gguf` or `.fsm`), checked on first use.
    pub fn get(&self, id: &str) -> Result<Arc<ServedModel>, ApiError> {
        let id = EXTENSIONS
            .iter()
            .find_map(|ext| id.strip_suffix(ext))
            .unwrap_or(id);
        let known = self.lock().get(id).cloned();
        if let Some(m) = known.and_then(|slot| slot.lock().ok()?.clone()) {
            return Ok(m);
        }
        // Only files the directory lists, so no path can reach outside it (and only their
        // names get a slot, so made-up names cannot grow the map).
        let Some((_, path, _)) = self.files().into_iter().find(|(name, _, _)| name == id) else {
            return Err(ApiError::UnknownModel(id.to_string()));
        };
        if path.extension().is_some_and(|e| e == "fsm") && !self.can_unseal {
            return Err(ApiError::Model(format!(
                "model `{id}` is sealed, and this daemon has no key root to give its guest \
                 (see its start-up log); set FLEXSERVE_KEY_ROOT or HOME for the development root"
            )));
        }
        let slot = self.lock().entry(id.to_string()).or_default().clone();
        // Held while loading: a concurrent first use waits here, then finds the model.
        // A failed load leaves the slot empty, and the next use tries again.
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = slot.as_ref() {
            return Ok(m.clone());
        }
        self.loads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let m = Arc::new(ServedModel::load(
            id,
            &path,
            self.context,
            self.sessions,
            self.memory_max,
        )?);
        *slot = Some(m.clone());
        Ok(m)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.checked.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiny test model of `make setup`, if it is there.
    fn models_dir() -> Option<PathBuf> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models");
        if dir.join("tiny.Q8_0.gguf").exists() {
            return Some(dir);
        }
        assert!(
            std::env::var_os("FLEXSERVE_REQUIRE_MODELS").is_none(),
            "models/tiny.Q8_0.gguf is missing (make setup)"
        );
        None
    }

    #[test]
    fn concurrent_first_uses_read_the_model_once() {
        let Some(dir) = models_dir() else {
            return;
        };
        let c = Arc::new(Catalogue::new(dir, 256, 1, 4 << 30, false));
        let start = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (c, start) = (c.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    c.get("tiny.Q8_0").map(|m| Arc::as_ptr(&m) as usize)
                })
            })
            .collect();
        let got: Vec<_> = threads
            .into_iter()
            .map(|t| t.join().unwrap().unwrap())
            .collect();
        assert_eq!(c.loads(), 1);
        assert!(got.iter().all(|p| *p == got[0]), "one model for all");
        assert!(matches!(
            c.get("no-such-model"),
            Err(ApiError::UnknownModel(_))
        ));
        assert_eq!(c.lock().len(), 1, "unknown names take no slot");
    }

    #[test]
    fn text_far_beyond_the_context_is_refused_before_tokenizing() {
        let Some(dir) = models_dir() else {
            return;
        };
        let c = Catalogue::new(dir, 64, 1, 4 << 30, false);
        let m = c.get("tiny.Q8_0").unwrap();
        assert!(m.fits_roughly(&Input::Text("hello".into())).is_ok());
        let huge = Input::Text("x".repeat(1 << 20));
        assert!(matches!(
            m.fits_roughly(&huge),
            Err(ApiError::PromptTooLong { .. })
        ));
    }
}
