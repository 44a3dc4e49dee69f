//! The layer-prefix cache: when the host unloads a sealed model with
//! `UnloadModel::keep_layers`, the plaintext of its first layers (the GGUF header, the
//! embeddings and the first blocks, in the sealed layout's forward order) stays here in
//! private memory, counted in the budget like anything else, with the hash state the body
//! had at their end. A later sealed load with `sealed_flag::RESUME` of a model with the same
//! content digest starts from it: the host sends only the chunks after the prefix, and the
//! unsealer still proves at the end that prefix and chunks hash to the digest
//! (`sealed_model::Unsealer::resume`). A prefix never outlives the guest (it is memory of
//! this guest only), never serves another digest, and is the first thing dropped when
//! anything needs room: it is a cache, never a reason to refuse.

use super::{Environment, LoadedModel, Service};
use alloc::vec::Vec;
use sealed_model::LayerHashes;

/// A kept prefix: its plaintext and the body's hash state at the end of each of its layers.
struct KeptPrefix {
    bytes: Vec<u8>,
    hashes: LayerHashes,
}

/// The kept prefixes, oldest first, at most one per content digest.
#[derive(Default)]
pub(super) struct LayerPrefixes {
    kept: Vec<KeptPrefix>,
}

impl LayerPrefixes {
    /// Takes the prefix kept of the body with `digest`, if any.
    pub(super) fn take(&mut self, digest: &[u8; 32]) -> Option<(Vec<u8>, LayerHashes)> {
        let at = self
            .kept
            .iter()
            .position(|p| p.hashes.content_digest() == digest)?;
        let p = self.kept.remove(at);
        Some((p.bytes, p.hashes))
    }

    /// Drops the oldest prefix; `false` if none is kept.
    pub(super) fn drop_oldest(&mut self) -> bool {
        if self.kept.is_empty() {
            return false;
        }
        self.kept.remove(0);
        true
    }

    /// Keeps `bytes` (a body's first `hashes.layers()` layers), replacing an older prefix
    /// of the same body, and at most `max` in all (the oldest go).
    fn put(&mut self, bytes: Vec<u8>, hashes: LayerHashes, max: usize) {
        self.kept
            .retain(|p| p.hashes.content_digest() != hashes.content_digest());
        while self.kept.len() >= max.max(1) {
            self.kept.remove(0);
        }
        self.kept.push(KeptPrefix { bytes, hashes });
    }
}

impl Service {
    /// Cuts an unloaded `model` to at most its first `keep_layers` sealed layers (never all:
    /// a load must have a chunk to end on) and keeps them; how many layers it kept (0 for a
    /// plaintext model). The file shrinks in place (the allocator frees its tail), so
    /// keeping needs no memory beyond what the model held.
    pub(super) fn keep_layer_prefix(
        &mut self,
        model_id: u32,
        model: LoadedModel,
        keep_layers: u32,
        env: &dyn Environment,
    ) -> u32 {
        let Some(layers) = model.sealed_layers else {
            return 0;
        };
        let n = (keep_layers as usize)
            .min(layers.hashes.layers())
            .min(layers.ranges.len().saturating_sub(1));
        let Some(end) = n
            .checked_sub(1)
            .map(|last| layers.ranges[last].end as usize)
        else {
            return 0;
        };
        let mut bytes = model.file;
        bytes.truncate(end);
        bytes.shrink_to_fit();
        let mut hashes = layers.hashes;
        hashes.truncate(n);
        env.log(&alloc::format!(
            "engine: model {model_id} unloaded; its first {n} of {} sealed layers ({} KiB) \
             kept for its next load",
            layers.ranges.len(),
            end >> 10
        ));
        self.layer_prefixes.put(bytes, hashes, self.max_models);
        n as u32
    }
}
