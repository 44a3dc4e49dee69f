//! Sealed-model commands (`feature::SEALED`): `LoadSealedBegin`, `LoadSealedChunk`, and the
//! `LoadModelEnd` that completes a sealed load. Any [`SealError`] (an owner not among the
//! accepted ones included) refuses with `SealRejected`, discards the partial model and says
//! why on the console, in one line. A completed load names its owner (the key's
//! fingerprint) and its mode, and splits its time into copying and decrypting.

use super::{Environment, SESSION_SCRATCH_BYTES, Service};
use crate::unsealing::{OnVcpus, Resume, Unsealing};
use alloc::vec::Vec;
use inference_guest::parallel::Parallel;
use sealed_model::{OwnerPublicKey, SealError, Unsealer, derive_guest_key};
use virtio_llm::Status;
use virtio_llm::driver::{DriverMemory, LlmDriver, Transport};
use virtio_llm::spec::sealed_flag;
use virtio_llm::wire::control::{LoadModelEnd, LoadSealedBegin, LoadSealedChunk, OpenSession};

impl Service {
    /// Accepts a sealed header for this guest, from an accepted owner, and reserves the
    /// memory the load needs; with `sealed_flag::RESUME`, starts after a kept layer prefix
    /// of the same body if there is one. Also the first layer the host must send.
    pub(super) fn sealed_begin<M: DriverMemory, T: Transport>(
        &mut self,
        b: &LoadSealedBegin<'_>,
        driver: &mut LlmDriver<M, T>,
        env: &dyn Environment,
    ) -> (Status, u32) {
        let strawman = b.flags & sealed_flag::STRAWMAN != 0;
        let resume = b.flags & sealed_flag::RESUME != 0;
        if b.flags & !sealed_flag::DEFINED != 0 || (strawman && resume) {
            return (Status::BadRequest, 0);
        }
        let unsealer = match self.accept_header(b, driver, env) {
            Ok(u) => u,
            Err(s) => return (s, 0),
        };
        let kept = match resume {
            true => self.layer_prefixes.take(unsealer.header().content_digest()),
            false => None,
        };
        let unsealer = match kept {
            Some(kept) => match self.sealed_resume(b, unsealer, kept, driver, env) {
                Ok(first_layer) => return (Status::Ok, first_layer),
                Err(Resume::Refused(s)) => return (s, 0),
                Err(Resume::Mismatch(u)) => *u,
            },
            None => unsealer,
        };
        let needs = Unsealing::needs(&unsealer, strawman);
        if let Err(s) = self.make_room(needs, None, driver, env) {
            return (s, 0);
        }
        match Unsealing::begin(b.model_id, unsealer, strawman) {
            Ok(mut u) => {
                u.accepted_owners = b.accepted_owners.len();
                self.start_unsealing(u, env);
                (Status::Ok, 0)
            }
            Err(s) => (s, 0),
        }
    }

    /// Starts a load after the kept prefix `kept` of its body; the first layer the host
    /// must send. A prefix that does not fit the header is dropped.
    fn sealed_resume<M: DriverMemory, T: Transport>(
        &mut self,
        b: &LoadSealedBegin<'_>,
        unsealer: Unsealer,
        kept: (Vec<u8>, sealed_model::LayerHashes),
        driver: &mut LlmDriver<M, T>,
        env: &dyn Environment,
    ) -> Result<u32, Resume> {
        let (layers, kept_bytes) = (kept.1.layers() as u32, kept.0.len());
        // The prefix's allocation grows to the body (moving once): room for all of it. If
        // there is none, the prefix goes and the load starts from the first layer.
        let body = unsealer.header().body_bytes();
        if self.make_room(body, None, driver, env).is_err() {
            env.log(&alloc::format!(
                "engine: sealed model {}: no room beside its kept prefix; loaded whole",
                b.model_id
            ));
            return Err(Resume::Mismatch(alloc::boxed::Box::new(unsealer)));
        }
        let mut u = Unsealing::resume(b.model_id, unsealer, kept.0, kept.1)?;
        u.accepted_owners = b.accepted_owners.len();
        env.log(&alloc::format!(
            "engine: sealed model {} starts after a kept prefix of {layers} layers ({} KiB): \
             only the rest is sent",
            b.model_id,
            kept_bytes >> 10
        ));
        self.start_unsealing(u, env);
        Ok(layers)
    }

    /// Checks a sealed header for this guest (key root, accepted owners, signature,
    /// recipient) and can the guest begin a load now.
    fn accept_header<M: DriverMemory, T: Transport>(
        &mut self,
        b: &LoadSealedBegin<'_>,
        driver: &mut LlmDriver<M, T>,
        env: &dyn Environment,
    ) -> Result<Unsealer, Status> {
        self.can_begin_load(b.model_id)?;
        let Some(root) = driver.key_root() else {
            env.log(&alloc::format!(
                "engine: sealed model {} refused: this guest has no key root",
                b.model_id
            ));
            return Err(Status::Unsupported);
        };
        let key = derive_guest_key(&root.root, &root.measurement);
        // None listed: any owner whose signature verifies (the host's choice to make).
        let accepted: Vec<OwnerPublicKey> = b
            .accepted_owners
            .iter()
            .map(|k| OwnerPublicKey(*k))
            .collect();
        Unsealer::new(b.header, &key, &accepted).map_err(|e| refuse(b.model_id, &e, env))
    }

