//! The engine program of the protected guest (user mode). vCPU 0 brings the virtio-llm
//! device up and runs the [`Service`]; every other vCPU is an engine worker. Nothing here
//! needs the guest kernel after boot: rings, registers and the wait register are mapped for
//! user mode, and the weights and KV caches live in the private region, which the global
//! allocator manages in user mode.
#![no_std]
#![no_main]

extern crate alloc;

use guest_engine::service::{Environment, Service, Step};
use guest_engine::vcpu_pool::VcpuPool;
use guest_programs::virtio::{MmioRegisters, SharedWindow, now_ns, wait};
use guest_programs::{exit, print, private_usage};
use inference_guest::quant::Kernels;
use virtio_llm::driver::{DriverError, LlmDriver};
use virtio_llm::spec::layout::{SHARED_WINDOW_BASE, SHARED_WINDOW_SIZE};

/// Empty polls after the last message before parking (counted, not timed: reading the clock
/// is an MMIO exit).
const IDLE_POLLS: u32 = 20_000;
/// Longest park; the loop re-checks the rings after it.
const PARK_NS: u64 = 100_000_000;

struct Guest {
    vcpu: u64,
}

impl Environment for Guest {
    fn now_ns(&self) -> u64 {
        now_ns()
    }

    fn private_free(&self) -> Option<u64> {
        let (used, size) = private_usage();
        Some(size.saturating_sub(used))
    }

    fn private_usage(&self) -> (u64, u64) {
        private_usage()
    }

    fn park(&self) {
        wait(self.vcpu, PARK_NS);
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn _start(vcpu: u64) -> ! {
    if vcpu != 0 {
        guest_engine::vcpu_pool::worker(vcpu);
    }
    let Ok(mut driver) = LlmDriver::new(
        SharedWindow,
        MmioRegisters,
        SHARED_WINDOW_BASE,
        SHARED_WINDOW_SIZE,
    ) else {
        print("engine: the virtio-llm device did not come up\n");
        exit(3)
    };
    let limits = driver.limits();
    let mut service = Service::new(Kernels::detect(), limits.max_models, limits.max_sessions);
    let env = Guest { vcpu };
    print("engine: ready\n");
    let mut idle_polls = 0u32;
    loop {
        match service.step(&mut driver, &VcpuPool, &env) {
            Ok(Step::Worked) => idle_polls = 0,
            Ok(Step::Idle) if idle_polls >= IDLE_POLLS => {
                match driver.arm() {
                    Ok(false) => env.park(),
                    Ok(true) => {}
                    Err(_) => fatal(),
                }
                idle_polls = 0;
            }
            Ok(Step::Idle) => {
                idle_polls += 1;
                core::hint::spin_loop();
            }
            Err(DriverError::Malformed { .. }) => {}
            Err(_) => fatal(),
        }
    }
}

fn fatal() -> ! {
    print("engine: the device broke the ring protocol; stopping\n");
    exit(5)
}
