//! `tiny`: a small seeded random-weight llama model that reuses a real model's tokenizer, for
//! fast end-to-end tests (it loads in llama.cpp too).

use inference_guest::ggml_type::GgmlType;
use inference_guest::gguf::writer::{GgufWriteError, GgufWriter};
use inference_guest::gguf::{Gguf, GgufError};

use crate::codec::{file_type, quantize_row};
use crate::rng::SplitMix64;

/// Shape and seed of the generated model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TinyParams {
    pub arch: TinyArch,
    pub ty: GgmlType,
    /// Per-class weight types overriding `ty`: (class, type), where the class is a tensor's
    /// name without `blk.N.` and `.weight` (`token_embd`, `attn_v`, `ffn_down`, ...), as
    /// llama.cpp's `_M` mixes type their tensors.
    pub type_for: Vec<(String, GgmlType)>,
    pub seed: u64,
    pub embd: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// Head size when it is not `embd / heads` (written as `attention.key_length`).
    pub head_dim: Option<usize>,
    pub ff: usize,
    pub ctx: usize,
}

/// Why a tiny model could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum TinyError {
    /// Inconsistent hyper-parameters.
    #[error("invalid tiny-model shape: {0}")]
    Shape(String),
    /// The vocabulary file lacks its token list.
    #[error(
        "the --vocab-from file has no tokenizer.ggml.tokens array; pass a llama.cpp GGUF model"
    )]
    NoVocab,
    /// The vocabulary file's metadata is unreadable.
    #[error("reading the --vocab-from file's tokenizer: {0}")]
    Vocab(#[from] GgufError),
    /// Building the output failed.
    #[error(transparent)]
    Write(#[from] GgufWriteError),
}

/// Standard deviation of the random weights: large enough that the tiny model's greedy
/// output varies from token to token (0.02 makes it repeat one token, a weak test).
pub(crate) const WEIGHT_STD: f32 = 0.1;

/// Architectures `tiny` can generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TinyArch {
    /// llama: normal RoPE, no biases.
    Llama,
    /// qwen2: NeoX RoPE and Q/K/V biases.
    Qwen2,
    /// qwen3: NeoX RoPE and per-head Q/K RMSNorms, no biases.
    Qwen3,
    /// llama with llama3's RoPE frequency factors (`rope_freqs.weight`).
    Llama3,
    /// gemma3: Q/K norms, post-attention and post-feed-forward norms, GeGLU, sliding-window
    /// layers of [`GEMMA_WINDOW`] positions (every 6th layer global), soft-capped logits.
    Gemma3,
    /// gemma2: post-attention and post-feed-forward norms, GeGLU, every other layer sliding
    /// over [`GEMMA_WINDOW`] positions, attention scores soft-capped at
    /// [`GEMMA2_ATTN_SOFTCAP`] and logits at [`GEMMA2_FINAL_SOFTCAP`]; no Q/K norms, output
    /// tied to the embeddings (as llama.cpp's gemma2 requires).
    Gemma2,
    /// phi3: fused `attn_qkv` and `ffn_up` (gate rows, then up rows), NeoX RoPE over the
    /// first half of each head only.
    Phi3,
}

impl TinyArch {
    fn name(self) -> &'static str {
        match self {
            Self::Llama | Self::Llama3 => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Gemma3 => "gemma3",
            Self::Gemma2 => "gemma2",
            Self::Phi3 => "phi3",
        }
    }

    fn is_gemma(self) -> bool {
        matches!(self, Self::Gemma2 | Self::Gemma3)
    }

    /// RoPE dimensions of a head of `head_dim`: Phi-3's tiny model rotates half of them, so
    /// its test checks that `rope.dimension_count` is followed.
    fn rope_dims(self, head_dim: usize) -> usize {
        match self {
            Self::Phi3 => head_dim / 2,
            _ => head_dim,
        }
    }
}

