//! The hypervisor layer: the only code that talks to KVM. Devices, the exit handler and the
//! vCPU loop see these small types and traits; one backend per host architecture
//! (`kvm_x86_64`, `kvm_aarch64`) implements them.
//!
//! `aarch64_boot` (register ids, system events, the boot info page) is plain logic and is
//! built on every host so its unit tests run on x86_64 too.

pub mod aarch64_boot;
mod isolation;
#[cfg(target_arch = "aarch64")]
mod kvm_aarch64;
mod kvm_memslots;
#[cfg(target_arch = "x86_64")]
mod kvm_x86_64;
mod private_memory;
#[cfg(target_arch = "x86_64")]
pub mod x86_64_boot;

pub use isolation::{
    Isolation, IsolationLevel, IsolationRequest, IsolationTooWeak, NO_GUEST_MEMFD_ENV,
    UnknownIsolationLevel, guest_memfd_disabled_by_env,
};
#[cfg(target_arch = "aarch64")]
pub use kvm_aarch64::{KvmHypervisor, KvmVcpu, KvmVm};
#[cfg(target_arch = "x86_64")]
pub use kvm_x86_64::{KvmHypervisor, KvmVcpu, KvmVm};
pub use private_memory::{PrivateBacking, PrivateMemory};

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("the VMM has KVM backends for x86_64 and aarch64 hosts only");

/// Why the hypervisor could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// `/dev/kvm` is missing or unusable.
    #[error(
        "cannot use /dev/kvm ({0}): check that the CPU has virtualisation enabled, that a KVM \
         module (kvm_intel, kvm_amd or kvm_pvm) is loaded, and that this user may read and \
         write /dev/kvm (group kvm)"
    )]
    KvmUnavailable(#[source] kvm_ioctls::Error),
    /// More vCPUs than the boot tables provide for.
    #[error("at most {max} vCPUs are supported")]
    TooManyVcpus { max: usize },
    /// A KVM ioctl failed.
    #[error("KVM {op} failed: {source}")]
    Ioctl {
        op: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The guest-private memory could not be set up or released.
    #[error("guest-private memory: {0}")]
    PrivateMemory(String),
    /// Guest memory of a protected VM is pinned and charged to RLIMIT_MEMLOCK.
    #[error(
        "a protected VM pins all {needed_mib} MiB of its memory, but RLIMIT_MEMLOCK is \
         {limit_mib} MiB and could not be raised ({reason}); raise it (`ulimit -l`, \
         LimitMEMLOCK= in the systemd unit) or run as a user with CAP_IPC_LOCK / \
         CAP_SYS_RESOURCE"
    )]
    MemlockLimit {
        needed_mib: u64,
        limit_mib: u64,
        reason: String,
    },
    /// The vCPU cannot be configured the way the guest ABI needs.
    #[error("vCPU setup: {0}")]
    VcpuSetup(String),
}

impl HypervisorError {
    pub(crate) fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Self {
        move |source| Self::Ioctl { op, source }
    }
}

