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
//!
//! Memory: the host sets a budget on the private pool. When it shrinks, the service frees
//! the least valuable data first (KV caches of idle sessions, least recently used first;
//! then tokenizers, which are rebuilt on demand; then whole models) and relinquishes the
//! freed memory. An evicted session keeps its token history (a few bytes per token) and
//! rebuilds its KV cache by evaluating that history again on its next request; a session
//! whose model was evicted is closed, and its next request fails with NoSuchSession.
//!
//! This file holds the state and the command dispatch; `generation.rs` runs requests,
//! `budget.rs` lives within the memory budget, `probe.rs` answers test-only memory probes.

mod budget;
mod generation;
mod probe;
mod token_pacer;

use crate::loader::Loading;
use crate::memory::{PrivateMemory, Relinquisher};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::ToString;
use alloc::vec::Vec;
use inference_guest::gguf::Gguf;
use inference_guest::model::{Model, ModelError, Session};
use inference_guest::parallel::Parallel;
use inference_guest::quant::{CpuFeatures, Kernels};
use inference_guest::tokenizer::Tokenizer;
use virtio_llm::Status;
use virtio_llm::driver::{DriverError, DriverMemory, LlmDriver, Transport};
use virtio_llm::spec::feature;
use virtio_llm::wire::control::{
    Ack, ControlCommand, ControlReply, StatsReply, msg_type as control_type,
};
use virtio_llm::wire::echo::EchoReply;
use virtio_llm::wire::request::RequestMsg;
use virtio_llm::wire::response::{ErrorResponse, ResponseMsg};

/// What the service needs from where it runs.
pub trait Environment {
    /// Monotonic nanoseconds (the VMM's clock: each read may be an exit).
    fn now_ns(&self) -> u64;
    /// A free-running CPU counter that reads without an exit (TSC, `CNTVCT_EL0`), of unknown
    /// rate: the token pacer calibrates it against [`now_ns`](Self::now_ns).
    fn ticks(&self) -> u64;
    /// The private pool.
    fn memory(&self) -> &dyn PrivateMemory;
    /// Sleeps until the device notifies (or a short timeout); the caller re-polls after.
    fn park(&self);
    /// 64 unpredictable bits (memory probes' canaries).
    fn random(&self) -> u64;
    /// Reads `[addr, addr + len)` of guest memory and counts the bytes that are not zero
    /// (memory probes only).
    fn count_nonzero(&self, addr: u64, len: u64) -> u64;
    /// Writes `bytes` to a spare spot of the shared window and returns its address (memory
    /// probes only).
    fn expose(&self, bytes: &[u8]) -> u64;
    /// Writes a line to the guest's console (the VMM's log).
    fn log(&self, line: &str);
    /// Has idle vCPUs first-touch `[addr, addr + len)` of private memory in the background
    /// (`len` 0 withdraws the range); a no-op where first touches are cheap.
    fn prefault(&self, addr: u64, len: u64);
}

/// Private memory a session needs beyond its KV cache: the forward pass's buffers and
/// logits, each rounded up to the pool's 2 MiB granule.
const SESSION_SCRATCH_BYTES: u64 = 32 << 20;
/// Private memory a generation allocates and frees as it runs, beyond its session: the
/// parsed model's views (the vocabulary alone is a few MiB), the sampler, logits.
const GENERATION_SCRATCH_BYTES: u64 = 16 << 20;
/// How long making room may wait for the host to release relinquished memory.
const RELEASE_WAIT_NS: u64 = 2_000_000_000;

/// A loaded model: its file, the ids that end generation, and (built on the first text
/// prompt; token-id prompts never need it) its tokenizer.
struct LoadedModel {
    file: Vec<u8>,
    end_ids: Vec<u32>,
    tokenizer: Option<Tokenizer>,
    last_used: u64,
}

