//! Token sampling: logit bias, then the penalties (repeat, frequency, presence), then greedy
//! argmax (temperature 0) or top-k → top-p → min-p → temperature → a seeded draw, in
//! llama.cpp's order.
//!
//! Logprobs, when asked for, are the log-softmax of the logits after the bias and the
//! penalties and before temperature and the top-k/top-p/min-p cuts: the model's
//! distribution as this request shapes it, the same at every temperature, so a greedy
//! token is always the most likely one reported.
//!
//! `no_std`: the PRNG is an in-crate xoshiro256** seeded through splitmix64, so a seed gives the
//! same tokens on every platform.

use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;
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
    /// Presence and frequency penalties must be finite and in `[-2, 2]`.
    #[error("presence/frequency penalty {0} is invalid: use a finite value in [-2, 2]")]
    Penalty(f32),
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
    /// How many of the most recent tokens the penalties look at.
    pub repeat_last_n: usize,
    /// Subtracted once from the logit of every token among the recent ones (OpenAI's
    /// `presence_penalty`); 0 disables.
    pub presence_penalty: f32,
    /// Subtracted from a recent token's logit once per time it occurs (OpenAI's
    /// `frequency_penalty`); 0 disables.
    pub frequency_penalty: f32,
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
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
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
        for p in [self.presence_penalty, self.frequency_penalty] {
            if !(-2.0..=2.0).contains(&p) {
                return Err(SamplerError::Penalty(p));
            }
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

/// A sampled token's logprob and the most likely tokens at its step.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// The chosen token's logprob (`-inf` for a banned token forced by a lack of choice).
    pub logprob: f32,
    /// The `top_n` most likely tokens and their logprobs, most likely first (lower id first
    /// among equals).
    pub top: Vec<(u32, f32)>,
}

/// Where a sampler leaves the logprobs of the token it just chose. The token loop holds
/// the sampler while it calls back with each token, so the caller reads them from here.
pub type LogprobSink = Rc<RefCell<Option<TokenLogprobs>>>;

