//! Hyper-parameters of a llama-family model, read from GGUF metadata and checked.

use super::ModelError;
use super::gemma::{GemmaConfig, GemmaVersion};
use crate::gguf::Gguf;
use alloc::string::{String, ToString};

/// How RoPE pairs up the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Adjacent pairs (x[2i], x[2i+1]): llama (the converter already permuted Q/K).
    Normal,
    /// Halves (x[i], x[i + d/2]): GPT-NeoX, Qwen2.
    Neox,
}

/// Everything the forward pass needs to know about the model's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub architecture: String,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub n_ctx_train: usize,
    pub rope_freq_base: f32,
    pub rope_dims: usize,
    pub rope_layout: RopeLayout,
    pub rms_eps: f32,
    /// Qwen3: every query and key head is RMS-normed (`attn_q_norm`, `attn_k_norm`, one
    /// weight of `head_dim` shared by all heads) before RoPE.
    pub qk_norm: bool,
    /// Queries are multiplied by this after RoPE and the attention scores are then not
    /// scaled (Gemma, Phi-3); `None`: the scores are scaled by 1/sqrt(head_dim). Where the
    /// scale is applied changes the f16 rounding of the queries, hence the numerics.
    pub query_scale: Option<f32>,
    /// Phi-3: `attn_qkv` (when the file has it) holds the query, key and value rows one
    /// after the other, and `ffn_up` the gate's rows then the up projection's.
    pub fused_projections: bool,
    /// Gemma 2's and Gemma 3's changes to the graph, for `gemma2` and `gemma3` models.
    pub gemma: Option<GemmaConfig>,
}

/// What an architecture changes in the llama graph.
struct Arch {
    name: &'static str,
    rope_layout: RopeLayout,
    qk_norm: bool,
    family: Family,
}

/// Graph changes beyond RoPE layout and head norms.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    /// The llama graph itself.
    Llama,
    Gemma(GemmaVersion),
    /// Fused projections, queries scaled before attention, longrope refused. Phi-3's
    /// `attention.sliding_window` is not read: llama.cpp turns Phi-3's window off (the
    /// converters do not record which layers slide), and the engine follows
    /// llama.cpp's output.
    Phi3,
}

/// Architectures whose graph is the llama one, with what each changes. Projection biases
/// and `rope_freqs` are used wherever the file has them.
const SUPPORTED: &[Arch] = &[
    Arch {
        name: "llama",
        rope_layout: RopeLayout::Normal,
        qk_norm: false,
        family: Family::Llama,
    },
    Arch {
        name: "mistral",
        rope_layout: RopeLayout::Normal,
        qk_norm: false,
        family: Family::Llama,
    },
    Arch {
        name: "qwen2",
        rope_layout: RopeLayout::Neox,
        qk_norm: false,
        family: Family::Llama,
    },
    Arch {
        name: "qwen3",
        rope_layout: RopeLayout::Neox,
        qk_norm: true,
        family: Family::Llama,
    },
    Arch {
        name: "gemma2",
        rope_layout: RopeLayout::Neox,
        qk_norm: false,
        family: Family::Gemma(GemmaVersion::Two),
    },
    Arch {
        name: "gemma3",
        rope_layout: RopeLayout::Neox,
        qk_norm: true,
        family: Family::Gemma(GemmaVersion::Three),
    },
    Arch {
        name: "phi3",
        rope_layout: RopeLayout::Neox,
        qk_norm: false,
        family: Family::Phi3,
    },
];

/// The architectures [`LlamaConfig::from_gguf`] accepts, for messages.
pub const SUPPORTED_ARCHITECTURES: &str = "llama, mistral, qwen2, qwen3, gemma2, gemma3, phi3";

/// Phi-3's 128k-context models stretch RoPE with per-pair factors chosen by the
/// context length (`rope_factors_long` / `rope_factors_short`, "longrope"): not implemented,
/// so such a file is refused by name instead of computing wrong angles.
fn refuse_longrope(g: &Gguf<'_>) -> Result<(), ModelError> {
    match ["rope_factors_long.weight", "rope_factors_short.weight"]
        .into_iter()
        .find(|name| g.tensor(name).is_some())
    {
        Some(name) => Err(ModelError::UnsupportedRopeScaling(alloc::format!(
            "longrope (tensor `{name}`)"
        ))),
        None => Ok(()),
    }
}

