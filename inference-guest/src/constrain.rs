//! Structured output in the token loop: a grammar constraint (`llm-grammar`) sets the logits
//! of every token that would leave the grammar to −∞ before the sampler sees them, then
//! advances on the token the sampler chose.
//!
//! The engine depends on `llm-grammar` directly rather than through a trait of its own: the
//! grammar crate is small, `no_std` and free of `unsafe`, the guest needs it anyway to
//! compile the schemas the host forwards, and a trait would only add an adapter to write
//! in the guest service. Masking happens here, before `Sampler::sample`, so the sampler
//! (penalties, top-k/p, temperature) needs no change and sees only allowed tokens.

use crate::tokenizer::Tokenizer;
use alloc::vec::Vec;
pub use llm_grammar::{
    Constraint, ConstraintError, SchemaError, TokenSet, Vocab, compile_schema, json_object_grammar,
};

/// The grammar vocabulary of `tok` (build once per model): each token's bytes, with special
/// tokens (control, user-defined, unknown) as no bytes so a grammar never allows them.
pub fn grammar_vocab(tok: &Tokenizer) -> Vocab {
    let n = tok.n_vocab() as u32;
    Vocab::new((0..n).map(|id| match tok.is_special(id) {
        true => &[][..],
        false => tok.token_bytes(id),
    }))
}

/// The end-of-generation ids of `tok`, which a constraint allows once its output is complete.
pub fn eog_ids(tok: &Tokenizer) -> Vec<u32> {
    (0..tok.n_vocab() as u32)
        .filter(|&id| tok.is_end_of_generation(id))
        .collect()
}

/// One request's constraint with what it needs every step.
pub struct Constrained<'v> {
    vocab: &'v Vocab,
    constraint: Constraint,
    eog: Vec<u32>,
    mask: TokenSet,
}

impl<'v> Constrained<'v> {
    /// `eog`: the ids that end generation ([`eog_ids`]).
    pub fn new(vocab: &'v Vocab, constraint: Constraint, eog: Vec<u32>) -> Self {
        let mask = TokenSet::new(vocab.len());
        Self {
            vocab,
            constraint,
            eog,
            mask,
        }
    }

    /// Masks `logits`; `false` if no token is allowed (the output is complete and there is
    /// no end-of-generation id, or the grammar is stuck): the loop must stop there.
    pub fn mask(&mut self, logits: &mut [f32]) -> bool {
        self.constraint
            .mask_logits(self.vocab, &self.eog, logits, &mut self.mask);
        self.mask.count() > 0
    }

    /// Advances over the sampled `token` (one [`mask`](Self::mask) allowed).
    pub fn advance(&mut self, token: u32) -> Result<(), ConstraintError> {
        self.constraint
            .accept_token_id(self.vocab, &self.eog, token)
    }

    /// Whether the output so far is a complete value of the schema.
    pub fn is_complete(&self) -> bool {
        self.constraint.is_complete()
    }
}
