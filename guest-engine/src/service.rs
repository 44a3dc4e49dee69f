//! The guest's inference service: control commands (load and unload models, open and close
//! sessions, stats) and generation requests from virtio-llm, served by the engine.
//!
//! It is generic over the driver's memory and transport and over the [`Environment`] (clock,
//! memory left, parking), so the very code that runs in the guest also runs on the host
//! against the real device in one process.
//!
//! A model's file stays in memory the host cannot reach (the private region, in the guest);
//! the parsed view of it (`Gguf`, `Model`) borrows the file and is rebuilt per request,
//! which costs well under a millisecond against a whole generation.

use crate::loader::Loading;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::ToString;
use alloc::vec::Vec;
use inference_guest::generate::{
    GenerateRequest as EngineRequest, StopReason as EngineStop, generate,
};
use inference_guest::gguf::Gguf;
use inference_guest::model::{Model, ModelError, Session};
use inference_guest::parallel::Parallel;
use inference_guest::quant::Kernels;
use inference_guest::sampler::{Sampler, SamplerConfig};
use inference_guest::tokenizer::Tokenizer;
use virtio_llm::Status;
use virtio_llm::driver::{DriverError, DriverMemory, LlmDriver, Transport};
use virtio_llm::spec::MAX_TOKENS_PER_RESPONSE;
use virtio_llm::wire::control::{
    Ack, ControlCommand, ControlReply, StatsReply, msg_type as control_type,
};
use virtio_llm::wire::echo::EchoReply;
use virtio_llm::wire::request::{GenerateRequest, Prompt, RequestMsg};
use virtio_llm::wire::response::{
    EndOfStream, ErrorResponse, ResponseMsg, StopReason, Timings, Tokens,
};

/// What the service needs from where it runs.
pub trait Environment {
    /// Monotonic nanoseconds.
    fn now_ns(&self) -> u64;
    /// Bytes of private memory still free, or `None` when unbounded (host tests).
    fn private_free(&self) -> Option<u64>;
    /// Bytes of private memory in use and the region's size, for stats.
    fn private_usage(&self) -> (u64, u64);
    /// Sleeps until the device notifies (or a short timeout); the caller re-polls after.
    fn park(&self);
}

/// A loaded model: its file, the ids that end generation, and (built on the first text
/// prompt; token-id prompts never need it) its tokenizer.
struct LoadedModel {
    file: Vec<u8>,
    end_ids: Vec<u32>,
    tokenizer: Option<Tokenizer>,
}

/// An open session.
struct SessionSlot {
    model_id: u32,
    session: Session,
}

/// What one [`Service::step`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Idle,
    Worked,
}

/// The service's state.
pub struct Service {
    kernels: Kernels,
    max_models: usize,
    max_sessions: usize,
    models: BTreeMap<u32, LoadedModel>,
    loading: Option<Loading>,
    sessions: BTreeMap<u32, SessionSlot>,
    /// Requests that arrived while a generation was running.
    queued: VecDeque<RequestMsg>,
    requests_completed: u64,
    tokens_generated: u64,
    scratch: Vec<u8>,
    out: Vec<u8>,
}

fn model_status(e: &ModelError) -> Status {
    match e {
        ModelError::UnsupportedArchitecture(_) | ModelError::TensorType { .. } => {
            Status::Unsupported
        }
        _ => Status::BadModel,
    }
}

impl Service {
    /// A service that holds at most `max_models` models and `max_sessions` sessions.
    pub fn new(kernels: Kernels, max_models: u32, max_sessions: u32) -> Self {
        Self {
            kernels,
            max_models: max_models.max(1) as usize,
            max_sessions: max_sessions.max(1) as usize,
            models: BTreeMap::new(),
            loading: None,
            sessions: BTreeMap::new(),
            queued: VecDeque::new(),
            requests_completed: 0,
            tokens_generated: 0,
            scratch: Vec::new(),
            out: Vec::new(),
        }
    }

