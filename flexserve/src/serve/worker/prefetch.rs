//! Prefetching an agent workflow's next model (docs/agent-workflows.md). A job may name
//! the model asked after it (`flexserve.next_model` or `[[workflows]]`); once the guest has
//! nothing to run (no request in flight, none queued) the worker loads that model into the
//! guest's free budget, so the workflow's next request finds it resident. It never unloads
//! a model for it: with no room, it says so and leaves the guest as it is.
//!
//! Why not during the answer itself: the guest's engine and its loader share the vCPUs
//! and the guest's control loop takes no load command while it generates, so a prefetch
//! under a running answer would only slow that answer by as much. It runs in the time the
//! client spends between its requests (reading the answer, running tools) instead, and a
//! request that arrives meanwhile waits for the load to end.

use super::{Worker, is_fatal};
use crate::serve::models::ServedModel;
use crate::serve::residency::Prefetch;
use std::sync::Arc;
use std::sync::atomic::Ordering;

impl Worker {
    /// Remembers `next` as the model to prefetch (the latest request's wins).
    pub(super) fn plan_prefetch(&mut self, next: Option<Arc<ServedModel>>) {
        if next.is_some() {
            self.prefetch = next;
        }
    }

    /// Loads the planned next model into free budget, if there is one and room for it.
    /// Only a running guest: an idle-stopped one is not booted for a guess.
    pub(super) fn prefetch_next(&mut self) {
        let Some(model) = self.prefetch.take() else {
            return;
        };
        let Some(running) = self.vm.as_mut() else {
            return;
        };
        let guest_id = match running.residency.place_free(&model.id, model.private_bytes) {
            Prefetch::Resident => return,
            Prefetch::Load(id) => id,
            Prefetch::NoRoom { free } => {
                eprintln!(
                    "[flexserve] not prefetching model {}: it needs {} MiB and the guest has \
                     {} MiB free of guest.memory_max ({} MiB) for {} resident model(s); \
                     nothing is unloaded for a prefetch",
                    model.id,
                    model.private_bytes >> 20,
                    free >> 20,
                    self.shared.config.memory_max >> 20,
                    running.residency.len()
                );
                return;
            }
        };
        eprintln!("[flexserve] prefetching model {}", model.id);
        match self.load(&model, guest_id) {
            Ok(()) => {
                self.shared
                    .metrics
                    .model_prefetches
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if is_fatal(&e) => {
                self.guest_failed(&format!("prefetching model {}", model.id), &e);
            }
            // Logged by `load`; the model's own request loads it again.
            Err(_) => {}
        }
    }
}
