//! Borrowed, shape-checked views of a llama-family model's tensors.

use super::{LlamaConfig, ModelError};
use crate::ggml_type::GgmlType;
use crate::gguf::{Gguf, TensorInfo};
use crate::quant::Kernels;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

/// The tensor of llama3's RoPE frequency factors.
pub(super) const ROPE_FREQS: &str = "rope_freqs.weight";

/// A weight matrix of `rows` rows of `n` elements, in the file's bytes.
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    pub ty: GgmlType,
    /// Row length: the number of input features.
    pub n: usize,
    /// Number of rows: the number of output features.
    pub rows: usize,
    pub data: &'a [u8],
}

impl<'a> Matrix<'a> {
    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.rows
    }

    /// The first `rows` rows and the rest, as two matrices over the same bytes (a fused
    /// tensor's parts: each output row is its own dot product, so the split changes nothing).
    /// `rows` must be at most `self.rows`.
    pub fn split_rows(&self, rows: usize) -> (Matrix<'a>, Matrix<'a>) {
        let (head, tail) = self.data.split_at(rows * self.row_bytes());
        let part = |rows, data| Matrix {
            ty: self.ty,
            n: self.n,
            rows,
            data,
        };
        (part(rows, head), part(self.rows - rows, tail))
    }

    /// The bytes of rows `[start, start + count)`.
    pub fn rows_slice(&self, start: usize, count: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[start * rb..(start + count) * rb]
    }
}

/// The tensors of one transformer block.
pub struct Layer<'a> {
    pub attn_norm: Vec<f32>,
    pub wq: Matrix<'a>,
    pub wk: Matrix<'a>,
    pub wv: Matrix<'a>,
    /// Qwen2-style projection biases.
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    /// Qwen3's per-head query and key norms (`head_dim` each), when the config has them.
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub wo: Matrix<'a>,
    /// Gemma's norms of the attention's and the feed-forward's outputs (`n_embd` each).
    pub attn_post_norm: Option<Vec<f32>>,
    pub ffn_post_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Matrix<'a>,
    pub w_up: Matrix<'a>,
    pub w_down: Matrix<'a>,
}

/// Every tensor the forward pass reads.
pub struct Weights<'a> {
    pub token_embd: Matrix<'a>,
    /// llama3's RoPE frequency factors (`rope_freqs`, one per rotated pair), if the file has them.
    pub rope_freqs: Option<Vec<f32>>,
    pub layers: Vec<Layer<'a>>,
    pub output_norm: Vec<f32>,
    /// The output projection; the token embedding itself when the model ties them.
    pub output: Matrix<'a>,
}

/// Where the loaders find tensors: their infos in a parsed header, their bytes either in
/// the infos (a whole-file parse) or in a final prefix of a file still arriving (see
/// [`super::streaming`] for what makes a prefix final).
#[derive(Clone, Copy)]
pub(super) struct TensorSource<'g, 'a> {
    gguf: &'g Gguf<'a>,
    /// A final prefix of the file, starting at its first byte; `None`: `TensorInfo::data`.
    prefix: Option<&'a [u8]>,
}

impl<'g, 'a> TensorSource<'g, 'a> {
    /// Each tensor's own [`TensorInfo::data`] (a whole-file [`Gguf::parse`]).
    pub(super) fn whole(gguf: &'g Gguf<'a>) -> Self {
        Self { gguf, prefix: None }
    }

    /// Bytes sliced out of `prefix`, a final prefix of the file `gguf` was parsed from.
    pub(super) fn prefix(gguf: &'g Gguf<'a>, prefix: &'a [u8]) -> Self {
        Self {
            gguf,
            prefix: Some(prefix),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.gguf.tensor(name).is_some()
    }

    fn tensor(&self, name: &str) -> Result<&'g TensorInfo<'a>, ModelError> {
        self.gguf
            .tensor(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))
    }

    /// `t`'s bytes; a tensor past the prefix is an error (the caller waits for it first).
    fn data(&self, t: &TensorInfo<'a>) -> Result<&'a [u8], ModelError> {
        let Some(prefix) = self.prefix else {
            return Ok(t.data);
        };
        let range = self.gguf.file_range(t);
        prefix
            .get(range.clone())
            .ok_or_else(|| ModelError::Arrival {
                needed: range.end,
                reason: alloc::format!(
                    "tensor `{}` is not in the {} final bytes the engine was given",
                    t.name,
                    prefix.len()
                ),
            })
    }

    fn matrix(&self, name: &str, n: usize, rows: usize) -> Result<Matrix<'a>, ModelError> {
        let t = self.tensor(name)?;
        if t.dims != [n as u64, rows as u64] {
            return Err(ModelError::TensorShape {
                name: name.to_string(),
                found: t.dims.to_vec(),
                expected: vec![n as u64, rows as u64],
            });
        }
        if !GgmlType::ALL.contains(&t.ty) {
            return Err(ModelError::TensorType {
                name: name.to_string(),
                ty: t.ty,
            });
        }
        Ok(Matrix {
            ty: t.ty,
            n,
            rows,
            data: self.data(t)?,
        })
    }

    /// A 1-D tensor (norm weight or bias) of `n` elements, converted to f32.
    fn vector(&self, name: &str, n: usize, k: &Kernels) -> Result<Vec<f32>, ModelError> {
        let t = self.tensor(name)?;
        if t.dims != [n as u64] {
            return Err(ModelError::TensorShape {
                name: name.to_string(),
                found: t.dims.to_vec(),
                expected: vec![n as u64],
            });
        }
        if !matches!(t.ty, GgmlType::F32 | GgmlType::F16) {
            return Err(ModelError::TensorType {
                name: name.to_string(),
                ty: t.ty,
            });
        }
        let mut out = vec![0.0; n];
        k.dequantize_row(t.ty, self.data(t)?, &mut out);
        Ok(out)
    }

