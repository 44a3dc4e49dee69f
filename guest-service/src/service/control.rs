//! Control commands: loading and unloading models, opening and closing sessions, stats.
//! Each handler returns the status the command's `Ack` carries; [`Service::command`] builds
//! the reply, which `step` sends.

use super::{Environment, LoadedModel, Service, SessionSlot, ack};
use crate::loader::Loading;
use alloc::vec::Vec;
use inference_guest::gguf::Gguf;
use inference_guest::model::{Model, ModelError, Session};
use inference_guest::parallel::Parallel;
use inference_guest::tokenizer::{ChatTemplate, Tokenizer};
use virtio_llm::Status;
use virtio_llm::driver::{DriverMemory, LlmDriver, Transport};
use virtio_llm::spec::sealed_flag;
use virtio_llm::wire::control::{
    ControlCommand, ControlReply, LoadModelBegin, LoadModelChunk, LoadModelEnd, OpenSession,
    StatsReply, msg_type as control_type,
};
use virtio_llm::wire::kv_evict::msg_type as kv_type;

fn model_status(e: &ModelError) -> Status {
    match e {
        ModelError::UnsupportedArchitecture(_)
        | ModelError::UnsupportedRopeScaling(_)
        | ModelError::TensorType { .. } => Status::Unsupported,
        _ => Status::BadModel,
    }
}

impl Service {
    /// Serves one control command; the reply to send.
    pub(super) fn command<M: DriverMemory, T: Transport>(
        &mut self,
        cmd: ControlCommand<'_>,
        driver: &mut LlmDriver<M, T>,
        par: &dyn Parallel,
        env: &dyn Environment,
    ) -> ControlReply {
        match cmd {
            ControlCommand::LoadModelBegin(b) => {
                let status = self.load_begin(&b, driver, env);
                ack(control_type::LOAD_MODEL_BEGIN, status, b.model_id)
            }
            ControlCommand::LoadModelChunk(c) => {
                let status = self.load_chunk(&c, par, env);
                ack(control_type::LOAD_MODEL_CHUNK, status, c.model_id)
            }
            ControlCommand::LoadModelEnd(e) => {
                let status = if self.unsealing(e.model_id) {
                    self.sealed_end(&e, par, env)
                } else {
                    self.load_end(&e, env)
                };
                ack(control_type::LOAD_MODEL_END, status, e.model_id)
            }
            ControlCommand::UnloadModel(u) => {
                let (status, kept) = self.unload(u.model_id, u.keep_layers, env);
                // Asked to keep layers, the ack says how many it kept.
                let id = if u.keep_layers > 0 { kept } else { u.model_id };
                ack(control_type::UNLOAD_MODEL, status, id)
            }
            ControlCommand::OpenSession(o) => {
                let status = self.open_session(&o, driver, env);
                ack(control_type::OPEN_SESSION, status, o.session_id)
            }
            ControlCommand::CloseSession(c) => {
                let status = match self.sessions.remove(&c.session_id) {
                    Some(slot) => {
                        self.keep_cache(slot);
                        Status::Ok
                    }
                    None => Status::NoSuchSession,
                };
                ack(control_type::CLOSE_SESSION, status, c.session_id)
            }
            ControlCommand::LoadSealedBegin(b) => {
                let (status, first_layer) = self.sealed_begin(&b, driver, env);
                // A resumable load's ack names the first layer the host must send.
                let id = if b.flags & sealed_flag::RESUME != 0 {
                    first_layer
                } else {
                    b.model_id
                };
                ack(control_type::LOAD_SEALED_BEGIN, status, id)
            }
            ControlCommand::LoadSealedChunk(c) => {
                let status = self.sealed_chunk(&c, par, env);
                ack(control_type::LOAD_SEALED_CHUNK, status, c.model_id)
            }
            ControlCommand::Probe(p) => ControlReply::Probe(self.probe(p, env)),
            ControlCommand::Stats(_) => ControlReply::Stats(self.stats(env)),
            ControlCommand::GetStatement(r) => self.statement(&r, driver),
            ControlCommand::GetToolStyle(q) if self.guest_tools => {
                ControlReply::ToolStyle(self.tool_style(&q))
            }
            ControlCommand::GetToolStyle(q) => {
                ControlReply::ToolStyle(virtio_llm::wire::tool_chat::ToolStyleReply {
                    model_id: q.model_id,
                    status: Status::Unsupported,
                    style: None,
                })
            }
            ControlCommand::KvEvict(q) => ControlReply::KvBlock(self.kv_evict(&q, driver, env)),
            ControlCommand::KvWant(q) => match self.kv_want(&q, driver, env) {
                Ok(w) => ControlReply::KvWanted(w),
                // The link broke while looking for the request: nothing will read a reply.
                Err(_) => ack(kv_type::KV_WANT, Status::Internal, 0),
            },
            ControlCommand::KvRestore(q) => {
                let status = self.kv_restore(&q, env);
                ack(kv_type::KV_RESTORE, status, q.handle)
            }
        }
    }

