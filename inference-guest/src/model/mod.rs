//! A llama-family model: hyper-parameters, borrowed weights, and sessions that run it.
//!
//! ```ignore
//! let model = Model::from_gguf(&gguf, Kernels::detect())?;
//! let mut session = model.new_session(2048);
//! let logits = session.eval(&model, &prompt_ids, Logits::Last, &pool)?;
//! ```
//!
//! A model whose file is still arriving computes as its layers come in: see [`streaming`].
//! Several sessions' next tokens compute in one pass with [`Model::decode_batch`] (see
//! `batch.rs`).

mod attention;
mod batch;
mod columns;
mod config;
mod embedding;
mod error;
mod forward;
mod gemma;
mod kv_cache;
mod matmul;
pub mod streaming;
#[cfg(all(test, feature = "std"))]
mod streaming_tests;
mod weights;

pub use batch::{BatchBuffers, BatchError, DecodeStep};
pub use config::{LlamaConfig, RopeLayout};
pub use error::ModelError;
pub use forward::Logits;
pub use gemma::{GemmaConfig, GemmaVersion};
pub use streaming::{FileArrival, Piece, StreamingModel};
pub use weights::{Layer, Matrix, Weights};

use crate::gguf::Gguf;
use crate::parallel::Parallel;
use crate::quant::Kernels;
use alloc::vec::Vec;
use forward::Buffers;
use kv_cache::KvCache;

/// The most tokens one forward pass takes; longer prompts are split. Bounds the activation
/// buffers (a batch of `t` needs about `t * (4 * n_embd + 3 * n_ff)` floats), and equals
/// llama.cpp's default batch so both split long prompts alike (which changes summation
/// order, see `attention`).
pub const MAX_BATCH: usize = 512;

/// A loaded model: configuration, weights borrowed from the GGUF bytes, chosen kernels.
pub struct Model<'a> {
    pub cfg: LlamaConfig,
    pub weights: Weights<'a>,
    kernels: Kernels,
}

impl<'a> Model<'a> {
    /// Checks `g` describes a supported llama-family model and borrows its weights.
    pub fn from_gguf(g: &Gguf<'a>, kernels: Kernels) -> Result<Self, ModelError> {
        let cfg = LlamaConfig::from_gguf(g)?;
        let weights = Weights::from_gguf(g, &cfg, &kernels)?;
        Ok(Self {
            cfg,
            weights,
            kernels,
        })
    }

    /// The kernels this model runs on.
    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    /// A fresh session with room for `n_ctx` tokens (capped at the training context).
    pub fn new_session(&self, n_ctx: usize) -> Session {
        Session::new(&self.cfg, n_ctx)
    }
}

/// One conversation's state: its KV cache and position.
pub struct Session {
    kv: KvCache,
    buf: Buffers,
    n_past: usize,
    logits: Vec<f32>,
}

impl Session {
    /// A session of `n_ctx` positions for a model of shapes `cfg` (what
    /// [`Model::new_session`] makes, without a parsed model: parsing allocates).
    pub fn new(cfg: &LlamaConfig, n_ctx: usize) -> Self {
        let n_ctx = n_ctx.clamp(1, cfg.n_ctx_train);
        Session {
            kv: KvCache::new(cfg.n_layer, n_ctx, cfg.n_head_kv, cfg.head_dim),
            buf: Buffers::default(),
            n_past: 0,
            logits: Vec::new(),
        }
    }

    /// Tokens evaluated so far.
    pub fn n_past(&self) -> usize {
        self.n_past
    }

    /// The context size.
    pub fn n_ctx(&self) -> usize {
        self.kv.n_ctx()
    }

    /// Bytes of KV cache held.
    pub fn kv_bytes(&self) -> usize {
        self.kv.bytes()
    }

    /// Layers of its cache.
    pub fn kv_layers(&self) -> usize {
        self.kv.n_layer()
    }

    /// Bytes of one layer's keys and values for `n` positions, as
    /// [`export_kv_layer`](Self::export_kv_layer) writes them.
    pub fn kv_layer_bytes(&self, n: usize) -> usize {
        self.kv.layer_bytes(n)
    }

    /// Appends `layer`'s keys and values for positions `[0, n)` to `out` (f16, exact).
    pub fn export_kv_layer(&self, layer: usize, n: usize, out: &mut Vec<u8>) {
        self.kv.export_layer(layer, n, out);
    }

