//! The user-mode side of the guest ABI: the `ud2` syscall gate and a panic handler, for the
//! small test programs in `src/bin/`.
#![no_std]

use guest_kernel::abi::syscall;

/// Calls the guest kernel: `ud2` with the number in `rax` and arguments in `rdi`, `rsi`.
#[cfg(target_arch = "x86_64")]
pub fn syscall2(number: u64, a: u64, b: u64) -> u64 {
    let ret: u64;
    // SAFETY: `ud2` traps into the guest kernel, which handles the call and resumes after
    // the instruction; only rax is changed.
    unsafe {
        core::arch::asm!("ud2", inlateout("rax") number => ret, in("rdi") a, in("rsi") b, options(nostack))
    };
    ret
}

/// Logs `s` on the VM console.
#[cfg(target_arch = "x86_64")]
pub fn print(s: &str) {
    syscall2(syscall::WRITE, s.as_ptr() as u64, s.len() as u64);
}

/// Ends the VM with `code`.
#[cfg(target_arch = "x86_64")]
pub fn exit(code: u32) -> ! {
    syscall2(syscall::EXIT, u64::from(code), 0);
    // The VMM stops the VM on exit; nothing runs after it.
    #[allow(clippy::empty_loop)]
    loop {}
}

/// Panics in a guest program end the VM with exit code 101.
#[cfg(all(target_arch = "x86_64", feature = "guest"))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    print("guest program panicked\n");
    exit(101)
}
