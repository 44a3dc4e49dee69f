//! The `n` choices of one OpenAI request, run one after another through the one
//! generation path ([`generation::submit`]), each a job of its own in the fair queue.
//!
//! Why one after another: when a choice ends its session closes, and the guest keeps its
//! KV cache (`guest-service/src/service/prefix_cache.rs`); the next choice's prompt is the
//! same tokens, so the guest goes on from that cache and evaluates only the prompt's last
//! tokens again. The prompt's prefill is shared without a new guest command, and each choice
//! is exactly the answer `n: 1` gives with its seed. (Queued at once, the choices could
//! run side by side, each evaluating the whole prompt.) Another client's request may run
//! between two choices: the queue stays fair, and a kept cache it evicts costs one prefill.
//! A later choice the queue refuses (full, or the client over its share) ends the answer
//! with that error, as a failure in the middle of one choice does.

use super::Shared;
use super::error::ApiError;
use super::generation::{self, Pending};
use super::listen::ConnId;
use super::openai::choices::{add_usage, seed_of};
use super::openai::{Endpoint, GenRequest, Usage};
use super::scheduler::Principal;
use std::sync::Arc;
use std::time::Instant;

/// The choices of one request: the one running and what the next ones need.
pub struct Choices {
    s: Arc<Shared>,
    conn: (Principal, ConnId),
    endpoint: Endpoint,
    /// The request each further choice is submitted as, with its own seed.
    template: GenRequest,
    /// The number of the choice running now (0-based) and its job.
    pub index: u32,
    pub current: Pending,
    /// The answer's seed: choice 0's, returned to the client; choice `i` samples with
    /// [`seed_of`]`(seed, i)`.
    pub seed: u64,
    usage: Option<Usage>,
}

impl Choices {
    /// The choices of a request whose first choice is `first` (already queued).
    pub fn new(
        s: Arc<Shared>,
        conn: (Principal, ConnId),
        endpoint: Endpoint,
        first: Pending,
    ) -> Self {
        Self {
            s,
            conn,
            endpoint,
            template: first.req.clone(),
            index: 0,
            seed: first.seed,
            current: first,
            usage: None,
        }
    }

    /// Counts the usage of the choice that just ended.
    pub fn ended(&mut self, usage: Usage) {
        self.usage = Some(add_usage(self.usage, usage));
    }

    /// The usage of the choices ended so far.
    pub fn usage(&self) -> Usage {
        self.usage.unwrap_or_default()
    }

    /// Whether the choice running now is the last.
    pub fn is_last(&self) -> bool {
        self.index + 1 >= self.template.n
    }

    /// Queues the next choice, once the one before it has ended (so that its KV cache is
    /// kept in the guest for this one's prompt).
    pub async fn advance(&mut self) -> Result<(), ApiError> {
        let index = self.index + 1;
        let mut req = self.template.clone();
        req.seed = Some(seed_of(self.seed, index));
        let arrived = Instant::now();
        let queued = generation::submit(
            &self.s,
            self.conn.clone(),
            self.endpoint,
            req,
            None,
            arrived,
        );
        self.current = queued.await.inspect_err(|e| {
            self.s.metrics.request(generation::refused_outcome(e));
        })?;
        self.index = index;
        Ok(())
    }
}
