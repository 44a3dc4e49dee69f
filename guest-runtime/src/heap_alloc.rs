//! The user programs' global allocator, and the vCPUs' user stacks.
//!
//! With a private pool (every engine VM), everything comes from it, managed here in user
//! mode under the host's budget ([`PrivatePool`]): large blocks (weights, KV caches,
//! scratch) as whole granules, small ones (message copies, token lists, strings: 16 B to
//! 64 KiB) from granule-sized chunks ([`SmallBlocks`]), and each vCPU's user stack
//! ([`GuestAlloc::stack_top`]; all in the first granule, whose other half is the first small
//! blocks'). So nothing a program allocates lands in the boot region,
//! which the host can read on every backend short of a pKVM protected VM. A VM without a
//! private region (test programs) takes both kinds from the kernel's `map`/`unmap` instead.
//!
//! Which heap a program gets is settled at its first use of the allocator and never
//! changes: once a pool is known, an allocation it cannot serve fails (it does not move to
//! host-readable memory), and a pool that does not pass the guest's own layout check
//! (`abi::layout::check_private_pool`) stops the program, saying why.

use crate::extents::GRANULE;
use crate::private_pool::{PoolUsage, PrivatePool};
use crate::small_blocks::{CHUNK, SmallBlocks, class};
use crate::{exit, mmio, print, print_hex, syscall2};
use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, Ordering};
use guest_abi::{self as abi, MAX_VCPUS, syscall};

/// Exit code of a program that cannot use the private pool the host offers (it fails the
/// layout check, or has no room for the user stacks).
pub const EXIT_PRIVATE_POOL_REFUSED: u32 = 104;
/// Bytes of a vCPU's user stack. Every vCPU's fits in the top half of one granule, whose
/// bottom half serves the first small blocks: the engine's deepest use measured 18 KiB
/// (SmolLM2, a chat prompt, tokenizer built), and every granule the guest keeps counts
/// against the smallest budget the host may set (8 MiB).
pub const STACK_SIZE: u64 = GRANULE / 2 / MAX_VCPUS as u64;

/// Where the program's memory comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Heap {
    /// Not looked up yet.
    Unknown,
    /// No private region: the kernel's heap in the boot region.
    Kernel,
    /// The private region, and nothing else.
    Private,
}