/// llama3's rope scaling as `convert_hf_to_gguf.py` turns it into `rope_freqs` (factor 8,
/// low/high frequency factors 1 and 4), with an original context of 256 instead of 8192
/// so that at a tiny model's head size and short prompts half the pairs are scaled and
/// some are interpolated.
fn llama3_rope_factors(head_dim: usize, base: f32) -> Vec<f32> {
    let (factor, low, high, old_ctx) = (8.0f32, 1.0f32, 4.0f32, 256.0f32);
    let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / base.powf((2 * i) as f32 / head_dim as f32);
            let wavelen = 2.0 * core::f32::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

/// The tiny models' RoPE base (Gemma's sliding-window layers': its global ones use 1e6).
const ROPE_BASE: f32 = 10000.0;

/// The tiny Gemma's sliding window: short enough that the test prompts outgrow it.
const GEMMA_WINDOW: u32 = 8;

/// The tiny Gemma 2's attention soft-cap: Gemma 2's own 50 is far above the tiny model's
/// scores (a few units), where the cap would change nothing a test could see.
const GEMMA2_ATTN_SOFTCAP: f32 = 5.0;

/// The tiny Gemma 2's final logit soft-cap: Gemma 2's own 30 is far above the tiny model's
/// logits, where the cap would not move them measurably.
const GEMMA2_FINAL_SOFTCAP: f32 = 2.0;

/// The tiny Gemma 2's embedding weights' standard deviation. llama.cpp ties Gemma 2's output
/// to its embeddings, which enter scaled by sqrt(n_embd): at [`WEIGHT_STD`] each token's
/// own logit would dwarf the others and the model would only repeat its input.
const GEMMA2_EMBD_STD: f32 = 0.01;

/// The weight-matrix classes `--type-for` can re-type.
const CLASSES: [&str; 9] = [
    "token_embd",
    "attn_qkv",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

impl TinyParams {
    fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.embd / self.heads.max(1))
    }

    /// The weight type of tensor class `class`.
    fn type_of(&self, class: &str) -> GgmlType {
        self.type_for
            .iter()
            .rev()
            .find(|(c, _)| c == class)
            .map_or(self.ty, |(_, t)| *t)
    }

    fn validate(&self) -> Result<(), TinyError> {
        let bad = |m: String| Err(TinyError::Shape(m));
        if [
            self.embd,
            self.layers,
            self.heads,
            self.kv_heads,
            self.ff,
            self.ctx,
        ]
        .contains(&0)
        {
            return bad("every size must be non-zero".into());
        }
        let splits = self.head_dim.is_some() || self.embd.is_multiple_of(self.heads);
        if !splits || !self.head_dim().is_multiple_of(2) || self.head_dim() == 0 {
            return bad(format!(
                "--embd {} must split into {} heads of even size (or give an even --head-dim)",
                self.embd, self.heads
            ));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return bad(format!(
                "--heads {} must be a multiple of --kv-heads {}",
                self.heads, self.kv_heads
            ));
        }
        for ty in core::iter::once(self.ty).chain(self.type_for.iter().map(|(_, t)| *t)) {
            let block = ty.block_len();
            let q_dim = self.heads * self.head_dim();
            if ![self.embd, self.ff, q_dim]
                .iter()
                .all(|d| d.is_multiple_of(block))
            {
                return bad(format!(
                    "--embd {}, --ff {} and heads × head size {q_dim} must be multiples of \
                     {}'s block of {block}",
                    self.embd,
                    self.ff,
                    ty.name()
                ));
            }
        }
        if self.arch == TinyArch::Phi3 && self.heads * self.head_dim() != self.embd {
            return bad(format!(
                "phi3: --heads {} × head size {} must equal --embd {} (llama.cpp's phi3 \
                 assumes it)",
                self.heads,
                self.head_dim(),
                self.embd
            ));
        }
        if let Some((c, _)) = self.type_for.iter().find(|(c, _)| !CLASSES.contains(&&**c)) {
            return bad(format!(
                "--type-for: no tensor class '{c}'; use one of {}",
                CLASSES.join(", ")
            ));
        }
        Ok(())
    }
}

/// Builds the model: llama hyper-parameters, every `tokenizer.*` key of `vocab`, and seeded
/// random tensors named and shaped as llama.cpp expects (tied embeddings: no `output.weight`).
pub fn generate(vocab: &Gguf<'_>, p: &TinyParams) -> Result<GgufWriter, TinyError> {
    p.validate()?;
    let n_vocab = vocab
        .get_str_array("tokenizer.ggml.tokens")?
        .ok_or(TinyError::NoVocab)?
        .len();
    let mut w = GgufWriter::new();
    write_header(&mut w, p, n_vocab)?;
    for (key, value) in vocab
        .metadata()
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
    {
        w.add(key, value)?;
    }
    write_tensors(&mut w, p, n_vocab)?;
    Ok(w)
}

