//! What bringing an evicted KV cache back is predicted to cost each way, from what this
//! guest measured (`guest.kv_restore = "measured"`): restoring its sealed blocks, or
//! evaluating its tokens again.
//!
//! Prefill does not cost the same per token at every length: each token's weight products
//! do, but its attention reads every position before it, so a 2k-token context costs more
//! than four times a 512-token one, and a rate measured on a short prompt would undercount a
//! long context's recompute. Evaluating `e` tokens after `p` already in the cache is modelled
//! as `a·e + b·((p+e)² − p²)` (the second term is twice the query-key pairs), `a` and `b`
//! fitted per model by least squares to the latest measurement at each length (power-of-two
//! buckets, so many short prompts do not push out what a long one taught). When the
//! measurements cannot tell `a` from `b` (one length only, or noise that makes either
//! negative), the model's own shape fixes their ratio (attention's multiply-adds per
//! query-key pair over the weights' per token) and the measurements only scale it.
//!
//! A restore (decrypt, authenticate and copy each block; nothing grows with the square) is
//! a cost per sealed byte, over the last few restores.

use alloc::vec::Vec;
use inference_guest::model::LlamaConfig;

/// Length buckets kept per model: bucket `i` holds contexts of `[2^i, 2^(i+1))` tokens.
const BUCKETS: usize = 24;
/// Prompts shorter than this say more about fixed costs than about prefill.
const MIN_TOKENS: u64 = 16;
/// Restores whose bytes and times are summed for the rate.
const RESTORES_KEPT: usize = 4;
/// Squared cosine between the two features' columns above which a two-parameter fit is
/// ill-posed (the lengths measured are too alike to separate `a` from `b`).
const MAX_COLLINEARITY: f64 = 0.9995;

/// One prompt evaluation: `tokens` evaluated after `start` already cached, in `ns`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Prefill {
    start: u64,
    tokens: u64,
    ns: u64,
}

impl Prefill {
    /// The weight products' share: one per token.
    fn per_token(&self) -> f64 {
        self.tokens as f64
    }

    /// The attention's share: `(p+e)² − p²`, twice the query-key pairs.
    fn pairs(&self) -> f64 {
        pairs(self.start, self.tokens)
    }
}

fn pairs(start: u64, tokens: u64) -> f64 {
    let (p, end) = (start as f64, (start + tokens) as f64);
    end * end - p * p
}

/// Prefill time of `e` tokens after `p`: `a·e + b·((p+e)² − p²)` nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct PrefillFit {
    pub ns_per_token: f64,
    pub ns_per_pair: f64,
    /// Measurements it stands on.
    pub measurements: usize,
}

impl PrefillFit {
    pub fn predict_ns(&self, start: u64, tokens: u64) -> f64 {
        self.ns_per_token * tokens as f64 + self.ns_per_pair * pairs(start, tokens)
    }
}

/// One model's prefill measurements.
struct ModelPrefill {
    model_id: u32,
    /// `b / a` from the model's shape, for when the measurements cannot say.
    shape: f64,
    by_length: [Option<Prefill>; BUCKETS],
}

impl ModelPrefill {
    fn fit(&self) -> Option<PrefillFit> {
        let seen: Vec<&Prefill> = self.by_length.iter().flatten().collect();
        if seen.is_empty() {
            return None;
        }
        let (mut xx, mut xy, mut yy, mut xt, mut yt) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for m in &seen {
            let (x, y, t) = (m.per_token(), m.pairs(), m.ns as f64);
            (xx, xy, yy, xt, yt) = (xx + x * x, xy + x * y, yy + y * y, xt + x * t, yt + y * t);
        }
        let det = xx * yy - xy * xy;
        if seen.len() >= 2 && xy * xy < MAX_COLLINEARITY * xx * yy && det > 0.0 {
            let a = (xt * yy - yt * xy) / det;
            let b = (yt * xx - xt * xy) / det;
            if a > 0.0 && b >= 0.0 {
                return Some(PrefillFit {
                    ns_per_token: a,
                    ns_per_pair: b,
                    measurements: seen.len(),
                });
            }
        }
        // The model's shape, scaled: t = s·(x + k·y), least squares in s.
        let k = self.shape;
        let (mut ff, mut ft) = (0.0, 0.0);
        for m in &seen {
            let f = m.per_token() + k * m.pairs();
            (ff, ft) = (ff + f * f, ft + f * m.ns as f64);
        }
        let s = ft / ff;
        Some(PrefillFit {
            ns_per_token: s,
            ns_per_pair: s * k,
            measurements: seen.len(),
        })
    }
}

/// `b / a` as the model's arithmetic has it: a query-key pair costs a dot product with the
/// key and a multiply-add with the value for every query head (`2·n_head·head_dim`), and
/// `pairs` counts each pair twice; a token costs one multiply-add per weight (the output
/// head runs for the last position only, so it is left out).
pub(super) fn attention_shape(cfg: &LlamaConfig) -> f64 {
    let (e, q, kv) = (cfg.n_embd as f64, cfg.q_dim() as f64, cfg.kv_dim() as f64);
    let weights = e * (2.0 * q + 2.0 * kv) + 3.0 * e * cfg.n_ff as f64;
    let attention = (cfg.n_head * cfg.head_dim) as f64;
    if weights > 0.0 {
        attention / weights
    } else {
        0.0
    }
}

