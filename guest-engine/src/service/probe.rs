//! Memory probes (test-only, `feature::DIAGNOSTICS`): see `virtio_llm::wire::probe`.

use super::{Environment, Service};
use alloc::vec::Vec;
use virtio_llm::Status;
use virtio_llm::wire::probe::{CANARY_BYTES, MemoryProbe, ProbeOp, ProbeReply, fnv1a};

impl Service {
    /// Answers a memory probe (test-only; see `virtio_llm::wire::probe`).
    pub(super) fn probe(&mut self, p: MemoryProbe, env: &dyn Environment) -> ProbeReply {
        let mut reply = ProbeReply {
            op: p.op,
            status: Status::Ok,
            block_addr: self.canary_block.0,
            block_len: self.canary_block.1,
            private_hash: 0,
            nonzero_bytes: 0,
            exposed_addr: 0,
        };
        if !self.diagnostics {
            reply.status = Status::Unsupported;
            return reply;
        }
        match p.op {
            ProbeOp::PlaceCanary => {
                let mut random = [0u8; CANARY_BYTES];
                for chunk in random.chunks_exact_mut(8) {
                    chunk.copy_from_slice(&env.random().to_le_bytes());
                }
                let len = virtio_llm::spec::MEMORY_GRANULE as usize;
                let mut block = Vec::new();
                if block.try_reserve_exact(len).is_err() {
                    reply.status = Status::OutOfMemory;
                    return reply;
                }
                while block.len() < len {
                    block.extend_from_slice(&random);
                }
                reply.private_hash = fnv1a(&random);
                self.canary_block = (block.as_ptr() as u64, len as u64);
                (reply.block_addr, reply.block_len) = self.canary_block;
                self.canary = Some(block);
                self.canary_bytes = random;
            }
            ProbeOp::ExposeCanary if self.canary.is_none() => reply.status = Status::BadRequest,
            ProbeOp::ExposeCanary => {
                reply.private_hash = fnv1a(&self.canary_bytes);
                reply.exposed_addr = env.expose(&self.canary_bytes);
            }
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
