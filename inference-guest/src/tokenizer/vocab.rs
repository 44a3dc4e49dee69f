//! The [`Tokenizer`]: vocabulary, special tokens and the load-time checks on untrusted data.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::TokenizerError;
use super::bpe::BpeModel;
use super::pretokenize::PreTokenizer;
use super::unicode::char_to_byte;

/// Token attributes, as llama.cpp derives them from `tokenizer.ggml.token_type`.
pub(crate) mod attr {
    pub(crate) const UNKNOWN: u8 = 1 << 0;
    pub(crate) const UNUSED: u8 = 1 << 1;
    pub(crate) const NORMAL: u8 = 1 << 2;
    pub(crate) const CONTROL: u8 = 1 << 3;
    pub(crate) const USER_DEFINED: u8 = 1 << 4;
    pub(crate) const BYTE: u8 = 1 << 5;
    /// Whitespace after the token is dropped when special tokens are parsed.
    pub(crate) const RSTRIP: u8 = 1 << 6;
    /// Whitespace before the token is dropped when special tokens are parsed.
    pub(crate) const LSTRIP: u8 = 1 << 7;

    /// GGUF token type → attribute; unknown types are "undefined" (no attribute), like llama.cpp.
    pub(crate) fn from_token_type(t: i32) -> u8 {
        match t {
            1 => NORMAL,
            2 => UNKNOWN,
            3 => CONTROL,
            4 => USER_DEFINED,
            5 => UNUSED,
            6 => BYTE,
            _ => 0,
        }
    }
}

/// Which algorithm a vocabulary uses (`tokenizer.ggml.model`).
#[derive(Debug, Clone, PartialEq)]
pub enum TokenizerKind {
    /// `gpt2`: byte-level BPE with the named pre-tokenizer (`tokenizer.ggml.pre`) and merges.
    Gpt2 {
        /// Pre-tokenizer name; empty means llama.cpp's `default`.
        pre: String,
        /// `"left right"` merge rules, highest priority first.
        merges: Vec<String>,
    },
    /// `llama`: SentencePiece-style BPE over scores, with byte fallback.
    Llama,
}

/// Special-token ids as found in metadata (raw, unvalidated).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecialTokenIds {
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u64>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u64>,
    /// `tokenizer.ggml.eot_token_id`.
    pub eot: Option<u64>,
    /// `tokenizer.ggml.eom_token_id`.
    pub eom: Option<u64>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk: Option<u64>,
}

