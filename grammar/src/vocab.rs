//! Token masks: which tokens of a vocabulary continue the grammar, found by walking a byte
//! trie of the vocabulary with the matcher instead of testing every token.
//!
//! The walk visits a trie node only if the matcher accepts its whole prefix: a byte no
//! stack accepts prunes the subtree (checked against the union of the heads' byte sets
//! before any stack is advanced). Each step down advances the heads in place at the end of
//! one buffer and appends arena nodes; going back up truncates both.
//!
//! Inside an unbounded string (the common long case) the head set is the same after every
//! plain character, so [`Constraint`] keeps the last few masks keyed by the exact head set:
//! a string's second and later tokens cost a copy of the mask, not a walk.

use crate::error::ConstraintError;
use crate::matcher::{Head, Matcher, Stacks, dedup_tail, first_bytes};
use crate::rules::{ByteSet, Grammar, set_has};
use crate::table::Table;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::sync::Arc;
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
    fn clear(&mut self, n: usize) {
        self.words.clear();
        self.words.resize(n.div_ceil(64), 0);
    }
}

/// One trie node: its children (edges `edges[edge_start..edge_end]`) and the tokens whose
/// bytes end exactly here (`ids[tok_start..tok_end]`).
#[derive(Clone, Copy, Debug)]
struct TrieNode {
    edge_start: u32,
    edge_end: u32,
    tok_start: u32,
    tok_end: u32,
}

/// A model's vocabulary as a byte trie. Built once per model; shared by every request.
#[derive(Clone, Debug)]
pub struct Vocab {
    nodes: Vec<TrieNode>,
    /// (byte, child node), sorted by byte within each node.
    edges: Vec<(u8, u32)>,
    ids: Vec<u32>,
    /// Every token's bytes, for [`Constraint::accept_token_id`].
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
            nodes: Vec::new(),
            edges: Vec::new(),
            ids: Vec::new(),
            pieces,
            piece_ends,
        };
        let mut order: Vec<u32> = (0..v.len() as u32)
            .filter(|&i| !v.bytes(i).is_empty())
            .collect();
        order.sort_unstable_by(|&a, &b| v.bytes(a).cmp(v.bytes(b)));
        v.build(&order);
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

    /// Builds the trie over `order` (token ids sorted by bytes), iteratively: each work item
    /// is a node, its depth, and its range of `order`, all sharing the node's prefix.
    fn build(&mut self, order: &[u32]) {
        let mut work = vec![(0u32, 0usize, 0usize, order.len())];
        self.nodes.push(TrieNode {
            edge_start: 0,
            edge_end: 0,
            tok_start: 0,
            tok_end: 0,
        });
        while let Some((node, depth, mut lo, hi)) = work.pop() {
            let tok_start = self.ids.len() as u32;
            while lo < hi && self.bytes(order[lo]).len() == depth {
                self.ids.push(order[lo]);
                lo += 1;
            }
            let edge_start = self.edges.len() as u32;
            while lo < hi {
                let b = self.bytes(order[lo])[depth];
                let mut end = lo;
                while end < hi && self.bytes(order[end])[depth] == b {
                    end += 1;
                }
                let child = self.nodes.len() as u32;
                self.nodes.push(TrieNode {
                    edge_start: 0,
                    edge_end: 0,
                    tok_start: 0,
                    tok_end: 0,
                });
                self.edges.push((b, child));
                work.push((child, depth + 1, lo, end));
                lo = end;
            }
            self.nodes[node as usize] = TrieNode {
                edge_start,
                edge_end: self.edges.len() as u32,
                tok_start,
                tok_end: self.ids.len() as u32,
            };
        }
    }
}

/// Masks cached per constraint (see the module doc).
const MASK_CACHE: usize = 4;

