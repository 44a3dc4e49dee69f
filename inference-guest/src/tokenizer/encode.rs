//! Text → ids: special-token partitioning (llama.cpp `tokenizer_st_partition`), then the
//! vocabulary's algorithm on each plain-text fragment, plus BOS/EOS.

use alloc::string::String;
use alloc::vec::Vec;
use core::ops::Range;

use super::spm;
use super::vocab::{Engine, Tokenizer, attr};

/// A piece of the input: plain text still to tokenize, or a special token already matched.
#[derive(Debug, Clone)]
enum Fragment {
    Text(Range<usize>),
    Token(u32),
}

impl Tokenizer {
    /// Tokenizes `text` like llama.cpp's `llama_tokenize(text, add_special = add_bos,
    /// parse_special)`.
    ///
    /// `add_bos` adds BOS (and EOS) only where the vocabulary asks for it (`add_bos_token`,
    /// `add_eos_token`). With `parse_special`, control tokens such as `<|im_start|>` written in
    /// the text become their ids; without it they are tokenized as plain text (user-defined
    /// tokens are always matched, as in llama.cpp).
    pub fn encode(&self, text: &str, add_bos: bool, parse_special: bool) -> Vec<u32> {
        let mut fragments = self.partition(text, parse_special);
        self.strip_around_tokens(text, &mut fragments);
        self.encode_fragments(text, &fragments, add_bos)
    }

    /// Tokenizes the concatenation of `parts` as [`Tokenizer::encode`] would the whole text,
    /// except that special-token text is parsed only in the parts marked `true`: a chat
    /// template's own markers are special, while a message's content is plain text, so a
    /// message cannot forge a role. Plain text that runs across parts is one fragment, as in
    /// the whole text: without special-token text in the plain parts the result equals
    /// `encode(&parts.concat(), add_bos, true)`.
    pub fn encode_parts(&self, parts: &[(&str, bool)], add_bos: bool) -> Vec<u32> {
        let mut text = String::new();
        let mut fragments: Vec<Fragment> = Vec::new();
        for &(part, parse_special) in parts {
            let base = text.len();
            text.push_str(part);
            for f in self.partition(part, parse_special) {
                let f = match f {
                    Fragment::Text(r) => Fragment::Text(base + r.start..base + r.end),
                    token => token,
                };
                match (fragments.last_mut(), &f) {
                    (Some(Fragment::Text(prev)), Fragment::Text(r)) if prev.end == r.start => {
                        prev.end = r.end;
                    }
                    _ => fragments.push(f),
                }
            }
        }
        self.strip_around_tokens(&text, &mut fragments);
        self.encode_fragments(&text, &fragments, add_bos)
    }

    /// Drops the whitespace (C's `isspace`) llama.cpp's partition drops after a token marked
    /// `RSTRIP` and before one marked `LSTRIP`, then the text fragments left empty. It runs on
    /// the whole fragment list, so that the whitespace of a neighbouring part goes too, as
    /// it would in the whole text. (llama.cpp strips while partitioning, so whitespace a
    /// stripping token swallows cannot become a whitespace special token; no vocabulary with
    /// stripping tokens has one.)
    fn strip_around_tokens(&self, text: &str, fragments: &mut Vec<Fragment>) {
        let space = |b: u8| matches!(b, b' ' | b'\t'..=b'\r');
        let bytes = text.as_bytes();
        for i in 0..fragments.len() {
            let Fragment::Token(id) = fragments[i] else {
                continue;
            };
            let a = self.attrs.get(id as usize).copied().unwrap_or(0);
            if a & attr::LSTRIP != 0
                && let Some(Fragment::Text(r)) = i.checked_sub(1).and_then(|p| fragments.get_mut(p))
            {
                while r.end > r.start && space(bytes[r.end - 1]) {
                    r.end -= 1;
                }
            }
            if a & attr::RSTRIP != 0
                && let Some(Fragment::Text(r)) = fragments.get_mut(i + 1)
            {
                while r.start < r.end && space(bytes[r.start]) {
                    r.start += 1;
                }
            }
        }
        fragments.retain(|f| !matches!(f, Fragment::Text(r) if r.is_empty()));
    }

    /// Tokenizes `text` split into `fragments` (plain-text ranges of it, special tokens).
    fn encode_fragments(&self, text: &str, fragments: &[Fragment], add_bos: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if add_bos && self.add_bos {
            out.extend(self.bos);
        }
        match &self.engine {
            Engine::Bpe(model) => {
                for f in fragments {
                    match f {
                        Fragment::Text(r) => {
                            model.encode(&text[r.clone()], &self.token_to_id, &mut out)
                        }
                        Fragment::Token(id) => out.push(*id),
                    }
                }
            }
            Engine::Spm { byte_tokens } => {
                // A space is prefixed at the start and after every special token.
                let mut prev_special = true;
                let mut escaped = String::new();
                for f in fragments {
                    match f {
                        Fragment::Text(r) => {
                            escaped.clear();
                            if self.add_space_prefix && prev_special {
                                escaped.push('\u{2581}');
                            }
                            for c in text[r.clone()].chars() {
                                escaped.push(if c == ' ' { '\u{2581}' } else { c });
                            }
                            spm::encode(
                                &escaped,
                                &self.token_to_id,
                                &self.scores,
                                byte_tokens,
                                &mut out,
                            );
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(*id);
                            prev_special = true;
                        }
                    }
                }
            }
        }
        if add_bos && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// Splits `text` at special tokens, longest token first, each token splitting every text
    /// fragment left by the previous ones.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut fragments = Vec::new();
        if text.is_empty() {
            return fragments;
        }
        fragments.push(Fragment::Text(0..text.len()));
        let mut next = Vec::new();
        for &id in &self.special_cache {
            let a = self.attrs[id as usize];
            if !parse_special && a & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue;
            }
            let needle = self.tokens[id as usize].as_str();
            next.clear();
            for f in fragments.drain(..) {
                let Fragment::Text(r) = f else {
                    next.push(f);
                    continue;
                };
                let mut start = r.start;
                while let Some(found) = text[start..r.end].find(needle) {
                    let at = start + found;
                    if at > start {
                        next.push(Fragment::Text(start..at));
                    }
                    next.push(Fragment::Token(id));
                    start = at + needle.len();
                }
                if start < r.end {
                    next.push(Fragment::Text(start..r.end));
                }
            }
            core::mem::swap(&mut fragments, &mut next);
        }
        fragments
    }
}
