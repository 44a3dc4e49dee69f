//! One generation request: from the prompt to its end of stream, tokens streamed as they
//! come, with cancels and budget changes served between tokens.

use super::token_pacer::TokenPacer;
use super::{Environment, GENERATION_SCRATCH_BYTES, Service, error_response, send_blocking};
use alloc::string::ToString;
use alloc::vec::Vec;
use inference_guest::generate::{
    GenerateRequest as EngineRequest, StopReason as EngineStop, generate,
};
use inference_guest::gguf::Gguf;
use inference_guest::model::{Model, ModelError};
use inference_guest::parallel::Parallel;
use inference_guest::sampler::{Sampler, SamplerConfig};
use inference_guest::tokenizer::Tokenizer;
use virtio_llm::Status;
use virtio_llm::driver::{DriverError, DriverMemory, LlmDriver, Transport};
use virtio_llm::spec::MAX_TOKENS_PER_RESPONSE;
use virtio_llm::wire::request::{GenerateRequest, Prompt, RequestMsg};
use virtio_llm::wire::response::{EndOfStream, ResponseMsg, StopReason, Timings, Tokens};

impl Service {
    pub(super) fn generate<M: DriverMemory, T: Transport>(
        &mut self,
        g: GenerateRequest,
        driver: &mut LlmDriver<M, T>,
        par: &dyn Parallel,
        env: &dyn Environment,
    ) -> Result<(), DriverError> {
        let id = g.request_id;
        let fail = |status: Status, message: &str| error_response(id, status, message);
        let evicted = match self.sessions.get(&g.session_id) {
            Some(slot) => slot.session.is_none(),
            None => {
                let e = fail(
                    Status::NoSuchSession,
                    "no open session has this id (sessions of a model evicted under memory \
                     pressure are closed)",
                );
                return send_blocking(driver, env, &e, &mut self.out);
            }
        };
        // A generation allocates as it goes (the parsed model, the sampler, logits): make
        // room for that first, evicting other idle sessions' caches if need be, so an
        // allocation can never fail half-way (a failed allocation ends the guest).
        if let Err(status) =
            self.make_room(GENERATION_SCRATCH_BYTES, Some(g.session_id), driver, env)
        {
            let e = fail(
                status,
                "not enough private memory to run a request within the budget",
            );
            return send_blocking(driver, env, &e, &mut self.out);
        }
        if evicted && let Err(status) = self.restore_session(g.session_id, driver, par, env) {
            let e = fail(
                status,
                "the session's KV cache was evicted under memory pressure and cannot be \
                 rebuilt within the memory budget",
            );
            return send_blocking(driver, env, &e, &mut self.out);
        }
        self.clock += 1;
        let clock = self.clock;
        let Some(slot) = self.sessions.get_mut(&g.session_id) else {
            let e = fail(Status::NoSuchSession, "no open session has this id");
            return send_blocking(driver, env, &e, &mut self.out);
        };
        slot.last_used = clock;
        let Some(session) = slot.session.as_mut() else {
            let e = fail(Status::Internal, "the session's KV cache is missing");
            return send_blocking(driver, env, &e, &mut self.out);
        };
        let history = &mut slot.history;
        let Some(m) = self.models.get_mut(&slot.model_id) else {
            let e = fail(Status::NoSuchModel, "the session's model was unloaded");
            return send_blocking(driver, env, &e, &mut self.out);
        };
        let prompt = match &g.prompt {
            Prompt::Tokens(t) => t.clone(),
            Prompt::Text(s) => {
                if m.tokenizer.is_none() {
                    let built = Gguf::parse(&m.file)
                        .map_err(ModelError::from)
                        .and_then(|gguf| Tokenizer::from_gguf(&gguf).map_err(ModelError::from));
                    match built {
                        Ok(t) => m.tokenizer = Some(t),
                        Err(e) => {
                            let e = fail(Status::Internal, &e.to_string());
                            return send_blocking(driver, env, &e, &mut self.out);
                        }
                    }
                }
                m.tokenizer
                    .as_ref()
                    .map(|t| t.encode(s, true, true))
                    .unwrap_or_default()
            }
        };
        m.last_used = clock;
        let m = &*m;
        let gguf = match Gguf::parse(&m.file) {
            Ok(g) => g,
            Err(e) => {
                let e = fail(Status::Internal, &e.to_string());
                return send_blocking(driver, env, &e, &mut self.out);
            }
        };
        let model = match Model::from_gguf(&gguf, self.kernels) {
            Ok(model) => model,
            Err(e) => {
                let e = fail(Status::Internal, &e.to_string());
                return send_blocking(driver, env, &e, &mut self.out);
            }
        };
        let s = &g.sampling;
        let cfg = SamplerConfig {
            temperature: s.temperature,
            top_k: s.top_k as usize,
            top_p: s.top_p,
            min_p: s.min_p,
            repeat_penalty: s.repeat_penalty,
            seed: s.seed,
            ..SamplerConfig::default()
        };
        if let Err(e) = cfg.validate() {
            let e = fail(Status::BadRequest, &e.to_string());
            return send_blocking(driver, env, &e, &mut self.out);
        }
        let mut sampler = Sampler::new(cfg, model.cfg.n_vocab);
        let end_ids = &m.end_ids;
        let engine_req = EngineRequest {
            prompt: &prompt,
            max_tokens: s.max_tokens as usize,
            stop_at_eog: !s.ignore_eog,
        };
        let start = env.now_ns();
        let mut pacer = TokenPacer::new(start, env.ticks());
        let mut first = None;
        let mut batch: Vec<u32> = Vec::new();
        let mut generated: Vec<u32> = Vec::new();
        let mut link_error = None;
        let out = &mut self.out;
        let queued = &mut self.queued;
        let scratch = &mut self.scratch;
        let relinquisher = &mut self.relinquisher;
        let mut deferred_budget = None;
        let result = generate(
            &model,
            session,
            &mut sampler,
            par,
            &engine_req,
            &|t| end_ids.binary_search(&t).is_ok(),
            &mut |token| {
                let ticks = env.ticks();
                // The first token's time, and (until the counter's rate is known, while every
                // token is sent anyway) one clock read per token to learn it.
                if first.is_none() || !pacer.calibrated() {
                    let now = env.now_ns();
                    first.get_or_insert(now);
                    pacer.calibrate(now, ticks);
                }
                batch.push(token);
                generated.push(token);
                // Send when the pacer says so (the first token at once, then every ~20 ms)
                // and a transmit buffer is free; batch while the host is slower than
                // generation.
                let full = batch.len() >= MAX_TOKENS_PER_RESPONSE;
                if full || pacer.should_send(ticks) {
                    let msg = ResponseMsg::Tokens(Tokens {
                        request_id: id,
                        token_ids: core::mem::take(&mut batch),
                        text: Vec::new(),
                    });
                    let sent = if full {
                        send_blocking(driver, env, &msg, out).map(|()| true)
                    } else {
                        driver.send_response(&msg, out)
                    };
                    match sent {
                        Ok(true) => pacer.sent(),
                        Ok(false) => {
                            if let ResponseMsg::Tokens(t) = msg {
                                batch = t.token_ids;
                            }
                        }
                        Err(e) => {
                            link_error = Some(e);
                            return false;
                        }
                    }
                }
                // A lower budget cannot wait for the end of a long generation: free memory
                // goes back at once, eviction follows when the request ends.
                match driver.poll_budget(scratch) {
                    Ok(None) | Err(DriverError::Malformed { .. }) => {}
                    Ok(Some(change)) => {
                        let mem = env.memory();
                        mem.set_budget(change.new_budget_bytes);
                        let budget = change.new_budget_bytes;
                        let park = || env.park();
                        if let Err(e) = relinquisher.trim_and_report(
                            driver,
                            mem,
                            budget,
                            change.sequence,
                            &park,
                        ) {
                            link_error = Some(e);
                            return false;
                        }
                        deferred_budget = Some(change);
                    }
                    Err(e) => {
                        link_error = Some(e);
                        return false;
                    }
                }
                // A cancel for this request stops it; anything else waits its turn.
                match driver.poll_request(scratch) {
                    Ok(Some(RequestMsg::Cancel(c))) if c.request_id == id => false,
                    Ok(Some(RequestMsg::Cancel(_))) | Ok(None) => true,
                    Ok(Some(other)) => {
                        queued.push_back(other);
                        true
                    }
                    Err(DriverError::Malformed { .. }) => true,
                    Err(e) => {
                        link_error = Some(e);
                        false
                    }
                }
            },
        );
        // The cache now holds the prompt and the generated tokens that were fed back, in that
        // order: keep the same tokens to rebuild it if it is evicted.
        history.extend_from_slice(&prompt);
        history.extend_from_slice(&generated);
        history.truncate(session.n_past());
        if let Some(e) = link_error {
            return Err(e);
        }
        let end = env.now_ns();
        let finished = self.finish_generation(id, result, batch, first, start, end, driver, env);
        if let Some(change) = deferred_budget {
            self.apply_budget(change, driver, env)?;
        }
        finished
    }

