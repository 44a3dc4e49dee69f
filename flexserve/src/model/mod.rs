//! The host's one view of a model file, shared by `run`, the daemon and the benchmarks.
//!
//! A plain GGUF: the bytes (mapped, or read onto huge pages for the host engine), the check
//! that the engine can run them, the chat template, the tokenizer, the guest memory it
//! needs, and its SHA-256 (cached) for the load into a guest.
//!
//! A sealed model (`.fsm`, docs/sealed-model.md): only its public header, which sizes the
//! guest's memory and the context; the host parses no GGUF, holds no tokenizer, and the
//! guest renders and tokenizes the prompt and sends the answer's text.

pub mod digest_cache;
pub mod file;
pub mod huge_buffer;
pub mod info;

use file::{MappedModel, ModelFileError, map_model, read_model_on};
use huge_buffer::{HugePageBuffer, Pages};
use inference_guest::gguf::{Gguf, GgufError};
use inference_guest::model::{LlamaConfig, Model, ModelError};
use inference_guest::quant::Kernels;
use inference_guest::tokenizer::{ChatMessage, ChatTemplate, Tokenizer, TokenizerError};
use sealed_model::{Header, SealError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use virtio_llm::wire::request::{ChatRole, ChatTurn, Prompt};
use vmm::guest_vm::{GuestError, GuestVm, SealedLoadOptions};

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
    #[error("invalid sealed model {path}: {source}")]
    Sealed { path: PathBuf, source: SealError },
    #[error(
        "{path} is a sealed model: the host cannot read it, so it has no {what}; use the \
         plain GGUF for that"
    )]
    SealedHere { path: PathBuf, what: &'static str },
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

/// What the host knows of a plain GGUF.
struct Plain {
    shape: LlamaConfig,
    /// The family of its `tokenizer.chat_template` (the guest detects the same one).
    template: ChatTemplate,
    /// Built on first use (it takes tens of milliseconds: `run` builds it while the guest
    /// boots); shared with those who keep it, like the daemon's catalogue.
    tokenizer: OnceLock<Arc<Tokenizer>>,
}

enum Format {
    Plain(Plain),
    /// The header, checked by its rules (the guest checks the owner's signature).
    Sealed(Box<Header>),
}

/// A model file the engine can run, checked on the host as far as the host can read it.
pub struct HostModel {
    path: PathBuf,
    bytes: Bytes,
    format: Format,
}

impl std::fmt::Debug for HostModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostModel")
            .field("path", &self.path)
            .field("bytes", &self.bytes().len())
            .field("sealed", &self.is_sealed())
            .finish_non_exhaustive()
    }
}

