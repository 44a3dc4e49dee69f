//! The engine program of the protected guest (user mode). vCPU 0 brings the virtio-llm
//! device up and runs the [`Service`]; every other vCPU is an engine worker. Nothing here
//! needs the guest kernel after boot: rings, registers and the wait register are mapped for
//! user mode, and the weights and KV caches live in the private region, which the global
//! allocator manages in user mode.
#![no_std]
#![no_main]

extern crate alloc;

use guest_runtime::arch::counter;
use guest_runtime::virtio::{MmioRegisters, SharedWindow, now_ns, wait};
use guest_runtime::{exit, print, private_usage, with_private_pool};
use guest_service::memory::{MemoryUse, PrivateMemory};
use guest_service::service::{Environment, Service, Step};
use guest_service::vcpu_pool::VcpuPool;
use inference_guest::quant::{CpuFeatures, Kernels};
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

/// The global allocator's private pool.
struct Pool;

impl PrivateMemory for Pool {
    fn usage(&self) -> MemoryUse {
        let u = private_usage();
        MemoryUse {
            in_use: u.in_use,
            resident: u.resident,
            pending: u.pending,
            budget: u.budget,
            size: u.size,
        }
    }

    fn fits(&self, blocks: &[u64]) -> bool {
        with_private_pool(|p| p.fits(blocks))
    }

    fn set_budget(&self, bytes: u64) {
        with_private_pool(|p| p.set_budget(bytes));
    }

    fn trim(&self, target: u64, out: &mut [(u64, u64)]) -> usize {
        with_private_pool(|p| p.trim(target, out))
    }

    fn released(&self, start: u64, len: u64) {
        with_private_pool(|p| p.released(start, len));
    }
}

impl Environment for Guest {
    fn now_ns(&self) -> u64 {
        now_ns()
    }

    fn ticks(&self) -> u64 {
        counter()
    }

    fn memory(&self) -> &dyn PrivateMemory {
        &Pool
    }

    fn park(&self) {
        wait(self.vcpu, PARK_NS);
    }

    fn random(&self) -> u64 {
        // The CPU's free-running counter (TSC, CNTVCT_EL0) and the VMM's clock, mixed
        // (SplitMix64's finaliser): unpredictable enough for a test canary the host must not
        // guess.
        let mut z = counter() ^ now_ns().rotate_left(32);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn prefault(&self, addr: u64, len: u64) {
        guest_service::vcpu_pool::prefault(addr, len);
    }

    fn log(&self, line: &str) {
        print(line);
        print("\n");
    }

    fn expose(&self, bytes: &[u8]) -> u64 {
        // The window's last page: past every ring and buffer of the driver's layout.
        let addr = SHARED_WINDOW_BASE + SHARED_WINDOW_SIZE - 4096;
        let len = bytes.len().min(4096);
        // SAFETY: the page lies inside the identity-mapped shared window, and no ring or
        // buffer uses it (layout::window_bytes_needed is far below the window's size).
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, len) };
        addr
    }

    fn count_nonzero(&self, addr: u64, len: u64) -> u64 {
        (addr..addr + len)
            .step_by(8)
            .map(|a| {
                // SAFETY: a test probe of a private-pool block the service allocated; the
                // pool is identity-mapped for user mode and nothing else uses the block.
                let word = unsafe { core::ptr::read_volatile(a as *const u64) };
                u64::from(word.to_le_bytes().iter().filter(|&&b| b != 0).count() as u8)
            })
            .sum()
    }
}

/// Every vCPU enters here on its boot-region stack and leaves it at once: the engine runs
/// on a user stack in the private pool, where the host cannot read its locals.
#[unsafe(no_mangle)]
pub extern "C" fn _start(vcpu: u64) -> ! {
    guest_runtime::start_on_private_stack(vcpu, engine_main)
}

extern "C" fn engine_main(vcpu: u64) -> ! {
    if vcpu != 0 {
        guest_service::vcpu_pool::worker(vcpu);
    }
    // Memory probes only in the test build (service/probe.rs says why).
    let open = if cfg!(feature = "probes") {
        LlmDriver::with_probes
    } else {
        LlmDriver::new
    };
    let Ok(mut driver) = open(
        SharedWindow,
        MmioRegisters,
        SHARED_WINDOW_BASE,
        SHARED_WINDOW_SIZE,
    ) else {
        print("engine: the virtio-llm device did not come up\n");
        exit(3)
    };
    let limits = driver.limits();
    with_private_pool(|p| p.set_budget(limits.memory_budget));
    let cpu_features = CpuFeatures::detect_with_xcr0(guest_runtime::arch::xcr0());
    // SAFETY: the features come from this vCPU's CPUID and the XCR0 its user code runs
    // under (arch::xcr0), and every vCPU runs alike (the VMM configures them the same).
    let kernels = unsafe { Kernels::for_detected(cpu_features) };
    let isa = kernels.isa();
    let mut service = Service::new(
        kernels,
        cpu_features,
        limits.max_models,
        limits.max_sessions,
        driver.features(),
    );
    let env = Guest { vcpu };
    print(&alloc::format!(
        "engine: ready (kernels: {isa:?}; CPU: {cpu_features})\n"
    ));
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
