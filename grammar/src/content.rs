//! Tokens of string content, masked by byte class instead of byte by byte.
//!
//! Most of a vocabulary is text that could sit inside a JSON string: plain printable ASCII
//! and UTF-8. Inside a `maxLength` string the counted state changes with every character,
//! so the interned-state cache never hits, and each step used to walk the whole vocabulary
//! (about 8 ms for 151k tokens) to learn little more than "tokens of at most R characters".
//!
//! The shortcut, exact for any grammar: `Stacks::step` depends on the byte only through
//! which heads' byte sets contain it. Split the bytes into fixed classes ([`CLASSES`]); in
//! a state where every head's set holds each class whole or not at all ("uniform"), all
//! bytes of a class lead to the same state. So where every state on the way is uniform, a
//! content token is allowed exactly when its string of classes is, and tokens with the
//! same class string stand or fall together:
//! - plain tokens (only [`PLAIN`] bytes) have class strings `PLAIN^k`: allowed exactly up
//!   to the number of plain steps the matcher survives, found in at most one step per byte
//!   of the longest plain token ([`plain_reach`]), and added by length ([`PlainIndex`]);
//! - the other content tokens (UTF-8) are walked in a trie of their class strings, a few
//!   thousand nodes instead of a hundred thousand ([`class_walk`]).
//!
//! Where a head splits a class (a number, a literal key, whitespace, an escape) those
//! tokens are walked byte by byte like the rest; such states prune early.

use crate::matcher::Stacks;
use crate::rules::{ByteSet, Grammar, range};
use crate::trie::Trie;
use crate::vocab::TokenSet;
use crate::walk::{DEAD, Dfa};
use alloc::vec;
use alloc::vec::Vec;

/// Printable ASCII but `"` and `\` (DEL included: JSON strings allow it unescaped).
pub(crate) const PLAIN: ByteSet = [!0u64 << 0x20 & !(1 << 0x22), !(1 << (0x5C - 64)), 0, 0];

/// The byte classes of string content, as (first, last) byte ranges; [`PLAIN`] is class 0.
/// The UTF-8 ranges are those the string grammar tells apart (`prims.rs`), so that its
/// states are uniform; the choice affects only speed, never a mask.
const UTF8_CLASSES: [(u8, u8); 13] = [
    (0x80, 0x8F),
    (0x90, 0x9F),
    (0xA0, 0xBF),
    (0xC0, 0xC1),
    (0xC2, 0xDF),
    (0xE0, 0xE0),
    (0xE1, 0xEC),
    (0xED, 0xED),
    (0xEE, 0xEF),
    (0xF0, 0xF0),
    (0xF1, 0xF3),
    (0xF4, 0xF4),
    (0xF5, 0xFF),
];

/// Number of classes: [`PLAIN`] and the UTF-8 ones.
pub(crate) const CLASSES: usize = 1 + UTF8_CLASSES.len();

/// The class of `b`, if it is a content byte (not `"`, `\` or a control byte).
pub(crate) fn class_of(b: u8) -> Option<u8> {
    match CLASS_OF[usize::from(b)] {
        NONE => None,
        c => Some(c),
    }
}

/// Each byte's class, [`NONE`] for bytes that cannot be string content.
const CLASS_OF: [u8; 256] = class_table();
const NONE: u8 = u8::MAX;

const fn class_table() -> [u8; 256] {
    let mut t = [NONE; 256];
    let mut b = 0;
    while b < 256 {
        if PLAIN[b >> 6] >> (b & 63) & 1 == 1 {
            t[b] = 0;
        }
        b += 1;
    }
    let mut i = 0;
    while i < UTF8_CLASSES.len() {
        let (lo, hi) = UTF8_CLASSES[i];
        let mut b = lo as usize;
        while b <= hi as usize {
            t[b] = i as u8 + 1;
            b += 1;
        }
        i += 1;
    }
    t
}

/// Each class's bytes and the byte that stands for them.
const CLASS_SETS: [(ByteSet, u8); CLASSES] = class_sets();

const fn class_sets() -> [(ByteSet, u8); CLASSES] {
    let mut out = [(PLAIN, b'a'); CLASSES];
    let mut i = 0;
    while i < UTF8_CLASSES.len() {
        let (lo, hi) = UTF8_CLASSES[i];
        out[i + 1] = (range(lo, hi), lo);
        i += 1;
    }
    out
}

/// Whether every head of `state` takes the bytes of class `c` all or none.
fn uniform_for(g: &Grammar, dfa: &Dfa, state: u32, c: usize) -> bool {
    let (cls, _) = CLASS_SETS[c];
    dfa.heads(state).iter().all(|h| {
        let s = g.head_set(h.pos);
        let taken = [s[0] & cls[0], s[1] & cls[1], s[2] & cls[2], s[3] & cls[3]];
        taken == [0; 4] || taken == cls
    })
}

/// Whether `state` is uniform for every class.
fn uniform(g: &Grammar, dfa: &Dfa, state: u32) -> bool {
    (0..CLASSES).all(|c| uniform_for(g, dfa, state, c))
}

/// The plain tokens of a vocabulary, by length.
#[derive(Clone, Debug, Default)]
pub(crate) struct PlainIndex {
    all: TokenSet,
    /// Ids of the plain tokens, shortest first.
    by_len: Vec<u32>,
    /// `len_ends[k]`: how many plain tokens have at most `k` bytes.
    len_ends: Vec<u32>,
}

