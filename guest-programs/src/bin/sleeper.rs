//! Waits 1 s through the wait syscall (parked in the VMM, not spinning) and prints how
//! long the guest clock says it took. The line before the wait and the line after it let
//! the host read what the vCPU's thread cost during the wait alone, apart from the boot.
#![no_std]
#![no_main]

use guest_runtime::abi::syscall;
use guest_runtime::{exit, print, print_hex, syscall2};

#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    print("waiting 1 s\n");
    let t0 = syscall2(syscall::CLOCK, 0, 0);
    syscall2(syscall::WAIT, 1_000_000_000, 0);
    let t1 = syscall2(syscall::CLOCK, 0, 0);
    print_hex("slept ns ", t1 - t0);
    exit(0)
}
