//! Executes an undefined instruction (`udf #0`) at EL0 (the kernel must report it as an
//! unknown-reason exception, `ESR_EL1.EC` 0). The aarch64 counterpart of `divzero`: integer
//! division by zero does not fault on aarch64 (it yields 0), so a user fault the kernel
//! reports by class needs another instruction.
#![no_std]
#![no_main]

use guest_runtime::exit;

#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    // SAFETY: deliberately faults; the guest kernel reports it and the VM stops.
    unsafe { core::arch::asm!("udf #0", options(nomem, nostack)) };
    exit(0)
}
