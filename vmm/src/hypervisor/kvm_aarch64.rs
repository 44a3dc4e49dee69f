//! The KVM backend for arm64 hosts (docs/arm64.md): a protected VM where the host runs pKVM
//! (`kvm-arm.mode=protected`), a normal VM otherwise.
//!
//! No interrupt controller and no timer interrupt: the guest never takes interrupts (it runs
//! with DAIF masked, polls its devices, reads time from the timer page or the virtual
//! counter, and idles by blocking in the VMM through the timer page), so the VM has no vGIC
//! and KVM runs it in user-space-irqchip mode.

use super::aarch64_boot as boot;
use super::kvm_memslots::{MemSlots, guest_memfd_offered, register_mmio_notify};
use super::private_memory::{GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP};
use super::{
    Hypervisor, HypervisorError, IsolationRequest, PrivateBacking, PrivateMemory, RegisterSnapshot,
    Ring, Vcpu, VcpuInit, Vm, VmExit,
};
use guest_kernel::abi::MAX_VCPUS;
use kvm_bindings::kvm_vcpu_init;
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};

/// `KVM_CREATE_VM` type bit of an upstream pKVM protected VM.
const KVM_VM_TYPE_ARM_PROTECTED: u64 = 1 << 31;
/// IPA bits the VM asks for: the layout ends below 64 GiB (36 bits); 40 is KVM's default.
const IPA_BITS: i32 = 40;

/// An open `/dev/kvm`.
pub struct KvmHypervisor {
    kvm: Kvm,
}

impl KvmHypervisor {
    /// Opens `/dev/kvm`; the error says what to check when it is missing or unusable.
    pub fn new() -> Result<Self, HypervisorError> {
        Kvm::new()
            .map(|kvm| Self { kvm })
            .map_err(HypervisorError::KvmUnavailable)
    }

    /// The `KVM_CREATE_VM` type for an IPA space of [`IPA_BITS`] (or the host's limit).
    fn ipa_type(&self) -> u64 {
        if self.kvm.check_extension(Cap::ArmVmIPASize) {
            let limit = self.kvm.get_host_ipa_limit();
            if limit > 0 {
                return limit.min(IPA_BITS) as u64;
            }
        }
        0
    }

    /// Creates an empty VM: protected when asked or when `Best` finds pKVM.
    pub fn create_kvm_vm(&self, request: IsolationRequest) -> Result<KvmVm, HypervisorError> {
        let ipa = self.ipa_type();
        let (protected, protected_limit) = match request {
            IsolationRequest::Normal | IsolationRequest::HostReadableHugePages => {
                (None, "a normal VM was asked for".to_string())
            }
            IsolationRequest::Best => {
                match self
                    .kvm
                    .create_vm_with_type(KVM_VM_TYPE_ARM_PROTECTED | ipa)
                {
                    Ok(fd) => (Some(fd), String::new()),
                    Err(e) => (
                        None,
                        format!(
                            "KVM_CREATE_VM with KVM_VM_TYPE_ARM_PROTECTED failed ({e}): the host \
                             kernel runs kvm-arm.mode={}, not pKVM",
                            host_kvm_mode().unwrap_or_else(|| "<default>".into())
                        ),
                    ),
                }
            }
        };
        let is_protected = protected.is_some();
        let fd = match protected {
            Some(fd) => fd,
            None => self
                .kvm
                .create_vm_with_type(ipa)
                .map_err(HypervisorError::ioctl("KVM_CREATE_VM"))?,
        };
        let guest_memfd = guest_memfd_offered(&fd);
        Ok(KvmVm {
            fd,
            protected: is_protected,
            ptrauth: self.kvm.check_extension(Cap::ArmPtrAuthAddress)
                && self.kvm.check_extension(Cap::ArmPtrAuthGeneric),
            guest_memfd,
            protected_limit,
            pool_limit: None,
            host_readable_pool: request == IsolationRequest::HostReadableHugePages,
            slots: MemSlots::default(),
        })
    }
}

/// `kvm-arm.mode=...` from the host kernel's command line, if given.
fn host_kvm_mode() -> Option<String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").ok()?;
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("kvm-arm.mode="))
        .map(str::to_string)
}

impl Hypervisor for KvmHypervisor {
    fn create_vm(&self, request: IsolationRequest) -> Result<Box<dyn Vm>, HypervisorError> {
        Ok(Box::new(self.create_kvm_vm(request)?))
    }
}

/// A VM: its memory slots and vCPUs.
pub struct KvmVm {
    fd: VmFd,
    protected: bool,
    /// The host offers pointer authentication to guests.
    ptrauth: bool,
    /// The pool may be guest_memfd (`KVM_CAP_GUEST_MEMFD`), or why not.
    guest_memfd: Result<(), String>,
    /// Why the VM is not protected (empty when it is).
    protected_limit: String,
    /// Why the pool is not private guest_memfd, once it exists.
    pool_limit: Option<String>,
    /// The pool is host-readable anonymous memory on huge pages (a benchmark's comparison).
    host_readable_pool: bool,
    slots: MemSlots,
}

