//! The guest worker: one thread owns the protected VM, takes jobs from the fair queue and
//! interleaves them: up to `limits.max_active` jobs hold a session in the guest, and while
//! others wait each runs for a slice of `limits.slice_tokens` tokens in turn (the guest
//! engine runs one generation at a time; a slice ends by cancelling between two tokens and
//! the next one resumes on the same session). A guest that batches runs the active jobs
//! on one model together instead, joining and leaving between two steps (`batch.rs`;
//! `slice.rs` books either's tokens and ends). A disconnected client's job stops between
//! two tokens. One guest serves every model, several resident at once (`guest.rs`), the
//! next model of an agent workflow loaded ahead once nothing runs (`prefetch.rs`); when
//! the guest dies the worker fails the requests in flight, logs the crash and boots a new
//! guest. While nothing runs it unloads the models idle longer than their keep-alive and
//! stops the guest once none is left (`idle.rs`).

mod batch;
mod embed;
mod guest;
mod idle;
mod kv_evict;
mod layer_prefix;
mod pipelined;
mod prefetch;
mod slice;
mod tool_style;

pub use batch::BatchMetrics;
pub use embed::{EmbedWork, Embedded};

use super::Shared;
use super::error::ApiError;
use super::keep_alive::KeepAlive;
use super::metrics::{GuestState, Outcome};
use super::models::ServedModel;
use guest::Ready;
use inference_guest::tokenizer::ToolFormat;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;
use tool_style::{asks_tool_style, slice_options, tell_tool_style};
use virtio_llm::wire::options::GenerateOptions;
use virtio_llm::wire::request::{GenerateRequest, Prompt, SamplingParams};
use virtio_llm::wire::response::{EndOfStream, StopReason, Timings, TokenLogprob};
use vmm::guest_images::GuestImages;
use vmm::guest_vm::{GuestError, GuestVm};

/// What a job's handler hears from the worker.
#[derive(Debug)]
pub enum Event {
    /// Token ids as the guest streams them, and the bytes they stand for (the guest's
    /// text: a character may span two events); one logprob each when the request asked.
    Tokens {
        ids: Vec<u32>,
        text: Vec<u8>,
        logprobs: Vec<TokenLogprob>,
    },
    /// The end, with the guest's counts and times.
    Done(EndOfStream),
    /// The request failed (after any tokens already sent).
    Failed(ApiError),
    /// A boot-only job's guest is up (its statement, if it has one, is in `Shared`).
    Booted,
    /// How the model writes tool calls, as its guest says (a sealed model's template is
    /// the guest's to read); before any tokens.
    ToolStyle(ToolFormat),
}

/// One generation waiting for the guest.
pub struct Job {
    pub model: Arc<ServedModel>,
    pub prompt: Prompt,
    pub sampling: SamplingParams,
    /// Penalties, logit bias, logprobs: the same for every slice.
    pub options: GenerateOptions,
    pub events: UnboundedSender<Event>,
    /// Set when the client is gone or a stop sequence matched.
    pub cancel: Arc<AtomicBool>,
    pub arrived: Instant,
    /// Only make sure a guest is up (for its statement); nothing to generate.
    pub boot_only: bool,
    /// How long its model stays resident once it ends (`None`: `models.keep_alive`).
    pub keep_alive: Option<KeepAlive>,
    /// An embedding job (`prompt`, `sampling` and `options` unused): its inputs and where
    /// the vectors go.
    pub embed: Option<EmbedWork>,
    /// The model asked after this one (`flexserve.next_model` or `[[workflows]]`):
    /// prefetched into free budget once the guest has nothing to run (`prefetch.rs`).
    pub next_model: Option<Arc<ServedModel>>,
}

/// A job with an open session in the guest, between two slices.
struct Active {
    job: Job,
    /// The guest model id its session is on.
    guest_model: u32,
    session: u32,
    /// What the next slice starts from: the prompt, then the last token of a slice.
    next_prompt: Prompt,
    slices: u32,
    prompt_tokens: u32,
    /// Of `prompt_tokens`, those the guest took from a kept KV cache.
    cached_tokens: u32,
    generated: u32,
    timings: Timings,
    first_seen: bool,
    /// Its model is not resident yet: its first slice loads it (`pipelined.rs`), opening
    /// its session.
    arriving: bool,
    /// Its prefill ran as its model arrived (its time includes waits for layers).
    overlapped: bool,
}

