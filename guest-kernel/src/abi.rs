//! The contract between the guest kernel, its user program and the VMM.

/// Guest-physical (= virtual, identity-mapped) MMIO pages.
pub const MMIO_BASE: u64 = 0xd000_0000;
/// Console: a byte written at offset `8 * i` is one character of vCPU `i`'s output.
pub const CONSOLE: u64 = MMIO_BASE;
/// Control: a u32 written at offset 0 ends the VM with that exit code; a u64 read at
/// `CONTROL_MEM_SIZE` is the size of the boot region (where the heap ends).
pub const CONTROL: u64 = MMIO_BASE + 0x1000;
pub const CONTROL_MEM_SIZE: u64 = 8;
/// u64 reads: where the private region starts and its size (0: none). The guest's user
/// program manages it directly (it is identity-mapped for user mode); the kernel does not.
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
