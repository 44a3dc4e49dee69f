//! Token sampling: repetition penalty, then greedy argmax (temperature 0) or top-k → top-p →
//! min-p → temperature → a seeded draw, in llama.cpp's order.
//!
//! `no_std`: the PRNG is an in-crate xoshiro256** seeded through splitmix64, so a seed gives the
//! same tokens on every platform.

use alloc::vec::Vec;
use core::cmp::Ordering;

/// Why a [`SamplerConfig`] was rejected.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum SamplerError {
    /// Temperature must be finite and in `[0, 100]`; 0 means greedy.
    #[error("temperature {0} is invalid: use a finite value in [0, 100] (0 = greedy)")]
    Temperature(f32),
    /// top-p must be in `(0, 1]`.
    #[error("top_p {0} is invalid: use a value in (0, 1] (1 = disabled)")]
    TopP(f32),
    /// min-p must be in `[0, 1]`.
    #[error("min_p {0} is invalid: use a value in [0, 1] (0 = disabled)")]
    MinP(f32),
    /// The repetition penalty must be finite and in `(0, 10]`.
    #[error("repeat_penalty {0} is invalid: use a finite value in (0, 10] (1 = disabled)")]
    RepeatPenalty(f32),
}

/// Sampling parameters. Defaults follow llama.cpp's command-line defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    /// Softmax temperature; 0 selects greedy argmax.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 disables.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability sums to at least `top_p`; 1 disables.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 disables.
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recently seen tokens by this; 1 disables.
    pub repeat_penalty: f32,
    /// How many of the most recent tokens the repetition penalty looks at.
    pub repeat_last_n: usize,
    /// PRNG seed.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0x5EED_F1E5_5E4E_u64,
        }
    }
}

