//! A whole VM: guest memory laid out as the design says, the MMIO bus, and one host thread
//! per vCPU, run until the guest exits, fails, or misses its deadline.

use crate::arch::{self, BootParams, LOAD_BASE, MAX_MAPPED_GIB};
use crate::devices::virtio_llm::{LlmConfig, LlmHost, SealingRoot, VirtioLlm};
use crate::devices::virtio_mmio::{MmioTransport, reg};
use crate::devices::{Console, Control, FaultPage, FaultReport, MmioBus, Timer};
use crate::hypervisor::{
    Hypervisor, HypervisorError, Isolation, IsolationLevel, IsolationRequest, IsolationTooWeak,
    KvmHypervisor, PrivateMemory, RegisterSnapshot, Ring, Vcpu, VcpuInit, Vm,
};
use crate::vcpu_exit::{ExitAction, Stop, handle_exit};
use guest_kernel::abi;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};
use virtio_llm::device::chain::Window;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};

/// Guest-physical layout (the same on x86_64 and arm64).
pub mod layout {
    /// Boot region: boot tables, guest kernel, engine image, heap. Starts at 0.
    pub const BOOT_BASE: u64 = guest_kernel::abi::layout::BOOT_BASE;
    /// MMIO window (no memory): one 4 KiB page per device, as the guest ABI says.
    pub const MMIO_BASE: u64 = guest_kernel::abi::MMIO_BASE;
    pub const CONSOLE_BASE: u64 = guest_kernel::abi::CONSOLE;
    pub const CONTROL_BASE: u64 = guest_kernel::abi::CONTROL;
    pub const FAULT_BASE: u64 = guest_kernel::abi::FAULT;
    pub const TIMER_BASE: u64 = guest_kernel::abi::TIMER;
    pub const VIRTIO_LLM_BASE: u64 = guest_kernel::abi::VIRTIO_LLM;
    /// The user threads' stacks: vCPU `i`'s ends at `USER_STACK_TOP - i * USER_STACK_SIZE`
    /// (the program image sits at 2 MiB).
    pub const USER_STACK_TOP: u64 = 0x100_0000;
    pub const USER_STACK_SIZE: u64 = 0x10_0000;
    /// Shared window: virtqueues and bounce buffers, the only memory both sides touch.
    pub const SHARED_BASE: u64 = guest_kernel::abi::layout::SHARED_BASE;
    pub const SHARED_SIZE: u64 = guest_kernel::abi::layout::SHARED_SIZE;
    /// The private region: model weights, KV caches, engine scratch. A guest_memfd where the
    /// VM supports private pages (the guest uses it as RAM, the host cannot read it, a host
    /// access faults), memory donated to a protected VM on arm64 pKVM; the device never
    /// reaches it.
    pub const PRIVATE_BASE: u64 = guest_kernel::abi::layout::PRIVATE_BASE;
}

/// How to build a machine.
#[derive(Clone, Debug)]
pub struct MachineConfig {
    /// Bytes of the boot region.
    pub boot_size: usize,
    /// Bytes of the private region (a multiple of 2 MiB; 0: none).
    pub private_size: usize,
    /// How long the guest may run before it is stopped.
    pub deadline: Duration,
    /// Let the guest answer memory probes (virtio-llm `feature::DIAGNOSTICS`): tests only.
    pub diagnostics: bool,
    /// The guest's key root and measurement, for sealed models (see [`LlmConfig`]).
    pub key_root: Option<SealingRoot>,
    /// Offer KV reuse across requests (see [`LlmConfig`]).
    pub kv_reuse: bool,
    /// What kind of VM to ask for.
    pub isolation: IsolationRequest,
    /// Refuse to create the VM when its isolation is below this level.
    pub min_isolation: IsolationLevel,
    /// Tests only: the private pool (base, size) the control page reports instead of the
    /// real one, as a hostile host might (the guest must refuse a pool that breaks its
    /// layout, or none at all).
    #[cfg(feature = "test-hooks")]
    pub reported_private_pool: Option<(u64, u64)>,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            boot_size: 64 << 20,
            private_size: 0,
            deadline: Duration::from_secs(30),
            diagnostics: false,
            key_root: None,
            kv_reuse: true,
            isolation: IsolationRequest::default(),
            min_isolation: IsolationLevel::None,
            #[cfg(feature = "test-hooks")]
            reported_private_pool: None,
        }
    }
}

