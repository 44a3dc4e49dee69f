//! The layer-prefix cache's policy: when the worker unloads a sealed model (least recently
//! used for another, or its keep-alive ran out), the guest may keep the plaintext of its
//! first sealed layers (the GGUF header and embeddings, then blocks 0..K) in its private
//! memory; the model's next load streams and decrypts only the layers after them
//! (`GuestVm::unload_model_keeping`, `SealedLoadOptions::resume`).
//!
//! How many: the zero-stall condition of a per-layer pipeline. A cold start that computes
//! blocks 0..K of the prompt from the kept prefix while the rest arrives never waits for a
//! layer if computing those K blocks takes at least as long as loading and decrypting
//! everything after them; so K is the smallest count for which
//! `K × compute(block, prompt) ≥ load(rest)`, or as many as the budget and the cap allow.
//! The numbers come from the worker: load+decrypt time per byte from the wall time of the
//! model's last load (streaming and the guest's unsealing, which are serial in the daemon),
//! and compute per block per prompt token from the guest's prefill timings of the model's
//! requests (`EndOfStream::timings.prompt_ns` over the prompt tokens it evaluated, divided
//! by the block count), at the expected prompt length (`prompt_tokens`, else the mean of
//! the model's prompts so far). A cold start's first request runs as its model arrives
//! (the worker's pipelined load): its prefill time includes waits for layers and its load
//! time includes compute, so both overstate their part. The load still counts (an upper
//! bound: K comes out larger, never short of zero stall); its prefill counts only while no
//! request on the resident model measured compute alone.

use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// `[guest.layer_prefix]`.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerPrefixSection {
    pub enabled: Option<bool>,
    pub max_layers: Option<u32>,
    pub prompt_tokens: Option<u32>,
}

/// The layer-prefix cache's settings, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerPrefixConfig {
    /// Keep prefixes at all (`enabled`, default true).
    pub enabled: bool,
    /// The most blocks a prefix keeps (`max_layers`; none: as the zero-stall condition asks).
    pub max_blocks: Option<u32>,
    /// The prompt length K is chosen for (`prompt_tokens`; none: the model's mean so far).
    pub prompt_tokens: Option<u32>,
}

impl Default for LayerPrefixConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_blocks: None,
            prompt_tokens: None,
        }
    }
}

impl From<LayerPrefixSection> for LayerPrefixConfig {
    fn from(s: LayerPrefixSection) -> Self {
        let d = Self::default();
        Self {
            // A cap of 0 keeps nothing: the same as off.
            enabled: s.enabled.unwrap_or(d.enabled) && s.max_layers != Some(0),
            max_blocks: s.max_layers,
            prompt_tokens: s.prompt_tokens.filter(|&n| n > 0),
        }
    }
}

/// What the worker measured of one model.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LayerTimes {
    /// The last whole load: wall time and plaintext bytes.
    load: Option<(Duration, u64)>,
    /// Prefill over all requests: guest time, tokens evaluated, prompts.
    prefill_ns: u64,
    prefill_tokens: u64,
    prompts: u64,
    /// The same, of first requests that ran as their model arrived (an upper bound).
    overlapped: (u64, u64, u64),
}

impl LayerTimes {
    /// A whole load of `bytes` took `took`.
    pub fn loaded(&mut self, took: Duration, bytes: u64) {
        self.load = Some((took, bytes));
    }

    /// A request evaluated `tokens` prompt tokens in `ns` of the guest's time.
    pub fn prefilled(&mut self, ns: u64, tokens: u64) {
        if tokens > 0 && ns > 0 {
            self.prefill_ns += ns;
            self.prefill_tokens += tokens;
            self.prompts += 1;
        }
    }

    /// A first request that ran while its model arrived evaluated `tokens` prompt tokens
    /// in `ns` (waits for layers included).
    pub fn prefilled_while_loading(&mut self, ns: u64, tokens: u64) {
        if tokens > 0 && ns > 0 {
            let o = &mut self.overlapped;
            *o = (o.0 + ns, o.1 + tokens, o.2 + 1);
        }
    }

    /// Prefill time, tokens and prompts: of requests on the resident model if any, else of
    /// those that overlapped a load.
    fn prefill(&self) -> (u64, u64, u64) {
        match self.prefill_tokens {
            0 => self.overlapped,
            _ => (self.prefill_ns, self.prefill_tokens, self.prompts),
        }
    }
}

/// The prefix to keep, and the numbers it was chosen from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    /// Sealed layers to keep (the header-and-embeddings layer, then `blocks` blocks).
    pub keep_layers: u32,
    pub blocks: u32,
    /// Compute of one block for the expected prompt, ns.
    pub block_compute_ns: u64,
    /// Load and decrypt of an average block, ns.
    pub block_load_ns: u64,
    pub prompt_tokens: u64,
    /// Whether the kept blocks' compute covers the rest's load (else the budget or the cap
    /// stopped short, or even every block would not).
    pub stall_free: bool,
}

