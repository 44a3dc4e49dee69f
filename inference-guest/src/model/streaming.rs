//! A model that computes while its file is still arriving.
//!
//! Sealed models reach the guest chunk by chunk, decrypted front to back into one buffer,
//! and laid out in forward order (`flexserve-model`'s re-layout: GGUF header and
//! `token_embd` first, then each block `blk.N.*` in turn, then `output_norm` and `output`).
//! A [`StreamingModel`] attaches each [`Piece`] of the weights once its bytes are in, and
//! [`Session::eval_arriving`] runs the first batch layer by layer, waiting for each layer's
//! bytes just before computing with them, so prefill starts while later layers still arrive.
//! Once every piece is attached it runs `Model::forward_batch`, the loaded model's own
//! code, and [`StreamingModel::into_model`] hands out the ordinary [`Model`].
//!
//! # The arrival invariant
//!
//! While the file arrives, the bytes past what has been decrypted are being written, and a
//! live `&[u8]` over them would be undefined behaviour. So the engine reads the file only
//! through the slices a [`FileArrival`] hands out, and the two sides split the work:
//!
//! - **The arrival**: `wait_for(end)` returns a slice that starts at the file's first byte
//!   and is at least `end` bytes long, whose bytes are *final*: nothing writes them again
//!   for as long as `'a` lasts. It may create that slice from a raw pointer into the buffer
//!   being filled, since it writes only beyond the lengths it has returned.
//! - **The engine**: reads and keeps only sub-slices of slices `wait_for` returned (a
//!   header from [`Gguf::parse_prefix`] borrows only the prefix it parsed), and never
//!   derives a slice reaching past one; it asks for a piece's bytes before taking them.
//!   A returned slice shorter than asked for is an error ([`ModelError::Arrival`]), not a
//!   read past it.

use super::columns::Columns;
use super::forward::Forward;
use super::weights::{ROPE_FREQS, TensorSource};
use super::{Layer, LlamaConfig, Logits, Matrix, Model, ModelError, Session, Weights};
use super::{forward::Buffers, kv_cache::KvCache};
use crate::gguf::{Gguf, GgufError};
use crate::parallel::Parallel;
use crate::quant::Kernels;
use alloc::boxed::Box;
use alloc::format;
use alloc::vec::Vec;

/// A model file arriving front to back: see [the arrival invariant](self#the-arrival-invariant).
pub trait FileArrival<'a> {
    /// Returns once at least `end` bytes of the file are final: the final prefix (a slice
    /// from the file's first byte over bytes nobody writes any more, possibly longer than
    /// `end`), or an error that ends the evaluation (for a load that failed or was
    /// cancelled, [`ModelError::Arrival`]).
    fn wait_for(&mut self, end: usize) -> Result<&'a [u8], ModelError>;

    /// Called just before the forward pass computes with `piece` while the model is still
    /// loading (never once it is loaded): a hook for progress reports and tests.
    fn computing(&mut self, piece: Piece) {
        let _ = piece;
    }
}

/// A piece of the weights, in the order the forward pass needs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// `token_embd` (and `rope_freqs`, llama3's RoPE factors, when the model has them).
    Embeddings,
    /// Block `i`'s tensors, `blk.{i}.*`.
    Layer(usize),
    /// `output_norm` and `output` (or the embeddings again when the model ties them).
    Output,
}

/// A model whose weights are attached piece by piece as its file arrives (see the
/// [module documentation](self)).
pub struct StreamingModel<'a> {
    header: Gguf<'a>,
    cfg: LlamaConfig,
    kernels: Kernels,
    /// Where in the file the bytes each piece reads end.
    embd_end: usize,
    layer_ends: Vec<usize>,
    output_end: usize,
    token_embd: Option<Matrix<'a>>,
    /// llama3's RoPE frequency factors, attached with the embeddings (the angles are
    /// computed beside them).
    rope_freqs: Option<Vec<f32>>,
    /// Blocks `0..layers.len()`, attached in order.
    layers: Vec<Layer<'a>>,
    output: Option<(Vec<f32>, Matrix<'a>)>,
    /// Every piece, once all are attached (`layers` is then empty).
    loaded: Option<Model<'a>>,
}

/// `arrival.wait_for(end)`, refusing a prefix shorter than asked for.
fn wait<'a>(arrival: &mut dyn FileArrival<'a>, end: usize) -> Result<&'a [u8], ModelError> {
    let prefix = arrival.wait_for(end)?;
    if prefix.len() < end {
        return Err(ModelError::Arrival {
            needed: end,
            reason: format!("the file arrival returned only {} bytes", prefix.len()),
        });
    }
    Ok(prefix)
}

