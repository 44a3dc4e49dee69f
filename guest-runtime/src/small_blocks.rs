//! Small blocks: power-of-two size classes from 16 B to 64 KiB, carved from 2 MiB chunks.
//! Freed blocks go on a free list per class (the link lives in the block) and are reused
//! first; a chunk's blocks may be of any class.
//!
//! Chunks from the private pool are *counted*: each knows how many of its blocks are live,
//! and [`SmallBlocks::reclaim`] hands wholly free chunks back (after unlinking their blocks
//! from the free lists). Small blocks count against the host's budget like any other
//! private memory, so what a dropped tokenizer held must be able to leave the budget too.
//! Chunks of the kernel's heap (a VM without a private pool) are never given back.
//!
//! It lives inside the global allocator, so it cannot allocate: the counts are a fixed table
//! (one entry per granule of the largest pool).

use crate::extents::GRANULE;
use crate::private_pool::MAX_GRANULES;

pub const MIN_SHIFT: u32 = 4;
pub const MAX_SHIFT: u32 = 16;
pub const CLASSES: usize = (MAX_SHIFT - MIN_SHIFT + 1) as usize;
/// Bytes of a chunk: one granule of the private pool, one `map` of the kernel's heap.
pub const CHUNK: usize = GRANULE as usize;
const MAX_CHUNKS: usize = MAX_GRANULES as usize;

/// The class of a block of `size` bytes (already at least its alignment); `None` above
/// 64 KiB.
pub fn class(size: usize) -> Option<usize> {
    let shift = size
        .max(1 << MIN_SHIFT)
        .next_power_of_two()
        .trailing_zeros();
    (shift <= MAX_SHIFT).then(|| (shift - MIN_SHIFT) as usize)
}

/// Bytes of a block of class `c`.
pub fn block_size(c: usize) -> usize {
    1 << (c as u32 + MIN_SHIFT)
}

/// The free lists, the chunk being carved, and (counted chunks) what each chunk holds.
pub struct SmallBlocks {
    /// Singly linked free blocks of each class (0: empty).
    free: [usize; CLASSES],
    /// Unused rest of the chunk being carved.
    bump: usize,
    bump_end: usize,
    /// Counted chunks lie in `[base, base + MAX_CHUNKS * CHUNK)`.
    counted: bool,
    base: usize,
    /// Live blocks of each counted chunk, by `(chunk - base) / CHUNK`.
    live: [u32; MAX_CHUNKS],
    /// One bit per granule: a counted chunk this allocator holds.
    held: [u64; MAX_CHUNKS / 64],
    /// Some chunk's count fell to zero since the last reclaim.
    maybe_empty: bool,
}

impl SmallBlocks {
    pub const fn new() -> Self {
        Self {
            free: [0; CLASSES],
            bump: 0,
            bump_end: 0,
            counted: false,
            base: 0,
            live: [0; MAX_CHUNKS],
            held: [0; MAX_CHUNKS / 64],
            maybe_empty: false,
        }
    }

    /// Counts the chunks from now on, all of them in the pool based at `base`: call before
    /// the first allocation.
    pub fn count_chunks_of_pool_at(&mut self, base: usize) {
        self.counted = true;
        self.base = base;
    }

    /// Carves next from `[start, start + len)`, part of a chunk that is never given back (a
    /// counted chunk whose count starts at one it never loses). The allocator seeds the
    /// granule that holds the user stacks: its rest serves the program's first, mostly
    /// long-lived blocks, so the smallest footprint the guest can shrink to has one granule
    /// fewer.
    ///
    /// # Safety
    /// The range is writable, used by nothing else, inside one chunk-aligned `CHUNK` (of the
    /// pool when chunks are counted), and handed to no other `SmallBlocks`.
    pub unsafe fn seed(&mut self, start: usize, len: usize) {
        (self.bump, self.bump_end) = (start, start + len);
        if self.counted {
            let i = self.index(start);
            self.set_held(i, true);
            self.live[i] += 1;
        }
    }

    fn index(&self, addr: usize) -> usize {
        (addr - self.base) / CHUNK
    }

    fn is_held(&self, i: usize) -> bool {
        self.held[i / 64] & (1 << (i % 64)) != 0
    }

    fn set_held(&mut self, i: usize, on: bool) {
        if on {
            self.held[i / 64] |= 1 << (i % 64);
        } else {
            self.held[i / 64] &= !(1 << (i % 64));
        }
    }

    /// Counted chunks held with no live block.
    fn is_empty_chunk(&self, addr: usize) -> bool {
        let i = self.index(addr);
        self.is_held(i) && self.live[i] == 0
    }

