//! Where the columns of a forward pass belong: the KV cache each column's key and value go
//! into, and the position it is at.
//!
//! The forward pass's steps (`super::forward`) compute on a batch of `t` columns. A prompt
//! (or one session's decode step) is a run of consecutive positions of one session; a
//! batched decode step is one token of each of several sessions, each at its own position
//! and attending over its own cache. Everything but RoPE, the cache writes and attention is
//! the same for both, so the steps take a [`Columns`] and ask it only those three things.

use super::attention::DotOrder;
use super::kv_cache::KvCache;
use alloc::vec::Vec;

/// The sessions and positions of a batch's columns.
pub(super) enum Columns<'c> {
    /// Column `j` is position `n_past + j` of the one cache `kv`.
    Run { kv: &'c mut KvCache, n_past: usize },
    /// Column `j` is position `.1` of cache `.0`: one token of each of several sessions.
    Sessions(Vec<(&'c mut KvCache, usize)>),
}

impl Columns<'_> {
    /// The position column `j` is at (its RoPE angle; its keys' and values' slot).
    pub(super) fn pos(&self, j: usize) -> usize {
        match self {
            Columns::Run { n_past, .. } => n_past + j,
            Columns::Sessions(cols) => cols[j].1,
        }
    }

    /// The cache column `j` attends over.
    pub(super) fn kv(&self, j: usize) -> &KvCache {
        match self {
            Columns::Run { kv, .. } => kv,
            Columns::Sessions(cols) => cols[j].0,
        }
    }

    /// Stores column `j`'s key and value rows (all KV heads) of layer `li` at its position.
    pub(super) fn store(&mut self, li: usize, j: usize, k: &[f32], v: &[f32]) {
        let pos = self.pos(j);
        match self {
            Columns::Run { kv, .. } => kv.store(li, pos, k, v),
            Columns::Sessions(cols) => cols[j].0.store(li, pos, k, v),
        }
    }

    /// The attention's summation order for a batch of `t` columns: llama.cpp's for a batch
    /// of `t` tokens of one session; for one token of each session, that of a one-token
    /// batch, which is what each session's decode step alone would use (the same logits).
    pub(super) fn order(&self, t: usize) -> DotOrder {
        match self {
            Columns::Run { .. } => DotOrder::for_batch(t),
            Columns::Sessions(_) => DotOrder::for_batch(1),
        }
    }
}