/// A stateful sampler (its PRNG advances with every draw).
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: SamplerConfig,
    n_vocab: usize,
    rng: Rng,
    /// Reused candidate buffer: `(token, logit)`.
    cand: Vec<(u32, f32)>,
    /// Added to these tokens' logits first; `-inf` bans.
    logit_bias: Vec<(u32, f32)>,
    /// Logprobs requested: how many alternatives, and where they go.
    logprobs: Option<(usize, LogprobSink)>,
    /// The context's tokens before the ones the token loop passes (at most
    /// `repeat_last_n`): the penalties' window reaches into them.
    prior: Vec<u32>,
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
        for p in [&mut cfg.presence_penalty, &mut cfg.frequency_penalty] {
            if !(-2.0..=2.0).contains(p) {
                *p = 0.0;
            }
        }
        Self {
            cfg,
            n_vocab,
            rng: Rng::new(cfg.seed),
            cand: Vec::new(),
            logit_bias: Vec::new(),
            logprobs: None,
            prior: Vec::new(),
        }
    }

    /// The tokens the session held before this request's (an earlier slice of a preempted
    /// request, a prompt prefix taken from a kept KV cache): the penalties look at the last
    /// `repeat_last_n` tokens of the whole context, as one uninterrupted run would.
    pub fn set_prior_tokens(&mut self, tokens: &[u32]) {
        let keep = tokens.len().min(self.cfg.repeat_last_n);
        self.prior = tokens[tokens.len() - keep..].to_vec();
    }

    /// Adds `bias` to each listed token's logit before anything else (OpenAI's
    /// `logit_bias`); a bias of -100 or less bans the token outright, as OpenAI documents
    /// it. Ids outside the vocabulary and non-finite biases are ignored.
    pub fn set_logit_bias(&mut self, bias: &[(u32, f32)]) {
        self.logit_bias = bias
            .iter()
            .filter(|(id, b)| (*id as usize) < self.n_vocab && b.is_finite())
            .map(|&(id, b)| (id, if b <= -100.0 { f32::NEG_INFINITY } else { b }))
            .collect();
    }

    /// From now on, leaves each chosen token's logprob and its `top_n` most likely
    /// alternatives in `sink`.
    pub fn record_logprobs(&mut self, top_n: usize, sink: LogprobSink) {
        self.logprobs = Some((top_n, sink));
    }

    /// The configuration in use.
    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Picks the next token from `logits` (modified in place by the bias and penalties).
    ///
    /// Only the first `n_vocab` logits are considered; NaN logits are never chosen. Returns 0
    /// if `logits` is empty.
    pub fn sample(&mut self, logits: &mut [f32], recent_tokens: &[u32]) -> u32 {
        let n = logits.len().min(self.n_vocab);
        let logits = &mut logits[..n];
        for l in logits.iter_mut().filter(|l| l.is_nan()) {
            *l = f32::NEG_INFINITY;
        }
        for &(id, b) in &self.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += b;
            }
        }
        self.apply_penalties(logits, recent_tokens);
        let token = self.choose(logits);
        if let Some((top_n, sink)) = &self.logprobs {
            *sink.borrow_mut() = Some(logprobs_of(logits, token, *top_n));
        }
        token
    }

    /// Picks a token from the biased and penalised logits.
    fn choose(&mut self, logits: &[f32]) -> u32 {
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

    /// llama.cpp's penalties sampler: for each token seen `c` times among the last
    /// `repeat_last_n`, the repeat penalty divides a positive logit (multiplies a negative
    /// one), then `c × frequency + presence` is subtracted.
    fn apply_penalties(&self, logits: &mut [f32], recent: &[u32]) {
        let (p, freq, presence) = (
            self.cfg.repeat_penalty,
            self.cfg.frequency_penalty,
            self.cfg.presence_penalty,
        );
        let off = p == 1.0 && freq == 0.0 && presence == 0.0;
        if off || self.cfg.repeat_last_n == 0 {
            return;
        }
        let n = self.cfg.repeat_last_n;
        let from_recent = recent.len().min(n);
        let from_prior = (n - from_recent).min(self.prior.len());
        let mut seen = Vec::with_capacity(from_prior + from_recent);
        seen.extend_from_slice(&self.prior[self.prior.len() - from_prior..]);
        seen.extend_from_slice(&recent[recent.len() - from_recent..]);
        seen.sort_unstable();
        for run in seen.chunk_by(|a, b| a == b) {
            if let Some(l) = logits.get_mut(run[0] as usize) {
                *l = if *l > 0.0 { *l / p } else { *l * p };
                *l -= run.len() as f32 * freq + presence;
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

/// The log-softmax of `logits` at `token`, and the `top_n` largest.
fn logprobs_of(logits: &[f32], token: u32, top_n: usize) -> TokenLogprobs {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return TokenLogprobs {
            logprob: f32::NEG_INFINITY,
            top: Vec::new(),
        };
    }
    let total: f64 = logits.iter().map(|&l| exp64(f64::from(l - max))).sum();
    // total >= 1 (the largest term is 1), so ln(total) = -ln(1 / total) with 1/total in (0, 1].
    let log_total = -ln64(1.0 / total);
    let lp = |l: f32| (f64::from(l - max) - log_total).min(0.0) as f32;
    let mut top: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l))
        .collect();
    let k = top_n.min(top.len());
    if k > 0 && k < top.len() {
        top.select_nth_unstable_by(k - 1, by_logit_desc);
    }
    top.truncate(k);
    top.sort_unstable_by(by_logit_desc);
    TokenLogprobs {
        logprob: logits
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |&l| lp(l)),
        top: top.into_iter().map(|(id, l)| (id, lp(l))).collect(),
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
    // 2^k straight from its exponent bits while it is a normal number (logprobs take an
    // exp of every logit of the vocabulary per token); the same value repeated halving
    // gives, so sampling draws are unchanged.
    if (-1022..=1023).contains(&k) {
        return sum * f64::from_bits(((k + 1023) as u64) << 52);
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
    ln64(f64::from(x)) as f32
}

/// [`libm_ln`] in `f64`.
fn ln64(x: f64) -> f64 {
    let (mut lo, mut hi) = (-745.0f64, 0.0f64);
    for _ in 0..80 {
        let mid = 0.5 * (lo + hi);
        if exp64(mid) < x { lo = mid } else { hi = mid }
    }
    0.5 * (lo + hi)
}

#[cfg(test)]
#[path = "sampler_tests.rs"]
mod tests;
