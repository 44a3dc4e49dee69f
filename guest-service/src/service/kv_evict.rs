//! KV eviction to the host (`feature::KV_EVICT`): kept KV caches ([`super::prefix_cache`])
//! sealed here and handed to the host block by block (`KvEvict`), so that under memory
//! pressure a cache leaves private memory without being lost; only its tokens stay, to match
//! later prompts against. A request whose prompt shares an evicted cache's prefix
//! (`KvWant`) gets it back, each block authenticated (`KvRestore`, in `kv_restore.rs`), or
//! evaluates its prompt again, whichever is predicted to be cheaper for the cache's length
//! ([`super::kv_cost`]).
//!
//! The sealing is [`crate::kv_seal`]'s; the host sees ciphertext, a handle, block counts and
//! sizes (which tell it how many tokens a cache holds, as the request's length already does).

use super::prefix_cache::{MIN_REUSE_TOKENS, reusable};
use super::{Environment, Service};
use crate::kv_seal::{BlockPlan, EvictionKey};
use alloc::vec::Vec;
use inference_guest::model::Session;
use virtio_llm::Status;
use virtio_llm::driver::{DriverError, DriverMemory, LlmDriver, Transport};
use virtio_llm::wire::kv_evict::{KvBlock, KvChoice, KvEvict, KvWant, KvWanted, want_flag};
use virtio_llm::wire::request::{GenerateRequest, Prompt, RequestMsg};

/// Evicted caches whose tokens are kept for matching; the oldest is forgotten past this
/// (its blocks on the host become useless).
const MAX_EVICTED: usize = 64;
/// How long a `KvWant` waits for the request it names (the device sends it right after).
const WANT_WAIT_NS: u64 = 2_000_000_000;
/// Polls of the request queue between looks at the clock (each may be an exit).
const POLLS_PER_CLOCK_READ: u32 = 1024;

/// An evicted cache as the guest remembers it: enough to match prompts and to check and
/// rebuild its blocks.
pub(super) struct Evicted {
    pub handle: u32,
    pub model_id: u32,
    pub context_len: u32,
    /// The tokens its positions hold.
    pub history: Vec<u32>,
    pub random: [u8; 16],
    pub epoch: u64,
    pub plan: BlockPlan,
}

impl Evicted {
    pub fn key(&self, root: &[u8; 32], measurement: &[u8; 32]) -> EvictionKey {
        EvictionKey::derive(root, measurement, &self.random, self.handle, self.epoch)
    }
}

/// A cache being handed over: its plaintext stays until the last block is out.
struct Outgoing {
    meta: Evicted,
    key: EvictionKey,
    session: Session,
    next: u32,
    /// The layer whose bytes are being cut, exported once.
    layer: Option<(usize, Vec<u8>)>,
}

/// Everything eviction holds.
#[derive(Default)]
pub(super) struct KvEviction {
    pub enabled: bool,
    next_handle: u32,
    epochs: u64,
    outgoing: Option<Outgoing>,
    pub evicted: Vec<Evicted>,
    pub incoming: Option<super::kv_restore::Incoming>,
    pub costs: super::kv_cost::KvCosts,
}

impl KvEviction {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            ..Self::default()
        }
    }

    /// A restore is under way: requests wait for it.
    pub fn restoring(&self) -> bool {
        self.incoming.is_some()
    }

    /// Drops everything of `model_id` (it was unloaded).
    pub fn forget_model(&mut self, model_id: u32) {
        self.evicted.retain(|e| e.model_id != model_id);
        self.costs.forget_model(model_id);
        if self
            .outgoing
            .as_ref()
            .is_some_and(|o| o.meta.model_id == model_id)
        {
            self.outgoing = None;
        }
        if self
            .incoming
            .as_ref()
            .is_some_and(|i| i.meta.model_id == model_id)
        {
            self.incoming = None;
        }
    }

    fn remember(&mut self, e: Evicted) {
        if self.evicted.len() >= MAX_EVICTED {
            self.evicted.remove(0);
        }
        self.evicted.push(e);
    }
}

fn refused(status: Status, handle: u32) -> KvBlock {
    KvBlock {
        status,
        handle,
        block: 0,
        n_blocks: 0,
        epoch: 0,
        data: Vec::new(),
    }
}

