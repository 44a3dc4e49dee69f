//! x86_64: entry, IDT, exception dispatch, syscalls.

mod idt;
mod mmio;

use core::arch::{asm, global_asm};
use guest_kernel::abi::{self, fault, syscall};

/// The registers the common exception stub saves, in stack order.
#[repr(C)]
pub struct Frame {
    r15: u64,
    r14: u64,
    r13: u64,
    r12: u64,
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rbp: u64,
    rdi: u64,
    rsi: u64,
    rdx: u64,
    rcx: u64,
    rbx: u64,
    rax: u64,
    vector: u64,
    error_code: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

// Entry, one stub per vector (pushing a zero error code where the CPU pushes none), and the
// common path that saves every general register, calls Rust, and returns with iretq.
global_asm!(
    r#"
    .section .text.entry, "ax"
    .global _start
_start:
    call {main}
2:  hlt
    jmp 2b

    .text
    .macro VECTOR num, has_error
    .global flexserve_vector_\num
flexserve_vector_\num:
    .if \has_error == 0
    push 0
    .endif
    push \num
    jmp flexserve_exception_common
    .endm

    VECTOR 0, 0
    VECTOR 1, 0
    VECTOR 2, 0
    VECTOR 3, 0
    VECTOR 4, 0
    VECTOR 5, 0
    VECTOR 6, 0
    VECTOR 7, 0
    VECTOR 8, 1
    VECTOR 9, 0
    VECTOR 10, 1
    VECTOR 11, 1
    VECTOR 12, 1
    VECTOR 13, 1
    VECTOR 14, 1
    VECTOR 15, 0
    VECTOR 16, 0
    VECTOR 17, 1
    VECTOR 18, 0
    VECTOR 19, 0
    VECTOR 20, 0
    VECTOR 21, 1

flexserve_exception_common:
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rdi, rsp
    call {exception}
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    add rsp, 16
    iretq
    "#,
    main = sym kernel_main,
    exception = sym exception,
);

/// User code and data selectors (GDT written by the VMM).
const USER_CS: u64 = 0x23;
const USER_SS: u64 = 0x1b;
/// RFLAGS for user mode: reserved bit 1 only (interrupts stay off).
const USER_RFLAGS: u64 = 0x2;

extern "C" fn kernel_main(user_entry: u64, user_stack: u64, vcpu: u64) -> ! {
    idt::install(vcpu as usize);
    // The entry is a function: the SysV ABI wants rsp + 8 16-byte aligned on entry, as if a
    // `call` had pushed a return address (aligned SSE spills fault otherwise).
    let user_stack = user_stack - 8;
    // SAFETY: the selectors name the VMM's DPL-3 segments and the entry/stack were loaded
    // by the VMM into identity-mapped user pages; iretq switches to ring 3 for good.
    unsafe {
        asm!(
            "push {ss}",
            "push {rsp}",
            "push {rflags}",
            "push {cs}",
            "push {rip}",
            "mov rdi, {vcpu}",
            "iretq",
            ss = in(reg) USER_SS,
            rsp = in(reg) user_stack,
            rflags = in(reg) USER_RFLAGS,
            cs = in(reg) USER_CS,
            rip = in(reg) user_entry,
            vcpu = in(reg) vcpu,
            options(noreturn)
        )
    }
}

/// The first 4 GiB are identity-mapped for the kernel's own use.
const MAPPED_END: u64 = 1 << 32;

/// Memory user pointers may name: the first 4 GiB, and the private pool (the engine's user
/// stacks and small blocks live there, so its console lines do too).
fn user_range_ok(addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    if end <= MAPPED_END {
        return true;
    }
    let base = mmio::read_u64(abi::CONTROL + abi::CONTROL_PRIVATE_BASE);
    let size = mmio::read_u64(abi::CONTROL + abi::CONTROL_PRIVATE_SIZE);
    size != 0
        && abi::layout::check_private_pool(base, size).is_ok()
        && addr >= base
        && end <= base + size
}

extern "C" fn exception(f: &mut Frame) {
    let from_user = f.cs & 3 == 3;
    if f.vector == 6 && from_user && user_range_ok(f.rip, 3) {
        // SAFETY: rip..rip + 3 is inside the identity-mapped range (checked above).
        let insn = unsafe { core::ptr::read_volatile(f.rip as *const [u8; 3]) };
        if insn[..2] == [0x0f, 0x0b] {
            handle_syscall(f);
            f.rip += 2;
            return;
        }
        if insn == abi::XGETBV {
            // The ABI's promise (abi::XGETBV): XCR0 reads as 0 where xgetbv is disabled.
            (f.rax, f.rdx) = (0, 0);
            f.rip += 3;
            return;
        }
    }
    report(f);
}

fn handle_syscall(f: &mut Frame) {
    match f.rax {
        syscall::WRITE => {
            let (ptr, len) = (f.rdi, f.rsi);
            if !user_range_ok(ptr, len) {
                f.rax = u64::MAX;
                return;
            }
            for i in 0..len {
                // SAFETY: [ptr, ptr + len) is inside the identity-mapped range (checked).
                let b = unsafe { core::ptr::read_volatile((ptr + i) as *const u8) };
                mmio::write_u8(abi::CONSOLE + 8 * this_vcpu(), b);
            }
            f.rax = len;
        }
        syscall::EXIT => {
            mmio::write_u32(abi::CONTROL, f.rdi as u32);
            halt_forever();
        }
        syscall::CLOCK => f.rax = mmio::read_u64(abi::TIMER + abi::TIMER_NOW),
        syscall::MAP => f.rax = crate::shared_heap::map(f.rdi, heap_end).unwrap_or(u64::MAX),
        syscall::UNMAP => {
            f.rax = if crate::shared_heap::unmap(f.rdi, f.rsi, heap_end) {
                0
            } else {
                u64::MAX
            }
        }
        syscall::WAIT => {
            mmio::write_u64(abi::TIMER + abi::TIMER_WAIT + 8 * this_vcpu(), f.rdi);
            f.rax = 0;
        }
        _ => f.rax = u64::MAX,
    }
}

/// Where the heap ends: the boot region's size, from the control page.
fn heap_end() -> u64 {
    mmio::read_u64(abi::CONTROL + abi::CONTROL_MEM_SIZE)
}

/// This vCPU's index, from which kernel stack it is running on (each vCPU has its own,
/// `KERNEL_STACK_SIZE` apart below `KERNEL_STACK_TOP`).
fn this_vcpu() -> u64 {
    let rsp: u64;
    // SAFETY: reading rsp has no side effects.
    unsafe { asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack)) };
    (abi::KERNEL_STACK_TOP.saturating_sub(rsp) / abi::KERNEL_STACK_SIZE)
        .min(abi::MAX_VCPUS as u64 - 1)
}

/// Sends the fault to the VMM, which stops the VM.
fn report(f: &Frame) -> ! {
    let cr2: u64;
    // SAFETY: reading CR2 in ring 0 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack)) };
    let fields = [
        (fault::VECTOR, f.vector),
        (fault::ERROR_CODE, f.error_code),
        (fault::RIP, f.rip),
        (fault::CS, f.cs),
        (fault::RFLAGS, f.rflags),
        (fault::RSP, f.rsp),
        (fault::CR2, cr2),
        (fault::RAX, f.rax),
    ];
    for (index, value) in fields {
        mmio::write_u64(abi::FAULT + 8 * index, value);
    }
    mmio::write_u64(abi::FAULT + abi::FAULT_COMMIT, 1);
    halt_forever()
}

fn halt_forever() -> ! {
    loop {
        // SAFETY: hlt in ring 0 only waits; the VMM has already been told to stop.
        unsafe { asm!("hlt", options(nomem, nostack)) };
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    mmio::write_u64(abi::FAULT + 8 * fault::VECTOR, 0xff);
    mmio::write_u64(abi::FAULT + abi::FAULT_COMMIT, 1);
    halt_forever()
}