    /// Takes back one layer [`export_kv_layer`](Self::export_kv_layer) wrote; `false` (and
    /// nothing changed) if it does not fit this session.
    pub fn import_kv_layer(&mut self, layer: usize, n: usize, bytes: &[u8]) -> bool {
        self.kv.import_layer(layer, n, bytes)
    }

    /// Marks positions `[0, n)` evaluated, once every layer of them was imported; `false`
    /// if `n` is past the context.
    pub fn set_evaluated(&mut self, n: usize) -> bool {
        if n > self.kv.n_ctx() {
            return false;
        }
        self.n_past = n;
        true
    }

    /// The logits of the last evaluation, as [`Session::eval`] lent them (or as a batched
    /// step, [`Model::decode_batch`], left them): `[n_vocab]` per position asked for; empty
    /// before the first.
    pub fn last_logits(&mut self) -> &mut [f32] {
        &mut self.logits
    }

    /// Frees the activations its evaluations keep for the next one, sized for the longest
    /// batch of tokens it evaluated (tens of MiB after a long prompt to a large model):
    /// for a session that waits, or that only [`Model::decode_batch`] steps from now on
    /// (a batch has its own). The next evaluation allocates them again.
    pub fn release_scratch(&mut self) {
        self.buf = Buffers::default();
    }

    /// Bytes of the activations it keeps ([`release_scratch`](Self::release_scratch)).
    pub fn scratch_bytes(&self) -> usize {
        self.buf.held_bytes()
    }

    /// Forgets every token (the cache is overwritten by the next evaluation).
    pub fn reset(&mut self) {
        self.n_past = 0;
    }

    /// Forgets every token after the first `n` (a no-op if it holds no more): the next
    /// evaluation goes on from position `n`.
    pub fn truncate(&mut self, n: usize) {
        self.n_past = self.n_past.min(n);
    }

    /// Evaluates `tokens` after those already seen and returns logits: `[n_vocab]` for
    /// [`Logits::Last`], `[tokens.len()][n_vocab]` for [`Logits::All`]. On error the session
    /// is unchanged. The logits are the session's own buffer, lent mutably so a sampler can
    /// work on them in place instead of copying a vocabulary's worth per token; the next
    /// evaluation overwrites them.
    pub fn eval(
        &mut self,
        model: &Model<'_>,
        tokens: &[u32],
        want: Logits,
        par: &dyn Parallel,
    ) -> Result<&mut [f32], ModelError> {
        self.eval_batches(
            model.cfg.n_vocab,
            tokens,
            want,
            |kv, buf, n_past, batch, w, out| {
                model.forward_batch(kv, buf, n_past, batch, w, par, out)
            },
        )
    }

    /// [`Session::eval`]'s split of `tokens` into batches of at most [`MAX_BATCH`], each run
    /// by `forward(kv, buffers, n_past, batch, want, logits)`.
    fn eval_batches(
        &mut self,
        n_vocab: usize,
        tokens: &[u32],
        want: Logits,
        mut forward: impl FnMut(
            &mut KvCache,
            &mut Buffers,
            usize,
            &[u32],
            Logits,
            &mut Vec<f32>,
        ) -> Result<(), ModelError>,
    ) -> Result<&mut [f32], ModelError> {
        if tokens.is_empty() {
            return Err(ModelError::EmptyBatch);
        }
        if self.n_past + tokens.len() > self.kv.n_ctx() {
            return Err(ModelError::ContextFull {
                needed: self.n_past + tokens.len(),
                n_ctx: self.kv.n_ctx(),
            });
        }
        let mut all = Vec::new();
        let chunks = tokens.len().div_ceil(MAX_BATCH);
        for (i, chunk) in tokens.chunks(MAX_BATCH).enumerate() {
            let last = i + 1 == chunks;
            let chunk_want = if want == Logits::All {
                Logits::All
            } else {
                Logits::Last
            };
            forward(
                &mut self.kv,
                &mut self.buf,
                self.n_past + i * MAX_BATCH,
                chunk,
                chunk_want,
                &mut self.logits,
            )?;
            if want == Logits::All && chunks > 1 {
                all.extend_from_slice(&self.logits);
            }
            if last && want == Logits::All && chunks > 1 {
                self.logits = core::mem::take(&mut all);
            }
        }
        self.n_past += tokens.len();
        debug_assert_eq!(self.logits.len() % n_vocab, 0);
        Ok(&mut self.logits)
    }
}
