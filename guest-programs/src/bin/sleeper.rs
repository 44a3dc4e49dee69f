//! Waits 1 s through the wait syscall (parked in the VMM, not spinning) and prints how
//! long the guest clock says it took.
#![no_std]
#![no_main]

use guest_kernel::abi::syscall;
use guest_programs::{exit, print_hex, syscall2};

#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    let t0 = syscall2(syscall::CLOCK, 0, 0);
    syscall2(syscall::WAIT, 1_000_000_000, 0);
    let t1 = syscall2(syscall::CLOCK, 0, 0);
    print_hex("slept ns ", t1 - t0);
    exit(0)
}
