//! GPT-2 byte-level BPE (llama.cpp `llm_tokenizer_bpe_session`): each pre-tokenized word is
//! mapped byte by byte to the GPT-2 unicode alphabet, then adjacent symbols are merged
//! lowest-rank first (ties: leftmost) with a heap over a linked list of symbols, so a word costs
//! O(n log n), never a rescan per merge.

use alloc::collections::{BTreeMap, BinaryHeap};
use alloc::string::String;
use alloc::vec::Vec;
use core::cmp::Reverse;

use super::pretokenize::PreTokenizer;
use super::unicode::byte_to_char;

/// Interned symbol id: token ids below `n_vocab`, merge parts that are not tokens above.
type Sym = u32;

/// The merge table and pre-tokenizer of a `gpt2` vocabulary.
#[derive(Debug, Clone)]
pub(crate) struct BpeModel {
    pub(crate) pre: PreTokenizer,
    /// `(left, right)` → `(rank, merged symbol)`; the first occurrence of a pair wins.
    merges: BTreeMap<(Sym, Sym), (u32, Sym)>,
    /// Merge parts and results that are not tokens, interned past the vocabulary.
    extra: BTreeMap<String, Sym>,
    n_vocab: u32,
}

/// Pending merges, lowest `(rank, left)` first: `(rank, left, right, left sym, right sym)`.
type Queue = BinaryHeap<Reverse<(u32, usize, usize, Sym, Sym)>>;

/// One symbol of the word being merged (llama.cpp `llm_symbol`).
#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    sym: Option<Sym>,
    prev: Option<usize>,
    next: Option<usize>,
}

impl BpeModel {
    /// Builds the merge table from `"left right"` strings (split at the first space after the
    /// first byte, like llama.cpp; entries without one are ignored).
    pub(crate) fn new(
        pre: PreTokenizer,
        merges: &[impl AsRef<str>],
        token_to_id: &BTreeMap<String, u32>,
        n_vocab: u32,
    ) -> Self {
        let mut model = Self {
            pre,
            merges: BTreeMap::new(),
            extra: BTreeMap::new(),
            n_vocab,
        };
        for (rank, merge) in merges.iter().enumerate() {
            let merge = merge.as_ref();
            // Byte search: the first byte may start a multi-byte character.
            let bytes = merge.as_bytes();
            let Some(split) = bytes.iter().skip(1).position(|&b| b == b' ').map(|i| i + 1) else {
                continue;
            };
            let (left, right) = (&merge[..split], &merge[split + 1..]);
            let l = model.intern(left, token_to_id);
            let r = model.intern(right, token_to_id);
            let mut joined = String::with_capacity(left.len() + right.len());
            joined.push_str(left);
            joined.push_str(right);
            let m = model.intern(&joined, token_to_id);
            let rank = u32::try_from(rank).unwrap_or(u32::MAX);
            model.merges.entry((l, r)).or_insert((rank, m));
        }
        model
    }

    fn intern(&mut self, s: &str, token_to_id: &BTreeMap<String, u32>) -> Sym {
        if let Some(&id) = token_to_id.get(s) {
            return id;
        }
        let next = self
            .n_vocab
            .saturating_add(u32::try_from(self.extra.len()).unwrap_or(u32::MAX));
        *self.extra.entry(s.into()).or_insert(next)
    }

    fn lookup(&self, s: &str, token_to_id: &BTreeMap<String, u32>) -> Option<Sym> {
        token_to_id.get(s).or_else(|| self.extra.get(s)).copied()
    }

    /// Tokenizes one fragment of plain text (no special tokens), appending ids to `out`.
    pub(crate) fn encode(
        &self,
        text: &str,
        token_to_id: &BTreeMap<String, u32>,
        out: &mut Vec<u32>,
    ) {
        let mut word = String::new();
        let mut symbols = Vec::new();
        let mut heap = BinaryHeap::new();
        for range in self.pre.split(text) {
            word.clear();
            word.extend(text.as_bytes()[range].iter().map(|&b| byte_to_char(b)));
            if self.pre.ignore_merges
                && let Some(&id) = token_to_id.get(word.as_str())
            {
                out.push(id);
                continue;
            }
            self.merge_word(&word, token_to_id, &mut symbols, &mut heap);
            self.emit(&word, &symbols, token_to_id, out);
        }
    }

    fn merge_word(
        &self,
        word: &str,
        token_to_id: &BTreeMap<String, u32>,
        symbols: &mut Vec<Symbol>,
        heap: &mut Queue,
    ) {
        symbols.clear();
        heap.clear();
        for (start, c) in word.char_indices() {
            let len = c.len_utf8();
            let sym = self.lookup(&word[start..start + len], token_to_id);
            let i = symbols.len();
            symbols.push(Symbol {
                start,
                len,
                sym,
                prev: i.checked_sub(1),
                next: Some(i + 1),
            });
        }
        if let Some(last) = symbols.last_mut() {
            last.next = None;
        }
        for i in 1..symbols.len() {
            self.push_bigram(symbols, heap, i - 1, i);
        }
        while let Some(Reverse((_, left, right, l_sym, r_sym))) = heap.pop() {
            let (l, r) = (symbols[left], symbols[right]);
            // Outdated: one side was merged away or has grown since the pair was queued.
            if l.len == 0 || r.len == 0 || l.sym != Some(l_sym) || r.sym != Some(r_sym) {
                continue;
            }
            let Some(&(_, merged)) = self.merges.get(&(l_sym, r_sym)) else {
                continue;
            };
            symbols[left].len += r.len;
            symbols[left].sym = Some(merged);
            symbols[left].next = r.next;
            symbols[right].len = 0;
            if let Some(n) = r.next {
                symbols[n].prev = Some(left);
            }
            if let Some(p) = l.prev {
                self.push_bigram(symbols, heap, p, left);
            }
            if let Some(n) = r.next {
                self.push_bigram(symbols, heap, left, n);
            }
        }
    }

    fn push_bigram(&self, symbols: &[Symbol], heap: &mut Queue, left: usize, right: usize) {
        let (Some(l), Some(r)) = (symbols[left].sym, symbols[right].sym) else {
            return;
        };
        if let Some(&(rank, _)) = self.merges.get(&(l, r)) {
            heap.push(Reverse((rank, left, right, l, r)));
        }
    }

    /// Final symbols to ids; a symbol that is not a token falls back to llama.cpp's per-byte
    /// lookup, which only finds single ASCII characters.
    fn emit(
        &self,
        word: &str,
        symbols: &[Symbol],
        token_to_id: &BTreeMap<String, u32>,
        out: &mut Vec<u32>,
    ) {
        for s in symbols.iter().filter(|s| s.len > 0) {
            match s.sym {
                Some(id) if id < self.n_vocab => out.push(id),
                _ => {
                    let text = &word.as_bytes()[s.start..s.start + s.len];
                    for &b in text.iter().filter(|b| b.is_ascii()) {
                        let one = [b];
                        if let Some(&id) = core::str::from_utf8(&one)
                            .ok()
                            .and_then(|k| token_to_id.get(k))
                        {
                            out.push(id);
                        }
                    }
                }
            }
        }
    }
}
