//! What the host allows a guest while one request runs: deadlines (first token, between
//! tokens, whole request) and a cap on what it may send. A guest that spins, hangs or floods
//! must not hold the host's request loop forever, so every verdict here is a plain function
//! of the events and the time they came at (tests drive it with synthetic time).

use super::Interrupt;
use std::time::{Duration, Instant};
use virtio_llm::spec::queue;

/// How long a guest may take over a request. The defaults are generous: a pKVM guest under
/// emulated arm64 (`make test-arm64`) is tens of times slower than KVM, and a missed
/// deadline costs the guest (it is stopped and restarted), so they only catch a guest that
/// is stuck, never one that is slow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    /// From the start of the wait to the first token (the prompt's evaluation).
    pub first_token: Duration,
    /// Between one token message and the next.
    pub between_tokens: Duration,
    /// The whole request is allowed `first_token` plus this for each token it may produce.
    pub per_token: Duration,
    /// For the answer to one control command (a model chunk, opening a session), and for
    /// a free buffer to send a command or request in.
    pub command: Duration,
}

impl Deadlines {
    /// The default deadlines.
    pub const GENEROUS: Self = Self {
        first_token: Duration::from_secs(120),
        between_tokens: Duration::from_secs(60),
        per_token: Duration::from_secs(5),
        command: Duration::from_secs(60),
    };

    /// How long a whole request of `max_tokens` may take.
    pub fn whole(&self, max_tokens: u32) -> Duration {
        self.first_token
            .saturating_add(self.per_token.saturating_mul(max_tokens))
    }
}

impl Default for Deadlines {
    fn default() -> Self {
        Self::GENEROUS
    }
}

/// Token messages a guest may still send once the host interrupted a request: those it had
/// already queued. It cannot have more responses in flight than the response queue has
/// entries.
pub const MAX_MESSAGES_AFTER_INTERRUPT: u64 = queue::MAX_SIZE as u64;

/// Why the host cut a request off. The guest is stopped with it: a guest that broke the
/// protocol or stopped answering is not trusted with the next request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CutOff {
    #[error(
        "the guest stopped answering: no {what} within {waited:?}; it was stopped, and a new \
         guest serves the next request (the daemon starts one; `flexserve run` can be run \
         again)"
    )]
    Unresponsive {
        what: &'static str,
        waited: Duration,
    },
    #[error(
        "the guest sent {sent} tokens for a request of at most {max}; it was stopped as \
         broken or hostile, and a new guest serves the next request"
    )]
    TooManyTokens { sent: u64, max: u64 },
    #[error(
        "the guest sent {sent} token messages for a request of at most {max}; it was \
         stopped as broken or hostile, and a new guest serves the next request"
    )]
    TooManyMessages { sent: u64, max: u64 },
    #[error(
        "the guest kept sending tokens after the request was interrupted ({sent} messages, \
         at most {MAX_MESSAGES_AFTER_INTERRUPT} may be in flight); it was stopped as broken \
         or hostile, and a new guest serves the next request"
    )]
    AfterInterrupt { sent: u64 },
}

/// What to do with a token message that passed the checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tokens {
    /// Hand it to the caller.
    Deliver,
    /// Drop it: the request was cancelled, nobody wants its tokens (a whole answer that hit
    /// its stop string must not keep collecting them).
    Discard,
}

/// One request's account: when it started, when its last token came, what it sent.
#[derive(Clone, Debug)]
pub struct RequestWatch {
    deadlines: Deadlines,
    max_tokens: u64,
    started: Instant,
    last_token: Option<Instant>,
    tokens: u64,
    messages: u64,
    interrupted: Option<Interrupt>,
    after_interrupt: u64,
}

impl RequestWatch {
    /// Starts watching a request of at most `max_tokens` tokens at `now`.
    pub fn new(deadlines: Deadlines, max_tokens: u32, now: Instant) -> Self {
        Self {
            deadlines,
            max_tokens: u64::from(max_tokens),
            started: now,
            last_token: None,
            tokens: 0,
            messages: 0,
            interrupted: None,
            after_interrupt: 0,
        }
    }

    /// The host interrupted the request (the first interrupt counts).
    pub fn interrupted(&mut self, how: Interrupt) {
        self.interrupted.get_or_insert(how);
    }

    /// A token message of `count` ids came at `now`.
    pub fn tokens(&mut self, count: usize, now: Instant) -> Result<Tokens, CutOff> {
        self.tokens = self.tokens.saturating_add(count as u64);
        self.messages += 1;
        self.last_token = Some(now);
        if self.tokens > self.max_tokens {
            return Err(CutOff::TooManyTokens {
                sent: self.tokens,
                max: self.max_tokens,
            });
        }
        // A sealed answer's last piece may come without ids; nothing else may.
        let max_messages = self.max_tokens + 1;
        if self.messages > max_messages {
            return Err(CutOff::TooManyMessages {
                sent: self.messages,
                max: max_messages,
            });
        }
        match self.interrupted {
            None => Ok(Tokens::Deliver),
            Some(how) => {
                self.after_interrupt += 1;
                if self.after_interrupt > MAX_MESSAGES_AFTER_INTERRUPT {
                    return Err(CutOff::AfterInterrupt {
                        sent: self.after_interrupt,
                    });
                }
                // Tokens a preempted request made are the session's: the caller resumes
                // from the last one.
                Ok(match how {
                    Interrupt::Cancel => Tokens::Discard,
                    Interrupt::Preempt => Tokens::Deliver,
                })
            }
        }
    }

