//! A read-only byte buffer backed by transparent huge pages.
//!
//! Decode streams every weight once per token, so it is bound by memory bandwidth, and with
//! 4 KiB pages the TLB misses halve it (measured here: 8.6 GB/s vs 18.6 GB/s for a 128 MiB
//! sequential read, single core). Models are therefore read into an anonymous mapping with
//! `MADV_HUGEPAGE`, which the kernel backs with 2 MiB pages where it can.
//!
//! [`Pages::Base`] keeps the buffer on 4 KiB pages instead: the guest's private memory
//! (guest_memfd) has no huge pages on current kernels, and `bench-e2e --base-pages` uses it to
//! compare the host engine with the guest on equal pages.

use std::io::Read;
use std::ptr::NonNull;

/// Alignment of the mapping: one huge page, so the first bytes get one too.
const HUGE_PAGE: usize = 2 << 20;

/// Which pages back a [`HugePageBuffer`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pages {
    /// Transparent huge pages where the kernel can give them (the default).
    #[default]
    Huge,
    /// 4 KiB pages only, as in the guest's private memory.
    Base,
}

/// Owned bytes in a private anonymous mapping advised for huge pages (or not, see [`Pages`]).
pub struct HugePageBuffer {
    ptr: NonNull<u8>,
    len: usize,
    map_len: usize,
}

// SAFETY: the buffer exclusively owns its mapping; shared access is read-only (`&[u8]`).
unsafe impl Send for HugePageBuffer {}
// SAFETY: as above; no interior mutability.
unsafe impl Sync for HugePageBuffer {}

impl HugePageBuffer {
    /// Maps `len` zeroed bytes.
    fn zeroed(len: usize, pages: Pages) -> std::io::Result<Self> {
        let map_len = len.max(1).div_ceil(HUGE_PAGE) * HUGE_PAGE;
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let advice = match pages {
            Pages::Huge => libc::MADV_HUGEPAGE,
            Pages::Base => libc::MADV_NOHUGEPAGE,
        };
        // Advice only: without THP support the buffer still works, with 4 KiB pages.
        // SAFETY: `ptr..ptr + map_len` is the mapping just created.
        unsafe { libc::madvise(ptr, map_len, advice) };
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(std::io::Error::last_os_error)?;
        Ok(Self { ptr, len, map_len })
    }

    /// Reads all of `reader` (exactly `len` bytes) into a new buffer on `pages`.
    pub fn read_from(reader: &mut impl Read, len: usize, pages: Pages) -> std::io::Result<Self> {
        let mut buf = Self::zeroed(len, pages)?;
        reader.read_exact(buf.as_mut_slice())?;
        Ok(buf)
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `map_len >= len` readable and writable bytes owned by
        // `self`, and `&mut self` guarantees no other reference exists.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `map_len >= len` readable bytes owned by `self`, alive
        // while `self` is borrowed.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for HugePageBuffer {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `zeroed`, which no slice outlives.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.map_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_exactly_what_was_read() {
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i * 31) as u8).collect();
        for pages in [Pages::Huge, Pages::Base] {
            let buf =
                HugePageBuffer::read_from(&mut data.as_slice(), data.len(), pages).expect("map");
            assert_eq!(buf.as_slice(), data.as_slice());
            let empty = HugePageBuffer::read_from(&mut &[][..], 0, pages).expect("map");
            assert!(empty.as_slice().is_empty());
        }
    }

    #[test]
    fn short_input_is_an_error() {
        assert!(HugePageBuffer::read_from(&mut &[1u8, 2][..], 3, Pages::Huge).is_err());
    }
}
