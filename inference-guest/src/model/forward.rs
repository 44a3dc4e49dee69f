//! The llama-family forward pass over a batch of tokens.
//!
//! [`Forward`] holds the steps (embed, one layer, output) and borrows only the configuration
//! and kernels, so the weights can come from a loaded [`Model`] ([`Model::forward_batch`])
//! or arrive layer by layer (`super::streaming`): both run the very same steps.

use super::attention::{self, Scores};
use super::columns::Columns;
use super::kv_cache::{KvCache, round_f16};
use super::matmul::{self, MatmulScratch, Product};
use super::{Layer, LlamaConfig, Matrix, Model, ModelError};
use crate::math::{rms_norm_rows, rms_norm_rows_in_place, rope_angles, rope_apply};
use crate::parallel::{Parallel, for_each_chunk_mut};
use crate::quant::Kernels;
use alloc::vec::Vec;

/// Which positions of a batch need logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token's (generation).
    Last,
    /// Every token's (scoring, tests).
    All,
}

/// Activations of one batch, reused across calls.
#[derive(Default)]
pub(super) struct Buffers {
    x: Vec<f32>,
    xb: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    proj_ff: Vec<f32>,
    up: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// Gemma's sliding-window layers' angles (their own RoPE base).
    cos_swa: Vec<f32>,
    sin_swa: Vec<f32>,
    matmul: MatmulScratch,
}

impl Buffers {
    /// Bytes its buffers hold.
    pub(super) fn held_bytes(&self) -> usize {
        let f32s = [
            &self.x,
            &self.xb,
            &self.q,
            &self.k,
            &self.v,
            &self.att,
            &self.proj,
            &self.gate,
            &self.proj_ff,
            &self.up,
            &self.cos,
            &self.sin,
            &self.cos_swa,
            &self.sin_swa,
        ];
        f32s.iter().map(|v| v.capacity() * 4).sum::<usize>() + self.matmul.held_bytes()
    }
}

fn sized(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    resize_exact(buf, len, 0.0);
    &mut buf[..len]
}

/// `v.resize(len, fill)` without the amortised growth's spare capacity (up to as much
/// again): the guest accounts for its buffers by their size
/// ([`super::BatchBuffers::bytes_for`]), and they grow rarely (to the largest batch seen).
pub(super) fn resize_exact<T: Clone>(v: &mut Vec<T>, len: usize, fill: T) {
    v.reserve_exact(len.saturating_sub(v.len()));
    v.resize(len, fill);
}

/// Which of a layer's two branches ends in [`Forward::add_to_residual`].
#[derive(Clone, Copy)]
enum Branch {
    /// Reads `att`, the attention's heads.
    Attention,
    /// Reads `gate`, the activated feed-forward.
    FeedForward,
}

/// The forward pass's steps over one model's configuration and kernels.
#[derive(Clone, Copy)]
pub(super) struct Forward<'m> {
    pub(super) cfg: &'m LlamaConfig,
    pub(super) kernels: &'m Kernels,
}

impl Model<'_> {
    /// Runs `tokens` at positions `[n_past, n_past + tokens.len())`, appending their keys and
    /// values to `kv`, and writes the requested logits (`[n_out][n_vocab]`) into `logits`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward_batch(
        &self,
        kv: &mut KvCache,
        buf: &mut Buffers,
        n_past: usize,
        tokens: &[u32],
        want: Logits,
        par: &dyn Parallel,
        logits: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let f = self.forward();
        let w = &self.weights;
        f.check_batch(kv, n_past, tokens)?;
        let mut cols = Columns::Run { kv, n_past };
        f.embed(buf, &w.token_embd, w.rope_freqs.as_deref(), &cols, tokens);
        let t = tokens.len();
        for (li, layer) in w.layers.iter().enumerate() {
            f.layer(&mut cols, buf, li, layer, t, par);
        }
        f.output(buf, &w.output_norm, &w.output, t, want, par, logits);
        Ok(())
    }

    pub(super) fn forward(&self) -> Forward<'_> {
        Forward {
            cfg: &self.cfg,
            kernels: &self.kernels,
        }
    }
}

