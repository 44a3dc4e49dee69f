//! The sealed-load pipeline in the daemon: a request whose sealed model is not resident
//! loads it with its first slice (`GuestVm::load_sealed_and_generate_messages`), so the
//! guest computes each layer of the prompt as soon as that layer is unsealed instead of
//! after the whole model. After a kept layer prefix (`layer_prefix.rs`) the prompt runs
//! through the kept blocks at once, while the rest streams in. A whole load is kept where
//! no request waits (startup, restart after a crash, prefetch), for plain GGUF models (the
//! guest pipelines only sealed ones), for embeddings, and for a request that needs the
//! model's tool style before its answer starts (the guest reads it from the loaded model).

use super::{Active, Worker, is_fatal};
use crate::serve::models::ServedModel;
use std::sync::atomic::Ordering;
use std::time::Instant;
use virtio_llm::Status;
use virtio_llm::wire::request::GenerateRequest;
use virtio_llm::wire::response::{EndOfStream, Tokens};
use vmm::guest_vm::{BEGIN_SEALED, FirstRequest, GuestError, Interrupt};

impl Worker {
    /// Loads sealed `model` as `guest_id` while `req` (its first request, on a session not
    /// yet open) runs; the request's end. The load time booked is until the last chunk was
    /// taken, which includes the compute of the layers before it (an upper bound).
    pub(super) fn arrive(
        &mut self,
        model: &ServedModel,
        guest_id: u32,
        req: &GenerateRequest,
        on_tokens: &mut dyn FnMut(&Tokens),
        interrupt: &dyn Fn() -> Option<Interrupt>,
    ) -> Result<EndOfStream, GuestError> {
        let mut options = self.sealed_options();
        let Some(running) = self.vm.as_mut() else {
            return Err(GuestError::Protocol("the guest is not running".into()));
        };
        let t = Instant::now();
        let mut last_chunk = t;
        let result = loop {
            let first = FirstRequest {
                model_id: guest_id,
                file: model.file.bytes(),
                options: &options,
                context_len: model.context,
                request: req,
            };
            let r = running.vm.load_sealed_and_generate_messages(
                first,
                &mut |_| last_chunk = Instant::now(),
                on_tokens,
                interrupt,
            );
            match &r {
                // A kept prefix grows into the whole body, both held while it moves; a
                // guest without that room drops the prefix and refuses: load it whole.
                Err(GuestError::Refused {
                    what: BEGIN_SEALED,
                    status: Status::OutOfMemory,
                }) if options.resume => {
                    eprintln!(
                        "[flexserve] no room to resume model {} after its kept prefix; \
                         loading it whole",
                        model.id
                    );
                    options.resume = false;
                }
                _ => break r,
            }
        };
        let (loaded, end) = match result {
            Ok(done) => done,
            Err(e) => {
                eprintln!(
                    "[flexserve] cannot load model {} with its first request: {e}",
                    model.id
                );
                // Any kept prefix was taken by the guest; a request refused after its load
                // ended leaves the model in, which the residency does not count: out.
                running.prefixes.forget(&model.id);
                if !is_fatal(&e) {
                    let _ = running.vm.unload_model(guest_id);
                }
                return Err(e);
            }
        };
        let lp = &self.shared.metrics.layer_prefix;
        lp.pipelined_loads.fetch_add(1, Ordering::Relaxed);
        if loaded.resumed_layers > 0 {
            lp.pipelined_hits.fetch_add(1, Ordering::Relaxed);
        }
        let kept = match loaded.resumed_layers {
            0 => String::new(),
            n => format!(" (through the {n} layers the guest kept before any chunk came)"),
        };
        eprintln!(
            "[flexserve] model {}: its first request ran as it loaded{kept}",
            model.id
        );
        self.model_in(model, guest_id, Some(&loaded), last_chunk - t);
        Ok(end)
    }

    /// `a`'s first slice loaded its model: its prefill includes waits for layers.
    pub(super) fn arrived(a: &mut Active) {
        a.arriving = false;
        a.overlapped = true;
    }
}
