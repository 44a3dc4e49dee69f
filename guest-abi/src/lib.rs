//! The contract between the guest kernel, its user program, the virtio-llm driver and the
//! VMM: the guest-physical layout, the MMIO pages, syscall numbers and boot info. Every side
//! takes these values from here; compile-time checks below keep the regions apart.
#![no_std]
#![forbid(unsafe_code)]

/// Guest-physical layout (the same on x86_64 and arm64).
pub mod layout {
    /// The boot region (boot tables, guest kernel, programs, stacks, heap) starts at 0.
    pub const BOOT_BASE: u64 = 0;
    /// The shared window: virtqueues and bounce buffers, the only memory both sides touch.
    pub const SHARED_BASE: u64 = 0x4000_0000;
    pub const SHARED_SIZE: u64 = 32 << 20;
    /// The MMIO window: one 4 KiB page per device ([`super::MMIO_BASE`]).
    pub const MMIO_SIZE: u64 = 0x10_0000;
    /// The private pool: weights, KV caches, engine scratch, small allocations and user
    /// stacks; the device never reaches it.
    pub const PRIVATE_BASE: u64 = 4 << 30;
    /// Where the guest's page tables stop mapping (x86_64 and arm64 alike): the pool ends
    /// here at the latest.
    pub const MAPPED_END: u64 = 64 << 30;
    /// The pool's base and size are multiples of this (the page tables map it with 2 MiB
    /// pages; the allocator hands it out in 2 MiB granules).
    pub const PRIVATE_ALIGN: u64 = 2 << 20;

    // The regions lie in this order and do not overlap.
    const _: () = assert!(super::HEAP_BASE < SHARED_BASE);
    const _: () = assert!(SHARED_BASE + SHARED_SIZE <= super::MMIO_BASE);
    const _: () = assert!(super::VIRTIO_LLM + 0x1000 <= super::MMIO_BASE + MMIO_SIZE);
    const _: () = assert!(super::MMIO_BASE + MMIO_SIZE <= PRIVATE_BASE);
    // The shared window is whole 2 MiB pages (the boot tables map it with them).
    const _: () =
        assert!(SHARED_BASE.is_multiple_of(2 << 20) && SHARED_SIZE.is_multiple_of(2 << 20));
    const _: () = assert!(PRIVATE_BASE.is_multiple_of(PRIVATE_ALIGN) && PRIVATE_BASE < MAPPED_END);

    /// Checks the private pool the host offers (`base`, `size` from the control page or the
    /// boot info page, both written by the host) against this layout: the guest puts its
    /// users' data there, so a pool laid over the boot region, the shared window or the MMIO
    /// pages would hand that data to the host. `Err` says why the pool is refused. A size of
    /// 0 (no pool) is the caller's case, not checked here.
    pub fn check_private_pool(base: u64, size: u64) -> Result<(), &'static str> {
        let Some(end) = base.checked_add(size) else {
            return Err("its base + size overflows");
        };
        if !base.is_multiple_of(PRIVATE_ALIGN) || !size.is_multiple_of(PRIVATE_ALIGN) {
            return Err("its base or size is not a multiple of 2 MiB");
        }
        let overlaps = |start: u64, len: u64| base < start + len && start < end;
        // The boot region grows from BOOT_BASE up to the shared window at most.
        if overlaps(BOOT_BASE, SHARED_BASE - BOOT_BASE) {
            return Err("it overlaps the boot region");
        }
        if overlaps(SHARED_BASE, SHARED_SIZE) {
            return Err("it overlaps the shared window");
        }
        if overlaps(super::MMIO_BASE, MMIO_SIZE) {
            return Err("it overlaps the MMIO pages");
        }
        if base < PRIVATE_BASE {
            return Err("it starts below the ABI's private base (4 GiB)");
        }
        if end > MAPPED_END {
            return Err("it ends beyond what the guest's page tables map (64 GiB)");
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_vmms_pool_passes_and_misplaced_pools_are_refused() {
            assert_eq!(check_private_pool(PRIVATE_BASE, 64 << 20), Ok(()));
            assert_eq!(
                check_private_pool(PRIVATE_BASE, MAPPED_END - PRIVATE_BASE),
                Ok(())
            );
            let refused = |base: u64, size: u64, why: &str| {
                let got = check_private_pool(base, size).expect_err("refused");
                assert!(got.contains(why), "{base:#x}+{size:#x}: {got}");
            };
            refused(u64::MAX - (2 << 20) + 1, 4 << 20, "overflows");
            refused(PRIVATE_BASE + 4096, 2 << 20, "multiple of 2 MiB");
            refused(PRIVATE_BASE, (2 << 20) + 4096, "multiple of 2 MiB");
            refused(0, 2 << 20, "boot region");
            refused(super::super::HEAP_BASE, 64 << 20, "boot region");
            refused(SHARED_BASE - (2 << 20), 4 << 20, "boot region");
            refused(SHARED_BASE, 2 << 20, "shared window");
            refused(super::super::MMIO_BASE & !((2 << 20) - 1), 2 << 20, "MMIO");
            refused(PRIVATE_BASE - (2 << 20), 2 << 20, "below");
            refused(PRIVATE_BASE, MAPPED_END, "beyond");
        }
    }
}

