//! For the reclaim test: fills the first `SCRUB_BYTES` of the private region with a
//! pattern, tells the host through the shared window, waits until the host has released
//! those pages (guest_memfd hole punch), touches the same guest-physical pages again and
//! reports whether every byte reads as zero.
#![no_std]
#![no_main]

use guest_programs::scrub::{MAILBOX_OFFSET, SCRUB_BYTES, state};
use guest_runtime::mmio::private_region;
use guest_runtime::virtio::wait;
use virtio_llm::spec::layout::SHARED_WINDOW_BASE;

fn mailbox() -> *mut u64 {
    (SHARED_WINDOW_BASE + MAILBOX_OFFSET) as *mut u64
}

fn set_state(s: u64) {
    // SAFETY: the mailbox is a u64 in the identity-mapped shared window.
    unsafe { core::ptr::write_volatile(mailbox(), s) };
}

fn get_state() -> u64 {
    // SAFETY: as in `set_state`.
    unsafe { core::ptr::read_volatile(mailbox()) }
}

#[unsafe(no_mangle)]
pub extern "C" fn _start(vcpu: u64) -> ! {
    if vcpu != 0 {
        loop {
            wait(vcpu, u64::MAX);
        }
    }
    let (base, _) = private_region();
    let words = SCRUB_BYTES / 8;
    for i in 0..words {
        // SAFETY: [base, base + SCRUB_BYTES) lies in the private region (the test sizes it).
        unsafe { core::ptr::write_volatile((base as *mut u64).add(i as usize), 0xa5a5_0000 + i) };
    }
    set_state(state::FILLED);
    while get_state() != state::RELEASED {
        wait(0, 1_000_000);
    }
    let mut nonzero = 0u64;
    for i in 0..words {
        // SAFETY: as above.
        let v = unsafe { core::ptr::read_volatile((base as *const u64).add(i as usize)) };
        nonzero += u64::from(v != 0);
    }
    set_state(if nonzero == 0 {
        state::ALL_ZERO
    } else {
        state::NOT_ZERO
    });
    loop {
        wait(0, u64::MAX);
    }
}