    /// Serves at most one command and one request.
    pub fn step<M: DriverMemory, T: Transport>(
        &mut self,
        driver: &mut LlmDriver<M, T>,
        par: &dyn Parallel,
        env: &dyn Environment,
    ) -> Result<Step, DriverError> {
        let mut worked = false;
        let mut scratch = core::mem::take(&mut self.scratch);
        let reply = match driver.poll_command(&mut scratch) {
            Ok(Some(cmd)) => Some(self.command(cmd, par, env)),
            Ok(None) => None,
            // A malformed command was refused by the driver; answer it so the host's
            // command/reply pairing holds.
            Err(DriverError::Malformed { .. }) => Some(ack(0, Status::BadRequest, 0)),
            Err(e) => return Err(e),
        };
        self.scratch = scratch;
        if let Some(r) = reply {
            worked = true;
            self.send_reply(driver, env, &r)?;
        }
        let request = match self.queued.pop_front() {
            Some(r) => Some(r),
            None => match driver.poll_request(&mut self.scratch) {
                Ok(r) => r,
                // Refused and its buffer reposted; nothing identifies it to answer.
                Err(DriverError::Malformed { .. }) => return Ok(Step::Worked),
                Err(e) => return Err(e),
            },
        };
        if let Some(r) = request {
            worked = true;
            self.request(r, driver, par, env)?;
        }
        Ok(if worked { Step::Worked } else { Step::Idle })
    }

    fn command(
        &mut self,
        cmd: ControlCommand<'_>,
        par: &dyn Parallel,
        env: &dyn Environment,
    ) -> ControlReply {
        match cmd {
            ControlCommand::LoadModelBegin(b) => {
                let status = if self.models.contains_key(&b.model_id) {
                    Status::AlreadyExists
                } else if self.loading.is_some() || self.models.len() >= self.max_models {
                    Status::Busy
                } else if env.private_free().is_some_and(|free| b.total_bytes > free) {
                    Status::OutOfMemory
                } else {
                    match Loading::begin(b.model_id, b.total_bytes) {
                        Ok(l) => {
                            self.loading = Some(l);
                            Status::Ok
                        }
                        Err(s) => s,
                    }
                };
                ack(control_type::LOAD_MODEL_BEGIN, status, b.model_id)
            }
            ControlCommand::LoadModelChunk(c) => {
                let status = match self.loading.as_mut() {
                    Some(l) if l.model_id == c.model_id => match l.chunk(c.offset, c.data, par) {
                        Ok(()) => Status::Ok,
                        Err(s) => {
                            // Any failure discards the partial model.
                            self.loading = None;
                            s
                        }
                    },
                    _ => Status::BadRequest,
                };
                ack(control_type::LOAD_MODEL_CHUNK, status, c.model_id)
            }
            ControlCommand::LoadModelEnd(e) => {
                let status = match self.loading.take() {
                    Some(l) if l.model_id == e.model_id => match self.install(l, e.sha256) {
                        Ok(()) => Status::Ok,
                        Err(s) => s,
                    },
                    other => {
                        self.loading = other;
                        Status::BadRequest
                    }
                };
                ack(control_type::LOAD_MODEL_END, status, e.model_id)
            }
            ControlCommand::UnloadModel(u) => {
                let status = if self.models.remove(&u.model_id).is_some() {
                    self.sessions.retain(|_, s| s.model_id != u.model_id);
                    Status::Ok
                } else if self
                    .loading
                    .as_ref()
                    .is_some_and(|l| l.model_id == u.model_id)
                {
                    self.loading = None;
                    Status::Ok
                } else {
                    Status::NoSuchModel
                };
                ack(control_type::UNLOAD_MODEL, status, u.model_id)
            }
            ControlCommand::OpenSession(o) => {
                let status = self.open_session(o.session_id, o.model_id, o.context_len, env);
                ack(control_type::OPEN_SESSION, status, o.session_id)
            }
            ControlCommand::CloseSession(c) => {
                let status = if self.sessions.remove(&c.session_id).is_some() {
                    Status::Ok
                } else {
                    Status::NoSuchSession
                };
                ack(control_type::CLOSE_SESSION, status, c.session_id)
            }
            ControlCommand::Stats(_) => {
                let (used, size) = env.private_usage();
                ControlReply::Stats(StatsReply {
                    models_loaded: self.models.len() as u32,
                    sessions_open: self.sessions.len() as u32,
                    memory_used_bytes: used,
                    memory_budget_bytes: size,
                    requests_completed: self.requests_completed,
                    tokens_generated: self.tokens_generated,
                })
            }
        }
    }

    /// Checks a complete file as the engine will use it, then keeps it.
    fn install(&mut self, loading: Loading, sha256: [u8; 32]) -> Result<(), Status> {
        let model_id = loading.model_id;
        let file = loading.finish(sha256)?;
        let end_ids = {
            let gguf = Gguf::parse(&file).map_err(|_| Status::BadModel)?;
            Model::from_gguf(&gguf, self.kernels).map_err(|e| model_status(&e))?;
            Tokenizer::end_of_generation_ids(&gguf).map_err(|_| Status::BadModel)?
        };
        self.models.insert(
            model_id,
            LoadedModel {
                file,
                end_ids,
                tokenizer: None,
            },
        );
        Ok(())
    }