/// Guest-physical (= virtual, identity-mapped) MMIO pages.
pub const MMIO_BASE: u64 = 0xd000_0000;
/// Console: a byte written at offset `8 * i` is one character of vCPU `i`'s output.
pub const CONSOLE: u64 = MMIO_BASE;
/// Control: a u32 written at offset 0 ends the VM with that exit code; a u64 read at
/// `CONTROL_MEM_SIZE` is the size of the boot region (where the heap ends).
pub const CONTROL: u64 = MMIO_BASE + 0x1000;
pub const CONTROL_MEM_SIZE: u64 = 8;
/// u64 reads: where the private region starts and its size (0: none). The guest's user
/// program manages it directly (it is identity-mapped for user mode) once it passed
/// [`layout::check_private_pool`]; the kernel only lets `write` read from it.
pub const CONTROL_PRIVATE_BASE: u64 = 16;
pub const CONTROL_PRIVATE_SIZE: u64 = 24;
/// Fault report: the kernel writes `FaultReport` fields as u64 at `8 * index`, then any value
/// to `FAULT_COMMIT`, which stops the VM with the report.
pub const FAULT: u64 = MMIO_BASE + 0x2000;
pub const FAULT_COMMIT: u64 = 0x800;
/// Timer: a u64 read at `TIMER_NOW` is the monotonic time in ns since the VM started; a u64
/// written at `TIMER_WAIT + 8 * i` blocks vCPU `i` (in the VMM, costing no host CPU) until a
/// wake-up it has not seen yet (a device notification) or that many ns have passed. User
/// mode may write it directly: idling needs no ring-0 work.
pub const TIMER: u64 = MMIO_BASE + 0x3000;
pub const TIMER_NOW: u64 = 0;
pub const TIMER_WAIT: u64 = 0x100;
/// Any write wakes every parked vCPU (how one vCPU wakes the others' workers).
pub const TIMER_WAKE: u64 = 0x10;
/// The virtio-llm device's virtio-mmio register page.
pub const VIRTIO_LLM: u64 = MMIO_BASE + 0x4000;

/// Fields of a fault report, by u64 index.
pub mod fault {
    pub const VECTOR: u64 = 0;
    pub const ERROR_CODE: u64 = 1;
    pub const RIP: u64 = 2;
    pub const CS: u64 = 3;
    pub const RFLAGS: u64 = 4;
    pub const RSP: u64 = 5;
    pub const CR2: u64 = 6;
    pub const RAX: u64 = 7;
    pub const COUNT: u64 = 8;
}

