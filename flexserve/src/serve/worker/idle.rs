//! On-demand isolation: a model stays resident for its last request's keep-alive
//! (`models.keep_alive` or the request's `keep_alive`); while no request runs, the worker
//! unloads the models idle longer than that, lowers the guest's budget to what the others
//! need (the freed memory goes back to the host), and stops the guest once no model is
//! left, so an idle daemon holds no guest memory. The next request boots a guest again.

use super::{Active, Running, Worker, is_fatal};
use crate::serve::residency::Expired;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use virtio_llm::spec::{MEMORY_GRANULE, MIN_MEMORY_BUDGET};
use vmm::guest_vm::GuestError;

/// How long the guest has to give memory back when its budget drops (it is stopped if it
/// has not by then).
const SHRINK_DEADLINE: Duration = Duration::from_secs(10);

/// The budget a guest holding models of `used` bytes needs, of a region of `max` bytes.
fn budget_for(used: u64, max: u64) -> u64 {
    used.max(MIN_MEMORY_BUDGET)
        .next_multiple_of(MEMORY_GRANULE)
        .min(max)
}

impl Worker {
    /// `a`'s request is over: its model's keep-alive starts now, as it asked.
    pub(super) fn release(&mut self, a: &Active) {
        let keep = a.job.keep_alive.unwrap_or(self.shared.config.keep_alive);
        if let Some(running) = self.vm.as_mut() {
            running
                .residency
                .released(a.guest_model, keep, Instant::now());
            self.shared.metrics.set_resident(Some(&running.residency));
        }
    }

    /// With no request in flight: unloads the models whose keep-alive ran out, then gives
    /// their memory back to the host, or stops the guest if no model is left.
    pub(super) fn sweep_idle(&mut self) {
        let Some(running) = self.vm.as_mut() else {
            return;
        };
        let expired = running.residency.expired(Instant::now(), &|_| false);
        if expired.is_empty() {
            return;
        }
        // With no model left the guest stops, and a kept prefix with it: keep none then.
        let keep = expired.len() < running.residency.len();
        let mut failed = None;
        for e in &expired {
            let unloaded = match keep {
                true => self.unload_keeping(e.guest_id, 0),
                false => running_vm(&mut self.vm).and_then(|vm| vm.unload_model(e.guest_id)),
            };
            if let Err(err) = unloaded {
                failed = Some((e, err));
                break;
            }
            let Some(running) = self.vm.as_mut() else {
                return;
            };
            running.residency.unloaded(e.guest_id);
            let m = &self.shared.metrics;
            m.model_idle_unloads.fetch_add(1, Ordering::Relaxed);
            eprintln!(
                "[flexserve] unloaded model {} from the guest: idle for {:.0} s, keep_alive {}",
                e.name,
                e.idle.as_secs_f64(),
                e.keep_alive
            );
        }
        let Some(running) = self.vm.as_mut() else {
            return;
        };
        self.shared.metrics.set_resident(Some(&running.residency));
        match failed {
            Some((e, err)) if is_fatal(&err) => {
                self.guest_failed(&format!("unloading idle model {}", e.name), &err);
            }
            Some((e, err)) => {
                // The guest is idle anyway: stopping it gives everything back.
                let why = format!("it refused to unload idle model {}: {err}", e.name);
                self.stop_idle(&why);
            }
            None if running.residency.is_empty() => {
                let why = last_words(&expired);
                self.stop_idle(&why);
            }
            None => self.fit_budget(),
        }
    }

