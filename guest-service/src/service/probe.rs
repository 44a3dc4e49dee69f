//! Memory probes (test-only, `feature::DIAGNOSTICS`): see `virtio_llm::wire::probe`.
//!
//! A probe reads private memory on the host's behalf (`CheckCanaryBlock` reads a block
//! after it was freed, maybe reused: an oracle over other private data), so it exists only
//! in the test build of the engine (feature `probes`, image `flexserve-engine-probes`). The
//! production engine neither accepts the feature nor has the code: it answers every probe
//! `Unsupported`.

use super::{Environment, Service};
#[cfg(feature = "probes")]
use alloc::vec::Vec;
use virtio_llm::Status;
#[cfg(feature = "probes")]
use virtio_llm::wire::probe::{CANARY_BYTES, fnv1a};
use virtio_llm::wire::probe::{MemoryProbe, ProbeOp, ProbeReply};

impl Service {
    /// Answers a memory probe (test-only; see `virtio_llm::wire::probe`).
    pub(super) fn probe(&mut self, p: MemoryProbe, env: &dyn Environment) -> ProbeReply {
        let reply = ProbeReply {
            op: p.op,
            status: Status::Ok,
            block_addr: self.canary_block.0,
            block_len: self.canary_block.1,
            private_hash: 0,
            nonzero_bytes: 0,
            exposed_addr: 0,
        };
        if !self.diagnostics {
            return ProbeReply {
                status: Status::Unsupported,
                ..reply
            };
        }
        self.run_probe(p.op, reply, env)
    }

    #[cfg(not(feature = "probes"))]
    fn run_probe(&mut self, _: ProbeOp, reply: ProbeReply, _: &dyn Environment) -> ProbeReply {
        ProbeReply {
            status: Status::Unsupported,
            ..reply
        }
    }

    #[cfg(feature = "probes")]
    fn run_probe(
        &mut self,
        op: ProbeOp,
        mut reply: ProbeReply,
        env: &dyn Environment,
    ) -> ProbeReply {
        match op {
            ProbeOp::PlaceCanary => {
                let len = virtio_llm::spec::MEMORY_GRANULE as usize;
                let mut block = Vec::new();
                if block.try_reserve_exact(len).is_err() {
                    reply.status = Status::OutOfMemory;
                    return reply;
                }
                // Built in the private block itself, 8 bytes at a time: a whole canary in a
                // local would leave a copy on the user stack, which is in the host-readable
                // boot region (docs/threat-model.md), and the probe would then prove nothing.
                while block.len() < CANARY_BYTES {
                    block.extend_from_slice(&env.random().to_le_bytes());
                }
                while block.len() < len {
                    block.extend_from_within(..CANARY_BYTES);
                }
                reply.private_hash = fnv1a(&block[..CANARY_BYTES]);
                self.canary_block = (block.as_ptr() as u64, len as u64);
                (reply.block_addr, reply.block_len) = self.canary_block;
                self.canary = Some(block);
            }
            ProbeOp::ExposeCanary => match &self.canary {
                Some(block) => {
                    reply.private_hash = fnv1a(&block[..CANARY_BYTES]);
                    reply.exposed_addr = env.expose(&block[..CANARY_BYTES]);
                }
                None => reply.status = Status::BadRequest,
            },
            ProbeOp::DropCanary => self.canary = None,
            ProbeOp::CheckCanaryBlock => {
                if self.canary.is_some() || self.canary_block.1 == 0 {
                    reply.status = Status::BadRequest;
                } else {
                    let (addr, len) = self.canary_block;
                    reply.nonzero_bytes = env.count_nonzero(addr, len);
                }
            }
        }
        reply
    }
}