impl Active {
    /// The request of its next slice, `request_id`.
    fn next_request(&mut self, request_id: u64) -> GenerateRequest {
        let job = &self.job;
        let remaining = job
            .sampling
            .max_tokens
            .saturating_sub(self.generated)
            .max(1);
        let prompt = std::mem::replace(&mut self.next_prompt, Prompt::Tokens(Vec::new()));
        GenerateRequest {
            request_id,
            session_id: self.session,
            sampling: SamplingParams {
                max_tokens: remaining,
                // Each slice samples with its own seed, fixed by the request's seed and
                // the slice number, so a run is still reproducible. A sealed request's
                // seed is bound to its seal: the guest advances it itself.
                seed: if sealed(&job.prompt) {
                    job.sampling.seed
                } else {
                    job.sampling.seed.wrapping_add(u64::from(self.slices))
                },
                ..job.sampling
            },
            options: slice_options(&job.options, &prompt),
            prompt,
        }
    }

    /// `job`, admitted on guest model `guest_model` with session id `session` (open, or
    /// opened by its first slice when its model is `arriving`).
    fn new(job: Job, guest_model: u32, session: u32, arriving: bool) -> Self {
        let prompt = job.prompt.clone();
        Self {
            job,
            guest_model,
            session,
            next_prompt: prompt,
            slices: 0,
            prompt_tokens: 0,
            cached_tokens: 0,
            generated: 0,
            timings: Timings::default(),
            first_seen: false,
            arriving,
            overlapped: false,
        }
    }
}

/// How a slice ended.
enum Sliced {
    /// Preempted: to be resumed.
    Again(Box<Active>),
    /// Done (answered or failed).
    Finished,
    /// The guest died; restart it with this model.
    GuestLost(Arc<ServedModel>),
}

struct Running {
    vm: GuestVm,
    residency: super::residency::Residency,
    /// The layer prefixes the guest keeps of unloaded models (`layer_prefix.rs`).
    prefixes: super::layer_prefix::KeptPrefixes,
    /// The guest's count of KV caches it dropped, as last seen (`StatsReply`).
    kv_dropped: u64,
}

/// What admitting a job came to.
enum Admission {
    /// It has a session.
    Active(Box<Active>),
    /// It is over (answered with an error, or its client is gone).
    Over,
    /// Its model needs room that models with requests in flight hold: later.
    Wait(Box<Job>),
}

pub struct Worker {
    shared: Arc<Shared>,
    images: GuestImages,
    vm: Option<Running>,
    next_session: u32,
    next_request: u64,
    /// The next model of a workflow, loaded once the guest is free (`prefetch.rs`).
    prefetch: Option<Arc<ServedModel>>,
    /// Each sealed model's layers and measured times, by name (`layer_prefix.rs`).
    measured: std::collections::HashMap<String, layer_prefix::Measured>,
}

/// Whether a job's prompt is sealed to the guest (its answer is too).
fn sealed(prompt: &Prompt) -> bool {
    matches!(prompt, Prompt::Sealed(_))
}

/// A guest failure that leaves the VM unusable.
fn is_fatal(e: &GuestError) -> bool {
    !matches!(e, GuestError::Refused { .. } | GuestError::Request { .. })
}

impl Worker {
    pub fn new(shared: Arc<Shared>, images: GuestImages) -> Self {
        Self {
            shared,
            images,
            vm: None,
            next_session: 1,
            next_request: 1,
            prefetch: None,
            measured: Default::default(),
        }
    }

    /// Serves jobs until the queue is closed and drained. With `startup`, boots the guest
    /// with that model first and reports how that went on `booted`.
    pub fn run(
        mut self,
        startup: Option<Arc<ServedModel>>,
        booted: std::sync::mpsc::Sender<Result<(), String>>,
    ) {
        let first = match startup {
            // No request waits on it yet: a whole load.
            Some(m) => self
                .ensure(&m, &[], false)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => Ok(()),
        };
        let _ = booted.send(first);
        let mut active: VecDeque<Active> = VecDeque::new();
        // A job whose model needs the room of models in use waits until they are done.
        let mut deferred: Option<Job> = None;
        while self.fill(&mut active, &mut deferred, &[]) {
            let Some(a) = active.pop_front() else {
                continue;
            };
            let lost = if self.batching() && batch::batchable(&a) {
                self.run_batch(a, &mut active, &mut deferred)
            } else {
                let others = !active.is_empty() || deferred.is_some();
                match self.slice(a, others) {
                    Sliced::Again(a) => {
                        active.push_back(*a);
                        None
                    }
                    Sliced::Finished => None,
                    Sliced::GuestLost(model) => Some(model),
                }
            };
            if let Some(model) = lost {
                // Every open session died with the guest.
                for a in active.drain(..) {
                    self.fail_lost(a.job);
                }
                eprintln!("[flexserve] restarting the guest");
                self.vm = None;
                let _ = self.ensure(&model, &[], false);
            }
        }
    }

