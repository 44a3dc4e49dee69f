//! The incremental recognizer: a pushdown automaton over bytes, as a set of stacks.
//!
//! Why stacks and not a compiled state machine: JSON schemas with `$ref` recursion and
//! nesting are context-free, so a finite automaton would have to cut nesting at some depth
//! and blow up in size with each bound. llama.cpp's grammar stacks run any such grammar with
//! a size linear in the schema. Unlike llama.cpp, which copies whole stacks each step, the
//! stacks here share their tails: a stack is a head (the byte-set element to match next)
//! whose continuation is a chain of nodes in an append-only arena. Advancing a byte copies
//! only the heads and appends the few nodes a rule call needs, and a caller exploring tokens
//! (the vocabulary walk in `walk.rs`) undoes a step by truncating the arena.
//!
//! Node ids are stable while a node is reachable (the arena is only truncated back to a
//! length recorded before the nodes were added), which is what lets `constraint.rs` cache a mask
//! by the exact head set.

use crate::rules::{ByteSet, Elem, Grammar, set_has, union};
use crate::table::Table;
use alloc::sync::Arc;
use alloc::vec::Vec;

/// The parent of a bottom-of-stack frame.
pub(crate) const ROOT: u32 = u32::MAX;

/// Expansion steps allowed for one byte; a safety net (left recursion is refused at build
/// time, so a real grammar stays far below it). Past it the branch counts as dead.
const EXPAND_BUDGET: usize = 1 << 16;

/// A stack: the element to match next, and the continuation node below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Head {
    pub(crate) pos: u32,
    pub(crate) parent: u32,
}

/// A continuation: where to resume in the calling sequence, and its own continuation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Node {
    pos: u32,
    parent: u32,
}

/// Heads of every live stack and the arena their continuations live in.
#[derive(Clone, Debug, Default)]
pub(crate) struct Stacks {
    pub(crate) nodes: Vec<Node>,
    work: Vec<(u32, u32)>,
    /// While `consing`, a node is made once per (position, parent) and found again in
    /// `cons`, so equal stacks get equal ids and the trie walk's states repeat (counted
    /// repetitions would otherwise make a fresh node, hence a fresh state, per byte). The
    /// walk turns it on and clears `cons` when it truncates the arena.
    pub(crate) consing: bool,
    pub(crate) cons: Table,
}

impl Stacks {
    /// Pushes onto `out` every head reachable from resuming at `pos` over `parent` without
    /// consuming a byte; returns whether the whole grammar can end there. If the expansion
    /// budget runs out, the rest of the expansion is dropped (those stacks are dead).
    pub(crate) fn expand(
        &mut self,
        g: &Grammar,
        pos: u32,
        parent: u32,
        out: &mut Vec<Head>,
    ) -> bool {
        let mut complete = false;
        let mut budget = EXPAND_BUDGET;
        self.work.clear();
        self.work.push((pos, parent));
        while let Some((pos, parent)) = self.work.pop() {
            budget = match budget.checked_sub(1) {
                Some(b) => b,
                None => return complete,
            };
            match g.elems.get(pos as usize) {
                Some(Elem::Bytes(_)) => out.push(Head { pos, parent }),
                Some(Elem::End) | None => match self.nodes.get(parent as usize) {
                    Some(n) => self.work.push((n.pos, n.parent)),
                    None => complete = true,
                },
                Some(&Elem::Rule(r)) => {
                    // A call in last position resumes straight into our caller (a tail
                    // call), so loops and right recursion do not grow the stack.
                    let cont = if g.elems.get(pos as usize + 1) == Some(&Elem::End) {
                        parent
                    } else {
                        self.node(pos + 1, parent)
                    };
                    if let Some(starts) = g.alts.get(r as usize) {
                        for &s in starts.iter().rev() {
                            self.work.push((s, cont));
                        }
                    }
                }
            }
        }
        complete
    }