impl Service {
    /// `KvEvict`: block `q.block` of the cache being handed over, or (handle 0) the first
    /// block of the least recently used kept cache, sealed.
    pub(super) fn kv_evict<M: DriverMemory, T: Transport>(
        &mut self,
        q: &KvEvict,
        driver: &LlmDriver<M, T>,
        env: &dyn Environment,
    ) -> KvBlock {
        if !self.kv_evict.enabled {
            return refused(Status::Unsupported, q.handle);
        }
        let Some(root) = driver.key_root() else {
            return refused(Status::Unsupported, q.handle);
        };
        if q.handle == 0 {
            // A hand-over the device gave up goes back to the kept caches.
            if let Some(o) = self.kv_evict.outgoing.take() {
                let m = o.meta;
                self.prefix_cache
                    .keep(m.model_id, m.context_len, o.session, m.history);
            }
            let Some(kept) = self.prefix_cache.take_lru() else {
                return refused(Status::NoSuchSession, 0);
            };
            let ev = &mut self.kv_evict;
            ev.next_handle = ev.next_handle.wrapping_add(1).max(1);
            ev.epochs += 1;
            let mut random = [0u8; 16];
            random[..8].copy_from_slice(&env.random().to_le_bytes());
            random[8..].copy_from_slice(&env.random().to_le_bytes());
            let tokens = kept.history.len();
            let meta = Evicted {
                handle: ev.next_handle,
                model_id: kept.model_id,
                context_len: kept.context_len,
                random,
                epoch: ev.epochs,
                plan: BlockPlan {
                    layers: kept.session.kv_layers(),
                    layer_bytes: kept.session.kv_layer_bytes(tokens),
                },
                history: kept.history,
            };
            ev.outgoing = Some(Outgoing {
                key: meta.key(&root.root, &root.measurement),
                meta,
                session: kept.session,
                next: 0,
                layer: None,
            });
        }
        match self.kv_evict.outgoing.as_mut() {
            Some(o) if o.meta.handle == q.handle || q.handle == 0 => {
                if q.block != o.next {
                    return refused(Status::BadRequest, q.handle);
                }
                self.next_sealed_block(env)
            }
            _ => refused(Status::NoSuchSession, q.handle),
        }
    }

    /// Seals the next block of the cache being handed over; after the last, frees its
    /// plaintext and keeps its tokens.
    fn next_sealed_block(&mut self, env: &dyn Environment) -> KvBlock {
        let Some(o) = self.kv_evict.outgoing.as_mut() else {
            return refused(Status::NoSuchSession, 0);
        };
        let plan = o.meta.plan;
        let block = o.next;
        let (layer, range) = plan.locate(block as usize);
        if o.layer.as_ref().is_none_or(|(l, _)| *l != layer) {
            let mut bytes = Vec::new();
            o.session
                .export_kv_layer(layer, o.meta.history.len(), &mut bytes);
            o.layer = Some((layer, bytes));
        }
        let plain = o.layer.as_ref().map_or(&[][..], |(_, b)| &b[range]);
        let data = o.key.seal(layer as u32, block, plain);
        o.next += 1;
        let reply = KvBlock {
            status: Status::Ok,
            handle: o.meta.handle,
            block,
            n_blocks: plan.n_blocks() as u32,
            epoch: o.meta.epoch,
            data,
        };
        if o.next as usize == plan.n_blocks()
            && let Some(done) = self.kv_evict.outgoing.take()
        {
            env.log(&alloc::format!(
                "engine: kept KV cache evicted sealed as {}: {} tokens in {} blocks, {} KiB",
                done.meta.handle,
                done.meta.history.len(),
                plan.n_blocks(),
                plan.sealed_bytes() >> 10
            ));
            self.kv_evict.remember(done.meta);
        }
        reply
    }

    /// `KvWant`: whether request `q.request_id` goes on from an evicted cache, and how.
    pub(super) fn kv_want<M: DriverMemory, T: Transport>(
        &mut self,
        q: &KvWant,
        driver: &mut LlmDriver<M, T>,
        env: &dyn Environment,
    ) -> Result<KvWanted, DriverError> {
        let none = KvWanted {
            request_id: q.request_id,
            handle: 0,
            choice: KvChoice::None,
            n_blocks: 0,
            tokens: 0,
            restore_us: 0,
            recompute_us: 0,
        };
        if !self.kv_evict.enabled || self.kv_evict.restoring() || self.kv_evict.evicted.is_empty() {
            return Ok(none);
        }
        let Some(g) = self.find_request(q.request_id, driver, env)? else {
            return Ok(none);
        };
        let Some((at, tokens)) = self.evicted_match(&g) else {
            return Ok(none);
        };
        let e = &self.kv_evict.evicted[at];
        let bytes = e.plan.sealed_bytes();
        let predicted = self
            .kv_evict
            .costs
            .predict(e.model_id, tokens as u64, bytes);
        let (restore, why) = if q.flags & want_flag::FORCE_RESTORE != 0 {
            (true, "forced")
        } else if q.flags & want_flag::FORCE_RECOMPUTE != 0 {
            (false, "forced")
        } else if predicted.restore_us.is_none() || predicted.recompute_us.is_none() {
            (predicted.restore(), "not measured yet")
        } else {
            (predicted.restore(), "measured")
        };
        let (handle, n_blocks) = (e.handle, e.plan.n_blocks() as u32);
        let shown = |us: Option<u32>| us.map_or_else(|| "?".into(), |us| alloc::format!("{us}"));
        env.log(&alloc::format!(
            "engine: request {} finds {tokens} tokens in evicted KV cache {handle} ({} KiB): \
             predicted restore {} us, recompute {} us; {} ({why})",
            g.request_id,
            bytes >> 10,
            shown(predicted.restore_us),
            shown(predicted.recompute_us),
            if restore { "restore" } else { "recompute" },
        ));
        let choice = if restore && self.begin_restore(at, &g, driver, env) {
            KvChoice::Restore
        } else {
            self.kv_evict.evicted.remove(at);
            KvChoice::Recompute
        };
        Ok(KvWanted {
            request_id: q.request_id,
            handle,
            choice,
            n_blocks,
            tokens: tokens as u32,
            restore_us: predicted.restore_us.unwrap_or(0),
            recompute_us: predicted.recompute_us.unwrap_or(0),
        })
    }

