//! The KVM backend for x86_64 hosts.

use super::kvm_memslots::{MemSlots, guest_memfd_offered, register_mmio_notify};
use super::x86_64_boot as boot;
use super::{
    Hypervisor, HypervisorError, IsolationRequest, PrivateBacking, RegisterSnapshot, Ring, Vcpu,
    VcpuInit, Vm, VmExit,
};
use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES, kvm_dtable, kvm_regs, kvm_segment, kvm_xcrs};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

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

    /// Creates an empty VM; `request` only chooses its private pool here (x86_64 KVM has no
    /// protected VM type FlexServe uses).
    pub fn create_kvm_vm(&self, request: IsolationRequest) -> Result<KvmVm, HypervisorError> {
        let fd = self
            .kvm
            .create_vm()
            .map_err(HypervisorError::ioctl("KVM_CREATE_VM"))?;
        let cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(HypervisorError::ioctl("KVM_GET_SUPPORTED_CPUID"))?;
        let pool = if request == IsolationRequest::HostReadableHugePages {
            PoolPlan::HostReadableHugePages
        } else {
            guest_memfd_offered(&fd).map_or_else(PoolPlan::Anonymous, |()| PoolPlan::GuestMemfd)
        };
        Ok(KvmVm {
            fd,
            cpuid,
            pool,
            slots: MemSlots::default(),
        })
    }
}

impl Hypervisor for KvmHypervisor {
    fn create_vm(&self, request: IsolationRequest) -> Result<Box<dyn Vm>, HypervisorError> {
        Ok(Box::new(self.create_kvm_vm(request)?))
    }
}

/// What the private pool will be, and why when it is not guest_memfd.
enum PoolPlan {
    GuestMemfd,
    /// Ordinary memory, for the reason given.
    Anonymous(String),
    /// The benchmark's host-readable comparison pool.
    HostReadableHugePages,
}

/// Why an x86_64 VM is never `protected-vm`.
const NO_PROTECTED_VM: &str = "x86_64 KVM offers FlexServe no protected VM type (SEV-SNP \
                               and TDX VMs are not supported yet), so the host kernel can \
                               read guest memory";

/// A VM: its memory slots and vCPUs.
pub struct KvmVm {
    fd: VmFd,
    cpuid: CpuId,
    pool: PoolPlan,
    slots: MemSlots,
}

