//! The private-memory floor: two vCPUs first-touch every 4 KiB page of the private region,
//! one half each, and vCPU 0 prints how long that took by the guest clock. `make bench`
//! sets cold time-to-first-token beside it: a guest cannot load a model faster than it can
//! touch the pages that will hold it. Boot it with 2 vCPUs.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use guest_runtime::mmio::private_region;
use guest_runtime::virtio::{now_ns, wait};
use guest_runtime::{exit, print_hex};

const PAGE: u64 = 4096;
const VCPUS: u64 = 2;
/// vCPUs that finished their half.
static DONE: AtomicU64 = AtomicU64::new(0);

#[unsafe(no_mangle)]
pub extern "C" fn _start(vcpu: u64) -> ! {
    let (base, size) = private_region();
    let start = now_ns();
    let pages = size / PAGE;
    let half = pages.div_ceil(VCPUS);
    let first = vcpu.min(VCPUS - 1) * half;
    for p in first..(first + half).min(pages) {
        // SAFETY: the page lies inside the private region, identity-mapped for user mode.
        unsafe { core::ptr::write_volatile((base + p * PAGE) as *mut u8, 1) };
    }
    DONE.fetch_add(1, Ordering::SeqCst);
    if vcpu != 0 {
        loop {
            wait(vcpu, u64::MAX);
        }
    }
    while DONE.load(Ordering::SeqCst) < VCPUS {
        wait(0, 100_000);
    }
    print_hex("touched bytes ", size);
    print_hex("elapsed ns ", now_ns() - start);
    exit(0)
}
