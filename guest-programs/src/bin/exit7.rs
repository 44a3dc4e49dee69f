//! Prints through the syscall gate and exits with 7.
#![no_std]
#![no_main]

use guest_runtime::{exit, print};

#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    print("hello from guest user mode\n");
    exit(7)
}
