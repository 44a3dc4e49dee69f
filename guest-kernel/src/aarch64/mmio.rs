//! Accesses to the VMM's MMIO pages and hypercalls. Each MMIO access is one plain `ldr`/`str`
//! of a general register with no writeback, the only form whose trap KVM can emulate
//! (`ESR_EL2.ISV`); each exits to the VMM.

use core::arch::asm;

pub fn write_u8(addr: u64, v: u8) {
    // SAFETY: `addr` is one of the VMM's MMIO pages (abi), identity-mapped device memory.
    unsafe { asm!("strb {v:w}, [{a}]", a = in(reg) addr, v = in(reg) v, options(nostack)) }
}

pub fn write_u16(addr: u64, v: u16) {
    // SAFETY: as in `write_u8`; the address is 2-byte aligned.
    unsafe { asm!("strh {v:w}, [{a}]", a = in(reg) addr, v = in(reg) v, options(nostack)) }
}

pub fn write_u32(addr: u64, v: u32) {
    // SAFETY: as in `write_u8`; the address is 4-byte aligned.
    unsafe { asm!("str {v:w}, [{a}]", a = in(reg) addr, v = in(reg) v, options(nostack)) }
}

pub fn write_u64(addr: u64, v: u64) {
    // SAFETY: as in `write_u8`; the address is 8-byte aligned.
    unsafe { asm!("str {v}, [{a}]", a = in(reg) addr, v = in(reg) v, options(nostack)) }
}

pub fn read_u64(addr: u64) -> u64 {
    let v: u64;
    // SAFETY: as in `write_u8`; the address is 8-byte aligned.
    unsafe { asm!("ldr {v}, [{a}]", a = in(reg) addr, v = out(reg) v, options(nostack)) };
    v
}

/// An SMCCC call through `hvc #0`: function `f`, arguments `x1..x3`; returns `x0`.
pub fn hvc(f: u64, a1: u64, a2: u64, a3: u64) -> u64 {
    let ret: u64;
    // SAFETY: SMCCC calls (PSCI, pKVM memory sharing) change no memory the compiler knows
    // of; the hypervisor returns x0..x3 and preserves the rest.
    unsafe {
        asm!("hvc #0", inlateout("x0") f => ret, inlateout("x1") a1 => _,
             inlateout("x2") a2 => _, inlateout("x3") a3 => _, options(nostack))
    };
    ret
}
