//! The kernel's one heap, shared by every vCPU behind a spinlock (syscalls are rare and
//! short, and the kernel has no scheduler to block on). Built on first use, ending where the
//! architecture says the boot region ends.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};
use guest_kernel::heap::Heap;

struct Shared {
    lock: AtomicBool,
    ready: UnsafeCell<bool>,
    heap: UnsafeCell<Heap>,
}

// SAFETY: `ready` and `heap` are only touched while `lock` is held (see `with_heap`).
unsafe impl Sync for Shared {}

static SHARED: Shared = Shared {
    lock: AtomicBool::new(false),
    ready: UnsafeCell::new(false),
    heap: UnsafeCell::new(Heap::new(0)),
};

fn with_heap<R>(heap_end: fn() -> u64, f: impl FnOnce(&mut Heap) -> R) -> R {
    while SHARED
        .lock
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    // SAFETY: the lock is held, so this is the only reference to `ready` and `heap`.
    let result = unsafe {
        if !*SHARED.ready.get() {
            *SHARED.heap.get() = Heap::new(heap_end());
            *SHARED.ready.get() = true;
        }
        f(&mut *SHARED.heap.get())
    };
    SHARED.lock.store(false, Ordering::Release);
    result
}

/// The `map` syscall: `len` bytes of heap chunks, if there is room.
pub fn map(len: u64, heap_end: fn() -> u64) -> Option<u64> {
    with_heap(heap_end, |h| h.map(len))
}

/// The `unmap` syscall: whether `[addr, addr + len)` was mapped and is now free.
pub fn unmap(addr: u64, len: u64, heap_end: fn() -> u64) -> bool {
    with_heap(heap_end, |h| h.unmap(addr, len))
}