/// Syscall numbers (in `rax` at the `ud2` gate; arguments in `rdi`, `rsi`).
pub mod syscall {
    /// `write(ptr, len)`: log bytes on the console.
    pub const WRITE: u64 = 1;
    /// `exit(code)`: end the VM with `code`.
    pub const EXIT: u64 = 2;
    /// `clock() -> ns`: monotonic nanoseconds since the VM started.
    pub const CLOCK: u64 = 3;
    /// `wait(timeout_ns)`: sleep until woken by the VMM or the timeout passes (idle vCPUs
    /// block in the VMM instead of spinning).
    pub const WAIT: u64 = 4;
    /// `map(len) -> addr`: claim `len` bytes (rounded up to `HEAP_CHUNK`) of the heap;
    /// `u64::MAX` when there is no room. Fresh memory is zero; reused memory is not cleared.
    pub const MAP: u64 = 5;
    /// `unmap(addr, len)`: give back what `map` returned; `u64::MAX` if it was not mapped.
    pub const UNMAP: u64 = 6;
}

/// `xgetbv` (x86_64): user code may read XCR0 whatever CPUID.1:ECX.OSXSAVE says; where the
/// vCPU has it disabled the instruction's #UD is caught and XCR0 reads as 0 (no extended
/// state). A nested paravirtual KVM runs guest user code natively under the host's XCR0 while
/// its CPUID reports OSXSAVE off, so CPUID alone would hide AVX from the engine there.
pub const XGETBV: [u8; 3] = [0x0f, 0x01, 0xd0];

/// Where vCPU 0's kernel stack ends (grows down), below the 2 MiB user area; vCPU `i`'s
/// ends `i * KERNEL_STACK_SIZE` lower.
pub const KERNEL_STACK_TOP: u64 = 0x1f_f000;
pub const KERNEL_STACK_SIZE: u64 = 0x8000;
/// The heap that `map` hands out: from `HEAP_BASE` to the end of the boot region, in
/// 2 MiB chunks (one huge page each).
pub const HEAP_BASE: u64 = 0x100_0000;
pub const HEAP_CHUNK: u64 = 2 << 20;
/// Chunks the kernel can track (1 GiB of heap).
pub const HEAP_MAX_CHUNKS: usize = 512;

/// vCPUs the kernel has per-CPU state for.
pub const MAX_VCPUS: usize = 8;

/// What is specific to arm64 (docs/arm64.md): the boot info page, where the kernel builds
/// its page tables, the hypercalls it makes, exception-class names.
pub mod aarch64 {
    /// IPA of the boot info page the VMM writes before the first run (u64 fields at the
    /// byte offsets of [`boot_info`]).
    pub const BOOT_INFO: u64 = 0x1000;
    /// "FLEXBOOT", little-endian, at `boot_info::MAGIC`: the page was written.
    pub const BOOT_INFO_MAGIC: u64 = u64::from_le_bytes(*b"FLEXBOOT");

    /// Byte offsets of the boot info page's u64 fields.
    pub mod boot_info {
        pub const MAGIC: u64 = 0;
        /// The user program's entry point.
        pub const USER_ENTRY: u64 = 8;
        /// vCPUs the VM has.
        pub const VCPUS: u64 = 16;
        /// Bytes of the boot region (where the heap ends), as `CONTROL_MEM_SIZE`.
        pub const MEM_SIZE: u64 = 24;
        /// The private pool, as `CONTROL_PRIVATE_BASE` / `CONTROL_PRIVATE_SIZE`.
        pub const PRIVATE_BASE: u64 = 32;
        pub const PRIVATE_SIZE: u64 = 40;
        /// `MAX_VCPUS` u64s: where vCPU `i`'s user stack ends.
        pub const USER_STACKS: u64 = 64;
    }

    /// Where the kernel builds its stage-1 tables: the level-1 table, then the level-2 table
    /// of the first GiB (2 MiB blocks); everything else is mapped with 1 GiB blocks.
    pub const PAGE_TABLES: u64 = 0x2000;
    pub const PAGE_TABLES_END: u64 = PAGE_TABLES + 0x2000;
    /// GiB of IPA space the tables map at most (the first 4 and up to 60 of private pool).
    pub const MAX_MAPPED_GIB: u64 = 64;