    fn open_session(
        &mut self,
        session_id: u32,
        model_id: u32,
        context_len: u32,
        env: &dyn Environment,
    ) -> Status {
        if self.sessions.contains_key(&session_id) {
            return Status::AlreadyExists;
        }
        if self.sessions.len() >= self.max_sessions {
            return Status::Busy;
        }
        let Some(m) = self.models.get(&model_id) else {
            return Status::NoSuchModel;
        };
        let Ok(gguf) = Gguf::parse(&m.file) else {
            return Status::Internal;
        };
        let Ok(model) = Model::from_gguf(&gguf, self.kernels) else {
            return Status::Internal;
        };
        let needed = model.cfg.kv_cache_bytes(context_len as usize) as u64;
        if env.private_free().is_some_and(|free| needed > free) {
            return Status::OutOfMemory;
        }
        let session = model.new_session(context_len as usize);
        self.sessions
            .insert(session_id, SessionSlot { model_id, session });
        Status::Ok
    }

    fn request<M: DriverMemory, T: Transport>(
        &mut self,
        req: RequestMsg,
        driver: &mut LlmDriver<M, T>,
        par: &dyn Parallel,
        env: &dyn Environment,
    ) -> Result<(), DriverError> {
        match req {
            RequestMsg::Generate(g) => self.generate(g, driver, par, env),
            // Nothing is running now: a cancel for an unknown or finished request is a no-op.
            RequestMsg::Cancel(_) => Ok(()),
            RequestMsg::Echo(e) => {
                let reply = ResponseMsg::Echo(EchoReply {
                    request_id: e.request_id,
                    data: e.data,
                });
                self.send_response(driver, env, &reply)
            }
        }
    }

    fn generate<M: DriverMemory, T: Transport>(
        &mut self,
        g: GenerateRequest,
        driver: &mut LlmDriver<M, T>,
        par: &dyn Parallel,
        env: &dyn Environment,
    ) -> Result<(), DriverError> {
        let id = g.request_id;
        let fail = |status: Status, message: &str| {
            ResponseMsg::Error(ErrorResponse {
                request_id: id,
                status,
                message: message.to_string(),
            })
        };
        let Some(slot) = self.sessions.get_mut(&g.session_id) else {
            let e = fail(Status::NoSuchSession, "no open session has this id");
            return send_blocking(driver, env, &e, &mut self.out);
        };
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
        let mut first = None;
        let mut batch: Vec<u32> = Vec::new();
        let mut link_error = None;
        let out = &mut self.out;
        let queued = &mut self.queued;
        let scratch = &mut self.scratch;
        let result = generate(
            &model,
            &mut slot.session,
            &mut sampler,
            par,
            &engine_req,
            &|t| end_ids.binary_search(&t).is_ok(),
            &mut |token| {
                first.get_or_insert_with(|| env.now_ns());
                batch.push(token);
                // Stream at once when a transmit buffer is free; batch while the host is
                // slower than generation.
                let full = batch.len() >= MAX_TOKENS_PER_RESPONSE;
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
                    Ok(true) => {}
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
        if let Some(e) = link_error {
            return Err(e);
        }
        let end = env.now_ns();
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

    fn send_reply<M: DriverMemory, T: Transport>(
        &mut self,
        driver: &mut LlmDriver<M, T>,
        env: &dyn Environment,
        reply: &ControlReply,
    ) -> Result<(), DriverError> {
        while !driver.send_reply(reply, &mut self.out)? {
            if !driver.arm()? {
                env.park();
            }
        }
        Ok(())
    }

    fn send_response<M: DriverMemory, T: Transport>(
        &mut self,
        driver: &mut LlmDriver<M, T>,
        env: &dyn Environment,
        msg: &ResponseMsg,
    ) -> Result<(), DriverError> {
        send_blocking(driver, env, msg, &mut self.out)
    }
}

fn ack(command: u16, status: Status, object_id: u32) -> ControlReply {
    ControlReply::Ack(Ack {
        command,
        status,
        object_id,
    })
}

/// Sends a response, parking while every transmit buffer is with the device.
fn send_blocking<M: DriverMemory, T: Transport>(
    driver: &mut LlmDriver<M, T>,
    env: &dyn Environment,
    msg: &ResponseMsg,
    out: &mut Vec<u8>,
) -> Result<(), DriverError> {
    while !driver.send_response(msg, out)? {
        if !driver.arm()? {
            env.park();
        }
    }
    Ok(())
}
