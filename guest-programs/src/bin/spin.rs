//! Never finishes (the VMM must stop it at the deadline).
#![no_std]
#![no_main]

// The runtime provides the panic handler.
use guest_runtime as _;

#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    loop {
        core::hint::spin_loop();
    }
}
