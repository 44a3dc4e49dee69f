//! What differs between the guest's CPU architectures, behind one interface: the syscall
//! gate into the guest kernel, single device-register accesses, a free-running counter, and
//! (x86_64) the pieces of a C runtime the host target's link expects.
//!
//! Everything above this module is architecture-neutral.

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
pub use aarch64::*;

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use x86_64::*;

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("guest programs exist for x86_64 and aarch64 only");
