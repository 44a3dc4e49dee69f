//! The tiny guest OS, the parts that are plain logic and testable on the host: the guest ABI
//! shared with the VMM (MMIO addresses, syscall numbers, fault-report layout).
//!
//! The kernel binary (`src/main.rs`, feature `guest`, target `x86_64-unknown-none`) is only
//! exception vectors and a syscall gate: the VMM enters it once in ring 0, it installs its
//! IDT and drops to the user program in ring 3, and from then on it runs only when the user
//! program faults or calls it. Ring-0 code is emulated at ~1M instructions/s on the
//! development machines, so it does as little as possible.
#![no_std]

pub mod aarch64_tables;
/// The guest ABI, from its own crate (the VMM and virtio-llm use the same).
pub use guest_abi as abi;
pub mod heap;