    fn optional_vector(
        &self,
        name: &str,
        n: usize,
        k: &Kernels,
    ) -> Result<Option<Vec<f32>>, ModelError> {
        if !self.has(name) {
            return Ok(None);
        }
        self.vector(name, n, k).map(Some)
    }

    /// The token embeddings.
    pub(super) fn token_embd(&self, cfg: &LlamaConfig) -> Result<Matrix<'a>, ModelError> {
        self.matrix("token_embd.weight", cfg.n_embd, cfg.n_vocab)
    }

    /// llama3's RoPE frequency factors, `rope_dims / 2` divisors of the pairs' angles.
    pub(super) fn rope_freqs(
        &self,
        cfg: &LlamaConfig,
        k: &Kernels,
    ) -> Result<Option<Vec<f32>>, ModelError> {
        let factors = self.optional_vector(ROPE_FREQS, cfg.rope_dims / 2, k)?;
        if factors
            .as_ref()
            .is_some_and(|f| f.iter().any(|&v| !(v.is_finite() && v > 0.0)))
        {
            return Err(ModelError::BadHyperParameters(
                "rope_freqs.weight holds a factor that is not a positive number".to_string(),
            ));
        }
        Ok(factors)
    }

    /// Block `i`.
    pub(super) fn layer(
        &self,
        cfg: &LlamaConfig,
        k: &Kernels,
        i: usize,
    ) -> Result<Layer<'a>, ModelError> {
        let (e, q, kv, ff) = (cfg.n_embd, cfg.q_dim(), cfg.kv_dim(), cfg.n_ff);
        let name = |s: &str| -> String { alloc::format!("blk.{i}.{s}") };
        let head_norm = |s: &str| match cfg.qk_norm {
            true => self.vector(&name(s), cfg.head_dim, k).map(Some),
            false => Ok(None),
        };
        let post_norm = |s: &str| match cfg.gemma {
            Some(_) => self.vector(&name(s), e, k).map(Some),
            None => Ok(None),
        };
        // Each norm before the projections it feeds, as before the fused layouts, so errors
        // name the same first bad tensor of a file.
        let attn_norm = self.vector(&name("attn_norm.weight"), e, k)?;
        let (wq, wk, wv) = match cfg.fused_projections && self.has(&name("attn_qkv.weight")) {
            true => {
                let qkv = self.matrix(&name("attn_qkv.weight"), e, q + 2 * kv)?;
                let (wq, rest) = qkv.split_rows(q);
                let (wk, wv) = rest.split_rows(kv);
                (wq, wk, wv)
            }
            false => (
                self.matrix(&name("attn_q.weight"), e, q)?,
                self.matrix(&name("attn_k.weight"), e, kv)?,
                self.matrix(&name("attn_v.weight"), e, kv)?,
            ),
        };
        let ffn_norm = self.vector(&name("ffn_norm.weight"), e, k)?;
        let (w_gate, w_up) = match cfg.fused_projections {
            true => self
                .matrix(&name("ffn_up.weight"), e, 2 * ff)?
                .split_rows(ff),
            false => (
                self.matrix(&name("ffn_gate.weight"), e, ff)?,
                self.matrix(&name("ffn_up.weight"), e, ff)?,
            ),
        };
        Ok(Layer {
            attn_norm,
            wq,
            wk,
            wv,
            bq: self.optional_vector(&name("attn_q.bias"), q, k)?,
            bk: self.optional_vector(&name("attn_k.bias"), kv, k)?,
            bv: self.optional_vector(&name("attn_v.bias"), kv, k)?,
            q_norm: head_norm("attn_q_norm.weight")?,
            k_norm: head_norm("attn_k_norm.weight")?,
            wo: self.matrix(&name("attn_output.weight"), q, e)?,
            attn_post_norm: post_norm("post_attention_norm.weight")?,
            ffn_post_norm: post_norm("post_ffw_norm.weight")?,
            ffn_norm,
            w_gate,
            w_up,
            w_down: self.matrix(&name("ffn_down.weight"), ff, e)?,
        })
    }

    /// The final norm and the output projection (`token_embd` when the model ties them).
    pub(super) fn output(
        &self,
        cfg: &LlamaConfig,
        k: &Kernels,
        token_embd: Matrix<'a>,
    ) -> Result<(Vec<f32>, Matrix<'a>), ModelError> {
        let output = match self.has("output.weight") {
            true => self.matrix("output.weight", cfg.n_embd, cfg.n_vocab)?,
            false => token_embd,
        };
        Ok((self.vector("output_norm.weight", cfg.n_embd, k)?, output))
    }
}

impl<'a> Weights<'a> {
    /// Finds and checks every tensor the configuration calls for.
    pub fn from_gguf(g: &Gguf<'a>, cfg: &LlamaConfig, k: &Kernels) -> Result<Self, ModelError> {
        let src = TensorSource::whole(g);
        let token_embd = src.token_embd(cfg)?;
        let rope_freqs = src.rope_freqs(cfg, k)?;
        let layers = (0..cfg.n_layer)
            .map(|i| src.layer(cfg, k, i))
            .collect::<Result<Vec<_>, _>>()?;
        let (output_norm, output) = src.output(cfg, k, token_embd)?;
        Ok(Self {
            token_embd,
            rope_freqs,
            layers,
            output_norm,
            output,
        })
    }
}