impl<'a> StreamingModel<'a> {
    /// A model from `header`, parsed by [`Gguf::parse_prefix`] from a final prefix of the
    /// file (or by [`Gguf::parse`]); checks the hyper-parameters, attaches nothing yet.
    /// Every arrival later passed in must deliver that same file: tensors are sliced out
    /// of its prefixes at the ranges this header gives.
    pub fn new(header: Gguf<'a>, kernels: Kernels) -> Result<Self, ModelError> {
        let cfg = LlamaConfig::from_gguf(&header)?;
        let end_of = |keep: &dyn Fn(&str) -> bool| {
            let ranges = header.tensors().iter().filter(|t| keep(t.name));
            ranges.map(|t| header.file_range(t).end).max().unwrap_or(0)
        };
        // `flexserve-model seal` lays `rope_freqs` beside the embeddings; in a file laid out
        // otherwise, waiting for it may mean waiting for more of the file first.
        let embd_end = end_of(&|name| name == "token_embd.weight" || name == ROPE_FREQS);
        let layer_ends = (0..cfg.n_layer)
            .map(|i| {
                let block = format!("blk.{i}.");
                end_of(&|name| name.starts_with(&block))
            })
            .collect();
        let output_end = end_of(&|name| matches!(name, "output_norm.weight" | "output.weight"));
        Ok(Self {
            layers: Vec::with_capacity(cfg.n_layer),
            header,
            cfg,
            kernels,
            embd_end,
            layer_ends,
            output_end,
            token_embd: None,
            rope_freqs: None,
            output: None,
            loaded: None,
        })
    }

