//! The trie walk: which tokens of a trie continue the grammar from a matcher state, found
//! depth first over matcher states interned as they are met ([`Dfa`]), so each trie node
//! costs one table lookup once its state and byte were seen.
//!
//! The walk visits a trie node only if the matcher accepts its whole prefix: a byte no
//! stack accepts prunes the subtree (checked against the union of the heads' byte sets
//! before any stack is advanced).

use crate::matcher::{Head, Stacks, dedup_tail, first_bytes};
use crate::rules::{ByteSet, Grammar, set_has};
use crate::table::Table;
use crate::trie::Trie;
use crate::vocab::TokenSet;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// No state: the byte is rejected.
pub(crate) const DEAD: u32 = u32::MAX;

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
/// built DFA over the part of the grammar one mask visits. Inside a string almost every
/// trie node leads back to the same few states, so most nodes cost one lookup instead of
/// advancing a dozen stacks. Lives for one mask (its states point into the arena, where
/// the walk hash-conses its nodes: see `Stacks::consing`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Dfa {
    heads: Vec<Head>,
    states: Vec<DfaState>,
    index: BTreeMap<(bool, Vec<Head>), u32>,
    trans: Table,
    scratch: Vec<Head>,
}

impl Dfa {
    pub(crate) fn clear(&mut self) {
        self.heads.clear();
        self.states.clear();
        self.index.clear();
        self.trans.clear();
    }

    /// The state with `heads` (sorted, deduplicated) and `complete`, its first bytes known.
    pub(crate) fn intern(&mut self, g: &Grammar, heads: &[Head], complete: bool) -> u32 {
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
            first: first_bytes(g, heads),
        });
        self.index.insert(key, id);
        id
    }

    /// Whether `state` has a stack left to take another byte.
    pub(crate) fn alive(&self, state: u32) -> bool {
        self.states[state as usize].alive
    }

    /// The heads of `state`.
    pub(crate) fn heads(&self, state: u32) -> &[Head] {
        let s = &self.states[state as usize];
        &self.heads[s.start..s.end]
    }

    /// The state after `b` from `state` (memoised), or [`DEAD`].
    pub(crate) fn next(&mut self, g: &Grammar, stacks: &mut Stacks, state: u32, b: u8) -> u32 {
        let key = (u64::from(state) << 8) | u64::from(b);
        if let Some(n) = self.trans.get(key) {
            return n;
        }
        let st = &self.states[state as usize];
        let next = if !set_has(&st.first, b) {
            DEAD
        } else {
            self.scratch.clear();
            self.scratch
                .extend_from_slice(&self.heads[st.start..st.end]);
            let n = self.scratch.len();
            let complete = stacks.step(g, &mut self.scratch, 0..n, b);
            self.scratch.drain(..n);
            dedup_tail(&mut self.scratch, 0);
            if self.scratch.is_empty() && !complete {
                DEAD
            } else {
                let heads = core::mem::take(&mut self.scratch);
                let id = self.intern(g, &heads, complete);
                self.scratch = heads;
                id
            }
        };
        self.trans.insert(key, next);
        next
    }
}

/// One depth of the trie walk: the edges left to try and the matcher state there.
struct Frame {
    next: u32,
    end: u32,
    state: u32,
}

/// Adds to `out` every token of `trie` whose bytes the matcher accepts from `start`.
pub(crate) fn walk(
    trie: &Trie,
    g: &Grammar,
    stacks: &mut Stacks,
    dfa: &mut Dfa,
    start: u32,
    out: &mut TokenSet,
) {
    let mut path: Vec<Frame> = Vec::with_capacity(64);
    if let Some(root) = trie.nodes.first() {
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
        let (b, child) = trie.edges[f.next as usize];
        f.next += 1;
        let state = f.state;
        if !set_has(&dfa.states[state as usize].first, b) {
            continue;
        }
        let next = dfa.next(g, stacks, state, b);
        if next == DEAD {
            continue;
        }
        let cn = trie.nodes[child as usize];
        for &id in &trie.ids[cn.tok_start as usize..cn.tok_end as usize] {
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
}