/// The architecture's hyper-parameters.
fn write_header(w: &mut GgufWriter, p: &TinyParams, n_vocab: usize) -> Result<(), TinyError> {
    let as_u32 =
        |v: usize| u32::try_from(v).map_err(|_| TinyError::Shape(format!("{v} is too large")));
    let arch = p.arch.name();
    w.add_str("general.architecture", arch)?;
    w.add_str("general.name", "flexserve-tiny")?;
    w.add_u32("general.file_type", file_type(p.ty))?;
    w.add_u32("general.quantization_version", 2)?;
    w.add_u32(&format!("{arch}.context_length"), as_u32(p.ctx)?)?;
    w.add_u32(&format!("{arch}.embedding_length"), as_u32(p.embd)?)?;
    w.add_u32(&format!("{arch}.block_count"), as_u32(p.layers)?)?;
    w.add_u32(&format!("{arch}.feed_forward_length"), as_u32(p.ff)?)?;
    w.add_u32(&format!("{arch}.attention.head_count"), as_u32(p.heads)?)?;
    w.add_u32(
        &format!("{arch}.attention.head_count_kv"),
        as_u32(p.kv_heads)?,
    )?;
    if p.head_dim.is_some() {
        for k in ["key_length", "value_length"] {
            w.add_u32(&format!("{arch}.attention.{k}"), as_u32(p.head_dim())?)?;
        }
    }
    w.add_f32(&format!("{arch}.attention.layer_norm_rms_epsilon"), 1e-5)?;
    let base = match p.arch {
        TinyArch::Gemma3 => 1_000_000.0,
        _ => ROPE_BASE,
    };
    w.add_f32(&format!("{arch}.rope.freq_base"), base)?;
    w.add_u32(
        &format!("{arch}.rope.dimension_count"),
        as_u32(p.arch.rope_dims(p.head_dim()))?,
    )?;
    w.add_u32(&format!("{arch}.vocab_size"), as_u32(n_vocab)?)?;
    if p.arch == TinyArch::Gemma3 {
        w.add_u32(&format!("{arch}.attention.sliding_window"), GEMMA_WINDOW)?;
        w.add_f32(&format!("{arch}.rope.freq_base_swa"), ROPE_BASE)?;
        w.add_f32(&format!("{arch}.final_logit_softcapping"), 30.0)?;
    }
    if p.arch == TinyArch::Gemma2 {
        w.add_u32(&format!("{arch}.attention.sliding_window"), GEMMA_WINDOW)?;
        w.add_f32(
            &format!("{arch}.attn_logit_softcapping"),
            GEMMA2_ATTN_SOFTCAP,
        )?;
        w.add_f32(
            &format!("{arch}.final_logit_softcapping"),
            GEMMA2_FINAL_SOFTCAP,
        )?;
    }
    Ok(())
}

