//! The host's one view of a model file, shared by `run`, the daemon and the benchmarks: the
//! bytes (mapped, or read onto huge pages for the host engine), the check that the engine
//! can run them, the chat template, the tokenizer, the guest memory it needs, and its
//! SHA-256 (cached) for the load into a guest.

pub mod digest_cache;
pub mod file;
pub mod huge_buffer;

use file::{MappedModel, ModelFileError, map_model, read_model_on};
use huge_buffer::{HugePageBuffer, Pages};
use inference_guest::gguf::{Gguf, GgufError};
use inference_guest::model::{LlamaConfig, Model, ModelError};
use inference_guest::quant::Kernels;
use inference_guest::tokenizer::{ChatMessage, Tokenizer, TokenizerError, chat};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use vmm::guest_vm::{GuestError, GuestVm};

const MIB: u64 = 1 << 20;
/// Guest private memory beyond weights and KV cache: activations, logits, the guest's
/// tokenizer, allocator slack.
const HEADROOM: u64 = 96 * MIB;
/// Per further active session: its share of scratch and allocator slack, so that the guest
/// never has to evict an idle session's KV cache to make room for another's.
const SESSION_HEADROOM: u64 = 32 * MIB;
/// Guest private memory comes in 2 MiB granules.
const GRANULE: u64 = 2 * MIB;

/// A model file the host could not use.
#[derive(Debug, thiserror::Error)]
pub enum HostModelError {
    #[error(transparent)]
    File(#[from] ModelFileError),
    #[error("invalid model file: {0}")]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Engine(#[from] ModelError),
    #[error("cannot build the tokenizer: {0}")]
    Tokenizer(#[from] TokenizerError),
}

/// How the host holds the file's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Mapped read-only: the host only checks the file and streams it into a guest.
    Mapped,
    /// Read into memory on `Pages`: the host engine borrows its tensors from it.
    Read(Pages),
}

enum Bytes {
    Mapped(MappedModel),
    Read(HugePageBuffer),
}

/// A model file the engine can run, checked on the host.
pub struct HostModel {
    path: PathBuf,
    bytes: Bytes,
    shape: LlamaConfig,
    chatml: bool,
    /// Built on first use (it takes tens of milliseconds: `run` builds it while the guest
    /// boots); shared with those who keep it, like the daemon's catalogue.
    tokenizer: OnceLock<Arc<Tokenizer>>,
}

impl std::fmt::Debug for HostModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostModel")
            .field("path", &self.path)
            .field("bytes", &self.bytes().len())
            .field("chatml", &self.chatml)
            .finish_non_exhaustive()
    }
}

impl HostModel {
    /// Opens `path` and checks it as the engine will load it (GGUF, shapes, tensor types),
    /// so that a bad file fails with the engine's own words before any guest exists.
    pub fn open(path: &Path, access: Access) -> Result<Self, HostModelError> {
        let bytes = match access {
            Access::Mapped => Bytes::Mapped(map_model(path)?),
            Access::Read(pages) => Bytes::Read(read_model_on(path, pages)?),
        };
        let slice = match &bytes {
            Bytes::Mapped(m) => m.as_slice(),
            Bytes::Read(b) => b.as_slice(),
        };
        let gguf = Gguf::parse(slice)?;
        let shape = Model::from_gguf(&gguf, Kernels::detect())?.cfg;
        let chatml = gguf
            .get_str("tokenizer.chat_template")
            .ok()
            .flatten()
            .is_some_and(|t| t.contains("<|im_start|>"));
        drop(gguf);
        Ok(Self {
            path: path.to_path_buf(),
            bytes,
            shape,
            chatml,
            tokenizer: OnceLock::new(),
        })
    }

