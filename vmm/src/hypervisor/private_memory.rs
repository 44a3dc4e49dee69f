//! The guest's private pool. Preferably a KVM guest_memfd the guest uses as ordinary RAM and
//! the host cannot read: created with `GUEST_MEMFD_FLAG_MMAP` and without `INIT_SHARED`, so
//! the host may map it (KVM needs the mapping for the memory slot) but any host access to a
//! page faults (SIGBUS). The VMM never touches the mapping; it only releases pages with
//! `fallocate(PUNCH_HOLE)`, after which the guest's next touch gets a fresh zero page.
//!
//! Where the VM cannot use private guest_memfd pages (arm64: normal VMs, and upstream pKVM
//! protected VMs, whose private memory is ordinary anonymous memory the hypervisor takes
//! from the host on the guest's first touch), the pool is a guest_memfd with shared pages
//! or anonymous memory, and [`PrivateBacking`] says which.

use super::HypervisorError;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `GUEST_MEMFD_FLAG_MMAP` (kvm-bindings 0.14 lacks the guest_memfd flag constants).
pub const GUEST_MEMFD_FLAG_MMAP: u64 = 1 << 0;
/// `GUEST_MEMFD_FLAG_INIT_SHARED`: pages start shared (host-accessible).
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
pub const GUEST_MEMFD_FLAG_INIT_SHARED: u64 = 1 << 1;

/// What backs the private pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrivateBacking {
    /// guest_memfd with private pages: host user space cannot read them.
    GuestMemfd,
    /// guest_memfd whose pages are shared with the host (the VM type has no private pages).
    GuestMemfdShared,
    /// Anonymous host memory in a memory slot.
    Anonymous,
    /// Anonymous host memory in a protected VM: the hypervisor takes each page from the host
    /// on the guest's first touch and gives it back only when the VM is destroyed.
    AnonymousProtected,
    /// Anonymous host memory on transparent huge pages, host-readable: the benchmark's
    /// comparison pool ([`super::IsolationRequest::HostReadableHugePages`]).
    AnonymousHugePages,
}

impl PrivateBacking {
    /// A few words for the isolation report.
    pub fn describe(self) -> &'static str {
        match self {
            Self::GuestMemfd => "guest_memfd, private pages",
            Self::GuestMemfdShared => "guest_memfd, shared pages",
            Self::Anonymous => "anonymous memory on transparent huge pages",
            Self::AnonymousProtected => "anonymous memory donated to the protected VM",
            Self::AnonymousHugePages => "anonymous memory on huge pages, host-readable",
        }
    }
}

/// The private pool and the host mapping its memory slot points at.
pub struct PrivateMemory {
    /// The guest_memfd, or `None` for anonymous memory.
    fd: Option<OwnedFd>,
    backing: PrivateBacking,
    host: *mut libc::c_void,
    len: usize,
    guest_addr: u64,
}

// SAFETY: the mapping is only an address handed to KVM and to munmap/fallocate; the host
// never dereferences it, so sharing the handle across threads cannot race on its contents.
unsafe impl Send for PrivateMemory {}
// SAFETY: as above; every method takes `&self` and only issues syscalls on the fd.
unsafe impl Sync for PrivateMemory {}