/// How a VM run ended, when not with an exit code.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    #[error(transparent)]
    IsolationTooWeak(#[from] IsolationTooWeak),
    #[error("cannot allocate {size} bytes of guest memory: {reason}")]
    Memory { size: usize, reason: String },
    #[error(
        "a private region of {size} bytes is not possible: it must be a multiple of 2 MiB up \
         to {max_gib} GiB"
    )]
    PrivateSize { size: usize, max_gib: usize },
    #[error("cannot create the virtio-llm notification eventfds: {0}")]
    Eventfd(std::io::Error),
    #[error("the machine's devices do not fit its MMIO window: {0}")]
    DeviceLayout(#[from] crate::devices::BusOverlap),
    #[error("invalid guest image: {0}")]
    Elf(#[from] crate::elf_loader::ElfError),
    #[error("the image does not fit guest memory: {len} bytes at {addr:#x}")]
    ImageOutOfBounds { addr: u64, len: usize },
    #[error(
        "the user program raised {name} at pc {:#x} (error code {:#x}, faulting address {:#x}, sp {:#x})",
        report.rip, report.error_code, report.cr2, report.rsp
    )]
    UserException {
        name: &'static str,
        report: FaultReport,
    },
    #[error(
        "the guest kernel raised {name} at pc {:#x} (faulting address {:#x})",
        report.rip, report.cr2
    )]
    KernelException {
        name: &'static str,
        report: FaultReport,
    },
    #[error("the guest kernel panicked")]
    KernelPanic,
    #[error("the guest asked for a reset (PSCI SYSTEM_RESET); FlexServe guests do not reboot")]
    GuestReset,
    #[error("vCPU {vcpu} triple-faulted (shutdown); registers: {regs:x?}")]
    TripleFault { vcpu: usize, regs: RegisterSnapshot },
    #[error(
        "vCPU {vcpu} {} unbacked guest-physical address {addr:#x} (a wild pointer); registers: {regs:x?}",
        if *.write { "wrote" } else { "read" }
    )]
    WildAccess {
        vcpu: usize,
        addr: u64,
        write: bool,
        regs: RegisterSnapshot,
    },
    #[error("the guest did not finish within {0:?} and was stopped")]
    Timeout(Duration),
    #[error("the VM was stopped by the host")]
    StoppedByHost,
    #[error("vCPU {vcpu} stopped: {what}; registers: {regs:x?}")]
    Unhandled {
        vcpu: usize,
        what: String,
        regs: RegisterSnapshot,
    },
}

/// A VM ready to run.
pub struct Machine {
    // Field order matters: the VM (and its memory slots) goes before the memory it maps.
    vm: Box<dyn Vm>,
    /// Guest-private memory, after `vm` so its slot goes first.
    private: Option<Arc<PrivateMemory>>,
    isolation: Isolation,
    mem: GuestMemoryMmap,
    bus: Arc<MmioBus>,
    console: Arc<Console>,
    timer: Arc<Timer>,
    llm: Arc<LlmHost>,
    stop: Arc<StopHandle>,
    config: MachineConfig,
}