    /// Waits for the GGUF header of a file of `file_len` bytes and parses it: asks for what
    /// each [`GgufError::NeedMoreBytes`] says, at least twice the last prefix (so a header
    /// arriving in small steps is parsed a logarithmic number of times; what it may wait
    /// for beyond the header is the embeddings, needed next anyway).
    pub fn from_arrival(
        arrival: &mut dyn FileArrival<'a>,
        file_len: usize,
        kernels: Kernels,
    ) -> Result<Self, ModelError> {
        let mut end = 0;
        loop {
            let prefix = wait(arrival, end)?;
            match Gguf::parse_prefix(prefix, file_len) {
                Ok(header) => return Self::new(header, kernels),
                Err(GgufError::NeedMoreBytes { needed, .. }) => {
                    end = needed.max(prefix.len().saturating_mul(2)).min(file_len);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The header the model was made from (metadata for the tokenizer, tensor infos).
    pub fn header(&self) -> &Gguf<'a> {
        &self.header
    }

    /// The model's hyper-parameters.
    pub fn cfg(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// A fresh session with room for `n_ctx` tokens, as [`Model::new_session`].
    pub fn new_session(&self, n_ctx: usize) -> Session {
        Session::new(&self.cfg, n_ctx)
    }

    /// How many bytes of the file `piece` needs (`None` for a block the model lacks).
    pub fn piece_end(&self, piece: Piece) -> Option<usize> {
        match piece {
            Piece::Embeddings => Some(self.embd_end),
            Piece::Layer(i) => self.layer_ends.get(i).copied(),
            Piece::Output => Some(self.output_end),
        }
    }

    /// Whether every piece is attached.
    pub fn is_loaded(&self) -> bool {
        self.loaded.is_some()
    }

    /// The loaded model, once every piece is attached.
    pub fn model(&self) -> Option<&Model<'a>> {
        self.loaded.as_ref()
    }

    /// The loaded model, or the streaming model back if pieces are still missing (see
    /// [`StreamingModel::load`]).
    pub fn into_model(self) -> Result<Model<'a>, Box<Self>> {
        match self.loaded {
            Some(model) => Ok(model),
            None => Err(Box::new(self)),
        }
    }

    /// Waits for and attaches every piece not attached yet, without computing anything.
    pub fn load(&mut self, arrival: &mut dyn FileArrival<'a>) -> Result<&Model<'a>, ModelError> {
        if self.loaded.is_none() {
            self.attach_embeddings(arrival)?;
            self.attach_layers(self.cfg.n_layer, arrival)?;
            self.attach_output(arrival)?;
        }
        self.loaded.as_ref().ok_or_else(|| ModelError::Arrival {
            needed: self.output_end,
            reason: "the weights are attached but the model was not assembled".into(),
        })
    }

    fn attach_embeddings(
        &mut self,
        arrival: &mut dyn FileArrival<'a>,
    ) -> Result<Matrix<'a>, ModelError> {
        if let Some(embd) = self.token_embd {
            return Ok(embd);
        }
        let prefix = wait(arrival, self.embd_end)?;
        let src = TensorSource::prefix(&self.header, prefix);
        let embd = src.token_embd(&self.cfg)?;
        self.rope_freqs = src.rope_freqs(&self.cfg, &self.kernels)?;
        self.token_embd = Some(embd);
        Ok(embd)
    }

    /// Attaches blocks until `n` are.
    fn attach_layers(
        &mut self,
        n: usize,
        arrival: &mut dyn FileArrival<'a>,
    ) -> Result<(), ModelError> {
        while self.layers.len() < n {
            let i = self.layers.len();
            let prefix = wait(arrival, self.layer_ends[i])?;
            let src = TensorSource::prefix(&self.header, prefix);
            self.layers.push(src.layer(&self.cfg, &self.kernels, i)?);
        }
        Ok(())
    }

    /// Attaches the output (the embeddings must be) and assembles the loaded [`Model`].
    fn attach_output(&mut self, arrival: &mut dyn FileArrival<'a>) -> Result<(), ModelError> {
        let embd = self.attach_embeddings(arrival)?;
        if self.output.is_none() {
            let prefix = wait(arrival, self.output_end)?;
            let src = TensorSource::prefix(&self.header, prefix);
            self.output = Some(src.output(&self.cfg, &self.kernels, embd)?);
        }
        if self.layers.len() == self.cfg.n_layer
            && let Some((output_norm, output)) = self.output.take()
        {
            self.loaded = Some(Model {
                cfg: self.cfg.clone(),
                weights: Weights {
                    token_embd: embd,
                    rope_freqs: self.rope_freqs.clone(),
                    layers: core::mem::take(&mut self.layers),
                    output_norm,
                    output,
                },
                kernels: self.kernels,
            });
        }
        Ok(())
    }

    /// [`Model::forward_batch`], attaching each piece just before it is needed while the
    /// model is loading.
    #[allow(clippy::too_many_arguments)]
    fn forward_batch(
        &mut self,
        kv: &mut KvCache,
        buf: &mut Buffers,
        n_past: usize,
        tokens: &[u32],
        want: Logits,
        par: &dyn Parallel,
        logits: &mut Vec<f32>,
        arrival: &mut dyn FileArrival<'a>,
    ) -> Result<(), ModelError> {
        if let Some(model) = &self.loaded {
            return model.forward_batch(kv, buf, n_past, tokens, want, par, logits);
        }
        let (cfg, kernels) = (&self.cfg, &self.kernels);
        Forward { cfg, kernels }.check_batch(kv, n_past, tokens)?;
        let embd = self.attach_embeddings(arrival)?;
        arrival.computing(Piece::Embeddings);
        let mut cols = Columns::Run { kv, n_past };
        self.steps()
            .embed(buf, &embd, self.rope_freqs.as_deref(), &cols, tokens);
        let t = tokens.len();
        for li in 0..self.cfg.n_layer {
            self.attach_layers(li + 1, arrival)?;
            arrival.computing(Piece::Layer(li));
            self.steps()
                .layer(&mut cols, buf, li, &self.layers[li], t, par);
        }
        self.attach_output(arrival)?;
        arrival.computing(Piece::Output);
        let Some(model) = &self.loaded else {
            return Err(ModelError::Arrival {
                needed: self.output_end,
                reason: "the weights are attached but the model was not assembled".into(),
            });
        };
        let w = &model.weights;
        let f = self.steps();
        f.output(buf, &w.output_norm, &w.output, t, want, par, logits);
        Ok(())
    }

    fn steps(&self) -> Forward<'_> {
        Forward {
            cfg: &self.cfg,
            kernels: &self.kernels,
        }
    }
}

impl Session {
    /// [`Session::eval`] on a model whose file is still arriving: the first batch computes
    /// layer by layer, calling `arrival.wait_for` before each piece that is not attached
    /// yet (see [the arrival invariant](crate::model::streaming#the-arrival-invariant));
    /// once every piece is, this is [`Session::eval`] on [`StreamingModel::model`]. An
    /// error, the arrival's included, leaves the session unchanged (pieces attached so far
    /// stay attached, so a later call picks up where this one stopped).
    pub fn eval_arriving<'a>(
        &mut self,
        model: &mut StreamingModel<'a>,
        tokens: &[u32],
        want: Logits,
        par: &dyn Parallel,
        arrival: &mut dyn FileArrival<'a>,
    ) -> Result<&mut [f32], ModelError> {
        let n_vocab = model.cfg.n_vocab;
        self.eval_batches(n_vocab, tokens, want, |kv, buf, n_past, batch, w, out| {
            model.forward_batch(kv, buf, n_past, batch, w, par, out, arrival)
        })
    }
}
