//! A first-fit allocator of 2 MiB-granular extents of the private region, used by the
//! global allocator for large blocks (model weights, KV caches, scratch). It lives inside
//! the allocator, so it cannot allocate: the free list is a fixed, sorted array, and freed
//! extents merge with their neighbours.
#![forbid(unsafe_code)]

/// Allocation granule: one huge page.
pub const GRANULE: u64 = 2 << 20;
/// Free extents the list can hold (fragmentation beyond this leaks the smallest remainder).
const MAX_FREE: usize = 256;

/// The free extents of one region.
pub struct Extents {
    /// (start, len), sorted by start, non-adjacent, `len > 0`.
    free: [(u64, u64); MAX_FREE],
    n: usize,
    in_use: u64,
    lost: u64,
}

impl Extents {
    /// An allocator with nothing to give yet.
    pub const fn empty() -> Self {
        Self {
            free: [(0, 0); MAX_FREE],
            n: 0,
            in_use: 0,
            lost: 0,
        }
    }

    /// An allocator over `[base, base + len)` (both rounded inwards to the granule).
    pub fn new(base: u64, len: u64) -> Self {
        let mut e = Self::empty();
        let start = base.next_multiple_of(GRANULE);
        let end = (base + len) / GRANULE * GRANULE;
        if end > start {
            e.free[0] = (start, end - start);
            e.n = 1;
        }
        e
    }

    /// The free extents, ascending.
    pub fn free_extents(&self) -> &[(u64, u64)] {
        &self.free[..self.n]
    }

    /// Whether first fit would place every one of `blocks` (bytes each, in order) in the
    /// free extents as they are now: total free bytes can suffice while no extent is large
    /// enough, once frees left holes between blocks still in use.
    pub fn fits(&self, blocks: &[u64]) -> bool {
        let mut free = self.free;
        let free = &mut free[..self.n];
        blocks.iter().all(|&b| {
            let Some(len) = b.max(1).checked_next_multiple_of(GRANULE) else {
                return false;
            };
            match free.iter_mut().find(|(_, l)| *l >= len) {
                Some((_, l)) => {
                    *l -= len;
                    true
                }
                None => false,
            }
        })
    }

    /// Bytes handed out and not yet freed.
    pub fn in_use(&self) -> u64 {
        self.in_use
    }

    /// Bytes lost because the free list was full.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Takes `[start, start + len)` (granule-aligned) out of the free extent that holds it,
    /// as if allocated. `false` if no free extent holds all of it, or splitting one would
    /// overflow the list.
    pub fn take(&mut self, start: u64, len: u64) -> bool {
        let i = self.free[..self.n].partition_point(|&(s, _)| s <= start);
        if i == 0 || len == 0 {
            return false;
        }
        let (s, l) = self.free[i - 1];
        let end = start + len;
        if end > s + l {
            return false;
        }
        let (before, after) = (start - s, s + l - end);
        match (before > 0, after > 0) {
            (false, false) => {
                self.free.copy_within(i..self.n, i - 1);
                self.n -= 1;
            }
            (true, false) => self.free[i - 1].1 = before,
            (false, true) => self.free[i - 1] = (end, after),
            (true, true) => {
                if self.n == MAX_FREE {
                    return false;
                }
                self.free.copy_within(i..self.n, i + 1);
                self.free[i - 1].1 = before;
                self.free[i] = (end, after);
                self.n += 1;
            }
        }
        self.in_use += len;
        true
    }

    /// Takes `len` bytes (rounded up to the granule), granule-aligned; `None` if no free
    /// extent is large enough.
    pub fn alloc(&mut self, len: u64) -> Option<u64> {
        let len = len.max(1).checked_next_multiple_of(GRANULE)?;
        let i = self.free[..self.n].iter().position(|&(_, l)| l >= len)?;
        let (start, l) = self.free[i];
        if l == len {
            self.free.copy_within(i + 1..self.n, i);
            self.n -= 1;
        } else {
            self.free[i] = (start + len, l - len);
        }
        self.in_use += len;
        Some(start)
    }

