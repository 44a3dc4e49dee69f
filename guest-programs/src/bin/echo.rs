//! The virtio-llm echo service in guest user mode: brings the device up, then answers every
//! `EchoRequest` (see `virtio_llm::driver::echo_service`). vCPU 0 serves; the others park.
//! It polls the rings while requests keep coming and parks in the wait register (no host
//! CPU) after `IDLE_POLLS` empty polls.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use guest_runtime::virtio::{MmioRegisters, SharedWindow, wait};
use guest_runtime::{exit, print};
use virtio_llm::driver::echo_service::{Step, step};
use virtio_llm::driver::{DriverError, LlmDriver};
use virtio_llm::spec::layout::{SHARED_WINDOW_BASE, SHARED_WINDOW_SIZE};

/// Empty polls after the last message before parking (tens of microseconds). Counted, not
/// timed: reading the clock is an MMIO exit, which would cost more than the poll.
const IDLE_POLLS: u32 = 20_000;
/// Longest park; the loop re-checks the rings after it.
const PARK_NS: u64 = 100_000_000;

#[unsafe(no_mangle)]
pub extern "C" fn _start(vcpu: u64) -> ! {
    if vcpu != 0 {
        loop {
            wait(vcpu, u64::MAX);
        }
    }
    let Ok(mut driver) = LlmDriver::new(
        SharedWindow,
        MmioRegisters,
        SHARED_WINDOW_BASE,
        SHARED_WINDOW_SIZE,
    ) else {
        print("echo: virtio-llm device did not come up\n");
        exit(3)
    };
    print("echo: ready\n");
    let (mut pending, mut scratch) = (None, Vec::new());
    let mut idle_polls = 0u32;
    loop {
        match step(&mut driver, &mut pending, &mut scratch) {
            Ok(Step::Echoed) => idle_polls = 0,
            Ok(Step::Ignored) => print("echo: ignoring a non-echo request\n"),
            Ok(Step::Blocked) => park(&mut driver, vcpu),
            Ok(Step::Idle) if idle_polls >= IDLE_POLLS => {
                park(&mut driver, vcpu);
                idle_polls = 0;
            }
            Ok(Step::Idle) => {
                idle_polls += 1;
                core::hint::spin_loop();
            }
            // A malformed message was refused and its buffer reposted: keep serving.
            Err(DriverError::Malformed { .. }) => print("echo: refused a malformed request\n"),
            Err(_) => {
                print("echo: the device broke the ring protocol\n");
                exit(5)
            }
        }
    }
}

/// Arms the device's notifications and parks unless something arrived meanwhile.
fn park(driver: &mut LlmDriver<SharedWindow, MmioRegisters>, vcpu: u64) {
    match driver.arm() {
        Ok(false) => wait(vcpu, PARK_NS),
        Ok(true) => {}
        Err(_) => {
            print("echo: the device broke the ring protocol\n");
            exit(5)
        }
    }
}
