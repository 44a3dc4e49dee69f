//! aarch64 (EL0 under our EL1 kernel, docs/arm64.md): the `svc #0` syscall gate, MMIO as
//! single plain `ldr`/`str` instructions, the virtual counter.
//!
//! Guest programs build for `aarch64-unknown-none`, whose `compiler_builtins` already
//! defines `memcpy`, `memmove`, `memset`, `memcmp` and `bcmp`, and which has no unwinder:
//! unlike x86_64, nothing of a C runtime has to be supplied here.

use core::arch::asm;

/// Calls the guest kernel: `svc #0` with the number in `x8`, arguments in `x0`, `x1` and
/// the result in `x0`.
pub fn syscall2(number: u64, a: u64, b: u64) -> u64 {
    let ret: u64;
    // SAFETY: `svc #0` traps into the guest kernel, which handles the call and returns to
    // the next instruction with the result in x0 and every other register preserved
    // (docs/arm64.md). Not `nomem`: the kernel reads what `write` points at, and `map`
    // hands out memory.
    unsafe {
        asm!("svc #0", in("x8") number, inlateout("x0") a => ret, in("x1") b, options(nostack))
    };
    ret
}

/// The virtual counter (`CNTVCT_EL0`): free-running, readable at EL0 (the kernel sets
/// `CNTKCTL_EL1.EL0VCTEN`), no exit to the VMM.
pub fn counter() -> u64 {
    let ticks: u64;
    // SAFETY: reads a system register EL0 may read; no memory is touched.
    unsafe {
        asm!("mrs {t}, cntvct_el0", t = out(reg) ticks, options(nomem, nostack, preserves_flags))
    };
    ticks
}

// Device registers are accessed with inline assembly rather than `read_volatile`, because
// the compiler may pick any addressing mode for a volatile access (a pre- or post-indexed
// one with writeback, say, or a pair), and KVM can only emulate a trapped MMIO access whose
// syndrome is valid (ESR_EL2.ISV): a single load or store of one general-purpose register
// without writeback. The barriers give the device the ordering x86 gives uncached accesses
// (as Linux's readl/writel do): ring updates in normal memory before a register write is
// seen, and a register read before the ring memory read after it.

/// Reads the u32 device register at `addr`.
///
/// # Safety
/// `addr` is a 4-byte aligned register of an MMIO page mapped for EL0.
pub unsafe fn mmio_read_u32(addr: u64) -> u32 {
    let value: u32;
    // SAFETY: the caller's contract; one `ldr` of a W register, base register only.
    unsafe {
        asm!("ldr {v:w}, [{a}]", "dmb oshld", a = in(reg) addr, v = out(reg) value,
             options(nostack, preserves_flags))
    };
    value
}

/// Writes the u32 device register at `addr`.
///
/// # Safety
/// As [`mmio_read_u32`].
pub unsafe fn mmio_write_u32(addr: u64, value: u32) {
    // SAFETY: the caller's contract; one `str` of a W register, base register only.
    unsafe {
        asm!("dmb oshst", "str {v:w}, [{a}]", a = in(reg) addr, v = in(reg) value,
             options(nostack, preserves_flags))
    };
}

/// Reads the u64 device register at `addr`.
///
/// # Safety
/// `addr` is an 8-byte aligned register of an MMIO page mapped for EL0.
pub unsafe fn mmio_read_u64(addr: u64) -> u64 {
    let value: u64;
    // SAFETY: the caller's contract; one `ldr` of an X register, base register only.
    unsafe {
        asm!("ldr {v}, [{a}]", "dmb oshld", a = in(reg) addr, v = out(reg) value,
             options(nostack, preserves_flags))
    };
    value
}

/// Writes the u64 device register at `addr`.
///
/// # Safety
/// As [`mmio_read_u64`].
pub unsafe fn mmio_write_u64(addr: u64, value: u64) {
    // SAFETY: the caller's contract; one `str` of an X register, base register only.
    unsafe {
        asm!("dmb oshst", "str {v}, [{a}]", a = in(reg) addr, v = in(reg) value,
             options(nostack, preserves_flags))
    };
}

/// XCR0 is an x86_64 register; arm64 has no counterpart the kernels need.
pub fn xcr0() -> u64 {
    0
}

/// Calls `entry(arg)` with the stack pointer at `top`, leaving the current stack for good.
///
/// # Safety
/// `top` is 16-byte aligned and ends writable memory that nothing else uses, large enough
/// for everything `entry` calls.
pub unsafe fn run_on_stack(top: u64, entry: extern "C" fn(u64) -> !, arg: u64) -> ! {
    // SAFETY: the caller's contract (AAPCS64 wants sp 16-byte aligned); null frame and link
    // registers end backtraces. `entry` never returns (`brk` would report it if it did).
    unsafe {
        asm!(
            "mov sp, {top}",
            "mov x29, xzr",
            "mov x30, xzr",
            "blr {entry}",
            "brk #0",
            top = in(reg) top,
            entry = in(reg) entry,
            in("x0") arg,
            options(noreturn)
        )
    }
}