/// One request's grammar state: which tokens may come next, and advancing on the chosen one.
#[derive(Clone, Debug)]
pub struct Constraint {
    matcher: Matcher,
    cache: VecDeque<(Vec<Head>, bool, TokenSet)>,
    /// The walk's interned states (reused between steps).
    dfa: Dfa,
}

impl Constraint {
    /// A constraint at the start of `grammar`.
    pub fn new(grammar: Grammar) -> Self {
        Self::from_matcher(Matcher::new(Arc::new(grammar)))
    }

    pub fn from_matcher(matcher: Matcher) -> Self {
        Self {
            matcher,
            cache: VecDeque::new(),
            dfa: Dfa::default(),
        }
    }

    pub fn matcher(&self) -> &Matcher {
        &self.matcher
    }

    /// Whether the output so far is complete (an end-of-generation token is allowed).
    pub fn is_complete(&self) -> bool {
        self.matcher.is_complete()
    }

    /// Whether some token can still follow (when not, only end of generation can).
    pub fn can_continue(&self) -> bool {
        self.matcher.can_continue()
    }

    /// Fills `out` with the tokens of `vocab` that continue the grammar, plus `eog` (the
    /// end-of-generation ids) exactly when the output is complete.
    pub fn allowed(&mut self, vocab: &Vocab, eog: &[u32], out: &mut TokenSet) {
        let key_complete = self.matcher.complete;
        if let Some((_, _, set)) = self
            .cache
            .iter()
            .find(|(h, c, _)| *c == key_complete && *h == self.matcher.heads)
        {
            out.clone_from(set);
        } else {
            out.clear(vocab.len());
            self.walk(vocab, out);
            if self.cache.len() == MASK_CACHE {
                self.cache.pop_back();
            }
            let heads = self.matcher.heads.clone();
            self.cache.push_front((heads, key_complete, out.clone()));
        }
        if self.matcher.complete {
            for &id in eog {
                out.insert(id);
            }
        }
    }

