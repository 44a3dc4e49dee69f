//! Reading a tokenizer's `tokenizer.ggml.*` metadata from a GGUF file.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::TokenizerError;
use super::vocab::{SpecialTokenIds, Tokenizer, TokenizerKind, VocabSpec};
use crate::gguf::{Gguf, GgufError};

fn bad(key: &'static str, e: GgufError) -> TokenizerError {
    TokenizerError::BadMetadata {
        key,
        reason: e.to_string(),
    }
}

/// A token id key: absent or negative (some converters write -1 for "none") means no token.
fn id(g: &Gguf<'_>, key: &'static str) -> Result<Option<u64>, TokenizerError> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => match v.as_integer() {
            Some(n) => Ok(u64::try_from(n).ok()),
            None => Err(TokenizerError::BadMetadata {
                key,
                reason: "expected an integer token id".into(),
            }),
        },
    }
}

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
    ///
    /// Fails on unsupported tokenizer models or pre-tokenizers, missing or mistyped keys,
    /// per-token arrays shorter than the vocabulary, and special-token ids out of range.
    pub fn from_gguf(g: &Gguf<'_>) -> Result<Self, TokenizerError> {
        const MODEL: &str = "tokenizer.ggml.model";
        const TOKENS: &str = "tokenizer.ggml.tokens";
        const MERGES: &str = "tokenizer.ggml.merges";
        const SCORES: &str = "tokenizer.ggml.scores";
        const TYPES: &str = "tokenizer.ggml.token_type";
        let model = g
            .get_str(MODEL)
            .map_err(|e| bad(MODEL, e))?
            .ok_or(TokenizerError::MissingKey(MODEL))?;
        let kind = match model {
            "gpt2" => {
                let pre = g
                    .get_str("tokenizer.ggml.pre")
                    .map_err(|e| bad("tokenizer.ggml.pre", e))?;
                let merges = g.get_str_array(MERGES).map_err(|e| bad(MERGES, e))?;
                let merges = merges.ok_or(TokenizerError::MissingKey(MERGES))?;
                TokenizerKind::Gpt2 {
                    pre: pre.unwrap_or_default().into(),
                    merges: merges.into_iter().map(String::from).collect(),
                }
            }
            "llama" => TokenizerKind::Llama,
            other => return Err(TokenizerError::UnsupportedModel(other.into())),
        };
        let tokens = g.get_str_array(TOKENS).map_err(|e| bad(TOKENS, e))?;
        let tokens: Vec<String> = tokens
            .ok_or(TokenizerError::MissingKey(TOKENS))?
            .into_iter()
            .map(String::from)
            .collect();
        // llama.cpp accepts integer scores too.
        let scores = match g.get_f32_array(SCORES) {
            Ok(s) => s,
            Err(e) => match g.get_i32_array(SCORES) {
                Ok(s) => s.map(|s| s.into_iter().map(|x| x as f32).collect()),
                Err(_) => return Err(bad(SCORES, e)),
            },
        };
        let token_types = g.get_i32_array(TYPES).map_err(|e| bad(TYPES, e))?;
        let flag = |key: &'static str| g.get_bool(key).map_err(|e| bad(key, e));
        let mut tok = Self::from_spec(VocabSpec {
            kind,
            tokens,
            scores,
            token_types,
            special: SpecialTokenIds {
                bos: id(g, "tokenizer.ggml.bos_token_id")?,
                eos: id(g, "tokenizer.ggml.eos_token_id")?,
                eot: id(g, "tokenizer.ggml.eot_token_id")?,
                eom: id(g, "tokenizer.ggml.eom_token_id")?,
                unk: id(g, "tokenizer.ggml.unknown_token_id")?,
            },
            add_bos: flag("tokenizer.ggml.add_bos_token")?,
            add_eos: flag("tokenizer.ggml.add_eos_token")?,
            add_space_prefix: flag("tokenizer.ggml.add_space_prefix")?,
        })?;
        // A missing or mistyped name only means no per-model attributes, as in llama.cpp.
        if let Ok(Some(name)) = g.get_str("general.name") {
            tok.set_attrs_by_model_name(name);
        }
        Ok(tok)
    }

    /// The ids that end generation, exactly as [`Tokenizer::is_end_of_generation`] of the
    /// full tokenizer would say, without building it (no merges, no text → id map): what a
    /// server that receives token ids needs, at a fraction of the cost.
    pub fn end_of_generation_ids(g: &Gguf<'_>) -> Result<Vec<u32>, TokenizerError> {
        const MODEL: &str = "tokenizer.ggml.model";
        const TOKENS: &str = "tokenizer.ggml.tokens";
        let model = g
            .get_str(MODEL)
            .map_err(|e| bad(MODEL, e))?
            .ok_or(TokenizerError::MissingKey(MODEL))?;
        let eos_default = match model {
            "gpt2" => 11,
            "llama" => 2,
            other => return Err(TokenizerError::UnsupportedModel(other.into())),
        };
        let tokens = g
            .get_str_array(TOKENS)
            .map_err(|e| bad(TOKENS, e))?
            .ok_or(TokenizerError::MissingKey(TOKENS))?;
        let n = tokens.len();
        if n == 0 {
            return Err(TokenizerError::EmptyVocab);
        }
        let check =
            |key: &'static str, default: Option<u32>| -> Result<Option<u32>, TokenizerError> {
                match id(g, key)? {
                    Some(v) if v < n as u64 => Ok(Some(v as u32)),
                    Some(v) => Err(TokenizerError::TokenIdOutOfRange {
                        key,
                        id: v,
                        n_vocab: n,
                    }),
                    None => Ok(default.filter(|&d| (d as usize) < n)),
                }
            };
        let eos = check("tokenizer.ggml.eos_token_id", Some(eos_default))?;
        let eot = check("tokenizer.ggml.eot_token_id", None)?;
        let eom = check("tokenizer.ggml.eom_token_id", None)?;
        // Only the texts the rules look up, with later duplicates winning as in the full map.
        let wanted: alloc::collections::BTreeSet<&str> = super::vocab::end_texts().collect();
        let mut found = alloc::collections::BTreeMap::new();
        for (i, t) in tokens.iter().enumerate() {
            if wanted.contains(t) {
                found.insert(*t, i as u32);
            }
        }
        let ends = super::vocab::end_ids(&|t| found.get(t).copied(), eot, eom);
        let mut ids: Vec<u32> = ends.by_text;
        ids.extend([eos, ends.eot, ends.eom].into_iter().flatten());
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }
}