impl HostModel {
    /// Opens `path` and checks it: a plain GGUF as the engine will load it (shapes, tensor
    /// types), so that a bad file fails with the engine's own words before any guest
    /// exists; a sealed model by its header's rules and its length.
    pub fn open(path: &Path, access: Access) -> Result<Self, HostModelError> {
        let bytes = match access {
            Access::Mapped => Bytes::Mapped(map_model(path)?),
            Access::Read(pages) => Bytes::Read(read_model_on(path, pages)?),
        };
        let slice = match &bytes {
            Bytes::Mapped(m) => m.as_slice(),
            Bytes::Read(b) => b.as_slice(),
        };
        let format = if slice.starts_with(&sealed_model::MAGIC) {
            let (header, _, _) =
                Header::split_file(slice).map_err(|source| HostModelError::Sealed {
                    path: path.to_path_buf(),
                    source,
                })?;
            Format::Sealed(Box::new(header))
        } else {
            let gguf = Gguf::parse(slice)?;
            let shape = Model::from_gguf(&gguf, Kernels::detect())?.cfg;
            let template =
                ChatTemplate::detect(gguf.get_str("tokenizer.chat_template").ok().flatten());
            Format::Plain(Plain {
                shape,
                template,
                tokenizer: OnceLock::new(),
            })
        };
        Ok(Self {
            path: path.to_path_buf(),
            bytes,
            format,
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

    /// Bytes a load into a guest streams (and reports progress in): the whole plain file,
    /// or a sealed model's sealed body.
    pub fn load_bytes(&self) -> u64 {
        match &self.format {
            Format::Plain(_) => self.bytes().len() as u64,
            Format::Sealed(h) => h.sealed_body_bytes(),
        }
    }

    /// Whether it is a sealed model (only a guest it was sealed to can read it).
    pub fn is_sealed(&self) -> bool {
        matches!(self.format, Format::Sealed(_))
    }

    /// A sealed model's layers' plaintext sizes, in load order (header and embeddings, the
    /// blocks, the output), from its header; empty for a plain model.
    pub fn sealed_layers(&self) -> Vec<u64> {
        match &self.format {
            Format::Sealed(h) => h.layers().iter().map(|l| l.end - l.start).collect(),
            Format::Plain(_) => Vec::new(),
        }
    }

    fn plain(&self, what: &'static str) -> Result<&Plain, HostModelError> {
        match &self.format {
            Format::Plain(p) => Ok(p),
            Format::Sealed(_) => Err(HostModelError::SealedHere {
                path: self.path.clone(),
                what,
            }),
        }
    }

    /// The model's shape (vocabulary, layers, training context, ...); a plain model's only.
    pub fn shape(&self) -> Result<&LlamaConfig, HostModelError> {
        Ok(&self.plain("shape")?.shape)
    }

    /// The engine over this file's tensors, for the host engine.
    pub fn engine(&self, kernels: Kernels) -> Result<Model<'_>, HostModelError> {
        self.plain("engine")?;
        Ok(Model::from_gguf(&Gguf::parse(self.bytes())?, kernels)?)
    }

    /// The tokenizer, built on the first call; a plain model's only.
    pub fn tokenizer(&self) -> Result<Arc<Tokenizer>, HostModelError> {
        let plain = self.plain("tokenizer")?;
        if let Some(t) = plain.tokenizer.get() {
            return Ok(t.clone());
        }
        let built = Arc::new(Tokenizer::from_gguf(&Gguf::parse(self.bytes())?)?);
        Ok(plain.tokenizer.get_or_init(|| built).clone())
    }

    /// `requested` tokens of context, capped at the model's context (a sealed model's
    /// header says it).
    pub fn context(&self, requested: usize) -> usize {
        let max = match &self.format {
            Format::Plain(p) => p.shape.n_ctx_train,
            Format::Sealed(h) => h.context_len() as usize,
        };
        requested.clamp(1, max.max(1))
    }

    /// Guest private memory one more session of `context` tokens takes: its KV cache and
    /// its share of scratch.
    pub fn session_bytes(&self, context: usize) -> u64 {
        self.kv_bytes(context) + SESSION_HEADROOM
    }

    /// Bytes of a KV cache of `context` tokens.
    fn kv_bytes(&self, context: usize) -> u64 {
        match &self.format {
            Format::Plain(p) => p.shape.kv_cache_bytes(context) as u64,
            Format::Sealed(h) => h
                .kv_bytes_per_token()
                .saturating_mul(self.context(context) as u64),
        }
    }

    /// Guest private memory for the weights, `sessions` KV caches of `context` tokens each,
    /// the forward pass's buffers for a prompt batch, and headroom, in whole granules.
    pub fn guest_memory(&self, context: usize, sessions: usize) -> u64 {
        let sessions = sessions.max(1) as u64;
        let kv = self.kv_bytes(context);
        let (weights, batch) = match &self.format {
            Format::Plain(p) => (
                self.bytes().len() as u64,
                p.shape.batch_bytes(context) as u64,
            ),
            // The header gives no layer shapes: an eighth of the weights covers a full
            // batch's buffers of every model tried (they are 2 to 6 % of the weights).
            Format::Sealed(h) => (h.body_bytes(), h.body_bytes() / 8),
        };
        let extra = SESSION_HEADROOM * (sessions - 1);
        (weights + kv * sessions + batch + HEADROOM + extra).next_multiple_of(GRANULE)
    }

    /// One user `prompt` as a plain model's tokens, wrapped in its chat template unless
    /// `raw` (or no template family was recognised); also says whether it was wrapped.
    pub fn prompt_tokens(
        &self,
        prompt: &str,
        raw: bool,
    ) -> Result<(Vec<u32>, bool), HostModelError> {
        let template = self.plain("chat template")?.template;
        let chat = !raw && template != ChatTemplate::Plain;
        let tokenizer = self.tokenizer()?;
        let ids = if chat {
            tokenizer.encode_chat(&[ChatMessage::new("user", prompt)], template)
        } else {
            tokenizer.encode(prompt, true, true)
        };
        Ok((ids, chat))
    }

    /// The prompt for the guest from one user `prompt`, and whether a chat template wraps
    /// it: a plain model's tokenized here ([`Self::prompt_tokens`]); a sealed model's as
    /// text (`raw`) or as one user message the guest renders with the model's template.
    pub fn guest_prompt(&self, prompt: &str, raw: bool) -> Result<(Prompt, bool), HostModelError> {
        if !self.is_sealed() {
            let (ids, chat) = self.prompt_tokens(prompt, raw)?;
            return Ok((Prompt::Tokens(ids), chat));
        }
        if raw {
            return Ok((Prompt::Text(prompt.to_string()), false));
        }
        let turn = ChatTurn {
            role: ChatRole::User,
            content: prompt.to_string(),
        };
        Ok((Prompt::Chat(vec![turn]), true))
    }

    /// The chat template family of a plain model (a sealed model's is the guest's to read).
    pub fn chat_template(&self) -> Result<ChatTemplate, HostModelError> {
        Ok(self.plain("chat template")?.template)
    }

    /// The prompt for the guest from a conversation: tokenized here with the template for
    /// a plain model, the messages themselves for a sealed one.
    pub fn guest_chat(&self, messages: &[ChatMessage]) -> Result<Prompt, HostModelError> {
        let Format::Plain(p) = &self.format else {
            let turns = messages.iter().map(|m| ChatTurn {
                role: match m.role.as_str() {
                    "system" => ChatRole::System,
                    "assistant" => ChatRole::Assistant,
                    _ => ChatRole::User,
                },
                content: m.content.clone(),
            });
            return Ok(Prompt::Chat(turns.collect()));
        };
        Ok(Prompt::Tokens(
            self.tokenizer()?.encode_chat(messages, p.template),
        ))
    }

    /// Streams the file into `vm` as model `id`: a plain model with its SHA-256 (from the
    /// cache when the file is unchanged since it was last hashed), a sealed one chunk by
    /// chunk for the guest to unseal under `sealed`'s policy. Returns who signed a sealed
    /// model (a plain one has no owner).
    pub fn load_into(
        &self,
        vm: &mut GuestVm,
        id: u32,
        sealed: &SealedLoadOptions,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Option<sealed_model::OwnerPublicKey>, GuestError> {
        Ok(self
            .load_sealed_or_plain(vm, id, sealed, progress)?
            .map(|l| l.owner))
    }

    /// [`Self::load_into`], with what a sealed load did (`None` for a plain model): its
    /// owner, and how much of it came from a layer prefix the guest kept.
    pub fn load_sealed_or_plain(
        &self,
        vm: &mut GuestVm,
        id: u32,
        sealed: &SealedLoadOptions,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Option<vmm::guest_vm::SealedLoaded>, GuestError> {
        if self.is_sealed() {
            return vm
                .load_sealed_with(id, self.bytes(), sealed, progress)
                .map(Some);
        }
        let known = digest_cache::lookup(&self.path);
        let sha256 = vm.load_model(id, self.bytes(), known, progress)?;
        if known.is_none() {
            digest_cache::remember(&self.path, &sha256);
        }
        Ok(None)
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
        let kv = m.shape().unwrap().kv_cache_bytes(256) as u64;
        assert_eq!(one % GRANULE, 0);
        assert!(one >= m.bytes().len() as u64 + kv + HEADROOM);
        assert!(two - one >= kv + SESSION_HEADROOM - GRANULE);
        assert!(two - one <= kv + SESSION_HEADROOM + GRANULE);
        assert_eq!(m.session_bytes(256), kv + SESSION_HEADROOM);
    }

    #[test]
    fn context_is_capped_at_the_training_context() {
        let Some(m) = tiny() else { return };
        assert_eq!(m.context(0), 1);
        assert_eq!(m.context(usize::MAX), m.shape().unwrap().n_ctx_train);
    }

    #[test]
    fn a_file_that_is_not_gguf_is_refused_by_name() {
        let path = std::env::temp_dir().join(format!("flexserve-not-gguf-{}", std::process::id()));
        std::fs::write(&path, b"not a model at all").unwrap();
        let err = HostModel::open(&path, Access::Mapped).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(
            matches!(err, HostModelError::File(ModelFileError::NotAModel { .. })),
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
