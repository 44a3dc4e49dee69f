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

/// When a lazy constraint starts: once the answer writes `text` (anywhere, or only as its
/// first non-whitespace bytes when `at_start`). Before that the answer is free.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    pub text: Vec<u8>,
    pub at_start: bool,
}

/// Where a lazy constraint stands.
#[derive(Debug, Clone)]
enum Phase {
    /// Free text so far, kept to look for the trigger.
    Waiting {
        trigger: Trigger,
        text: Vec<u8>,
    },
    Active,
    /// The trigger can no longer come, or what followed it left the grammar: free to the end.
    Off,
}

/// A request's constraint between two runs of the token loop (a preempted answer resumed
/// later): the grammar's state and, for a lazy one, where it stands.
#[derive(Debug, Clone)]
pub struct ConstraintState {
    constraint: Constraint,
    phase: Phase,
}

impl ConstraintState {
    /// A constraint on the whole answer.
    pub fn new(constraint: Constraint) -> Self {
        Self {
            constraint,
            phase: Phase::Active,
        }
    }

    /// A constraint that starts at `trigger`, fed the answer from the trigger on (a
    /// `tool_choice: auto` answer: prose, or calls that must be valid).
    pub fn lazy(constraint: Constraint, trigger: Trigger) -> Self {
        Self {
            constraint,
            phase: Phase::Waiting {
                trigger,
                text: Vec::new(),
            },
        }
    }

    /// Whether the output so far is a complete value of the grammar.
    pub fn is_complete(&self) -> bool {
        self.constraint.is_complete()
    }
}

/// One request's constraint with what it needs every step.
pub struct Constrained<'v> {
    vocab: &'v Vocab,
    /// Each token's bytes for a lazy constraint's trigger (special tokens too: a model may
    /// write the trigger as one, which the grammar's vocabulary leaves empty).
    tok: &'v Tokenizer,
    eog: Vec<u32>,
    mask: TokenSet,
    state: ConstraintState,
}

impl<'v> Constrained<'v> {
    /// `state` in the token loop. `eog`: the ids that end generation ([`eog_ids`]).
    pub fn new(
        vocab: &'v Vocab,
        tok: &'v Tokenizer,
        state: ConstraintState,
        eog: Vec<u32>,
    ) -> Self {
        Self {
            vocab,
            tok,
            eog,
            mask: TokenSet::new(vocab.len()),
            state,
        }
    }

    /// The state to go on from in a later run (a preempted answer).
    pub fn into_state(self) -> ConstraintState {
        self.state
    }

    /// Masks `logits` (nothing before a lazy constraint starts); `false` if no token is
    /// allowed (the output is complete and there is no end-of-generation id, or the grammar
    /// is stuck): the loop must stop there.
    pub fn mask(&mut self, logits: &mut [f32]) -> bool {
        if !matches!(self.state.phase, Phase::Active) {
            return true;
        }
        self.state
            .constraint
            .mask_logits(self.vocab, &self.eog, logits, &mut self.mask);
        self.mask.count() > 0
    }

    /// Advances over the sampled `token` (one [`mask`](Self::mask) allowed).
    pub fn advance(&mut self, token: u32) -> Result<(), ConstraintError> {
        let st = &mut self.state;
        match &mut st.phase {
            Phase::Active => st.constraint.accept_token_id(self.vocab, &self.eog, token),
            Phase::Off => Ok(()),
            Phase::Waiting { trigger, text } => {
                text.extend_from_slice(self.tok.token_bytes(token));
                let from = match trigger.at_start {
                    true => text.iter().position(|b| !b.is_ascii_whitespace()),
                    false => find(text, &trigger.text),
                };
                let Some(from) = from else {
                    return Ok(());
                };
                let rest = &text[from..];
                st.phase = if trigger.at_start && !rest.starts_with(&trigger.text) {
                    // Only a prefix so far: wait for more, unless it already differs.
                    match trigger.text.starts_with(rest) {
                        true => return Ok(()),
                        false => Phase::Off,
                    }
                } else {
                    match st.constraint.accept_token(rest) {
                        Ok(()) => Phase::Active,
                        Err(_) => Phase::Off,
                    }
                };
                Ok(())
            }
        }
    }

    /// Whether the output so far is a complete value of the schema.
    pub fn is_complete(&self) -> bool {
        self.state.is_complete()
    }
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
