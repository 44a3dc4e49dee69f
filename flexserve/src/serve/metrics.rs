//! Counters, gauges and histograms of the daemon, rendered as Prometheus text for
//! `GET /metrics`.

use super::residency::{Residency, ResidentView};
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use vmm::hypervisor::IsolationLevel;

/// State of the guest VM as `/health` and `/metrics` report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum GuestState {
    Down = 0,
    Starting = 1,
    Up = 2,
}

impl GuestState {
    pub fn name(self) -> &'static str {
        match self {
            GuestState::Down => "down",
            GuestState::Starting => "starting",
            GuestState::Up => "up",
        }
    }
}

/// How a request ended.
#[derive(Clone, Copy, Debug)]
pub enum Outcome {
    Ok,
    /// 4xx: bad input, unknown model.
    Invalid,
    /// 429: queue full.
    Rejected,
    /// The client went away.
    Cancelled,
    /// The guest failed (crash, refusal).
    Failed,
}

const OUTCOMES: [(&str, usize); 5] = [
    ("ok", 0),
    ("invalid", 1),
    ("rejected", 2),
    ("cancelled", 3),
    ("failed", 4),
];

/// A histogram with fixed bucket bounds.
pub struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<(Vec<u64>, f64, u64)>,
}

impl Histogram {
    const fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            inner: Mutex::new((Vec::new(), 0.0, 0)),
        }
    }

    pub fn observe(&self, v: f64) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.0.is_empty() {
            g.0 = vec![0; self.bounds.len()];
        }
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                g.0[i] += 1;
            }
        }
        g.1 += v;
        g.2 += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, b) in self.bounds.iter().enumerate() {
            let n = g.0.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", g.2);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", g.1, g.2);
    }
}

const TTFT_BOUNDS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const DECODE_BOUNDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Everything `/metrics` shows.
pub struct Metrics {
    requests: [AtomicU64; 5],
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens the guest took from kept KV caches instead of evaluating them.
    pub cached_tokens: AtomicU64,
    /// Kept KV caches handed to the host sealed, brought back, recomputed instead, and
    /// restores the guest refused (`vmm::guest_vm::KvCounters`).
    pub kv_evictions: AtomicU64,
    pub kv_restores: AtomicU64,
    pub kv_recomputes: AtomicU64,
    pub kv_refused: AtomicU64,
    /// KV caches the guest dropped to make room rather than hand over sealed.
    pub kv_dropped: AtomicU64,
    /// The guest's predicted restore and recompute times (µs) for the last evicted cache
    /// a request found.
    pub kv_predicted_restore_us: AtomicU64,
    pub kv_predicted_recompute_us: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub guest_state: AtomicU64,
    pub guest_starts: AtomicU64,
    pub guest_crashes: AtomicU64,
    /// Models loaded into a running guest, and unloaded to make room for another.
    pub model_loads: AtomicU64,
    pub model_evictions: AtomicU64,
    /// Of `model_loads`, those made ahead of a request, for the next model of a workflow.
    pub model_prefetches: AtomicU64,
    /// Models unloaded because their keep-alive ran out, and guests stopped because no
    /// model was left.
    pub model_idle_unloads: AtomicU64,
    pub guest_idle_stops: AtomicU64,
    /// The guest is down because it was idle (stopped on purpose, not failed).
    guest_idle: AtomicBool,
    /// Models resident in the guest.
    pub models_resident: AtomicU64,
    /// Which models, as the worker last published them ([`Metrics::set_resident`]).
    resident: Mutex<Vec<ResidentView>>,
    /// The last guest's isolation level: 0 before any guest, else 1 + its index in
    /// `IsolationLevel::ALL`.
    isolation: AtomicU64,
    pub queue_depth: AtomicU64,
    pub memory_max_bytes: AtomicU64,
    pub memory_budget_bytes: AtomicU64,
    pub memory_used_bytes: AtomicU64,
    pub memory_held_bytes: AtomicU64,
    /// The layer-prefix cache's counters and its last choice.
    pub layer_prefix: super::layer_prefix::LayerPrefixMetrics,
    /// Requests run together (`limits.batch`).
    pub batch: super::worker::BatchMetrics,
    /// Time from the request's arrival to its first token, seconds.
    pub ttft: Histogram,
    /// Guest decode time per generated token after the first, seconds.
    pub decode: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Default::default(),
            prompt_tokens: AtomicU64::new(0),
            cached_tokens: AtomicU64::new(0),
            kv_evictions: AtomicU64::new(0),
            kv_restores: AtomicU64::new(0),
            kv_recomputes: AtomicU64::new(0),
            kv_refused: AtomicU64::new(0),
            kv_dropped: AtomicU64::new(0),
            kv_predicted_restore_us: AtomicU64::new(0),
            kv_predicted_recompute_us: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            guest_state: AtomicU64::new(GuestState::Down as u64),
            guest_starts: AtomicU64::new(0),
            guest_crashes: AtomicU64::new(0),
            model_loads: AtomicU64::new(0),
            model_evictions: AtomicU64::new(0),
            model_prefetches: AtomicU64::new(0),
            model_idle_unloads: AtomicU64::new(0),
            guest_idle_stops: AtomicU64::new(0),
            guest_idle: AtomicBool::new(false),
            models_resident: AtomicU64::new(0),
            resident: Default::default(),
            isolation: AtomicU64::new(0),
            queue_depth: AtomicU64::new(0),
            memory_max_bytes: AtomicU64::new(0),
            memory_budget_bytes: AtomicU64::new(0),
            memory_used_bytes: AtomicU64::new(0),
            memory_held_bytes: AtomicU64::new(0),
            layer_prefix: Default::default(),
            batch: Default::default(),
            ttft: Histogram::new(TTFT_BOUNDS),
            decode: Histogram::new(DECODE_BOUNDS),
        }
    }
}