/// The two predictions for one evicted cache, in microseconds (`None`: not measured yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Prediction {
    pub restore_us: Option<u32>,
    pub recompute_us: Option<u32>,
}

impl Prediction {
    /// Whether to restore: when either way is unmeasured, restore. That is the only way to
    /// measure a restore, and the way that wins where eviction matters: a long context's
    /// blocks come back at the speed of decryption and a copy, while its recompute grows
    /// with the square of its length (0.36 s against tens of seconds at 2k tokens of
    /// SmolLM2 in the first runs of `make bench-agent`). Otherwise the cheaper way; a tie
    /// restores.
    pub fn restore(&self) -> bool {
        match (self.restore_us, self.recompute_us) {
            (Some(r), Some(c)) => r <= c,
            _ => true,
        }
    }
}

fn us(ns: f64) -> u32 {
    (ns / 1000.0).clamp(0.0, u32::MAX as f64) as u32
}

/// Everything measured.
#[derive(Default)]
pub(super) struct KvCosts {
    models: Vec<ModelPrefill>,
    restores: [Option<(u64, u64)>; RESTORES_KEPT],
    next_restore: usize,
}

impl KvCosts {
    /// Notes that `tokens` evaluated after `start` cached ones of model `model_id`, whose
    /// shape is `shape` ([`attention_shape`]), took `ns`.
    pub fn note_prefill(&mut self, model_id: u32, shape: f64, start: u64, tokens: u64, ns: u64) {
        if tokens < MIN_TOKENS || ns == 0 {
            return;
        }
        let at = match self.models.iter().position(|m| m.model_id == model_id) {
            Some(at) => at,
            None => {
                self.models.push(ModelPrefill {
                    model_id,
                    shape,
                    by_length: [None; BUCKETS],
                });
                self.models.len() - 1
            }
        };
        let bucket = (start + tokens).ilog2() as usize;
        self.models[at].by_length[bucket.min(BUCKETS - 1)] = Some(Prefill { start, tokens, ns });
    }

    pub fn note_restore(&mut self, bytes: u64, ns: u64) {
        if bytes > 0 && ns > 0 {
            self.restores[self.next_restore] = Some((bytes, ns));
            self.next_restore = (self.next_restore + 1) % RESTORES_KEPT;
        }
    }

    /// Drops what was measured of a model that was unloaded.
    pub fn forget_model(&mut self, model_id: u32) {
        self.models.retain(|m| m.model_id != model_id);
    }

    pub fn prefill_fit(&self, model_id: u32) -> Option<PrefillFit> {
        self.models.iter().find(|m| m.model_id == model_id)?.fit()
    }

    /// Nanoseconds per sealed byte restored, over the last restores.
    pub fn restore_ns_per_byte(&self) -> Option<f64> {
        let (bytes, ns) = self
            .restores
            .iter()
            .flatten()
            .fold((0u64, 0u64), |(b, n), &(bb, nn)| (b + bb, n + nn));
        (bytes > 0).then(|| ns as f64 / bytes as f64)
    }

