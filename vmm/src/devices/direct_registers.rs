//! The virtio-mmio register page reached by direct calls instead of MMIO exits: the guest's
//! driver on a host thread against the real device, as the in-process tests
//! (`tests/loopback.rs`) and the fuzzer (`service_commands`) run it.

use super::MmioDevice;
use super::virtio_mmio::MmioTransport;
use std::sync::Arc;
use virtio_llm::driver::Transport;

/// The register page as a driver [`Transport`].
pub struct DirectRegisters(pub Arc<MmioTransport>);

impl Transport for DirectRegisters {
    fn read32(&self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.0.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn write32(&self, offset: u64, value: u32) {
        self.0.write(offset, &value.to_le_bytes());
    }
}
