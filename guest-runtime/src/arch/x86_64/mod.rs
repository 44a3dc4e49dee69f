//! x86_64: the `ud2` syscall gate, MMIO as plain volatile accesses (uncached pages are
//! strongly ordered), the time-stamp counter. Guest programs build for the host target
//! (`x86_64-unknown-linux-gnu`) without its C library, so this side also supplies the memory
//! functions and the unwinder symbols that target's precompiled `core`/`alloc` refer to.

#[cfg(feature = "guest")]
mod mem;
#[cfg(feature = "guest")]
mod unwind;

/// Calls the guest kernel: `ud2` with the number in `rax` and arguments in `rdi`, `rsi`.
pub fn syscall2(number: u64, a: u64, b: u64) -> u64 {
    let ret: u64;
    // SAFETY: `ud2` traps into the guest kernel, which handles the call and resumes after
    // the instruction; only rax is changed.
    unsafe {
        core::arch::asm!("ud2", inlateout("rax") number => ret, in("rdi") a, in("rsi") b, options(nostack))
    };
    ret
}

/// XCR0 as user code runs under it: which register state the vCPU saves and enables (0 when
/// `xgetbv` is disabled; the guest kernel's promise, `guest_abi::XGETBV`).
pub fn xcr0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: xgetbv(0) only reads XCR0; where it raises #UD the guest kernel skips it with
    // eax = edx = 0 (abi::XGETBV), so it cannot fault the program.
    unsafe {
        core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack))
    };
    u64::from(hi) << 32 | u64::from(lo)
}

/// The time-stamp counter: free-running, readable in user mode, no exit to the VMM.
pub fn counter() -> u64 {
    // SAFETY: rdtsc only reads the time-stamp counter (user mode may).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Reads the u32 device register at `addr`.
///
/// # Safety
/// `addr` is a 4-byte aligned register of an MMIO page mapped for user mode.
pub unsafe fn mmio_read_u32(addr: u64) -> u32 {
    // SAFETY: the caller's contract; one 4-byte access.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// Writes the u32 device register at `addr`.
///
/// # Safety
/// As [`mmio_read_u32`].
pub unsafe fn mmio_write_u32(addr: u64, value: u32) {
    // SAFETY: the caller's contract; one 4-byte access.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
}

/// Reads the u64 device register at `addr`.
///
/// # Safety
/// `addr` is an 8-byte aligned register of an MMIO page mapped for user mode.
pub unsafe fn mmio_read_u64(addr: u64) -> u64 {
    // SAFETY: the caller's contract; one 8-byte access.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

/// Writes the u64 device register at `addr`.
///
/// # Safety
/// As [`mmio_read_u64`].
pub unsafe fn mmio_write_u64(addr: u64, value: u64) {
    // SAFETY: the caller's contract; one 8-byte access.
    unsafe { core::ptr::write_volatile(addr as *mut u64, value) }
}

/// Calls `entry(arg)` with the stack pointer at `top`, leaving the current stack for good.
///
/// # Safety
/// `top` is 16-byte aligned and ends writable memory that nothing else uses, large enough
/// for everything `entry` calls.
pub unsafe fn run_on_stack(top: u64, entry: extern "C" fn(u64) -> !, arg: u64) -> ! {
    // SAFETY: the caller's contract. `call` pushes a return address, so `entry` starts with
    // rsp + 8 16-byte aligned as the SysV ABI wants; a null frame pointer ends backtraces.
    // `entry` never returns (`int3` would report it if it did).
    unsafe {
        core::arch::asm!(
            "mov rsp, {top}",
            "xor ebp, ebp",
            "call {entry}",
            "int3",
            top = in(reg) top,
            entry = in(reg) entry,
            in("rdi") arg,
            options(noreturn)
        )
    }
}
