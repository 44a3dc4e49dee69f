//! arm64: the kernel builds its own page tables; the VMM writes only the boot info page
//! (docs/arm64.md).

use super::BootParams;
use crate::elf_loader::Machine;
use crate::hypervisor::aarch64_boot::BootInfo;
use crate::machine::layout;
use guest_kernel::abi::aarch64;

/// The images' ELF machine.
pub const ELF_MACHINE: Machine = Machine::Aarch64;
/// Images load above the boot info page and the kernel's page tables.
pub const LOAD_BASE: u64 = aarch64::PAGE_TABLES_END;
/// GiB of guest-physical space the kernel maps (the first 4, then the private region).
pub const MAX_MAPPED_GIB: u64 = aarch64::MAX_MAPPED_GIB;

/// Nothing: the kernel builds its page tables itself.
pub fn boot_tables(_private_size: u64) -> Vec<u8> {
    Vec::new()
}

/// The boot info page.
pub fn boot_data(p: &BootParams) -> Vec<(u64, Vec<u8>)> {
    let info = BootInfo {
        user_entry: p.user_entry,
        user_stacks: (0..p.vcpus)
            .map(|id| layout::USER_STACK_TOP - layout::USER_STACK_SIZE * u64::from(id))
            .collect(),
        mem_size: p.mem_size,
        private_base: p.private_base,
        private_size: p.private_size,
    };
    // More vCPUs than the kernel supports fail at vCPU creation with a clear error.
    info.to_bytes()
        .map(|page| vec![(aarch64::BOOT_INFO, page)])
        .unwrap_or_default()
}

/// The name of a fault report's vector (an `ESR_EL1` exception class).
pub fn exception_name(vector: u64) -> &'static str {
    aarch64::exception_class_name(vector)
}