impl PlainIndex {
    /// The index of `plain` (ids below `n`, token `id` being `len(id)` bytes long).
    pub(crate) fn new(n: usize, plain: &[u32], len: impl Fn(u32) -> usize) -> Self {
        let mut by_len = plain.to_vec();
        by_len.sort_by_key(|&id| len(id));
        let max = by_len.last().map_or(0, |&id| len(id));
        let mut len_ends = vec![0u32; max + 1];
        for &id in &by_len {
            len_ends[len(id)] += 1;
        }
        for k in 1..len_ends.len() {
            len_ends[k] += len_ends[k - 1];
        }
        let mut all = TokenSet::new(n);
        for &id in &by_len {
            all.insert(id);
        }
        Self {
            all,
            by_len,
            len_ends,
        }
    }

    /// The longest plain token's length.
    pub(crate) fn max_len(&self) -> usize {
        self.len_ends.len().saturating_sub(1)
    }

    /// Adds every plain token of at most `n` bytes to `out` (which holds no plain token),
    /// from whichever end is shorter.
    pub(crate) fn insert_up_to(&self, n: usize, out: &mut TokenSet) {
        let cut = self
            .len_ends
            .get(n)
            .map_or(self.by_len.len(), |&e| e as usize);
        if cut < self.by_len.len() / 2 {
            for &id in &self.by_len[..cut] {
                out.insert(id);
            }
        } else {
            out.union_with(&self.all);
            for &id in &self.by_len[cut..] {
                out.remove(id);
            }
        }
    }
}

/// How many plain bytes the matcher takes from `start` (at most `max`), or `None` if some
/// state on the way tells plain bytes apart (then the plain tokens must be walked).
pub(crate) fn plain_reach(
    g: &Grammar,
    stacks: &mut Stacks,
    dfa: &mut Dfa,
    start: u32,
    max: usize,
) -> Option<usize> {
    let mut s = start;
    for k in 0..max {
        if !uniform_for(g, dfa, s, 0) {
            return None;
        }
        let n = dfa.next(g, stacks, s, CLASS_SETS[0].1);
        if n == DEAD {
            return Some(k);
        }
        if n == s {
            // A plain byte leads back here: any number of them is taken.
            return Some(max);
        }
        if !dfa.alive(n) {
            return Some(k + 1);
        }
        s = n;
    }
    Some(max)
}

/// Adds to `out` the tokens of `classes` (a trie of class strings) the matcher accepts from
/// `start`; `false` if it met a state that is not uniform, and then `out` holds only some
/// of them (each rightly: every state on its way was uniform).
pub(crate) fn class_walk(
    classes: &Trie,
    g: &Grammar,
    stacks: &mut Stacks,
    dfa: &mut Dfa,
    start: u32,
    out: &mut TokenSet,
) -> bool {
    // Per state met: whether it was checked uniform, and its transition per class (dense:
    // a few hundred states, against a hash lookup per node of `Dfa::next`).
    let mut rows: Vec<[u32; CLASSES]> = Vec::new();
    let mut path: Vec<(u32, u32, u32)> = Vec::with_capacity(32);
    if let Some(root) = classes.nodes.first() {
        path.push((root.edge_start, root.edge_end, start));
    }
    while let Some(f) = path.last_mut() {
        let (next, end, state) = *f;
        if next >= end {
            path.pop();
            continue;
        }
        f.0 += 1;
        let su = state as usize;
        if rows.len() <= su {
            rows.resize(su + 1, [UNCHECKED; CLASSES]);
        }
        if rows[su][0] == UNCHECKED {
            if !uniform(g, dfa, state) {
                return false;
            }
            rows[su] = [UNSEEN; CLASSES];
        }
        let (c, child) = classes.edges[next as usize];
        let c = usize::from(c);
        let mut n = rows[su][c];
        if n == UNSEEN {
            n = dfa.next(g, stacks, state, CLASS_SETS[c].1);
            rows[su][c] = n;
        }
        if n == DEAD {
            continue;
        }
        let cn = classes.nodes[child as usize];
        for &id in &classes.ids[cn.tok_start as usize..cn.tok_end as usize] {
            out.insert(id);
        }
        if dfa.alive(n) && cn.edge_end > cn.edge_start {
            path.push((cn.edge_start, cn.edge_end, n));
        }
    }
    true
}

/// A row of a state not yet checked uniform, and a transition not yet taken ([`DEAD`] is
/// `u32::MAX`; real states are far below these).
const UNCHECKED: u32 = u32::MAX - 1;
const UNSEEN: u32 = u32::MAX - 2;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::union;

    #[test]
    fn classes_partition_the_content_bytes() {
        let expected = union(
            union(range(0x20, 0x21), range(0x23, 0x5B)),
            range(0x5D, 0x7F),
        );
        assert_eq!(PLAIN, expected);
        for b in 0..=255u8 {
            let content = b >= 0x20 && b != b'"' && b != b'\\';
            assert_eq!(class_of(b).is_some(), content, "byte {b:#x}");
            if let Some(c) = class_of(b) {
                let (set, rep) = CLASS_SETS[usize::from(c)];
                assert!(crate::rules::set_has(&set, b));
                assert_eq!(class_of(rep), Some(c));
            }
        }
    }
}
