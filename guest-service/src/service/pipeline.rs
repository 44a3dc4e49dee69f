//! The sealed-load pipeline's first request: a request on a session opened on a sealed
//! model that is still arriving. It runs while the chunks come: the engine waits, before
//! each piece of the weights (embeddings, each block, the output), until that piece's bytes
//! are unsealed, and meanwhile [`TokenStream::feed`] serves the load (takes and answers the
//! next chunk). So prefill computes layer *i* while the host is still sending layer *i + 1*.
//!
//! Every byte the engine reads was authenticated by its chunk's tag (bound to the header)
//! before the engine could reach it ([`crate::arriving`] lends it only final bytes). The
//! content digest, a second check of the owner's plaintext, is checked when the load ends
//! (`LoadModelEnd`, after this request): a model that fails it is refused then.

use super::generation::{Failure, Refusal, engine_refusal, generation, refuse, remember, sampler};
use super::token_stream::{FeedError, Link, Streamed, TokenStream};
use super::tool_chat::request_tokens;
use super::{Environment, GENERATION_SCRATCH_BYTES, Service};
use crate::arriving::{Appender, Gate};
use crate::unsealing::OnVcpus;
use alloc::string::ToString;
use alloc::vec::Vec;
use core::cell::RefCell;
use inference_guest::generate::{GenerateOutcome, generate_arriving};
use inference_guest::gguf::Gguf;
use inference_guest::model::ModelError;
use inference_guest::model::streaming::{FileArrival, Piece, StreamingModel};
use inference_guest::parallel::Parallel;
use inference_guest::tokenizer::{ChatTemplate, Tokenizer};
use virtio_llm::Status;
use virtio_llm::driver::{DriverMemory, LlmDriver, Transport};
use virtio_llm::wire::memory::BudgetChange;
use virtio_llm::wire::request::{GenerateRequest, Prompt};
use virtio_llm::wire::response::{EndOfStream, StopReason, Timings};

/// The engine's view of a [`Gate`]: a wait that fails names what the feed hit.
struct Arrival<'g, 'a, F> {
    gate: &'g mut Gate<'a, F>,
    /// Why the feed stopped, for the request's answer.
    stopped: &'g RefCell<Option<FeedError>>,
    /// How many bytes of the model were in when its first block was computed.
    first_layer_at: Option<usize>,
}

impl<'a, F> FileArrival<'a> for Arrival<'_, 'a, F>
where
    F: FnMut(&mut Appender<'_>) -> Result<(), FeedError>,
{
    fn wait_for(&mut self, end: usize) -> Result<&'a [u8], ModelError> {
        self.gate.wait_for(end).map_err(|e| {
            let reason = match &e {
                FeedError::Seal(s) => s.to_string(),
                FeedError::Stopped => "the request was stopped while its model arrived".into(),
                FeedError::Link(l) => l.to_string(),
            };
            *self.stopped.borrow_mut() = Some(e);
            ModelError::Arrival {
                needed: end,
                reason,
            }
        })
    }

    fn computing(&mut self, piece: Piece) {
        if piece == Piece::Layer(0) {
            self.first_layer_at = Some(self.gate.len());
        }
    }
}

impl Service {
    /// Whether session `session_id` is on the sealed model still arriving.
    pub(super) fn on_arriving_model(&self, session_id: u32) -> bool {
        match (self.sessions.get(&session_id), &self.unsealing) {
            (Some(s), Some(u)) => {
                s.model_id == u.model_id && !self.models.contains_key(&s.model_id)
            }
            _ => false,
        }
    }

    /// Runs `g` on its session's model as the model arrives (see the module documentation);
    /// its end of stream. A chunk that does not unseal ends the load and the request
    /// (`SealRejected`).
    pub(super) fn run_arriving<M: DriverMemory, T: Transport>(
        &mut self,
        g: &GenerateRequest,
        driver: &mut LlmDriver<M, T>,
        par: &dyn Parallel,
        env: &dyn Environment,
        deferred_budget: &mut Option<BudgetChange>,
    ) -> Result<EndOfStream, Failure> {
        // The model's shapes are not in yet: as the host sizes a sealed model's guest, an
        // eighth of the weights covers a full batch's buffers.
        let batch = self
            .unsealing
            .as_ref()
            .map_or(0, |u| u.header().body_bytes() / 8);
        self.make_room(
            GENERATION_SCRATCH_BYTES + batch,
            Some(g.session_id),
            driver,
            env,
        )
        .map_err(|s| {
            refuse(
                s,
                "not enough private memory to run a request within the budget",
            )
        })?;
        let stopped = RefCell::new(None);
        let result = self.prefill_and_generate(g, driver, par, env, &stopped);
        let seal_failed = matches!(*stopped.borrow(), Some(FeedError::Seal(_)));
        if seal_failed {
            self.abandon_unsealing(env);
        }
        let (outcome, streamed) = match result {
            Ok(done) => done,
            Err(Failure::Refused(r)) => return Err(Failure::Refused(r)),
            Err(Failure::Link(e)) => return Err(Failure::Link(e)),
        };
        *deferred_budget = streamed.deferred_budget;
        match (outcome, stopped.into_inner()) {
            (Err(_), Some(FeedError::Seal(e))) => {
                Err(refuse(Status::SealRejected, &e.to_string()).into())
            }
            (Err(_), Some(FeedError::Stopped)) => Ok(EndOfStream {
                request_id: g.request_id,
                reason: if streamed.preempted {
                    StopReason::Preempted
                } else {
                    StopReason::Cancelled
                },
                prompt_tokens: 0,
                cached_tokens: 0,
                generated_tokens: 0,
                timings: Timings::default(),
            }),
            (Err(_), Some(FeedError::Link(e))) => Err(Failure::Link(e)),
            (outcome, _) => {
                let outcome = outcome.map_err(engine_refusal);
                self.finish_stream(g.request_id, outcome, streamed, None, driver, env)
            }
        }
    }