impl LlamaConfig {
    /// Reads and validates the hyper-parameters of `g`.
    pub fn from_gguf(g: &Gguf<'_>) -> Result<Self, ModelError> {
        let arch = g
            .get_str("general.architecture")?
            .ok_or(ModelError::MissingKey {
                key: "general.architecture".to_string(),
            })?;
        let spec = SUPPORTED
            .iter()
            .find(|a| a.name == arch)
            .ok_or_else(|| ModelError::UnsupportedArchitecture(arch.to_string()))?;
        let key = |suffix: &str| alloc::format!("{arch}.{suffix}");
        let req_u32 = |suffix: &str| -> Result<usize, ModelError> {
            let k = key(suffix);
            match g.get_u32(&k)? {
                Some(0) | None => Err(ModelError::MissingKey { key: k }),
                Some(v) => Ok(v as usize),
            }
        };
        let n_embd = req_u32("embedding_length")?;
        let n_layer = req_u32("block_count")?;
        let n_head = req_u32("attention.head_count")?;
        let n_head_kv = match g.get_u32(&key("attention.head_count_kv"))? {
            Some(v) if v > 0 => v as usize,
            _ => n_head,
        };
        let n_ff = req_u32("feed_forward_length")?;
        let n_ctx_train = req_u32("context_length")?;
        let head_dim = match g.get_u32(&key("attention.key_length"))? {
            Some(v) if v > 0 => v as usize,
            _ => n_embd / n_head,
        };
        let rope_dims = match g.get_u32(&key("rope.dimension_count"))? {
            Some(v) if v > 0 => v as usize,
            _ => head_dim,
        };
        let rope_freq_base = g.get_f32(&key("rope.freq_base"))?.unwrap_or(10_000.0);
        // The angles would silently be wrong: llama.cpp stretches them for these types.
        match g.get_str(&key("rope.scaling.type"))? {
            None | Some("none") => {}
            Some(other) => return Err(ModelError::UnsupportedRopeScaling(other.to_string())),
        }
        let rms_eps =
            g.get_f32(&key("attention.layer_norm_rms_epsilon"))?
                .ok_or(ModelError::MissingKey {
                    key: key("attention.layer_norm_rms_epsilon"),
                })?;
        let n_vocab = match g.get_u32(&key("vocab_size"))? {
            Some(v) if v > 0 => v as usize,
            _ => g
                .tensor("token_embd.weight")
                .and_then(|t| t.dims.get(1).copied())
                .ok_or(ModelError::MissingTensor("token_embd.weight".to_string()))?
                as usize,
        };
        let gemma = match spec.family {
            Family::Gemma(v) => Some(GemmaConfig::from_gguf(g, arch, v, rope_freq_base)?),
            _ => None,
        };
        let query_scale = match (&gemma, spec.family) {
            (Some(gc), _) => Some(gc.query_scale(n_layer, n_embd / n_head, head_dim)),
            (None, Family::Phi3) => Some(1.0 / libm::sqrtf(head_dim as f32)),
            (None, _) => None,
        };
        if spec.family == Family::Phi3 {
            refuse_longrope(g)?;
        }
        let cfg = Self {
            architecture: arch.to_string(),
            n_vocab,
            n_embd,
            n_layer,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            n_ctx_train,
            rope_freq_base,
            rope_dims,
            rope_layout: spec.rope_layout,
            rms_eps,
            qk_norm: spec.qk_norm,
            query_scale,
            fused_projections: spec.family == Family::Phi3,
            gemma,
        };
        cfg.check()?;
        Ok(cfg)
    }

    /// Bytes of the KV cache a session of `n_ctx` tokens holds (capped at the training
    /// context, as `Model::new_session` caps it): f32 K and V for every layer.
    pub fn kv_cache_bytes(&self, n_ctx: usize) -> usize {
        2 * 4 * self.n_layer * n_ctx.clamp(1, self.n_ctx_train) * self.n_head_kv * self.head_dim
    }

    /// Bytes the forward pass's buffers take for a batch of `tokens` (at most
    /// [`super::MAX_BATCH`] at once): the f32 activations, their quantised copies, the RoPE
    /// tables and the logits. A guest sizing its memory needs this beside weights and KV
    /// cache: for a 1.5B model a full batch is ~60 MB, more than a fixed headroom.
    pub fn batch_bytes(&self, tokens: usize) -> usize {
        let t = tokens.clamp(1, super::MAX_BATCH);
        // Gemma keeps a second set of RoPE angles for its sliding-window layers.
        let rope = self.rope_dims * (1 + usize::from(self.gemma.is_some()));
        let f32s_per_token =
            3 * self.n_embd + 2 * self.q_dim() + 2 * self.kv_dim() + 3 * self.n_ff + rope;
        let quantised = t * 2 * self.n_ff.max(self.n_embd);
        t * f32s_per_token * 4 + quantised + 2 * 4 * self.n_vocab
    }