/// An open session. Its KV cache (`session`) may be evicted; `history` (the tokens the
/// cache held) rebuilds it.
struct SessionSlot {
    model_id: u32,
    context_len: u32,
    session: Option<Session>,
    history: Vec<u32>,
    last_used: u64,
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
    /// What `kernels` were chosen from (reported in `StatsReply`).
    cpu_features: CpuFeatures,
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
    relinquisher: Relinquisher,
    /// Ticks on every use of a model or session (least recently used goes first).
    clock: u64,
    /// Whether the device negotiated memory probes, and the probe's canary block.
    diagnostics: bool,
    canary: Option<Vec<u8>>,
    canary_block: (u64, u64),
    /// When the model being loaded began, and the time spent in its chunks (logged).
    load_ns: (u64, u64),
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
    /// A service that computes with `kernels` (chosen from `cpu_features`) and holds at most
    /// `max_models` models and `max_sessions` sessions, for a device that negotiated
    /// `features`.
    pub fn new(
        kernels: Kernels,
        cpu_features: CpuFeatures,
        max_models: u32,
        max_sessions: u32,
        features: u64,
    ) -> Self {
        Self {
            cpu_features,
            relinquisher: Relinquisher::default(),
            clock: 0,
            diagnostics: features & (1 << feature::DIAGNOSTICS) != 0,
            canary: None,
            canary_block: (0, 0),
            load_ns: (0, 0),
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
        self.relinquisher.collect(driver, env.memory())?;
        let mut worked = self.take_budget_changes(driver, env)?;
        let mut scratch = core::mem::take(&mut self.scratch);
        let reply = match driver.poll_command(&mut scratch) {
            Ok(Some(cmd)) => {
                self.take_budget_changes(driver, env)?;
                Some(self.command(cmd, driver, par, env))
            }
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
            self.take_budget_changes(driver, env)?;
            self.request(r, driver, par, env)?;
        }
        Ok(if worked { Step::Worked } else { Step::Idle })
    }

    /// Applies every budget change that has arrived; `true` if there was one.
    ///
    /// Called again once a command or request is in hand: budget changes come on their own
    /// queue, so a host that raises the budget and then sends a request can have the request
    /// picked up after this step's first look found no change. The host publishes the change
    /// first, so once its request is visible the change is too, and the request is served
    /// under the budget the host meant.
    fn take_budget_changes<M: DriverMemory, T: Transport>(
        &mut self,
        driver: &mut LlmDriver<M, T>,
        env: &dyn Environment,
    ) -> Result<bool, DriverError> {
        let mut any = false;
        while let Some(change) = driver.poll_budget(&mut self.scratch)? {
            any = true;
            self.apply_budget(change, driver, env)?;
        }
        Ok(any)
    }

    fn command<M: DriverMemory, T: Transport>(
        &mut self,
        cmd: ControlCommand<'_>,
        driver: &mut LlmDriver<M, T>,
        par: &dyn Parallel,
        env: &dyn Environment,
    ) -> ControlReply {
        match cmd {
            ControlCommand::LoadModelBegin(b) => {
                let status = if self.models.contains_key(&b.model_id) {
                    Status::AlreadyExists
                } else if self.loading.is_some() || self.models.len() >= self.max_models {
                    Status::Busy
                } else if let Err(s) = self.make_room(b.total_bytes, None, driver, env) {
                    s
                } else {
                    match Loading::begin(b.model_id, b.total_bytes) {
                        Ok(l) => {
                            self.load_ns = (env.now_ns(), 0);
                            let (addr, len) = l.buffer();
                            env.prefault(addr, len);
                            self.loading = Some(l);
                            Status::Ok
                        }
                        Err(s) => s,
                    }
                };
                ack(control_type::LOAD_MODEL_BEGIN, status, b.model_id)
            }
            ControlCommand::LoadModelChunk(c) => {
                let t0 = env.now_ns();
                let result = match self.loading.as_mut() {
                    Some(l) if l.model_id == c.model_id => Some(l.chunk(c.offset, c.data, par)),
                    _ => None,
                };
                self.load_ns.1 += env.now_ns() - t0;
                let status = match result {
                    Some(r) => match r {
                        Ok(()) => Status::Ok,
                        Err(s) => {
                            // Any failure discards the partial model.
                            env.prefault(0, 0);
                            self.loading = None;
                            s
                        }
                    },
                    None => Status::BadRequest,
                };
                ack(control_type::LOAD_MODEL_CHUNK, status, c.model_id)
            }
            ControlCommand::LoadModelEnd(e) => {
                let status = match self.loading.take() {
                    Some(l) if l.model_id == e.model_id => {
                        env.prefault(0, 0);
                        let (bytes, t0) = (l.received(), env.now_ns());
                        let r = self.install(l, e.sha256);
                        let now = env.now_ns();
                        env.log(&alloc::format!(
                            "engine: model {} ({} MiB): {} ms from begin, {} ms in chunks, {} ms to check",
                            e.model_id,
                            bytes >> 20,
                            (now - self.load_ns.0) / 1_000_000,
                            self.load_ns.1 / 1_000_000,
                            (now - t0) / 1_000_000
                        ));
                        match r {
                            Ok(()) => Status::Ok,
                            Err(s) => s,
                        }
                    }
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
                    env.prefault(0, 0);
                    self.loading = None;
                    Status::Ok
                } else {
                    Status::NoSuchModel
                };
                ack(control_type::UNLOAD_MODEL, status, u.model_id)
            }
            ControlCommand::OpenSession(o) => {
                let status =
                    self.open_session(o.session_id, o.model_id, o.context_len, driver, env);
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
            ControlCommand::Probe(p) => ControlReply::Probe(self.probe(p, env)),
            ControlCommand::Stats(_) => {
                let usage = env.memory().usage();
                ControlReply::Stats(StatsReply {
                    models_loaded: self.models.len() as u32,
                    sessions_open: self.sessions.len() as u32,
                    memory_used_bytes: usage.in_use,
                    memory_budget_bytes: usage.budget,
                    requests_completed: self.requests_completed,
                    tokens_generated: self.tokens_generated,
                    engine_kernels: self.kernels.isa().code(),
                    cpu_features: self.cpu_features.bits(),
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
        self.clock += 1;
        self.models.insert(
            model_id,
            LoadedModel {
                file,
                end_ids,
                tokenizer: None,
                last_used: self.clock,
            },
        );
        Ok(())
    }

    fn open_session<M: DriverMemory, T: Transport>(
        &mut self,
        session_id: u32,
        model_id: u32,
        context_len: u32,
        driver: &mut LlmDriver<M, T>,
        env: &dyn Environment,
    ) -> Status {
        if self.sessions.contains_key(&session_id) {
            return Status::AlreadyExists;
        }
        if self.sessions.len() >= self.max_sessions {
            return Status::Busy;
        }
        // The parsed views are dropped before making room: they hold private memory too.
        let needed = match self
            .models
            .get(&model_id)
            .map(|m| self.kv_bytes(m, context_len))
        {
            None => return Status::NoSuchModel,
            Some(Err(s)) => return s,
            Some(Ok(kv)) => kv,
        };
        if let Err(s) = self.make_room(needed + SESSION_SCRATCH_BYTES, None, driver, env) {
            return s;
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
        let session = model.new_session(context_len as usize);
        self.clock += 1;
        self.sessions.insert(
            session_id,
            SessionSlot {
                model_id,
                context_len,
                session: Some(session),
                history: Vec::new(),
                last_used: self.clock,
            },
        );
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

fn error_response(request_id: u64, status: Status, message: &str) -> ResponseMsg {
    ResponseMsg::Error(ErrorResponse {
        request_id,
        status,
        message: message.to_string(),
    })
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
