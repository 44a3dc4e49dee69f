//! Continuous batching, when the guest batches (`feature::BATCH`) and `limits.batch` is on:
//! the active jobs that can run together (a plain or chat prompt on one resident model, no
//! response_format or tools constraint) each have their request in the guest at once, and
//! the guest computes the next token of all of them in one forward pass per step. A job
//! admitted while the batch runs joins it at once (its prompt is evaluated on its own, then
//! it steps with the others); a job that ends frees its place for the next at once.
//!
//! A job that cannot join (another model, a sealed prompt, a constraint, a model still
//! arriving) waits at the head of the active jobs: from then on nothing joins, and each
//! member is preempted once it has run `limits.slice_tokens` tokens in its turn (those
//! that ran longest first), so the batch empties and the waiting job gets its slice, as the
//! one-at-a-time slices take turns. Jobs in the queue wait for a session as they do without
//! batching: up to `limits.max_active` jobs hold one, and all of them run.
//!
//! While requests are in flight a batching guest serves only the commands a joining job
//! needs (sessions, tool style, stats); it keeps loads, unloads and KV eviction for the
//! batch's end. So a job whose model must be loaded, or an embedding, waits like a job
//! outside the batch (`guest.rs`, `admit`), and kept KV caches are evicted and restored
//! only between batches (`vmm::guest_vm`).

use super::slice::{deliver, gone};
use super::{Active, Job, Sliced, Worker, is_fatal};
use crate::serve::models::ServedModel;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use virtio_llm::wire::options::GenerateOptions;
use virtio_llm::wire::request::Prompt;
use virtio_llm::wire::response::{StopReason, Tokens};
use vmm::guest_vm::{GuestError, Interrupt, Message};

/// Longest wait for the batch's next message before cancellations and turns are checked
/// again.
const POLL: Duration = Duration::from_millis(50);

/// What batching did, on `/metrics`.
#[derive(Debug, Default)]
pub struct BatchMetrics {
    /// Requests running in the batch now.
    pub requests: AtomicU64,
    /// For each token message of a batched request: how many batched requests were
    /// decoding then (had the first token of their turn), summed; and the messages. Their
    /// ratio is the batch size a decode step had on average (1 when nothing overlapped).
    pub decoding_sum: AtomicU64,
    pub decoding_count: AtomicU64,
}

impl BatchMetrics {
    /// The `/metrics` series.
    pub fn scalars(&self) -> [(&'static str, &'static str, &'static str, u64); 3] {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            (
                "flexserve_batch_requests",
                "gauge",
                "Requests running together in the guest's batch now.",
                get(&self.requests),
            ),
            (
                "flexserve_batch_decoding_sum",
                "counter",
                "Batched requests decoding when a batched request's tokens came, summed \
                 (divided by flexserve_batch_decoding_count: the mean batch size per step).",
                get(&self.decoding_sum),
            ),
            (
                "flexserve_batch_decoding_count",
                "counter",
                "Token messages of batched requests.",
                get(&self.decoding_count),
            ),
        ]
    }
}

/// Whether `a` may run beside others: the guest batches plain and chat prompts on a
/// resident model only, without an output constraint.
pub(super) fn batchable(a: &Active) -> bool {
    !a.arriving && batchable_request(&a.job.prompt, &a.job.options)
}

fn batchable_request(prompt: &Prompt, o: &GenerateOptions) -> bool {
    let plain = matches!(
        prompt,
        Prompt::Tokens(_) | Prompt::Text(_) | Prompt::Chat(_)
    );
    plain && o.response_format.is_none() && o.tools.is_none() && o.tool_chat.is_none()
}

/// A job in the batch, in its turn.
struct Member {
    a: Active,
    /// Tokens of this turn.
    in_turn: u32,
    /// The turn's last token, where the job resumes after a preempt.
    last: Option<u32>,
    /// A cancel or preempt went out.
    interrupted: bool,
}

/// The jobs running together on guest model `model`, by request id.
struct Batch {
    model: u32,
    members: BTreeMap<u64, Member>,
}

impl Batch {
    /// Whether `a` may join now.
    fn takes(&self, a: &Active) -> bool {
        a.guest_model == self.model && batchable(a)
    }

    /// Members with a token of their turn: they step together.
    fn decoding(&self) -> u64 {
        self.members.values().filter(|m| m.in_turn > 0).count() as u64
    }
}

