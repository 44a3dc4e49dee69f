//! Borrowed, shape-checked views of a llama-family model's tensors.

use super::{LlamaConfig, ModelError};
use crate::ggml_type::GgmlType;
use crate::gguf::{Gguf, TensorInfo};
use crate::quant::Kernels;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

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
    pub wo: Matrix<'a>,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Matrix<'a>,
    pub w_up: Matrix<'a>,
    pub w_down: Matrix<'a>,
}

/// Every tensor the forward pass reads.
pub struct Weights<'a> {
    pub token_embd: Matrix<'a>,
    pub layers: Vec<Layer<'a>>,
    pub output_norm: Vec<f32>,
    /// The output projection; the token embedding itself when the model ties them.
    pub output: Matrix<'a>,
}

fn tensor<'g, 'a>(g: &'g Gguf<'a>, name: &str) -> Result<&'g TensorInfo<'a>, ModelError> {
    g.tensor(name)
        .ok_or_else(|| ModelError::MissingTensor(name.to_string()))
}

fn matrix<'a>(g: &Gguf<'a>, name: &str, n: usize, rows: usize) -> Result<Matrix<'a>, ModelError> {
    let t = tensor(g, name)?;
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
        data: t.data,
    })
}

/// A 1-D tensor (norm weight or bias) of `n` elements, converted to f32.
fn vector(g: &Gguf<'_>, name: &str, n: usize, k: &Kernels) -> Result<Vec<f32>, ModelError> {
    let t = tensor(g, name)?;
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
    k.dequantize_row(t.ty, t.data, &mut out);
    Ok(out)
}

fn optional_vector(
    g: &Gguf<'_>,
    name: &str,
    n: usize,
    k: &Kernels,
) -> Result<Option<Vec<f32>>, ModelError> {
    if g.tensor(name).is_none() {
        return Ok(None);
    }
    vector(g, name, n, k).map(Some)
}

impl<'a> Weights<'a> {
    /// Finds and checks every tensor the configuration calls for.
    pub fn from_gguf(g: &Gguf<'a>, cfg: &LlamaConfig, k: &Kernels) -> Result<Self, ModelError> {
        let (e, q, kv, ff) = (cfg.n_embd, cfg.q_dim(), cfg.kv_dim(), cfg.n_ff);
        let token_embd = matrix(g, "token_embd.weight", e, cfg.n_vocab)?;
        let output = match g.tensor("output.weight") {
            Some(_) => matrix(g, "output.weight", e, cfg.n_vocab)?,
            None => token_embd,
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let name = |s: &str| -> String { alloc::format!("blk.{i}.{s}") };
            layers.push(Layer {
                attn_norm: vector(g, &name("attn_norm.weight"), e, k)?,
                wq: matrix(g, &name("attn_q.weight"), e, q)?,
                wk: matrix(g, &name("attn_k.weight"), e, kv)?,
                wv: matrix(g, &name("attn_v.weight"), e, kv)?,
                bq: optional_vector(g, &name("attn_q.bias"), q, k)?,
                bk: optional_vector(g, &name("attn_k.bias"), kv, k)?,
                bv: optional_vector(g, &name("attn_v.bias"), kv, k)?,
                wo: matrix(g, &name("attn_output.weight"), q, e)?,
                ffn_norm: vector(g, &name("ffn_norm.weight"), e, k)?,
                w_gate: matrix(g, &name("ffn_gate.weight"), e, ff)?,
                w_up: matrix(g, &name("ffn_up.weight"), e, ff)?,
                w_down: matrix(g, &name("ffn_down.weight"), ff, e)?,
            });
        }
        let output_norm = vector(g, "output_norm.weight", e, k)?;
        Ok(Self {
            token_embd,
            layers,
            output_norm,
            output,
        })
    }
}
