//! Embedding jobs: queued, admitted and given their model like generations (the fair
//! queue, residency, keep-alive), then run at admission: an embedding is one forward pass
//! per input with nothing to interleave, so it holds no session and never takes a slice.

use super::{Admission, Job, Worker, is_fatal};
use crate::serve::error::ApiError;
use crate::serve::metrics::Outcome;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use virtio_llm::Status;
use virtio_llm::wire::embed::EmbedRequest;
use virtio_llm::wire::request::Prompt;
use vmm::guest_vm::GuestError;

/// What an embedding job asks for and where its answer goes.
#[derive(Debug)]
pub struct EmbedWork {
    /// One prompt per input, in order: token ids, or a sealed model's text for its guest.
    pub prompts: Vec<Prompt>,
    pub answer: oneshot::Sender<Result<Embedded, ApiError>>,
}

/// The vectors of a job, in input order, and what they cost.
#[derive(Debug, Default)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    /// Every input's tokens, as the guest evaluated them.
    pub prompt_tokens: u32,
    /// The guest's evaluation time, all inputs.
    pub prompt_ns: u64,
    /// Booting the guest and loading the model for this job (0 when it was resident).
    pub load: Duration,
}

impl Worker {
    /// Runs `work` for `job` on `guest_model` (loaded `load` ago by this admission): one
    /// `EmbedRequest` per input; stops early if the client went away.
    pub(super) fn embed(
        &mut self,
        job: Job,
        work: EmbedWork,
        guest_model: u32,
        load: Duration,
    ) -> Admission {
        let shared = self.shared.clone();
        let m = &shared.metrics;
        let mut out = Embedded {
            load,
            ..Embedded::default()
        };
        let mut result = Ok(());
        for prompt in work.prompts {
            if job.cancel.load(Ordering::Relaxed) || work.answer.is_closed() {
                // The client is gone: nobody reads this, the rest is not computed.
                result = Err(ApiError::ShuttingDown);
                break;
            }
            let Some(running) = self.vm.as_mut() else {
                result = Err(lost("the guest VM is not running"));
                break;
            };
            let req = EmbedRequest {
                request_id: self.next_request,
                model_id: guest_model,
                prompt,
            };
            self.next_request += 1;
            match running.vm.embed(&req) {
                Ok(e) => {
                    out.prompt_tokens += e.prompt_tokens;
                    out.prompt_ns += e.prompt_ns;
                    out.vectors.push(e.values);
                }
                Err(e) => {
                    result = Err(api_error(&e));
                    if is_fatal(&e) {
                        self.guest_failed("computing an embedding", &e);
                    }
                    break;
                }
            }
        }
        self.release_model(guest_model, &job);
        let cancelled = job.cancel.load(Ordering::Relaxed) || work.answer.is_closed();
        m.request(match (&result, cancelled) {
            (Ok(()), _) => Outcome::Ok,
            (Err(_), true) => Outcome::Cancelled,
            (Err(_), false) => Outcome::Failed,
        });
        m.prompt_tokens
            .fetch_add(out.prompt_tokens.into(), Ordering::Relaxed);
        let _ = work.answer.send(result.map(|()| out));
        Admission::Over
    }

    /// The job's model may go once its keep-alive runs out, which starts now.
    fn release_model(&mut self, guest_model: u32, job: &Job) {
        let keep = job.keep_alive.unwrap_or(self.shared.config.keep_alive);
        if let Some(running) = self.vm.as_mut() {
            running
                .residency
                .released(guest_model, keep, Instant::now());
            self.shared.metrics.set_resident(Some(&running.residency));
        }
    }
}

fn lost(why: &str) -> ApiError {
    ApiError::Guest(format!(
        "the guest VM failed during this request ({why}); it is being restarted, retry the \
         request"
    ))
}

/// A guest's refusal of an input the client can fix is the client's error.
fn api_error(e: &GuestError) -> ApiError {
    match e {
        GuestError::Request {
            status: Status::ContextFull | Status::BadRequest,
            message,
        } => ApiError::invalid("input", message.clone()),
        e if is_fatal(e) => lost(&e.to_string()),
        e => ApiError::Guest(e.to_string()),
    }
}
