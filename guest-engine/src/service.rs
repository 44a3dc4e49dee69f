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

use crate::loader::Loading;
use crate::memory::{PrivateMemory, Relinquisher};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::ToString;
use alloc::vec::Vec;
use inference_guest::generate::{
    GenerateRequest as EngineRequest, StopReason as EngineStop, generate,
};
use inference_guest::gguf::Gguf;
use inference_guest::model::{Logits, Model, ModelError, Session};
use inference_guest::parallel::Parallel;
use inference_guest::quant::Kernels;
use inference_guest::sampler::{Sampler, SamplerConfig};
use inference_guest::tokenizer::Tokenizer;
use virtio_llm::Status;
use virtio_llm::driver::{DriverError, DriverMemory, LlmDriver, Transport};
use virtio_llm::spec::MAX_TOKENS_PER_RESPONSE;
use virtio_llm::spec::feature;
use virtio_llm::wire::control::{
    Ack, ControlCommand, ControlReply, StatsReply, msg_type as control_type,
};
use virtio_llm::wire::echo::EchoReply;
use virtio_llm::wire::memory::BudgetChange;
use virtio_llm::wire::probe::{CANARY_BYTES, MemoryProbe, ProbeOp, ProbeReply, fnv1a};
use virtio_llm::wire::request::{GenerateRequest, Prompt, RequestMsg};
use virtio_llm::wire::response::{
    EndOfStream, ErrorResponse, ResponseMsg, StopReason, Timings, Tokens,
};

