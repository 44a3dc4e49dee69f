//! The worker's guest: booting it, and keeping the models its jobs need resident. One guest
//! serves every model: its private memory is `guest.memory_max`, and [`Residency`] decides
//! what it holds. A resident model is used as it is; another is loaded beside it, after the
//! least recently used models without requests in flight are unloaded if the budget or the
//! device's model count needs it.

use super::{Running, Worker, is_fatal};
use crate::serve::metrics::GuestState;
use crate::serve::models::ServedModel;
use crate::serve::residency::{Placement, Residency};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use vmm::devices::virtio_llm::LlmConfig;
use vmm::guest_vm::{Deadlines, GuestConfig, GuestError, GuestVm, SealedLoadOptions, SealedLoaded};
use vmm::hypervisor::IsolationLevel;

/// Where a job's model is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ready {
    /// Resident as this guest model id.
    Model(u32),
    /// Making room would unload a model with requests in flight: wait for them.
    Wait,
    /// Not resident, and room is made for it as this guest model id: the job's first
    /// slice loads it while its prefill runs (`pipelined.rs`).
    Arriving(u32),
}

impl Worker {
    /// Makes sure a guest is up and holds `model` (`busy`: the guest model ids with
    /// requests in flight, which stay); with `pipeline`, a sealed model that is not resident
    /// is only given room ([`Ready::Arriving`]): the caller loads it with its first request.
    pub(super) fn ensure(
        &mut self,
        model: &Arc<ServedModel>,
        busy: &[u32],
        pipeline: bool,
    ) -> Result<Ready, GuestError> {
        if self.vm.is_none() {
            self.start_guest()?;
        }
        let Some(running) = self.vm.as_mut() else {
            return Err(GuestError::Protocol("the guest is not running".into()));
        };
        let placement = running
            .residency
            .place(&model.id, model.private_bytes, &|id| busy.contains(&id));
        match placement {
            Placement::Resident(id) => Ok(Ready::Model(id)),
            Placement::Wait => Ok(Ready::Wait),
            // A batching guest loads and unloads only between batches: the job waits.
            Placement::Load { .. } if running.vm.in_flight() > 0 => Ok(Ready::Wait),
            Placement::Load { guest_id, evict } => {
                let arriving = pipeline && model.file.is_sealed();
                let loaded = self.make_room(model, &evict).and_then(|()| match arriving {
                    // A load needs the budget an idle sweep may have given back.
                    true => self.raise_budget().map(|()| Ready::Arriving(guest_id)),
                    false => self.load(model, guest_id).map(|()| Ready::Model(guest_id)),
                });
                if let Err(e) = &loaded
                    && is_fatal(e)
                {
                    self.guest_failed(&format!("loading model {}", model.id), e);
                }
                loaded
            }
        }
    }

    /// Unloads `evict` to make room for `model`.
    /// Unloads `evict` to make room for `model` (each may leave a layer prefix in the
    /// budget the load leaves free).
    fn make_room(&mut self, model: &ServedModel, evict: &[u32]) -> Result<(), GuestError> {
        for &id in evict {
            self.unload_keeping(id, model.private_bytes)?;
            let Some(running) = self.vm.as_mut() else {
                return Ok(());
            };
            let name = running.residency.name_of(id).unwrap_or("?").to_string();
            running.residency.unloaded(id);
            self.shared
                .metrics
                .model_evictions
                .fetch_add(1, Ordering::Relaxed);
            eprintln!(
                "[flexserve] unloaded model {name} from the guest to make room for {}",
                model.id
            );
        }
        if let Some(running) = self.vm.as_ref() {
            self.shared.metrics.set_resident(Some(&running.residency));
        }
        Ok(())
    }

    /// Streams `model` into the running guest as `guest_id`.
    pub(super) fn load(&mut self, model: &ServedModel, guest_id: u32) -> Result<(), GuestError> {
        // A load needs the budget an idle sweep may have given back.
        self.raise_budget()?;
        let options = self.sealed_options();
        let Some(running) = self.vm.as_mut() else {
            return Err(GuestError::Protocol("the guest is not running".into()));
        };
        let t = Instant::now();
        let loaded = model
            .file
            .load_sealed_or_plain(&mut running.vm, guest_id, &options, &mut |_| {})
            .inspect_err(|e| eprintln!("[flexserve] cannot load model {}: {e}", model.id))?;
        self.model_in(model, guest_id, loaded.as_ref(), t.elapsed());
        Ok(())
    }

