//! How long the daemon waits for its guest (`[guest]` keys `first_token_timeout_seconds`,
//! `token_timeout_seconds`, `per_token_timeout_seconds`, `command_timeout_seconds`). A guest
//! that misses one is stopped and restarted, and the request fails (docs/virtio-llm.md,
//! "Deadlines"); unset keys keep the VMM's defaults, which are generous enough for an
//! emulated arm64 host.

use std::time::Duration;
use vmm::guest_vm::Deadlines;

/// The deadlines the config sets; `None` keeps the default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeadlineSettings {
    pub first_token: Option<Duration>,
    pub between_tokens: Option<Duration>,
    pub per_token: Option<Duration>,
    pub command: Option<Duration>,
}

impl DeadlineSettings {
    /// `base` with every deadline the config sets.
    pub fn apply(&self, base: Deadlines) -> Deadlines {
        Deadlines {
            first_token: self.first_token.unwrap_or(base.first_token),
            between_tokens: self.between_tokens.unwrap_or(base.between_tokens),
            per_token: self.per_token.unwrap_or(base.per_token),
            command: self.command.unwrap_or(base.command),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_deadlines_keep_the_defaults_and_set_ones_replace_them() {
        let base = Deadlines::GENEROUS;
        assert_eq!(DeadlineSettings::default().apply(base), base);
        let set = DeadlineSettings {
            first_token: Some(Duration::from_secs(7)),
            command: Some(Duration::from_secs(9)),
            ..DeadlineSettings::default()
        };
        let d = set.apply(base);
        assert_eq!(d.first_token, Duration::from_secs(7));
        assert_eq!(d.command, Duration::from_secs(9));
        assert_eq!(d.between_tokens, base.between_tokens);
        assert_eq!(d.per_token, base.per_token);
    }
}
