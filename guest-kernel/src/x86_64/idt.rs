//! The interrupt descriptor table: 22 exception vectors, interrupt gates to the kernel code
//! segment, DPL 0 (user code reaches them only by faulting).

use core::arch::asm;
use core::cell::UnsafeCell;
use guest_kernel::abi::MAX_VCPUS;

const VECTORS: usize = 22;
const KERNEL_CS: u64 = 0x08;
/// Present, DPL 0, 64-bit interrupt gate.
const GATE: u64 = 0x8e;

#[repr(C, align(16))]
struct Idt(UnsafeCell<[u64; 2 * VECTORS]>);

// SAFETY: each vCPU writes only its own table, once, before it leaves ring 0; afterwards
// only the CPU reads it.
unsafe impl Sync for Idt {}

/// One table per vCPU, so no vCPU ever writes a table another is using.
static IDTS: [Idt; MAX_VCPUS] = [const { Idt(UnsafeCell::new([0; 2 * VECTORS])) }; MAX_VCPUS];

unsafe extern "C" {
    fn flexserve_vector_0();
    fn flexserve_vector_1();
    fn flexserve_vector_2();
    fn flexserve_vector_3();
    fn flexserve_vector_4();
    fn flexserve_vector_5();
    fn flexserve_vector_6();
    fn flexserve_vector_7();
    fn flexserve_vector_8();
    fn flexserve_vector_9();
    fn flexserve_vector_10();
    fn flexserve_vector_11();
    fn flexserve_vector_12();
    fn flexserve_vector_13();
    fn flexserve_vector_14();
    fn flexserve_vector_15();
    fn flexserve_vector_16();
    fn flexserve_vector_17();
    fn flexserve_vector_18();
    fn flexserve_vector_19();
    fn flexserve_vector_20();
    fn flexserve_vector_21();
}

/// Fills vCPU `vcpu`'s IDT and loads it.
pub fn install(vcpu: usize) {
    let handlers: [unsafe extern "C" fn(); VECTORS] = [
        flexserve_vector_0,
        flexserve_vector_1,
        flexserve_vector_2,
        flexserve_vector_3,
        flexserve_vector_4,
        flexserve_vector_5,
        flexserve_vector_6,
        flexserve_vector_7,
        flexserve_vector_8,
        flexserve_vector_9,
        flexserve_vector_10,
        flexserve_vector_11,
        flexserve_vector_12,
        flexserve_vector_13,
        flexserve_vector_14,
        flexserve_vector_15,
        flexserve_vector_16,
        flexserve_vector_17,
        flexserve_vector_18,
        flexserve_vector_19,
        flexserve_vector_20,
        flexserve_vector_21,
    ];
    let table = IDTS[vcpu.min(MAX_VCPUS - 1)].0.get();
    for (i, h) in handlers.iter().enumerate() {
        let addr = *h as usize as u64;
        let low =
            (addr & 0xffff) | (KERNEL_CS << 16) | (GATE << 40) | ((addr >> 16 & 0xffff) << 48);
        // SAFETY: only this vCPU writes this table, once, before it can take an exception.
        unsafe {
            (*table)[2 * i] = low;
            (*table)[2 * i + 1] = addr >> 32;
        }
    }
    let idtr: [u16; 5] = {
        let base = table as u64;
        [
            (16 * VECTORS - 1) as u16,
            base as u16,
            (base >> 16) as u16,
            (base >> 32) as u16,
            (base >> 48) as u16,
        ]
    };
    // SAFETY: `idtr` describes the fully written, 'static IDT above.
    unsafe { asm!("lidt [{}]", in(reg) idtr.as_ptr(), options(readonly, nostack)) };
}