    /// How the guest loads a sealed model.
    pub(super) fn sealed_options(&self) -> SealedLoadOptions {
        SealedLoadOptions {
            accepted_owners: self.shared.config.accepted_owners.clone(),
            strawman: false,
            // Where the guest kept a prefix of this very body, it starts after it.
            resume: self.shared.config.layer_prefix.enabled,
        }
    }

    /// Books `model`, now resident as `guest_id` after a load of `took` (`loaded`: what a
    /// sealed load did).
    pub(super) fn model_in(
        &mut self,
        model: &ServedModel,
        guest_id: u32,
        loaded: Option<&SealedLoaded>,
        took: std::time::Duration,
    ) {
        if let Some(l) = loaded {
            let sealed_bytes = model.file.load_bytes();
            self.sealed_loaded(&model.id, model.file.sealed_layers(), l, sealed_bytes, took);
        }
        let Some(running) = self.vm.as_mut() else {
            return;
        };
        let owner = loaded.map(|l| l.owner);
        let m = &self.shared.metrics;
        running.residency.loaded(
            &model.id,
            guest_id,
            model.private_bytes,
            self.shared.config.keep_alive,
            Instant::now(),
        );
        m.model_loads.fetch_add(1, Ordering::Relaxed);
        m.set_resident(Some(&running.residency));
        let signed = owner.map_or(String::new(), |o| {
            format!(", sealed, signed by owner {}", o.fingerprint())
        });
        eprintln!(
            "[flexserve] model {} loaded into the guest in {:.0} ms{signed}; {} resident, \
             {} of {} MiB",
            model.id,
            took.as_secs_f64() * 1e3,
            running.residency.len(),
            running.residency.used() >> 20,
            self.shared.config.memory_max >> 20
        );
    }

    /// Boots a guest with no model; its private memory is `guest.memory_max` (the host backs
    /// only what the guest uses).
    fn start_guest(&mut self) -> Result<(), GuestError> {
        let m = &self.shared.metrics;
        let config = &self.shared.config;
        m.set_guest(GuestState::Starting);
        let t = Instant::now();
        let started = GuestVm::start(
            &self.images,
            GuestConfig {
                vcpus: config.vcpus,
                private_bytes: usize::try_from(config.memory_max).unwrap_or(usize::MAX),
                diagnostics: false,
                isolation: Default::default(),
                min_isolation: config.min_isolation,
                key_root: self.shared.root.sealing,
                kv_reuse: config.kv_reuse,
            },
        );
        let mut vm = match started {
            Ok(vm) => vm,
            Err(e) => {
                m.set_guest(GuestState::Down);
                eprintln!("[flexserve] cannot start the guest: {e}");
                return Err(e);
            }
        };
        super::kv_evict::attach_store(&mut vm, config.kv_restore);
        m.set_isolation(vm.isolation().level());
        vm.set_deadlines(config.deadlines.apply(Deadlines::GENEROUS));
        m.set_guest(GuestState::Up);
        m.guest_starts.fetch_add(1, Ordering::Relaxed);
        m.memory_budget_bytes
            .store(config.memory_max, Ordering::Relaxed);
        eprintln!(
            "[flexserve] guest up ({} MiB private memory at most) in {:.0} ms; isolation {}; {}",
            config.memory_max >> 20,
            t.elapsed().as_secs_f64() * 1e3,
            vm.isolation().describe(),
            self.shared.root.report()
        );
        if vm.isolation().level() == IsolationLevel::None {
            eprintln!(
                "[flexserve] warning: isolation none: the host can read the models and the \
                 prompts in guest memory (guest.min_isolation = \"none\" allows it)"
            );
        }
        #[cfg(feature = "test-hooks")]
        {
            *self
                .shared
                .guest_memory
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(vm.parked_writer_for_tests());
            *self
                .shared
                .private_range
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = vm.private_range_for_tests();
        }
        let statement = if vm.seals_sessions() {
            vm.statement(false)
                .map_err(|e| eprintln!("[flexserve] no guest statement: {e}"))
                .ok()
        } else {
            None
        };
        *self
            .shared
            .statement
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = statement;
        self.vm = Some(Running {
            vm,
            residency: Residency::new(config.memory_max, LlmConfig::default().max_models as usize),
            prefixes: Default::default(),
            kv_dropped: 0,
        });
        Ok(())
    }

    /// The guest died (`doing` what): it is dropped, and the next job boots a new one.
    pub(super) fn guest_failed(&mut self, doing: &str, e: &GuestError) {
        let m = &self.shared.metrics;
        eprintln!("[flexserve] the guest VM failed {doing}: {e}");
        m.guest_crashes.fetch_add(1, Ordering::Relaxed);
        m.set_guest(GuestState::Down);
        m.set_resident(None);
        self.vm = None;
    }
}