    /// Reserves memory for a model's file, making room for it first.
    fn load_begin<M: DriverMemory, T: Transport>(
        &mut self,
        b: &LoadModelBegin,
        driver: &mut LlmDriver<M, T>,
        env: &dyn Environment,
    ) -> Status {
        if let Err(s) = self.can_begin_load(b.model_id) {
            return s;
        }
        if let Err(s) = self.make_room(b.total_bytes, None, driver, env) {
            return s;
        }
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
    }

    /// Takes the next chunk of the model being loaded; any failure discards the partial
    /// model.
    fn load_chunk(
        &mut self,
        c: &LoadModelChunk<'_>,
        par: &dyn Parallel,
        env: &dyn Environment,
    ) -> Status {
        let t0 = env.now_ns();
        let result = match self.loading.as_mut() {
            Some(l) if l.model_id == c.model_id => Some(l.chunk(c.offset, c.data, par)),
            _ => None,
        };
        // The clock is the host's: it may jump, backwards too (saturate, never wrap).
        let spent = env.now_ns().saturating_sub(t0);
        self.load_ns.1 = self.load_ns.1.saturating_add(spent);
        match result {
            Some(Ok(())) => Status::Ok,
            Some(Err(s)) => {
                env.prefault(0, 0);
                self.loading = None;
                s
            }
            None => Status::BadRequest,
        }
    }

    /// Checks and keeps the model just received.
    fn load_end(&mut self, e: &LoadModelEnd, env: &dyn Environment) -> Status {
        let l = match self.loading.take() {
            Some(l) if l.model_id == e.model_id => l,
            other => {
                self.loading = other;
                return Status::BadRequest;
            }
        };
        env.prefault(0, 0);
        let (bytes, t0) = (l.received(), env.now_ns());
        let r = self.install(l, e.sha256);
        let now = env.now_ns();
        env.log(&alloc::format!(
            "engine: model {} ({} MiB): {}",
            e.model_id,
            bytes >> 20,
            self.load_times(t0, now)
        ));
        match r {
            Ok(()) => Status::Ok,
            Err(s) => s,
        }
    }

    /// Where the load that ends at `now` spent its time: since its begin, in its chunks, and
    /// checking it (from `checked_from`).
    pub(super) fn load_times(&self, checked_from: u64, now: u64) -> alloc::string::String {
        alloc::format!(
            "{} ms from begin, {} ms in chunks, {} ms to check",
            now.saturating_sub(self.load_ns.0) / 1_000_000,
            self.load_ns.1 / 1_000_000,
            now.saturating_sub(checked_from) / 1_000_000
        )
    }

    /// Whether a load of model `model_id` (plain or sealed) may begin: the id is free, no
    /// other load runs, and there is room for one more model.
    pub(super) fn can_begin_load(&self, model_id: u32) -> Result<(), Status> {
        if self.models.contains_key(&model_id) {
            return Err(Status::AlreadyExists);
        }
        if self.loading.is_some()
            || self.unsealing.is_some()
            || self.models.len() >= self.max_models
        {
            return Err(Status::Busy);
        }
        Ok(())
    }

    /// Checks a complete file as the engine will use it, then keeps it.
    fn install(&mut self, loading: Loading, sha256: [u8; 32]) -> Result<(), Status> {
        let model_id = loading.model_id;
        let file = loading.finish(sha256)?;
        self.keep(model_id, file)
    }