impl Metrics {
    /// The worker's resident models changed (`None`: no guest, nothing resident).
    pub fn set_resident(&self, residency: Option<&Residency>) {
        let view = residency.map_or_else(Vec::new, |r| {
            r.view(std::time::Instant::now(), std::time::SystemTime::now())
        });
        self.models_resident
            .store(view.len() as u64, Ordering::Relaxed);
        *self.resident.lock().unwrap_or_else(|e| e.into_inner()) = view;
    }

    /// The resident models as last published.
    pub fn resident(&self) -> Vec<ResidentView> {
        self.resident
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn request(&self, outcome: Outcome) {
        self.requests[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn requests(&self, outcome: Outcome) -> u64 {
        self.requests[outcome as usize].load(Ordering::Relaxed)
    }

    /// A guest booting after an idle stop is still "idle" (see [`Self::resting`]) until it
    /// is up or has failed.
    pub fn set_guest(&self, s: GuestState) {
        if s != GuestState::Starting {
            self.guest_idle.store(false, Ordering::Relaxed);
        }
        self.guest_state.store(s as u64, Ordering::Relaxed);
    }

    /// The guest was stopped because no model was resident any more: down, but not failed.
    pub fn set_guest_idle(&self) {
        self.guest_state
            .store(GuestState::Down as u64, Ordering::Relaxed);
        self.guest_idle.store(true, Ordering::Relaxed);
    }

    /// Whether the guest is down because it was idle.
    pub fn guest_idle(&self) -> bool {
        self.guest_idle.load(Ordering::Relaxed) && self.guest() == GuestState::Down
    }

    /// Whether the guest is down because it was idle, or booting again after that: nothing
    /// has failed (a failed boot is `Down` without it).
    pub fn resting(&self) -> bool {
        self.guest_idle.load(Ordering::Relaxed) && self.guest() != GuestState::Up
    }

    /// Records the isolation level the guest got.
    pub fn set_isolation(&self, level: IsolationLevel) {
        let index = IsolationLevel::ALL.iter().position(|l| *l == level);
        self.isolation
            .store(index.map_or(0, |i| i as u64 + 1), Ordering::Relaxed);
    }

    /// The isolation level of the last guest (`None` before any guest started).
    pub fn isolation(&self) -> Option<IsolationLevel> {
        let i = self.isolation.load(Ordering::Relaxed) as usize;
        i.checked_sub(1)
            .and_then(|i| IsolationLevel::ALL.get(i).copied())
    }

    pub fn guest(&self) -> GuestState {
        match self.guest_state.load(Ordering::Relaxed) {
            2 => GuestState::Up,
            1 => GuestState::Starting,
            _ => GuestState::Down,
        }
    }

    /// KV eviction's counters.
    fn kv_scalars(&self) -> [(&'static str, &'static str, &'static str, u64); 7] {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            (
                "flexserve_kv_evictions_total",
                "counter",
                "Kept KV caches sealed in the guest and stored on the host.",
                get(&self.kv_evictions),
            ),
            (
                "flexserve_kv_restores_total",
                "counter",
                "Evicted KV caches brought back into the guest, every block authenticated.",
                get(&self.kv_restores),
            ),
            (
                "flexserve_kv_recomputes_total",
                "counter",
                "Requests that evaluated an evicted KV cache's tokens again (predicted \
                 cheaper by the guest's measurements, or forced).",
                get(&self.kv_recomputes),
            ),
            (
                "flexserve_kv_restores_refused_total",
                "counter",
                "Restores the guest refused (a block missing, out of order or not \
                 authentic); the request recomputed.",
                get(&self.kv_refused),
            ),
            (
                "flexserve_kv_caches_dropped_total",
                "counter",
                "KV caches the guest dropped to make room rather than hand over sealed (the \
                 daemon could not evict them first, e.g. while a batch ran); their next \
                 request evaluates its prompt again.",
                get(&self.kv_dropped),
            ),
            (
                "flexserve_kv_predicted_restore_microseconds",
                "gauge",
                "The guest's predicted restore time of the last evicted KV cache a request \
                 found (0: no restore measured yet).",
                get(&self.kv_predicted_restore_us),
            ),
            (
                "flexserve_kv_predicted_recompute_microseconds",
                "gauge",
                "The guest's predicted time to evaluate the same cache's tokens again, from \
                 its prefill measurements at that model's context lengths (0: none yet).",
                get(&self.kv_predicted_recompute_us),
            ),
        ]
    }

    /// The single-valued series: name, type, help, value.
    fn scalars(&self) -> [(&'static str, &'static str, &'static str, u64); 15] {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            (
                "flexserve_prompt_tokens_total",
                "counter",
                "Prompt tokens processed.",
                get(&self.prompt_tokens),
            ),
            (
                "flexserve_prompt_tokens_cached_total",
                "counter",
                "Prompt tokens taken from a kept KV cache instead of evaluated.",
                get(&self.cached_tokens),
            ),
            (
                "flexserve_generated_tokens_total",
                "counter",
                "Tokens generated.",
                get(&self.generated_tokens),
            ),
            (
                "flexserve_queue_depth",
                "gauge",
                "Requests waiting for the guest.",
                get(&self.queue_depth),
            ),
            (
                "flexserve_guest_up",
                "gauge",
                "1 when the guest VM is up with a model loaded.",
                u64::from(self.guest() == GuestState::Up),
            ),
            (
                "flexserve_guest_starts_total",
                "counter",
                "Guest VM boots.",
                get(&self.guest_starts),
            ),
            (
                "flexserve_guest_crashes_total",
                "counter",
                "Guest VMs that died on their own.",
                get(&self.guest_crashes),
            ),
            (
                "flexserve_guest_model_loads_total",
                "counter",
                "Models loaded into the guest.",
                get(&self.model_loads),
            ),
            (
                "flexserve_guest_model_evictions_total",
                "counter",
                "Models unloaded from the guest to make room for another.",
                get(&self.model_evictions),
            ),
            (
                "flexserve_guest_model_prefetches_total",
                "counter",
                "Models loaded ahead of their request, as the next model of a workflow.",
                get(&self.model_prefetches),
            ),
            (
                "flexserve_guest_models_resident",
                "gauge",
                "Models the guest holds.",
                get(&self.models_resident),
            ),
            (
                "flexserve_memory_max_bytes",
                "gauge",
                "Most private memory a guest may be given (guest.memory_max).",
                get(&self.memory_max_bytes),
            ),
            (
                "flexserve_memory_budget_bytes",
                "gauge",
                "Private memory of the running guest.",
                get(&self.memory_budget_bytes),
            ),
            (
                "flexserve_memory_used_bytes",
                "gauge",
                "Private memory the running guest has allocated.",
                get(&self.memory_used_bytes),
            ),
            (
                "flexserve_memory_held_bytes",
                "gauge",
                "Private memory the running guest holds, as the host measures it (allocated or \
             freed but not yet given back).",
                get(&self.memory_held_bytes),
            ),
        ]
    }

    /// The single-valued series of idle unloads and stops (`models.keep_alive`).
    fn idle_scalars(&self) -> [(&'static str, &'static str, &'static str, u64); 3] {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            (
                "flexserve_guest_idle",
                "gauge",
                "1 when the guest VM is stopped because no model was resident (keep_alive).",
                u64::from(self.guest_idle()),
            ),
            (
                "flexserve_guest_idle_stops_total",
                "counter",
                "Guest VMs stopped because their last model's keep_alive ran out.",
                get(&self.guest_idle_stops),
            ),
            (
                "flexserve_guest_model_idle_unloads_total",
                "counter",
                "Models unloaded from the guest because their keep_alive ran out.",
                get(&self.model_idle_unloads),
            ),
        ]
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        o.push_str("# HELP flexserve_requests_total Generation requests by outcome.\n");
        o.push_str("# TYPE flexserve_requests_total counter\n");
        for (name, i) in OUTCOMES {
            let _ = writeln!(
                o,
                "flexserve_requests_total{{outcome=\"{name}\"}} {}",
                get(&self.requests[i])
            );
        }
        o.push_str(
            "# HELP flexserve_guest_isolation 1 for the isolation level the guest got (none, \
             private-memory, protected-vm); all 0 before a guest started.\n\
             # TYPE flexserve_guest_isolation gauge\n",
        );
        let got = self.isolation();
        for level in IsolationLevel::ALL {
            let _ = writeln!(
                o,
                "flexserve_guest_isolation{{level=\"{level}\"}} {}",
                u8::from(got == Some(level))
            );
        }
        for (name, kind, help, v) in self
            .scalars()
            .into_iter()
            .chain(self.kv_scalars())
            .chain(self.idle_scalars())
            .chain(self.layer_prefix.scalars())
            .chain(self.batch.scalars())
        {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        self.ttft.render(
            &mut o,
            "flexserve_ttft_seconds",
            "Time from a request's arrival to its first token.",
        );
        self.decode.render(
            &mut o,
            "flexserve_decode_seconds_per_token",
            "Guest decode time per generated token.",
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.request(Outcome::Ok);
        m.request(Outcome::Rejected);
        m.ttft.observe(0.03);
        m.ttft.observe(2.0);
        let t = m.render();
        assert!(
            t.contains("flexserve_requests_total{outcome=\"ok\"} 1"),
            "{t}"
        );
        assert!(t.contains("flexserve_requests_total{outcome=\"rejected\"} 1"));
        assert!(t.contains("flexserve_ttft_seconds_bucket{le=\"0.05\"} 1"));
        assert!(t.contains("flexserve_ttft_seconds_bucket{le=\"2.5\"} 2"));
        assert!(t.contains("flexserve_ttft_seconds_count 2"));
        assert!(t.contains("flexserve_guest_up 0"));
        assert!(t.contains("flexserve_batch_requests 0"), "{t}");
        assert!(t.contains("flexserve_guest_idle 0"), "{t}");
        m.set_guest_idle();
        assert!(m.render().contains("flexserve_guest_idle 1"));
        m.set_guest(GuestState::Starting);
        assert!(!m.guest_idle() && m.resting());
        m.set_guest(GuestState::Down);
        assert!(!m.resting());
        assert!(
            t.contains("flexserve_guest_isolation{level=\"none\"} 0"),
            "{t}"
        );
        m.set_isolation(IsolationLevel::PrivateMemory);
        let t = m.render();
        assert!(
            t.contains("flexserve_guest_isolation{level=\"private-memory\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("flexserve_guest_isolation{level=\"none\"} 0"),
            "{t}"
        );
    }
}