/// Everything a tokenizer is built from: the GGUF `tokenizer.ggml.*` metadata, or a vocabulary
/// assembled in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct VocabSpec {
    /// The algorithm and its data.
    pub kind: TokenizerKind,
    /// Token texts, indexed by id.
    pub tokens: Vec<String>,
    /// Per-token scores (SPM merge priority); zeros when absent.
    pub scores: Option<Vec<f32>>,
    /// Per-token GGUF token types (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
    /// 6 byte); all normal when absent.
    pub token_types: Option<Vec<i32>>,
    /// Special-token ids from metadata.
    pub special: SpecialTokenIds,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix`.
    pub add_space_prefix: Option<bool>,
}

/// The algorithm-specific half of a tokenizer.
#[derive(Debug, Clone)]
pub(crate) enum Engine {
    Bpe(BpeModel),
    Spm {
        byte_tokens: alloc::boxed::Box<[Option<u32>; 256]>,
    },
}

/// A loaded tokenizer: text ↔ token ids exactly as llama.cpp computes them.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    pub(crate) engine: Engine,
    pub(crate) tokens: Vec<String>,
    pub(crate) attrs: Vec<u8>,
    pub(crate) scores: Vec<f32>,
    pub(crate) token_to_id: BTreeMap<String, u32>,
    /// Control, user-defined and unknown tokens, longest text first.
    pub(crate) special_cache: Vec<u32>,
    /// `token_bytes` of every token, concatenated; `piece_ends[id]` is where each one ends.
    pieces: Vec<u8>,
    piece_ends: Vec<usize>,
    pub(crate) bos: Option<u32>,
    pub(crate) eos: Option<u32>,
    pub(crate) add_bos: bool,
    pub(crate) add_eos: bool,
    pub(crate) add_space_prefix: bool,
    eog: Vec<bool>,
}

/// Texts llama.cpp treats as end-of-generation whatever their id (`special_eog_ids`).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];
/// FIM pad / repo / file-separator texts, which llama.cpp also stops on.
const EOG_FIM_TEXTS: &[&str] = &[
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<PAD>",
    "[PAD]",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    "<|file_sep|>",
];
/// Texts llama.cpp auto-detects as EOT when `eot_token_id` is absent.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];

/// How generation ends for a vocabulary: the ids of the end-of-generation texts it has, and
/// its eot/eom ids (from the metadata, else found by text, as llama.cpp does).
pub(crate) struct EndIds {
    pub by_text: Vec<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
}

/// Every text this module looks up by name, so a cheap scan can find them all at once.
pub(crate) fn end_texts() -> impl Iterator<Item = &'static str> {
    EOG_TEXTS
        .iter()
        .chain(EOG_FIM_TEXTS)
        .chain(EOT_TEXTS)
        .copied()
        .chain(["<|eom_id|>"])
}

/// llama.cpp's end-of-generation rules over a text → id lookup (later duplicates win).
pub(crate) fn end_ids(
    lookup: &dyn Fn(&str) -> Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
) -> EndIds {
    let lowest_with = |texts: &[&str]| texts.iter().filter_map(|t| lookup(t)).min();
    EndIds {
        by_text: EOG_TEXTS
            .iter()
            .chain(EOG_FIM_TEXTS)
            .filter_map(|t| lookup(t))
            .collect(),
        eot: eot.or_else(|| lowest_with(EOT_TEXTS)),
        eom: eom.or_else(|| lowest_with(&["<|eom_id|>"])),
    }
}

/// The tokenizing engine for `kind`, and that kind's defaults for adding BOS and a space
/// prefix.
fn engine_for(
    kind: TokenizerKind,
    token_to_id: &BTreeMap<String, u32>,
    n_vocab: u32,
    unk: Option<u32>,
) -> Result<(Engine, bool, bool), TokenizerError> {
    Ok(match kind {
        TokenizerKind::Gpt2 { pre, merges } => {
            let pre = PreTokenizer::from_name(&pre)?;
            let add_bos_default = pre.add_bos_default;
            (
                Engine::Bpe(BpeModel::new(pre, &merges, token_to_id, n_vocab)),
                add_bos_default,
                false,
            )
        }
        TokenizerKind::Llama => {
            let mut byte_tokens = [None; 256];
            for (b, slot) in byte_tokens.iter_mut().enumerate() {
                let hex = alloc::format!("<0x{b:02X}>");
                let raw = u8::try_from(b)
                    .ok()
                    .filter(u8::is_ascii)
                    .map(|b| String::from(b as char));
                *slot = token_to_id
                    .get(&hex)
                    .or_else(|| raw.and_then(|r| token_to_id.get(&r)))
                    .copied()
                    .or(unk);
            }
            (
                Engine::Spm {
                    byte_tokens: alloc::boxed::Box::new(byte_tokens),
                },
                true,
                true,
            )
        }
    })
}

impl Tokenizer {
    /// Builds a tokenizer from its parts, validating every id and array length.
    pub fn from_spec(spec: VocabSpec) -> Result<Self, TokenizerError> {
        let VocabSpec {
            kind,
            mut tokens,
            scores,
            token_types,
            special,
            add_bos,
            add_eos,
            add_space_prefix,
        } = spec;
        let n = tokens.len();
        if n == 0 {
            return Err(TokenizerError::EmptyVocab);
        }
        let n_vocab = u32::try_from(n).map_err(|_| TokenizerError::VocabTooLarge(n))?;
        let check_len = |key, len: usize| {
            if len < n {
                Err(TokenizerError::ArrayLength {
                    key,
                    len,
                    n_vocab: n,
                })
            } else {
                Ok(())
            }
        };
        let mut attrs = vec![attr::NORMAL; n];
        if let Some(types) = &token_types {
            check_len("tokenizer.ggml.token_type", types.len())?;
            for (a, &t) in attrs.iter_mut().zip(types) {
                *a = attr::from_token_type(t);
            }
        }
        let scores = match scores {
            Some(s) => {
                check_len("tokenizer.ggml.scores", s.len())?;
                if let Some(i) = s.iter().take(n).position(|x| x.is_nan()) {
                    return Err(TokenizerError::NanScore(i as u32));
                }
                s
            }
            None => vec![0.0; n],
        };
        let mut token_to_id = BTreeMap::new();
        for (i, t) in tokens.iter_mut().enumerate() {
            if t.is_empty() {
                *t = alloc::format!("[EMPTY_{i}]");
            }
            // Later duplicates win, as in llama.cpp's `token_to_id[word] = i`.
            token_to_id.insert(t.clone(), i as u32);
        }
        let check_id = |key, id, default| checked_id(key, id, default, n_vocab);
        let is_spm = kind == TokenizerKind::Llama;
        let (bos_default, eos_default, unk_default) = if is_spm {
            (Some(1), Some(2), Some(0))
        } else {
            (Some(11), Some(11), None)
        };
        let bos = check_id("tokenizer.ggml.bos_token_id", special.bos, bos_default)?;
        let eos = check_id("tokenizer.ggml.eos_token_id", special.eos, eos_default)?;
        let unk = check_id("tokenizer.ggml.unknown_token_id", special.unk, unk_default)?;
        let mut eot = check_id("tokenizer.ggml.eot_token_id", special.eot, None)?;
        let mut eom = check_id("tokenizer.ggml.eom_token_id", special.eom, None)?;
        let ends = end_ids(&|t| token_to_id.get(t).copied(), eot, eom);
        (eot, eom) = (ends.eot, ends.eom);
        let mut eog = vec![false; n];
        for &id in &ends.by_text {
            eog[id as usize] = true;
            attrs[id as usize] |= attr::CONTROL;
        }
        for id in [eos, eot, eom].into_iter().flatten() {
            eog[id as usize] = true;
        }

        let (engine, add_bos_default, space_default) =
            engine_for(kind, &token_to_id, n_vocab, unk)?;

        let special_cache = special_cache(&tokens, &attrs);

        let (pieces, piece_ends) = pieces(&tokens, &attrs, is_spm)?;

        Ok(Self {
            engine,
            tokens,
            attrs,
            scores,
            token_to_id,
            special_cache,
            pieces,
            piece_ends,
            bos,
            eos,
            add_bos: add_bos.unwrap_or(add_bos_default),
            add_eos: add_eos.unwrap_or(false),
            add_space_prefix: is_spm && add_space_prefix.unwrap_or(space_default),
            eog,
        })
    }

    /// The attributes llama.cpp gives tokens by model name (`general.name`), which GGUF files
    /// do not carry: Phi-3 models drop the whitespace after their special tokens, except
    /// after `<unk>`, `<s>` and `<|endoftext|>` (llama.cpp's `load` in `llama-vocab.cpp`).
    pub(crate) fn set_attrs_by_model_name(&mut self, general_name: &str) {
        let name = general_name.to_ascii_lowercase();
        if !(name.contains("phi-3") || name.contains("phi3")) {
            return;
        }
        for &id in &self.special_cache {
            self.attrs[id as usize] |= attr::RSTRIP;
        }
        let mut set = |text: &str, on: bool| {
            if let Some(&id) = self.token_to_id.get(text) {
                let a = &mut self.attrs[id as usize];
                *a = if on {
                    *a | attr::RSTRIP
                } else {
                    *a & !attr::RSTRIP
                };
            }
        };
        set("</s>", true);
        for text in ["<unk>", "<s>", "<|endoftext|>"] {
            set(text, false);
        }
    }

    /// Number of tokens in the vocabulary.
    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }

    /// The beginning-of-sequence token, if the vocabulary has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence token, if the vocabulary has one.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether generating `id` ends the turn: eos, eot, eom, and llama.cpp's end-of-generation
    /// texts (`<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`, `</s>`, FIM pad/repo/sep, ...).
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.eog.get(id as usize).copied().unwrap_or(false)
    }

    /// Whether `id` is a control, user-defined or unknown token (`<|im_start|>`, ...): its
    /// text is markup, not output, so a grammar never allows it.
    pub fn is_special(&self, id: u32) -> bool {
        self.attrs
            .get(id as usize)
            .is_some_and(|a| a & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0)
    }

    /// The token's text as stored in the vocabulary (byte-level or "▁"-escaped form).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The id of the token whose vocabulary text is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// The raw bytes token `id` stands for (special tokens: their text; unused and
    /// undefined tokens: nothing; out-of-range ids: nothing).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        let Some(&end) = self.piece_ends.get(i) else {
            return &[];
        };
        let start = match i.checked_sub(1) {
            Some(p) => self.piece_ends.get(p).copied().unwrap_or(end),
            None => 0,
        };
        self.pieces.get(start..end).unwrap_or(&[])
    }

    /// Concatenated [`token_bytes`](Self::token_bytes) of `ids` (SPM: the leading space of the
    /// first piece is kept). Not necessarily UTF-8: a character may span tokens.
    pub fn decode(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for &id in ids {
            out.extend_from_slice(self.token_bytes(id));
        }
        out
    }
}

/// The id `key` names, which must be in the vocabulary; without one, `default` if it is.
fn checked_id(
    key: &'static str,
    id: Option<u64>,
    default: Option<u32>,
    n_vocab: u32,
) -> Result<Option<u32>, TokenizerError> {
    match id {
        Some(id) if id < u64::from(n_vocab) => Ok(Some(id as u32)),
        Some(id) => Err(TokenizerError::TokenIdOutOfRange {
            key,
            id,
            n_vocab: n_vocab as usize,
        }),
        None => Ok(default.filter(|&d| d < n_vocab)),
    }
}

/// The ids matched as special tokens in text (control, user-defined, unknown), longest
/// first, so a longer special token wins over a prefix of it.
fn special_cache(tokens: &[String], attrs: &[u8]) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..tokens.len() as u32)
        .filter(|&id| {
            attrs[id as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
        })
        .collect();
    ids.sort_by_key(|&id| core::cmp::Reverse(tokens[id as usize].len()));
    ids
}

/// Every token's bytes as detokenizing emits them, end to end, and where each one ends.
fn pieces(
    tokens: &[String],
    attrs: &[u8],
    is_spm: bool,
) -> Result<(Vec<u8>, Vec<usize>), TokenizerError> {
    let mut pieces = Vec::new();
    let mut piece_ends = Vec::with_capacity(tokens.len());
    for (id, (text, &a)) in tokens.iter().zip(attrs).enumerate() {
        push_piece(&mut pieces, id as u32, text, a, is_spm)?;
        piece_ends.push(pieces.len());
    }
    Ok((pieces, piece_ends))
}

/// Appends the bytes token `id` decodes to (llama.cpp `token_to_piece` with `special`).
fn push_piece(
    out: &mut Vec<u8>,
    id: u32,
    text: &str,
    a: u8,
    is_spm: bool,
) -> Result<(), TokenizerError> {
    if a & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
        out.extend_from_slice(text.as_bytes());
    } else if a & attr::NORMAL != 0 {
        if is_spm {
            for (i, part) in text.split('\u{2581}').enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                out.extend_from_slice(part.as_bytes());
            }
        } else {
            for c in text.chars() {
                match char_to_byte(c) {
                    Some(b) => out.push(b),
                    // llama.cpp's `llama_decode_text` marks characters outside the byte alphabet.
                    None => {
                        out.extend_from_slice(b"[UNK_BYTE_0x");
                        let mut buf = [0u8; 4];
                        for b in c.encode_utf8(&mut buf).bytes() {
                            out.extend_from_slice(alloc::format!("{b:02x}").as_bytes());
                        }
                        out.extend_from_slice(text.as_bytes());
                        out.push(b']');
                    }
                }
            }
        }
    } else if a & attr::BYTE != 0 {
        let hex = text
            .strip_prefix("<0x")
            .and_then(|t| t.strip_suffix('>'))
            .filter(|h| h.len() == 2);
        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(b) => out.push(b),
            None if !is_spm => out.extend(text.chars().filter_map(char_to_byte)),
            None => {
                return Err(TokenizerError::BadByteToken {
                    id,
                    text: text.into(),
                });
            }
        }
    }
    Ok(())
}