    /// Parses a complete model file as the engine will use it, then keeps it.
    pub(super) fn keep(&mut self, model_id: u32, file: Vec<u8>) -> Result<(), Status> {
        let (cfg, end_ids, template) = {
            let gguf = Gguf::parse(&file).map_err(|_| Status::BadModel)?;
            let cfg = Model::from_gguf(&gguf, self.kernels)
                .map_err(|e| model_status(&e))?
                .cfg;
            let end_ids = Tokenizer::end_of_generation_ids(&gguf).map_err(|_| Status::BadModel)?;
            let template = gguf.get_str("tokenizer.chat_template").ok().flatten();
            (cfg, end_ids, ChatTemplate::detect(template))
        };
        self.clock += 1;
        self.models.insert(
            model_id,
            LoadedModel {
                file,
                cfg,
                end_ids,
                template,
                tokenizer: None,
                grammar_vocab: None,
                last_used: self.clock,
                sealed_layers: None,
            },
        );
        Ok(())
    }

    /// Unloads a model with its sessions (keeping at most `keep_layers` of its first
    /// sealed layers; how many it kept), or abandons its load.
    fn unload(&mut self, model_id: u32, keep_layers: u32, env: &dyn Environment) -> (Status, u32) {
        if let Some(model) = self.models.remove(&model_id) {
            self.sessions.retain(|_, s| s.model_id != model_id);
            self.prefix_cache.forget_model(model_id);
            self.kv_evict.forget_model(model_id);
            let kept = match keep_layers {
                0 => 0,
                n => self.keep_layer_prefix(model_id, model, n, env),
            };
            return (Status::Ok, kept);
        }
        let status = if self
            .loading
            .as_ref()
            .is_some_and(|l| l.model_id == model_id)
        {
            env.prefault(0, 0);
            self.loading = None;
            Status::Ok
        } else if self.unsealing(model_id) {
            self.abandon_unsealing(env);
            Status::Ok
        } else {
            Status::NoSuchModel
        };
        (status, 0)
    }

    /// Opens a session with a KV cache of `o.context_len` positions, making room for it.
    fn open_session<M: DriverMemory, T: Transport>(
        &mut self,
        o: &OpenSession,
        driver: &mut LlmDriver<M, T>,
        env: &dyn Environment,
    ) -> Status {
        if self.sessions.contains_key(&o.session_id) {
            return Status::AlreadyExists;
        }
        if self.sessions.len() >= self.max_sessions {
            return Status::Busy;
        }
        if !self.models.contains_key(&o.model_id) {
            return self.open_arriving_session(o, driver, env);
        }
        // The parsed views are made after making room: they hold private memory too.
        if let Err(s) = self.make_session_room(o.model_id, o.context_len, None, driver, env) {
            return s;
        }
        // Made from the kept shapes: parsing the model would allocate between the room
        // check and the cache's two large blocks, and could take the extents they need.
        let Some(m) = self.models.get(&o.model_id) else {
            return Status::NoSuchModel;
        };
        let session = Session::new(&m.cfg, o.context_len as usize);
        self.add_session(o, Some(session));
        Status::Ok
    }

    /// Keeps a newly opened session (`session`: its KV cache, or `None` to make it when
    /// its first request needs it).
    pub(super) fn add_session(&mut self, o: &OpenSession, session: Option<Session>) {
        self.clock += 1;
        self.sessions.insert(
            o.session_id,
            SessionSlot {
                model_id: o.model_id,
                context_len: o.context_len,
                session,
                history: Vec::new(),
                last_used: self.clock,
                sealed: None,
                shareable: true,
                prefilled: 0,
                constraint: None,
            },
        );
    }

    /// Keeps a closed session's KV cache for a later prompt that starts the same way, if
    /// every prompt it ran was plain.
    fn keep_cache(&mut self, slot: SessionSlot) {
        if let (true, Some(session)) = (slot.shareable, slot.session) {
            let mut history = slot.history;
            history.truncate(slot.prefilled);
            self.prefix_cache
                .keep(slot.model_id, slot.context_len, session, history);
        }
    }

    /// What the service holds and has done.
    fn stats(&self, env: &dyn Environment) -> StatsReply {
        let usage = env.memory().usage();
        StatsReply {
            models_loaded: self.models.len() as u32,
            sessions_open: self.sessions.len() as u32,
            memory_used_bytes: usage.in_use,
            memory_budget_bytes: usage.budget,
            requests_completed: self.requests_completed,
            tokens_generated: self.tokens_generated,
            engine_kernels: self.kernels.isa().code(),
            cpu_features: self.cpu_features.bits(),
            kv_caches_dropped: self.kv_caches_dropped,
        }
    }
}
