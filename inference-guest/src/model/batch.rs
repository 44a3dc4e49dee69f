//! Batched decode: the next token of several sessions of one model in one forward pass.
//!
//! ```ignore
//! let mut scratch = BatchBuffers::default();
//! let mut steps = [
//!     DecodeStep { session: &mut a, token: next_a },
//!     DecodeStep { session: &mut b, token: next_b },
//! ];
//! model.decode_batch(&mut steps, &mut scratch, &pool)?;
//! let next_a = argmax(a.last_logits());
//! ```
//!
//! Each session contributes one token at its own position; the sessions' tokens are the
//! columns of one batch, so every weight matrix is read once per step for all of them
//! (`Kernels::matmul` with one column per session), while RoPE, the cache writes and
//! attention are each session's own (`super::columns`). The logits are those
//! [`Session::eval`] gives for that one token, to the bit: every step is per column, the
//! kernels compute each column of a product as they compute it alone (the bitwise tests of
//! `tests/kernel_parity.rs`), and attention keeps a one-token batch's summation order.
//! Sessions may join and leave between steps: a step is any set of sessions of the model.

use super::LlamaConfig;
use super::columns::Columns;
use super::forward::{Buffers, Logits};
use super::{Model, ModelError, Session};
use crate::parallel::Parallel;
use alloc::vec::Vec;

/// One session's part in a batched decode step: its next token.
pub struct DecodeStep<'s> {
    pub session: &'s mut Session,
    pub token: u32,
}

/// Activations of batched decode steps, reused from step to step (they grow to the largest
/// batch seen and stay).
#[derive(Default)]
pub struct BatchBuffers {
    buf: Buffers,
    tokens: Vec<u32>,
    logits: Vec<f32>,
}

impl BatchBuffers {
    /// At most the bytes these buffers hold once they have stepped `sessions` sessions of
    /// a model of shapes `cfg`, so that a guest can make room for them before a session
    /// joins: the activations of as many tokens, and per session the logits and the
    /// output product's results before their transpose (a vocabulary each).
    pub fn bytes_for(cfg: &LlamaConfig, sessions: usize) -> usize {
        let widest = cfg
            .n_vocab
            .max(2 * cfg.n_ff)
            .max(cfg.q_dim() + 2 * cfg.kv_dim());
        cfg.batch_bytes(sessions) + sessions * 4 * (cfg.n_vocab + widest)
    }

    /// Bytes these buffers hold now.
    pub fn held_bytes(&self) -> usize {
        self.buf.held_bytes() + (self.tokens.capacity() + self.logits.capacity()) * 4
    }
}

/// A batched decode step that was refused; no session was changed.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("empty batch: there is no session to step")]
    Empty,
    /// The step of the session at `index` in the batch cannot run (its context is full, or
    /// its token is outside the vocabulary).
    #[error("session {index} of the batch: {source}")]
    Session {
        index: usize,
        #[source]
        source: ModelError,
    },
}

impl Model<'_> {
    /// Evaluates each step's token after the tokens its session has seen, all in one forward
    /// pass, and leaves each session's logits (`[n_vocab]`, bit-identical to what
    /// `session.eval(model, &[token], Logits::Last, par)` gives) in
    /// [`Session::last_logits`]. Every session must belong to this model. On error no
    /// session is changed, and the error says which one could not step.
    pub fn decode_batch(
        &self,
        steps: &mut [DecodeStep<'_>],
        scratch: &mut BatchBuffers,
        par: &dyn Parallel,
    ) -> Result<(), BatchError> {
        if steps.is_empty() {
            return Err(BatchError::Empty);
        }
        let f = self.forward();
        // All checked before anything is written: a refused step changes no session.
        for (index, s) in steps.iter().enumerate() {
            f.check_batch(&s.session.kv, s.session.n_past, &[s.token])
                .map_err(|source| BatchError::Session { index, source })?;
        }
        let w = &self.weights;
        let b = steps.len();
        let BatchBuffers {
            buf,
            tokens,
            logits,
        } = scratch;
        tokens.clear();
        tokens.reserve_exact(b);
        tokens.extend(steps.iter().map(|s| s.token));
        let mut cols = Columns::Sessions(
            steps
                .iter_mut()
                .map(|s| (&mut s.session.kv, s.session.n_past))
                .collect(),
        );
        f.embed(buf, &w.token_embd, w.rope_freqs.as_deref(), &cols, tokens);
        for (li, layer) in w.layers.iter().enumerate() {
            f.layer(&mut cols, buf, li, layer, b, par);
        }
        drop(cols);
        // Every column's logits: each column is a session's last (and only) token.
        f.output(buf, &w.output_norm, &w.output, b, Logits::All, par, logits);
        for (s, row) in steps.iter_mut().zip(logits.chunks_exact(self.cfg.n_vocab)) {
            let session = &mut *s.session;
            session.logits.clear();
            session.logits.extend_from_slice(row);
            session.n_past += 1;
        }
        Ok(())
    }
}