    /// The file it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Mapped(m) => m.as_slice(),
            Bytes::Read(b) => b.as_slice(),
        }
    }

    /// The model's shape (vocabulary, layers, training context, ...).
    pub fn shape(&self) -> &LlamaConfig {
        &self.shape
    }

    /// Whether chat prompts are rendered with ChatML (the model's template uses it).
    pub fn chatml(&self) -> bool {
        self.chatml
    }

    /// The engine over this file's tensors, for the host engine.
    pub fn engine(&self, kernels: Kernels) -> Result<Model<'_>, HostModelError> {
        Ok(Model::from_gguf(&Gguf::parse(self.bytes())?, kernels)?)
    }

    /// The tokenizer, built on the first call.
    pub fn tokenizer(&self) -> Result<Arc<Tokenizer>, HostModelError> {
        if let Some(t) = self.tokenizer.get() {
            return Ok(t.clone());
        }
        let built = Arc::new(Tokenizer::from_gguf(&Gguf::parse(self.bytes())?)?);
        Ok(self.tokenizer.get_or_init(|| built).clone())
    }

    /// `requested` tokens of context, capped at the model's training context.
    pub fn context(&self, requested: usize) -> usize {
        requested.clamp(1, self.shape.n_ctx_train)
    }

    /// Guest private memory for the weights and `sessions` KV caches of `context` tokens
    /// each, with headroom, in whole granules.
    pub fn guest_memory(&self, context: usize, sessions: usize) -> u64 {
        let sessions = sessions.max(1) as u64;
        let kv = self.shape.kv_cache_bytes(context) as u64 * sessions;
        let extra = SESSION_HEADROOM * (sessions - 1);
        (self.bytes().len() as u64 + kv + HEADROOM + extra).next_multiple_of(GRANULE)
    }

    /// The text to tokenize for one user `prompt`: wrapped in the chat template when the
    /// model has a ChatML one and `raw` is not asked for. Also says whether it was wrapped.
    pub fn render_prompt(&self, prompt: &str, raw: bool) -> (String, bool) {
        if raw || !self.chatml {
            return (prompt.to_string(), false);
        }
        let messages = [ChatMessage {
            role: "user".into(),
            content: prompt.into(),
        }];
        (chat::apply_chatml(&messages, true), true)
    }

    /// The text to tokenize for a conversation: ChatML with the assistant's turn opened, or
    /// (without a ChatML template) the messages' contents one per line.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> String {
        if self.chatml {
            return chat::apply_chatml(messages, true);
        }
        messages
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Streams the file into `vm` as model `id`; the host's digest comes from the cache
    /// when the file is unchanged since it was last hashed. Returns the SHA-256.
    pub fn load_into(
        &self,
        vm: &mut GuestVm,
        id: u32,
        progress: &mut dyn FnMut(u64),
    ) -> Result<[u8; 32], GuestError> {
        let known = digest_cache::lookup(&self.path);
        let sha256 = vm.load_model(id, self.bytes(), known, progress)?;
        if known.is_none() {
            digest_cache::remember(&self.path, &sha256);
        }
        Ok(sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Option<HostModel> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny.Q8_0.gguf");
        if !path.exists() {
            assert!(
                std::env::var_os("FLEXSERVE_REQUIRE_MODELS").is_none(),
                "{} is missing; run `make models`",
                path.display()
            );
            eprintln!("SKIPPED: {} is missing; run `make models`", path.display());
            return None;
        }
        Some(HostModel::open(&path, Access::Mapped).expect("tiny model opens"))
    }

    #[test]
    fn guest_memory_grows_by_a_kv_cache_and_headroom_per_session() {
        let Some(m) = tiny() else { return };
        let one = m.guest_memory(256, 1);
        let two = m.guest_memory(256, 2);
        let kv = m.shape().kv_cache_bytes(256) as u64;
        assert_eq!(one % GRANULE, 0);
        assert!(one >= m.bytes().len() as u64 + kv + HEADROOM);
        assert!(two - one >= kv + SESSION_HEADROOM - GRANULE);
        assert!(two - one <= kv + SESSION_HEADROOM + GRANULE);
    }

    #[test]
    fn context_is_capped_at_the_training_context() {
        let Some(m) = tiny() else { return };
        assert_eq!(m.context(0), 1);
        assert_eq!(m.context(usize::MAX), m.shape().n_ctx_train);
    }

    #[test]
    fn a_file_that_is_not_gguf_is_refused_by_name() {
        let path = std::env::temp_dir().join(format!("flexserve-not-gguf-{}", std::process::id()));
        std::fs::write(&path, b"not a model at all").unwrap();
        let err = HostModel::open(&path, Access::Mapped).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(
            matches!(err, HostModelError::File(ModelFileError::NotGguf { .. })),
            "{err}"
        );
    }

    #[test]
    fn the_tokenizer_is_built_once() {
        let Some(m) = tiny() else { return };
        assert!(Arc::ptr_eq(
            &m.tokenizer().unwrap(),
            &m.tokenizer().unwrap()
        ));
    }
}
