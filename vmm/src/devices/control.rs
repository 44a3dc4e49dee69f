//! The control page: a 32-bit write to offset 0 ends the VM with that exit code.

use super::{DeviceEvent, MmioDevice};

/// Register offsets.
pub const EXIT_CODE: u64 = 0;

/// Guest → VMM control requests.
#[derive(Default)]
pub struct Control;

impl MmioDevice for Control {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
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
