//! What the machine does differently per host architecture, behind one small interface:
//! which ELF images it loads, where images may go, the boot structures it writes before the
//! first run, and how a guest kernel's fault report is named.

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
pub use aarch64::*;

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use x86_64::*;

/// What the kernel needs to know at boot, whatever the architecture.
#[derive(Clone, Copy, Debug)]
pub struct BootParams {
    pub user_entry: u64,
    pub vcpus: u8,
    pub mem_size: u64,
    pub private_base: u64,
    pub private_size: u64,
}
