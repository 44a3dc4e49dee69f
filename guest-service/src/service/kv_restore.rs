//! An evicted KV cache brought back (`KvRestore`): each block authenticated as the block of
//! that cache, layer, index and eviction it must be, in order; the first that is missing,
//! out of order or does not open ends the restore, and the request evaluates its prompt
//! instead (with the same answer: only the time to its first token differs). A restored
//! cache joins the kept ones, where the waiting request finds it.

use super::kv_evict::Evicted;
use super::{Environment, Service};
use crate::kv_seal::{EvictionKey, KvRefusal, TAG_BYTES};
use alloc::vec::Vec;
use inference_guest::model::Session;
use virtio_llm::Status;
use virtio_llm::driver::{DriverMemory, LlmDriver, Transport};
use virtio_llm::wire::kv_evict::KvRestore;
use virtio_llm::wire::request::GenerateRequest;

/// A cache coming back.
pub(super) struct Incoming {
    pub request_id: u64,
    pub meta: Evicted,
    key: EvictionKey,
    session: Session,
    next: u32,
    /// The current layer's plaintext so far.
    layer: Vec<u8>,
    started_ns: u64,
}

impl Service {
    /// Readies a session to restore evicted cache `at` into, for request `g`; `false` if
    /// it cannot (the request then recomputes).
    pub(super) fn begin_restore<M: DriverMemory, T: Transport>(
        &mut self,
        at: usize,
        g: &GenerateRequest,
        driver: &mut LlmDriver<M, T>,
        env: &dyn Environment,
    ) -> bool {
        let Some(root) = driver.key_root() else {
            return false;
        };
        let Some(session) = self.restore_target(at, g.session_id, driver, env) else {
            return false;
        };
        let e = &self.kv_evict.evicted[at];
        let tokens = e.history.len();
        if session.kv_layers() != e.plan.layers
            || session.kv_layer_bytes(tokens) != e.plan.layer_bytes
        {
            if let Some(slot) = self.sessions.get_mut(&g.session_id)
                && slot.session.is_none()
            {
                slot.session = Some(session);
            }
            return false;
        }
        let meta = self.kv_evict.evicted.remove(at);
        env.log(&alloc::format!(
            "engine: request {} restores evicted KV cache {}: {tokens} tokens in {} blocks",
            g.request_id,
            meta.handle,
            meta.plan.n_blocks()
        ));
        self.kv_evict.incoming = Some(Incoming {
            request_id: g.request_id,
            key: meta.key(&root.root, &root.measurement),
            meta,
            session,
            next: 0,
            layer: Vec::new(),
            started_ns: env.now_ns(),
        });
        true
    }

    /// The session evicted cache `at` is restored into: request session `session_id`'s own
    /// fresh one (`evicted_match` checked it is fresh, of the same model and context), which
    /// its request takes back with the restored cache from the kept ones
    /// (`ready_session`). Making a second one would hold three caches at once beside another
    /// kept one, and making room for it would drop that one unsealed. A session without a
    /// cache (evicted under pressure before its first request) gets one made.
    fn restore_target<M: DriverMemory, T: Transport>(
        &mut self,
        at: usize,
        session_id: u32,
        driver: &mut LlmDriver<M, T>,
        env: &dyn Environment,
    ) -> Option<Session> {
        let lent = self
            .sessions
            .get_mut(&session_id)
            .and_then(|s| s.session.take());
        if let Some(session) = lent {
            return Some(session);
        }
        let (model_id, ctx) = {
            let e = &self.kv_evict.evicted[at];
            (e.model_id, e.context_len)
        };
        self.make_session_room(model_id, ctx, Some(session_id), driver, env)
            .ok()?;
        let m = self.models.get(&model_id)?;
        Some(Session::new(&m.cfg, ctx as usize))
    }

    /// `KvRestore`: the next block of the cache coming back.
    pub(super) fn kv_restore(&mut self, q: &KvRestore<'_>, env: &dyn Environment) -> Status {
        match self.restore_block(q) {
            Ok(()) => {
                self.finish_restore(env);
                Status::Ok
            }
            Err(why) => {
                let request = self.kv_evict.incoming.take().map(|i| i.request_id);
                match request {
                    Some(id) => env.log(&alloc::format!(
                        "engine: KV restore refused: {why}; request {id} recomputes"
                    )),
                    None => env.log(&alloc::format!("engine: KV restore refused: {why}")),
                }
                Status::SealRejected
            }
        }
    }

    /// Authenticates block `q.block` and takes in its plaintext.
    fn restore_block(&mut self, q: &KvRestore<'_>) -> Result<(), KvRefusal> {
        let handle = q.handle;
        let i = match self.kv_evict.incoming.as_mut() {
            Some(i) if i.meta.handle == handle => i,
            _ => return Err(KvRefusal::UnknownHandle { handle }),
        };
        if q.block != i.next {
            return Err(KvRefusal::OutOfOrder {
                handle,
                expected: i.next,
                got: q.block,
            });
        }
        let block = q.block;
        if q.data.is_empty() {
            return Err(KvRefusal::Missing { handle, block });
        }
        let plan = i.meta.plan;
        let (layer, range) = plan.locate(block as usize);
        let expected = range.len() + TAG_BYTES;
        if q.data.len() != expected {
            return Err(KvRefusal::Length {
                handle,
                block,
                expected,
                got: q.data.len(),
            });
        }
        let mut sealed = q.data.to_vec();
        let plain = i.key.open(layer as u32, block, &mut sealed)?;
        i.layer.extend_from_slice(plain);
        if range.end == plan.layer_bytes {
            let tokens = i.meta.history.len();
            if !i.session.import_kv_layer(layer, tokens, &i.layer) {
                return Err(KvRefusal::DoesNotFit { tokens });
            }
            i.layer.clear();
        }
        i.next += 1;
        Ok(())
    }

    /// After the last block: the cache joins the kept ones and the rate is noted.
    fn finish_restore(&mut self, env: &dyn Environment) {
        let done = self
            .kv_evict
            .incoming
            .as_ref()
            .is_some_and(|i| i.next as usize == i.meta.plan.n_blocks());
        if !done {
            return;
        }
        let Some(mut i) = self.kv_evict.incoming.take() else {
            return;
        };
        let tokens = i.meta.history.len();
        if !i.session.set_evaluated(tokens) {
            env.log(&alloc::format!(
                "engine: KV restore refused: {}; request {} recomputes",
                KvRefusal::DoesNotFit { tokens },
                i.request_id
            ));
            return;
        }
        let bytes = i.meta.plan.sealed_bytes();
        let ns = env.now_ns().saturating_sub(i.started_ns);
        self.kv_evict.costs.note_restore(bytes, ns);
        env.log(&alloc::format!(
            "engine: evicted KV cache {} restored for request {}: {tokens} tokens, {} KiB in {} us",
            i.meta.handle,
            i.request_id,
            bytes >> 10,
            ns / 1000
        ));
        let m = i.meta;
        self.prefix_cache
            .keep(m.model_id, m.context_len, i.session, m.history);
    }
}