impl PrivateMemory {
    /// Anonymous memory of `len` bytes for `guest_addr`; `backing` is one of the `Anonymous*`
    /// kinds and says whom the pages belong to.
    pub(crate) fn new_anonymous(
        len: usize,
        guest_addr: u64,
        backing: PrivateBacking,
    ) -> Result<Self, HypervisorError> {
        debug_assert!(matches!(
            backing,
            PrivateBacking::Anonymous
                | PrivateBacking::AnonymousProtected
                | PrivateBacking::AnonymousHugePages
        ));
        // 2 MiB-aligned, so each 2 MiB granule the guest allocates and gives back is one
        // huge page of the host's: map 2 MiB more, then trim the ends.
        const HUGE: usize = 2 << 20;
        // SAFETY: a fresh private anonymous mapping at an address the kernel chooses; nothing
        // is aliased, and the result is checked below.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len + HUGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(HypervisorError::PrivateMemory(format!(
                "cannot map {len} bytes of anonymous memory: {}",
                std::io::Error::last_os_error()
            )));
        }
        let head = (raw as usize).next_multiple_of(HUGE) - raw as usize;
        // SAFETY: `head` < HUGE, so the result lies inside the padded mapping just made.
        let host: *mut libc::c_void = unsafe { raw.cast::<u8>().add(head).cast() };
        // SAFETY: unmaps the unused head and tail of that mapping, which nothing references;
        // exactly [host, host + len) stays mapped.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            libc::munmap(host.cast::<u8>().add(len).cast(), HUGE - head);
        }
        if matches!(
            backing,
            PrivateBacking::Anonymous | PrivateBacking::AnonymousHugePages
        ) {
            // KVM maps a guest 2 MiB page with one 2 MiB host page only where THP backs it.
            // On 4 KiB pages the engine decodes ~10% slower (make bench); memory the host can
            // read anyway has no reason to forgo them.
            // SAFETY: advice on the mapping just made, which nothing else uses yet.
            if unsafe { libc::madvise(host, len, libc::MADV_HUGEPAGE) } != 0
                && backing == PrivateBacking::AnonymousHugePages
            {
                let e = std::io::Error::last_os_error();
                // SAFETY: unmaps exactly the mapping made above, which nothing uses.
                unsafe { libc::munmap(host, len) };
                return Err(HypervisorError::PrivateMemory(format!(
                    "madvise(MADV_HUGEPAGE) failed: {e} (a host kernel without transparent huge \
                     pages cannot back the pool with them)"
                )));
            }
        }
        Ok(Self {
            fd: None,
            backing,
            host,
            len,
            guest_addr,
        })
    }

    /// Takes ownership of a guest_memfd of `len` bytes for `guest_addr`, whose pages are
    /// `backing`, and maps it.
    pub(crate) fn new_guest_memfd(
        raw_fd: i32,
        len: usize,
        guest_addr: u64,
        backing: PrivateBacking,
    ) -> Result<Self, HypervisorError> {
        // SAFETY: `raw_fd` was just returned by KVM_CREATE_GUEST_MEMFD and is owned by no one
        // else; OwnedFd closes it exactly once.
        let fd = unsafe { OwnedFd::from_raw_fd(raw_fd) };
        // SAFETY: a fresh shared mapping of the whole fd at an address the kernel chooses;
        // nothing is aliased, and the result is checked below.
        let host = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if host == libc::MAP_FAILED {
            return Err(HypervisorError::PrivateMemory(format!(
                "cannot map the guest_memfd: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(Self {
            fd: Some(fd),
            backing,
            host,
            len,
            guest_addr,
        })
    }

    /// What backs the pool.
    pub fn backing(&self) -> PrivateBacking {
        self.backing
    }

    /// The host address of the mapping (for the memory slot only: never read it).
    pub(crate) fn host_addr(&self) -> u64 {
        self.host as u64
    }

    /// The guest_memfd for the memory slot (`None`: anonymous memory, a plain slot).
    pub(crate) fn raw_fd(&self) -> Option<u32> {
        self.fd.as_ref().map(|fd| fd.as_raw_fd() as u32)
    }

    /// Bytes of the region.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Guest-physical address of the region.
    pub fn guest_addr(&self) -> u64 {
        self.guest_addr
    }

    /// The host range the region is mapped at (to show that reading it faults).
    pub fn host_range(&self) -> std::ops::Range<u64> {
        self.host as u64..self.host as u64 + self.len as u64
    }

    /// Bytes of the region that have backing now: pages the guest touched and the host has
    /// not released. `mincore` on the host mapping asks the page cache without touching a
    /// page (any touch would fault), so it is how the host measures a guest's share.
    pub fn resident_bytes(&self) -> Result<u64, HypervisorError> {
        const CHUNK_PAGES: usize = 1 << 15;
        let page = 4096usize;
        let mut vec = vec![0u8; CHUNK_PAGES];
        let mut resident = 0u64;
        let mut at = 0usize;
        while at < self.len {
            let len = (self.len - at).min(CHUNK_PAGES * page);
            // SAFETY: [host + at, host + at + len) lies inside the mapping made in `new`;
            // mincore only reads page-cache state into `vec`, which holds one byte per page.
            let r = unsafe {
                libc::mincore(self.host.cast::<u8>().add(at).cast(), len, vec.as_mut_ptr())
            };
            if r != 0 {
                return Err(HypervisorError::PrivateMemory(format!(
                    "mincore failed: {}",
                    std::io::Error::last_os_error()
                )));
            }
            let pages = len.div_ceil(page);
            resident += vec[..pages].iter().filter(|&&v| v & 1 != 0).count() as u64;
            at += len;
        }
        Ok(resident * page as u64)
    }

    /// Allocates (zeroed) backing for the whole region up front: the "strawman" that
    /// reserves everything at VM start, which `make bench-memory` compares with donation on
    /// demand.
    pub fn preallocate(&self) -> Result<(), HypervisorError> {
        /// `MADV_POPULATE_WRITE` (Linux 5.14; not in every libc crate target).
        const MADV_POPULATE_WRITE: libc::c_int = 23;
        let r = match &self.fd {
            // SAFETY: fallocate only changes the file's backing; the range is the whole file.
            Some(fd) => unsafe {
                libc::fallocate(
                    fd.as_raw_fd(),
                    libc::FALLOC_FL_KEEP_SIZE,
                    0,
                    self.len as libc::off_t,
                )
            },
            // SAFETY: populating faults in zero pages of this mapping, which only the guest
            // uses; before the guest's first touch the host may still touch them.
            None => unsafe { libc::madvise(self.host, self.len, MADV_POPULATE_WRITE) },
        };
        if r != 0 {
            return Err(HypervisorError::PrivateMemory(format!(
                "fallocate failed: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }

    /// Frees `[guest_phys, guest_phys + len)` back to the host; the guest's next touch of
    /// those pages reads zeros.
    pub fn release(&self, guest_phys: u64, len: u64) -> Result<(), HypervisorError> {
        let offset = guest_phys
            .checked_sub(self.guest_addr)
            .filter(|o| o.checked_add(len).is_some_and(|end| end <= self.len as u64))
            .ok_or_else(|| {
                HypervisorError::PrivateMemory(format!(
                    "{guest_phys:#x}+{len:#x} is outside the private region"
                ))
            })?;
        let (r, what) = match (&self.fd, self.backing) {
            (_, PrivateBacking::AnonymousProtected) => {
                return Err(HypervisorError::PrivateMemory(
                    "a protected VM's private pages cannot be given back to the host while it \
                     runs: upstream pKVM has no MEM_RELINQUISH hypercall (Android kernels \
                     only), and the pages stay pinned until the VM is destroyed; size \
                     --memory for the peak instead of lowering the budget"
                        .into(),
                ));
            }
            // SAFETY: fallocate only changes the file's backing; the range lies within it.
            (Some(fd), _) => (
                unsafe {
                    libc::fallocate(
                        fd.as_raw_fd(),
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        offset as libc::off_t,
                        len as libc::off_t,
                    )
                },
                "fallocate(PUNCH_HOLE)",
            ),
            // SAFETY: the range lies inside this mapping (checked above), which only the
            // guest uses; dropping it makes the guest's next touch read a fresh zero page.
            (None, _) => (
                unsafe {
                    libc::madvise(
                        self.host.cast::<u8>().add(offset as usize).cast(),
                        len as usize,
                        libc::MADV_DONTNEED,
                    )
                },
                "madvise(MADV_DONTNEED)",
            ),
        };
        if r != 0 {
            return Err(HypervisorError::PrivateMemory(format!(
                "{what} failed: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }
}

impl Drop for PrivateMemory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, which nothing else uses.
        unsafe { libc::munmap(self.host, self.len) };
    }
}
