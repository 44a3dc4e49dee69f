//! The worker's side of the layer-prefix cache (`serve::layer_prefix`): it measures each
//! sealed model's load and prefill, asks the guest to keep a prefix when it unloads one,
//! and counts the loads that start after a kept prefix.

use super::{Active, Worker};
use crate::serve::layer_prefix::{LayerTimes, choose};
use std::sync::atomic::Ordering;
use std::time::Duration;
use vmm::guest_vm::{GuestError, SealedLoaded};

/// What the worker knows of one sealed model: its layers' sizes and its measured times.
#[derive(Clone, Debug, Default)]
pub(super) struct Measured {
    layers: Vec<u64>,
    times: LayerTimes,
}

impl Worker {
    /// Unloads guest model `guest_id`, keeping the prefix the zero-stall condition asks
    /// for within the budget left once `incoming` more bytes are loaded.
    pub(super) fn unload_keeping(
        &mut self,
        guest_id: u32,
        incoming: u64,
    ) -> Result<(), GuestError> {
        let config = self.shared.config.layer_prefix;
        let Some(running) = self.vm.as_mut() else {
            return Ok(());
        };
        let name = running
            .residency
            .name_of(guest_id)
            .unwrap_or("?")
            .to_string();
        let max = self.shared.config.memory_max;
        // What stays once it is unloaded and `incoming` is loaded; and its own next load
        // needs room for its whole body beside the prefix (which grows into it).
        let own = running.residency.bytes_of(guest_id).unwrap_or(0);
        let taken = running.residency.used() - own + running.prefixes.bytes() + incoming;
        let max_bytes = max.saturating_sub(taken).min(max.saturating_sub(own));
        let choice = self
            .measured
            .get(&name)
            .and_then(|m| choose(&m.layers, &m.times, &config, max_bytes).map(|c| (c, m)));
        let Some((c, m)) = choice else {
            return running.vm.unload_model(guest_id);
        };
        let kept = running.vm.unload_model_keeping(guest_id, c.keep_layers)?;
        if kept == 0 {
            return Ok(());
        }
        let bytes: u64 = m.layers[..kept as usize].iter().sum();
        running.prefixes.kept(&name, bytes);
        let lp = &self.shared.metrics.layer_prefix;
        lp.kept.fetch_add(1, Ordering::Relaxed);
        lp.chose(&c);
        eprintln!(
            "[flexserve] kept the first {} of {} blocks of model {name} in the guest ({} MiB): \
             per block {:.1} ms compute for a {}-token prompt, {:.1} ms load+decrypt{}",
            kept - 1,
            m.layers.len() - 2,
            bytes >> 20,
            c.block_compute_ns as f64 / 1e6,
            c.prompt_tokens,
            c.block_load_ns as f64 / 1e6,
            if c.stall_free && kept == c.keep_layers {
                "; the rest loads while they compute (zero stall)"
            } else {
                "; fewer than zero stall needs (budget or cap)"
            }
        );
        Ok(())
    }

    /// A sealed model `name` (layers of `layers` bytes) was loaded in `took`: a whole load
    /// measures the load rate; one after a kept prefix is counted.
    pub(super) fn sealed_loaded(
        &mut self,
        name: &str,
        layers: Vec<u64>,
        loaded: &SealedLoaded,
        sealed_bytes: u64,
        took: Duration,
    ) {
        if let Some(running) = self.vm.as_mut() {
            running.prefixes.forget(name);
        }
        let m = self.measured.entry(name.to_string()).or_default();
        m.layers = layers;
        if loaded.resumed_layers == 0 {
            m.times.loaded(took, loaded.body_bytes);
            return;
        }
        let lp = &self.shared.metrics.layer_prefix;
        lp.hits.fetch_add(1, Ordering::Relaxed);
        lp.layers_reused
            .fetch_add(loaded.resumed_layers.into(), Ordering::Relaxed);
        lp.bytes_not_streamed.fetch_add(
            sealed_bytes.saturating_sub(loaded.sent_bytes),
            Ordering::Relaxed,
        );
        eprintln!(
            "[flexserve] model {name} started after the {} layers the guest kept: {} of {} MiB \
             streamed",
            loaded.resumed_layers,
            loaded.sent_bytes >> 20,
            sealed_bytes >> 20
        );
    }

    /// `a` ended: its prefill is a measure of its model's compute.
    pub(super) fn prefilled(&mut self, a: &Active) {
        if !a.job.model.file.is_sealed() {
            return;
        }
        let evaluated = a.prompt_tokens.saturating_sub(a.cached_tokens);
        if let Some(m) = self.measured.get_mut(&a.job.model.id) {
            let (ns, tokens) = (a.timings.prompt_ns, u64::from(evaluated));
            match a.overlapped {
                true => m.times.prefilled_while_loading(ns, tokens),
                false => m.times.prefilled(ns, tokens),
            }
        }
    }
}
