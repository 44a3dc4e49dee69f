//! arm64 (EL1), per docs/arm64.md: entry, stage-1 tables, exception vectors, `svc #0`
//! syscalls, pKVM sharing of the shared window, the fault report and the PSCI exit.
//!
//! Every vCPU enters `_start` at EL1h with the MMU off and all exceptions masked. vCPU 0
//! builds the page tables and (protected VM) shares the shared window, then releases the
//! others; each vCPU then turns its MMU on, installs the vectors and `eret`s to its user
//! thread at EL0. Afterwards the kernel runs only for `svc` and faults. Each exit to the VMM
//! costs hundreds of microseconds under emulation, so the kernel makes as few as it can.

mod mmio;

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering};
use guest_kernel::aarch64_tables::{self as tables, ENTRIES};
use guest_kernel::abi::aarch64::{self as a64, boot_info, ec, hvc};
use guest_kernel::abi::{self, fault, syscall};

/// What the exception entry saves, in memory order (`FRAME_SIZE` bytes on the kernel stack).
#[repr(C)]
pub struct Frame {
    x: [u64; 31],
    elr: u64,
    spsr: u64,
    sp_el0: u64,
    q: [u128; 32],
    fpsr: u64,
    fpcr: u64,
}

/// `SCTLR_EL1`: MMU, caches, SP alignment checks, the RES1 bits, and for EL0: `DC ZVA`,
/// `CTR_EL0` reads, cache maintenance and `WFI`/`WFE` without trapping to EL1.
const SCTLR: u64 = (1 << 0) // M
    | (1 << 2) // C
    | (1 << 3) // SA
    | (1 << 4) // SA0
    | (1 << 11) // EOS (RES1 in v8.0)
    | (1 << 12) // I
    | (1 << 14) // DZE
    | (1 << 15) // UCT
    | (1 << 16) // nTWI
    | (1 << 18) // nTWE
    | (1 << 20) // TSCXT (RES1 in v8.0)
    | (1 << 22) // EIS (RES1 in v8.0)
    | (1 << 23) // SPAN: PAN stays off
    | (1 << 26) // UCI
    | (1 << 28) // nTLSMD (RES1 in v8.0)
    | (1 << 29); // LSMAOE (RES1 in v8.0)

/// `SPSR_EL1` for the user thread: EL0t with D, A, I, F masked (no interrupt sources).
const SPSR_EL0: u64 = 0x3c0;
/// `CNTKCTL_EL1.EL0VCTEN`: EL0 may read the virtual counter.
const CNTKCTL_EL0VCTEN: u64 = 1 << 1;

