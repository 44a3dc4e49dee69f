//! The heap allocator behind the `map`/`unmap` syscalls: which 2 MiB chunks of
//! `[HEAP_BASE, heap_end)` belong to the user program. Plain logic, tested on the host.

use crate::abi::{HEAP_BASE, HEAP_CHUNK, HEAP_MAX_CHUNKS};

/// Ownership of heap chunks.
pub struct Heap {
    used: [bool; HEAP_MAX_CHUNKS],
    chunks: usize,
}

impl Heap {
    /// A heap ending at guest-physical `end`.
    pub const fn new(end: u64) -> Self {
        let chunks = if end > HEAP_BASE {
            ((end - HEAP_BASE) / HEAP_CHUNK) as usize
        } else {
            0
        };
        Self {
            used: [false; HEAP_MAX_CHUNKS],
            chunks: if chunks < HEAP_MAX_CHUNKS {
                chunks
            } else {
                HEAP_MAX_CHUNKS
            },
        }
    }

    fn chunks_for(len: u64) -> Option<usize> {
        if len == 0 {
            return None;
        }
        usize::try_from(len.div_ceil(HEAP_CHUNK)).ok()
    }

    /// First fit: the address of `len` bytes of consecutive free chunks, now used.
    pub fn map(&mut self, len: u64) -> Option<u64> {
        let n = Self::chunks_for(len)?;
        let mut run = 0;
        for i in 0..self.chunks {
            run = if self.used[i] { 0 } else { run + 1 };
            if run == n {
                let first = i + 1 - n;
                self.used[first..=i].iter_mut().for_each(|u| *u = true);
                return Some(HEAP_BASE + first as u64 * HEAP_CHUNK);
            }
        }
        None
    }

    /// Frees what `map(len)` returned at `addr`; `false` if that range is not all mapped.
    pub fn unmap(&mut self, addr: u64, len: u64) -> bool {
        let Some(n) = Self::chunks_for(len) else {
            return false;
        };
        if addr < HEAP_BASE || !(addr - HEAP_BASE).is_multiple_of(HEAP_CHUNK) {
            return false;
        }
        let first = ((addr - HEAP_BASE) / HEAP_CHUNK) as usize;
        let Some(range) = self.used.get_mut(first..first.saturating_add(n)) else {
            return false;
        };
        if first + n > self.chunks || !range.iter().all(|&u| u) {
            return false;
        }
        range.iter_mut().for_each(|u| *u = false);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_reuse_and_bad_unmaps() {
        let mut h = Heap::new(HEAP_BASE + 8 * HEAP_CHUNK);
        let a = h.map(3 << 20).unwrap();
        assert_eq!(a, HEAP_BASE);
        let b = h.map(1).unwrap();
        assert_eq!(b, HEAP_BASE + 2 * HEAP_CHUNK);
        assert!(h.unmap(a, 3 << 20));
        assert!(!h.unmap(a, 3 << 20), "double unmap");
        assert!(!h.unmap(a + 4096, 1), "misaligned");
        assert_eq!(
            h.map(HEAP_CHUNK),
            Some(HEAP_BASE),
            "freed chunks are reused"
        );
        assert_eq!(
            h.map(6 * HEAP_CHUNK),
            None,
            "no 6 consecutive free chunks left"
        );
        assert_eq!(h.map(5 * HEAP_CHUNK), Some(HEAP_BASE + 3 * HEAP_CHUNK));
        assert_eq!(h.map(0), None);
        assert!(!h.unmap(u64::MAX - 10, 1));
        assert_eq!(Heap::new(0).map(1), None);
    }
}