    /// How long the host may still wait at `now` for the guest's next message, or why it
    /// must not.
    pub fn time_left(&self, now: Instant) -> Result<Duration, CutOff> {
        let whole = self
            .deadlines
            .whole(self.max_tokens.min(u64::from(u32::MAX)) as u32);
        let (what, since, limit) = match self.last_token {
            None => ("first token", self.started, self.deadlines.first_token),
            Some(t) => ("next token", t, self.deadlines.between_tokens),
        };
        let cut = |what, since: Instant, limit: Duration| {
            let waited = now.saturating_duration_since(since);
            limit
                .checked_sub(waited)
                .filter(|left| !left.is_zero())
                .ok_or(CutOff::Unresponsive {
                    what,
                    waited: limit,
                })
        };
        let token_left = cut(what, since, limit)?;
        let whole_left = cut("end of the request", self.started, whole)?;
        Ok(token_left.min(whole_left))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Deadlines the tests of a request's watch hold requests to.
    pub(in crate::guest_vm) const D: Deadlines = Deadlines {
        first_token: Duration::from_secs(10),
        between_tokens: Duration::from_secs(2),
        per_token: Duration::from_secs(1),
        command: Duration::from_secs(1),
    };

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn the_first_token_has_its_own_deadline() {
        let t0 = Instant::now();
        let w = RequestWatch::new(D, 100, t0);
        assert_eq!(w.time_left(at(t0, 4_000)), Ok(Duration::from_secs(6)));
        assert_eq!(
            w.time_left(at(t0, 10_000)),
            Err(CutOff::Unresponsive {
                what: "first token",
                waited: D.first_token
            })
        );
    }

    #[test]
    fn each_token_restarts_the_between_tokens_clock() {
        let t0 = Instant::now();
        let mut w = RequestWatch::new(D, 100, t0);
        assert_eq!(w.tokens(1, at(t0, 9_000)), Ok(Tokens::Deliver));
        assert_eq!(w.time_left(at(t0, 10_500)), Ok(Duration::from_millis(500)));
        assert_eq!(w.tokens(1, at(t0, 10_900)), Ok(Tokens::Deliver));
        assert!(w.time_left(at(t0, 12_000)).is_ok());
        assert!(matches!(
            w.time_left(at(t0, 12_900)),
            Err(CutOff::Unresponsive {
                what: "next token",
                ..
            })
        ));
    }

    #[test]
    fn a_trickle_of_tokens_still_ends_at_the_whole_request_deadline() {
        let t0 = Instant::now();
        let mut w = RequestWatch::new(D, 100, t0);
        // 10 s + 100 × 1 s in all, however steadily the tokens come.
        let mut ms = 0;
        let cut = loop {
            ms += 1_500;
            w.tokens(1, at(t0, ms)).unwrap();
            if let Err(e) = w.time_left(at(t0, ms + 1)) {
                break e;
            }
        };
        assert_eq!(ms, 111_000);
        assert!(matches!(
            cut,
            CutOff::Unresponsive {
                what: "end of the request",
                ..
            }
        ));
    }

    #[test]
    fn more_tokens_than_asked_for_is_a_violation() {
        let t0 = Instant::now();
        let mut w = RequestWatch::new(D, 5, t0);
        assert_eq!(w.tokens(4, t0), Ok(Tokens::Deliver));
        assert_eq!(w.tokens(1, t0), Ok(Tokens::Deliver));
        assert_eq!(
            w.tokens(1, t0),
            Err(CutOff::TooManyTokens { sent: 6, max: 5 })
        );
    }

    #[test]
    fn a_flood_of_empty_messages_is_a_violation() {
        let t0 = Instant::now();
        let mut w = RequestWatch::new(D, 2, t0);
        for _ in 0..3 {
            assert_eq!(w.tokens(0, t0), Ok(Tokens::Deliver));
        }
        assert_eq!(
            w.tokens(0, t0),
            Err(CutOff::TooManyMessages { sent: 4, max: 3 })
        );
    }

    #[test]
    fn tokens_after_a_cancel_are_dropped_and_bounded() {
        let t0 = Instant::now();
        let mut w = RequestWatch::new(D, u32::MAX, t0);
        w.tokens(1, t0).unwrap();
        w.interrupted(Interrupt::Cancel);
        w.interrupted(Interrupt::Preempt); // the first interrupt counts
        for _ in 0..MAX_MESSAGES_AFTER_INTERRUPT {
            assert_eq!(w.tokens(1, t0), Ok(Tokens::Discard));
        }
        assert!(matches!(
            w.tokens(1, t0),
            Err(CutOff::AfterInterrupt { .. })
        ));
    }

    #[test]
    fn tokens_after_a_preempt_are_delivered_but_bounded() {
        let t0 = Instant::now();
        let mut w = RequestWatch::new(D, u32::MAX, t0);
        w.interrupted(Interrupt::Preempt);
        for _ in 0..MAX_MESSAGES_AFTER_INTERRUPT {
            assert_eq!(w.tokens(1, t0), Ok(Tokens::Deliver));
        }
        assert!(w.tokens(1, t0).is_err());
    }

    #[test]
    fn the_defaults_give_a_slow_guest_room() {
        let d = Deadlines::GENEROUS;
        assert!(d.first_token >= Duration::from_secs(120));
        assert!(d.between_tokens >= Duration::from_secs(60));
        assert_eq!(d.whole(u32::MAX), d.whole(u32::MAX), "no overflow");
        assert!(d.whole(256) > Duration::from_secs(20 * 60));
    }
}