    fn check(&self) -> Result<(), ModelError> {
        let bad = |what: &str| Err(ModelError::BadHyperParameters(what.to_string()));
        if !self.n_head.is_multiple_of(self.n_head_kv) {
            return bad("attention.head_count is not a multiple of attention.head_count_kv");
        }
        if !self.head_dim.is_multiple_of(2)
            || self.rope_dims > self.head_dim
            || !self.rope_dims.is_multiple_of(2)
        {
            return bad("head dimension and rope.dimension_count must be even, rope <= head");
        }
        if !(self.rope_freq_base.is_finite() && self.rope_freq_base > 0.0) {
            return bad("rope.freq_base must be a positive number");
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0) {
            return bad("attention.layer_norm_rms_epsilon must be a positive number");
        }
        // Far beyond any model this engine targets; stops absurd metadata from turning into
        // absurd allocations before the tensors are even checked.
        let limits = [
            (self.n_embd, 1 << 16),
            (self.n_layer, 1 << 10),
            (self.n_head, 1 << 10),
            (self.n_ff, 1 << 18),
            (self.n_vocab, 1 << 22),
        ];
        if limits.iter().any(|&(v, max)| v > max) {
            return bad("a dimension is implausibly large");
        }
        Ok(())
    }

    /// Width of the key/value projections.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Width of the query projection.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use crate::gguf::writer::GgufWriter;
    use alloc::vec::Vec;

    /// A header of architecture `arch` with `extra` string keys and `tensors` (F32, 1-D);
    /// the config itself needs no tensors.
    fn header_of(arch: &str, extra: &[(&str, &str)], tensors: &[&str]) -> Vec<u8> {
        let mut w = GgufWriter::new();
        w.add_str("general.architecture", arch).unwrap();
        for (k, v) in [
            ("embedding_length", 64),
            ("block_count", 1),
            ("attention.head_count", 4),
            ("feed_forward_length", 128),
            ("context_length", 256),
            ("vocab_size", 100),
        ] {
            w.add_u32(&alloc::format!("{arch}.{k}"), v).unwrap();
        }
        w.add_f32(
            &alloc::format!("{arch}.attention.layer_norm_rms_epsilon"),
            1e-5,
        )
        .unwrap();
        for (k, v) in extra {
            w.add_str(k, v).unwrap();
        }
        for name in tensors {
            w.add_tensor(
                name,
                crate::ggml_type::GgmlType::F32,
                &[8],
                alloc::vec![0; 32],
            )
            .unwrap();
        }
        w.to_bytes().unwrap()
    }

    fn header(extra: &[(&str, &str)]) -> Vec<u8> {
        header_of("llama", extra, &[])
    }

    #[test]
    fn the_error_message_lists_every_supported_architecture() {
        let names: Vec<&str> = SUPPORTED.iter().map(|a| a.name).collect();
        assert_eq!(names.join(", "), SUPPORTED_ARCHITECTURES);
    }

    #[test]
    fn rope_scaling_other_than_none_is_refused_by_name() {
        let plain = header(&[("llama.rope.scaling.type", "none")]);
        assert!(LlamaConfig::from_gguf(&Gguf::parse(&plain).unwrap()).is_ok());
        let yarn = header(&[("llama.rope.scaling.type", "yarn")]);
        let err = LlamaConfig::from_gguf(&Gguf::parse(&yarn).unwrap()).unwrap_err();
        assert!(matches!(&err, ModelError::UnsupportedRopeScaling(t) if t == "yarn"));
    }

    #[test]
    fn gemma2_defaults_are_llama_cpps() {
        let bytes = header_of("gemma2", &[], &[]);
        let cfg = LlamaConfig::from_gguf(&Gguf::parse(&bytes).unwrap()).unwrap();
        let g = cfg.gemma.as_ref().unwrap();
        assert_eq!(g.version, GemmaVersion::Two);
        assert_eq!((g.sliding_window, g.swa_pattern), (4096, 2));
        assert_eq!((g.attn_softcap, g.final_softcap), (50.0, 30.0));
        assert_eq!(g.rope_freq_base_swa, cfg.rope_freq_base);
        assert_eq!(cfg.query_scale, Some(0.25)); // 1 / sqrt(64 / 4)
        assert!(!cfg.qk_norm && !cfg.fused_projections);
    }

    #[test]
    fn phi3_longrope_is_refused_by_name() {
        let plain = header_of("phi3", &[], &[]);
        let cfg = LlamaConfig::from_gguf(&Gguf::parse(&plain).unwrap()).unwrap();
        assert!(cfg.fused_projections && cfg.gemma.is_none());
        for name in ["rope_factors_long.weight", "rope_factors_short.weight"] {
            let long = header_of("phi3", &[], &[name]);
            let err = LlamaConfig::from_gguf(&Gguf::parse(&long).unwrap()).unwrap_err();
            assert!(
                matches!(&err, ModelError::UnsupportedRopeScaling(t) if t.contains(name)),
                "{err}"
            );
        }
    }
}