/// Chooses the prefix of a sealed model whose layers are `layers` bytes each (header and
/// embeddings, the blocks, the output) from `times`, keeping at most `max_bytes`; `None`
/// when nothing can be chosen (no load or prefill measured, or no room).
pub fn choose(
    layers: &[u64],
    times: &LayerTimes,
    config: &LayerPrefixConfig,
    max_bytes: u64,
) -> Option<Choice> {
    let blocks = layers.len().checked_sub(2).filter(|&b| b > 0)?;
    let (took, loaded) = times.load.filter(|(_, b)| *b > 0)?;
    let (prefill_ns, prefill_tokens, prompts) = times.prefill();
    if !config.enabled || prefill_tokens == 0 {
        return None;
    }
    let prompt = match config.prompt_tokens {
        Some(n) => u64::from(n),
        None => prefill_tokens.div_ceil(prompts),
    };
    let per_token_block = prefill_ns as f64 / prefill_tokens as f64 / blocks as f64;
    let compute = per_token_block * prompt as f64;
    let ns_per_byte = took.as_nanos() as f64 / loaded as f64;
    let rest = |k: usize| layers[k..].iter().sum::<u64>() as f64 * ns_per_byte;
    // `k` sealed layers kept: the first, then `k - 1` blocks; at least one layer streams.
    let needed = (1..layers.len()).find(|&k| (k - 1) as f64 * compute >= rest(k));
    let mut k = needed.unwrap_or(layers.len() - 1);
    if let Some(cap) = config.max_blocks {
        k = k.min(cap as usize + 1);
    }
    while k > 0 && layers[..k].iter().sum::<u64>() > max_bytes {
        k -= 1;
    }
    if k == 0 {
        return None;
    }
    let block_bytes = layers[1..=blocks].iter().sum::<u64>() as f64 / blocks as f64;
    Some(Choice {
        keep_layers: k as u32,
        blocks: (k - 1) as u32,
        block_compute_ns: compute as u64,
        block_load_ns: (block_bytes * ns_per_byte) as u64,
        prompt_tokens: prompt,
        stall_free: needed.is_some_and(|n| n <= k),
    })
}

/// The prefixes the worker believes the guest keeps: model name and plaintext bytes (the
/// guest drops one on its own when it needs the room; the next load's answer says so).
#[derive(Debug, Default)]
pub struct KeptPrefixes {
    kept: HashMap<String, u64>,
}

impl KeptPrefixes {
    pub fn kept(&mut self, name: &str, bytes: u64) {
        self.kept.insert(name.to_string(), bytes);
    }

    /// The model loads again: its prefix is used or gone.
    pub fn forget(&mut self, name: &str) {
        self.kept.remove(name);
    }

    pub fn bytes(&self) -> u64 {
        self.kept.values().sum()
    }
}

/// The layer-prefix cache's series in `/metrics`.
#[derive(Debug, Default)]
pub struct LayerPrefixMetrics {
    /// Prefixes kept at an unload, and loads that started after one.
    pub kept: AtomicU64,
    pub hits: AtomicU64,
    /// Layers the hits did not stream, and their sealed bytes.
    pub layers_reused: AtomicU64,
    pub bytes_not_streamed: AtomicU64,
    /// The last choice: blocks kept, and its per-block compute and load+decrypt times.
    pub blocks: AtomicU64,
    pub block_compute_ns: AtomicU64,
    pub block_load_ns: AtomicU64,
    /// Sealed cold starts whose first request ran as the model arrived, and those of them
    /// that started after a kept prefix (its blocks computed before any layer streamed).
    pub pipelined_loads: AtomicU64,
    pub pipelined_hits: AtomicU64,
}

impl LayerPrefixMetrics {
    pub fn chose(&self, c: &Choice) {
        self.blocks.store(u64::from(c.blocks), Ordering::Relaxed);
        self.block_compute_ns
            .store(c.block_compute_ns, Ordering::Relaxed);
        self.block_load_ns.store(c.block_load_ns, Ordering::Relaxed);
    }

