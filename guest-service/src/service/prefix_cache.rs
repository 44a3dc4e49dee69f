//! KV reuse across requests. When a session closes, its KV cache and the tokens it holds
//! are kept while memory allows, so that a later request whose prompt starts with the same
//! tokens (the next turn of a chat, a shared system prompt) goes on from them instead of
//! evaluating them again. Matching is by token id, here in the guest.
//!
//! Only sessions whose every prompt was plain are kept, and only plain prompts reuse them:
//! how long a request takes to its first token would tell whoever sent it how much of its
//! prompt another session held, and the host must not learn that of a sealed prompt.
//! Kept caches are the first thing evicted when memory is short.

use alloc::vec::Vec;

/// Fewest tokens worth reusing: below this a fresh evaluation costs about the same.
pub(super) const MIN_REUSE_TOKENS: usize = 4;

/// A closed session's cache (`S`: the engine's session) and the tokens it holds.
pub(super) struct Kept<S> {
    pub model_id: u32,
    pub context_len: u32,
    pub session: S,
    pub history: Vec<u32>,
    last_used: u64,
}

/// What a prompt can take from the cache.
pub(super) struct Reuse<S> {
    pub session: S,
    /// The tokens `session` holds, of which the prompt's first `reused` are its own.
    pub history: Vec<u32>,
    pub reused: usize,
}

/// The kept caches, at most `capacity` of them.
pub(super) struct PrefixCache<S> {
    kept: Vec<Kept<S>>,
    capacity: usize,
    clock: u64,
}

impl<S> PrefixCache<S> {
    pub fn new(capacity: usize) -> Self {
        Self {
            kept: Vec::new(),
            capacity,
            clock: 0,
        }
    }

    /// Keeps a closed session's cache; the least recently used one goes if the cache is
    /// full. A session that holds too few tokens to be worth reusing is dropped.
    pub fn keep(&mut self, model_id: u32, context_len: u32, session: S, history: Vec<u32>) {
        if history.len() < MIN_REUSE_TOKENS || self.capacity == 0 {
            return;
        }
        if self.kept.len() >= self.capacity {
            self.evict_one();
        }
        self.clock += 1;
        self.kept.push(Kept {
            model_id,
            context_len,
            session,
            history,
            last_used: self.clock,
        });
    }

    /// Takes the kept cache of `model_id` and `context_len` that shares the longest prefix
    /// with `prompt`, if that is at least [`MIN_REUSE_TOKENS`]. At least the prompt's last
    /// two tokens are left to evaluate: the last one's logits pick the first new token, and
    /// a batch of two or more sums attention as the whole prompt's evaluation would (a
    /// one-token step sums it in another order).
    pub fn take_best(
        &mut self,
        model_id: u32,
        context_len: u32,
        prompt: &[u32],
    ) -> Option<Reuse<S>> {
        let (at, reused) = self
            .kept
            .iter()
            .enumerate()
            .filter(|(_, k)| k.model_id == model_id && k.context_len == context_len)
            .map(|(i, k)| (i, reusable(&k.history, prompt)))
            .max_by_key(|&(i, n)| (n, self.kept[i].last_used))?;
        if reused < MIN_REUSE_TOKENS {
            return None;
        }
        let k = self.kept.swap_remove(at);
        Some(Reuse {
            session: k.session,
            history: k.history,
            reused,
        })
    }

    /// How many of `prompt`'s tokens the best kept cache of `model_id` and `context_len`
    /// would give it (0 below [`MIN_REUSE_TOKENS`]), as [`take_best`](Self::take_best)
    /// counts them.
    pub fn best_len(&self, model_id: u32, context_len: u32, prompt: &[u32]) -> usize {
        let n = self
            .kept
            .iter()
            .filter(|k| k.model_id == model_id && k.context_len == context_len)
            .map(|k| reusable(&k.history, prompt))
            .max()
            .unwrap_or(0);
        if n < MIN_REUSE_TOKENS { 0 } else { n }
    }