    /// The node for resuming at `pos` over `parent` (shared while consing).
    fn node(&mut self, pos: u32, parent: u32) -> u32 {
        let key = (u64::from(pos) << 32) | u64::from(parent);
        if self.consing
            && let Some(id) = self.cons.get(key)
        {
            return id;
        }
        let id = self.nodes.len() as u32;
        self.nodes.push(Node { pos, parent });
        if self.consing {
            self.cons.insert(key, id);
        }
        id
    }

    /// Appends to `heads` (after `from`) the heads `heads[from_range]` reach on byte `b`;
    /// returns whether the grammar can end after `b`.
    pub(crate) fn step(
        &mut self,
        g: &Grammar,
        heads: &mut Vec<Head>,
        from: core::ops::Range<usize>,
        b: u8,
    ) -> bool {
        let mut complete = false;
        for i in from {
            let h = heads[i];
            let Some(Elem::Bytes(s)) = g.elems.get(h.pos as usize) else {
                continue;
            };
            if g.sets.get(*s as usize).is_some_and(|s| set_has(s, b)) {
                complete |= self.expand(g, h.pos + 1, h.parent, heads);
            }
        }
        complete
    }
}

/// Sorts and deduplicates `v[start..]` in place.
pub(crate) fn dedup_tail(v: &mut Vec<Head>, start: usize) {
    v[start..].sort_unstable();
    let mut w = start;
    for r in start..v.len() {
        if w == start || v[r] != v[w - 1] {
            v[w] = v[r];
            w += 1;
        }
    }
    v.truncate(w);
}

/// The bytes any of `heads` accepts next.
pub(crate) fn first_bytes(g: &Grammar, heads: &[Head]) -> ByteSet {
    let mut acc = [0u64; 4];
    for h in heads {
        if let Some(Elem::Bytes(s)) = g.elems.get(h.pos as usize)
            && let Some(s) = g.sets.get(*s as usize)
        {
            acc = union(acc, *s);
        }
    }
    acc
}

/// An incremental recognizer of one grammar. `Clone` is the snapshot: clone, try bytes on
/// the copy, keep whichever you want.
#[derive(Clone, Debug)]
pub struct Matcher {
    pub(crate) grammar: Arc<Grammar>,
    pub(crate) stacks: Stacks,
    pub(crate) heads: Vec<Head>,
    pub(crate) complete: bool,
}

impl Matcher {
    /// A matcher at the start of `grammar`.
    pub fn new(grammar: Arc<Grammar>) -> Self {
        let mut stacks = Stacks::default();
        let mut heads = Vec::new();
        let complete = stacks.expand(&grammar, grammar.call_root, ROOT, &mut heads);
        dedup_tail(&mut heads, 0);
        Self {
            grammar,
            stacks,
            heads,
            complete,
        }
    }

    /// Feeds `bytes`; `false` (and the matcher unchanged) if they do not continue the
    /// grammar. Bytes may end inside a UTF-8 character; the next call continues it.
    pub fn accept_bytes(&mut self, bytes: &[u8]) -> bool {
        let saved_nodes = self.stacks.nodes.len();
        let saved_heads = self.heads.clone();
        let saved_complete = self.complete;
        for &b in bytes {
            if !self.accept_byte(b) {
                self.stacks.nodes.truncate(saved_nodes);
                self.heads = saved_heads;
                self.complete = saved_complete;
                return false;
            }
        }
        true
    }

    fn accept_byte(&mut self, b: u8) -> bool {
        let n = self.heads.len();
        self.complete = self.stacks.step(&self.grammar, &mut self.heads, 0..n, b);
        self.heads.drain(..n);
        dedup_tail(&mut self.heads, 0);
        !self.heads.is_empty() || self.complete
    }

    /// Whether the input so far is a whole sentence of the grammar (a complete JSON value).
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Whether some byte can follow the input so far.
    pub fn can_continue(&self) -> bool {
        !self.heads.is_empty()
    }

    /// The bytes that can come next (for tests and byte-level sampling).
    pub fn allowed_bytes(&self) -> impl Iterator<Item = u8> + '_ {
        let set = first_bytes(&self.grammar, &self.heads);
        (0..=255u8).filter(move |b| set_has(&set, *b))
    }
}