    /// Name, type, help, value of each series.
    pub fn scalars(&self) -> [(&'static str, &'static str, &'static str, u64); 9] {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            (
                "flexserve_layer_prefix_kept_total",
                "counter",
                "Unloaded sealed models whose first layers the guest kept.",
                get(&self.kept),
            ),
            (
                "flexserve_layer_prefix_hits_total",
                "counter",
                "Sealed loads that started after a kept layer prefix.",
                get(&self.hits),
            ),
            (
                "flexserve_layer_prefix_layers_reused_total",
                "counter",
                "Sealed layers those loads took from a kept prefix instead of streaming.",
                get(&self.layers_reused),
            ),
            (
                "flexserve_layer_prefix_bytes_not_streamed_total",
                "counter",
                "Sealed bytes those loads did not stream or decrypt.",
                get(&self.bytes_not_streamed),
            ),
            (
                "flexserve_layer_prefix_blocks",
                "gauge",
                "Blocks the last kept prefix held (K, by the zero-stall condition).",
                get(&self.blocks),
            ),
            (
                "flexserve_layer_prefix_block_compute_ns",
                "gauge",
                "Measured prefill time of one block for the expected prompt, ns.",
                get(&self.block_compute_ns),
            ),
            (
                "flexserve_layer_prefix_block_load_ns",
                "gauge",
                "Measured load+decrypt time of one block, ns.",
                get(&self.block_load_ns),
            ),
            (
                "flexserve_layer_prefix_pipelined_loads_total",
                "counter",
                "Sealed cold starts whose first request's prefill ran as the layers arrived.",
                get(&self.pipelined_loads),
            ),
            (
                "flexserve_layer_prefix_pipelined_hits_total",
                "counter",
                "Of those, the ones that computed a kept prefix while the rest streamed.",
                get(&self.pipelined_hits),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// 1 MiB of header and embeddings, 10 blocks of 1 MiB, 1 MiB of output; loading takes
    /// 1 ms per MiB; each block computes in `block_ms` for the measured 100-token prompts.
    fn model(block_ms: u64) -> (Vec<u64>, LayerTimes) {
        let layers = vec![MIB; 12];
        let mut t = LayerTimes::default();
        t.loaded(Duration::from_millis(12), 12 * MIB);
        t.prefilled(block_ms * 10 * 1_000_000, 100);
        (layers, t)
    }

    #[test]
    fn k_is_the_fewest_blocks_whose_compute_covers_the_rest() {
        // Compute 1 ms per block = load 1 ms per layer: K blocks cover 11 - K layers when
        // K ≥ 5.5, so K = 6 (7 layers kept, 5 streamed).
        let (layers, t) = model(1);
        let c = choose(&layers, &t, &LayerPrefixConfig::default(), u64::MAX).unwrap();
        assert_eq!((c.keep_layers, c.blocks, c.stall_free), (7, 6, true));
        assert_eq!(
            (c.block_compute_ns, c.block_load_ns),
            (1_000_000, 1_000_000)
        );
        // Compute 4× the load: K = 3 (3 blocks' 12 ms cover the 8 layers after them; 2
        // blocks' 8 ms do not cover 9).
        let (layers, t) = model(4);
        let c = choose(&layers, &t, &LayerPrefixConfig::default(), u64::MAX).unwrap();
        assert_eq!(c.blocks, 3);
    }

    #[test]
    fn a_longer_expected_prompt_keeps_fewer_blocks() {
        let (layers, t) = model(1);
        let long = LayerPrefixConfig {
            prompt_tokens: Some(400),
            ..Default::default()
        };
        let c = choose(&layers, &t, &long, u64::MAX).unwrap();
        // 4 ms per block: the same K as 4× slower compute.
        assert_eq!((c.blocks, c.prompt_tokens), (3, 400));
    }

    #[test]
    fn the_budget_and_the_cap_stop_short_and_say_so() {
        let (layers, t) = model(1);
        let capped = LayerPrefixConfig {
            max_blocks: Some(2),
            ..Default::default()
        };
        let c = choose(&layers, &t, &capped, u64::MAX).unwrap();
        assert_eq!((c.blocks, c.stall_free), (2, false));
        let c = choose(&layers, &t, &LayerPrefixConfig::default(), 4 * MIB + 1).unwrap();
        assert_eq!((c.keep_layers, c.stall_free), (4, false));
        assert_eq!(
            choose(&layers, &t, &LayerPrefixConfig::default(), MIB - 1),
            None
        );
        // Compute far slower than any load: every block but the output is still the most.
        let (layers, mut t) = model(1);
        t.loaded(Duration::from_secs(100), 12 * MIB);
        let c = choose(&layers, &t, &LayerPrefixConfig::default(), u64::MAX).unwrap();
        assert_eq!((c.keep_layers, c.stall_free), (11, false));
    }

    #[test]
    fn nothing_is_kept_off_or_unmeasured() {
        let (layers, t) = model(1);
        let off: LayerPrefixConfig = LayerPrefixSection {
            max_layers: Some(0),
            ..Default::default()
        }
        .into();
        assert!(!off.enabled);
        assert_eq!(choose(&layers, &t, &off, u64::MAX), None);
        let mut no_prefill = LayerTimes::default();
        no_prefill.loaded(Duration::from_millis(12), 12 * MIB);
        let on = LayerPrefixConfig::default();
        assert_eq!(choose(&layers, &no_prefill, &on, u64::MAX), None);
        let mut no_load = LayerTimes::default();
        no_load.prefilled(1_000_000, 10);
        assert_eq!(choose(&layers, &no_load, &on, u64::MAX), None);
        // A prefill that overlapped a load counts only while nothing else measured one.
        let mut overlapped = no_prefill;
        overlapped.prefilled_while_loading(100_000_000, 100);
        let c = choose(&layers, &overlapped, &on, u64::MAX).unwrap();
        assert_eq!(c.block_compute_ns, 10_000_000);
        overlapped.prefilled(10_000_000, 100);
        let c = choose(&layers, &overlapped, &on, u64::MAX).unwrap();
        assert_eq!(c.block_compute_ns, 1_000_000);
        // Positive control: both measured, it chooses.
        assert!(choose(&layers, &t, &on, u64::MAX).is_some());
    }
}