impl KvmVm {
    /// Backs guest-physical `[guest_addr, guest_addr + len)` with host memory at `host`.
    ///
    /// # Safety
    /// `host..host + len` must be a mapping the caller keeps alive (and does not unmap or
    /// remap) for as long as this VM exists; the guest may read and write it at any time.
    pub unsafe fn map_kvm_memory(
        &mut self,
        guest_addr: u64,
        host: *mut u8,
        len: usize,
    ) -> Result<(), HypervisorError> {
        // SAFETY: forwarded contract.
        unsafe { self.slots.map_user(&self.fd, guest_addr, host, len) }
    }

    /// Creates vCPU `id` as `init` says: EL1h for the kernel, EL0t for a bare user program,
    /// every exception source masked, MMU off.
    pub fn create_kvm_vcpu(&self, id: u8, init: &VcpuInit) -> Result<KvmVcpu, HypervisorError> {
        if usize::from(id) >= MAX_VCPUS {
            return Err(HypervisorError::TooManyVcpus { max: MAX_VCPUS });
        }
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(HypervisorError::ioctl("KVM_CREATE_VCPU"))?;
        let mut kvi = kvm_vcpu_init::default();
        self.fd
            .get_preferred_target(&mut kvi)
            .map_err(HypervisorError::ioctl("KVM_ARM_PREFERRED_TARGET"))?;
        kvi.features[0] |= boot::FEATURE_PSCI_0_2;
        if self.ptrauth {
            kvi.features[0] |= boot::FEATURE_PTRAUTH_ADDRESS | boot::FEATURE_PTRAUTH_GENERIC;
        } else if self.protected {
            return Err(HypervisorError::VcpuSetup(
                "the host offers no pointer authentication to guests, which protected VMs \
                 need (their PAuth key writes are UNDEF without it)"
                    .into(),
            ));
        }
        fd.vcpu_init(&kvi)
            .map_err(HypervisorError::ioctl("KVM_ARM_VCPU_INIT"))?;
        let (mode, sp_reg) = match init.ring {
            Ring::Kernel => (boot::PSTATE_EL1H, boot::SP_EL1),
            Ring::User => (boot::PSTATE_EL0T, boot::SP_EL0),
        };
        let regs = [
            (boot::PC, init.entry),
            (boot::PSTATE, boot::PSTATE_DAIF | mode),
            (sp_reg, init.stack),
            (boot::x(0), init.args[0]),
            (boot::x(1), init.args[1]),
            (boot::x(2), init.args[2]),
        ];
        for (reg, value) in regs {
            fd.set_one_reg(reg, &value.to_le_bytes())
                .map_err(HypervisorError::ioctl("KVM_SET_ONE_REG"))?;
        }
        Ok(KvmVcpu { fd })
    }
}

impl Vm for KvmVm {
    unsafe fn map_memory(
        &mut self,
        guest_addr: u64,
        host: *mut u8,
        len: usize,
    ) -> Result<(), HypervisorError> {
        // SAFETY: forwarded contract.
        unsafe { self.map_kvm_memory(guest_addr, host, len) }
    }

    fn create_vcpu(&self, id: u8, init: &VcpuInit) -> Result<Box<dyn Vcpu>, HypervisorError> {
        Ok(Box::new(self.create_kvm_vcpu(id, init)?))
    }

    fn is_protected(&self) -> bool {
        self.protected
    }

    fn reserve_memory(&mut self, total: u64) -> Result<(), HypervisorError> {
        if self.protected {
            raise_memlock(total)?;
        }
        Ok(())
    }

    fn create_private_memory(
        &mut self,
        guest_addr: u64,
        len: usize,
    ) -> Result<PrivateMemory, HypervisorError> {
        // Upstream pKVM gives protected VMs no private guest_memfd pages: their private
        // memory is anonymous memory the hypervisor takes from the host on first touch.
        if self.guest_memfd.is_ok() && !self.protected && !self.host_readable_pool {
            let mut failed = String::new();
            let tries = [
                (GUEST_MEMFD_FLAG_MMAP, PrivateBacking::GuestMemfd),
                (
                    GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED,
                    PrivateBacking::GuestMemfdShared,
                ),
            ];
            for (flags, backing) in tries {
                match self
                    .slots
                    .guest_memfd_pool(&self.fd, guest_addr, len, flags, backing)
                {
                    Ok(mem) => {
                        if backing == PrivateBacking::GuestMemfdShared {
                            self.pool_limit = Some(format!(
                                "the VM type has no private guest_memfd pages ({failed}), so \
                                 the pool's pages are shared with the host"
                            ));
                        }
                        return Ok(mem);
                    }
                    Err(e) if failed.is_empty() => failed = e.to_string(),
                    Err(_) => {}
                }
            }
            self.pool_limit = Some(format!(
                "the host KVM could not give the VMM a mappable guest_memfd ({failed}), so the \
                 private pool is ordinary memory"
            ));
        }
        if let Err(why) = &self.guest_memfd
            && !self.protected
        {
            self.pool_limit = Some(why.clone());
        }
        let backing = if self.protected {
            PrivateBacking::AnonymousProtected
        } else if self.host_readable_pool {
            self.pool_limit = Some("the benchmark asked for a host-readable pool".into());
            PrivateBacking::AnonymousHugePages
        } else {
            PrivateBacking::Anonymous
        };
        self.slots
            .anonymous_pool(&self.fd, guest_addr, len, backing)
    }

