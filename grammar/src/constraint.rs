//! One request's constraint: the mask of allowed tokens at each step, and advancing on the
//! chosen token.
//!
//! A mask is, in order of cost: a copy of a recent mask when the matcher's heads are the
//! same as then (inside an unbounded string the head set is the same after every plain
//! character, so a string's second and later tokens cost a copy); otherwise a walk of the
//! tokens that cannot be string content, plus the content tokens by byte class where every
//! state on the way treats each class alike (`content.rs`: the characters of a `maxLength`
//! string); otherwise a walk of every trie.

use crate::content::{class_walk, plain_reach};
use crate::error::ConstraintError;
use crate::matcher::{Head, Matcher};
use crate::rules::Grammar;
use crate::vocab::{TokenSet, Vocab};
use crate::walk::{Dfa, walk};
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;

/// Masks cached per constraint: 4 × (vocabulary / 8) bytes, 76 KiB for 151k tokens.
const MASK_CACHE: usize = 4;

/// One request's grammar state: which tokens may come next, and advancing on the chosen one.
#[derive(Clone, Debug)]
pub struct Constraint {
    matcher: Matcher,
    cache: VecDeque<(Vec<Head>, bool, TokenSet)>,
    /// The walk's interned states (reused between steps).
    dfa: Dfa,
    /// Whether masks may use the content shortcut (see [`set_shortcuts`](Self::set_shortcuts)).
    shortcuts: bool,
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
            shortcuts: true,
        }
    }

    /// With `false`, a mask not in the cache is a walk of the whole vocabulary, without the
    /// content shortcut: the reference the tests compare masks with (a fresh copy, whose
    /// cache this empties), and the benchmark's "before". The masks are the same either
    /// way; only their cost differs.
    pub fn set_shortcuts(&mut self, on: bool) {
        self.shortcuts = on;
        self.cache.clear();
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
        let cached = self
            .cache
            .iter()
            .find(|(h, c, _)| *c == key_complete && *h == self.matcher.heads);
        match cached {
            Some((_, _, set)) => out.clone_from(set),
            _ => {
                out.clear(vocab.len());
                self.walk(vocab, out);
                if self.cache.len() == MASK_CACHE {
                    self.cache.pop_back();
                }
                let heads = self.matcher.heads.clone();
                self.cache.push_front((heads, key_complete, out.clone()));
            }
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
        let words = mask.words();
        let mut chunks = logits.chunks_mut(64);
        for (&w, chunk) in words.iter().zip(&mut chunks) {
            // Inside a string nearly every word is all ones: skip those whole.
            if w == u64::MAX {
                continue;
            }
            for (j, l) in chunk.iter_mut().enumerate() {
                if w >> j & 1 == 0 {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        for chunk in chunks {
            chunk.fill(f32::NEG_INFINITY);
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

    /// The mask without the cache: the other tokens walked, the plain ones by length where
    /// the shortcut holds, walked otherwise.
    fn walk(&mut self, vocab: &Vocab, out: &mut TokenSet) {
        let m = &mut self.matcher;
        let g: &Grammar = &m.grammar;
        let saved_nodes = m.stacks.nodes.len();
        let dfa = &mut self.dfa;
        m.stacks.consing = true;
        let start = dfa.intern(g, &m.heads, m.complete);
        walk(&vocab.other, g, &mut m.stacks, dfa, start, out);
        let by_class =
            self.shortcuts && class_walk(&vocab.mixed_classes, g, &mut m.stacks, dfa, start, out);
        if !by_class {
            walk(&vocab.mixed, g, &mut m.stacks, dfa, start, out);
        }
        let max = vocab.plain_index.max_len();
        let reach = match self.shortcuts {
            true => plain_reach(g, &mut m.stacks, dfa, start, max),
            false => None,
        };
        match reach {
            Some(n) => vocab.plain_index.insert_up_to(n, out),
            None => walk(&vocab.plain, g, &mut m.stacks, dfa, start, out),
        }
        // The interned states referred to these nodes; both go.
        m.stacks.nodes.truncate(saved_nodes);
        m.stacks.consing = false;
        m.stacks.cons.clear();
        dfa.clear();
    }
}
