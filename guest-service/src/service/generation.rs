//! One generation request: from the prompt to its end of stream, tokens streamed as they
//! come ([`TokenStream`]), with cancels and budget changes served between tokens.
//!
//! Every way a request can end goes through [`Service::generate`], which sends the end of
//! stream or the error: the steps before it return a [`Refusal`] instead of answering.

use super::constraint::run_engine;
use super::kv_cost;
use super::sealed_answer::SealedAnswer;
use super::token_stream::{Link, Streamed, TokenStream};
use super::{Environment, GENERATION_SCRATCH_BYTES, Service, error_response};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use inference_guest::constrain::Constrained;
use inference_guest::generate::{Finish, GenerateOutcome, Generation};
use inference_guest::gguf::Gguf;
use inference_guest::model::{LlamaConfig, MAX_BATCH, Model, ModelError};
use inference_guest::parallel::Parallel;
use inference_guest::sampler::{LogprobSink, Sampler, SamplerConfig};
use virtio_llm::Status;
use virtio_llm::driver::{DriverError, DriverMemory, LlmDriver, Transport};
use virtio_llm::wire::memory::BudgetChange;
use virtio_llm::wire::request::{GenerateRequest, Prompt};
use virtio_llm::wire::response::{EndOfStream, ResponseMsg, StopReason, Timings, Tokens};

/// Why a request gets an error instead of its end of stream.
pub(super) struct Refusal {
    pub(super) status: Status,
    pub(super) message: String,
}

pub(super) fn refuse(status: Status, message: &str) -> Refusal {
    Refusal {
        status,
        message: message.to_string(),
    }
}

/// How a request stopped short of its end of stream.
pub(super) enum Failure {
    /// Answered with an error.
    Refused(Refusal),
    /// The link broke: nothing can be answered.
    Link(DriverError),
}

impl From<Refusal> for Failure {
    fn from(r: Refusal) -> Self {
        Self::Refused(r)
    }
}

impl From<DriverError> for Failure {
    fn from(e: DriverError) -> Self {
        Self::Link(e)
    }
}

impl Service {
    /// Serves a generation request: streams its tokens, then sends its end of stream or its
    /// error (the only place either is sent), then applies a budget change that arrived
    /// while it ran.
    pub(super) fn generate<M: DriverMemory, T: Transport>(
        &mut self,
        g: GenerateRequest,
        driver: &mut LlmDriver<M, T>,
        par: &dyn Parallel,
        env: &dyn Environment,
    ) -> Result<(), DriverError> {
        let mut deferred_budget = None;
        let end = self.run(&g, driver, par, env, &mut deferred_budget);
        let sent = self.answer(g.request_id, end, driver, env);
        if let Some(change) = deferred_budget {
            self.apply_budget(change, driver, env)?;
        }
        sent
    }

    /// Sends request `id`'s end of stream, or its error.
    pub(super) fn answer<M: DriverMemory, T: Transport>(
        &mut self,
        id: u64,
        end: Result<EndOfStream, Failure>,
        driver: &mut LlmDriver<M, T>,
        env: &dyn Environment,
    ) -> Result<(), DriverError> {
        let msg = match end {
            Ok(end) => ResponseMsg::EndOfStream(end),
            Err(Failure::Refused(r)) => error_response(id, r.status, &r.message),
            Err(Failure::Link(e)) => return Err(e),
        };
        self.send_response(driver, env, &msg)
    }

    /// Runs the request on its session and streams its tokens; its end of stream.
    fn run<M: DriverMemory, T: Transport>(
        &mut self,
        g: &GenerateRequest,
        driver: &mut LlmDriver<M, T>,
        par: &dyn Parallel,
        env: &dyn Environment,
        deferred_budget: &mut Option<BudgetChange>,
    ) -> Result<EndOfStream, Failure> {
        self.check_options(g)?;
        let opened = self.open_sealed(g, driver)?;
        if self.on_arriving_model(g.session_id) {
            if opened.is_some() {
                return Err(refuse(
                    Status::Busy,
                    "a sealed request cannot run while its model is still arriving",
                )
                .into());
            }
            if g.options.response_format.is_some() || g.options.tools.is_some() {
                return Err(refuse(
                    Status::Busy,
                    "structured output and tool calls wait until the model has arrived",
                )
                .into());
            }
            return self.run_arriving(g, driver, par, env, deferred_budget);
        }
        let (g, mut sealed) = match opened {
            Some((run, answer)) => (alloc::borrow::Cow::Owned(run), Some(answer)),
            None => (alloc::borrow::Cow::Borrowed(g), None),
        };
        let g = &*g;
        let end = self.run_ready(g, sealed.as_mut(), driver, par, env, deferred_budget);
        if let Some(answer) = sealed {
            let preempted = matches!(&end, Ok(e) if e.reason == StopReason::Preempted);
            self.keep_sealed(g.session_id, answer, preempted);
        }
        end
    }

