//! A guest that ignores its memory budget: it brings virtio-llm up (so the host can send it
//! budget changes), first-touches `HOG_BYTES` of the private region, and never reads its
//! queues again. The host's broker must take the memory back by force.
#![no_std]
#![no_main]

use guest_programs::hog::HOG_BYTES;
use guest_runtime::mmio::private_region;
use guest_runtime::virtio::{MmioRegisters, SharedWindow, wait};
use guest_runtime::{exit, print};
use virtio_llm::driver::LlmDriver;
use virtio_llm::spec::layout::{SHARED_WINDOW_BASE, SHARED_WINDOW_SIZE};

const PAGE: u64 = 4096;

#[unsafe(no_mangle)]
pub extern "C" fn _start(vcpu: u64) -> ! {
    if vcpu == 0 {
        // Kept alive (not dropped) so the device stays up.
        let Ok(_driver) = LlmDriver::new(
            SharedWindow,
            MmioRegisters,
            SHARED_WINDOW_BASE,
            SHARED_WINDOW_SIZE,
        ) else {
            print("hog: virtio-llm device did not come up\n");
            exit(3)
        };
        let (base, _) = private_region();
        for p in 0..HOG_BYTES / PAGE {
            // SAFETY: the page lies inside the private region (the host sizes it to at least
            // HOG_BYTES), identity-mapped for user mode.
            unsafe { core::ptr::write_volatile((base + p * PAGE) as *mut u8, 0xa5) };
        }
        print("hog: holding private memory\n");
        loop {
            wait(vcpu, u64::MAX);
        }
    }
    loop {
        wait(vcpu, u64::MAX);
    }
}
