//! The guest worker: one thread owns the protected VM, takes jobs from the fair queue and
//! runs them one at a time (the guest engine generates one request to completion; a
//! cancelled or disconnected request stops between two tokens). It boots the guest with the
//! requested model (once, or again when another model is asked for), and when the guest
//! dies it fails the request in flight, logs the crash and boots a new guest.

use super::Shared;
use super::error::ApiError;
use super::metrics::{GuestState, Outcome};
use super::models::HostModel;
use crate::guest_images::GuestImages;
use crate::protected_vm::{GuestConfig, GuestError, ProtectedVm};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;
use virtio_llm::Status;
use virtio_llm::wire::request::{GenerateRequest, Prompt, SamplingParams};
use virtio_llm::wire::response::{EndOfStream, StopReason};

/// The model id every guest gets (one model per guest).
const GUEST_MODEL_ID: u32 = 1;

/// What a job's handler hears from the worker.
#[derive(Debug)]
pub enum Event {
    /// Token ids as the guest streams them.
    Tokens(Vec<u32>),
    /// The end, with the guest's counts and times.
    Done(EndOfStream),
    /// The request failed (after any tokens already sent).
    Failed(ApiError),
}

/// One generation waiting for the guest.
pub struct Job {
    pub model: Arc<HostModel>,
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub events: UnboundedSender<Event>,
    /// Set when the client is gone or a stop sequence matched.
    pub cancel: Arc<AtomicBool>,
    pub arrived: Instant,
}

struct Running {
    vm: ProtectedVm,
    model: Arc<HostModel>,
}