    /// Runs a request whose prompt is in the clear (a sealed one opened): the engine, the
    /// stream, the end.
    fn run_ready<M: DriverMemory, T: Transport>(
        &mut self,
        g: &GenerateRequest,
        mut sealed: Option<&mut SealedAnswer>,
        driver: &mut LlmDriver<M, T>,
        par: &dyn Parallel,
        env: &dyn Environment,
        deferred_budget: &mut Option<BudgetChange>,
    ) -> Result<EndOfStream, Failure> {
        let (prompt, reused) = self.ready_session(g, sealed.is_some(), driver, par, env)?;
        let model_id = self.sessions.get(&g.session_id).map_or(0, |s| s.model_id);
        let constraint = self.constraint_for(&g.options, g.session_id, model_id)?;
        let slot = self
            .sessions
            .get_mut(&g.session_id)
            .ok_or_else(|| refuse(Status::NoSuchSession, "no open session has this id"))?;
        let session = slot
            .session
            .as_mut()
            .ok_or_else(|| refuse(Status::Internal, "the session's KV cache is missing"))?;
        let m = self
            .models
            .get(&slot.model_id)
            .ok_or_else(|| refuse(Status::NoSuchModel, "the session's model was unloaded"))?;
        let gguf = Gguf::parse(&m.file).map_err(|e| refuse(Status::Internal, &e.to_string()))?;
        let model = Model::from_gguf(&gguf, self.kernels)
            .map_err(|e| refuse(Status::Internal, &e.to_string()))?;
        let (mut sampler, logprobs) = sampler(g, model.cfg.n_vocab)?;
        // What the cache holds already (an earlier slice, a reused prefix) is in the
        // penalties' window too.
        sampler.set_prior_tokens(&slot.history);
        let link = Link {
            driver: &mut *driver,
            env,
            out: &mut self.out,
            scratch: &mut self.scratch,
            queued: &mut self.queued,
            relinquisher: &mut self.relinquisher,
        };
        let text_of = m.tokenizer.as_ref().filter(|_| self.guest_text);
        let mut stream = TokenStream::new(link, g.request_id, text_of);
        stream.set_sealed(sealed.as_deref_mut());
        stream.set_logprobs(logprobs);
        let mut constrained = constraint.map(|c| m.constrained(c)).transpose()?;
        let prefill = Prefill::new(model_id, &m.cfg, session.n_past(), reused);
        let result = run_engine(
            &model,
            session,
            &mut sampler,
            par,
            &generation(g, &prompt[reused..]),
            &m.end_ids,
            constrained.as_mut(),
            &mut |token| stream.on_token(token),
        );
        // The session waits now: its prompt's activations go back (tens of MiB after a
        // long prompt to a large model; the next evaluation allocates them again).
        session.release_scratch();
        let constraint = constrained.map(Constrained::into_state);
        record_turn(
            (&mut slot.history, &mut slot.prefilled),
            &prompt[reused..],
            stream.generated(),
            session.n_past(),
        );
        let last = stream.generated().last().copied();
        let streamed = stream.finish()?;
        *deferred_budget = streamed.deferred_budget;
        let ended = self.end_of_run(
            g.request_id,
            prefill,
            result.map_err(engine_refusal),
            streamed,
            sealed.as_deref_mut(),
            driver,
            env,
        );
        if let (Some(answer), Ok(e)) = (sealed, &ended) {
            answer.slice_done(e.generated_tokens, last);
        }
        if let (Ok(e), Some(slot)) = (&ended, self.sessions.get_mut(&g.session_id))
            && e.reason == StopReason::Preempted
        {
            slot.constraint = constraint;
        }
        ended
    }

