//! Guest-private memory: a KVM guest_memfd the guest uses as ordinary RAM and the host
//! cannot read. It is created with `GUEST_MEMFD_FLAG_MMAP` and without `INIT_SHARED`, so
//! the host may map it (KVM needs the mapping for the memory slot) but any host access to a
//! page faults (SIGBUS). The VMM never touches the mapping; it only releases pages with
//! `fallocate(PUNCH_HOLE)`, after which the guest's next touch gets a fresh zero page.

use super::HypervisorError;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `GUEST_MEMFD_FLAG_MMAP` (kvm-bindings 0.14 lacks the guest_memfd flag constants).
pub const GUEST_MEMFD_FLAG_MMAP: u64 = 1 << 0;

/// A guest_memfd and the host mapping its memory slot points at.
pub struct PrivateMemory {
    fd: OwnedFd,
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
    /// Takes ownership of a guest_memfd of `len` bytes for `guest_addr` and maps it.
    pub(crate) fn new(raw_fd: i32, len: usize, guest_addr: u64) -> Result<Self, HypervisorError> {
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
            fd,
            host,
            len,
            guest_addr,
        })
    }

    /// The host address of the mapping (for the memory slot only: never read it).
    pub(crate) fn host_addr(&self) -> u64 {
        self.host as u64
    }

    pub(crate) fn raw_fd(&self) -> u32 {
        self.fd.as_raw_fd() as u32
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
        // SAFETY: fallocate only changes the file's backing; the range is the whole file.
        let r = unsafe {
            libc::fallocate(
                self.fd.as_raw_fd(),
                libc::FALLOC_FL_KEEP_SIZE,
                0,
                self.len as libc::off_t,
            )
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
        // SAFETY: fallocate only changes the file's backing; the range lies within it.
        let r = unsafe {
            libc::fallocate(
                self.fd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r != 0 {
            return Err(HypervisorError::PrivateMemory(format!(
                "fallocate(PUNCH_HOLE) failed: {}",
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