    /// Sets every logit whose token is not allowed to −∞ (ids past `vocab` too). `mask` is
    /// the caller's buffer, kept between steps to avoid an allocation per token.
    pub fn mask_logits(
        &mut self,
        vocab: &Vocab,
        eog: &[u32],
        logits: &mut [f32],
        mask: &mut TokenSet,
    ) {
        self.allowed(vocab, eog, mask);
        for (i, l) in logits.iter_mut().enumerate() {
            if !mask.contains(i as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
    }

    /// Advances over a token's bytes; on error the constraint is unchanged.
    pub fn accept_token(&mut self, bytes: &[u8]) -> Result<(), ConstraintError> {
        if bytes.is_empty() || !self.matcher.accept_bytes(bytes) {
            return Err(ConstraintError::Rejected(u32::MAX));
        }
        Ok(())
    }

    /// Advances over token `id` of `vocab`; an id in `eog` is accepted only when complete.
    pub fn accept_token_id(
        &mut self,
        vocab: &Vocab,
        eog: &[u32],
        id: u32,
    ) -> Result<(), ConstraintError> {
        if eog.contains(&id) {
            return match self.is_complete() {
                true => Ok(()),
                false => Err(ConstraintError::Incomplete),
            };
        }
        self.accept_token(vocab.bytes(id))
            .map_err(|_| ConstraintError::Rejected(id))
    }

    /// The trie walk: depth-first, over matcher states interned as they are met (see
    /// [`Dfa`]), so each trie node costs one table lookup once its state and byte were seen.
    fn walk(&mut self, vocab: &Vocab, out: &mut TokenSet) {
        let m = &mut self.matcher;
        let g: &Grammar = &m.grammar;
        let saved_nodes = m.stacks.nodes.len();
        let dfa = &mut self.dfa;
        m.stacks.consing = true;
        let start = dfa.intern(&m.heads, m.complete);
        dfa.states[start as usize].first = first_bytes(g, &m.heads);
        let mut path: Vec<Frame> = Vec::with_capacity(64);
        if let Some(root) = vocab.nodes.first() {
            path.push(Frame {
                next: root.edge_start,
                end: root.edge_end,
                state: start,
            });
        }
        while let Some(f) = path.last_mut() {
            if f.next >= f.end {
                path.pop();
                continue;
            }
            let (b, child) = vocab.edges[f.next as usize];
            f.next += 1;
            let state = f.state;
            if !set_has(&dfa.states[state as usize].first, b) {
                continue;
            }
            let next = dfa.next(g, &mut m.stacks, state, b);
            if next == DEAD {
                continue;
            }
            let cn = vocab.nodes[child as usize];
            for &id in &vocab.ids[cn.tok_start as usize..cn.tok_end as usize] {
                out.insert(id);
            }
            if dfa.states[next as usize].alive && cn.edge_end > cn.edge_start {
                path.push(Frame {
                    next: cn.edge_start,
                    end: cn.edge_end,
                    state: next,
                });
            }
        }
        // The interned states referred to these nodes; both go.
        m.stacks.nodes.truncate(saved_nodes);
        m.stacks.consing = false;
        m.stacks.cons.clear();
        dfa.clear();
    }
}

/// One depth of the trie walk: the edges left to try and the matcher state there.
struct Frame {
    next: u32,
    end: u32,
    state: u32,
}

/// No state: the byte is rejected.
const DEAD: u32 = u32::MAX;

/// A matcher state met during one walk: its heads (`Dfa::heads[start..end]`), whether any
/// stack is left, and the bytes it accepts.
#[derive(Clone, Debug)]
struct DfaState {
    start: usize,
    end: usize,
    alive: bool,
    first: ByteSet,
}

/// Matcher states interned by their exact heads, with their transitions memoised: a lazily
/// built DFA over the part of the grammar one walk visits. Inside a string almost every
/// trie node leads back to the same few states, so most nodes cost one lookup instead of
/// advancing a dozen stacks. Lives for one walk (its states point into the arena).
#[derive(Clone, Debug, Default)]
struct Dfa {
    heads: Vec<Head>,
    states: Vec<DfaState>,
    index: BTreeMap<(bool, Vec<Head>), u32>,
    trans: Table,
    scratch: Vec<Head>,
}

impl Dfa {
    fn clear(&mut self) {
        self.heads.clear();
        self.states.clear();
        self.index.clear();
        self.trans.clear();
    }

    fn intern(&mut self, heads: &[Head], complete: bool) -> u32 {
        let key = (complete, heads.to_vec());
        if let Some(&id) = self.index.get(&key) {
            return id;
        }
        let id = self.states.len() as u32;
        let start = self.heads.len();
        self.heads.extend_from_slice(heads);
        self.states.push(DfaState {
            start,
            end: self.heads.len(),
            alive: !heads.is_empty(),
            first: [0; 4],
        });
        self.index.insert(key, id);
        id
    }

    /// The state after `b` from `state` (memoised), or [`DEAD`].
    fn next(&mut self, g: &Grammar, stacks: &mut Stacks, state: u32, b: u8) -> u32 {
        let key = (u64::from(state) << 8) | u64::from(b);
        if let Some(n) = self.trans.get(key) {
            return n;
        }
        let st = &self.states[state as usize];
        self.scratch.clear();
        self.scratch
            .extend_from_slice(&self.heads[st.start..st.end]);
        let n = self.scratch.len();
        let complete = stacks.step(g, &mut self.scratch, 0..n, b);
        self.scratch.drain(..n);
        dedup_tail(&mut self.scratch, 0);
        let next = if self.scratch.is_empty() && !complete {
            DEAD
        } else {
            let heads = core::mem::take(&mut self.scratch);
            let id = self.intern(&heads, complete);
            self.scratch = heads;
            let s = &mut self.states[id as usize];
            s.first = first_bytes(g, &self.heads[s.start..s.end]);
            id
        };
        self.trans.insert(key, next);
        next
    }
}
