//! The guest side of virtio-llm's plumbing in user mode: the shared window as the driver's
//! memory, the device's register page as its transport, and the wait register to idle on.
//! The kernel is not involved in any of it (the page tables map these pages for user mode).

use crate::arch;
use core::ptr::{read_volatile, write_volatile};
use guest_abi as abi;
use virtio_llm::driver::{DriverMemory, RingError, Transport};
use virtio_llm::spec::layout::{SHARED_WINDOW_BASE, SHARED_WINDOW_SIZE};

/// The shared window, identity-mapped. Accesses outside it are refused, so a bad address
/// from the device can never reach private memory through the driver.
pub struct SharedWindow;

fn check(addr: u64, len: usize) -> Result<(), RingError> {
    let end = addr.checked_add(len as u64);
    if addr >= SHARED_WINDOW_BASE
        && end.is_some_and(|e| e <= SHARED_WINDOW_BASE + SHARED_WINDOW_SIZE)
    {
        Ok(())
    } else {
        Err(RingError::Memory { addr, len })
    }
}

impl DriverMemory for SharedWindow {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), RingError> {
        check(addr, buf.len())?;
        let p = addr as *const u8;
        // SAFETY: [addr, addr + len) is inside the identity-mapped shared window (checked).
        // The host may write it concurrently: ring fields (2, 4, 8 aligned bytes) are read
        // with one volatile access each so they are neither torn nor read twice; messages
        // are copied once, then decoded from the private copy.
        unsafe {
            match buf.len() {
                2 if addr.is_multiple_of(2) => {
                    buf.copy_from_slice(&read_volatile(p as *const u16).to_ne_bytes())
                }
                4 if addr.is_multiple_of(4) => {
                    buf.copy_from_slice(&read_volatile(p as *const u32).to_ne_bytes())
                }
                8 if addr.is_multiple_of(8) => {
                    buf.copy_from_slice(&read_volatile(p as *const u64).to_ne_bytes())
                }
                n => core::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n),
            }
        }
        Ok(())
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), RingError> {
        check(addr, data.len())?;
        let p = addr as *mut u8;
        // SAFETY: as in `read`; ring fields are written with one volatile store each so the
        // device never sees half an index.
        unsafe {
            match data.len() {
                2 if addr.is_multiple_of(2) => {
                    write_volatile(p as *mut u16, u16::from_ne_bytes([data[0], data[1]]))
                }
                4 if addr.is_multiple_of(4) => write_volatile(
                    p as *mut u32,
                    u32::from_ne_bytes([data[0], data[1], data[2], data[3]]),
                ),
                n => core::ptr::copy_nonoverlapping(data.as_ptr(), p, n),
            }
        }
        Ok(())
    }
}

/// The virtio-llm register page (MMIO: each access exits to the VMM, or with ioeventfd is
/// absorbed by KVM).
pub struct MmioRegisters;

impl Transport for MmioRegisters {
    fn read32(&self, offset: u64) -> u32 {
        // SAFETY: the device page is identity-mapped for user mode; offsets are the
        // transport's register offsets, all u32-aligned inside the page.
        unsafe { arch::mmio_read_u32(abi::VIRTIO_LLM + offset) }
    }

    fn write32(&self, offset: u64, value: u32) {
        // SAFETY: as in `read32`.
        unsafe { arch::mmio_write_u32(abi::VIRTIO_LLM + offset, value) }
    }
}

/// Parks vCPU `vcpu` in the VMM until a device notification it has not seen yet, or
/// `timeout_ns`.
pub fn wait(vcpu: u64, timeout_ns: u64) {
    let reg = abi::TIMER + abi::TIMER_WAIT + 8 * vcpu.min(abi::MAX_VCPUS as u64 - 1);
    // SAFETY: the timer page is identity-mapped for user mode; the wait register is an
    // aligned u64.
    unsafe { arch::mmio_write_u64(reg, timeout_ns) }
}

/// Wakes every parked vCPU (through the timer page's wake register).
pub fn wake_all() {
    // SAFETY: the timer page is identity-mapped for user mode; any write to the (aligned
    // u64) wake register wakes the parked vCPUs.
    unsafe { arch::mmio_write_u64(abi::TIMER + abi::TIMER_WAKE, 1) }
}

/// Nanoseconds since the VM started (the timer page, read from user mode).
pub fn now_ns() -> u64 {
    // SAFETY: the timer page is identity-mapped for user mode; the clock is an aligned u64.
    unsafe { arch::mmio_read_u64(abi::TIMER + abi::TIMER_NOW) }
}
