//! Runs the benchmark kernel and exits with the low byte of its result.
#![no_std]
#![no_main]

use guest_programs::compute_kernel;
use guest_runtime::exit;

/// Iterations of `compute_kernel`; `make bench-boot` uses the same count on the host.
pub const ITERATIONS: u64 = 300_000_000;

#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    let h = compute_kernel(core::hint::black_box(ITERATIONS));
    exit((h & 0xff) as u32)
}