/// What made a vCPU stop running guest code.
#[derive(Debug, PartialEq, Eq)]
pub enum VmExit<'a> {
    /// The guest read an address no memory backs; fill `data` before running again.
    MmioRead { addr: u64, data: &'a mut [u8] },
    /// The guest wrote `data` to an address no memory backs.
    MmioWrite { addr: u64, data: &'a [u8] },
    /// `in` from a port; fill `data` before running again.
    IoIn { port: u16, data: &'a mut [u8] },
    /// `out` to a port.
    IoOut { port: u16, data: &'a [u8] },
    /// The vCPU executed `hlt` in ring 0.
    Halt,
    /// Triple fault or an explicit shutdown (x86_64).
    Shutdown,
    /// The guest powered itself off (PSCI `SYSTEM_OFF`, arm64).
    PowerOff,
    /// The guest asked to be reset (PSCI `SYSTEM_RESET`, arm64).
    Reset,
    /// The run was interrupted by a signal (the VMM kicking the vCPU).
    Interrupted,
    /// The hardware refused to enter the guest.
    FailEntry { reason: u64 },
    /// Any other exit, by name.
    Other(&'static str),
}

/// Registers worth reporting when a guest fails, named for both architectures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegisterSnapshot {
    /// `rip` / `PC`.
    pub pc: u64,
    /// `rsp` / the stack pointer of the exception level the vCPU is in.
    pub sp: u64,
    /// `RFLAGS` / `PSTATE`.
    pub flags: u64,
    /// `rax` / `x0`.
    pub r0: u64,
    /// The last faulting address the guest saw: `CR2` / `FAR_EL1`.
    pub fault_addr: u64,
    /// The privilege level: CPL (0 kernel, 3 user) / exception level (1 kernel, 0 user).
    pub privilege: u8,
    /// Whether the vCPU was running user code (ring 3 / EL0).
    pub user: bool,
}

/// The privilege level a vCPU starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ring {
    /// Ring 0 / EL1: the guest kernel's entry.
    Kernel,
    /// Ring 3 / EL0: straight into a user program.
    User,
}

/// Where and how a vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuInit {
    pub entry: u64,
    pub stack: u64,
    pub ring: Ring,
    /// The first three argument registers (rdi, rsi, rdx on x86_64).
    pub args: [u64; 3],
}

/// A hypervisor that can create VMs.
pub trait Hypervisor {
    fn create_vm(&self, request: IsolationRequest) -> Result<Box<dyn Vm>, HypervisorError>;
}

/// A VM: guest memory slots and vCPUs.
pub trait Vm: Send {
    /// Backs guest-physical `[guest_addr, guest_addr + len)` with host memory at `host`.
    ///
    /// # Safety
    /// `host..host + len` must stay mapped (not unmapped or remapped) for as long as the VM
    /// exists; the guest may read and write it at any time.
    unsafe fn map_memory(
        &mut self,
        guest_addr: u64,
        host: *mut u8,
        len: usize,
    ) -> Result<(), HypervisorError>;

    /// Creates vCPU `id` in the state `init` describes.
    fn create_vcpu(&self, id: u8, init: &VcpuInit) -> Result<Box<dyn Vcpu>, HypervisorError>;

    /// Whether this is a protected VM (arm64 pKVM).
    fn is_protected(&self) -> bool {
        false
    }

    /// Why this VM's isolation is not the next level up: what the host lacks and, where the
    /// pool fell back to ordinary memory, why (after [`Vm::create_private_memory`]).
    fn isolation_limit(&self) -> String;

    /// Sizes every memory slot up front: a protected VM pins all of its memory, and its
    /// memslots are frozen after the first run. Called once, before any `map_memory`.
    fn reserve_memory(&mut self, _total: u64) -> Result<(), HypervisorError> {
        Ok(())
    }

    /// Backs guest-physical `[guest_addr, guest_addr + len)` with the guest's private pool:
    /// guest_memfd the host cannot read where the VM supports it, else what
    /// [`PrivateMemory::backing`] says. The returned handle must outlive the VM.
    fn create_private_memory(
        &mut self,
        guest_addr: u64,
        len: usize,
    ) -> Result<PrivateMemory, HypervisorError>;

    /// Makes a guest write of the 32-bit `value` to MMIO address `addr` signal `fd` inside
    /// the hypervisor (ioeventfd) instead of exiting to the vCPU thread.
    fn register_mmio_notify(
        &self,
        addr: u64,
        value: u32,
        fd: &vmm_sys_util::eventfd::EventFd,
    ) -> Result<(), HypervisorError>;
}

/// One virtual CPU, driven by one host thread.
pub trait Vcpu: Send {
    /// Runs guest code until the next exit.
    fn run(&mut self) -> Result<VmExit<'_>, HypervisorError>;
    /// The registers, for error reports.
    fn snapshot(&self) -> Result<RegisterSnapshot, HypervisorError>;
}
