//! Memory slots and MMIO ioeventfds: the parts of a KVM VM that are the same on every
//! architecture, shared by the x86_64 and arm64 backends.

use super::{
    HypervisorError, NO_GUEST_MEMFD_ENV, PrivateBacking, PrivateMemory, guest_memfd_disabled_by_env,
};
use kvm_bindings::{
    KVM_CAP_GUEST_MEMFD, KVM_MEM_GUEST_MEMFD, kvm_create_guest_memfd, kvm_userspace_memory_region,
    kvm_userspace_memory_region2,
};
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::EventFd;

/// Hands out memory slot numbers in order.
#[derive(Default)]
pub(super) struct MemSlots {
    next: u32,
}

impl MemSlots {
    /// Backs guest-physical `[guest_addr, guest_addr + len)` with host memory at `host`.
    ///
    /// # Safety
    /// `host..host + len` must be a mapping the caller keeps alive (and does not unmap or
    /// remap) for as long as the VM exists; the guest may read and write it at any time.
    pub(super) unsafe fn map_user(
        &mut self,
        vm: &VmFd,
        guest_addr: u64,
        host: *mut u8,
        len: usize,
    ) -> Result<(), HypervisorError> {
        let region = kvm_userspace_memory_region {
            slot: self.next,
            guest_phys_addr: guest_addr,
            memory_size: len as u64,
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the caller guarantees the host range stays valid for the VM's lifetime.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(HypervisorError::ioctl("KVM_SET_USER_MEMORY_REGION"))?;
        self.next += 1;
        Ok(())
    }

    /// Anonymous host memory of kind `backing` (one of the `Anonymous*` kinds), in a new slot
    /// at `guest_addr`.
    pub(super) fn anonymous_pool(
        &mut self,
        vm: &VmFd,
        guest_addr: u64,
        len: usize,
        backing: PrivateBacking,
    ) -> Result<PrivateMemory, HypervisorError> {
        let mem = PrivateMemory::new_anonymous(len, guest_addr, backing)?;
        // SAFETY: the slot points at `mem`'s mapping, which the returned `PrivateMemory`
        // keeps alive; the caller keeps it as long as the VM.
        unsafe { self.map_user(vm, guest_addr, mem.host_addr() as *mut u8, len)? };
        Ok(mem)
    }

    /// A guest_memfd created with `flags`, mapped, in a new slot at `guest_addr`.
    pub(super) fn guest_memfd_pool(
        &mut self,
        vm: &VmFd,
        guest_addr: u64,
        len: usize,
        flags: u64,
        backing: PrivateBacking,
    ) -> Result<PrivateMemory, HypervisorError> {
        let gmem = kvm_create_guest_memfd {
            size: len as u64,
            flags,
            ..Default::default()
        };
        let fd = vm
            .create_guest_memfd(gmem)
            .map_err(HypervisorError::ioctl("KVM_CREATE_GUEST_MEMFD"))?;
        let mem = PrivateMemory::new_guest_memfd(fd, len, guest_addr, backing)?;
        let region = kvm_userspace_memory_region2 {
            slot: self.next,
            flags: KVM_MEM_GUEST_MEMFD,
            guest_phys_addr: guest_addr,
            memory_size: len as u64,
            userspace_addr: mem.host_addr(),
            guest_memfd_offset: 0,
            guest_memfd: mem.raw_fd().unwrap_or_default(),
            ..Default::default()
        };
        // SAFETY: the slot points at `mem`'s mapping and guest_memfd, which the returned
        // `PrivateMemory` keeps alive; the caller keeps it as long as the VM.
        unsafe { vm.set_user_memory_region2(region) }
            .map_err(HypervisorError::ioctl("KVM_SET_USER_MEMORY_REGION2"))?;
        self.next += 1;
        Ok(mem)
    }
}

/// `Ok` when the private pool of `vm` may be a guest_memfd; otherwise why it is ordinary
/// memory (the host KVM lacks guest_memfd, or `FLEXSERVE_NO_GUEST_MEMFD=1`). Whether the
/// kernel can also map it (`GUEST_MEMFD_FLAG_MMAP`) shows only when the pool is created.
pub(super) fn guest_memfd_offered(vm: &VmFd) -> Result<(), String> {
    if guest_memfd_disabled_by_env() {
        return Err(format!(
            "{NO_GUEST_MEMFD_ENV}=1 put the private pool on ordinary memory"
        ));
    }
    if vm.check_extension_raw(KVM_CAP_GUEST_MEMFD.into()) <= 0 {
        return Err(
            "the host KVM has no guest_memfd (KVM_CAP_GUEST_MEMFD is 0), so the \
                    private pool is ordinary memory"
                .into(),
        );
    }
    Ok(())
}

/// Makes a guest write of the 32-bit `value` to MMIO `addr` signal `fd` inside KVM.
pub(super) fn register_mmio_notify(
    vm: &VmFd,
    addr: u64,
    value: u32,
    fd: &EventFd,
) -> Result<(), HypervisorError> {
    vm.register_ioevent(fd, &IoEventAddress::Mmio(addr), value)
        .map_err(HypervisorError::ioctl("KVM_IOEVENTFD"))
}