impl SamplerConfig {
    /// Greedy decoding (temperature 0, no penalty).
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Checks every parameter's range; the error names the first bad one.
    pub fn validate(&self) -> Result<(), SamplerError> {
        if !(self.temperature.is_finite() && (0.0..=100.0).contains(&self.temperature)) {
            return Err(SamplerError::Temperature(self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(SamplerError::TopP(self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(SamplerError::MinP(self.min_p));
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty <= 10.0) {
            return Err(SamplerError::RepeatPenalty(self.repeat_penalty));
        }
        Ok(())
    }
}

/// xoshiro256** (Blackman & Vigna), seeded with splitmix64.
#[derive(Debug, Clone)]
struct Rng([u64; 4]);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self([next(), next(), next(), next()])
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A stateful sampler (its PRNG advances with every draw).
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: SamplerConfig,
    n_vocab: usize,
    rng: Rng,
    /// Reused candidate buffer: `(token, logit)`.
    cand: Vec<(u32, f32)>,
}

/// Higher logit first, then lower id, so equal logits resolve like greedy.
fn by_logit_desc(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

impl Sampler {
    /// A sampler over `n_vocab` tokens.
    ///
    /// Call [`SamplerConfig::validate`] first to report bad values to the user; here any value
    /// out of range falls back to its neutral setting (invalid temperature: greedy) so sampling
    /// never panics.
    pub fn new(cfg: SamplerConfig, n_vocab: usize) -> Self {
        let mut cfg = cfg;
        if !(cfg.temperature.is_finite() && (0.0..=100.0).contains(&cfg.temperature)) {
            cfg.temperature = 0.0;
        }
        if !(cfg.top_p > 0.0 && cfg.top_p <= 1.0) {
            cfg.top_p = 1.0;
        }
        if !(0.0..=1.0).contains(&cfg.min_p) {
            cfg.min_p = 0.0;
        }
        if !(cfg.repeat_penalty > 0.0 && cfg.repeat_penalty <= 10.0) {
            cfg.repeat_penalty = 1.0;
        }
        Self {
            cfg,
            n_vocab,
            rng: Rng::new(cfg.seed),
            cand: Vec::new(),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Picks the next token from `logits` (modified in place by the repetition penalty).
    ///
    /// Only the first `n_vocab` logits are considered; NaN logits are never chosen. Returns 0
    /// if `logits` is empty.
    pub fn sample(&mut self, logits: &mut [f32], recent_tokens: &[u32]) -> u32 {
        let n = logits.len().min(self.n_vocab);
        let logits = &mut logits[..n];
        for l in logits.iter_mut().filter(|l| l.is_nan()) {
            *l = f32::NEG_INFINITY;
        }
        self.apply_repeat_penalty(logits, recent_tokens);
        if self.cfg.temperature == 0.0 {
            return argmax(logits);
        }
        self.cand.clear();
        self.cand
            .extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        let k = self.cfg.top_k;
        // Partial selection keeps top-k O(n) instead of sorting the whole vocabulary.
        if k > 0 && k < self.cand.len() {
            self.cand.select_nth_unstable_by(k - 1, by_logit_desc);
            self.cand.truncate(k);
        }
        self.cand.sort_unstable_by(by_logit_desc);
        let Some(&(best, max)) = self.cand.first() else {
            return 0;
        };
        if max == f32::NEG_INFINITY {
            return best;
        }
        self.apply_top_p(max);
        if self.cfg.min_p > 0.0 {
            let floor = max + libm_ln(self.cfg.min_p);
            let keep = self.cand.iter().take_while(|c| c.1 >= floor).count().max(1);
            self.cand.truncate(keep);
        }
        let inv_t = 1.0 / self.cfg.temperature;
        // A subnormal temperature overflows 1/T; that limit is greedy.
        if !inv_t.is_finite() {
            return best;
        }
        let weights: Vec<f64> = self
            .cand
            .iter()
            .map(|c| exp64(f64::from((c.1 - max) * inv_t)))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut u = self.rng.next_f64() * total;
        for (c, w) in self.cand.iter().zip(&weights) {
            if u < *w {
                return c.0;
            }
            u -= w;
        }
        self.cand.last().map_or(best, |c| c.0)
    }

    fn apply_repeat_penalty(&self, logits: &mut [f32], recent: &[u32]) {
        let p = self.cfg.repeat_penalty;
        if p == 1.0 || self.cfg.repeat_last_n == 0 {
            return;
        }
        let mut seen: Vec<u32> =
            recent[recent.len().saturating_sub(self.cfg.repeat_last_n)..].to_vec();
        seen.sort_unstable();
        seen.dedup();
        for id in seen {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = if *l > 0.0 { *l / p } else { *l * p };
            }
        }
    }

    /// Keeps the shortest prefix of the (sorted) candidates whose softmax mass reaches top-p.
    fn apply_top_p(&mut self, max: f32) {
        if self.cfg.top_p >= 1.0 {
            return;
        }
        let probs: Vec<f64> = self
            .cand
            .iter()
            .map(|c| exp64(f64::from(c.1 - max)))
            .collect();
        let total: f64 = probs.iter().sum();
        let target = f64::from(self.cfg.top_p) * total;
        let mut cum = 0.0;
        let mut keep = self.cand.len();
        for (i, p) in probs.iter().enumerate() {
            cum += p;
            if cum >= target {
                keep = i + 1;
                break;
            }
        }
        self.cand.truncate(keep.max(1));
    }
}

/// Index of the largest logit; the lowest index among equals (llama.cpp's greedy).
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// `e^x` for `x <= 0` without `std` (range reduction by powers of two, then a Taylor series).
fn exp64(x: f64) -> f64 {
    if x.is_nan() || x < -745.0 {
        return 0.0;
    }
    // x = k ln2 + r with |r| <= ln2/2.
    let k = (x * core::f64::consts::LOG2_E + if x < 0.0 { -0.5 } else { 0.5 }) as i32;
    let r = x - f64::from(k) * core::f64::consts::LN_2;
    let mut term = 1.0;
    let mut sum = 1.0;
    for i in 1..20 {
        term *= r / f64::from(i);
        sum += term;
    }
    let mut scale = 1.0;
    let (base, steps) = if k < 0 { (0.5, -k) } else { (2.0, k) };
    for _ in 0..steps {
        scale *= base;
    }
    sum * scale
}

/// Natural log of `x` in `(0, 1]` without `std` (bisection on [`exp64`] is plenty for min-p).
fn libm_ln(x: f32) -> f32 {
    let x = f64::from(x);
    let (mut lo, mut hi) = (-745.0f64, 0.0f64);
    for _ in 0..80 {
        let mid = 0.5 * (lo + hi);
        if exp64(mid) < x { lo = mid } else { hi = mid }
    }
    (0.5 * (lo + hi)) as f32
}

#[cfg(test)]
#[path = "sampler_tests.rs"]
mod tests;
