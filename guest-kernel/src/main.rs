//! The guest kernel binary: exception vectors and a syscall gate (x86_64: below; arm64:
//! `aarch64/`, per docs/arm64.md).
//!
//! The VMM enters `_start` once, in 64-bit ring 0, with the kernel stack in `rsp`, the user
//! program's entry in `rdi` and its stack in `rsi`; the GDT, TSS (with `rsp0`) and page
//! tables are already in place. `_start` installs the IDT and drops to ring 3. After that
//! the kernel runs only for exceptions: `ud2` from user mode is the syscall gate (on the
//! nested KVM of the development machines `syscall` and `int` misbehave from ring 3, while
//! exceptions work, ~24 µs a round trip); any other exception is reported to the VMM, which
//! stops the VM with the vector and registers.
#![no_std]
#![no_main]

mod shared_heap;

#[cfg(target_arch = "x86_64")]
mod x86_64;

#[cfg(target_arch = "aarch64")]
mod aarch64;

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!(
    "the guest kernel is built for x86_64-unknown-none (`make image`) or aarch64-unknown-none \
     (`make image-arm64`)"
);