    /// Admits jobs while fewer than `limits.max_active` hold a session (`batched`: the
    /// guest models of those running in a batch, beside `active`), waiting for one only
    /// when none does. False once the queue is closed and drained with nothing active (the
    /// guest is then stopped).
    fn fill(
        &mut self,
        active: &mut VecDeque<Active>,
        deferred: &mut Option<Job>,
        batched: &[u32],
    ) -> bool {
        let shared = self.shared.clone();
        let queue = &shared.queue;
        while active.len() + batched.len() < shared.config.max_active {
            let idle = active.is_empty() && batched.is_empty();
            let job = match deferred.take() {
                Some(j) => j,
                None => {
                    let wait = if idle {
                        if queue.is_empty() {
                            self.prefetch_next();
                            self.sweep_idle();
                        }
                        Duration::from_secs(1)
                    } else {
                        Duration::ZERO
                    };
                    match queue.next(wait) {
                        Ok(Some(j)) => j,
                        Ok(None) => break,
                        Err(()) if idle => {
                            if let Some(r) = self.vm.take() {
                                self.stop(r);
                            }
                            return false;
                        }
                        Err(()) => break,
                    }
                }
            };
            shared
                .metrics
                .queue_depth
                .store(queue.len() as u64, Ordering::Relaxed);
            let busy: Vec<u32> = active
                .iter()
                .map(|a| a.guest_model)
                .chain(batched.iter().copied())
                .collect();
            match self.admit(job, &busy) {
                // Its model is loaded by its first slice: that runs next, before
                // another admission could place a model where this one goes.
                Admission::Active(a) if a.arriving => {
                    active.push_front(*a);
                    break;
                }
                Admission::Active(a) => active.push_back(*a),
                Admission::Over => {}
                Admission::Wait(job) => {
                    *deferred = Some(*job);
                    break;
                }
            }
        }
        true
    }

    fn stop(&self, r: Running) {
        self.shared.metrics.set_guest(GuestState::Down);
        if let Err(e) = r.vm.shutdown() {
            eprintln!("[flexserve] the guest had failed before shutdown: {e}");
        }
    }

    /// Opens a session for `job` (booting the guest or loading its model if needed; `busy`:
    /// the guest models with requests in flight).
    fn admit(&mut self, mut job: Job, busy: &[u32]) -> Admission {
        let shared = self.shared.clone();
        let m = &shared.metrics;
        if job.cancel.load(Ordering::Relaxed) || job.events.is_closed() {
            m.request(Outcome::Cancelled);
            return Admission::Over;
        }
        let loading = Instant::now();
        // A sealed model not resident loads with the request's first slice, unless the job
        // needs the loaded model before it starts (`pipelined.rs`).
        let pipeline = !job.boot_only && job.embed.is_none() && !asks_tool_style(&job);
        let (guest_model, arriving) = match self.ensure(&job.model, busy, pipeline) {
            Ok(Ready::Model(id)) => (id, false),
            Ok(Ready::Arriving(id)) => (id, true),
            // Nothing in flight to wait for: `Residency` never asks that.
            Ok(Ready::Wait) if busy.is_empty() => {
                m.request(Outcome::Failed);
                let why = format!("model {} does not fit in guest.memory_max", job.model.id);
                let _ = job.events.send(Event::Failed(ApiError::Guest(why)));
                return Admission::Over;
            }
            Ok(Ready::Wait) => return Admission::Wait(Box::new(job)),
            Err(e) => {
                m.request(Outcome::Failed);
                let _ = job.events.send(Event::Failed(ApiError::Guest(format!(
                    "cannot start the guest or load model {}: {e}",
                    job.model.id
                ))));
                return Admission::Over;
            }
        };
        if job.boot_only {
            let _ = job.events.send(Event::Booted);
            return Admission::Over;
        }
        self.plan_prefetch(job.next_model.take());
        let batch_running = self.vm.as_ref().is_some_and(|r| r.vm.in_flight() > 0);
        if job.embed.is_some() && batch_running {
            // A batching guest computes embeddings only between batches.
            return Admission::Wait(Box::new(job));
        }
        if let Some(work) = job.embed.take() {
            return self.embed(job, work, guest_model, loading.elapsed());
        }
        let session = self.next_session;
        self.next_session = self.next_session.wrapping_add(1).max(1);
        if arriving {
            return Admission::Active(Box::new(Active::new(job, guest_model, session, true)));
        }
        let Some(running) = self.vm.as_mut() else {
            self.fail_lost(job);
            return Admission::Over;
        };
        if let Err(e) = tell_tool_style(&mut running.vm, &job, guest_model) {
            m.request(Outcome::Failed);
            let _ = job
                .events
                .send(Event::Failed(ApiError::Guest(e.to_string())));
            if is_fatal(&e) {
                self.guest_failed("asking the model's tool style", &e);
            }
            return Admission::Over;
        }
        // Kept caches go to the host sealed before the guest would drop one for this
        // session's room (between batches; a running batch leaves the guest to make room).
        let opened = self
            .evict_for_session(&job.model)
            .and_then(|()| match self.vm.as_mut() {
                Some(running) => running
                    .vm
                    .open_session(session, guest_model, job.model.context),
                None => Err(GuestError::Protocol("the guest is not running".into())),
            });
        if let Err(e) = opened {
            m.request(Outcome::Failed);
            let _ = job
                .events
                .send(Event::Failed(ApiError::Guest(e.to_string())));
            if is_fatal(&e) {
                // The sessions of the other active jobs went with it: their next slice
                // fails them, and the next admission boots a new guest.
                self.guest_failed("opening a session", &e);
            }
            return Admission::Over;
        }
        Admission::Active(Box::new(Active::new(job, guest_model, session, false)))
    }