    /// The generation request `request_id`, taken off the request queue if it is not
    /// queued yet (the device sends it right after its `KvWant`).
    fn find_request<M: DriverMemory, T: Transport>(
        &mut self,
        request_id: u64,
        driver: &mut LlmDriver<M, T>,
        env: &dyn Environment,
    ) -> Result<Option<GenerateRequest>, DriverError> {
        let find = |q: &alloc::collections::VecDeque<RequestMsg>| {
            q.iter().find_map(|r| match r {
                RequestMsg::Generate(g) if g.request_id == request_id => Some(g.clone()),
                _ => None,
            })
        };
        let deadline = env.now_ns().saturating_add(WANT_WAIT_NS);
        for polls in 0u32.. {
            if let Some(g) = find(&self.queued) {
                return Ok(Some(g));
            }
            match driver.poll_request(&mut self.scratch) {
                Ok(Some(r)) => self.queued.push_back(r),
                Ok(None) | Err(DriverError::Malformed { .. }) => core::hint::spin_loop(),
                Err(e) => return Err(e),
            }
            if polls % POLLS_PER_CLOCK_READ == 0 && env.now_ns() > deadline {
                break;
            }
        }
        Ok(None)
    }

    /// Before request `r` runs, when an evicted cache might serve it: serves the commands
    /// already sent (a `KvWant` for `r` comes before it), and holds `r` back if a restore
    /// began. The request to run now, if any.
    pub(super) fn take_kv_wants<M: DriverMemory, T: Transport>(
        &mut self,
        r: RequestMsg,
        driver: &mut LlmDriver<M, T>,
        par: &dyn inference_guest::parallel::Parallel,
        env: &dyn Environment,
    ) -> Result<Option<RequestMsg>, DriverError> {
        if self.kv_evict.evicted.is_empty() || !matches!(r, RequestMsg::Generate(_)) {
            return Ok(Some(r));
        }
        self.queued.push_front(r);
        let mut scratch = core::mem::take(&mut self.scratch);
        loop {
            let reply = match driver.poll_command(&mut scratch) {
                Ok(Some(cmd)) => self.command(cmd, driver, par, env),
                Ok(None) => break,
                Err(DriverError::Malformed { .. }) => super::ack(0, Status::BadRequest, 0),
                Err(e) => {
                    self.scratch = scratch;
                    return Err(e);
                }
            };
            self.send_reply(driver, env, &reply)?;
        }
        self.scratch = scratch;
        if self.kv_evict.restoring() {
            return Ok(None);
        }
        Ok(self.queued.pop_front())
    }

    /// The evicted cache that gives `g`'s prompt more tokens than any kept one, and how
    /// many; `None` unless `g` is a plain prompt on a fresh, shareable session.
    fn evicted_match(&mut self, g: &GenerateRequest) -> Option<(usize, usize)> {
        let plain = matches!(
            g.prompt,
            Prompt::Tokens(_) | Prompt::Text(_) | Prompt::Chat(_)
        );
        let slot = self.sessions.get(&g.session_id)?;
        let fresh =
            slot.history.is_empty() && slot.session.as_ref().is_none_or(|s| s.n_past() == 0);
        if !(plain && fresh && slot.shareable) || self.kv_evict.evicted.is_empty() {
            return None;
        }
        let (model_id, ctx) = (slot.model_id, slot.context_len);
        let prompt = self.models.get_mut(&model_id)?.request_tokens(g).ok()?;
        let kept = self.prefix_cache.best_len(model_id, ctx, &prompt);
        let (at, n) = self
            .kv_evict
            .evicted
            .iter()
            .enumerate()
            .filter(|(_, e)| e.model_id == model_id && e.context_len == ctx)
            .map(|(i, e)| (i, reusable(&e.history, &prompt)))
            .max_by_key(|&(_, n)| n)?;
        (n >= MIN_REUSE_TOKENS && n > kept).then_some((at, n))
    }
}
