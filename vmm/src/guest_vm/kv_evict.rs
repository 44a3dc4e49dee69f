//! KV eviction to the host (`feature::KV_EVICT`), the host's half: kept KV caches taken
//! from the guest sealed, block by block, into a [`KvStore`]; and before a request that
//! may go on from one, the guest asked (`KvWant`) and, if it restores, every block sent
//! back (`KvRestore`). The guest decides (restore or recompute, by its measured rates) and
//! checks every block; the host only counts what happened.

use super::kv_store::KvStore;
use super::{GuestError, GuestVm};
use virtio_llm::Status;
use virtio_llm::spec::feature;
use virtio_llm::wire::control::{ControlCommand, ControlReply};
use virtio_llm::wire::kv_evict::{KvChoice, KvEvict, KvRestore, KvWant, KvWanted};
use virtio_llm::wire::request::{GenerateRequest, Prompt};

/// What eviction did since the guest booted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvCounters {
    /// Caches handed over sealed.
    pub evictions: u64,
    /// Caches brought back whole.
    pub restores: u64,
    /// Requests that recomputed rather than restore (the guest's choice).
    pub recomputes: u64,
    /// Restores the guest refused (a block missing, out of order or not authentic).
    pub refused: u64,
    /// The guest's predictions, in microseconds, for the last evicted cache a request
    /// found: restore, recompute (0: not measured yet).
    pub last_prediction: Option<(u32, u32)>,
}

/// The store and the counters of one guest.
#[derive(Default)]
pub(super) struct KvHost {
    pub store: Option<Box<dyn KvStore>>,
    pub counters: KvCounters,
    /// `KvWant` flags (tests and benchmarks force a choice).
    pub flags: u32,
}

impl GuestVm {
    /// Whether the guest hands kept KV caches over sealed (`feature::KV_EVICT`).
    pub fn evicts_kv(&self) -> bool {
        self.llm.negotiated(feature::KV_EVICT)
    }

    /// Where evicted caches go; without a store nothing is evicted.
    pub fn set_kv_store(&mut self, store: Box<dyn KvStore>) {
        self.kv.store = Some(store);
    }

    /// Forces the guest's choice between restore and recompute (`want_flag`s; 0: its own).
    pub fn set_kv_want_flags(&mut self, flags: u32) {
        self.kv.flags = flags;
    }

    /// What eviction did since the last call (the counters start again at zero).
    pub fn take_kv_counters(&mut self) -> KvCounters {
        std::mem::take(&mut self.kv.counters)
    }

    /// Evicts the guest's least recently used kept cache into the store: its handle and
    /// blocks, or `None` when it keeps none (or eviction is off, or requests are in flight:
    /// a batching guest evicts only between batches).
    pub fn evict_kv(&mut self) -> Result<Option<(u32, usize)>, GuestError> {
        if !self.evicts_kv() || self.kv.store.is_none() || self.in_flight() > 0 {
            return Ok(None);
        }
        let (mut handle, mut n, mut blocks) = (0, 1, Vec::new());
        while (blocks.len() as u32) < n {
            let block = blocks.len() as u32;
            self.command(&ControlCommand::KvEvict(KvEvict { handle, block }))?;
            let b = match self.llm.recv_reply(self.deadlines.command) {
                Ok(ControlReply::KvBlock(b)) => b,
                Ok(other) => {
                    return Err(GuestError::Protocol(format!(
                        "expected a sealed KV block, got {other:?}"
                    )));
                }
                Err(e) => return Err(self.failure(e)),
            };
            match b.status {
                Status::Ok if b.block == block && (handle == 0 || b.handle == handle) => {}
                Status::NoSuchSession if handle == 0 => return Ok(None),
                status => {
                    return Err(GuestError::Refused {
                        what: "a sealed KV block",
                        status,
                    });
                }
            }
            (handle, n) = (b.handle, b.n_blocks);
            blocks.push(b.data);
        }
        if let Some(store) = self.kv.store.as_mut() {
            store.put(handle, &blocks).map_err(|e| {
                GuestError::Protocol(format!("storing evicted KV cache {handle}: {e}"))
            })?;
        }
        self.kv.counters.evictions += 1;
        eprintln!(
            "[vmm] KV cache {handle} evicted sealed: {} blocks, {} KiB",
            blocks.len(),
            blocks.iter().map(Vec::len).sum::<usize>() >> 10
        );
        Ok(Some((handle, blocks.len())))
    }