/// What the service needs from where it runs.
pub trait Environment {
    /// Monotonic nanoseconds.
    fn now_ns(&self) -> u64;
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
    canary_bytes: [u8; CANARY_BYTES],
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
    /// A service that holds at most `max_models` models and `max_sessions` sessions, for a
    /// device that negotiated `features`.
    pub fn new(kernels: Kernels, max_models: u32, max_sessions: u32, features: u64) -> Self {
        Self {
            relinquisher: Relinquisher::default(),
            clock: 0,
            diagnostics: features & (1 << feature::DIAGNOSTICS) != 0,
            canary: None,
            canary_block: (0, 0),
            canary_bytes: [0; CANARY_BYTES],
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
        let mut worked = false;
        self.relinquisher.collect(driver, env.memory())?;
        if let Some(change) = driver.poll_budget(&mut self.scratch)? {
            worked = true;
            self.apply_budget(change, driver, env)?;
        }
        let mut scratch = core::mem::take(&mut self.scratch);
        let reply = match driver.poll_command(&mut scratch) {
            Ok(Some(cmd)) => Some(self.command(cmd, driver, par, env)),
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

    /// Makes sure `needed` more bytes can be allocated from the private pool within the
    /// budget: evicts KV caches of idle sessions (never `keep`'s) while the budget is short,
    /// then relinquishes free memory the host still backs if new pages would overrun it.
    fn make_room<M: DriverMemory, T: Transport>(
        &mut self,
        needed: u64,
        keep: Option<u32>,
        driver: &mut LlmDriver<M, T>,
        env: &dyn Environment,
    ) -> Result<(), Status> {
        let mem = env.memory();
        let out_of_memory = |why: &str| {
            let u = mem.usage();
            env.log(&alloc::format!(
                "engine: out of memory ({why}): {} MiB needed, {} MiB in use, {} MiB held, {} \
                 MiB pending, budget {} MiB",
                needed >> 20,
                u.in_use >> 20,
                u.resident >> 20,
                u.pending >> 20,
                u.budget >> 20
            ));
            Status::OutOfMemory
        };
        while mem.usage().available() < needed {
            if !self.evict_session_cache(keep) {
                return Err(out_of_memory("nothing left to evict"));
            }
        }
        let u = mem.usage();
        if u.resident + u.pending + needed > u.budget {
            let target = u.budget.saturating_sub(u.pending + needed);
            let park = || env.park();
            let deadline = env.now_ns() + RELEASE_WAIT_NS;
            let released = self
                .relinquisher
                .trim_and_report(driver, mem, target, 0, &park)
                .and_then(|_| {
                    self.relinquisher
                        .wait_all(driver, mem, &park, &|| env.now_ns() > deadline)
                });
            if !matches!(released, Ok(true)) {
                return Err(out_of_memory(
                    "the host did not release relinquished memory",
                ));
            }
        }
        Ok(())
    }

    /// Bytes of a KV cache of `context_len` positions for model `m`.
    fn kv_bytes(&self, m: &LoadedModel, context_len: u32) -> Result<u64, Status> {
        let gguf = Gguf::parse(&m.file).map_err(|_| Status::Internal)?;
        let model = Model::from_gguf(&gguf, self.kernels).map_err(|_| Status::Internal)?;
        Ok(model.cfg.kv_cache_bytes(context_len as usize) as u64)
    }

    /// Drops the KV cache of the least recently used session that has one (except `keep`).
    fn evict_session_cache(&mut self, keep: Option<u32>) -> bool {
        let victim = self
            .sessions
            .iter()
            .filter(|(id, s)| s.session.is_some() && Some(**id) != keep)
            .min_by_key(|(_, s)| s.last_used)
            .map(|(id, _)| *id);
        match victim.and_then(|id| self.sessions.get_mut(&id)) {
            Some(slot) => {
                slot.session = None;
                true
            }
            None => false,
        }
    }

    /// Frees the next least valuable thing: a session's KV cache, a tokenizer, a whole
    /// model (with its sessions), a partial load. `false` when nothing is left.
    fn evict_one(&mut self, env: &dyn Environment) -> bool {
        if self.evict_session_cache(None) {
            return true;
        }
        if let Some(m) = self.models.values_mut().find(|m| m.tokenizer.is_some()) {
            m.tokenizer = None;
            return true;
        }
        let oldest = self
            .models
            .iter()
            .min_by_key(|(_, m)| m.last_used)
            .map(|(id, _)| *id);
        if let Some(id) = oldest {
            self.models.remove(&id);
            self.sessions.retain(|_, s| s.model_id != id);
            return true;
        }
        // A partial load goes last; its background first touches stop with it.
        env.prefault(0, 0);
        self.loading.take().is_some()
    }

    /// A new budget from the host: evict until what is in use fits, then relinquish every
    /// free page above it.
    fn apply_budget<M: DriverMemory, T: Transport>(
        &mut self,
        change: BudgetChange,
        driver: &mut LlmDriver<M, T>,
        env: &dyn Environment,
    ) -> Result<(), DriverError> {
        let mem = env.memory();
        let budget = change.new_budget_bytes;
        mem.set_budget(budget);
        while mem.usage().in_use > budget && self.evict_one(env) {}
        let park = || env.park();
        self.relinquisher
            .trim_and_report(driver, mem, budget, change.sequence, &park)?;
        Ok(())
    }

    /// Rebuilds an evicted session's KV cache from its token history.
    fn restore_session<M: DriverMemory, T: Transport>(
        &mut self,
        session_id: u32,
        driver: &mut LlmDriver<M, T>,
        par: &dyn Parallel,
        env: &dyn Environment,
    ) -> Result<(), Status> {
        let (model_id, ctx) = match self.sessions.get(&session_id) {
            Some(s) => (s.model_id, s.context_len as usize),
            None => return Err(Status::NoSuchSession),
        };
        let m = self.models.get(&model_id).ok_or(Status::NoSuchModel)?;
        let needed = self.kv_bytes(m, ctx as u32)? + SESSION_SCRATCH_BYTES;
        self.make_room(needed, Some(session_id), driver, env)?;
        let m = self.models.get(&model_id).ok_or(Status::NoSuchModel)?;
        let gguf = Gguf::parse(&m.file).map_err(|_| Status::Internal)?;
        let model = Model::from_gguf(&gguf, self.kernels).map_err(|_| Status::Internal)?;
        let slot = self
            .sessions
            .get_mut(&session_id)
            .ok_or(Status::NoSuchSession)?;
        let mut session = model.new_session(ctx);
        if !slot.history.is_empty() {
            session
                .eval(&model, &slot.history, Logits::Last, par)
                .map_err(|_| Status::Internal)?;
        }
        slot.session = Some(session);
        Ok(())
    }

    /// Answers a memory probe (test-only; see `virtio_llm::wire::probe`).
    fn probe(&mut self, p: MemoryProbe, env: &dyn Environment) -> ProbeReply {
        let mut reply = ProbeReply {
            op: p.op,
            status: Status::Ok,
            block_addr: self.canary_block.0,
            block_len: self.canary_block.1,
            private_hash: 0,
            nonzero_bytes: 0,
            exposed_addr: 0,
        };
        if !self.diagnostics {
            reply.status = Status::Unsupported;
            return reply;
        }
        match p.op {
            ProbeOp::PlaceCanary => {
                let mut random = [0u8; CANARY_BYTES];
                for chunk in random.chunks_exact_mut(8) {
                    chunk.copy_from_slice(&env.random().to_le_bytes());
                }
                let len = virtio_llm::spec::MEMORY_GRANULE as usize;
                let mut block = Vec::new();
                if block.try_reserve_exact(len).is_err() {
                    reply.status = Status::OutOfMemory;
                    return reply;
                }
                while block.len() < len {
                    block.extend_from_slice(&random);
                }
                reply.private_hash = fnv1a(&random);
                self.canary_block = (block.as_ptr() as u64, len as u64);
                (reply.block_addr, reply.block_len) = self.canary_block;
                self.canary = Some(block);
                self.canary_bytes = random;
            }
            ProbeOp::ExposeCanary if self.canary.is_none() => reply.status = Status::BadRequest,
            ProbeOp::ExposeCanary => {
                reply.private_hash = fnv1a(&self.canary_bytes);
                reply.exposed_addr = env.expose(&self.canary_bytes);
            }
            ProbeOp::DropCanary => self.canary = None,
            ProbeOp::CheckCanaryBlock => {
                if self.canary.is_some() || self.canary_block.1 == 0 {
                    reply.status = Status::BadRequest;
                } else {
                    let (addr, len) = self.canary_block;
                    reply.nonzero_bytes = env.count_nonzero(addr, len);
                }
            }
        }
        reply
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
                first.get_or_insert_with(|| env.now_ns());
                batch.push(token);
                generated.push(token);
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
    fn finish_generation<M: DriverMemory, T: Transport>(
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
