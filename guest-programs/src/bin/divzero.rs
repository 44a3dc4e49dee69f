//! Divides by zero in user mode (the kernel must report #DE).
#![no_std]
#![no_main]

use guest_runtime::exit;

#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    let zero = core::hint::black_box(0u64);
    let q: u64;
    // SAFETY: deliberately faults with #DE; the guest kernel reports it and the VM stops.
    unsafe {
        core::arch::asm!("div {z}", z = in(reg) zero, inout("rax") 1u64 => q, inout("rdx") 0u64 => _)
    };
    exit(q as u32)
}
