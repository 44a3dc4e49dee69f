//! SentencePiece-style BPE (llama.cpp `llm_tokenizer_spm_session`): start from UTF-8
//! characters, repeatedly merge the adjacent pair whose concatenation is the highest-scoring
//! token (ties: leftmost), then emit each final piece as its token or, failing that, as byte
//! tokens `<0xXX>`.

use alloc::collections::{BTreeMap, BinaryHeap};
use alloc::string::String;
use alloc::vec::Vec;
use core::cmp::{Ordering, Reverse};

/// A queued merge candidate; the heap's maximum is the next merge.
#[derive(Debug, Clone, Copy)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        // Higher score first, then the leftmost pair (llama.cpp `llm_bigram_spm::comparator`).
        self.score
            .total_cmp(&other.score)
            .then(Reverse(self.left).cmp(&Reverse(other.left)))
    }
}

#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// Tokenizes `text` (already space-escaped with "▁"), appending ids to `out`.
///
/// `byte_tokens[b]` is the token for byte `b` (`<0xXX>`, else the byte itself, else unknown);
/// bytes without any token are dropped.
pub(crate) fn encode(
    text: &str,
    token_to_id: &BTreeMap<String, u32>,
    scores: &[f32],
    byte_tokens: &[Option<u32>; 256],
    out: &mut Vec<u32>,
) {
    let mut symbols: Vec<Symbol> = text
        .char_indices()
        .enumerate()
        .map(|(i, (start, c))| Symbol {
            start,
            len: c.len_utf8(),
            prev: i.checked_sub(1),
            next: Some(i + 1),
        })
        .collect();
    if let Some(last) = symbols.last_mut() {
        last.next = None;
    }
    let mut heap = BinaryHeap::new();
    let try_add = |symbols: &[Symbol], heap: &mut BinaryHeap<Bigram>, left: usize, right: usize| {
        let (l, r) = (symbols[left], symbols[right]);
        let piece = &text[l.start..r.start + r.len];
        if let Some(&id) = token_to_id.get(piece) {
            let score = scores.get(id as usize).copied().unwrap_or(0.0);
            heap.push(Bigram {
                score,
                left,
                right,
                len: piece.len(),
            });
        }
    };
    for i in 1..symbols.len() {
        try_add(&symbols, &mut heap, i - 1, i);
    }
    while let Some(b) = heap.pop() {
        let (l, r) = (symbols[b.left], symbols[b.right]);
        if l.len == 0 || r.len == 0 || l.len + r.len != b.len {
            continue;
        }
        symbols[b.left].len += r.len;
        symbols[b.left].next = r.next;
        symbols[b.right].len = 0;
        if let Some(n) = r.next {
            symbols[n].prev = Some(b.left);
        }
        if let Some(p) = l.prev {
            try_add(&symbols, &mut heap, p, b.left);
        }
        if let Some(n) = r.next {
            try_add(&symbols, &mut heap, b.left, n);
        }
    }
    // Every merged piece is a token by construction; only single characters can be missing,
    // and those fall back to bytes (llama.cpp `resegment`).
    for s in symbols.iter().filter(|s| s.len > 0) {
        let piece = &text[s.start..s.start + s.len];
        match token_to_id.get(piece) {
            Some(&id) => out.push(id),
            None => out.extend(piece.bytes().filter_map(|b| byte_tokens[usize::from(b)])),
        }
    }
}
