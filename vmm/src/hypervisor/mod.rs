//! The hypervisor layer: the only code that talks to KVM. Devices, the exit handler and the
//! vCPU loop see these small types and traits, so an arm64 or arm64-protected backend slots
//! in beside `kvm_x86_64` without touching them.

mod kvm_x86_64;
mod private_memory;
pub mod x86_64_boot;

pub use kvm_x86_64::{KvmHypervisor, KvmVcpu, KvmVm};
pub use private_memory::PrivateMemory;

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
    /// Triple fault or an explicit shutdown.
    Shutdown,
    /// The run was interrupted by a signal (the VMM kicking the vCPU).
    Interrupted,
    /// The hardware refused to enter the guest.
    FailEntry { reason: u64 },
    /// Any other exit, by name.
    Other(&'static str),
}

/// Registers worth reporting when a guest fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegisterSnapshot {
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub rax: u64,
    pub cr2: u64,
    pub cpl: u8,
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

/// A hypervisor that can create VMs (KVM on x86_64 today; arm64 and arm64-protected later).
pub trait Hypervisor {
    fn create_vm(&self) -> Result<Box<dyn Vm>, HypervisorError>;
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

    /// Backs guest-physical `[guest_addr, guest_addr + len)` with guest-private memory the
    /// host cannot read (guest_memfd). The returned handle must outlive the VM.
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
