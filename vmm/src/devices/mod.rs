//! Devices on the MMIO bus, and the bus itself.

mod console;
mod control;
mod direct_registers;
mod fault;
mod timer;
pub mod virtio_llm;
pub mod virtio_mmio;

pub use console::{Console, escape};
pub use control::Control;
pub use direct_registers::DirectRegisters;
pub use fault::{FaultPage, FaultReport};
pub use timer::Timer;

use std::sync::Arc;

/// What a device asks of the VMM after an access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceEvent {
    /// The guest asked to stop with this exit code.
    Exit(u32),
    /// The guest kernel reported an exception it cannot handle.
    Fault(FaultReport),
}

/// A device reached through guest memory-mapped I/O.
pub trait MmioDevice: Send + Sync {
    /// Fills `data` for a read at `offset` into the device.
    fn read(&self, offset: u64, data: &mut [u8]);
    /// Takes a write at `offset`; may ask the VMM to act.
    fn write(&self, offset: u64, data: &[u8]) -> Option<DeviceEvent>;
}

/// Two devices were placed over each other.
#[derive(Debug, thiserror::Error)]
#[error("MMIO range {base:#x}+{len:#x} overlaps a device already on the bus")]
pub struct BusOverlap {
    pub base: u64,
    pub len: u64,
}

/// Address ranges → devices.
#[derive(Default)]
pub struct MmioBus {
    devices: Vec<(u64, u64, Arc<dyn MmioDevice>)>,
}

impl MmioBus {
    /// Places `device` at `[base, base + len)`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: Arc<dyn MmioDevice>,
    ) -> Result<(), BusOverlap> {
        let end = base.checked_add(len).ok_or(BusOverlap { base, len })?;
        if self
            .devices
            .iter()
            .any(|&(b, l, _)| base < b + l && b < end)
        {
            return Err(BusOverlap { base, len });
        }
        self.devices.push((base, len, device));
        Ok(())
    }

    /// The device covering `addr` and the offset into it.
    pub fn find(&self, addr: u64) -> Option<(&dyn MmioDevice, u64)> {
        self.devices
            .iter()
            .find(|&&(b, l, _)| addr >= b && addr - b < l)
            .map(|(b, _, d)| (d.as_ref(), addr - b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_devices_are_refused_and_lookup_finds_offsets() {
        let mut bus = MmioBus::default();
        bus.insert(0x1000, 0x100, Arc::new(Control::default()))
            .unwrap();
        assert!(bus.insert(0x10ff, 1, Arc::new(Control::default())).is_err());
        assert!(
            bus.insert(u64::MAX, 2, Arc::new(Control::default()))
                .is_err()
        );
        bus.insert(0x1100, 0x100, Arc::new(Control::default()))
            .unwrap();
        assert_eq!(bus.find(0x1104).map(|(_, o)| o), Some(4));
        assert!(bus.find(0x1200).is_none());
    }
}
