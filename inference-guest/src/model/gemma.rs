//! What Gemma 2 and Gemma 3 change in the llama graph, read from GGUF metadata as
//! llama.cpp's `load_arch_hparams` for `gemma2` and `gemma3` reads it.

use super::ModelError;
use crate::gguf::Gguf;
use alloc::string::ToString;

/// Which Gemma generation a file is: their keys and defaults differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmaVersion {
    /// Gemma 2: every other layer slides (pattern 2, window 4096 unless the file says),
    /// attention logits soft-capped (50 unless the file says), final logits soft-capped
    /// (30 unless the file says), no per-head Q/K norms.
    Two,
    /// Gemma 3: per-head Q/K norms, five sliding layers to a global one (unless the file
    /// says), sliding layers with their own RoPE base, optionally soft-capped final logits.
    Three,
}

/// What Gemma changes beyond per-head Q/K norms: embeddings scaled by sqrt(n_embd), norms
/// after attention and after the feed-forward, GeGLU, queries scaled before the attention
/// (see `LlamaConfig::query_scale`), sliding-window layers, and soft-capped logits.
#[derive(Clone, Debug, PartialEq)]
pub struct GemmaConfig {
    pub version: GemmaVersion,
    /// Positions a sliding-window layer attends to, itself included (0: every layer is global).
    pub sliding_window: usize,
    /// Every `swa_pattern`-th layer is global, the others slide.
    pub swa_pattern: usize,
    /// RoPE base of the sliding-window layers.
    pub rope_freq_base_swa: f32,
    /// `c` in `c * tanh(score / c)` applied to every attention score, or 0 for none.
    pub attn_softcap: f32,
    /// `c` in `c * tanh(logit / c)`, or 0 for none.
    pub final_softcap: f32,
}

impl GemmaConfig {
    /// Whether layer `il` attends through the sliding window.
    pub fn is_swa(&self, il: usize) -> bool {
        self.sliding_window > 0
            && (self.swa_pattern == 0 || il % self.swa_pattern < self.swa_pattern - 1)
    }

    /// Reads `version`'s keys from `g` (architecture `arch`, RoPE base `rope_freq_base`).
    pub(super) fn from_gguf(
        g: &Gguf<'_>,
        arch: &str,
        version: GemmaVersion,
        rope_freq_base: f32,
    ) -> Result<Self, ModelError> {
        let key = |suffix: &str| alloc::format!("{arch}.{suffix}");
        let (window, pattern, base_swa, attn_cap, final_cap) = match version {
            // llama.cpp's gemma2 reads no pattern and no separate RoPE base.
            GemmaVersion::Two => (4096, Some(2), rope_freq_base, 50.0, 30.0),
            GemmaVersion::Three => (0, None, 10_000.0, 0.0, 0.0),
        };
        let sliding_window = g
            .get_u32(&key("attention.sliding_window"))?
            .map_or(window, |v| v as usize);
        let swa_pattern = match pattern {
            Some(p) => p,
            None => g
                .get_u32(&key("attention.sliding_window_pattern"))?
                .unwrap_or(6) as usize,
        };
        let rope_freq_base_swa = g.get_f32(&key("rope.freq_base_swa"))?.unwrap_or(base_swa);
        let attn_softcap = match version {
            GemmaVersion::Two => g
                .get_f32(&key("attn_logit_softcapping"))?
                .unwrap_or(attn_cap),
            // llama.cpp's gemma3 does not cap its attention: a key saying otherwise would
            // be ignored there, so it is refused here rather than followed.
            GemmaVersion::Three => match g.get_f32(&key("attn_logit_softcapping"))? {
                Some(c) if c != 0.0 => {
                    return Err(ModelError::BadHyperParameters(
                        "gemma3 with attn_logit_softcapping is not supported".to_string(),
                    ));
                }
                _ => 0.0,
            },
        };
        let final_softcap = g
            .get_f32(&key("final_logit_softcapping"))?
            .unwrap_or(final_cap);
        let bad = |what: &str| Err(ModelError::BadHyperParameters(what.to_string()));
        if !(rope_freq_base_swa.is_finite() && rope_freq_base_swa > 0.0) {
            return bad("rope.freq_base_swa must be a positive number");
        }
        if ![attn_softcap, final_softcap]
            .iter()
            .all(|c| c.is_finite() && *c >= 0.0)
        {
            return bad("attn_logit_softcapping and final_logit_softcapping must be numbers >= 0");
        }
        Ok(Self {
            version,
            sliding_window,
            swa_pattern,
            rope_freq_base_swa,
            attn_softcap,
            final_softcap,
        })
    }

    /// The factor queries are multiplied by before attention: gemma_pytorch's
    /// query_pre_attn_scalar, which llama.cpp derives from the model size: the 27B models
    /// (46 layers in Gemma 2, 62 in Gemma 3) scale by the embedding per head, the others by
    /// the head size.
    pub(super) fn query_scale(&self, n_layer: usize, embd_per_head: usize, head_dim: usize) -> f32 {
        let layers_27b = match self.version {
            GemmaVersion::Two => 46,
            GemmaVersion::Three => 62,
        };
        let per = if n_layer == layers_27b {
            embd_per_head
        } else {
            head_dim
        };
        1.0 / libm::sqrtf(per as f32)
    }
}
