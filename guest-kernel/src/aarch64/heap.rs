//! The kernel's one heap, shared by every vCPU behind a spinlock (syscalls are rare and
//! short, and the kernel has no scheduler to block on). Its end is the boot region's size
//! from the boot info page, so it costs no exit.

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

fn with_heap<R>(f: impl FnOnce(&mut Heap) -> R) -> R {
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
            *SHARED.heap.get() = Heap::new(super::boot_info().mem_size);
            *SHARED.ready.get() = true;
        }
        f(&mut *SHARED.heap.get())
    };
    SHARED.lock.store(false, Ordering::Release);
    result
}

pub fn map(len: u64) -> Option<u64> {
    with_heap(|h| h.map(len))
}

pub fn unmap(addr: u64, len: u64) -> bool {
    with_heap(|h| h.unmap(addr, len))
}