    /// Options need the feature, and a sealed request's sampling is what its seal binds:
    /// options, which the seal does not cover, would let the host change it.
    pub(super) fn check_options(&self, g: &GenerateRequest) -> Result<(), Refusal> {
        if g.options.is_empty() {
            return Ok(());
        }
        if !self.options {
            return Err(refuse(
                Status::Unsupported,
                "generation options need VIRTIO_LLM_F_OPTIONS",
            ));
        }
        let guest_rendered = g.options.tool_chat.is_some()
            || matches!(&g.options.tools, Some(t) if t.style == virtio_llm::wire::options::CallStyle::Template);
        if guest_rendered && !self.guest_tools {
            return Err(refuse(
                Status::Unsupported,
                "tool conversations rendered by the guest need VIRTIO_LLM_F_GUEST_TOOLS",
            ));
        }
        if matches!(g.prompt, Prompt::Sealed(_) | Prompt::Continue) {
            return Err(refuse(
                Status::BadRequest,
                "a sealed request takes no generation options: its seal does not bind them",
            ));
        }
        Ok(())
    }

    /// Readies the request's session: room for the generation, its KV cache rebuilt if it
    /// was evicted or taken from a closed session's, its model marked used; the prompt in
    /// tokens, and how many of them the cache holds already. `sealed`: `g` is an opened
    /// sealed request.
    pub(super) fn ready_session<M: DriverMemory, T: Transport>(
        &mut self,
        g: &GenerateRequest,
        sealed: bool,
        driver: &mut LlmDriver<M, T>,
        par: &dyn Parallel,
        env: &dyn Environment,
    ) -> Result<(Vec<u32>, usize), Refusal> {
        // A fresh session without a cache (lent to a restore, `begin_restore`, or evicted
        // before its first request) takes a kept one below if one fits its prompt before an
        // empty one is made: made first, it would be a third cache beside the restored one.
        let (evicted, fresh) = match self.sessions.get(&g.session_id) {
            Some(slot) => (slot.session.is_none(), slot.history.is_empty()),
            None => {
                return Err(refuse(
                    Status::NoSuchSession,
                    "no open session has this id (sessions of a model evicted under memory \
                     pressure are closed)",
                ));
            }
        };
        // A generation allocates as it goes (the parsed model, the sampler, logits): make
        // room for that first, evicting other idle sessions' caches if need be, so an
        // allocation can never fail half-way (a failed allocation ends the guest).
        let batch = self.batch_bytes(g)?;
        self.make_room(
            GENERATION_SCRATCH_BYTES + batch,
            Some(g.session_id),
            driver,
            env,
        )
        .map_err(|status| {
            refuse(
                status,
                "not enough private memory to run a request within the budget",
            )
        })?;
        if evicted && !fresh {
            self.rebuild_session(g.session_id, driver, par, env)?;
        }
        self.clock += 1;
        let clock = self.clock;
        let slot = self
            .sessions
            .get_mut(&g.session_id)
            .ok_or_else(|| refuse(Status::NoSuchSession, "no open session has this id"))?;
        slot.last_used = clock;
        let m = self
            .models
            .get_mut(&slot.model_id)
            .ok_or_else(|| refuse(Status::NoSuchModel, "the session's model was unloaded"))?;
        let prompt = m.request_tokens(g)?;
        if prompt.is_empty() {
            return Err(refuse(
                Status::BadRequest,
                "the prompt is empty once rendered and tokenized",
            ));
        }
        if self.guest_text {
            // The tokens' bytes go out with them.
            m.tokenizer()
                .map_err(|e| refuse(Status::BadModel, &e.to_string()))?;
        }
        m.last_used = clock;
        let reused = self.reuse_prefix(g, sealed, &prompt);
        let slot = self.sessions.get(&g.session_id);
        if slot.is_some_and(|s| s.session.is_none()) {
            self.rebuild_session(g.session_id, driver, par, env)?;
        }
        Ok((prompt, reused))
    }

    /// [`Service::restore_session`], refused with why if it cannot be.
    fn rebuild_session<M: DriverMemory, T: Transport>(
        &mut self,
        session_id: u32,
        driver: &mut LlmDriver<M, T>,
        par: &dyn Parallel,
        env: &dyn Environment,
    ) -> Result<(), Refusal> {
        self.restore_session(session_id, driver, par, env)
            .map_err(|status| {
                refuse(
                    status,
                    "the session's KV cache was evicted under memory pressure and cannot be \
                     rebuilt within the memory budget",
                )
            })
    }

