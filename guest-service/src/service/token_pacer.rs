//! When a generation's tokens go to the host.
//!
//! Every send ends in a notification: a VM exit, and a VMM thread woken to take the tokens,
//! which then runs on a core the vCPUs were using. Measured here (`bench-e2e --mode paired`
//! on the tiny test model): ~55 µs a token, 1-2 % of decode on the default model. So the
//! first token goes at once (it is the time to first token), and later ones gather for up to
//! [`FLUSH_INTERVAL_NS`]: still a smooth stream to a reader (the interval is about a display
//! frame) at a fraction of the exits. A slow model (a token every interval or slower) still
//! sends every token at once.
//!
//! Time comes from the CPU's free-running counter ([`super::Environment::ticks`]), which
//! reads without an exit. Its rate is calibrated against the VMM's clock (a read of which is
//! an exit) from the generation's start to its first token, whose time the service reads
//! anyway. Until the rate is known every token is sent at once and reads the clock again.

/// Longest a generated token waits in the guest before it is sent (20 ms).
pub const FLUSH_INTERVAL_NS: u64 = 20_000_000;

/// Shortest span of the VMM's clock a calibration uses, so that the clock's own granularity
/// and the exit's latency stay well below 1 % of it.
const MIN_CALIBRATION_NS: u64 = 1_000_000;

/// One generation's batching of tokens.
#[derive(Debug)]
pub struct TokenPacer {
    /// The VMM clock (ns) and the counter at the generation's start.
    base_ns: u64,
    base_ticks: u64,
    /// Counter ticks in [`FLUSH_INTERVAL_NS`], once calibrated.
    interval_ticks: Option<u64>,
    /// Counter reading when the oldest token not sent yet was generated.
    pending_since: Option<u64>,
    /// Whether a send has happened (the first token never waits).
    sent_any: bool,
}

impl TokenPacer {
    /// Starts pacing a generation that starts now: `now_ns` from the VMM's clock, `ticks`
    /// from the counter.
    pub fn new(now_ns: u64, ticks: u64) -> Self {
        Self {
            base_ns: now_ns,
            base_ticks: ticks,
            interval_ticks: None,
            pending_since: None,
            sent_any: false,
        }
    }

    /// Whether the counter's rate is known yet.
    pub fn calibrated(&self) -> bool {
        self.interval_ticks.is_some()
    }

    /// Learns the counter's rate from a later reading of both clocks; spans shorter than
    /// [`MIN_CALIBRATION_NS`] or a counter that did not move teach nothing.
    pub fn calibrate(&mut self, now_ns: u64, ticks: u64) {
        let ns = now_ns.saturating_sub(self.base_ns);
        let dticks = ticks.wrapping_sub(self.base_ticks);
        if ns < MIN_CALIBRATION_NS || dticks == 0 || dticks > u64::MAX / 2 {
            return;
        }
        let per_interval = u128::from(dticks) * u128::from(FLUSH_INTERVAL_NS) / u128::from(ns);
        self.interval_ticks = Some(per_interval.clamp(1, u128::from(u64::MAX)) as u64);
    }

    /// A token joined the batch at counter reading `ticks`: whether to send the batch now.
    pub fn should_send(&mut self, ticks: u64) -> bool {
        let since = *self.pending_since.get_or_insert(ticks);
        match self.interval_ticks {
            Some(interval) if self.sent_any => ticks.wrapping_sub(since) >= interval,
            _ => true,
        }
    }

    /// The batch went out.
    pub fn sent(&mut self) {
        self.sent_any = true;
        self.pending_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A counter at 3 ticks per ns: 60,000,000 ticks per interval.
    const TICKS_PER_NS: u64 = 3;

    fn calibrated() -> TokenPacer {
        let mut p = TokenPacer::new(1_000, 500);
        p.calibrate(1_000 + 5_000_000, 500 + 5_000_000 * TICKS_PER_NS);
        assert!(p.calibrated());
        p
    }

    #[test]
    fn the_first_token_goes_at_once_even_when_calibrated() {
        let mut p = calibrated();
        assert!(p.should_send(20_000_000));
    }

    #[test]
    fn later_tokens_gather_for_one_interval() {
        let mut p = calibrated();
        let interval = FLUSH_INTERVAL_NS * TICKS_PER_NS;
        let t0 = 20_000_000;
        assert!(p.should_send(t0));
        p.sent();
        // The next token opens a batch; it waits until the interval since it has passed.
        let t1 = t0 + 1_000;
        assert!(!p.should_send(t1));
        assert!(!p.should_send(t1 + interval / 2));
        assert!(!p.should_send(t1 + interval - 1));
        assert!(p.should_send(t1 + interval));
        p.sent();
        // A new batch starts from its own first token.
        assert!(!p.should_send(t1 + interval + 10));
    }

    #[test]
    fn a_batch_that_could_not_go_out_is_tried_again_with_the_next_token() {
        let mut p = calibrated();
        let interval = FLUSH_INTERVAL_NS * TICKS_PER_NS;
        assert!(p.should_send(0));
        p.sent();
        assert!(!p.should_send(100));
        // The send failed (every buffer with the host): `sent` is not called.
        assert!(p.should_send(100 + interval));
        assert!(p.should_send(100 + interval + 1));
    }

    #[test]
    fn without_a_rate_every_token_goes_at_once() {
        let mut p = TokenPacer::new(1_000, 500);
        // Too short a span to learn from, and a counter that does not move.
        p.calibrate(1_000 + MIN_CALIBRATION_NS - 1, 10_000);
        p.calibrate(1_000 + 10 * MIN_CALIBRATION_NS, 500);
        assert!(!p.calibrated());
        for t in 0..5 {
            assert!(p.should_send(t));
            p.sent();
        }
    }

    #[test]
    fn the_rate_is_the_counters_over_the_clocks() {
        let mut p = TokenPacer::new(0, u64::MAX - 1_000);
        // The counter wraps during calibration: 2 ticks per ns over 2 ms.
        p.calibrate(2_000_000, (u64::MAX - 1_000).wrapping_add(4_000_000));
        assert_eq!(p.interval_ticks, Some(2 * FLUSH_INTERVAL_NS));
    }
}