    /// Takes the least recently used kept cache out (to be sealed and evicted).
    pub fn take_lru(&mut self) -> Option<Kept<S>> {
        let oldest = self
            .kept
            .iter()
            .enumerate()
            .min_by_key(|(_, k)| k.last_used)
            .map(|(i, _)| i)?;
        Some(self.kept.swap_remove(oldest))
    }

    /// Drops the least recently used kept cache; `false` if none is kept.
    pub fn evict_one(&mut self) -> bool {
        let oldest = self
            .kept
            .iter()
            .enumerate()
            .min_by_key(|(_, k)| k.last_used)
            .map(|(i, _)| i);
        match oldest {
            Some(i) => {
                self.kept.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// Drops every cache of `model_id` (it was unloaded).
    pub fn forget_model(&mut self, model_id: u32) {
        self.kept.retain(|k| k.model_id != model_id);
    }

    /// How many caches are kept.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.kept.len()
    }
}

/// How many of `prompt`'s tokens a cache holding `history` gives it: their common prefix,
/// leaving the prompt's last two tokens to evaluate.
pub(super) fn reusable(history: &[u32], prompt: &[u32]) -> usize {
    common_prefix(history, prompt).min(prompt.len().saturating_sub(2))
}

/// How many leading tokens `a` and `b` share.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn the_longest_shared_prefix_is_taken_and_two_tokens_left() {
        let mut c = PrefixCache::new(4);
        c.keep(1, 512, "system", vec![1, 2, 3, 4, 5]);
        c.keep(1, 512, "turn one", vec![1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let r = c
            .take_best(1, 512, &[1, 2, 3, 4, 5, 6, 7, 10, 11])
            .expect("a prefix");
        assert_eq!((r.session, r.reused), ("turn one", 7));
        // A prompt the cache holds whole still evaluates its last two tokens.
        let r = c.take_best(1, 512, &[1, 2, 3, 4, 5, 6]).expect("a prefix");
        assert_eq!((r.session, r.reused), ("system", 4));
        assert_eq!(c.len(), 0, "taken caches leave");
    }

    #[test]
    fn another_model_or_context_or_a_short_prefix_reuses_nothing() {
        let mut c = PrefixCache::new(4);
        c.keep(1, 512, (), vec![1, 2, 3, 4, 5, 6]);
        assert!(c.take_best(2, 512, &[1, 2, 3, 4, 5, 6, 7]).is_none());
        assert!(c.take_best(1, 1024, &[1, 2, 3, 4, 5, 6, 7]).is_none());
        assert!(c.take_best(1, 512, &[1, 2, 3, 9, 9, 9, 9]).is_none());
        assert!(c.take_best(1, 512, &[1, 2, 3, 4, 5, 6, 7]).is_some());
    }

    #[test]
    fn a_full_cache_drops_its_least_recently_used() {
        let mut c = PrefixCache::new(2);
        c.keep(1, 512, "a", vec![1; 8]);
        c.keep(1, 512, "b", vec![2; 8]);
        c.keep(1, 512, "c", vec![3; 8]);
        assert_eq!(c.len(), 2);
        assert!(
            c.take_best(1, 512, &[1; 10]).is_none(),
            "`a` was the oldest"
        );
        assert_eq!(c.best_len(1, 512, &[2; 10]), 8);
        assert_eq!(c.best_len(1, 512, &[1; 10]), 0);
        assert_eq!(c.take_lru().map(|k| k.session), Some("b"));
        c.keep(1, 512, "b", vec![2; 8]);
        c.keep(1, 512, "too short", vec![4; MIN_REUSE_TOKENS - 1]);
        assert_eq!(c.len(), 2);
        c.forget_model(1);
        assert_eq!(c.len(), 0);
        assert!(!c.evict_one());
    }
}