    /// A fresh session whose request has a plain prompt takes the kept cache that holds the
    /// longest start of it ([`super::prefix_cache`]); returns how many of the prompt's
    /// tokens the session now holds. A sealed prompt's session is never kept (`sealed`: `g`
    /// is an opened sealed request, whose prompt is in the clear here).
    fn reuse_prefix(&mut self, g: &GenerateRequest, sealed: bool, prompt: &[u32]) -> usize {
        let plain = !sealed
            && matches!(
                g.prompt,
                Prompt::Tokens(_) | Prompt::Text(_) | Prompt::Chat(_)
            );
        let Some(slot) = self.sessions.get_mut(&g.session_id) else {
            return 0;
        };
        slot.shareable &= plain;
        let fresh =
            slot.history.is_empty() && slot.session.as_ref().is_none_or(|s| s.n_past() == 0);
        if !(fresh && slot.shareable) {
            return 0;
        }
        let Some(kept) = self
            .prefix_cache
            .take_best(slot.model_id, slot.context_len, prompt)
        else {
            return 0;
        };
        let (mut session, mut history) = (kept.session, kept.history);
        session.truncate(kept.reused);
        history.truncate(kept.reused);
        // The fresh session's cache is freed: the kept one takes its place.
        slot.session = Some(session);
        slot.history = history;
        slot.prefilled = kept.reused;
        kept.reused
    }

    /// Bytes the forward pass's buffers take for `g`'s prompt (a full batch if it is text,
    /// whose length is known only once tokenized).
    fn batch_bytes(&self, g: &GenerateRequest) -> Result<u64, Refusal> {
        let slot = self
            .sessions
            .get(&g.session_id)
            .ok_or_else(|| refuse(Status::NoSuchSession, "no open session has this id"))?;
        let m = self
            .models
            .get(&slot.model_id)
            .ok_or_else(|| refuse(Status::NoSuchModel, "the session's model was unloaded"))?;
        let tokens = match &g.prompt {
            Prompt::Tokens(ids) => ids.len(),
            _ => MAX_BATCH,
        };
        Ok(m.cfg.batch_bytes(tokens) as u64)
    }

    /// [`finish_stream`](Self::finish_stream) for a request whose prompt was evaluated
    /// after the `prefill.reused` tokens its cache held: they count in its prompt and as
    /// cached, and the evaluation's time goes to the prefill cost model.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn end_of_run<M: DriverMemory, T: Transport>(
        &mut self,
        id: u64,
        prefill: Prefill,
        result: Result<GenerateOutcome, Refusal>,
        streamed: Streamed,
        sealed: Option<&mut SealedAnswer>,
        driver: &mut LlmDriver<M, T>,
        env: &dyn Environment,
    ) -> Result<EndOfStream, Failure> {
        let reused = prefill.reused as u32;
        let e = self.finish_stream(id, result, streamed, sealed, driver, env)?;
        let e = EndOfStream {
            prompt_tokens: e.prompt_tokens + reused,
            cached_tokens: reused,
            ..e
        };
        let evaluated = e.prompt_tokens.saturating_sub(e.cached_tokens);
        self.kv_evict.costs.note_prefill(
            prefill.model_id,
            prefill.shape,
            prefill.start,
            evaluated.into(),
            e.timings.prompt_ns,
        );
        Ok(e)
    }

    /// Sends the stream's last tokens; the request's end of stream, or why it failed.
    pub(super) fn finish_stream<M: DriverMemory, T: Transport>(
        &mut self,
        id: u64,
        result: Result<GenerateOutcome, Refusal>,
        streamed: Streamed,
        sealed: Option<&mut SealedAnswer>,
        driver: &mut LlmDriver<M, T>,
        env: &dyn Environment,
    ) -> Result<EndOfStream, Failure> {
        if let Some(held) = streamed.held {
            self.send_response(driver, env, &ResponseMsg::Tokens(held))?;
        }
        let tokens = match sealed {
            // The answer's last piece goes out even with no tokens left, unless the answer
            // goes on after a preempt or the engine failed (an error ends it instead).
            Some(answer) => {
                let last = result.is_ok() && !streamed.preempted;
                (last || !streamed.batch.is_empty()).then(|| Tokens {
                    request_id: id,
                    token_ids: alloc::vec![0; streamed.batch.len()],
                    text: answer.seal(&streamed.text, last),
                    logprobs: Vec::new(),
                })
            }
            None => (!streamed.batch.is_empty()).then_some(Tokens {
                request_id: id,
                token_ids: streamed.batch,
                text: streamed.text,
                logprobs: streamed.logprobs,
            }),
        };
        if let Some(tokens) = tokens {
            self.send_response(driver, env, &ResponseMsg::Tokens(tokens))?;
        }
        let outcome = result?;
        self.requests_completed += 1;
        self.tokens_generated += outcome.generated_tokens as u64;
        let end = streamed.end;
        let first = streamed.first.unwrap_or(end);
        Ok(EndOfStream {
            request_id: id,
            reason: match outcome.finish {
                Finish::MaxTokens => StopReason::MaxTokens,
                Finish::EndOfGeneration => StopReason::EndOfGeneration,
                Finish::Stopped if streamed.preempted => StopReason::Preempted,
                // A stop string is an end of generation, as OpenAI's `finish_reason: stop`.
                Finish::Stopped if streamed.stop_hit => StopReason::EndOfGeneration,
                Finish::Stopped => StopReason::Cancelled,
                Finish::ContextFull => StopReason::ContextFull,
            },
            prompt_tokens: outcome.prompt_tokens as u32,
            generated_tokens: outcome.generated_tokens as u32,
            cached_tokens: 0,
            timings: Timings {
                prompt_ns: first.saturating_sub(streamed.start),
                generation_ns: end.saturating_sub(first),
            },
        })
    }
}