impl Worker {
    /// Whether active jobs run together: the guest batches and the config allows it.
    pub(super) fn batching(&self) -> bool {
        self.shared.config.batch && self.vm.as_ref().is_some_and(|r| r.vm.batches())
    }

    /// Runs `first` in a batch with the active jobs that can join it, admitting and joining
    /// more as places free, until the batch is empty. A job that cannot join stays in
    /// `active`, at its head. Returns the model to restart the guest with when it was
    /// lost (every member failed).
    pub(super) fn run_batch(
        &mut self,
        first: Active,
        active: &mut VecDeque<Active>,
        deferred: &mut Option<Job>,
    ) -> Option<Arc<ServedModel>> {
        let mut batch = Batch {
            model: first.guest_model,
            members: BTreeMap::new(),
        };
        let mut joining = VecDeque::from([first]);
        let gauge = &self.shared.clone().metrics.batch.requests;
        let lost = loop {
            // The head of `active`, up to the first job that cannot join (it waits for
            // the batch to empty, and nothing behind it overtakes it).
            while active.front().is_some_and(|a| batch.takes(a)) {
                joining.extend(active.pop_front());
            }
            if let Some(model) = self.join(&mut batch, &mut joining) {
                break Some(model);
            }
            gauge.store(batch.members.len() as u64, Ordering::Relaxed);
            if batch.members.is_empty() {
                break None;
            }
            // A job outside the batch, or one that waits for the batch to end (a model
            // to load, an embedding), takes its turn once the members had theirs.
            let waiting = !active.is_empty() || deferred.is_some();
            if let Some(model) = self.step(&mut batch, waiting, active) {
                break Some(model);
            }
            if !waiting {
                let busy = vec![batch.model; batch.members.len()];
                self.fill(active, deferred, &busy);
            }
        };
        gauge.store(0, Ordering::Relaxed);
        lost
    }

    /// Starts the requests of `joining` in the batch (each one's turn starts now).
    fn join(
        &mut self,
        batch: &mut Batch,
        joining: &mut VecDeque<Active>,
    ) -> Option<Arc<ServedModel>> {
        while let Some(mut a) = joining.pop_front() {
            if gone(&a.job) {
                // The client went away while waiting for its turn.
                self.finish(a, StopReason::Cancelled);
                continue;
            }
            let Some(running) = self.vm.as_mut() else {
                self.fail_lost(a.job);
                continue;
            };
            let request = self.next_request;
            self.next_request += 1;
            let req = a.next_request(request);
            match running.vm.begin_request(&req) {
                Ok(()) => {
                    let m = Member {
                        a,
                        in_turn: 0,
                        last: None,
                        interrupted: false,
                    };
                    batch.members.insert(request, m);
                }
                Err(e) => {
                    a.slices += 1;
                    if let Sliced::GuestLost(model) = self.slice_failed(a, e, request) {
                        let why = "the guest VM failed while starting another request";
                        self.fail_batch(batch, joining, why);
                        return Some(model);
                    }
                }
            }
        }
        None
    }

    /// Interrupts the members that must stop (client gone; turn over while a job is
    /// `waiting`), then takes the next message of the batch.
    fn step(
        &mut self,
        batch: &mut Batch,
        waiting: bool,
        active: &mut VecDeque<Active>,
    ) -> Option<Arc<ServedModel>> {
        let slice_tokens = self.shared.config.slice_tokens;
        let Some(running) = self.vm.as_mut() else {
            self.fail_batch(batch, &mut VecDeque::new(), "the guest VM failed");
            return None;
        };
        let mut failed = None;
        for (&id, m) in batch.members.iter_mut().filter(|(_, m)| !m.interrupted) {
            let how = match (gone(&m.a.job), waiting && m.in_turn >= slice_tokens) {
                (true, _) => Interrupt::Cancel,
                (false, true) => Interrupt::Preempt,
                (false, false) => continue,
            };
            if let Err(e) = running.vm.interrupt_request(id, how) {
                failed = Some(e);
                break;
            }
            m.interrupted = true;
        }
        let next = match failed {
            Some(e) => Err(e),
            None => running.vm.next_message(POLL),
        };
        match next {
            Ok(None) => None,
            Ok(Some(msg)) => self.take(batch, msg, active),
            Err(e) => Some(self.lose_batch(batch, e)),
        }
    }