impl Machine {
    /// Creates the VM, its boot region and shared window, and the devices.
    pub fn new(config: MachineConfig) -> Result<Self, VmError> {
        let hv = KvmHypervisor::new()?;
        let mut vm = hv.create_vm(config.isolation)?;
        let size = config.boot_size + layout::SHARED_SIZE as usize + config.private_size;
        // Every slot is sized here, before the first run (a protected VM's are frozen then).
        vm.reserve_memory(size as u64)?;
        let max_private = ((MAX_MAPPED_GIB - 4) << 30) as usize;
        if config.private_size > max_private || !config.private_size.is_multiple_of(2 << 20) {
            return Err(VmError::PrivateSize {
                size: config.private_size,
                max_gib: max_private >> 30,
            });
        }
        let region = |base: u64, len: usize| {
            GuestRegionMmap::from_range(GuestAddress(base), len, None)
                .map(Arc::new)
                .map_err(|e| VmError::Memory {
                    size,
                    reason: e.to_string(),
                })
        };
        let boot = region(layout::BOOT_BASE, config.boot_size)?;
        let shared = region(layout::SHARED_BASE, layout::SHARED_SIZE as usize)?;
        let collection = |regions| {
            GuestMemoryMmap::from_arc_regions(regions).map_err(|e| VmError::Memory {
                size,
                reason: e.to_string(),
            })
        };
        let regions = vec![boot, shared.clone()];
        // The private region is not in `mem`: the VMM has no way to address it.
        let private = match config.private_size {
            0 => None,
            size => Some(Arc::new(
                vm.create_private_memory(layout::PRIVATE_BASE, size)?,
            )),
        };
        let isolation = Isolation {
            protected_vm: vm.is_protected(),
            private: private.as_ref().map(|p| p.backing()),
            limit: vm.isolation_limit(),
        };
        isolation.check_at_least(config.min_isolation)?;
        let mem = collection(regions)?;
        // The device's view: the shared window and nothing else.
        let shared_only = collection(vec![shared])?;
        for region in mem.iter() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|e| VmError::Memory {
                    size,
                    reason: e.to_string(),
                })?;
            // SAFETY: `mem` owns these mappings and lives in the same `Machine` as `vm`, which
            // is dropped first (field order), so the ranges outlive the VM's use of them.
            unsafe { vm.map_memory(region.start_addr().0, host, region.len() as usize)? };
        }
        let console = Arc::new(Console::default());
        let timer = Arc::new(Timer::default());
        let interrupt_status = Arc::new(AtomicU32::new(0));
        let (llm_device, llm) = VirtioLlm::new(
            shared_only,
            Window {
                base: layout::SHARED_BASE,
                size: layout::SHARED_SIZE,
            },
            interrupt_status.clone(),
            timer.clone(),
            LlmConfig {
                // The guest starts with the whole private region as its budget; the host
                // lowers it with budget changes.
                memory_budget: config.private_size as u64,
                diagnostics: config.diagnostics,
                key_root: config.key_root,
                kv_reuse: config.kv_reuse,
                ..LlmConfig::default()
            },
        )
        .map_err(VmError::Eventfd)?;
        register_kicks(vm.as_ref(), &llm);
        let bus = device_bus(&config, &console, &timer, llm_device, interrupt_status)?;
        let mut machine = Self {
            vm,
            private,
            isolation,
            mem,
            bus: Arc::new(bus),
            console,
            timer,
            llm,
            stop: Arc::default(),
            config,
        };
        let tables = arch::boot_tables(machine.config.private_size as u64);
        machine.load(0, &tables)?;
        Ok(machine)
    }

    /// Copies `bytes` into guest memory at `addr`.
    pub fn load(&mut self, addr: u64, bytes: &[u8]) -> Result<(), VmError> {
        use vm_memory::Bytes;
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .map_err(|_| VmError::ImageOutOfBounds {
                addr,
                len: bytes.len(),
            })
    }

    /// Loads a static ELF executable into the boot region (above the boot tables) and
    /// returns its entry point.
    pub fn load_elf(&mut self, image: &[u8]) -> Result<u64, VmError> {
        let (base, size) = (LOAD_BASE, self.config.boot_size as u64 - LOAD_BASE);
        let plan = crate::elf_loader::plan(image, arch::ELF_MACHINE, base, size)?;
        for seg in &plan.segments {
            let bytes = &image[seg.file_offset..seg.file_offset + seg.file_size];
            self.load(seg.addr, bytes)?;
            // Zero the rest (.bss): a machine may load several images over time.
            let zeros = vec![0u8; (seg.mem_size as usize).saturating_sub(seg.file_size)];
            self.load(seg.addr + seg.file_size as u64, &zeros)?;
        }
        Ok(plan.entry)
    }

    /// The isolation this VM got (its level, what backs the private pool, why not stronger).
    pub fn isolation(&self) -> &Isolation {
        &self.isolation
    }

    /// Guest memory, for tests that must corrupt the guest on purpose.
    #[cfg(feature = "test-hooks")]
    pub fn memory_for_tests(&self) -> GuestMemoryMmap {
        self.mem.clone()
    }

    /// Guest memory and the timer its vCPUs park in, for tests that rewrite guest code
    /// while no vCPU runs it.
    #[cfg(feature = "test-hooks")]
    pub fn parked_writer_for_tests(&self, vcpus: u8) -> crate::parked_writer::ParkedWriter {
        crate::parked_writer::ParkedWriter::new(self.mem.clone(), self.timer.clone(), vcpus)
    }

    /// The guest-private region, if the machine has one (to release pages, and for tests
    /// that show the host cannot read it).
    pub fn private_memory(&self) -> Option<Arc<PrivateMemory>> {
        self.private.clone()
    }

    /// The host's handle on the virtio-llm device (usable from other threads while the
    /// guest runs).
    pub fn llm(&self) -> Arc<LlmHost> {
        self.llm.clone()
    }

    /// A handle that stops the running guest from another thread; `run` then returns
    /// [`VmError::StoppedByHost`].
    pub fn stop_handle(&self) -> Arc<StopHandle> {
        self.stop.clone()
    }

    /// The guest's console output so far.
    pub fn console(&self) -> &Console {
        &self.console
    }

    /// Boots the guest kernel image on `vcpus` vCPUs; each drops to the user program image
    /// in user mode (one user thread per vCPU, told its index). Returns the exit code.
    pub fn boot(&mut self, kernel: &[u8], user: &[u8], vcpus: u8) -> Result<u32, VmError> {
        let kernel_entry = self.load_elf(kernel)?;
        let user_entry = self.load_elf(user)?;
        let params = BootParams {
            user_entry,
            vcpus,
            mem_size: self.config.boot_size as u64,
            private_base: layout::PRIVATE_BASE,
            private_size: self.config.private_size as u64,
        };
        for (addr, bytes) in arch::boot_data(&params) {
            self.load(addr, &bytes)?;
        }
        let inits = (0..vcpus)
            .map(|id| VcpuInit {
                entry: kernel_entry,
                stack: abi::KERNEL_STACK_TOP - abi::KERNEL_STACK_SIZE * u64::from(id),
                ring: Ring::Kernel,
                args: [
                    user_entry,
                    layout::USER_STACK_TOP - layout::USER_STACK_SIZE * u64::from(id),
                    u64::from(id),
                ],
            })
            .collect::<Vec<_>>();
        self.run(&inits)
    }

    /// Runs one vCPU per entry in `inits` until the guest exits; returns its exit code.
    pub fn run(&mut self, inits: &[VcpuInit]) -> Result<u32, VmError> {
        let vcpus = inits
            .iter()
            .enumerate()
            .map(|(i, init)| self.vm.create_vcpu(i as u8, init))
            .collect::<Result<Vec<_>, _>>()?;
        install_kick_handler();
        let stopping = AtomicBool::new(false);
        let threads: Vec<AtomicU64> = vcpus.iter().map(|_| AtomicU64::new(0)).collect();
        let (tx, rx) = mpsc::channel();
        let deadline = self.config.deadline;
        let bus = &*self.bus;
        let timer = &*self.timer;
        let stop = &*self.stop;
        stop.clear();
        self.llm.vm_started();
        let result = std::thread::scope(|scope| {
            for (i, vcpu) in vcpus.into_iter().enumerate() {
                let (tx, stopping, tid) = (tx.clone(), &stopping, &threads[i]);
                scope.spawn(move || {
                    // SAFETY: pthread_self has no preconditions.
                    tid.store(unsafe { libc::pthread_self() } as u64, Ordering::SeqCst);
                    let outcome = vcpu_loop(vcpu, bus, stopping);
                    // Out of KVM_RUN for good: no more kicks for this thread, which is
                    // about to exit.
                    tid.store(0, Ordering::SeqCst);
                    // The receiver outlives every vCPU thread (it is dropped after the scope).
                    let _ = tx.send((i, outcome));
                });
            }
            drop(tx);
            let start = Instant::now();
            // The first vCPU to stop decides the outcome; a host stop request makes one up.
            let (first, from_vcpu) = loop {
                let left = deadline.saturating_sub(start.elapsed());
                if left.is_zero() {
                    break (None, false);
                }
                match rx.recv_timeout(left.min(STOP_POLL)) {
                    Ok(outcome) => break (Some(outcome), true),
                    Err(mpsc::RecvTimeoutError::Timeout) if stop.requested() => {
                        break (
                            Some((0, (Stop::Kicked, RegisterSnapshot::default()))),
                            false,
                        );
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => break (None, false),
                }
            };
            stopping.store(true, Ordering::SeqCst);
            // Kick every vCPU out of KVM_RUN until all have reported.
            let mut reported = usize::from(from_vcpu);
            while reported < threads.len() {
                // Waiting vCPUs are parked in the timer, not in KVM_RUN: wake them too.
                timer.wake_all();
                for tid in &threads {
                    let t = tid.load(Ordering::SeqCst);
                    if t != 0 {
                        // SAFETY: `t` is a thread of this scope, not yet joined (joining
                        // happens when the scope ends), so the id is valid; the signal has
                        // a handler installed that does nothing.
                        unsafe { libc::pthread_kill(t as libc::pthread_t, kick_signal()) };
                    }
                }
                if rx.recv_timeout(Duration::from_millis(10)).is_ok() {
                    reported += 1;
                }
            }
            (first, start.elapsed())
        });
        self.llm.vm_stopped();
        match result {
            (None, elapsed) => Err(VmError::Timeout(elapsed)),
            (Some((_, (Stop::Kicked, _))), _) if self.stop.requested() => {
                Err(VmError::StoppedByHost)
            }
            (Some((vcpu, (stop, regs))), _) => outcome(vcpu, stop, regs),
        }
    }
}

