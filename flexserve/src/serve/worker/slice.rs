//! One job's turn in the guest (a slice), and what its end or failure does to the job. The
//! batched path (`batch.rs`) books its requests' tokens, ends and failures with the same
//! functions.

use super::{Active, Event, Job, Sliced, Worker, is_fatal, sealed};
use crate::serve::error::ApiError;
use crate::serve::metrics::{GuestState, Metrics};
use std::sync::atomic::Ordering;
use virtio_llm::Status;
use virtio_llm::wire::request::Prompt;
use virtio_llm::wire::response::{EndOfStream, StopReason, Tokens};
use vmm::guest_vm::{GuestError, Interrupt};

/// Hands `t` to the job's handler; the first tokens the job gets set its TTFT.
pub(super) fn deliver(m: &Metrics, job: &Job, first_seen: &mut bool, t: &Tokens) {
    if !*first_seen {
        *first_seen = true;
        m.ttft.observe(job.arrived.elapsed().as_secs_f64());
    }
    let _ = job.events.send(Event::Tokens {
        ids: t.token_ids.clone(),
        text: t.text.clone(),
        logprobs: t.logprobs.clone(),
    });
}

/// Whether the job's client is gone (or a stop sequence ended it).
pub(super) fn gone(job: &Job) -> bool {
    job.cancel.load(Ordering::Relaxed) || job.events.is_closed()
}

impl Worker {
    /// Runs `a` until it ends, or, while other jobs want the guest (`others` active ones,
    /// or any in the queue), for about `limits.slice_tokens` tokens: the generation is then
    /// stopped between two tokens and resumed later on its session from its last token,
    /// which the guest has not yet fed back (greedy output is the same as in one go).
    pub(super) fn slice(&mut self, mut a: Active, others: bool) -> Sliced {
        let shared = self.shared.clone();
        let m = &shared.metrics;
        let slice_tokens = shared.config.slice_tokens;
        let request = self.next_request;
        self.next_request += 1;
        if gone(&a.job) {
            // The client went away while waiting for its turn.
            self.finish(a, StopReason::Cancelled);
            return Sliced::Finished;
        }
        let Some(running) = self.vm.as_mut() else {
            self.fail_lost(a.job);
            return Sliced::Finished;
        };
        let req = a.next_request(request);
        let job = &a.job;
        let in_slice = std::cell::Cell::new(0u32);
        let mut last = None;
        let first_seen = &mut a.first_seen;
        let mut on_tokens = |t: &Tokens| {
            in_slice.set(in_slice.get() + t.token_ids.len() as u32);
            last = t.token_ids.last().copied().or(last);
            deliver(m, job, first_seen, t);
        };
        let interrupt = || {
            let turn_over = in_slice.get() >= slice_tokens && (others || !shared.queue.is_empty());
            if gone(job) {
                Some(Interrupt::Cancel)
            } else {
                turn_over.then_some(Interrupt::Preempt)
            }
        };
        let end = match a.arriving {
            true => self.arrive(&job.model, a.guest_model, &req, &mut on_tokens, &interrupt),
            false => running
                .vm
                .generate_messages(&req, &mut on_tokens, &interrupt),
        };
        if a.arriving {
            Self::arrived(&mut a);
        }
        a.slices += 1;
        match end {
            Ok(end) => self.slice_ended(a, &end, last),
            Err(e) => self.slice_failed(a, e, request),
        }
    }

    /// Books a slice (request `request`) that failed with `e`: a guest that is unusable
    /// fails the job and is to be restarted; a request the guest refused fails only it.
    pub(super) fn slice_failed(&mut self, a: Active, e: GuestError, request: u64) -> Sliced {
        let m = &self.shared.metrics;
        match e {
            e if is_fatal(&e) => {
                m.guest_crashes.fetch_add(1, Ordering::Relaxed);
                m.set_guest(GuestState::Down);
                eprintln!("[flexserve] the guest VM failed during request {request}: {e}");
                let model = a.job.model.clone();
                self.fail_lost_with(a.job, &e.to_string());
                Sliced::GuestLost(model)
            }
            GuestError::Request {
                status: Status::ContextFull,
                ..
            } if a.slices > 1 => {
                // The context filled up at a slice boundary: the end, not an error.
                self.finish(a, StopReason::ContextFull);
                Sliced::Finished
            }
            e => {
                let err = match e {
                    GuestError::Request {
                        status: Status::ContextFull | Status::BadRequest,
                        message,
                    } => ApiError::Invalid {
                        message,
                        param: None,
                    },
                    other => ApiError::Guest(other.to_string()),
                };
                self.fail(a, err);
                Sliced::Finished
            }
        }
    }

    /// Books a slice that ended with `end` (`last`: its last token): the request either
    /// ends or, preempted, goes back for another turn.
    pub(super) fn slice_ended(
        &mut self,
        mut a: Active,
        end: &EndOfStream,
        last: Option<u32>,
    ) -> Sliced {
        if a.slices == 1 {
            a.prompt_tokens = end.prompt_tokens;
            a.cached_tokens = end.cached_tokens;
        }
        a.generated += end.generated_tokens;
        a.timings.prompt_ns += end.timings.prompt_ns;
        a.timings.generation_ns += end.timings.generation_ns;
        match (end.reason, last) {
            // The guest has not fed `t` back yet: the next slice starts from it.
            // A sealed answer's tokens are withheld: the guest goes on from its own.
            (StopReason::Preempted, Some(_)) if sealed(&a.job.prompt) => {
                a.next_prompt = Prompt::Continue;
                Sliced::Again(Box::new(a))
            }
            (StopReason::Preempted, Some(t)) => {
                a.next_prompt = Prompt::Tokens(vec![t]);
                Sliced::Again(Box::new(a))
            }
            // A preempt goes out only after a token of this slice, so a guest that
            // stops before one broke the protocol: nothing to resume from.
            (StopReason::Preempted, None) => {
                let why = "the guest preempted the request before its turn's first token";
                self.fail(a, ApiError::Guest(why.into()));
                Sliced::Finished
            }
            (reason, _) => {
                self.finish(a, reason);
                Sliced::Finished
            }
        }
    }
}