/// How an engine error answers its request.
pub(super) fn engine_refusal(e: ModelError) -> Refusal {
    match e {
        ModelError::ContextFull { .. } => refuse(
            Status::ContextFull,
            "the prompt does not fit the session's context",
        ),
        ModelError::BadToken { .. } => refuse(Status::BadRequest, &e.to_string()),
        e => refuse(Status::Internal, &e.to_string()),
    }
}

/// Where a request's prompt evaluation started, for its end of stream and the prefill
/// cost model.
pub(super) struct Prefill {
    model_id: u32,
    /// The model's attention shape (`kv_cost::attention_shape`).
    shape: f64,
    /// The session's position when the evaluation began.
    start: u64,
    /// Prompt tokens the session's cache held already.
    reused: usize,
}

impl Prefill {
    pub(super) fn new(model_id: u32, cfg: &LlamaConfig, start: usize, reused: usize) -> Self {
        Self {
            model_id,
            shape: kv_cost::attention_shape(cfg),
            start: start as u64,
            reused,
        }
    }
}

/// What the engine generates for request `g` from `prompt` (its tokens).
pub(super) fn generation<'p>(g: &GenerateRequest, prompt: &'p [u32]) -> Generation<'p> {
    Generation {
        prompt,
        max_tokens: g.sampling.max_tokens as usize,
        stop_at_eog: !g.sampling.ignore_eog,
    }
}

/// [`remember`] for a generation, with the length of the history's prefix that was
/// prefilled in batches: it grows by an evaluated prompt of 2 or more tokens that extends
/// an all-prefilled history.
pub(super) fn record_turn(
    (history, prefilled): (&mut Vec<u32>, &mut usize),
    prompt: &[u32],
    generated: &[u32],
    n_past: usize,
) {
    let before = history.len();
    if *prefilled == before && prompt.len() >= 2 {
        *prefilled = before + prompt.len();
    }
    remember(history, prompt, generated, n_past);
    *prefilled = (*prefilled).min(history.len());
}

/// Appends to a session's token `history` what its KV cache now holds: the prompt and the
/// generated tokens that were fed back, in that order, `n_past` in all. The same tokens
/// rebuild the cache if it is evicted.
pub(super) fn remember(history: &mut Vec<u32>, prompt: &[u32], generated: &[u32], n_past: usize) {
    history.extend_from_slice(prompt);
    history.extend_from_slice(generated);
    history.truncate(n_past);
}

/// The engine's sampler for the request's parameters and options, and where it leaves
/// logprobs when they are asked for; a bad request if the engine refuses them.
pub(super) fn sampler(
    g: &GenerateRequest,
    n_vocab: usize,
) -> Result<(Sampler, Option<LogprobSink>), Refusal> {
    let s = &g.sampling;
    let defaults = SamplerConfig::default();
    let penalties = g.options.penalties;
    let cfg = SamplerConfig {
        temperature: s.temperature,
        top_k: s.top_k as usize,
        top_p: s.top_p,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        seed: s.seed,
        presence_penalty: penalties.map_or(0.0, |p| p.presence),
        frequency_penalty: penalties.map_or(0.0, |p| p.frequency),
        repeat_last_n: penalties.map_or(defaults.repeat_last_n, |p| p.last_n as usize),
    };
    cfg.validate()
        .map_err(|e| refuse(Status::BadRequest, &e.to_string()))?;
    let mut sampler = Sampler::new(cfg, n_vocab);
    sampler.set_logit_bias(&g.options.logit_bias);
    let sink = g.options.logprobs.map(|top_n| {
        let sink = LogprobSink::default();
        sampler.record_logprobs(usize::from(top_n), sink.clone());
        sink
    });
    Ok((sampler, sink))
}
