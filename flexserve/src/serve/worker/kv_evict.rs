//! KV eviction to the host (`feature::KV_EVICT`) in the daemon: evicted caches go to
//! sealed files in the daemon's cache directory. The guest's least recently used kept
//! cache is evicted there rather than dropped after each request, while the guest uses more
//! than [`PRESSURE_PERCENT`] of its budget, and before a session opens, while its KV cache
//! would not fit beside what the guest holds. The guest drops a cache only where the daemon
//! could not evict first (a batch running); what happened is counted in `/metrics`.

use super::{Worker, is_fatal};
use crate::serve::config::KvRestoreMode;
use crate::serve::models::ServedModel;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use virtio_llm::wire::kv_evict::want_flag;
use vmm::guest_vm::{FileKvStore, GuestError, GuestVm};

/// Share of the budget in use above which kept KV caches leave the guest.
const PRESSURE_PERCENT: u64 = 75;
/// Most caches evicted after one request (each costs a round of stats).
const MAX_PER_REQUEST: usize = 8;

/// Where evicted caches go: `$CACHE_DIRECTORY` (systemd's `CacheDirectory=`) or the
/// temporary directory, in a directory of this daemon's own.
fn store_dir() -> PathBuf {
    let base = std::env::var_os("CACHE_DIRECTORY")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    base.join(format!("flexserve-kv-{}", std::process::id()))
}

/// Gives a new guest its store of evicted caches, if it evicts them, and the choice
/// between restore and recompute (`guest.kv_restore`: the guest's, by its measured rates,
/// unless a test or benchmark forces one).
pub(super) fn attach_store(vm: &mut GuestVm, mode: KvRestoreMode) {
    if !vm.evicts_kv() {
        return;
    }
    vm.set_kv_want_flags(match mode {
        KvRestoreMode::Measured => 0,
        KvRestoreMode::Restore => want_flag::FORCE_RESTORE,
        KvRestoreMode::Recompute => want_flag::FORCE_RECOMPUTE,
    });
    let dir = store_dir();
    match FileKvStore::new(&dir) {
        Ok(store) => {
            eprintln!(
                "[flexserve] kept KV caches are evicted sealed to {}",
                dir.display()
            );
            vm.set_kv_store(Box::new(store));
        }
        Err(e) => eprintln!(
            "[flexserve] no KV eviction: cannot use {} ({e}); kept caches are dropped under \
             memory pressure instead",
            dir.display()
        ),
    }
}

impl Worker {
    /// Evicts kept caches while the guest is short of memory (once no request is in
    /// flight: a batching guest evicts between batches), then publishes the counters. A
    /// failure is left for the next request to meet.
    pub(super) fn relieve_kv_pressure(&mut self) {
        if let Err(e) = self.evict_while(&|used, budget| used * 100 > budget * PRESSURE_PERCENT) {
            eprintln!("[flexserve] evicting a kept KV cache: {e}");
        }
        self.publish_kv_counters();
    }

    /// Before a session of `model` opens: evicts kept caches while its KV cache and scratch
    /// would not fit beside what the guest holds, so that the guest need not drop one to
    /// make room for it. A guest that fails meanwhile fails the session's job.
    pub(super) fn evict_for_session(&mut self, model: &ServedModel) -> Result<(), GuestError> {
        if !self.vm.as_ref().is_some_and(|r| r.vm.evicts_kv()) {
            return Ok(());
        }
        let needed = model.file.session_bytes(model.context as usize);
        let evicted = self.evict_while(&|used, budget| used.saturating_add(needed) > budget);
        self.publish_kv_counters();
        match evicted {
            Err(e) if !is_fatal(&e) => {
                // The guest drops a cache instead, and counts it.
                eprintln!("[flexserve] evicting a kept KV cache for a new session: {e}");
                Ok(())
            }
            other => other,
        }
    }

    /// Evicts the least recently used kept cache while `short(used, budget)` holds, at most
    /// [`MAX_PER_REQUEST`] of them.
    fn evict_while(&mut self, short: &dyn Fn(u64, u64) -> bool) -> Result<(), GuestError> {
        let Some(running) = self.vm.as_mut() else {
            return Ok(());
        };
        for _ in 0..MAX_PER_REQUEST {
            let s = running.vm.stats()?;
            if !short(s.memory_used_bytes, s.memory_budget_bytes)
                || running.vm.evict_kv()?.is_none()
            {
                break;
            }
        }
        Ok(())
    }

    /// Adds what eviction did since the last call to `/metrics`.
    fn publish_kv_counters(&mut self) {
        let Some(running) = self.vm.as_mut() else {
            return;
        };
        let c = running.vm.take_kv_counters();
        let m = &self.shared.metrics;
        m.kv_evictions.fetch_add(c.evictions, Ordering::Relaxed);
        m.kv_restores.fetch_add(c.restores, Ordering::Relaxed);
        m.kv_recomputes.fetch_add(c.recomputes, Ordering::Relaxed);
        m.kv_refused.fetch_add(c.refused, Ordering::Relaxed);
        if let Some((restore, recompute)) = c.last_prediction {
            m.kv_predicted_restore_us
                .store(restore.into(), Ordering::Relaxed);
            m.kv_predicted_recompute_us
                .store(recompute.into(), Ordering::Relaxed);
        }
    }
}
