//! The fault page: the guest kernel writes an exception's vector and registers, then
//! commits, and the VMM stops the VM with that report.

use super::{DeviceEvent, MmioDevice};
use guest_kernel::abi::{FAULT_COMMIT, fault};
use std::sync::Mutex;

/// What the guest kernel reported about an exception.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultReport {
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub cr2: u64,
    pub rax: u64,
}

impl FaultReport {
    fn from_fields(f: &[u64; fault::COUNT as usize]) -> Self {
        let g = |i: u64| f[i as usize];
        Self {
            vector: g(fault::VECTOR),
            error_code: g(fault::ERROR_CODE),
            rip: g(fault::RIP),
            cs: g(fault::CS),
            rflags: g(fault::RFLAGS),
            rsp: g(fault::RSP),
            cr2: g(fault::CR2),
            rax: g(fault::RAX),
        }
    }
}

/// Collects fault fields until the commit write.
#[derive(Default)]
pub struct FaultPage {
    fields: Mutex<[u64; fault::COUNT as usize]>,
}

impl MmioDevice for FaultPage {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&self, offset: u64, data: &[u8]) -> Option<DeviceEvent> {
        let mut fields = self.fields.lock().unwrap_or_else(|e| e.into_inner());
        if offset == FAULT_COMMIT {
            return Some(DeviceEvent::Fault(FaultReport::from_fields(&fields)));
        }
        let index = (offset / 8) as usize;
        if offset.is_multiple_of(8) && index < fields.len() {
            let mut v = [0u8; 8];
            let n = data.len().min(8);
            v[..n].copy_from_slice(&data[..n]);
            fields[index] = u64::from_le_bytes(v);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_then_commit_give_the_report() {
        let page = FaultPage::default();
        assert_eq!(page.write(8 * fault::VECTOR, &14u64.to_le_bytes()), None);
        assert_eq!(page.write(8 * fault::CR2, &0xdeadu64.to_le_bytes()), None);
        assert_eq!(page.write(3, &[1]), None); // misaligned: ignored
        let Some(DeviceEvent::Fault(r)) = page.write(FAULT_COMMIT, &[1]) else {
            panic!("no report")
        };
        assert_eq!((r.vector, r.cr2), (14, 0xdead));
    }
}