pub struct Worker {
    shared: Arc<Shared>,
    images: GuestImages,
    vm: Option<Running>,
    next_session: u32,
    next_request: u64,
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
        }
    }

    /// Serves jobs until the queue is closed and drained. With `startup`, boots the guest
    /// with that model first and reports how that went on `booted`.
    pub fn run(
        mut self,
        startup: Option<Arc<HostModel>>,
        booted: std::sync::mpsc::Sender<Result<(), String>>,
    ) {
        let first = match startup {
            Some(m) => self.ensure(&m).map_err(|e| e.to_string()),
            None => Ok(()),
        };
        let _ = booted.send(first);
        let shared = self.shared.clone();
        let queue = &shared.queue;
        loop {
            let job = match queue.next(Duration::from_secs(1)) {
                Err(()) => break,
                Ok(None) => continue,
                Ok(Some(job)) => job,
            };
            self.shared
                .metrics
                .queue_depth
                .store(queue.len() as u64, Ordering::Relaxed);
            self.serve(job);
        }
        if let Some(r) = self.vm.take() {
            self.stop(r);
        }
    }

    fn stop(&self, r: Running) {
        self.shared.metrics.set_guest(GuestState::Down);
        if let Err(e) = r.vm.shutdown() {
            eprintln!("[flexserve] the guest had failed before shutdown: {e}");
        }
    }

    /// Makes sure a guest with `model` is up.
    fn ensure(&mut self, model: &Arc<HostModel>) -> Result<(), GuestError> {
        if self.vm.as_ref().is_some_and(|r| r.model.id == model.id) {
            return Ok(());
        }
        if let Some(old) = self.vm.take() {
            eprintln!(
                "[flexserve] switching the guest from model {} to {}",
                old.model.id, model.id
            );
            self.stop(old);
        }
        let m = &self.shared.metrics;
        m.set_guest(GuestState::Starting);
        let t = Instant::now();
        match self.boot(model) {
            Ok(vm) => {
                m.set_guest(GuestState::Up);
                m.guest_starts.fetch_add(1, Ordering::Relaxed);
                m.memory_budget_bytes
                    .store(model.private_bytes, Ordering::Relaxed);
                eprintln!(
                    "[flexserve] guest up with model {} ({} MiB private memory) in {:.0} ms",
                    model.id,
                    model.private_bytes >> 20,
                    t.elapsed().as_secs_f64() * 1e3
                );
                #[cfg(feature = "test-hooks")]
                {
                    *self
                        .shared
                        .guest_memory
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(vm.memory_for_tests());
                }
                self.vm = Some(Running {
                    vm,
                    model: model.clone(),
                });
                Ok(())
            }
            Err(e) => {
                m.set_guest(GuestState::Down);
                eprintln!("[flexserve] cannot start the guest with {}: {e}", model.id);
                Err(e)
            }
        }
    }

    fn boot(&self, model: &HostModel) -> Result<ProtectedVm, GuestError> {
        let file = std::fs::read(&model.path).map_err(|e| {
            GuestError::Protocol(format!("cannot read {}: {e}", model.path.display()))
        })?;
        let mut vm = ProtectedVm::start(
            &self.images,
            GuestConfig {
                vcpus: self.shared.config.vcpus,
                private_bytes: usize::try_from(model.private_bytes).unwrap_or(usize::MAX),
                diagnostics: false,
            },
        )?;
        let known = crate::digest_cache::lookup(&model.path);
        let sha256 = vm.load_model(GUEST_MODEL_ID, &file, known, &mut |_| {})?;
        if known.is_none() {
            crate::digest_cache::remember(&model.path, &sha256);
        }
        Ok(vm)
    }

    fn serve(&mut self, job: Job) {
        let shared = self.shared.clone();
        let m = &shared.metrics;
        let gone = || job.cancel.load(Ordering::Relaxed) || job.events.is_closed();
        if gone() {
            m.request(Outcome::Cancelled);
            return;
        }
        if let Err(e) = self.ensure(&job.model) {
            m.request(Outcome::Failed);
            let _ = job.events.send(Event::Failed(ApiError::Guest(format!(
                "cannot start the guest: {e}"
            ))));
            return;
        }
        let Some(running) = self.vm.as_mut() else {
            return;
        };
        let (session, request) = (self.next_session, self.next_request);
        self.next_session = self.next_session.wrapping_add(1).max(1);
        self.next_request += 1;
        let req = GenerateRequest {
            request_id: request,
            session_id: session,
            sampling: SamplingParams {
                max_tokens: job.sampling.max_tokens,
                ..job.sampling
            },
            prompt: Prompt::Tokens(job.prompt.clone()),
        };
        let mut first = true;
        let result = running
            .vm
            .open_session(session, GUEST_MODEL_ID, job.model.context)
            .and_then(|()| {
                let end = running.vm.generate(
                    &req,
                    &mut |tokens| {
                        if first {
                            first = false;
                            m.ttft.observe(job.arrived.elapsed().as_secs_f64());
                        }
                        let _ = job.events.send(Event::Tokens(tokens.to_vec()));
                    },
                    &gone,
                );
                match end {
                    Ok(end) => running.vm.close_session(session).map(|()| end),
                    Err(e) if is_fatal(&e) => Err(e),
                    Err(e) => {
                        let _ = running.vm.close_session(session);
                        Err(e)
                    }
                }
            });
        match result {
            Ok(end) => {
                m.prompt_tokens
                    .fetch_add(end.prompt_tokens.into(), Ordering::Relaxed);
                m.generated_tokens
                    .fetch_add(end.generated_tokens.into(), Ordering::Relaxed);
                if end.generated_tokens > 1 {
                    let per = end.timings.generation_ns as f64
                        / 1e9
                        / f64::from(end.generated_tokens - 1);
                    m.decode.observe(per);
                }
                if let Ok(s) = running.vm.stats() {
                    m.memory_used_bytes
                        .store(s.memory_used_bytes, Ordering::Relaxed);
                    m.memory_budget_bytes
                        .store(s.memory_budget_bytes, Ordering::Relaxed);
                }
                m.request(if end.reason == StopReason::Cancelled {
                    Outcome::Cancelled
                } else {
                    Outcome::Ok
                });
                let _ = job.events.send(Event::Done(end));
            }
            Err(e) if is_fatal(&e) => {
                m.request(Outcome::Failed);
                m.guest_crashes.fetch_add(1, Ordering::Relaxed);
                m.set_guest(GuestState::Down);
                eprintln!("[flexserve] the guest VM failed during request {request}: {e}");
                let _ = job.events.send(Event::Failed(ApiError::Guest(format!(
                    "the guest VM failed during this request ({e}); it is being restarted, \
                     retry the request"
                ))));
                // The dead VM is dropped (its threads are joined); a new one serves the
                // next request.
                let model = job.model.clone();
                self.vm = None;
                drop(job);
                eprintln!("[flexserve] restarting the guest");
                let _ = self.ensure(&model);
            }
            Err(e) => {
                m.request(Outcome::Failed);
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
                let _ = job.events.send(Event::Failed(err));
            }
        }
    }
}