    /// Makes `u` the load under way.
    fn start_unsealing(&mut self, u: Unsealing, env: &dyn Environment) {
        self.load_ns = (env.now_ns(), 0);
        let (addr, len) = u.buffer();
        env.prefault(addr, len);
        self.unsealing = Some(u);
    }

    /// Opens the next sealed chunk into private memory.
    pub(super) fn sealed_chunk(
        &mut self,
        c: &LoadSealedChunk<'_>,
        par: &dyn Parallel,
        env: &dyn Environment,
    ) -> Status {
        let t0 = env.now_ns();
        let join = OnVcpus(par);
        let result = match self.unsealing.as_mut() {
            Some(u) if u.model_id == c.model_id => {
                u.chunk(c.index, c.data, &|| env.now_ns(), &join)
            }
            _ => return Status::BadRequest,
        };
        // The host's clock may jump, backwards too (saturate, never wrap).
        let spent = env.now_ns().saturating_sub(t0);
        self.load_ns.1 = self.load_ns.1.saturating_add(spent);
        match result {
            Ok(()) => Status::Ok,
            Err(e) => {
                self.abandon_unsealing(env);
                refuse(c.model_id, &e, env)
            }
        }
    }

    /// Opens a session on a sealed model still arriving (the pipeline: its first request
    /// runs as the layers come in). Its KV cache is made by that request, once the model's
    /// shape is in; the room for it (the header's KV bytes per token) is made now.
    pub(super) fn open_arriving_session<M: DriverMemory, T: Transport>(
        &mut self,
        o: &OpenSession,
        driver: &mut LlmDriver<M, T>,
        env: &dyn Environment,
    ) -> Status {
        let kv = match &self.unsealing {
            Some(u) if u.model_id == o.model_id && !u.strawman() => {
                u.header().kv_bytes_per_token() * u64::from(o.context_len)
            }
            _ => return Status::NoSuchModel,
        };
        if let Err(s) = self.make_room(kv + SESSION_SCRATCH_BYTES, None, driver, env) {
            return s;
        }
        self.add_session(o, None);
        Status::Ok
    }

    /// Whether `LoadModelEnd` for `model_id` ends a sealed load.
    pub(super) fn unsealing(&self, model_id: u32) -> bool {
        self.unsealing
            .as_ref()
            .is_some_and(|u| u.model_id == model_id)
    }

    /// Completes a sealed load: every chunk opened, the content digest checked, then the
    /// model parsed and kept as a plaintext one is. The end's `sha256` must be zero.
    pub(super) fn sealed_end(
        &mut self,
        e: &LoadModelEnd,
        par: &dyn Parallel,
        env: &dyn Environment,
    ) -> Status {
        let Some(u) = self.unsealing.take() else {
            return Status::BadRequest;
        };
        env.prefault(0, 0);
        if e.sha256 != [0; 32] {
            return Status::BadRequest;
        }
        let (bytes, owner, t0) = (u.received(), u.owner(), env.now_ns());
        let mode = if u.strawman() {
            "strawman"
        } else {
            "pipelined"
        };
        let accepted = match u.accepted_owners {
            0 => alloc::string::String::from("any owner accepted"),
            n => alloc::format!("one of {n} accepted"),
        };
        let (unsealed, times) = u.finish(&|| env.now_ns(), &OnVcpus(par));
        let (file, _proof, layers) = match unsealed {
            Ok(done) => done,
            Err(err) => {
                self.close_orphans(e.model_id);
                return refuse(e.model_id, &err, env);
            }
        };
        let r = self.keep(e.model_id, file);
        if let Some(m) = self.models.get_mut(&e.model_id) {
            m.sealed_layers = Some(layers);
        }
        self.close_orphans(e.model_id);
        let now = env.now_ns();
        env.log(&alloc::format!(
            "engine: sealed model {} ({} MiB, {mode}, owner {}, {accepted}): {}; \
             {} ms copying, {} ms decrypting",
            e.model_id,
            bytes >> 20,
            owner.fingerprint(),
            self.load_times(t0, now),
            times.copy_ns / 1_000_000,
            times.decrypt_ns / 1_000_000,
        ));
        match r {
            Ok(()) => Status::Ok,
            Err(s) => s,
        }
    }

    /// Drops a partial sealed load, if any; whether there was one.
    pub(super) fn abandon_unsealing(&mut self, env: &dyn Environment) -> bool {
        env.prefault(0, 0);
        match self.unsealing.take() {
            Some(u) => {
                self.close_orphans(u.model_id);
                true
            }
            None => false,
        }
    }

    /// Closes the sessions opened on a sealed model whose load failed (the pipeline opens
    /// them before the model is complete): their next request finds no session.
    fn close_orphans(&mut self, model_id: u32) {
        if !self.models.contains_key(&model_id) {
            self.sessions.retain(|_, s| s.model_id != model_id);
        }
    }
}

/// Refuses a sealed model with one console line naming the error.
fn refuse(model_id: u32, e: &SealError, env: &dyn Environment) -> Status {
    env.log(&alloc::format!(
        "engine: sealed model {model_id} refused: {e}"
    ));
    Status::SealRejected
}