impl Forward<'_> {
    /// `gate = silu(gate) * up`, as ggml's SwiGLU: `x / (1 + exp(0 - x)) * up`, with its
    /// exp polynomial (the result is quantised next, so ulps matter).
    fn swiglu(&self, gate: &mut [f32], up: &[f32], scratch: &mut Vec<f32>) {
        scratch.clear();
        scratch.reserve_exact(gate.len());
        scratch.extend(gate.iter().map(|&x| 0.0 - x));
        self.kernels.exp_in_place(scratch);
        for ((g, &u), &e) in gate.iter_mut().zip(up).zip(scratch.iter()) {
            *g = *g / (1.0 + e) * u;
        }
    }

    /// `gate = gelu(gate) * up` as ggml's GeGLU computes it on the CPU: GELU (tanh form)
    /// read from a table over f16 inputs, so the input and the GELU are rounded to f16, with
    /// the table's cut-offs at ±10.
    fn geglu(gate: &mut [f32], up: &[f32]) {
        const SQRT_2_OVER_PI: f32 = 0.797_884_6;
        const COEF_A: f32 = 0.044_715;
        for (g, &u) in gate.iter_mut().zip(up) {
            let x = *g;
            *g = if x <= -10.0 {
                0.0
            } else if x >= 10.0 {
                x * u
            } else {
                let x = round_f16(x);
                // As GCC compiles ggml_gelu_f32: `1 + A*x*x` contracted into one fma.
                let inner = libm::fmaf(COEF_A * x, x, 1.0);
                let t = libm::tanhf(SQRT_2_OVER_PI * x * inner);
                round_f16(0.5 * x * (1.0 + t)) * u
            };
        }
    }

    /// Block `li` over the batch of `t` columns in `buf.x` (placed by `cols`): attention,
    /// then feed-forward.
    pub(super) fn layer(
        &self,
        cols: &mut Columns<'_>,
        buf: &mut Buffers,
        li: usize,
        layer: &Layer,
        t: usize,
        par: &dyn Parallel,
    ) {
        self.attention_block(cols, buf, li, layer, t, par);
        self.feed_forward_block(buf, layer, t, par);
    }

    /// Refuses an empty batch, one past the context, and unknown token ids.
    pub(super) fn check_batch(
        &self,
        kv: &KvCache,
        n_past: usize,
        tokens: &[u32],
    ) -> Result<(), ModelError> {
        let cfg = self.cfg;
        let t = tokens.len();
        if t == 0 {
            return Err(ModelError::EmptyBatch);
        }
        if n_past + t > kv.n_ctx() {
            return Err(ModelError::ContextFull {
                needed: n_past + t,
                n_ctx: kv.n_ctx(),
            });
        }
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= cfg.n_vocab) {
            return Err(ModelError::BadToken {
                id,
                n_vocab: cfg.n_vocab,
            });
        }
        Ok(())
    }

    /// The batch's embeddings into `buf.x`, its RoPE angles at the columns' positions
    /// (divided by `rope_freqs` when the model has them) into `buf.cos`/`buf.sin`, and every
    /// other buffer sized for `tokens.len()` columns.
    pub(super) fn embed(
        &self,
        buf: &mut Buffers,
        embd: &Matrix,
        rope_freqs: Option<&[f32]>,
        cols: &Columns<'_>,
        tokens: &[u32],
    ) {
        let cfg = self.cfg;
        let t = tokens.len();
        let (e, qd, kvd, ff) = (cfg.n_embd, cfg.q_dim(), cfg.kv_dim(), cfg.n_ff);
        let x = sized(&mut buf.x, t * e);
        for (row, &id) in x.chunks_exact_mut(e).zip(tokens) {
            self.kernels
                .dequantize_row(embd.ty, embd.rows_slice(id as usize, 1), row);
        }
        if cfg.gemma.is_some() {
            // ggml_scale by sqrtf(n_embd).
            let scale = libm::sqrtf(e as f32);
            x.iter_mut().for_each(|v| *v *= scale);
        }

        let half = cfg.rope_dims / 2;
        let swa_base = cfg.gemma.as_ref().map(|g| g.rope_freq_base_swa);
        for (base, cos, sin) in [
            (Some(cfg.rope_freq_base), &mut buf.cos, &mut buf.sin),
            (swa_base, &mut buf.cos_swa, &mut buf.sin_swa),
        ] {
            let Some(base) = base else { continue };
            let (cos, sin) = (sized(cos, t * half), sized(sin, t * half));
            for j in 0..t {
                let (c, s) = (
                    &mut cos[j * half..(j + 1) * half],
                    &mut sin[j * half..(j + 1) * half],
                );
                rope_angles(cols.pos(j), base, rope_freqs, c, s);
            }
        }

        resize_exact(&mut buf.xb, t * e, 0.0);
        resize_exact(&mut buf.q, t * qd, 0.0);
        resize_exact(&mut buf.k, t * kvd, 0.0);
        resize_exact(&mut buf.v, t * kvd, 0.0);
        resize_exact(&mut buf.att, t * qd, 0.0);
        resize_exact(&mut buf.proj, t * e, 0.0);
        resize_exact(&mut buf.gate, t * ff, 0.0);
        resize_exact(&mut buf.up, t * ff, 0.0);
    }

    /// One layer's attention: RMSNorm, the Q/K/V products (one parallel region), the
    /// queries and keys made ready ([`Self::qk_ready`]), attention, the output product, its
    /// norm (Gemma), the residual.
    fn attention_block(
        &self,
        cols: &mut Columns<'_>,
        buf: &mut Buffers,
        li: usize,
        layer: &Layer,
        t: usize,
        par: &dyn Parallel,
    ) {
        let cfg = self.cfg;
        let k = self.kernels;
        rms_norm_rows(&buf.x, &layer.attn_norm, cfg.rms_eps, &mut buf.xb);
        matmul::run(
            k,
            par,
            &mut buf.matmul,
            &buf.xb,
            t,
            &mut [
                Product {
                    matrix: &layer.wq,
                    out: &mut buf.q,
                },
                Product {
                    matrix: &layer.wk,
                    out: &mut buf.k,
                },
                Product {
                    matrix: &layer.wv,
                    out: &mut buf.v,
                },
            ],
        );
        self.qk_ready(cols, buf, li, layer, t);
        self.attention(cols, li, &buf.q, &mut buf.att, par);
        let post_norm = layer.attn_post_norm.as_deref();
        self.add_to_residual(buf, Branch::Attention, &layer.wo, post_norm, t, par);
    }

    /// The projections made ready for attention: biases, per-head Q/K norms (Qwen3, Gemma),
    /// RoPE (a Gemma sliding-window layer with its own angles), Gemma's query scale; the new
    /// keys and values go into the columns' caches.
    fn qk_ready(
        &self,
        cols: &mut Columns<'_>,
        buf: &mut Buffers,
        li: usize,
        layer: &Layer,
        t: usize,
    ) {
        let cfg = self.cfg;
        let (qd, kvd, hd) = (cfg.q_dim(), cfg.kv_dim(), cfg.head_dim);
        let half = cfg.rope_dims / 2;
        let neox = cfg.rope_layout == super::RopeLayout::Neox;
        for (bias, out, dim) in [
            (&layer.bq, &mut buf.q, qd),
            (&layer.bk, &mut buf.k, kvd),
            (&layer.bv, &mut buf.v, kvd),
        ] {
            if let Some(b) = bias {
                for row in out.chunks_exact_mut(dim) {
                    row.iter_mut().zip(b).for_each(|(o, &bb)| *o += bb);
                }
            }
        }
        // Every head of every token is one row of `head_dim`.
        for (norm, out) in [(&layer.q_norm, &mut buf.q), (&layer.k_norm, &mut buf.k)] {
            if let Some(w) = norm {
                rms_norm_rows_in_place(out, w, cfg.rms_eps);
            }
        }
        let swa = cfg.gemma.as_ref().is_some_and(|g| g.is_swa(li));
        let (cos, sin) = match swa {
            true => (&buf.cos_swa, &buf.sin_swa),
            false => (&buf.cos, &buf.sin),
        };
        for j in 0..t {
            let (c, s) = (
                &cos[j * half..(j + 1) * half],
                &sin[j * half..(j + 1) * half],
            );
            for head in buf.q[j * qd..(j + 1) * qd].chunks_exact_mut(hd) {
                rope_apply(&mut head[..cfg.rope_dims], c, s, neox);
            }
            for head in buf.k[j * kvd..(j + 1) * kvd].chunks_exact_mut(hd) {
                rope_apply(&mut head[..cfg.rope_dims], c, s, neox);
            }
            cols.store(
                li,
                j,
                &buf.k[j * kvd..(j + 1) * kvd],
                &buf.v[j * kvd..(j + 1) * kvd],
            );
        }
        if let Some(scale) = cfg.query_scale {
            // ggml_scale on the queries after RoPE; the scores are then not scaled.
            buf.q.iter_mut().for_each(|v| *v *= scale);
        }
    }

    /// One layer's feed-forward: RMSNorm, the gate/up products (one region), SwiGLU (GeGLU
    /// for Gemma), the down product, its norm (Gemma), the residual.
    fn feed_forward_block(&self, buf: &mut Buffers, layer: &Layer, t: usize, par: &dyn Parallel) {
        let k = self.kernels;
        rms_norm_rows(&buf.x, &layer.ffn_norm, self.cfg.rms_eps, &mut buf.xb);
        matmul::run(
            k,
            par,
            &mut buf.matmul,
            &buf.xb,
            t,
            &mut [
                Product {
                    matrix: &layer.w_gate,
                    out: &mut buf.gate,
                },
                Product {
                    matrix: &layer.w_up,
                    out: &mut buf.up,
                },
            ],
        );
        // In place: gate <- act(gate) * up.
        match self.cfg.gemma {
            Some(_) => Self::geglu(&mut buf.gate, &buf.up),
            None => self.swiglu(&mut buf.gate, &buf.up, &mut buf.proj_ff),
        }
        let post_norm = layer.ffn_post_norm.as_deref();
        self.add_to_residual(buf, Branch::FeedForward, &layer.w_down, post_norm, t, par);
    }

    /// A branch's last step, the same for attention and feed-forward: `x += norm(m · in)`,
    /// where `in` is the branch's output (`att`, or `gate` after the activation) and the
    /// norm is Gemma's post-norm when the layer has one.
    fn add_to_residual(
        &self,
        buf: &mut Buffers,
        branch: Branch,
        m: &Matrix,
        post_norm: Option<&[f32]>,
        t: usize,
        par: &dyn Parallel,
    ) {
        let Buffers {
            x,
            att,
            gate,
            proj,
            matmul: scratch,
            ..
        } = buf;
        let input = match branch {
            Branch::Attention => att,
            Branch::FeedForward => gate,
        };
        matmul::run(
            self.kernels,
            par,
            scratch,
            input,
            t,
            &mut [Product {
                matrix: m,
                out: proj,
            }],
        );
        if let Some(w) = post_norm {
            rms_norm_rows_in_place(proj, w, self.cfg.rms_eps);
        }
        x.iter_mut().zip(proj.iter()).for_each(|(a, &b)| *a += b);
    }

    /// The final norm of all `t` positions of the batch: the hidden states an embedding
    /// pools, `[t][n_embd]` (what the output product would read).
    pub(super) fn final_norm<'b>(&self, buf: &'b mut Buffers, norm: &[f32], t: usize) -> &'b [f32] {
        let e = self.cfg.n_embd;
        let xb = sized(&mut buf.xb, t * e);
        rms_norm_rows(&buf.x[..t * e], norm, self.cfg.rms_eps, xb);
        xb
    }

    /// The final norm and the output product for the positions `want` asks logits for.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn output(
        &self,
        buf: &mut Buffers,
        norm: &[f32],
        output: &Matrix,
        t: usize,
        want: Logits,
        par: &dyn Parallel,
        logits: &mut Vec<f32>,
    ) {
        let cfg = self.cfg;
        let e = cfg.n_embd;
        let first_out = match want {
            Logits::Last => t - 1,
            Logits::All => 0,
        };
        let n_out = t - first_out;
        let xo = &buf.x[first_out * e..];
        let xb = &mut buf.xb[..n_out * e];
        rms_norm_rows(xo, norm, cfg.rms_eps, xb);
        resize_exact(logits, n_out * cfg.n_vocab, 0.0);
        matmul::run(
            self.kernels,
            par,
            &mut buf.matmul,
            &buf.xb[..n_out * e],
            n_out,
            &mut [Product {
                matrix: output,
                out: logits,
            }],
        );
        if let Some(c) = cfg.gemma.as_ref().map(|g| g.final_softcap)
            && c > 0.0
        {
            // ggml_scale by 1/c, ggml_tanh, ggml_scale by c.
            let inv = 1.0 / c;
            logits
                .iter_mut()
                .for_each(|l| *l = libm::tanhf(*l * inv) * c);
        }
    }

    /// Causal grouped-query attention of the `t` new columns, each over its own cache up
    /// to its own position (see [`attention`]).
    fn attention(
        &self,
        cols: &Columns<'_>,
        layer: usize,
        q: &[f32],
        att: &mut [f32],
        par: &dyn Parallel,
    ) {
        let cfg = self.cfg;
        let (hd, n_kvh) = (cfg.head_dim, cfg.n_head_kv);
        let group = cfg.n_head / n_kvh;
        let qd = cfg.q_dim();
        let order = cols.order(att.len() / qd);
        // Gemma: a sliding-window layer sees the last `sliding_window` positions.
        let window = match &cfg.gemma {
            Some(g) if g.is_swa(layer) => g.sliding_window,
            _ => usize::MAX,
        };
        let scores = Scores {
            // Queries scaled before (Gemma, Phi-3) leave the scores unscaled.
            scale: match cfg.query_scale {
                Some(_) => 1.0,
                None => 1.0 / libm::sqrtf(hd as f32),
            },
            softcap: cfg.gemma.as_ref().map_or(0.0, |g| g.attn_softcap),
        };
        // One item per (token, query head): a decode step has n_head items (9 here), enough
        // to keep both threads busy; per KV head it would be 3.
        let n_head = cfg.n_head;
        for_each_chunk_mut(par, att, hd, &|item, out| {
            let (j, h) = (item / n_head, item % n_head);
            let g = h / group;
            let q_rows = &q[j * qd + h * hd..j * qd + (h + 1) * hd];
            let end = cols.pos(j) + 1;
            attention::attend(
                self.kernels,
                cols.kv(j),
                layer,
                g,
                end.saturating_sub(window)..end,
                hd,
                order,
                scores,
                q_rows,
                out,
            );
        });
    }
}