    /// Books `msg` to its member: tokens to its client, its end or failure as a slice's.
    fn take(
        &mut self,
        batch: &mut Batch,
        msg: Message,
        active: &mut VecDeque<Active>,
    ) -> Option<Arc<ServedModel>> {
        let id = msg.request_id();
        let shared = self.shared.clone();
        let Some(m) = batch.members.get_mut(&id) else {
            // The guest link routes only the requests in flight, which are the members.
            eprintln!("[flexserve] a message of request {id}, which is not in the batch");
            return None;
        };
        let sliced = match msg {
            Message::Tokens(t) => {
                self.tokens(m, &t);
                let b = &shared.metrics.batch;
                b.decoding_sum
                    .fetch_add(batch.decoding(), Ordering::Relaxed);
                b.decoding_count.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Message::End(end) => {
                let mut m = batch.members.remove(&id)?;
                m.a.slices += 1;
                self.slice_ended(m.a, &end, m.last)
            }
            Message::Failed { error, .. } => {
                let mut m = batch.members.remove(&id)?;
                m.a.slices += 1;
                self.slice_failed(m.a, error, id)
            }
        };
        match sliced {
            Sliced::Again(a) => active.push_back(*a),
            Sliced::Finished => {}
            Sliced::GuestLost(model) => {
                self.fail_batch(batch, &mut VecDeque::new(), "the guest VM failed");
                return Some(model);
            }
        }
        None
    }

    /// A member's tokens: counted in its turn and sent to its client.
    fn tokens(&self, m: &mut Member, t: &Tokens) {
        m.in_turn += t.token_ids.len() as u32;
        m.last = t.token_ids.last().copied().or(m.last);
        deliver(&self.shared.metrics, &m.a.job, &mut m.a.first_seen, t);
    }

    /// The guest failed under the batch (`e`): one member's request books it as a slice's
    /// failure would (the crash counted and logged), the others fail with it, and the model
    /// to restart with is returned. Whatever the error, the requests in flight are gone.
    fn lose_batch(&mut self, batch: &mut Batch, e: GuestError) -> Arc<ServedModel> {
        let why = e.to_string();
        let fatal = is_fatal(&e);
        let (id, first) = batch
            .members
            .pop_first()
            .expect("a batch that steps has members");
        let model = first.a.job.model.clone();
        self.slice_failed(first.a, e, id);
        if !fatal {
            eprintln!("[flexserve] restarting the guest after a failed batch: {why}");
        }
        self.fail_batch(batch, &mut VecDeque::new(), &why);
        model
    }

    /// Fails every member and every job still `joining`: their sessions went with the guest.
    fn fail_batch(&mut self, batch: &mut Batch, joining: &mut VecDeque<Active>, why: &str) {
        let members = std::mem::take(&mut batch.members)
            .into_values()
            .map(|m| m.a);
        for a in members.chain(joining.drain(..)) {
            self.fail_lost_with(a.job, why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_llm::wire::options::ResponseFormat;
    use virtio_llm::wire::options::ToolChat;
    use virtio_llm::wire::request::SealedPrompt;

    #[test]
    fn only_plain_unconstrained_prompts_are_batched() {
        let none = GenerateOptions::default();
        let logprobs = GenerateOptions {
            logprobs: Some(2),
            ..GenerateOptions::default()
        };
        assert!(batchable_request(&Prompt::Text("hi".into()), &none));
        assert!(batchable_request(&Prompt::Chat(Vec::new()), &logprobs));
        assert!(batchable_request(&Prompt::Tokens(vec![1]), &none));
        let sealed = Prompt::Sealed(SealedPrompt {
            model: "m".into(),
            stream: false,
            request: vec![0; 8],
        });
        assert!(!batchable_request(&sealed, &none));
        assert!(!batchable_request(&Prompt::Continue, &none));
        let json = GenerateOptions {
            response_format: Some(ResponseFormat::JsonObject),
            ..GenerateOptions::default()
        };
        assert!(!batchable_request(&Prompt::Text("hi".into()), &json));
        let tools = GenerateOptions {
            tool_chat: Some(ToolChat {
                tools: Vec::new(),
                calls: Vec::new(),
            }),
            ..GenerateOptions::default()
        };
        assert!(!batchable_request(&Prompt::Chat(Vec::new()), &tools));
    }

    #[test]
    fn the_series_are_named_for_metrics() {
        let m = BatchMetrics::default();
        m.requests.store(3, Ordering::Relaxed);
        let s = m.scalars();
        assert_eq!(s[0].0, "flexserve_batch_requests");
        assert_eq!(s[0].3, 3);
        assert!(
            s.iter()
                .all(|(name, ..)| name.starts_with("flexserve_batch_"))
        );
    }
}