    /// A block of class `c`, or null when `new_chunk` has no chunk to give.
    ///
    /// # Safety
    /// Every chunk `new_chunk` returns is `CHUNK` bytes, `CHUNK`-aligned, writable, used by
    /// nothing else, and (counted chunks) inside the pool's first `MAX_CHUNKS` granules.
    pub unsafe fn alloc(
        &mut self,
        c: usize,
        new_chunk: &mut dyn FnMut() -> Option<usize>,
    ) -> *mut u8 {
        let block = block_size(c);
        let head = self.free[c];
        let p = if head != 0 {
            // SAFETY: `head` is a free block of this class, whose first word holds the next
            // free block (written by `dealloc`).
            self.free[c] = unsafe { (head as *const usize).read() };
            head
        } else {
            let start = self.bump.next_multiple_of(block);
            if self.bump_end == 0 || start + block > self.bump_end {
                let Some(chunk) = new_chunk() else {
                    return core::ptr::null_mut();
                };
                if self.counted {
                    let i = self.index(chunk);
                    self.set_held(i, true);
                }
                (self.bump, self.bump_end) = (chunk + block, chunk + CHUNK);
                chunk
            } else {
                self.bump = start + block;
                start
            }
        };
        if self.counted {
            let i = self.index(p);
            self.live[i] += 1;
        }
        p as *mut u8
    }

    /// Takes back a block.
    ///
    /// # Safety
    /// `ptr` is a block of class `c` that [`alloc`](Self::alloc) returned and nobody uses
    /// any more.
    pub unsafe fn dealloc(&mut self, ptr: *mut u8, c: usize) {
        // SAFETY: the caller's contract: the block is ours again; its first word becomes the
        // free-list link.
        unsafe { (ptr as *mut usize).write(self.free[c]) };
        self.free[c] = ptr as usize;
        if self.counted {
            let i = self.index(ptr as usize);
            self.live[i] -= 1;
            self.maybe_empty |= self.live[i] == 0;
        }
    }

    /// Hands every counted chunk with no live block to `give_back` (its blocks leave the
    /// free lists first); returns how many bytes it gave. Walks the free lists only when a
    /// chunk emptied since the last call. The chunk being carved goes too when it is empty:
    /// under the smallest budget every granule the guest can spare must go.
    pub fn reclaim(&mut self, give_back: &mut dyn FnMut(usize)) -> usize {
        if !self.counted || !self.maybe_empty {
            return 0;
        }
        self.maybe_empty = false;
        for c in 0..CLASSES {
            let mut prev: Option<usize> = None;
            let mut cur = self.free[c];
            while cur != 0 {
                // SAFETY: `cur` is a free block of a chunk still held (only this loop and
                // the one below let chunks go), whose first word links to the next.
                let next = unsafe { (cur as *const usize).read() };
                if self.is_empty_chunk(cur) {
                    match prev {
                        None => self.free[c] = next,
                        // SAFETY: `p` is the free block before `cur` on this list, in a chunk
                        // that stays held; its first word is its link.
                        Some(p) => unsafe { (p as *mut usize).write(next) },
                    }
                } else {
                    prev = Some(cur);
                }
                cur = next;
            }
        }
        if self.bump_end != 0 && self.is_empty_chunk(self.bump_end - 1) {
            (self.bump, self.bump_end) = (0, 0);
        }
        let mut given = 0;
        for i in 0..MAX_CHUNKS {
            if self.is_held(i) && self.live[i] == 0 {
                self.set_held(i, false);
                give_back(self.base + i * CHUNK);
                given += CHUNK;
            }
        }
        given
    }
}

impl Default for SmallBlocks {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{Layout, alloc, dealloc};
    use std::boxed::Box;
    use std::vec::Vec;

    /// `n` chunks of host memory, 2 MiB-aligned, standing in for a pool.
    struct FakePool {
        base: usize,
        layout: Layout,
        free: Vec<usize>,
    }

    impl FakePool {
        fn new(n: usize) -> Self {
            let layout = Layout::from_size_align(n * CHUNK, CHUNK).unwrap();
            // SAFETY: the layout is non-zero in size.
            let base = unsafe { alloc(layout) } as usize;
            assert_ne!(base, 0);
            let free = (0..n).rev().map(|i| base + i * CHUNK).collect();
            Self { base, layout, free }
        }
    }