/// Seeded random tensors; the draws of the llama and qwen2 tensors are those of the first
/// version of `tiny`, so their files keep their bytes for a seed.
fn write_tensors(w: &mut GgufWriter, p: &TinyParams, n_vocab: usize) -> Result<(), TinyError> {
    let mut rng = SplitMix64::new(p.seed);
    // Biases draw from their own stream so llama models keep their bytes for a seed.
    let mut rng_bias = SplitMix64::new(p.seed ^ 0xb1a5);
    let (e, kv) = (p.embd as u64, (p.kv_heads * p.head_dim()) as u64);
    let (q, hd) = ((p.heads * p.head_dim()) as u64, p.head_dim() as u64);
    let mut add = |w: &mut GgufWriter, class: &str, name: &str, dims: &[u64]| {
        let std = match (p.arch, class) {
            (TinyArch::Gemma2, "token_embd") => GEMMA2_EMBD_STD,
            _ => WEIGHT_STD,
        };
        let (ty, data) = random_tensor(&mut rng, p.type_of(class), dims, std);
        w.add_tensor(name, ty, dims, data)
    };
    add(w, "token_embd", "token_embd.weight", &[e, n_vocab as u64])?;
    if p.arch == TinyArch::Llama3 {
        let factors = llama3_rope_factors(p.head_dim(), ROPE_BASE);
        let bytes = factors.iter().flat_map(|f| f.to_le_bytes()).collect();
        w.add_tensor("rope_freqs.weight", GgmlType::F32, &[hd / 2], bytes)?;
    }
    for l in 0..p.layers {
        let ff = p.ff as u64;
        let llama_shapes: [(&str, &[u64]); 9] = [
            ("attn_norm", &[e]),
            ("attn_q", &[e, q]),
            ("attn_k", &[e, kv]),
            ("attn_v", &[e, kv]),
            ("attn_output", &[q, e]),
            ("ffn_norm", &[e]),
            ("ffn_gate", &[e, ff]),
            ("ffn_up", &[e, ff]),
            ("ffn_down", &[ff, e]),
        ];
        let phi3_shapes: [(&str, &[u64]); 6] = [
            ("attn_norm", &[e]),
            ("attn_qkv", &[e, q + 2 * kv]),
            ("attn_output", &[q, e]),
            ("ffn_norm", &[e]),
            ("ffn_up", &[e, 2 * ff]),
            ("ffn_down", &[ff, e]),
        ];
        let shapes: &[(&str, &[u64])] = match p.arch {
            TinyArch::Phi3 => &phi3_shapes,
            _ => &llama_shapes,
        };
        for &(name, dims) in shapes {
            add(w, name, &format!("blk.{l}.{name}.weight"), dims)?;
        }
        if matches!(p.arch, TinyArch::Qwen3 | TinyArch::Gemma3) {
            for name in ["attn_q_norm", "attn_k_norm"] {
                add(w, name, &format!("blk.{l}.{name}.weight"), &[hd])?;
            }
        }
        if p.arch.is_gemma() {
            for name in ["post_attention_norm", "post_ffw_norm"] {
                add(w, name, &format!("blk.{l}.{name}.weight"), &[e])?;
            }
        }
        if p.arch == TinyArch::Qwen2 {
            for (name, len) in [("attn_q", e), ("attn_k", kv), ("attn_v", kv)] {
                let bias: Vec<u8> = (0..len)
                    .flat_map(|_| (WEIGHT_STD * rng_bias.normal()).to_le_bytes())
                    .collect();
                w.add_tensor(&format!("blk.{l}.{name}.bias"), GgmlType::F32, &[len], bias)?;
            }
        }
    }
    add(w, "output_norm", "output_norm.weight", &[e])?;
    if p.arch == TinyArch::Gemma3 {
        // Gemma's embeddings enter scaled by sqrt(n_embd): with them tied to the output, the
        // random model would only ever repeat its input token.
        add(w, "token_embd", "output.weight", &[e, n_vocab as u64])?;
    }
    Ok(())
}

/// Random data for one tensor: 1-D tensors are F32 norm weights near 1.0; matrices are
/// N(0, std²) weights quantised row by row to `ty`.
fn random_tensor(
    rng: &mut SplitMix64,
    ty: GgmlType,
    dims: &[u64],
    std: f32,
) -> (GgmlType, Vec<u8>) {
    let row_len = dims.first().copied().unwrap_or(1) as usize;
    let n_rows: usize = dims.iter().skip(1).map(|&d| d as usize).product();
    if dims.len() == 1 {
        let data = (0..row_len)
            .flat_map(|_| (1.0 + WEIGHT_STD * rng.normal()).to_le_bytes())
            .collect();
        return (GgmlType::F32, data);
    }
    // `validate` made every row length a whole number of blocks.
    let row_bytes = ty.row_bytes(row_len).unwrap_or(0);
    let mut data = vec![0u8; row_bytes * n_rows];
    let mut row = vec![0f32; row_len];
    for dst in data.chunks_exact_mut(row_bytes.max(1)) {
        row.iter_mut().for_each(|x| *x = std * rng.normal());
        quantize_row(ty, &row, dst);
    }
    (ty, data)
}
