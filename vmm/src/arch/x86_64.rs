//! x86_64: GDT, TSS and page tables written by the VMM (`hypervisor::x86_64_boot`).

use super::BootParams;
use crate::elf_loader::Machine;
use crate::hypervisor::x86_64_boot;
use crate::machine::layout;
use guest_kernel::abi;

/// The images' ELF machine.
pub const ELF_MACHINE: Machine = Machine::X86_64;
/// Images load above the boot tables.
pub const LOAD_BASE: u64 = x86_64_boot::BOOT_TABLES_END;
/// GiB of guest-physical space the guest maps (the first 4, then the private region).
pub const MAX_MAPPED_GIB: u64 = x86_64_boot::MAX_MAPPED_GIB;

/// The boot structures at guest-physical 0 that do not depend on the images.
pub fn boot_tables(private_size: u64) -> Vec<u8> {
    let mut tables = vec![0u8; x86_64_boot::BOOT_TABLES_END as usize];
    let mapped_gib = (layout::PRIVATE_BASE + private_size).div_ceil(1 << 30);
    x86_64_boot::write_boot_tables(&mut tables, mapped_gib);
    tables
}

/// What to write before a kernel boot: each vCPU's TSS `rsp0`, the kernel stack the CPU
/// switches to when user code traps.
pub fn boot_data(p: &BootParams) -> Vec<(u64, Vec<u8>)> {
    (0..p.vcpus)
        .map(|id| {
            let kernel_stack = abi::KERNEL_STACK_TOP - abi::KERNEL_STACK_SIZE * u64::from(id);
            (
                x86_64_boot::tss_addr(id) + 4,
                kernel_stack.to_le_bytes().to_vec(),
            )
        })
        .collect()
}

/// The name of a fault report's vector (an x86 exception vector).
pub fn exception_name(vector: u64) -> &'static str {
    abi::exception_name(vector)
}
