//! Runs on two vCPUs at once: each waits until the other has started (so they cannot run one
//! after the other), then checksums its own data and prints it; vCPU 0 exits once both are
//! done.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};
use guest_runtime::{exit, print_hex};

static STARTED: [AtomicU32; 2] = [AtomicU32::new(0), AtomicU32::new(0)];
static DONE: AtomicU32 = AtomicU32::new(0);

/// The checksum each vCPU computes; the host test computes the same.
fn checksum(vcpu: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ vcpu;
    for i in 0..1_000_000u64 {
        h = (h ^ (i * (vcpu + 1))).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[unsafe(no_mangle)]
pub extern "C" fn _start(vcpu: u64) -> ! {
    let me = (vcpu & 1) as usize;
    STARTED[me].store(1, Ordering::SeqCst);
    while STARTED[1 - me].load(Ordering::SeqCst) == 0 {
        core::hint::spin_loop();
    }
    let sum = core::hint::black_box(checksum(vcpu));
    print_hex(if me == 0 { "vcpu0 " } else { "vcpu1 " }, sum);
    DONE.fetch_add(1, Ordering::SeqCst);
    if me == 0 {
        while DONE.load(Ordering::SeqCst) < 2 {
            core::hint::spin_loop();
        }
        exit(42);
    }
    loop {
        core::hint::spin_loop();
    }
}