    /// Gives back what `alloc(len)` returned at `start`.
    pub fn free(&mut self, start: u64, len: u64) {
        let Some(len) = len.max(1).checked_next_multiple_of(GRANULE) else {
            return;
        };
        self.in_use = self.in_use.saturating_sub(len);
        let i = self.free[..self.n].partition_point(|&(s, _)| s < start);
        let merges_prev = i > 0 && {
            let (s, l) = self.free[i - 1];
            s + l == start
        };
        let merges_next = i < self.n && start + len == self.free[i].0;
        match (merges_prev, merges_next) {
            (true, true) => {
                self.free[i - 1].1 += len + self.free[i].1;
                self.free.copy_within(i + 1..self.n, i);
                self.n -= 1;
            }
            (true, false) => self.free[i - 1].1 += len,
            (false, true) => self.free[i] = (start, len + self.free[i].1),
            (false, false) if self.n == MAX_FREE => self.lost += len,
            (false, false) => {
                self.free.copy_within(i..self.n, i + 1);
                self.free[i] = (start, len);
                self.n += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    const BASE: u64 = 4 << 30;

    #[test]
    fn allocations_are_aligned_disjoint_and_merge_back() {
        let mut e = Extents::new(BASE, 64 * GRANULE);
        let a = e.alloc(1).unwrap();
        let b = e.alloc(3 * GRANULE + 5).unwrap();
        let c = e.alloc(GRANULE).unwrap();
        assert_eq!((a, b, c), (BASE, BASE + GRANULE, BASE + 5 * GRANULE));
        assert_eq!(e.in_use(), 6 * GRANULE);
        assert!(e.alloc(59 * GRANULE).is_none(), "only 58 granules are left");
        e.free(b, 3 * GRANULE + 5);
        // First fit reuses the hole.
        assert_eq!(e.alloc(2 * GRANULE), Some(BASE + GRANULE));
        e.free(BASE + GRANULE, 2 * GRANULE);
        e.free(a, 1);
        e.free(c, GRANULE);
        assert_eq!(e.in_use(), 0);
        // Everything merged back into one extent.
        assert_eq!(e.alloc(64 * GRANULE), Some(BASE));
    }

    #[test]
    fn taking_a_range_splits_its_extent_and_freeing_merges_it_back() {
        let mut e = Extents::new(BASE, 8 * GRANULE);
        assert!(e.take(BASE + 2 * GRANULE, 2 * GRANULE));
        assert_eq!(
            e.free_extents(),
            &[(BASE, 2 * GRANULE), (BASE + 4 * GRANULE, 4 * GRANULE)]
        );
        assert!(!e.take(BASE + GRANULE, 2 * GRANULE), "half of it is taken");
        assert!(e.take(BASE, GRANULE));
        assert!(e.take(BASE + 7 * GRANULE, GRANULE));
        assert_eq!(e.in_use(), 4 * GRANULE);
        e.free(BASE + 2 * GRANULE, 2 * GRANULE);
        e.free(BASE, GRANULE);
        e.free(BASE + 7 * GRANULE, GRANULE);
        assert_eq!(e.free_extents(), &[(BASE, 8 * GRANULE)]);
    }

    #[test]
    fn fits_says_whether_first_fit_places_every_block() {
        let mut e = Extents::new(BASE, 8 * GRANULE);
        let a: Vec<u64> = (0..8).map(|_| e.alloc(GRANULE).unwrap()).collect();
        // Four granules free, in two holes of two: no room for three together.
        e.free(a[1], 2 * GRANULE);
        e.free(a[5], 2 * GRANULE);
        assert!(e.fits(&[2 * GRANULE, 2 * GRANULE]));
        assert!(!e.fits(&[2 * GRANULE, 2 * GRANULE, 1]));
        assert!(!e.fits(&[3 * GRANULE]));
        assert_eq!(e.free_extents().len(), 2, "asking takes nothing");
    }

    #[test]
    fn a_full_free_list_loses_bytes_instead_of_corrupting() {
        let mut e = Extents::new(BASE, 2 * MAX_FREE as u64 * GRANULE + 2 * GRANULE);
        let blocks: Vec<u64> = (0..2 * MAX_FREE + 2).map(|_| e.alloc(1).unwrap()).collect();
        // Free every other block: each is an isolated extent.
        for b in blocks.iter().step_by(2) {
            e.free(*b, 1);
        }
        assert_eq!(
            e.lost(),
            GRANULE,
            "one of {} isolated extents did not fit",
            MAX_FREE + 1
        );
        for b in blocks.iter().skip(1).step_by(2) {
            e.free(*b, 1);
        }
        assert_eq!(e.in_use(), 0);
    }
}
