//! Pooled embeddings: one vector for a whole prompt.
//!
//! No embedding model family is served, so a chat model's own hidden state is the
//! embedding: the prompt runs through every block as a prefill does, the final hidden state
//! of each position (after the last RMSNorm, before the output projection) is averaged over
//! the positions, and the mean is divided by its Euclidean norm. That is llama.cpp's
//! `--embeddings --pooling mean` on a decoder model (causal attention, every position
//! pooled, a beginning-of-sequence token included), normalised as its server does by
//! default (`embd_normalize = 2`), so vectors are unit length as OpenAI's are.

use super::columns::Columns;
use super::{MAX_BATCH, Model, ModelError, Session};
use crate::parallel::Parallel;
use alloc::vec;
use alloc::vec::Vec;

impl Model<'_> {
    /// The unit-length mean-pooled embedding of `tokens` (`[n_embd]`), evaluated from
    /// position 0 on a KV cache of its own, freed on return: nothing is left for a later
    /// evaluation to reuse. The caller sizes memory for `kv_cache_bytes(tokens.len())` and
    /// `batch_bytes(tokens.len())`.
    pub fn embedding(&self, tokens: &[u32], par: &dyn Parallel) -> Result<Vec<f32>, ModelError> {
        if tokens.is_empty() {
            return Err(ModelError::EmptyBatch);
        }
        let cfg = &self.cfg;
        if tokens.len() > cfg.n_ctx_train {
            return Err(ModelError::ContextFull {
                needed: tokens.len(),
                n_ctx: cfg.n_ctx_train,
            });
        }
        let mut session = Session::new(cfg, tokens.len());
        let f = self.forward();
        let w = &self.weights;
        let e = cfg.n_embd;
        // Summed in f64: thousands of positions of f32 rows would otherwise lose the low
        // bits of the later ones.
        let mut sum = vec![0f64; e];
        for (i, batch) in tokens.chunks(MAX_BATCH).enumerate() {
            let (kv, buf) = (&mut session.kv, &mut session.buf);
            let n_past = i * MAX_BATCH;
            f.check_batch(kv, n_past, batch)?;
            let mut cols = Columns::Run { kv, n_past };
            f.embed(buf, &w.token_embd, w.rope_freqs.as_deref(), &cols, batch);
            for (li, layer) in w.layers.iter().enumerate() {
                f.layer(&mut cols, buf, li, layer, batch.len(), par);
            }
            for row in f
                .final_norm(buf, &w.output_norm, batch.len())
                .chunks_exact(e)
            {
                sum.iter_mut()
                    .zip(row)
                    .for_each(|(s, &x)| *s += f64::from(x));
            }
        }
        Ok(normalised_mean(&sum, tokens.len()))
    }
}

/// `sum / n`, divided by its Euclidean norm (a zero vector stays zero).
fn normalised_mean(sum: &[f64], n: usize) -> Vec<f32> {
    let mean: Vec<f64> = sum.iter().map(|s| s / n as f64).collect();
    let norm = libm::sqrt(mean.iter().map(|m| m * m).sum::<f64>());
    let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
    mean.iter().map(|m| (m * scale) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::normalised_mean;

    #[test]
    fn the_mean_is_scaled_to_unit_length() {
        let v = normalised_mean(&[6.0, 8.0], 2);
        assert_eq!(v, [0.6, 0.8]);
        assert_eq!(normalised_mean(&[0.0, 0.0], 3), [0.0, 0.0]);
    }
}
