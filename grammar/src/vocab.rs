//! A model's vocabulary for masking: every token's bytes, and tries to walk with the
//! matcher (see `walk.rs`). Tokens of string content have their own tries and indexes, so
//! that inside a string they are masked by byte class (see `content.rs`).

use crate::content::{PlainIndex, class_of};
use crate::trie::Trie;
use alloc::vec;
use alloc::vec::Vec;

/// A set of token ids (a bitset over the vocabulary).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenSet {
    words: Vec<u64>,
}

impl TokenSet {
    /// An empty set for ids `0..n`.
    pub fn new(n: usize) -> Self {
        Self {
            words: vec![0; n.div_ceil(64)],
        }
    }
    pub fn contains(&self, id: u32) -> bool {
        let i = id as usize;
        self.words
            .get(i / 64)
            .is_some_and(|w| w >> (i % 64) & 1 == 1)
    }
    pub fn insert(&mut self, id: u32) {
        let i = id as usize;
        if let Some(w) = self.words.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }
    pub fn remove(&mut self, id: u32) {
        let i = id as usize;
        if let Some(w) = self.words.get_mut(i / 64) {
            *w &= !(1 << (i % 64));
        }
    }
    /// Adds every member of `other` (a set over the same ids).
    pub(crate) fn union_with(&mut self, other: &TokenSet) {
        for (w, o) in self.words.iter_mut().zip(&other.words) {
            *w |= o;
        }
    }
    /// The set's words: bit `i % 64` of word `i / 64` is id `i`.
    pub(crate) fn words(&self) -> &[u64] {
        &self.words
    }
    pub(crate) fn clear(&mut self, n: usize) {
        self.words.clear();
        self.words.resize(n.div_ceil(64), 0);
    }
}

/// A model's vocabulary as byte tries. Built once per model; shared by every request.
#[derive(Clone, Debug)]
pub struct Vocab {
    /// Tokens of only plain bytes (`content.rs`), of other content bytes too (as bytes and
    /// as classes), and the rest; each token is in one of `plain`, `mixed` and `other`.
    pub(crate) plain: Trie,
    pub(crate) mixed: Trie,
    pub(crate) mixed_classes: Trie,
    pub(crate) other: Trie,
    pub(crate) plain_index: PlainIndex,
    /// Every token's bytes, for [`Constraint::accept_token_id`](crate::Constraint::accept_token_id).
    pieces: Vec<u8>,
    piece_ends: Vec<u32>,
}

impl Vocab {
    /// The vocabulary whose token `i` stands for `tokens[i]`. A token with no bytes (special
    /// and control tokens should be passed as empty) is never allowed: it would let the
    /// model stall without writing anything. End-of-generation tokens are handled apart.
    pub fn new<'a>(tokens: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut pieces = Vec::new();
        let mut piece_ends = Vec::new();
        for t in tokens {
            pieces.extend_from_slice(t);
            piece_ends.push(pieces.len() as u32);
        }
        let mut v = Self {
            plain: Trie::default(),
            mixed: Trie::default(),
            mixed_classes: Trie::default(),
            other: Trie::default(),
            plain_index: PlainIndex::default(),
            pieces,
            piece_ends,
        };
        let mut order: Vec<u32> = (0..v.len() as u32)
            .filter(|&i| !v.bytes(i).is_empty())
            .collect();
        order.sort_unstable_by(|&a, &b| v.bytes(a).cmp(v.bytes(b)));
        let class = |id: u32| v.bytes(id).iter().map(|&b| class_of(b));
        let (content, other): (Vec<u32>, Vec<u32>) = order
            .iter()
            .partition(|&&id| class(id).all(|c| c.is_some()));
        let (plain, mixed): (Vec<u32>, Vec<u32>) = content
            .iter()
            .partition(|&&id| class(id).all(|c| c == Some(0)));
        // The class strings of `mixed`, in their own order for the class trie.
        let mut class_text: Vec<Vec<u8>> = vec![Vec::new(); v.len()];
        for &id in &mixed {
            class_text[id as usize] = class(id).flatten().collect();
        }
        let mut by_class = mixed.clone();
        by_class.sort_unstable_by(|&a, &b| class_text[a as usize].cmp(&class_text[b as usize]));
        v.plain = Trie::build(&plain, |id| v.bytes(id));
        v.mixed = Trie::build(&mixed, |id| v.bytes(id));
        v.mixed_classes = Trie::build(&by_class, |id| &class_text[id as usize]);
        v.other = Trie::build(&other, |id| v.bytes(id));
        v.plain_index = PlainIndex::new(v.len(), &plain, |id| v.bytes(id).len());
        v
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.piece_ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.piece_ends.is_empty()
    }

    /// The bytes of token `id` (empty for special or unknown ids).
    pub fn bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        let end = self.piece_ends.get(i).copied().unwrap_or(0) as usize;
        let start = match i.checked_sub(1) {
            Some(p) => self.piece_ends.get(p).copied().unwrap_or(0) as usize,
            None => 0,
        };
        self.pieces.get(start..end).unwrap_or(&[])
    }

    /// Sizes for diagnostics and the benchmark.
    pub fn stats(&self) -> VocabStats {
        VocabStats {
            plain_tokens: self.plain.ids.len(),
            longest_plain: self.plain_index.max_len(),
            mixed_tokens: self.mixed.ids.len(),
            trie_nodes: self.plain.nodes.len() + self.mixed.nodes.len() + self.other.nodes.len(),
            other_nodes: self.other.nodes.len(),
            class_nodes: self.mixed_classes.nodes.len(),
        }
    }
}

/// See [`Vocab::stats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VocabStats {
    /// Tokens of plain ASCII string characters only, and the longest one's bytes.
    pub plain_tokens: usize,
    pub longest_plain: usize,
    /// Other tokens of string content (UTF-8 too, no `"`, `\` or control byte).
    pub mixed_tokens: usize,
    /// Nodes of the byte tries, of the one of tokens that cannot be string content (always
    /// walked), and of the mixed tokens' class trie.
    pub trie_nodes: usize,
    pub other_nodes: usize,
    pub class_nodes: usize,
}