    /// Stops the guest because nothing is resident (`why`); the next request boots one.
    fn stop_idle(&mut self, why: &str) {
        let Some(Running { vm, .. }) = self.vm.take() else {
            return;
        };
        let m = &self.shared.metrics;
        eprintln!(
            "[flexserve] stopping the guest: {why}; its memory goes back to the host and the \
             next request boots it again"
        );
        if let Err(e) = vm.shutdown() {
            eprintln!("[flexserve] the guest had failed before its idle stop: {e}");
        }
        m.set_guest_idle();
        m.guest_idle_stops.fetch_add(1, Ordering::Relaxed);
        m.set_resident(None);
        for gauge in [
            &m.memory_budget_bytes,
            &m.memory_used_bytes,
            &m.memory_held_bytes,
        ] {
            gauge.store(0, Ordering::Relaxed);
        }
        // Its statement stays: the next guest's session key is the same (it depends only on
        // the key root and the images), so requests sealed to it still open.
    }

    /// Lowers the guest's budget to what its resident models need, giving the rest back to
    /// the host (a protected VM's memory cannot shrink while it runs: it stays until the
    /// guest stops).
    fn fit_budget(&mut self) {
        let m = &self.shared.metrics;
        let Some(running) = self.vm.as_mut() else {
            return;
        };
        let Ok(memory) = running.vm.memory() else {
            return;
        };
        let used = running.residency.used() + running.prefixes.bytes();
        let want = budget_for(used, memory.max_bytes);
        if want >= memory.budget_bytes {
            return;
        }
        match running.vm.set_budget(want, SHRINK_DEADLINE) {
            Ok(took) => {
                m.memory_budget_bytes.store(want, Ordering::Relaxed);
                if let Ok(held) = running.vm.memory() {
                    m.memory_held_bytes
                        .store(held.resident_bytes, Ordering::Relaxed);
                }
                eprintln!(
                    "[flexserve] guest budget lowered from {} to {} MiB for its resident \
                     models in {:.0} ms",
                    memory.budget_bytes >> 20,
                    want >> 20,
                    took.as_secs_f64() * 1e3
                );
            }
            Err(GuestError::Memory(e @ vmm::memory_broker::MemoryError::ShrinkIgnored { .. })) => {
                self.guest_failed("giving back idle memory", &GuestError::Memory(e));
            }
            Err(e) => {
                eprintln!("[flexserve] the guest keeps its idle memory until it stops: {e}");
            }
        }
    }

    /// Gives the guest its whole region back as budget before a load (an idle sweep may
    /// have lowered it).
    pub(super) fn raise_budget(&mut self) -> Result<(), GuestError> {
        let m = &self.shared.metrics;
        let Some(running) = self.vm.as_mut() else {
            return Ok(());
        };
        let Ok(memory) = running.vm.memory() else {
            return Ok(());
        };
        if memory.budget_bytes < memory.max_bytes {
            running.vm.set_budget(memory.max_bytes, SHRINK_DEADLINE)?;
            m.memory_budget_bytes
                .store(memory.max_bytes, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The running guest's VM, or why there is none.
fn running_vm(vm: &mut Option<Running>) -> Result<&mut vmm::guest_vm::GuestVm, GuestError> {
    vm.as_mut()
        .map(|r| &mut r.vm)
        .ok_or_else(|| GuestError::Protocol("the guest is not running".into()))
}

/// Why the last models went: "no model resident (tiny idle for 0 s, keep_alive 0s)".
fn last_words(expired: &[Expired]) -> String {
    let each: Vec<String> = expired
        .iter()
        .map(|e| {
            format!(
                "{} idle for {:.0} s, keep_alive {}",
                e.name,
                e.idle.as_secs_f64(),
                e.keep_alive
            )
        })
        .collect();
    format!("no model resident ({})", each.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_idle_budget_covers_the_resident_models_in_whole_granules() {
        let max = 4096 * MIB;
        assert_eq!(budget_for(0, max), MIN_MEMORY_BUDGET);
        assert_eq!(budget_for(100 * MIB, max), 100 * MIB);
        assert_eq!(budget_for(100 * MIB + 1, max), 102 * MIB);
        assert_eq!(budget_for(8192 * MIB, max), max);
        assert_eq!(budget_for(100 * MIB, max) % MEMORY_GRANULE, 0);
    }
}