/// How often the run loop checks for a host stop request.
const STOP_POLL: Duration = Duration::from_millis(5);

/// Lets another thread stop a running guest.
#[derive(Default)]
pub struct StopHandle {
    requested: AtomicBool,
}

impl StopHandle {
    /// Asks the running guest to stop (within a few milliseconds).
    pub fn stop(&self) {
        self.requested.store(true, Ordering::SeqCst);
    }

    fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    fn clear(&self) {
        self.requested.store(false, Ordering::SeqCst);
    }
}

fn outcome(vcpu: usize, stop: Stop, regs: RegisterSnapshot) -> Result<u32, VmError> {
    match stop {
        Stop::Exited(code) => Ok(code),
        // A power-off without an exit code written first is a clean exit with 0.
        Stop::PoweredOff => Ok(0),
        Stop::Reset => Err(VmError::GuestReset),
        Stop::GuestFault(report) if report.vector == 0xff => Err(VmError::KernelPanic),
        Stop::GuestFault(report) => {
            let name = arch::exception_name(report.vector);
            if report.cs & 3 == 3 {
                Err(VmError::UserException { name, report })
            } else {
                Err(VmError::KernelException { name, report })
            }
        }
        Stop::Shutdown => Err(VmError::TripleFault { vcpu, regs }),
        Stop::WildAccess { addr, write } => Err(VmError::WildAccess {
            vcpu,
            addr,
            write,
            regs,
        }),
        Stop::Kicked => Err(VmError::Unhandled {
            vcpu,
            what: "interrupted".into(),
            regs,
        }),
        Stop::Unhandled(what) => Err(VmError::Unhandled { vcpu, what, regs }),
    }
}