    /// Closes the job's session and fails it with `err`.
    fn fail(&mut self, a: Active, err: ApiError) {
        if let Some(running) = self.vm.as_mut() {
            let _ = running.vm.close_session(a.session);
        }
        self.release(&a);
        self.shared.metrics.request(Outcome::Failed);
        let _ = a.job.events.send(Event::Failed(err));
    }

    /// Closes the job's session and sends its end.
    fn finish(&mut self, a: Active, reason: StopReason) {
        if let Some(running) = self.vm.as_mut()
            && let Err(e) = running.vm.close_session(a.session)
        {
            eprintln!("[flexserve] closing session {}: {e}", a.session);
        }
        self.finish_closed(a, reason);
    }

    fn finish_closed(&mut self, a: Active, reason: StopReason) {
        self.release(&a);
        self.prefilled(&a);
        let m = &self.shared.metrics;
        m.prompt_tokens
            .fetch_add(a.prompt_tokens.into(), Ordering::Relaxed);
        m.cached_tokens
            .fetch_add(a.cached_tokens.into(), Ordering::Relaxed);
        m.generated_tokens
            .fetch_add(a.generated.into(), Ordering::Relaxed);
        if a.generated > 1 {
            let per = a.timings.generation_ns as f64 / 1e9 / f64::from(a.generated - 1);
            m.decode.observe(per);
        }
        if let Some(running) = self.vm.as_mut()
            && let Ok(s) = running.vm.stats()
        {
            m.memory_used_bytes
                .store(s.memory_used_bytes, Ordering::Relaxed);
            m.memory_budget_bytes
                .store(s.memory_budget_bytes, Ordering::Relaxed);
            if let Ok(held) = running.vm.memory() {
                m.memory_held_bytes
                    .store(held.resident_bytes, Ordering::Relaxed);
            }
            let dropped = s.kv_caches_dropped.saturating_sub(running.kv_dropped);
            if dropped > 0 {
                running.kv_dropped = s.kv_caches_dropped;
                m.kv_dropped.fetch_add(dropped, Ordering::Relaxed);
                eprintln!(
                    "[flexserve] the guest dropped {dropped} KV cache(s) to make room (no \
                     sealed eviction was possible then); their next requests evaluate their \
                     prompts again"
                );
            }
        }
        self.relieve_kv_pressure();
        let m = &self.shared.metrics;
        m.request(if reason == StopReason::Cancelled {
            Outcome::Cancelled
        } else {
            Outcome::Ok
        });
        let _ = a.job.events.send(Event::Done(EndOfStream {
            request_id: 0,
            reason,
            prompt_tokens: a.prompt_tokens,
            generated_tokens: a.generated,
            cached_tokens: a.cached_tokens,
            timings: a.timings,
        }));
    }

    fn fail_lost(&self, job: Job) {
        self.fail_lost_with(job, "the guest VM failed");
    }

    fn fail_lost_with(&self, job: Job, why: &str) {
        self.shared.metrics.request(Outcome::Failed);
        let _ = job.events.send(Event::Failed(ApiError::Guest(format!(
            "the guest VM failed during this request ({why}); it is being restarted, retry the \
             request"
        ))));
    }
}