struct State {
    heap: Heap,
    small: SmallBlocks,
    private: PrivatePool,
    /// Where vCPU 0's user stack ends; vCPU `i`'s ends `i * STACK_SIZE` lower.
    stacks_top: u64,
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
                heap: Heap::Unknown,
                small: SmallBlocks::new(),
                private: PrivatePool::empty(),
                stacks_top: 0,
            }),
        }
    }

    /// What the private pool holds (all zero when the VM has no private region).
    pub fn private_usage(&self) -> PoolUsage {
        self.with_private(|p| p.usage())
    }

    /// Runs `f` on the private pool (budget changes, trims, releases), once small-block
    /// chunks that emptied are back in it.
    pub fn with_private<R>(&self, f: impl FnOnce(&mut PrivatePool) -> R) -> R {
        self.with_state(|s| {
            s.init();
            s.reclaim();
            f(&mut s.private)
        })
    }

    /// The top of vCPU `vcpu`'s user stack in the private pool (`STACK_SIZE` bytes below
    /// it are this vCPU's alone); `None` without a private region.
    pub fn stack_top(&self, vcpu: u64) -> Option<u64> {
        self.with_state(|s| {
            s.init();
            if s.heap != Heap::Private {
                return None;
            }
            if vcpu >= MAX_VCPUS as u64 {
                refuse("a vCPU beyond the ABI's MAX_VCPUS has no user stack")
            }
            Some(s.stacks_top - vcpu * STACK_SIZE)
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

/// Says on the console why the program cannot run on the private pool, and stops it.
fn refuse(why: &str) -> ! {
    print("runtime: ");
    print(why);
    print("; stopping\n");
    exit(EXIT_PRIVATE_POOL_REFUSED)
}

impl State {
    /// Settles where memory comes from, on first use.
    fn init(&mut self) {
        if self.heap != Heap::Unknown {
            return;
        }
        let (base, size) = mmio::private_region();
        if size == 0 {
            self.heap = Heap::Kernel;
            return;
        }
        if let Err(why) = abi::layout::check_private_pool(base, size) {
            print_hex("runtime: the host offers a private pool at ", base);
            print_hex("runtime: of size ", size);
            print("runtime: refusing that pool: ");
            print(why);
            print("; stopping\n");
            exit(EXIT_PRIVATE_POOL_REFUSED)
        }
        self.private = PrivatePool::new(base, size);
        self.small.count_chunks_of_pool_at(base as usize);
        // The stacks' granule, taken first: a pool with no room for it stops the program,
        // since running on would leave the stacks in the boot region.
        let Some(granule) = self.private.alloc(GRANULE, false, &mut |_, _| {}) else {
            refuse("no room in the private pool for the user stacks")
        };
        self.stacks_top = granule + GRANULE;
        // SAFETY: the granule's bottom half is this allocator's alone (the stacks use the
        // top half), 2 MiB-aligned pool memory, counted from `base`.
        unsafe { self.small.seed(granule as usize, CHUNK / 2) };
        self.heap = Heap::Private;
    }

    /// Gives small-block chunks that emptied back to the pool; whether any went.
    fn reclaim(&mut self) -> bool {
        let pool = &mut self.private;
        let given = self
            .small
            .reclaim(&mut |chunk| pool.free(chunk as u64, CHUNK as u64));
        given > 0
    }

    /// `len` bytes of the pool (fresh granules zero; reused ones cleared with `zero`),
    /// after reclaiming empty small-block chunks if the pool is short.
    fn alloc_private(&mut self, len: u64, zero: bool) -> *mut u8 {
        let clear = &mut |addr: u64, len: u64| {
            // SAFETY: the pool only names granules of the block it is handing out to this
            // caller, identity-mapped and writable.
            unsafe { (addr as *mut u8).write_bytes(0, len as usize) }
        };
        let mut got = self.private.alloc(len, zero, clear);
        if got.is_none() && self.reclaim() {
            got = self.private.alloc(len, zero, clear);
        }
        got.map_or(null_mut(), |a| a as *mut u8)
    }

    /// A small block of class `c` from this program's heap.
    fn alloc_small(&mut self, c: usize) -> *mut u8 {
        let heap = self.heap;
        let pool = &mut self.private;
        let mut new_chunk = || match heap {
            Heap::Private => pool.alloc(CHUNK as u64, false, &mut |_, _| {}),
            _ => map(CHUNK),
        };
        // SAFETY: chunks come from the pool (granules: 2 MiB, aligned, handed out once,
        // within its first MAX_GRANULES) or from the kernel's `map` (2 MiB chunks, aligned).
        let p = unsafe { self.small.alloc(c, &mut || new_chunk().map(|a| a as usize)) };
        if !p.is_null() || heap != Heap::Private || !self.reclaim() {
            return p;
        }
        let pool = &mut self.private;
        let mut from_pool = || pool.alloc(CHUNK as u64, false, &mut |_, _| {});
        // SAFETY: as above, pool granules only.
        unsafe { self.small.alloc(c, &mut || from_pool().map(|a| a as usize)) }
    }
}

/// `len` bytes of the kernel's heap (rounded up to its 2 MiB chunks), or `None`.
fn map(len: usize) -> Option<u64> {
    let addr = syscall2(syscall::MAP, len as u64, 0);
    (addr != u64::MAX).then_some(addr)
}

// SAFETY: blocks come from memory handed out once to this allocator (pool granules, or the
// kernel's `map`), and small blocks are handed out once until freed (`SmallBlocks`); each
// block is at least `layout.size()` bytes and aligned to its class size, which is at least
// `layout.align()` (chunks and large blocks are 2 MiB aligned).
unsafe impl GlobalAlloc for GuestAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let size = layout.size().max(layout.align());
        self.with_state(|s| {
            s.init();
            match (class(size), s.heap) {
                (Some(c), _) => s.alloc_small(c),
                (None, Heap::Private) => s.alloc_private(size as u64, false),
                (None, _) => map(size).map_or(null_mut(), |a| a as *mut u8),
            }
        })
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let size = layout.size().max(layout.align());
        // Large private blocks: granules never handed out (or released by the host since)
        // are still zero, so only reused granules are cleared. This spares touching every
        // page of a fresh KV cache (first touches are slow in a VM, and only rows that get
        // used should cost them).
        if class(size).is_none() {
            let private = self.with_state(|s| {
                s.init();
                (s.heap == Heap::Private).then(|| s.alloc_private(size as u64, true))
            });
            if let Some(p) = private {
                return p;
            }
        }
        // SAFETY: forwarded; `alloc` returns at least `size` writable bytes or null.
        let p = unsafe { self.alloc(layout) };
        if !p.is_null() {
            // SAFETY: as above. (The kernel's fresh chunks are zero, reused ones are not.)
            unsafe { p.write_bytes(0, layout.size()) };
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let size = layout.size().max(layout.align());
        let unmap = self.with_state(|s| match (class(size), s.heap) {
            (Some(c), _) => {
                // SAFETY: the caller's contract: a block of this class, no longer used.
                unsafe { s.small.dealloc(ptr, c) };
                false
            }
            (None, Heap::Private) => {
                s.private.free(ptr as u64, size as u64);
                false
            }
            (None, _) => true,
        });
        if unmap {
            syscall2(syscall::UNMAP, ptr as u64, size as u64);
        }
    }

    /// Shrinks a large private block in place: its whole granules past the new size go
    /// back to the pool, so a model file cut to a prefix (the layer-prefix cache) needs no
    /// second copy of itself. Anything else moves, as `GlobalAlloc`'s default does.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size().max(layout.align());
        let new = new_size.max(layout.align());
        let shrunk = new <= old
            && class(new).is_none()
            && self.with_state(|s| {
                if s.heap != Heap::Private {
                    return false;
                }
                let g = GRANULE as usize;
                let (keep, had) = (new.next_multiple_of(g), old.next_multiple_of(g));
                if had > keep {
                    s.private
                        .free(ptr as u64 + keep as u64, (had - keep) as u64);
                }
                true
            });
        if shrunk {
            return ptr;
        }
        // SAFETY: the caller's contract for `realloc` is that of the default below: `ptr`
        // was allocated here with `layout`, and `new_size` is non-zero and fits `isize`.
        let p = unsafe { self.alloc(Layout::from_size_align_unchecked(new_size, layout.align())) };
        if !p.is_null() {
            // SAFETY: both blocks hold at least the smaller size, and they do not overlap
            // (`ptr` is still allocated while `p` is handed out).
            unsafe { core::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size)) };
            // SAFETY: `ptr` was allocated here with `layout` and is no longer used.
            unsafe { self.dealloc(ptr, layout) };
        }
        p
    }
}