/// Runs one vCPU until it stops; returns why, with its registers at that point.
fn vcpu_loop(
    mut vcpu: Box<dyn Vcpu>,
    bus: &MmioBus,
    stopping: &AtomicBool,
) -> (Stop, RegisterSnapshot) {
    let stop = loop {
        if stopping.load(Ordering::SeqCst) {
            break Stop::Kicked;
        }
        let action = match vcpu.run() {
            Ok(exit) => handle_exit(exit, bus),
            Err(e) => ExitAction::Stop(Stop::Unhandled(e.to_string())),
        };
        match action {
            ExitAction::Resume => {}
            ExitAction::Stop(Stop::Kicked) if !stopping.load(Ordering::SeqCst) => {}
            ExitAction::Stop(stop) => break stop,
        }
    };
    (stop, vcpu.snapshot().unwrap_or_default())
}

fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// A no-op handler for the kick signal, so it interrupts KVM_RUN (EINTR) without killing
/// the process.
fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // A failure leaves the default action (terminate) in place; kicking would then end
        // the process, so report it loudly rather than continue silently.
        if let Err(e) = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick) {
            eprintln!("flexserve: cannot install the vCPU kick signal handler: {e}");
        }
    });
}

/// Lets KVM signal each virtio-llm queue's kick eventfd on the driver's notify write, with
/// no exit to the vCPU thread.
fn register_kicks(vm: &dyn Vm, llm: &LlmHost) {
    for q in 0..virtio_llm::spec::queue::COUNT {
        if let Some(fd) = llm.kick_fd(q) {
            let addr = layout::VIRTIO_LLM_BASE + reg::QUEUE_NOTIFY;
            if let Err(e) = vm.register_mmio_notify(addr, u32::from(q), fd) {
                // The notify write then exits to the vCPU thread, which signals the same
                // eventfd: slower, not wrong.
                eprintln!("[vmm] virtio-llm queue {q}: no ioeventfd ({e}); using MMIO exits");
            }
        }
    }
}

