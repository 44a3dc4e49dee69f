//! Volatile stores to the VMM's MMIO pages (each one exits to the VMM).

pub fn write_u8(addr: u64, v: u8) {
    // SAFETY: `addr` is one of the VMM's MMIO pages (abi), identity-mapped and not memory.
    unsafe { core::ptr::write_volatile(addr as *mut u8, v) }
}

pub fn write_u32(addr: u64, v: u32) {
    // SAFETY: as in `write_u8`; the address is 4-byte aligned.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

pub fn write_u64(addr: u64, v: u64) {
    // SAFETY: as in `write_u8`; the address is 8-byte aligned.
    unsafe { core::ptr::write_volatile(addr as *mut u64, v) }
}

pub fn read_u64(addr: u64) -> u64 {
    // SAFETY: as in `write_u8`; the address is 8-byte aligned.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}