/// Bits of CPUID leaf 1 ECX.
const CPUID1_XSAVE: u32 = 1 << 26;
const CPUID1_AVX: u32 = 1 << 28;
/// XCR0 state components (Intel SDM vol. 1, 13.3).
const XCR0_X87: u64 = 1 << 0;
const XCR0_SSE: u64 = 1 << 1;
const XCR0_AVX: u64 = 1 << 2;
/// Opmask, ZMM_Hi256 and Hi16_ZMM: all three or none.
const XCR0_AVX512: u64 = 0b111 << 5;

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

    fn cpuid_leaf1_ecx(&self) -> u32 {
        self.cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == 1)
            .map_or(0, |e| e.ecx)
    }

    /// The XCR0 the guest runs with: x87 and SSE, AVX when present, and the AVX-512 state
    /// (opmask, ZMM) when the CPUID given to the guest offers it. The engine checks XCR0
    /// before it picks its AVX-512 VNNI kernels, so without the AVX-512 bits the guest
    /// would run the slower AVX2 ones the host does not use.
    fn guest_xcr0(&self) -> u64 {
        let ecx = self.cpuid_leaf1_ecx();
        if ecx & CPUID1_AVX == 0 {
            return XCR0_X87 | XCR0_SSE;
        }
        let supported = self
            .cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == 0xd && e.index == 0)
            .map_or(0, |e| u64::from(e.eax) | u64::from(e.edx) << 32);
        let avx512 = if supported & XCR0_AVX512 == XCR0_AVX512 {
            XCR0_AVX512
        } else {
            0
        };
        XCR0_X87 | XCR0_SSE | XCR0_AVX | avx512
    }

    /// Creates vCPU `id` in 64-bit mode as `init` says (the boot tables of
    /// [`boot::write_boot_tables`] must be in guest memory).
    pub fn create_kvm_vcpu(&self, id: u8, init: &VcpuInit) -> Result<KvmVcpu, HypervisorError> {
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(HypervisorError::ioctl("KVM_CREATE_VCPU"))?;
        fd.set_cpuid2(&self.cpuid)
            .map_err(HypervisorError::ioctl("KVM_SET_CPUID2"))?;
        let mut sregs = fd
            .get_sregs()
            .map_err(HypervisorError::ioctl("KVM_GET_SREGS"))?;
        let seg = |selector: u16, type_: u8, l: u8, db: u8| kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector,
            type_,
            present: 1,
            dpl: (selector & 3) as u8,
            db,
            s: 1,
            l,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        let (cs, ds) = match init.ring {
            Ring::Kernel => (boot::KERNEL_CS, boot::KERNEL_DS),
            Ring::User => (boot::USER_CS, boot::USER_DS),
        };
        sregs.cs = seg(cs, 0xb, 1, 0);
        let data = seg(ds, 0x3, 0, 1);
        (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
        if usize::from(id) >= boot::MAX_VCPUS {
            return Err(HypervisorError::TooManyVcpus {
                max: boot::MAX_VCPUS,
            });
        }
        sregs.tr = kvm_segment {
            base: boot::tss_addr(id),
            limit: 0x67,
            selector: boot::TSS_SEL + 16 * u16::from(id),
            type_: 0xb,
            present: 1,
            ..Default::default()
        };
        sregs.gdt = kvm_dtable {
            base: boot::GDT_ADDR,
            limit: boot::GDT_LIMIT,
            ..Default::default()
        };
        sregs.cr0 = boot::CR0;
        sregs.cr3 = boot::PML4_ADDR;
        let ecx = self.cpuid_leaf1_ecx();
        let xsave = ecx & CPUID1_XSAVE != 0;
        sregs.cr4 = boot::CR4_BASE | if xsave { boot::CR4_OSXSAVE } else { 0 };
        sregs.efer = boot::EFER;
        fd.set_sregs(&sregs)
            .map_err(HypervisorError::ioctl("KVM_SET_SREGS"))?;
        if xsave {
            // The engine's SIMD kernels run in guest user mode.
            let mut xcrs = kvm_xcrs {
                nr_xcrs: 1,
                ..Default::default()
            };
            xcrs.xcrs[0].value = self.guest_xcr0();
            fd.set_xcrs(&xcrs)
                .map_err(HypervisorError::ioctl("KVM_SET_XCRS"))?;
        }
        let regs = kvm_regs {
            rip: init.entry,
            rsp: init.stack,
            rdi: init.args[0],
            rsi: init.args[1],
            rdx: init.args[2],
            rflags: 0x2,
            ..Default::default()
        };
        fd.set_regs(&regs)
            .map_err(HypervisorError::ioctl("KVM_SET_REGS"))?;
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

    fn create_private_memory(
        &mut self,
        guest_addr: u64,
        len: usize,
    ) -> Result<super::PrivateMemory, HypervisorError> {
        let backing = match &self.pool {
            PoolPlan::GuestMemfd => {
                match self.slots.guest_memfd_pool(
                    &self.fd,
                    guest_addr,
                    len,
                    super::private_memory::GUEST_MEMFD_FLAG_MMAP,
                    PrivateBacking::GuestMemfd,
                ) {
                    Ok(mem) => return Ok(mem),
                    // A kernel with guest_memfd but without its MMAP flag (before 6.18).
                    Err(e) => {
                        self.pool = PoolPlan::Anonymous(format!(
                            "the host KVM has guest_memfd but could not give the VMM a \
                             mappable one ({e}), so the private pool is ordinary memory"
                        ));
                        PrivateBacking::Anonymous
                    }
                }
            }
            PoolPlan::Anonymous(_) => PrivateBacking::Anonymous,
            PoolPlan::HostReadableHugePages => PrivateBacking::AnonymousHugePages,
        };
        self.slots
            .anonymous_pool(&self.fd, guest_addr, len, backing)
    }

    fn isolation_limit(&self) -> String {
        match &self.pool {
            PoolPlan::GuestMemfd => NO_PROTECTED_VM.into(),
            PoolPlan::Anonymous(why) => why.clone(),
            PoolPlan::HostReadableHugePages => {
                "the benchmark asked for a host-readable pool on huge pages".into()
            }
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

/// One KVM vCPU.
pub struct KvmVcpu {
    fd: VcpuFd,
}

impl Vcpu for KvmVcpu {
    fn run(&mut self) -> Result<VmExit<'_>, HypervisorError> {
        match self.fd.run() {
            Ok(exit) => Ok(match exit {
                VcpuExit::MmioRead(addr, data) => VmExit::MmioRead { addr, data },
                VcpuExit::MmioWrite(addr, data) => VmExit::MmioWrite { addr, data },
                VcpuExit::IoIn(port, data) => VmExit::IoIn { port, data },
                VcpuExit::IoOut(port, data) => VmExit::IoOut { port, data },
                VcpuExit::Hlt => VmExit::Halt,
                VcpuExit::Shutdown => VmExit::Shutdown,
                VcpuExit::Intr => VmExit::Interrupted,
                VcpuExit::FailEntry(reason, _) => VmExit::FailEntry { reason },
                VcpuExit::InternalError => VmExit::Other("internal error"),
                VcpuExit::Exception => VmExit::Other("exception"),
                _ => VmExit::Other("unexpected exit"),
            }),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                Ok(VmExit::Interrupted)
            }
            Err(e) => Err(HypervisorError::Ioctl {
                op: "KVM_RUN",
                source: e,
            }),
        }
    }

    fn snapshot(&self) -> Result<RegisterSnapshot, HypervisorError> {
        let r = self
            .fd
            .get_regs()
            .map_err(HypervisorError::ioctl("KVM_GET_REGS"))?;
        let s = self
            .fd
            .get_sregs()
            .map_err(HypervisorError::ioctl("KVM_GET_SREGS"))?;
        let cpl = (s.cs.selector & 3) as u8;
        Ok(RegisterSnapshot {
            pc: r.rip,
            sp: r.rsp,
            flags: r.rflags,
            r0: r.rax,
            fault_addr: s.cr2,
            privilege: cpl,
            user: cpl == 3,
        })
    }
}
