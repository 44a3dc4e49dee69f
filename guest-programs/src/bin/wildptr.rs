//! Reads through a wild pointer beyond mapped memory (the kernel must report #PF).
#![no_std]
#![no_main]

use guest_runtime::exit;

#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    let p = core::hint::black_box(0x7fff_dead_0000u64) as *const u64;
    // SAFETY: deliberately faults with #PF; the guest kernel reports it and the VM stops.
    let v = unsafe { core::ptr::read_volatile(p) };
    exit(v as u32)
}