    impl Drop for FakePool {
        fn drop(&mut self) {
            // SAFETY: allocated in `new` with this layout.
            unsafe { dealloc(self.base as *mut u8, self.layout) };
        }
    }

    #[test]
    fn sizes_map_to_classes() {
        assert_eq!(class(1), Some(0));
        assert_eq!(class(16), Some(0));
        assert_eq!(class(17), Some(1));
        assert_eq!(class(65_536), Some(CLASSES - 1));
        assert_eq!(class(65_537), None);
    }

    #[test]
    fn wholly_free_counted_chunks_go_back_and_others_stay_usable() {
        let mut pool = FakePool::new(4);
        let mut s = Box::new(SmallBlocks::new());
        s.count_chunks_of_pool_at(pool.base);
        let big = CLASSES - 1;
        // SAFETY: the fake pool's chunks satisfy `alloc`'s contract; blocks are freed once.
        unsafe {
            let mut take = || pool.free.pop();
            // Chunk 0: 32 blocks of 64 KiB; chunk 1 then gets a 64 KiB block and a 16 B one.
            let first: Vec<*mut u8> = (0..32).map(|_| s.alloc(big, &mut take)).collect();
            let kept = s.alloc(big, &mut take);
            let small = s.alloc(0, &mut take);
            let chunk = |p: *mut u8| (p as usize - pool.base) / CHUNK;
            assert!(
                first
                    .iter()
                    .all(|&p| chunk(p) == 0 && (p as usize).is_multiple_of(65_536))
            );
            assert_eq!((chunk(kept), chunk(small)), (1, 1));
            assert_eq!(s.reclaim(&mut |_| panic!("nothing is free")), 0);
            for p in &first {
                s.dealloc(*p, big);
            }
            s.dealloc(small, 0);
            let mut given = Vec::new();
            assert_eq!(s.reclaim(&mut |c| given.push(c)), CHUNK);
            assert_eq!(given, [pool.base], "chunk 0 is free; chunk 1 holds `kept`");
            // The free list lost chunk 0's blocks but kept chunk 1's 16 B block.
            assert_eq!(s.alloc(0, &mut || panic!("a free block exists")), small);
            let mut none = || None;
            let next = s.alloc(big, &mut none);
            assert_eq!(chunk(next), 1, "carved from chunk 1's rest");
        }
    }

    #[test]
    fn uncounted_chunks_are_never_given_back() {
        let mut pool = FakePool::new(1);
        let mut s = Box::new(SmallBlocks::new());
        // SAFETY: as above.
        unsafe {
            let p = s.alloc(3, &mut || pool.free.pop());
            s.dealloc(p, 3);
        }
        assert_eq!(s.reclaim(&mut |_| panic!("uncounted")), 0);
    }

    #[test]
    fn an_emptied_chunk_being_carved_goes_back_too() {
        let mut pool = FakePool::new(2);
        let base = pool.base;
        let mut s = Box::new(SmallBlocks::new());
        s.count_chunks_of_pool_at(base);
        // SAFETY: as above.
        unsafe {
            let p = s.alloc(2, &mut || pool.free.pop());
            s.dealloc(p, 2);
            assert_eq!(s.reclaim(&mut |c| pool.free.push(c)), CHUNK);
            let q = s.alloc(2, &mut || pool.free.pop());
            assert_eq!(
                q as usize, base,
                "the chunk came back and was carved afresh"
            );
        }
    }

    #[test]
    fn a_seeded_chunk_is_carved_first_and_never_given_back() {
        let mut pool = FakePool::new(2);
        let base = pool.base;
        let mut s = Box::new(SmallBlocks::new());
        s.count_chunks_of_pool_at(base);
        // SAFETY: as above; the seeded half of chunk 0 is not in the fake pool's list.
        unsafe {
            let _ = pool.free.pop();
            s.seed(base, CHUNK / 2);
            let p = s.alloc(0, &mut || panic!("the seeded range has room"));
            assert_eq!(p as usize, base);
            s.dealloc(p, 0);
            assert_eq!(s.reclaim(&mut |_| panic!("seeded chunks stay")), 0);
            // The rest of the seeded half in 64 KiB blocks (the first 64 KiB holds the
            // 16 B block), then the next comes from a new chunk.
            let big = CLASSES - 1;
            for _ in 1..CHUNK / 2 / block_size(big) {
                let b = s.alloc(big, &mut || panic!("still room")) as usize;
                assert!(b >= base && b < base + CHUNK / 2);
            }
            let next = s.alloc(big, &mut || pool.free.pop());
            assert_eq!(next as usize, base + CHUNK);
        }
    }
}
