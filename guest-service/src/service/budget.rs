//! Living within the memory budget: making room for new allocations, evicting what is
//! least valuable when the budget shrinks, and rebuilding an evicted session's KV cache.

use super::{Environment, LoadedModel, RELEASE_WAIT_NS, SESSION_SCRATCH_BYTES, Service};
use inference_guest::gguf::Gguf;
use inference_guest::model::{Logits, Model, Session};
use inference_guest::parallel::Parallel;
use virtio_llm::Status;
use virtio_llm::driver::{DriverError, DriverMemory, LlmDriver, Transport};
use virtio_llm::wire::memory::BudgetChange;

impl Service {
    /// Makes sure `needed` more bytes can be allocated from the private pool within the
    /// budget: evicts KV caches of idle sessions (never `keep`'s) while the budget is short,
    /// then relinquishes free memory the host still backs if new pages would overrun it.
    pub(super) fn make_room<M: DriverMemory, T: Transport>(
        &mut self,
        needed: u64,
        keep: Option<u32>,
        driver: &mut LlmDriver<M, T>,
        env: &dyn Environment,
    ) -> Result<(), Status> {
        self.make_room_for(needed, &[], keep, driver, env)
    }

    /// [`make_room`](Self::make_room) for `needed` bytes of which `blocks` are single
    /// large allocations (a KV cache's keys and values): evicts on until the pool also has
    /// a free extent for each, since its free memory can be in pieces smaller than a block.
    pub(super) fn make_room_for<M: DriverMemory, T: Transport>(
        &mut self,
        needed: u64,
        blocks: &[u64],
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
            if !self.evict_for_room(keep) {
                return Err(out_of_memory("nothing left to evict"));
            }
        }
        let u = mem.usage();
        if u.resident.saturating_add(u.pending).saturating_add(needed) > u.budget {
            let target = u.budget.saturating_sub(u.pending + needed);
            let park = || env.park();
            // The host's clock: a value near the end of its range must not wrap the deadline
            // into the past (or panic).
            let deadline = env.now_ns().saturating_add(RELEASE_WAIT_NS);
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
        // Checked once released memory is back among the free extents.
        while !mem.fits(blocks) {
            if !self.evict_for_room(keep) {
                return Err(out_of_memory("no free extent large enough"));
            }
        }
        Ok(())
    }

    /// Frees one thing for [`make_room`](Self::make_room): a kept layer prefix (a cache of
    /// unloaded models), an idle session's KV cache (never `keep`'s), then a tokenizer
    /// (rebuilt when text next goes in or out; a generation builds its model's after making
    /// room). `false` when none is left.
    fn evict_for_room(&mut self, keep: Option<u32>) -> bool {
        self.layer_prefixes.drop_oldest()
            || self.evict_session_cache(keep)
            || self.drop_a_tokenizer()
    }

    /// Room for a session of `context_len` positions of model `m` (its KV cache and
    /// scratch), `keep`'s cache spared: the keys and values are one block each.
    pub(super) fn make_session_room<M: DriverMemory, T: Transport>(
        &mut self,
        m: u32,
        context_len: u32,
        keep: Option<u32>,
        driver: &mut LlmDriver<M, T>,
        env: &dyn Environment,
    ) -> Result<(), Status> {
        let model = self.models.get(&m).ok_or(Status::NoSuchModel)?;
        let kv = self.kv_bytes(model, context_len)?;
        let half = kv / 2;
        self.make_room_for(kv + SESSION_SCRATCH_BYTES, &[half, half], keep, driver, env)
    }

    /// Bytes of a KV cache of `context_len` positions for model `m`.
    pub(super) fn kv_bytes(&self, m: &LoadedModel, context_len: u32) -> Result<u64, Status> {
        Ok(m.cfg.kv_cache_bytes(context_len as usize) as u64)
    }

    /// Drops a model's tokenizer (it is rebuilt on demand); `false` if none is built.
    fn drop_a_tokenizer(&mut self) -> bool {
        match self.models.values_mut().find(|m| m.tokenizer.is_some()) {
            Some(m) => {
                m.tokenizer = None;
                m.grammar_vocab = None;
                true
            }
            None => false,
        }
    }

    /// Drops a closed session's kept KV cache, or else the KV cache of the least recently
    /// used session that has one (except `keep`). Counted: where the host takes kept caches
    /// sealed (`KvEvict`), it does so before the guest runs short, and a drop means it could
    /// not.
    pub(super) fn evict_session_cache(&mut self, keep: Option<u32>) -> bool {
        if self.prefix_cache.evict_one() {
            self.kv_caches_dropped += 1;
            return true;
        }
        let victim = self
            .sessions
            .iter()
            .filter(|(id, s)| s.session.is_some() && Some(**id) != keep)
            .min_by_key(|(_, s)| s.last_used)
            .map(|(id, _)| *id);
        match victim.and_then(|id| self.sessions.get_mut(&id)) {
            Some(slot) => {
                slot.session = None;
                self.kv_caches_dropped += 1;
                true
            }
            None => false,
        }
    }

    /// Frees the next least valuable thing: a session's KV cache, a tokenizer, a whole
    /// model (with its sessions), a partial load. `false` when nothing is left.
    pub(super) fn evict_one(&mut self, env: &dyn Environment) -> bool {
        if self.layer_prefixes.drop_oldest() || self.evict_session_cache(None) {
            return true;
        }
        if self.drop_a_tokenizer() {
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
            self.prefix_cache.forget_model(id);
            self.kv_evict.forget_model(id);
            return true;
        }
        // A partial load goes last; its background first touches stop with it.
        env.prefault(0, 0);
        self.loading.take().is_some() | self.abandon_unsealing(env)
    }

    /// A new budget from the host: evict until what is in use fits, then relinquish every
    /// free page above it.
    pub(super) fn apply_budget<M: DriverMemory, T: Transport>(
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

    /// Gives back, unasked (sequence 0), what keeps the pool above its budget once every
    /// report came back. Small blocks can keep a chunk from being trimmed while a budget
    /// change is answered (the reports' own bookkeeping among them) and free it only after:
    /// the host waits for its measure to fit the budget until its deadline, so the guest
    /// must not leave such memory held.
    pub(super) fn trim_to_budget<M: DriverMemory, T: Transport>(
        &mut self,
        driver: &mut LlmDriver<M, T>,
        env: &dyn Environment,
    ) -> Result<(), DriverError> {
        let mem = env.memory();
        let u = mem.usage();
        if u.resident > u.budget {
            let park = || env.park();
            self.relinquisher
                .trim_and_report(driver, mem, u.budget, 0, &park)?;
        }
        Ok(())
    }

    /// Rebuilds an evicted session's KV cache from its token history.
    pub(super) fn restore_session<M: DriverMemory, T: Transport>(
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
        self.make_session_room(model_id, ctx as u32, Some(session_id), driver, env)?;
        let m = self.models.get(&model_id).ok_or(Status::NoSuchModel)?;
        // The cache before the parsed model: parsing allocates, and could take the extents
        // the room check found for the cache's two large blocks.
        let mut session = Session::new(&m.cfg, ctx);
        let gguf = Gguf::parse(&m.file).map_err(|_| Status::Internal)?;
        let model = Model::from_gguf(&gguf, self.kernels).map_err(|_| Status::Internal)?;
        let slot = self
            .sessions
            .get_mut(&session_id)
            .ok_or(Status::NoSuchSession)?;
        if !slot.history.is_empty() {
            session
                .eval(&model, &slot.history, Logits::Last, par)
                .map_err(|_| Status::Internal)?;
        }
        slot.session = Some(session);
        Ok(())
    }
}