// Entry and the exception vectors. `_start` enables FP/SIMD (Rust code may use it), takes
// its stack from MPIDR_EL1.Aff0, runs `early` with the MMU off, turns the MMU on with the
// TCR `early` returned, installs VBAR_EL1 and calls `kernel_main` on a fresh stack.
global_asm!(
    r#"
    .section .text.entry, "ax"
    .global _start
_start:
    mov x9, #(3 << 20)
    msr cpacr_el1, x9
    isb
    mrs x19, mpidr_el1
    and x19, x19, #0xff
    cmp x19, #{max_vcpu}
    b.ls 1f
    mov x19, #{max_vcpu}
1:  ldr x20, ={stack_top}
    mov x9, #{stack_size}
    msub x20, x19, x9, x20
    mov sp, x20
    mov x0, x19
    bl {early}
    msr tcr_el1, x0
    ldr x9, ={mair}
    msr mair_el1, x9
    ldr x9, ={ttbr}
    msr ttbr0_el1, x9
    isb
    tlbi vmalle1
    dsb nsh
    isb
    ldr x9, ={sctlr}
    msr sctlr_el1, x9
    isb
    ic iallu
    dsb nsh
    isb
    adr x9, flexserve_vectors
    msr vbar_el1, x9
    isb
    mov sp, x20
    mov x0, x19
    bl {main}
2:  wfi
    b 2b

    .text
    .macro VECTOR kind
    .balign 128
    sub sp, sp, #{frame}
    stp x0, x1, [sp, #0]
    mov x0, #\kind
    b flexserve_exception_common
    .endm

    .balign 2048
flexserve_vectors:
    VECTOR 0
    VECTOR 1
    VECTOR 2
    VECTOR 3
    VECTOR 4
    VECTOR 5
    VECTOR 6
    VECTOR 7
    VECTOR 8
    VECTOR 9
    VECTOR 10
    VECTOR 11
    VECTOR 12
    VECTOR 13
    VECTOR 14
    VECTOR 15

flexserve_exception_common:
    stp x2, x3, [sp, #16]
    stp x4, x5, [sp, #32]
    stp x6, x7, [sp, #48]
    stp x8, x9, [sp, #64]
    stp x10, x11, [sp, #80]
    stp x12, x13, [sp, #96]
    stp x14, x15, [sp, #112]
    stp x16, x17, [sp, #128]
    stp x18, x19, [sp, #144]
    stp x20, x21, [sp, #160]
    stp x22, x23, [sp, #176]
    stp x24, x25, [sp, #192]
    stp x26, x27, [sp, #208]
    stp x28, x29, [sp, #224]
    mrs x2, elr_el1
    stp x30, x2, [sp, #240]
    mrs x2, spsr_el1
    mrs x3, sp_el0
    stp x2, x3, [sp, #256]
    add x2, sp, #272
    stp q0, q1, [x2, #0]
    stp q2, q3, [x2, #32]
    stp q4, q5, [x2, #64]
    stp q6, q7, [x2, #96]
    stp q8, q9, [x2, #128]
    stp q10, q11, [x2, #160]
    stp q12, q13, [x2, #192]
    stp q14, q15, [x2, #224]
    stp q16, q17, [x2, #256]
    stp q18, q19, [x2, #288]
    stp q20, q21, [x2, #320]
    stp q22, q23, [x2, #352]
    stp q24, q25, [x2, #384]
    stp q26, q27, [x2, #416]
    stp q28, q29, [x2, #448]
    stp q30, q31, [x2, #480]
    mrs x3, fpsr
    mrs x4, fpcr
    add x2, x2, #512
    stp x3, x4, [x2]
    mov x1, sp
    bl {exception}
    add x2, sp, #784
    ldp x3, x4, [x2]
    msr fpsr, x3
    msr fpcr, x4
    add x2, sp, #272
    ldp q0, q1, [x2, #0]
    ldp q2, q3, [x2, #32]
    ldp q4, q5, [x2, #64]
    ldp q6, q7, [x2, #96]
    ldp q8, q9, [x2, #128]
    ldp q10, q11, [x2, #160]
    ldp q12, q13, [x2, #192]
    ldp q14, q15, [x2, #224]
    ldp q16, q17, [x2, #256]
    ldp q18, q19, [x2, #288]
    ldp q20, q21, [x2, #320]
    ldp q22, q23, [x2, #352]
    ldp q24, q25, [x2, #384]
    ldp q26, q27, [x2, #416]
    ldp q28, q29, [x2, #448]
    ldp q30, q31, [x2, #480]
    ldp x2, x3, [sp, #256]
    msr spsr_el1, x2
    msr sp_el0, x3
    ldp x30, x2, [sp, #240]
    msr elr_el1, x2
    ldp x2, x3, [sp, #16]
    ldp x4, x5, [sp, #32]
    ldp x6, x7, [sp, #48]
    ldp x8, x9, [sp, #64]
    ldp x10, x11, [sp, #80]
    ldp x12, x13, [sp, #96]
    ldp x14, x15, [sp, #112]
    ldp x16, x17, [sp, #128]
    ldp x18, x19, [sp, #144]
    ldp x20, x21, [sp, #160]
    ldp x22, x23, [sp, #176]
    ldp x24, x25, [sp, #192]
    ldp x26, x27, [sp, #208]
    ldp x28, x29, [sp, #224]
    ldp x0, x1, [sp, #0]
    add sp, sp, #{frame}
    eret
    "#,
    max_vcpu = const abi::MAX_VCPUS - 1,
    stack_top = const abi::KERNEL_STACK_TOP,
    stack_size = const abi::KERNEL_STACK_SIZE,
    mair = const tables::MAIR,
    ttbr = const tables::L1_TABLE,
    sctlr = const SCTLR,
    frame = const core::mem::size_of::<Frame>(),
    early = sym early,
    main = sym kernel_main,
    exception = sym exception,
);

/// Set by vCPU 0 (with its MMU still off) once the tables exist and the shared window is
/// shared; the other vCPUs wait for it with their MMUs off, so both sides see memory.
static RELEASED: AtomicU64 = AtomicU64::new(0);

/// What the VMM wrote in the boot info page.
pub struct BootInfo {
    pub user_entry: u64,
    pub mem_size: u64,
    pub private_base: u64,
    pub private_end: u64,
}

fn boot_u64(offset: u64) -> u64 {
    // SAFETY: the boot info page is guest RAM the VMM filled before the first run,
    // identity-mapped (or accessed with the MMU off); offsets are aligned u64 fields.
    unsafe { core::ptr::read_volatile((a64::BOOT_INFO + offset) as *const u64) }
}

/// Where the heap ends: the boot region's size, from the boot info page (no exit).
fn heap_end() -> u64 {
    boot_info().mem_size
}

pub fn boot_info() -> BootInfo {
    let private_base = boot_u64(boot_info::PRIVATE_BASE);
    BootInfo {
        user_entry: boot_u64(boot_info::USER_ENTRY),
        mem_size: boot_u64(boot_info::MEM_SIZE),
        private_base,
        private_end: private_base.saturating_add(boot_u64(boot_info::PRIVATE_SIZE)),
    }
}

fn user_stack(vcpu: u64) -> u64 {
    boot_u64(boot_info::USER_STACKS + 8 * vcpu)
}

/// MMU off: vCPU 0 builds the tables and shares the window, the others wait. Returns the
/// `TCR_EL1` to use. Only aligned volatile accesses and no atomics read-modify-writes run
/// here (memory is Device-nGnRnE until the MMU is on).
extern "C" fn early(vcpu: u64) -> u64 {
    if vcpu == 0 {
        if boot_u64(boot_info::MAGIC) != a64::BOOT_INFO_MAGIC {
            panic!("no boot info page at {:#x}", a64::BOOT_INFO);
        }
        let private_end = boot_info().private_end;
        for i in 0..ENTRIES {
            let (l1, l2) = (tables::l1_entry(i, private_end), tables::l2_entry(i));
            // SAFETY: the two table pages lie in the kernel's boot region below 1 MiB,
            // reserved for them (abi::aarch64::PAGE_TABLES); nothing else uses them.
            unsafe {
                core::ptr::write_volatile((tables::L1_TABLE as *mut u64).add(i), l1);
                core::ptr::write_volatile((tables::L2_TABLE as *mut u64).add(i), l2);
            }
        }
        // The walker reads cacheable: push the tables out of any stale cache lines.
        let mut line = tables::L1_TABLE;
        while line < a64::PAGE_TABLES_END {
            // SAFETY: cache maintenance by address on the tables just written.
            unsafe { asm!("dc civac, {}", in(reg) line, options(nostack)) };
            line += 64;
        }
        share_window();
        RELEASED.store(1, Ordering::Relaxed);
        // SAFETY: barrier and event; no memory effects beyond ordering.
        unsafe { asm!("dsb sy", "sev", options(nostack)) };
    } else {
        while RELEASED.load(Ordering::Relaxed) == 0 {
            core::hint::spin_loop();
        }
    }
    let mmfr0: u64;
    // SAFETY: reading an ID register has no side effects.
    unsafe { asm!("mrs {}, id_aa64mmfr0_el1", out(reg) mmfr0, options(nomem, nostack)) };
    // IPS: the physical address size the CPU has (at most 48 bits with a 4 KiB granule).
    tables::TCR | ((mmfr0 & 0xf).min(5) << tables::TCR_IPS_SHIFT)
}

/// Protected VM: shares every granule of the shared window with the host. A normal VM
/// answers `HYP_MEMINFO` with `NOT_SUPPORTED` and nothing is shared.
fn share_window() {
    let granule = mmio::hvc(hvc::HYP_MEMINFO, 0, 0, 0);
    if granule == 0 || granule as i64 <= 0 {
        return;
    }
    let mut ipa = a64::SHARED_BASE;
    while ipa < a64::SHARED_BASE + a64::SHARED_SIZE {
        // Touch it first: pKVM shares only pages already mapped for the guest.
        // SAFETY: the shared window is guest RAM (a memory slot) below 4 GiB.
        unsafe { core::ptr::read_volatile(ipa as *const u64) };
        let ret = mmio::hvc(hvc::MEM_SHARE, ipa, 0, 0);
        if ret != 0 {
            panic!("MEM_SHARE of {ipa:#x} failed: {}", ret as i64);
        }
        ipa += granule;
    }
}

/// MMU on: let EL0 read the virtual counter and drop to the user thread.
extern "C" fn kernel_main(vcpu: u64) -> ! {
    let entry = boot_info().user_entry;
    let stack = user_stack(vcpu) & !0xf;
    // SAFETY: CNTKCTL_EL1 only gates EL0 counter access; the eret enters the user program
    // the VMM loaded, at EL0 with its own stack; the kernel stack is reset on each trap.
    unsafe {
        asm!(
            "mrs x3, cntkctl_el1",
            "orr x3, x3, {vcten}",
            "msr cntkctl_el1, x3",
            "msr elr_el1, {entry}",
            "msr spsr_el1, {spsr}",
            "msr sp_el0, {stack}",
            "mov x1, xzr",
            "mov x2, xzr",
            "mov x30, xzr",
            "eret",
            vcten = in(reg) CNTKCTL_EL0VCTEN,
            entry = in(reg) entry,
            spsr = in(reg) SPSR_EL0,
            stack = in(reg) stack,
            in("x0") vcpu,
            options(noreturn)
        )
    }
}

/// Vector offsets / 0x80: 4 is a synchronous exception at EL1, 8 one from EL0.
const SYNC_EL1: u64 = 4;
const SYNC_EL0: u64 = 8;

extern "C" fn exception(kind: u64, f: &mut Frame) {
    let esr: u64;
    // SAFETY: reading ESR_EL1 has no side effects.
    unsafe { asm!("mrs {}, esr_el1", out(reg) esr, options(nomem, nostack)) };
    let class = esr >> 26;
    if kind == SYNC_EL0 && class == ec::SVC64 {
        handle_syscall(f);
        return;
    }
    let vector = if kind == SYNC_EL0 || kind == SYNC_EL1 {
        class
    } else {
        a64::VECTOR_ASYNC
    };
    report(f, vector, esr, kind >= SYNC_EL0);
}

/// Memory user pointers may name: the EL0 part of the first 3 GiB, and the private pool.
fn user_range_ok(addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    let info = boot_info();
    (addr >= 2 << 20 && end <= 3 << 30) || (addr >= info.private_base && end <= info.private_end)
}

fn this_vcpu() -> u64 {
    let mpidr: u64;
    // SAFETY: reading MPIDR_EL1 has no side effects.
    unsafe { asm!("mrs {}, mpidr_el1", out(reg) mpidr, options(nomem, nostack)) };
    (mpidr & 0xff).min(abi::MAX_VCPUS as u64 - 1)
}

/// Writes `bytes` to vCPU `vcpu`'s console, eight at a time (one exit per eight bytes).
fn console_write(vcpu: u64, bytes: impl Iterator<Item = u8>) {
    let at = abi::CONSOLE + 8 * vcpu;
    let (mut word, mut n) = (0u64, 0);
    for b in bytes {
        word |= u64::from(b) << (8 * n);
        n += 1;
        if n == 8 {
            mmio::write_u64(at, word);
            (word, n) = (0, 0);
        }
    }
    if n >= 4 {
        mmio::write_u32(at, word as u32);
        (word, n) = (word >> 32, n - 4);
    }
    if n >= 2 {
        mmio::write_u16(at, word as u16);
        (word, n) = (word >> 16, n - 2);
    }
    if n == 1 {
        mmio::write_u8(at, word as u8);
    }
}

fn handle_syscall(f: &mut Frame) {
    let (a0, a1) = (f.x[0], f.x[1]);
    f.x[0] = match f.x[8] {
        syscall::WRITE if user_range_ok(a0, a1) => {
            let bytes = (a0..a0 + a1).map(|p| {
                // SAFETY: [a0, a0 + a1) is user memory the tables map (checked).
                unsafe { core::ptr::read_volatile(p as *const u8) }
            });
            console_write(this_vcpu(), bytes);
            a1
        }
        syscall::EXIT => exit(a0 as u32),
        syscall::CLOCK => mmio::read_u64(abi::TIMER + abi::TIMER_NOW),
        syscall::WAIT => {
            mmio::write_u64(abi::TIMER + abi::TIMER_WAIT + 8 * this_vcpu(), a0);
            0
        }
        syscall::MAP => crate::shared_heap::map(a0, heap_end).unwrap_or(u64::MAX),
        syscall::UNMAP if crate::shared_heap::unmap(a0, a1, heap_end) => 0,
        _ => u64::MAX,
    };
}

/// Writes the exit code to the control page (the VMM stops there), then powers off.
fn exit(code: u32) -> ! {
    mmio::write_u32(abi::CONTROL, code);
    mmio::hvc(hvc::PSCI_SYSTEM_OFF, 0, 0, 0);
    halt_forever()
}

/// Sends the fault to the VMM, which stops the VM (x86 field indices, docs/arm64.md).
fn report(f: &Frame, vector: u64, esr: u64, from_user: bool) -> ! {
    let far: u64;
    // SAFETY: reading FAR_EL1 has no side effects.
    unsafe { asm!("mrs {}, far_el1", out(reg) far, options(nomem, nostack)) };
    let fields = [
        (fault::VECTOR, vector),
        (fault::ERROR_CODE, esr),
        (fault::RIP, f.elr),
        (fault::CS, if from_user { 3 } else { 0 }),
        (fault::RFLAGS, f.spsr),
        (fault::RSP, f.sp_el0),
        (fault::CR2, far),
        (fault::RAX, f.x[0]),
    ];
    for (index, value) in fields {
        mmio::write_u64(abi::FAULT + 8 * index, value);
    }
    mmio::write_u64(abi::FAULT + abi::FAULT_COMMIT, 1);
    halt_forever()
}

fn halt_forever() -> ! {
    loop {
        // SAFETY: wfi only waits; the VMM has already been told to stop.
        unsafe { asm!("wfi", options(nomem, nostack)) };
    }
}

/// Formats into a fixed buffer (the kernel has no heap of its own).
struct Line {
    buf: [u8; 160],
    len: usize,
}

impl core::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        Ok(())
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use core::fmt::Write;
    let mut line = Line {
        buf: [0; 160],
        len: 0,
    };
    let _ = writeln!(line, "guest kernel panic: {}", info.message());
    console_write(this_vcpu(), line.buf[..line.len].iter().copied());
    mmio::write_u64(abi::FAULT + 8 * fault::VECTOR, 0xff);
    mmio::write_u64(abi::FAULT + abi::FAULT_COMMIT, 1);
    halt_forever()
}
