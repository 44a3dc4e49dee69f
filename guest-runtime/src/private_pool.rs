//! The private pool under a budget: which 2 MiB granules of the private region the guest
//! holds, and how many it may hold.
//!
//! A granule is *resident* from the moment it is handed out (the guest may touch it, so the
//! host may have had to back it) until the guest relinquishes it and the host confirms the
//! release. Freed granules stay resident (reusing them costs no new first touches) until the
//! budget needs them back; then [`PrivatePool::trim`] takes them out of circulation as
//! *pending*, the caller reports them to the host, and [`PrivatePool::released`] returns
//! them as fresh (zero) granules once the host gave the report back. So resident + pending
//! never exceeds the budget through an allocation, and a pending granule is never reused
//! before the host dropped its old contents.
//!
//! It lives inside the global allocator, so it cannot allocate: the bookkeeping is a fixed
//! bitmap (one bit per granule of a region of up to 64 GiB).
#![forbid(unsafe_code)]

use crate::extents::{Extents, GRANULE};

/// Granules the bitmap covers (64 GiB, what the guest's page tables map).
pub(crate) const MAX_GRANULES: u64 = 32 * 1024;
const WORDS: usize = (MAX_GRANULES / 64) as usize;

/// What the pool holds, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolUsage {
    /// Handed out and not freed.
    pub in_use: u64,
    /// Handed out since their last release (in use, or free but not given back yet).
    pub resident: u64,
    /// Relinquished, waiting for the host to confirm.
    pub pending: u64,
    /// The most the guest may hold (resident + pending).
    pub budget: u64,
    /// The region's size.
    pub size: u64,
}

/// The private region's allocator with its budget.
pub struct PrivatePool {
    extents: Extents,
    base: u64,
    size: u64,
    /// One bit per granule: handed out since its last release.
    resident: [u64; WORDS],
    resident_bytes: u64,
    in_use: u64,
    pending: u64,
    budget: u64,
}

impl PrivatePool {
    /// A pool with nothing to give (no private region).
    pub const fn empty() -> Self {
        Self {
            extents: Extents::empty(),
            base: 0,
            size: 0,
            resident: [0; WORDS],
            resident_bytes: 0,
            in_use: 0,
            pending: 0,
            budget: 0,
        }
    }

    /// A pool over `[base, base + len)` (granule-aligned; at most 64 GiB are used) whose
    /// budget starts at the whole region.
    pub fn new(base: u64, len: u64) -> Self {
        let len = len.min(MAX_GRANULES * GRANULE) / GRANULE * GRANULE;
        Self {
            extents: Extents::new(base, len),
            base,
            size: len,
            budget: len,
            ..Self::empty()
        }
    }

    /// What the pool holds.
    pub fn usage(&self) -> PoolUsage {
        PoolUsage {
            in_use: self.in_use,
            resident: self.resident_bytes,
            pending: self.pending,
            budget: self.budget,
            size: self.size,
        }
    }

    /// Sets the budget (rounded down to the granule). Lowering it does not free anything:
    /// the caller evicts and [`trim`](Self::trim)s until the pool fits.
    pub fn set_budget(&mut self, bytes: u64) {
        self.budget = bytes.min(self.size) / GRANULE * GRANULE;
    }

    /// Whether blocks of `blocks` bytes, allocated in that order, would each find a free
    /// extent large enough (the budget aside: see [`available`](Self::available)).
    pub fn fits(&self, blocks: &[u64]) -> bool {
        self.extents.fits(blocks)
    }

    /// Bytes a caller may still allocate, once free resident granules are trimmed if need
    /// be.
    pub fn available(&self) -> u64 {
        self.budget.saturating_sub(self.in_use + self.pending)
    }

    /// Bytes that a trim could give back now (free but resident).
    pub fn trimmable(&self) -> u64 {
        self.resident_bytes.saturating_sub(self.in_use)
    }

    fn bit(&self, addr: u64) -> (usize, u64) {
        let g = (addr - self.base) / GRANULE;
        ((g / 64) as usize, 1 << (g % 64))
    }

    fn is_resident(&self, addr: u64) -> bool {
        let (w, b) = self.bit(addr);
        self.resident[w] & b != 0
    }

    fn set_resident(&mut self, addr: u64, on: bool) {
        let (w, b) = self.bit(addr);
        if on {
            self.resident[w] |= b;
        } else {
            self.resident[w] &= !b;
        }
    }

    /// Hands out `len` bytes (rounded up to the granule), granule-aligned, or `None` if no
    /// free extent is large enough or the new granules would exceed the budget. With
    /// `zero`, `clear(addr, len)` is called for every run of reused granules in the block
    /// (fresh granules are zero already: the host backs them with zero pages).
    pub fn alloc(&mut self, len: u64, zero: bool, clear: &mut dyn FnMut(u64, u64)) -> Option<u64> {
        let len = len.max(1).checked_next_multiple_of(GRANULE)?;
        if self.in_use + self.pending + len > self.budget {
            return None;
        }
        let start = self.extents.alloc(len)?;
        let granules = (start..start + len).step_by(GRANULE as usize);
        let fresh = granules.clone().filter(|&g| !self.is_resident(g)).count() as u64;
        if self.resident_bytes + self.pending + fresh * GRANULE > self.budget {
            self.extents.free(start, len);
            return None;
        }
        let mut run: Option<(u64, u64)> = None;
        for g in granules {
            if self.is_resident(g) {
                if zero {
                    run = match run {
                        Some((s, l)) if s + l == g => Some((s, l + GRANULE)),
                        Some((s, l)) => {
                            clear(s, l);
                            Some((g, GRANULE))
                        }
                        None => Some((g, GRANULE)),
                    };
                }
            } else {
                self.set_resident(g, true);
            }
        }
        if let Some((s, l)) = run {
            clear(s, l);
        }
        self.resident_bytes += fresh * GRANULE;
        self.in_use += len;
        Some(start)
    }