    /// Parses the model as its header arrives, builds its tokenizer if text goes in or out,
    /// and runs the request while the rest arrives; keeps the session's KV cache and token
    /// history. Returns the engine's outcome and what the stream leaves to send.
    fn prefill_and_generate<M: DriverMemory, T: Transport>(
        &mut self,
        g: &GenerateRequest,
        driver: &mut LlmDriver<M, T>,
        par: &dyn Parallel,
        env: &dyn Environment,
        stopped: &RefCell<Option<FeedError>>,
    ) -> Result<(Result<GenerateOutcome, ModelError>, Streamed), Failure> {
        let (kernels, guest_text) = (self.kernels, self.guest_text);
        let u = self
            .unsealing
            .as_mut()
            .ok_or_else(|| refuse(Status::Internal, "the model stopped arriving"))?;
        let model_id = u.model_id;
        let (file, opener) = u.split().ok_or_else(|| {
            refuse(
                Status::Busy,
                "a strawman load serves no request before it ends",
            )
        })?;
        let total = file.total();
        let slot = self
            .sessions
            .get_mut(&g.session_id)
            .ok_or_else(|| refuse(Status::NoSuchSession, "no open session has this id"))?;
        // Declared before the stream, which lends it out: it outlives the stream.
        let tokenizer: Option<Tokenizer>;
        let link = Link {
            driver,
            env,
            out: &mut self.out,
            scratch: &mut self.scratch,
            queued: &mut self.queued,
            relinquisher: &mut self.relinquisher,
        };
        let stream = RefCell::new(TokenStream::new(link, g.request_id, None));
        let join = OnVcpus(par);
        let mut gate = file
            .gate(|to: &mut Appender<'_>| stream.borrow_mut().feed(model_id, opener, to, &join));
        let mut arrival = Arrival {
            gate: &mut gate,
            stopped,
            first_layer_at: None,
        };
        let outcome = 'run: {
            let mut model = match StreamingModel::from_arrival(&mut arrival, total, kernels) {
                Ok(m) => m,
                Err(e) => break 'run Err(e),
            };
            let FromHeader {
                prompt,
                tokenizer: built,
                end_ids,
            } = from_header(model.header(), g, guest_text)?;
            tokenizer = built;
            if guest_text {
                stream.borrow_mut().set_text_of(tokenizer.as_ref());
            }
            let mut session = model.new_session(slot.context_len as usize);
            let (mut sampler, logprobs) = sampler(g, model.cfg().n_vocab)?;
            stream.borrow_mut().set_logprobs(logprobs);
            let outcome = generate_arriving(
                &mut model,
                &mut arrival,
                &mut session,
                &mut sampler,
                par,
                &generation(g, &prompt),
                &|t| end_ids.binary_search(&t).is_ok(),
                &mut |t| stream.borrow_mut().on_token(t),
            );
            slot.history.clear();
            remember(
                &mut slot.history,
                &prompt,
                stream.borrow().generated(),
                session.n_past(),
            );
            slot.session = Some(session);
            if let Some(at) = arrival.first_layer_at {
                env.log(&alloc::format!(
                    "engine: request {} ran as sealed model {model_id} arrived: its first \
                     block computed with {} of {} KiB in",
                    g.request_id,
                    at >> 10,
                    total >> 10
                ));
            }
            outcome
        };
        let streamed = stream.into_inner().finish()?;
        Ok((outcome, streamed))
    }
}

/// What a request needs from its model's header.
struct FromHeader {
    prompt: Vec<u32>,
    /// When text goes in or out.
    tokenizer: Option<Tokenizer>,
    /// The ids that end generation, sorted.
    end_ids: Vec<u32>,
}

/// What request `g` needs from its model's header.
fn from_header(
    header: &Gguf<'_>,
    g: &GenerateRequest,
    guest_text: bool,
) -> Result<FromHeader, Refusal> {
    let bad_model = |e: &dyn core::fmt::Display| refuse(Status::BadModel, &e.to_string());
    let needs_text = guest_text || !matches!(g.prompt, Prompt::Tokens(_));
    let tokenizer = match needs_text {
        true => Some(Tokenizer::from_gguf(header).map_err(|e| bad_model(&e))?),
        false => None,
    };
    let template = ChatTemplate::detect(header.get_str("tokenizer.chat_template").ok().flatten());
    let end_ids = Tokenizer::end_of_generation_ids(header).map_err(|e| bad_model(&e))?;
    let prompt = match (&g.prompt, &tokenizer) {
        (Prompt::Tokens(ids), _) => ids.clone(),
        (_, Some(t)) => request_tokens(g, t, template)?,
        (_, None) => Vec::new(),
    };
    if prompt.is_empty() {
        return Err(refuse(
            Status::BadRequest,
            "the prompt is empty once rendered and tokenized",
        ));
    }
    Ok(FromHeader {
        prompt,
        tokenizer,
        end_ids,
    })
}