    /// The shared window, which a protected VM's kernel shares with the host granule by
    /// granule at boot.
    pub use super::layout::{SHARED_BASE, SHARED_SIZE};

    /// SMCCC function ids the kernel calls with `hvc #0`.
    pub mod hvc {
        /// pKVM: `x0` = the memory-sharing granule (positive) on a protected VM.
        pub const HYP_MEMINFO: u64 = 0xc600_0002;
        /// pKVM: share the granule at IPA `x1` with the host.
        pub const MEM_SHARE: u64 = 0xc600_0003;
        /// pKVM: take the granule at IPA `x1` back from the host.
        pub const MEM_UNSHARE: u64 = 0xc600_0004;
        /// PSCI 0.2 `SYSTEM_OFF` and `SYSTEM_RESET`.
        pub const PSCI_SYSTEM_OFF: u64 = 0x8400_0008;
        pub const PSCI_SYSTEM_RESET: u64 = 0x8400_0009;
        /// SMCCC `NOT_SUPPORTED` (-1), what a normal VM answers to the pKVM calls.
        pub const NOT_SUPPORTED: u64 = u64::MAX;
    }

    /// `ESR_ELx.EC` values the kernel acts on.
    pub mod ec {
        pub const UNKNOWN: u64 = 0x00;
        pub const SVC64: u64 = 0x15;
        pub const INSTR_ABORT_LOWER: u64 = 0x20;
        pub const INSTR_ABORT_SAME: u64 = 0x21;
        pub const DATA_ABORT_LOWER: u64 = 0x24;
        pub const DATA_ABORT_SAME: u64 = 0x25;
    }

    /// The fault report's `VECTOR` for an IRQ, FIQ or SError (no ESR class; the kernel
    /// runs with all of them masked and has no interrupt sources, so these never happen).
    pub const VECTOR_ASYNC: u64 = 0x100;

    /// Names of `ESR_ELx.EC` exception classes, for reports.
    pub fn exception_class_name(ec: u64) -> &'static str {
        match ec {
            0x00 => "unknown reason (undefined instruction)",
            0x01 => "trapped WFI/WFE",
            0x07 => "trapped FP/SIMD access",
            0x0e => "illegal execution state",
            0x15 => "SVC from AArch64",
            0x16 => "HVC from AArch64",
            0x17 => "SMC from AArch64",
            0x18 => "trapped system register access",
            0x19 => "trapped SVE access",
            0x1c => "pointer authentication failure",
            0x20 => "instruction abort from EL0",
            0x21 => "instruction abort at EL1",
            0x22 => "PC alignment fault",
            0x24 => "data abort from EL0",
            0x25 => "data abort at EL1",
            0x26 => "SP alignment fault",
            0x2c => "floating-point exception",
            0x2f => "SError",
            0x30..=0x35 => "debug exception",
            0x3c => "BRK instruction",
            VECTOR_ASYNC => "interrupt or SError",
            _ => "exception",
        }
    }
}

/// x86 exception names, for reports.
pub fn exception_name(vector: u64) -> &'static str {
    match vector {
        0 => "divide error (#DE)",
        1 => "debug (#DB)",
        3 => "breakpoint (#BP)",
        4 => "overflow (#OF)",
        5 => "bound range (#BR)",
        6 => "invalid opcode (#UD)",
        7 => "device not available (#NM)",
        8 => "double fault (#DF)",
        10 => "invalid TSS (#TS)",
        11 => "segment not present (#NP)",
        12 => "stack fault (#SS)",
        13 => "general protection (#GP)",
        14 => "page fault (#PF)",
        16 => "x87 floating point (#MF)",
        17 => "alignment check (#AC)",
        19 => "SIMD floating point (#XM)",
        _ => "exception",
    }
}
