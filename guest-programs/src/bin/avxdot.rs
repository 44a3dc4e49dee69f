//! An AVX2 + FMA dot product in guest user mode; prints the f32 result's bits.
#![no_std]
#![no_main]

use guest_runtime::{exit, print_hex};

#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    // SAFETY: the VMM passes the host's CPUID through and enables AVX state in XCR0; a CPU
    // without AVX2/FMA faults with #UD, which the kernel reports.
    let bits = unsafe { guest_programs::avx::dot_bits() };
    print_hex("avxdot ", u64::from(bits));
    exit(0)
}
