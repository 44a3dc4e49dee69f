//! Pre-tokenizers: split text into words before BPE, reproducing llama.cpp's
//! `unicode_regex_split` for the regex lists `llm_tokenizer_bpe` selects by `tokenizer.ggml.pre`.
//!
//! llama.cpp applies the regexes in sequence, each one only inside the pieces the previous one
//! produced (text between matches is kept as a piece of its own). Lookaheads therefore stop at
//! piece boundaries: `\s+(?!\S)` at the end of a piece takes the whole run of spaces. The
//! hand-written matchers below follow its custom implementations (`unicode_regex_split_custom_*`)
//! step by step, including their quirks.

use alloc::vec::Vec;
use core::ops::Range;

use super::TokenizerError;
use super::unicode::{is_letter, is_number, is_punctuation, is_whitespace};

/// One regex of a pre-tokenizer's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// `\p{N}`: every number codepoint is a piece of its own.
    IsolateNumbers,
    /// `\p{N}+`: runs of numbers.
    NumberRuns,
    /// `[\p{P}\$\+<=>\^~\|]+` (the `default` pre-tokenizer's first regex).
    PunctRuns,
    /// `[0-9][0-9][0-9]`.
    DigitTriples,
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`.
    Gpt2,
    /// llama3's list with `\p{N}{1,max_digits}` (3 for llama3, 1 for qwen2).
    Llama3 { max_digits: usize },
}

/// A pre-tokenizer: the list of regex stages named by `tokenizer.ggml.pre`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PreTokenizer {
    stages: &'static [Stage],
    /// llama3-style vocabularies emit a word that is itself a token without merging.
    pub(crate) ignore_merges: bool,
    /// llama3-style vocabularies add BOS by default.
    pub(crate) add_bos_default: bool,
}

impl PreTokenizer {
    /// The pre-tokenizer llama.cpp selects for `name` (an empty name means `default`).
    pub(crate) fn from_name(name: &str) -> Result<Self, TokenizerError> {
        use Stage::*;
        let plain = |stages| Self {
            stages,
            ignore_merges: false,
            add_bos_default: false,
        };
        Ok(match name {
            "" | "default" => plain(&[PunctRuns, Gpt2, NumberRuns, DigitTriples]),
            "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling" => {
                plain(&[Gpt2])
            }
            "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone"
            | "minerva" | "mellum2" => plain(&[IsolateNumbers, Gpt2]),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" => Self {
                stages: &[Llama3 { max_digits: 3 }],
                ignore_merges: true,
                add_bos_default: true,
            },
            "dbrx" | "smaug-bpe" => plain(&[Llama3 { max_digits: 3 }]),
            "qwen2" | "stablelm2" | "hunyuan" => plain(&[Llama3 { max_digits: 1 }]),
            other => return Err(TokenizerError::UnsupportedPreTokenizer(other.into())),
        })
    }

    /// Splits `text` into words, returned as byte ranges of `text` in order, covering it.
    pub(crate) fn split(&self, text: &str) -> Vec<Range<usize>> {
        let mut offsets: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        let chars: Vec<char> = text.chars().collect();
        offsets.push(text.len());
        let mut pieces = Vec::new();
        if !chars.is_empty() {
            pieces.push(0..chars.len());
        }
        let mut next = Vec::new();
        for stage in self.stages {
            next.clear();
            for piece in &pieces {
                split_piece(*stage, &chars, piece.clone(), &mut next);
            }
            core::mem::swap(&mut pieces, &mut next);
        }
        pieces
            .into_iter()
            .map(|r| offsets[r.start]..offsets[r.end])
            .collect()
    }
}

/// Appends the sub-pieces `stage` makes of `chars[range]` to `out` (character ranges).
fn split_piece(stage: Stage, chars: &[char], range: Range<usize>, out: &mut Vec<Range<usize>>) {
    let piece = Piece {
        chars,
        ini: range.start,
        end: range.end,
    };
    let mut cuts = Cuts {
        prev: range.start,
        out,
    };
    match stage {
        Stage::IsolateNumbers => class_runs(&piece, &mut cuts, collapsed_number, true),
        Stage::NumberRuns => class_runs(&piece, &mut cuts, collapsed_number, false),
        Stage::PunctRuns => class_runs(&piece, &mut cuts, default_punct, false),
        Stage::DigitTriples => digit_triples(&piece, &mut cuts),
        Stage::Gpt2 => gpt2(&piece, &mut cuts),
        Stage::Llama3 { max_digits } => llama3(&piece, &mut cuts, max_digits),
    }
    // Text after the last match stays a piece of its own.
    cuts.cut(range.end);
}

/// The characters of one piece; lookups outside it behave like llama.cpp's `OUT_OF_RANGE`.
struct Piece<'a> {
    chars: &'a [char],
    ini: usize,
    end: usize,
}

impl Piece<'_> {
    fn get(&self, pos: usize) -> Option<char> {
        if (self.ini..self.end).contains(&pos) {
            self.chars.get(pos).copied()
        } else {
            None
        }
    }
    fn letter(&self, pos: usize) -> bool {
        self.get(pos).is_some_and(is_letter)
    }
    fn number(&self, pos: usize) -> bool {
        self.get(pos).is_some_and(is_number)
    }
    fn space(&self, pos: usize) -> bool {
        self.get(pos).is_some_and(is_whitespace)
    }
    /// `[^\s\p{L}\p{N}]`: in range and none of the three.
    fn other(&self, pos: usize) -> bool {
        self.get(pos)
            .is_some_and(|c| !is_whitespace(c) && !is_letter(c) && !is_number(c))
    }
}

/// Emits pieces ending at successive cut positions, dropping empty ones.
struct Cuts<'o> {
    prev: usize,
    out: &'o mut Vec<Range<usize>>,
}

impl Cuts<'_> {
    /// Ends the current piece at `end`; returns its length (llama.cpp's `_add_token`).
    fn cut(&mut self, end: usize) -> usize {
        let len = end.saturating_sub(self.prev);
        if len > 0 {
            self.out.push(self.prev..end);
        }
        self.prev = end;
        len
    }
}

/// `\p{N}` as llama.cpp's collapsed-text regex sees it: ASCII digits, or a non-ASCII,
/// non-whitespace number codepoint.
fn collapsed_number(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_digit()
    } else {
        !is_whitespace(c) && is_number(c)
    }
}

/// `[\p{P}\$\+<=>\^~\|]` over llama.cpp's collapsed text: every ASCII punctuation or symbol
/// except the backtick, or a non-ASCII, non-whitespace punctuation codepoint.
fn default_punct(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_punctuation() && c != '`'
    } else {
        !is_whitespace(c) && is_punctuation(c)
    }
}

