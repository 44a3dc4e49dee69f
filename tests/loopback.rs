//! The real guest driver against the real VMM device in one process, with no VM: the
//! "guest" is a host thread that reaches the register page by direct calls and idles in the
//! timer's wait register, exactly as the guest does by MMIO.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use virtio_llm::device::DriverView;
use virtio_llm::device::chain::Window;
use virtio_llm::driver::LlmDriver;
use virtio_llm::driver::echo_service::{Step, step};
use virtio_llm::spec::layout::{SHARED_WINDOW_BASE, SHARED_WINDOW_SIZE};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm::devices::virtio_llm::{LlmConfig, LlmHost, VirtioLlm};
use vmm::devices::virtio_mmio::MmioTransport;
use vmm::devices::{MmioDevice, Timer};

/// The register page reached by direct calls.
pub use vmm::devices::DirectRegisters as Direct;

/// The driver type of the loopback.
pub type Driver = LlmDriver<DriverView<GuestMemoryMmap>, Direct>;

/// A device and the memory and timer a driver needs to reach it.
pub struct Loopback {
    pub host: Arc<LlmHost>,
    pub timer: Arc<Timer>,
    transport: Arc<MmioTransport>,
    mem: GuestMemoryMmap,
}

impl Default for Loopback {
    fn default() -> Self {
        Self::new()
    }
}

impl Loopback {
    pub fn new() -> Self {
        Self::with_config(LlmConfig::default())
    }

    /// A device that states `limits` in its configuration space.
    pub fn with_config(limits: LlmConfig) -> Self {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(
            GuestAddress(SHARED_WINDOW_BASE),
            SHARED_WINDOW_SIZE as usize,
        )])
        .expect("shared window");
        let timer = Arc::new(Timer::default());
        let irq = Arc::new(AtomicU32::new(0));
        let window = Window {
            base: SHARED_WINDOW_BASE,
            size: SHARED_WINDOW_SIZE,
        };
        let (device, host) =
            VirtioLlm::new(mem.clone(), window, irq.clone(), timer.clone(), limits)
                .expect("device");
        let transport = Arc::new(MmioTransport::with_interrupt_status(Box::new(device), irq));
        Self {
            host,
            timer,
            transport,
            mem,
        }
    }

    /// The shared window as both sides see it.
    pub fn window(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Brings the device up with a new driver.
    pub fn driver(&self) -> Driver {
        LlmDriver::new(
            DriverView(self.mem.clone()),
            Direct(self.transport.clone()),
            SHARED_WINDOW_BASE,
            SHARED_WINDOW_SIZE,
        )
        .expect("driver init")
    }
}

/// Idles like the guest: arm notifications, then park in vCPU 0's wait register.
pub fn idle(d: &mut Driver, timer: &Timer) {
    if !d.arm().expect("arm") {
        timer.write(guest_kernel::abi::TIMER_WAIT, &5_000_000u64.to_le_bytes());
    }
}

/// Runs the echo service (the same code as the guest's `echo` program) on a thread until
/// `stop` is set; spins while busy, parks after 50 µs idle.
pub fn spawn_echo(lb: &Loopback, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let mut d = lb.driver();
    let timer = lb.timer.clone();
    std::thread::spawn(move || {
        let (mut pending, mut scratch) = (None, Vec::new());
        let mut last = std::time::Instant::now();
        while !stop.load(Ordering::Relaxed) {
            match step(&mut d, &mut pending, &mut scratch).expect("echo step") {
                Step::Echoed | Step::Ignored => last = std::time::Instant::now(),
                Step::Blocked => idle(&mut d, &timer),
                Step::Idle if last.elapsed().as_micros() > 50 => {
                    idle(&mut d, &timer);
                    last = std::time::Instant::now();
                }
                Step::Idle => std::hint::spin_loop(),
            }
        }
    })
}