    fn isolation_limit(&self) -> String {
        match &self.pool_limit {
            Some(why) if !self.protected => why.clone(),
            _ => self.protected_limit.clone(),
        }
    }

    fn register_mmio_notify(
        &self,
        addr: u64,
        value: u32,
        fd: &vmm_sys_util::eventfd::EventFd,
    ) -> Result<(), HypervisorError> {
        register_mmio_notify(&self.fd, addr, value, fd)
    }
}

/// Makes room for `bytes` of pinned guest memory under `RLIMIT_MEMLOCK` (upstream pKVM pins
/// every page a protected VM touches and charges it there).
fn raise_memlock(bytes: u64) -> Result<(), HypervisorError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        lim.rlim_cur = 0;
    }
    // Other VMs of this process are charged too: add to what is allowed, never lower it.
    let wanted = lim.rlim_cur.saturating_add(bytes);
    if lim.rlim_cur == libc::RLIM_INFINITY {
        return Ok(());
    }
    let new = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: lim.rlim_max.max(wanted),
    };
    // SAFETY: setrlimit only reads `new`.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &new) } == 0 {
        return Ok(());
    }
    let reason = std::io::Error::last_os_error().to_string();
    Err(HypervisorError::MemlockLimit {
        needed_mib: bytes.div_ceil(1 << 20),
        limit_mib: lim.rlim_cur >> 20,
        reason,
    })
}

/// One KVM vCPU.
pub struct KvmVcpu {
    fd: VcpuFd,
}

impl KvmVcpu {
    fn reg(&self, id: u64) -> Result<u64, HypervisorError> {
        let mut bytes = [0u8; 8];
        self.fd
            .get_one_reg(id, &mut bytes)
            .map_err(HypervisorError::ioctl("KVM_GET_ONE_REG"))?;
        Ok(u64::from_le_bytes(bytes))
    }
}

impl Vcpu for KvmVcpu {
    fn run(&mut self) -> Result<VmExit<'_>, HypervisorError> {
        match self.fd.run() {
            Ok(exit) => Ok(match exit {
                VcpuExit::MmioRead(addr, data) => VmExit::MmioRead { addr, data },
                VcpuExit::MmioWrite(addr, data) => VmExit::MmioWrite { addr, data },
                VcpuExit::SystemEvent(type_, _) => boot::system_event_exit(type_),
                VcpuExit::Intr => VmExit::Interrupted,
                VcpuExit::FailEntry(reason, _) => VmExit::FailEntry { reason },
                VcpuExit::InternalError => VmExit::Other("internal error"),
                VcpuExit::Hypercall(_) => VmExit::Other("hypercall exit"),
                _ => VmExit::Other("unexpected exit"),
            }),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                Ok(VmExit::Interrupted)
            }
            // KVM could not decode a trapped access to unbacked memory (no valid syndrome).
            Err(e) if e.errno() == libc::ENOSYS => Ok(VmExit::Other(
                "an access to unbacked memory or a device that KVM cannot emulate (a \
                 load/store pair, or one with writeback: device registers need single \
                 ldr/str instructions)",
            )),
            Err(e) => Err(HypervisorError::Ioctl {
                op: "KVM_RUN",
                source: e,
            }),
        }
    }

    fn snapshot(&self) -> Result<RegisterSnapshot, HypervisorError> {
        let pstate = self.reg(boot::PSTATE)?;
        let el = boot::exception_level(pstate);
        Ok(RegisterSnapshot {
            pc: self.reg(boot::PC)?,
            sp: self.reg(if el == 0 { boot::SP_EL0 } else { boot::SP_EL1 })?,
            flags: pstate,
            r0: self.reg(boot::x(0))?,
            // Protected VMs hide their system registers: report 0 rather than fail.
            fault_addr: self.reg(boot::FAR_EL1).unwrap_or(0),
            privilege: el,
            user: el == 0,
        })
    }
}