/// A single-class regex (`[class]` when `single`, `[class]+` otherwise) run over a piece.
fn class_runs(p: &Piece<'_>, cuts: &mut Cuts<'_>, class: fn(char) -> bool, single: bool) {
    let mut pos = p.ini;
    while pos < p.end {
        if !p.get(pos).is_some_and(class) {
            pos += 1;
            continue;
        }
        cuts.cut(pos);
        pos += 1;
        while !single && p.get(pos).is_some_and(class) {
            pos += 1;
        }
        cuts.cut(pos);
    }
}

/// `[0-9][0-9][0-9]`: leftmost, non-overlapping.
fn digit_triples(p: &Piece<'_>, cuts: &mut Cuts<'_>) {
    let digit = |pos| p.get(pos).is_some_and(|c: char| c.is_ascii_digit());
    let mut pos = p.ini;
    while pos < p.end {
        if digit(pos) && digit(pos + 1) && digit(pos + 2) {
            cuts.cut(pos);
            pos += 3;
            cuts.cut(pos);
        } else {
            pos += 1;
        }
    }
}

/// The contraction alternatives `'s|'t|'re|'ve|'m|'ll|'d`; the length matched, if any.
fn contraction(p: &Piece<'_>, pos: usize, fold_case: bool) -> Option<usize> {
    if p.get(pos) != Some('\'') || pos + 1 >= p.end {
        return None;
    }
    let lower = |c: Option<char>| c.map(|c| if fold_case { c.to_ascii_lowercase() } else { c });
    let next = lower(p.get(pos + 1));
    if matches!(next, Some('s' | 't' | 'm' | 'd')) {
        return Some(2);
    }
    if pos + 2 < p.end {
        let pair = (next, lower(p.get(pos + 2)));
        if matches!(
            pair,
            (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))
        ) {
            return Some(3);
        }
    }
    None
}

/// The run of whitespace starting at `pos`, then the tail rules shared by gpt2 and llama3:
/// `\s+(?!\S)` (leave the last space for the next word unless the run ends the piece), `\s+`.
fn whitespace_tail(p: &Piece<'_>, cuts: &mut Cuts<'_>, pos: usize, n_ws: usize) -> usize {
    if n_ws > 1 && p.get(pos + n_ws).is_some() {
        let end = pos + n_ws - 1;
        cuts.cut(end);
        return end;
    }
    if n_ws > 0 {
        cuts.cut(pos + n_ws);
        return pos + n_ws;
    }
    // No alternative matched: a single character on its own.
    cuts.cut(pos + 1);
    pos + 1
}