    /// Sends what is left of a generation: the last tokens, then its end or its error.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish_generation<M: DriverMemory, T: Transport>(
        &mut self,
        id: u64,
        result: Result<inference_guest::generate::GenerateOutcome, ModelError>,
        batch: Vec<u32>,
        first: Option<u64>,
        start: u64,
        end: u64,
        driver: &mut LlmDriver<M, T>,
        env: &dyn Environment,
    ) -> Result<(), DriverError> {
        let fail = |status: Status, message: &str| error_response(id, status, message);
        if !batch.is_empty() {
            let msg = ResponseMsg::Tokens(Tokens {
                request_id: id,
                token_ids: batch,
                text: Vec::new(),
            });
            send_blocking(driver, env, &msg, &mut self.out)?;
        }
        let outcome = match result {
            Ok(o) => o,
            Err(ModelError::ContextFull { .. }) => {
                let e = fail(
                    Status::ContextFull,
                    "the prompt does not fit the session's context",
                );
                return send_blocking(driver, env, &e, &mut self.out);
            }
            Err(e) => {
                let status = if matches!(e, ModelError::BadToken { .. }) {
                    Status::BadRequest
                } else {
                    Status::Internal
                };
                let e = fail(status, &e.to_string());
                return send_blocking(driver, env, &e, &mut self.out);
            }
        };
        self.requests_completed += 1;
        self.tokens_generated += outcome.generated_tokens as u64;
        let first = first.unwrap_or(end);
        let eos = ResponseMsg::EndOfStream(EndOfStream {
            request_id: id,
            reason: match outcome.stop {
                EngineStop::MaxTokens => StopReason::MaxTokens,
                EngineStop::EndOfGeneration => StopReason::EndOfGeneration,
                EngineStop::Cancelled => StopReason::Cancelled,
                EngineStop::ContextFull => StopReason::ContextFull,
            },
            prompt_tokens: outcome.prompt_tokens as u32,
            generated_tokens: outcome.generated_tokens as u32,
            timings: Timings {
                prompt_ns: first.saturating_sub(start),
                generation_ns: end.saturating_sub(first),
            },
        });
        send_blocking(driver, env, &eos, &mut self.out)
    }
}