    /// Evicts every kept cache; how many.
    pub fn evict_all_kv(&mut self) -> Result<usize, GuestError> {
        let mut n = 0;
        while self.evict_kv()?.is_some() {
            n += 1;
        }
        Ok(n)
    }

    /// Whether `req` goes through `KvWant`: a plain prompt while evicted caches are held.
    pub(super) fn wants_kv(&self, req: &GenerateRequest) -> bool {
        let plain = matches!(
            req.prompt,
            Prompt::Tokens(_) | Prompt::Text(_) | Prompt::Chat(_)
        );
        plain && self.evicts_kv() && self.kv.store.as_ref().is_some_and(|s| !s.is_empty())
    }

    /// Sends `KvWant`, then `send` (the request), then acts on the answer: the blocks of
    /// the cache the guest restores, or the cache forgotten.
    pub(super) fn with_kv_want(
        &mut self,
        req: &GenerateRequest,
        send: impl FnOnce(&mut Self) -> Result<(), GuestError>,
    ) -> Result<(), GuestError> {
        let q = KvWant {
            request_id: req.request_id,
            flags: self.kv.flags,
        };
        self.command(&ControlCommand::KvWant(q))?;
        send(self)?;
        let w = match self.llm.recv_reply(self.deadlines.command) {
            Ok(ControlReply::KvWanted(w)) if w.request_id == req.request_id => w,
            Ok(other) => {
                return Err(GuestError::Protocol(format!(
                    "expected the answer to KvWant {}, got {other:?}",
                    req.request_id
                )));
            }
            Err(e) => return Err(self.failure(e)),
        };
        if w.choice != KvChoice::None {
            self.kv.counters.last_prediction = Some((w.restore_us, w.recompute_us));
        }
        match w.choice {
            KvChoice::None => Ok(()),
            KvChoice::Recompute => {
                self.kv.counters.recomputes += 1;
                self.forget_kv(&w, "recompute");
                Ok(())
            }
            KvChoice::Restore => self.send_kv_blocks(&w),
        }
    }

    fn forget_kv(&mut self, w: &KvWanted, chosen: &str) {
        eprintln!(
            "[vmm] request {} chose {chosen} of {} tokens from evicted KV cache {} (guest's \
             estimates: restore {} us, recompute {} us)",
            w.request_id, w.tokens, w.handle, w.restore_us, w.recompute_us
        );
        if let Some(store) = self.kv.store.as_mut() {
            store.remove(w.handle);
        }
    }

    /// Sends evicted cache `w.handle`'s blocks in order (an empty one for any the store
    /// lacks) until the guest refuses one.
    fn send_kv_blocks(&mut self, w: &KvWanted) -> Result<(), GuestError> {
        let blocks = match self.kv.store.as_mut().map(|s| s.get(w.handle)) {
            Some(Ok(b)) => b,
            Some(Err(e)) => {
                eprintln!("[vmm] reading evicted KV cache {}: {e}", w.handle);
                Vec::new()
            }
            None => Vec::new(),
        };
        for block in 0..w.n_blocks {
            let data = blocks.get(block as usize).map_or(&[][..], Vec::as_slice);
            let q = ControlCommand::KvRestore(KvRestore {
                handle: w.handle,
                block,
                data,
            });
            self.command(&q)?;
            match self.ack(
                "a KV block",
                virtio_llm::wire::kv_evict::msg_type::KV_RESTORE,
            ) {
                Ok(_) => {}
                Err(GuestError::Refused { status, .. }) => {
                    self.kv.counters.refused += 1;
                    eprintln!(
                        "[vmm] the guest refused block {block} of evicted KV cache {} \
                         ({status:?}); request {} recomputes",
                        w.handle, w.request_id
                    );
                    self.forget_kv(w, "recompute after a refusal");
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        self.kv.counters.restores += 1;
        self.forget_kv(w, "restore");
        Ok(())
    }
}