/// llama.cpp `unicode_regex_split_custom_gpt2`.
fn gpt2(p: &Piece<'_>, cuts: &mut Cuts<'_>) {
    let mut pos = p.ini;
    while pos < p.end {
        if let Some(n) = contraction(p, pos, false) {
            pos += cuts.cut(pos + n);
            continue;
        }
        let lead_space = p.get(pos) == Some(' ');
        let probe = if lead_space { pos + 1 } else { pos };
        let runs: [fn(&Piece<'_>, usize) -> bool; 3] =
            [|p, i| p.letter(i), |p, i| p.number(i), |p, i| p.other(i)];
        if let Some(class) = runs.into_iter().find(|class| class(p, probe)) {
            pos = probe;
            while class(p, pos) {
                pos += 1;
            }
            cuts.cut(pos);
            continue;
        }
        let mut n_ws = 0;
        while p.space(pos + n_ws) {
            n_ws += 1;
        }
        pos = whitespace_tail(p, cuts, pos, n_ws);
    }
}

/// llama.cpp `unicode_regex_split_custom_llama3` (and `_qwen2` with `max_digits` 1).
fn llama3(p: &Piece<'_>, cuts: &mut Cuts<'_>, max_digits: usize) {
    let mut pos = p.ini;
    while pos < p.end {
        let Some(c) = p.get(pos) else { break };
        if let Some(n) = contraction(p, pos, true) {
            pos += cuts.cut(pos + n);
            continue;
        }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if !(c == '\r' || c == '\n' || is_number(c)) && (is_letter(c) || p.letter(pos + 1)) {
            pos += 1;
            while p.letter(pos) {
                pos += 1;
            }
            cuts.cut(pos);
            continue;
        }
        // \p{N}{1,max_digits}
        if is_number(c) {
            let mut ini = pos;
            while p.number(pos) {
                pos += 1;
                if pos - ini >= max_digits {
                    cuts.cut(pos);
                    ini = pos;
                }
            }
            cuts.cut(pos);
            continue;
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`; llama.cpp tests the first character's flags only for
        // being in range, which it always is here.
        let probe = if c == ' ' { pos + 1 } else { pos };
        if p.other(probe) {
            pos = probe;
            while p.other(pos) {
                pos += 1;
            }
            while matches!(p.get(pos), Some('\r' | '\n')) {
                pos += 1;
            }
            cuts.cut(pos);
            continue;
        }
        let mut n_ws = 0;
        let mut last_newline_end = 0;
        while p.space(pos + n_ws) {
            if matches!(p.get(pos + n_ws), Some('\r' | '\n')) {
                last_newline_end = pos + n_ws + 1;
            }
            n_ws += 1;
        }
        // \s*[\r\n]+
        if last_newline_end > 0 {
            pos = last_newline_end;
            cuts.cut(pos);
            continue;
        }
        pos = whitespace_tail(p, cuts, pos, n_ws);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn words<'t>(pre: &str, text: &'t str) -> Vec<&'t str> {
        let p = PreTokenizer::from_name(pre).unwrap();
        p.split(text).into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn smollm_isolates_digits_and_keeps_trailing_spaces_before_a_cut() {
        assert_eq!(words("smollm", "Hello world"), vec!["Hello", " world"]);
        assert_eq!(words("smollm", "a   1"), vec!["a", "   ", "1"]);
        assert_eq!(words("smollm", "a   b"), vec!["a", "  ", " b"]);
        assert_eq!(words("smollm", "x 123"), vec!["x", " ", "1", "2", "3"]);
        assert_eq!(words("smollm", "I'm ok!!"), vec!["I", "'m", " ok", "!!"]);
    }

    #[test]
    fn gpt2_and_llama3_differ_on_numbers_and_newlines() {
        assert_eq!(words("gpt-2", "ab 12345"), vec!["ab", " 12345"]);
        assert_eq!(words("llama3", "ab 12345"), vec!["ab", " ", "123", "45"]);
        assert_eq!(words("llama3", "x\n\n y"), vec!["x", "\n\n", " y"]);
        assert_eq!(words("qwen2", "12"), vec!["1", "2"]);
        assert_eq!(
            words("default", "a+b=12345"),
            vec!["a", "+", "b", "=", "123", "45"]
        );
    }

    #[test]
    fn unknown_name_is_an_error() {
        assert!(matches!(
            PreTokenizer::from_name("nope"),
            Err(TokenizerError::UnsupportedPreTokenizer(_))
        ));
    }
}