    /// Restoring `sealed_bytes` against evaluating the first `tokens` of model `model_id`
    /// again.
    pub fn predict(&self, model_id: u32, tokens: u64, sealed_bytes: u64) -> Prediction {
        Prediction {
            restore_us: self
                .restore_ns_per_byte()
                .map(|r| us(r * sealed_bytes as f64)),
            recompute_us: self
                .prefill_fit(model_id)
                .map(|f| us(f.predict_ns(0, tokens))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M's shape (30 layers of 576 wide, 9 query heads of 64, 3 KV heads).
    const SHAPE: f64 = 9.0 * 64.0 / (576.0 * (2.0 * 576.0 + 2.0 * 192.0) + 3.0 * 576.0 * 1536.0);
    /// A prefill cost like SmolLM2's on two cores: 2.8 ms a token, 0.6 µs per pair.
    const A: f64 = 2.8e6;
    const B: f64 = 600.0;

    fn truth(start: u64, tokens: u64) -> u64 {
        (A * tokens as f64 + B * pairs(start, tokens)) as u64
    }

    #[test]
    fn unmeasured_either_way_restores() {
        let c = KvCosts::default();
        let p = c.predict(1, 2048, 46 << 20);
        assert_eq!((p.restore_us, p.recompute_us), (None, None));
        assert!(p.restore());
        // Prefill measured, restore not yet: restore (which measures it), even for a
        // context whose recompute is predicted to be quick.
        let mut c = KvCosts::default();
        c.note_prefill(1, SHAPE, 0, 64, truth(0, 64));
        let p = c.predict(1, 20, 1 << 30);
        assert!(p.restore_us.is_none() && p.recompute_us.is_some());
        assert!(p.restore());
        // Restore measured, prefill not (or only of another model): restore.
        c.note_restore(1 << 20, 1_000_000);
        assert!(c.predict(2, 20, 1 << 30).restore());
    }

    #[test]
    fn measurements_at_several_lengths_recover_the_quadratic() {
        let mut c = KvCosts::default();
        // A continued prompt (start > 0) counts its attention from where it began.
        for (start, tokens) in [(0, 100), (0, 512), (300, 900), (0, 2100)] {
            c.note_prefill(7, SHAPE, start, tokens, truth(start, tokens));
        }
        let f = c.prefill_fit(7).unwrap();
        assert_eq!(f.measurements, 4);
        assert!((f.ns_per_token / A - 1.0).abs() < 1e-3, "{f:?}");
        assert!((f.ns_per_pair / B - 1.0).abs() < 1e-3, "{f:?}");
        let want = truth(0, 4000) as f64;
        assert!((f.predict_ns(0, 4000) / want - 1.0).abs() < 1e-3);
    }

    #[test]
    fn a_short_prompt_rate_is_not_applied_linearly_to_a_long_context() {
        let mut c = KvCosts::default();
        c.note_prefill(1, SHAPE, 0, 512, truth(0, 512));
        // What the old rule (the last prompt's rate, scaled linearly) predicted after a
        // 32-token prompt, and what this one predicts.
        c.note_prefill(1, SHAPE, 0, 32, truth(0, 32));
        let linear = truth(0, 32) as f64 * 2048.0 / 32.0;
        let got = c.predict(1, 2048, 0).recompute_us.unwrap() as f64 * 1000.0;
        let want = truth(0, 2048) as f64;
        assert!(got > linear * 1.2, "{got} vs linear {linear}");
        assert!((got / want - 1.0).abs() < 0.02, "{got} vs {want}");
    }

    #[test]
    fn one_length_only_takes_the_shape_from_the_model() {
        let mut c = KvCosts::default();
        // Measured at 256 tokens only, by a model whose cost has SHAPE's proportions.
        let b = A * SHAPE;
        let t = (A * 256.0 + b * 256.0 * 256.0) as u64;
        c.note_prefill(1, SHAPE, 0, 256, t);
        let f = c.prefill_fit(1).unwrap();
        assert!((f.ns_per_token / A - 1.0).abs() < 1e-3, "{f:?}");
        assert!((f.ns_per_pair / f.ns_per_token - SHAPE).abs() < 1e-12);
        // The latest measurement of a length replaces the one before it.
        c.note_prefill(1, SHAPE, 0, 300, t / 2);
        assert!(c.prefill_fit(1).unwrap().ns_per_token < A * 0.6);
        c.forget_model(1);
        assert!(c.prefill_fit(1).is_none());
    }

    #[test]
    fn restore_wins_long_contexts_and_recompute_short_ones_on_slow_storage() {
        let mut c = KvCosts::default();
        for (start, tokens) in [(0, 64), (0, 512), (0, 2048)] {
            c.note_prefill(1, SHAPE, start, tokens, truth(start, tokens));
        }
        // Storage at 7 MB/s: a restore costs ~3.3 ms for each token's 22.5 KiB (SmolLM2's
        // sealed bytes per token), more than a recompute's 2.84 ms a token at 64 tokens
        // and less than its 4 ms at 2048.
        const PER_TOKEN: u64 = 23_040;
        c.note_restore(7_000_000, 1_000_000_000);
        let short = c.predict(1, 64, 64 * PER_TOKEN);
        let long = c.predict(1, 2048, 2048 * PER_TOKEN);
        assert!(!short.restore(), "{short:?}");
        assert!(long.restore(), "{long:?}");
        // Fast storage: restore at every length.
        for _ in 0..RESTORES_KEPT {
            c.note_restore(128 << 20, 1_000_000_000);
        }
        assert!(c.predict(1, 64, 64 * PER_TOKEN).restore());
    }

    #[test]
    fn the_shape_of_smollm2_puts_a_quarter_of_a_2k_prefill_in_attention() {
        let cfg = LlamaConfig {
            architecture: "llama".into(),
            n_vocab: 49152,
            n_embd: 576,
            n_layer: 30,
            n_head: 9,
            n_head_kv: 3,
            head_dim: 64,
            n_ff: 1536,
            n_ctx_train: 8192,
            rope_freq_base: 100_000.0,
            rope_dims: 64,
            rope_layout: inference_guest::model::RopeLayout::Normal,
            rms_eps: 1e-5,
            qk_norm: false,
            query_scale: None,
            fused_projections: false,
            gemma: None,
        };
        let k = attention_shape(&cfg);
        assert!((k / SHAPE - 1.0).abs() < 1e-12, "{k} vs {SHAPE}");
        // 2048 tokens from scratch: attention's part of the multiply-adds.
        let (x, y) = (2048.0, pairs(0, 2048));
        let share = k * y / (x + k * y);
        assert!((0.2..0.3).contains(&share), "{share}");
    }
}