    /// Takes back what `alloc(len)` returned at `start`; it stays resident.
    pub fn free(&mut self, start: u64, len: u64) {
        let Some(len) = len.max(1).checked_next_multiple_of(GRANULE) else {
            return;
        };
        self.in_use = self.in_use.saturating_sub(len);
        self.extents.free(start, len);
    }

    /// Takes free resident granules out of circulation until at most `target` bytes stay
    /// resident (pending granules are on their way out) or `out` is full, writing them as ascending `(start, len)` ranges to `out`.
    /// Returns how many ranges it wrote. The caller reports them to the host and calls
    /// [`released`](Self::released) for each once the host confirmed.
    pub fn trim(&mut self, target: u64, out: &mut [(u64, u64)]) -> usize {
        let mut n = 0;
        while n < out.len() && self.resident_bytes > target {
            let Some((start, len)) = self.lowest_free_resident_run() else {
                break;
            };
            if !self.extents.take(start, len) {
                break;
            }
            for g in (start..start + len).step_by(GRANULE as usize) {
                self.set_resident(g, false);
            }
            self.resident_bytes -= len;
            self.pending += len;
            out[n] = (start, len);
            n += 1;
        }
        n
    }

    /// The lowest run of free granules that are resident.
    fn lowest_free_resident_run(&self) -> Option<(u64, u64)> {
        for &(s, l) in self.extents.free_extents() {
            let mut g = s;
            while g < s + l && !self.is_resident(g) {
                g += GRANULE;
            }
            if g == s + l {
                continue;
            }
            let start = g;
            while g < s + l && self.is_resident(g) {
                g += GRANULE;
            }
            return Some((start, g - start));
        }
        None
    }

    /// The host released `[start, start + len)` (a range [`trim`](Self::trim) gave out):
    /// it is free and fresh again.
    pub fn released(&mut self, start: u64, len: u64) {
        self.pending = self.pending.saturating_sub(len);
        self.extents.free(start, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    const BASE: u64 = 4 << 30;
    const G: u64 = GRANULE;

    fn no_clear() -> impl FnMut(u64, u64) {
        |_, _| panic!("nothing should need clearing")
    }

    #[test]
    fn fresh_memory_is_not_cleared_and_reused_memory_is() {
        let mut p = PrivatePool::new(BASE, 16 * G);
        let a = p.alloc(3 * G, true, &mut no_clear()).unwrap();
        p.free(a, 3 * G);
        let mut cleared = Vec::new();
        let b = p
            .alloc(4 * G, true, &mut |s, l| cleared.push((s, l)))
            .unwrap();
        assert_eq!(b, a);
        assert_eq!(cleared, [(a, 3 * G)], "only the three reused granules");
        assert_eq!(p.usage().resident, 4 * G);
    }

    #[test]
    fn allocations_stay_within_the_budget() {
        let mut p = PrivatePool::new(BASE, 16 * G);
        p.set_budget(4 * G);
        assert!(p.alloc(5 * G, false, &mut no_clear()).is_none());
        let a = p.alloc(3 * G, false, &mut no_clear()).unwrap();
        assert!(p.alloc(2 * G, false, &mut no_clear()).is_none());
        assert_eq!(p.available(), G);
        p.free(a, 3 * G);
        // Freed granules are reused without growing the resident set.
        assert!(p.alloc(4 * G, false, &mut |_, _| {}).is_some());
        assert_eq!(p.usage().resident, 4 * G);
    }

    #[test]
    fn trimming_gives_back_free_resident_granules_until_released() {
        let mut p = PrivatePool::new(BASE, 16 * G);
        let a = p.alloc(2 * G, false, &mut no_clear()).unwrap();
        let b = p.alloc(3 * G, false, &mut no_clear()).unwrap();
        let c = p.alloc(G, false, &mut no_clear()).unwrap();
        p.free(a, 2 * G);
        p.free(c, G);
        p.set_budget(3 * G);
        let mut out = [(0, 0); 8];
        let n = p.trim(3 * G, &mut out);
        assert_eq!(&out[..n], &[(a, 2 * G), (c, G)], "ascending, in-use b kept");
        let u = p.usage();
        assert_eq!((u.in_use, u.resident, u.pending), (3 * G, 3 * G, 3 * G));
        // Pending granules are not handed out again before the host released them.
        assert!(p.alloc(G, false, &mut no_clear()).is_none());
        for &(s, l) in &out[..n] {
            p.released(s, l);
        }
        assert_eq!(p.usage().pending, 0);
        p.free(b, 3 * G);
        p.set_budget(16 * G);
        // Released granules come back fresh: no clearing needed for a or c.
        let mut cleared = Vec::new();
        let all = p
            .alloc(16 * G, true, &mut |s, l| cleared.push((s, l)))
            .unwrap();
        assert_eq!(all, BASE);
        assert_eq!(cleared, [(b, 3 * G)]);
    }

    #[test]
    fn a_trim_stops_at_its_target() {
        let mut p = PrivatePool::new(BASE, 16 * G);
        let a = p.alloc(8 * G, false, &mut no_clear()).unwrap();
        p.free(a, 8 * G);
        let mut out = [(0, 0); 4];
        assert_eq!(p.trim(8 * G, &mut out), 0, "already within the target");
        let n = p.trim(2 * G, &mut out);
        // One run covers everything free; over-trimming a run is allowed.
        assert_eq!(&out[..n], &[(a, 8 * G)]);
        assert_eq!(p.usage().resident, 0);
    }
}
