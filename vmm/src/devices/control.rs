//! The control page: a 32-bit write to offset 0 ends the VM with that exit code; offsets
//! `CONTROL_MEM_SIZE`, `CONTROL_PRIVATE_BASE` and `CONTROL_PRIVATE_SIZE` read the memory
//! layout.

use super::{DeviceEvent, MmioDevice};
use guest_kernel::abi::{CONTROL_MEM_SIZE, CONTROL_PRIVATE_BASE, CONTROL_PRIVATE_SIZE};

/// Register offsets.
pub const EXIT_CODE: u64 = 0;

/// Guest → VMM control requests.
#[derive(Default)]
pub struct Control {
    /// Bytes of the boot region, reported to the guest kernel for its heap.
    pub mem_size: u64,
    /// Where the private region starts, and its size (0: none).
    pub private_base: u64,
    pub private_size: u64,
}

impl MmioDevice for Control {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            CONTROL_MEM_SIZE => self.mem_size,
            CONTROL_PRIVATE_BASE => self.private_base,
            CONTROL_PRIVATE_SIZE => self.private_size,
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&bytes[..n]);
        data[n..].fill(0);
    }

    fn write(&self, offset: u64, data: &[u8]) -> Option<DeviceEvent> {
        if offset != EXIT_CODE {
            return None;
        }
        let mut code = [0u8; 4];
        let n = data.len().min(4);
        code[..n].copy_from_slice(&data[..n]);
        Some(DeviceEvent::Exit(u32::from_le_bytes(code)))
    }
}
