//! For the test that the host cannot read guest-private memory. Makes two random 64-byte
//! canaries from the CPU's free-running counter: A goes to the start of 16 pages spread over
//! the private region, B to the shared window; the FNV-1a hashes of both go to the shared
//! window (never the canaries' own bytes for A), then it parks. The host scans its own
//! memory for a 64-byte block with A's hash (must not exist) and with B's (must, proving the
//! scan sees the shared window).
#![no_std]
#![no_main]

use guest_programs::canary::{CANARY_BYTES, HASHES_OFFSET, SHARED_OFFSET, fnv1a};
use guest_runtime::mmio::private_region;
use guest_runtime::virtio::wait;
use virtio_llm::spec::layout::SHARED_WINDOW_BASE;

fn random_block(state: &mut u64) -> [u8; CANARY_BYTES] {
    let mut b = [0u8; CANARY_BYTES];
    for chunk in b.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        chunk.copy_from_slice(&state.to_le_bytes());
    }
    b
}

fn put(addr: u64, bytes: &[u8]) {
    for (i, &b) in bytes.iter().enumerate() {
        // SAFETY: callers pass addresses inside the identity-mapped private region or
        // shared window, with room for `bytes`.
        unsafe { core::ptr::write_volatile((addr + i as u64) as *mut u8, b) };
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn _start(vcpu: u64) -> ! {
    if vcpu == 0 {
        let mut state = guest_runtime::arch::counter() | 1;
        let (a, b) = (random_block(&mut state), random_block(&mut state));
        let (base, size) = private_region();
        let stride = (size / 16) & !0xfff;
        for i in 0..16 {
            put(base + i * stride, &a);
        }
        put(SHARED_WINDOW_BASE + SHARED_OFFSET, &b);
        // Hashes last: the host waits for them to appear.
        let mut hashes = [0u8; 16];
        hashes[..8].copy_from_slice(&fnv1a(&a).to_le_bytes());
        hashes[8..].copy_from_slice(&fnv1a(&b).to_le_bytes());
        put(SHARED_WINDOW_BASE + HASHES_OFFSET, &hashes);
    }
    loop {
        wait(vcpu, u64::MAX);
    }
}