/// The MMIO devices at their fixed pages: console, control, fault report, timer, and
/// virtio-llm behind its virtio-mmio transport.
fn device_bus(
    config: &MachineConfig,
    console: &Arc<Console>,
    timer: &Arc<Timer>,
    llm_device: VirtioLlm,
    interrupt_status: Arc<AtomicU32>,
) -> Result<MmioBus, VmError> {
    let mut bus = MmioBus::default();
    bus.insert(layout::CONSOLE_BASE, 0x1000, console.clone())?;
    let (private_base, private_size) = (layout::PRIVATE_BASE, config.private_size as u64);
    #[cfg(feature = "test-hooks")]
    let (private_base, private_size) = config
        .reported_private_pool
        .unwrap_or((private_base, private_size));
    let control = Control {
        mem_size: config.boot_size as u64,
        private_base,
        private_size,
    };
    bus.insert(layout::CONTROL_BASE, 0x1000, Arc::new(control))?;
    bus.insert(layout::FAULT_BASE, 0x1000, Arc::new(FaultPage::default()))?;
    bus.insert(layout::TIMER_BASE, 0x1000, timer.clone())?;
    let transport = MmioTransport::with_interrupt_status(Box::new(llm_device), interrupt_status);
    bus.insert(layout::VIRTIO_LLM_BASE, 0x1000, Arc::new(transport))?;
    Ok(bus)
}
