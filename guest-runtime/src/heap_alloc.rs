//! The user programs' global allocator: power-of-two size classes from 16 B to 64 KiB,
//! carved from 2 MiB chunks the kernel's `map` hands out; anything larger (weights, KV
//! caches, scratch) comes from the private region when the VM has one, managed here in user
//! mode under the host's budget ([`PrivatePool`]), else from `map`/`unmap`. Every `map` is a trip through the guest
//! kernel (emulated ring 0 on these machines), so small blocks are recycled in user mode and
//! chunks are never given back.

use crate::private_pool::{PoolUsage, PrivatePool};
use crate::{mmio, syscall2};
use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, Ordering};
use guest_abi::{self as abi, HEAP_CHUNK, syscall};

const MIN_SHIFT: u32 = 4;
const MAX_SHIFT: u32 = 16;
const CLASSES: usize = (MAX_SHIFT - MIN_SHIFT + 1) as usize;

struct State {
    /// Singly linked free blocks of each class (the link lives in the block).
    free: [usize; CLASSES],
    /// Unused rest of the current chunk.
    bump: usize,
    bump_end: usize,
    /// The private region's pool, once looked up (`private_ready`).
    private: PrivatePool,
    private_ready: bool,
}

/// The allocator; one instance is the program's `#[global_allocator]`.
pub struct GuestAlloc {
    lock: AtomicBool,
    state: UnsafeCell<State>,
}

// SAFETY: `state` is only touched while `lock` is held (see `with_state`).
unsafe impl Sync for GuestAlloc {}

impl GuestAlloc {
    pub const fn new() -> Self {
        Self {
            lock: AtomicBool::new(false),
            state: UnsafeCell::new(State {
                free: [0; CLASSES],
                bump: 0,
                bump_end: 0,
                private: PrivatePool::empty(),
                private_ready: false,
            }),
        }
    }

    /// What the private pool holds (all zero when the VM has no private region).
    pub fn private_usage(&self) -> PoolUsage {
        self.with_private(|p| p.usage())
    }

    /// Runs `f` on the private pool (budget changes, trims, releases).
    pub fn with_private<R>(&self, f: impl FnOnce(&mut PrivatePool) -> R) -> R {
        self.with_state(|s| {
            s.init_private();
            f(&mut s.private)
        })
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        while self
            .lock
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        // SAFETY: the lock is held, so this is the only reference to the state.
        let r = f(unsafe { &mut *self.state.get() });
        self.lock.store(false, Ordering::Release);
        r
    }
}

impl Default for GuestAlloc {
    fn default() -> Self {
        Self::new()
    }
}

/// The private region's size, from the control page (an MMIO read).
fn private_size() -> u64 {
    mmio::control(abi::CONTROL_PRIVATE_SIZE)
}

impl State {
    fn init_private(&mut self) {
        if !self.private_ready {
            let (base, size) = mmio::private_region();
            self.private = PrivatePool::new(base, size);
            self.private_ready = true;
        }
    }
}

/// The class of a block of `size` bytes (already at least its alignment).
fn class(size: usize) -> Option<usize> {
    let shift = size
        .max(1 << MIN_SHIFT)
        .next_power_of_two()
        .trailing_zeros();
    (shift <= MAX_SHIFT).then(|| (shift - MIN_SHIFT) as usize)
}

fn map(len: usize) -> usize {
    let addr = syscall2(syscall::MAP, len as u64, 0);
    if addr == u64::MAX { 0 } else { addr as usize }
}

// SAFETY: blocks come from memory the kernel mapped for this program and handed out once
// (free lists and the bump pointer never overlap); each block is at least `layout.size()`
// bytes and aligned to its class size, which is at least `layout.align()` (chunks are 2 MiB
// aligned; large blocks come straight from `map`, 2 MiB aligned).
unsafe impl GlobalAlloc for GuestAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let size = layout.size().max(layout.align());
        let Some(c) = class(size) else {
            return self.with_state(|s| {
                s.init_private();
                match s.private.alloc(size as u64, false, &mut |_, _| {}) {
                    Some(addr) => addr as *mut u8,
                    None if private_size() == 0 => map(size) as *mut u8,
                    None => null_mut(),
                }
            });
        };
        let block = 1usize << (c as u32 + MIN_SHIFT);
        self.with_state(|s| {
            let head = s.free[c];
            if head != 0 {
                // SAFETY: `head` is a free block of this class, whose first word holds the
                // next free block (written by `dealloc`).
                s.free[c] = unsafe { (head as *const usize).read() };
                return head as *mut u8;
            }
            let start = s.bump.next_multiple_of(block);
            if start == 0 || start + block > s.bump_end {
                let chunk = map(HEAP_CHUNK as usize);
                if chunk == 0 {
                    return null_mut();
                }
                (s.bump, s.bump_end) = (chunk + block, chunk + HEAP_CHUNK as usize);
                return chunk as *mut u8;
            }
            s.bump = start + block;
            start as *mut u8
        })
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let size = layout.size().max(layout.align());
        if class(size).is_some() {
            // SAFETY: forwarded; `alloc` returns at least `size` writable bytes or null.
            let p = unsafe { self.alloc(layout) };
            if !p.is_null() {
                // SAFETY: as above.
                unsafe { p.write_bytes(0, layout.size()) };
            }
            return p;
        }
        // Large blocks: granules never handed out (or released by the host since) are still
        // zero, so only reused granules are cleared. This spares touching every page of a
        // fresh KV cache (first touches are slow in a VM, and only rows that get used should
        // cost them).
        self.with_state(|s| {
            s.init_private();
            let clear = &mut |addr: u64, len: u64| {
                // SAFETY: the pool only names granules of the block it is handing out to
                // this caller, identity-mapped and writable.
                unsafe { (addr as *mut u8).write_bytes(0, len as usize) }
            };
            let Some(addr) = s.private.alloc(size as u64, true, clear) else {
                if private_size() != 0 {
                    return null_mut();
                }
                // The kernel's `map`: fresh chunks are zero, reused ones are not.
                let p = map(size) as *mut u8;
                if !p.is_null() {
                    // SAFETY: `map` returned `size` writable bytes.
                    unsafe { p.write_bytes(0, size) };
                }
                return p;
            };
            addr as *mut u8
        })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let size = layout.size().max(layout.align());
        let Some(c) = class(size) else {
            let addr = ptr as u64;
            if addr >= 1 << 32 {
                // The private region lies above 4 GiB, the kernel's heap below.
                self.with_state(|s| s.private.free(addr, size as u64));
            } else {
                syscall2(syscall::UNMAP, addr, size as u64);
            }
            return;
        };
        self.with_state(|s| {
            // SAFETY: `ptr` is a block of this class the caller no longer uses; its first
            // word becomes the free-list link.
            unsafe { (ptr as *mut usize).write(s.free[c]) };
            s.free[c] = ptr as usize;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_map_to_classes() {
        assert_eq!(class(1), Some(0));
        assert_eq!(class(16), Some(0));
        assert_eq!(class(17), Some(1));
        assert_eq!(class(65_536), Some(CLASSES - 1));
        assert_eq!(class(65_537), None);
    }
}
