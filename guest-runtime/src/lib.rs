//! The user-mode runtime every guest program links: the syscall gate and the kernel's
//! services, device-register access, the global allocator over the budgeted private pool
//! (the kernel's heap where a VM has none), user stacks in the private pool, the virtio-llm
//! glue (shared window, register page, wait register), and a panic handler. [`arch`] holds
//! what differs between x86_64 and aarch64.
//!
//! The production engine (`guest-service`) and the test programs (`guest-programs`) both
//! build on it. Its build script knows how guest executables are linked and hands the
//! arguments to them (see `build.rs`).
#![no_std]

#[cfg(test)]
extern crate std;

pub mod arch;
pub mod extents;
pub mod heap_alloc;
pub mod mmio;
#[cfg(feature = "guest")]
mod panic;
pub mod private_pool;
pub mod small_blocks;
mod syscalls;
pub mod virtio;

pub use arch::syscall2;
/// The guest ABI (layout, MMIO pages, syscall numbers) the runtime is written against.
pub use guest_abi as abi;
pub use syscalls::{exit, print, print_hex};

/// Every guest program's heap (the driver and the engine allocate).
#[cfg(feature = "guest")]
#[global_allocator]
static HEAP: heap_alloc::GuestAlloc = heap_alloc::GuestAlloc::new();

/// What the private pool holds (all zero when the VM has no private region).
#[cfg(feature = "guest")]
pub fn private_usage() -> private_pool::PoolUsage {
    HEAP.private_usage()
}

/// Runs `f` on the private pool: budget changes, trims and releases.
#[cfg(feature = "guest")]
pub fn with_private_pool<R>(f: impl FnOnce(&mut private_pool::PrivatePool) -> R) -> R {
    HEAP.with_private(f)
}

/// Runs `main(vcpu)` on this vCPU's user stack in the private pool. Programs that handle
/// user data (the engine) call it first thing in `_start`: until the switch the stack is
/// host-readable, so nothing but this call may run on it. No private pool (the control page
/// says size 0), a pool that fails the layout check, or one without room for the stack
/// stops the program instead, with [`heap_alloc::EXIT_PRIVATE_POOL_REFUSED`]: the boot
/// region is no place for a user's data.
#[cfg(feature = "guest")]
pub fn start_on_private_stack(vcpu: u64, main: extern "C" fn(u64) -> !) -> ! {
    match HEAP.stack_top(vcpu) {
        // SAFETY: the allocator gave this vCPU alone the `STACK_SIZE` bytes below `top`
        // (private, identity-mapped, writable; `top` is 128 KiB-aligned), for good.
        Some(top) => unsafe { arch::run_on_stack(top, main, vcpu) },
        None => {
            print("runtime: the host offers no private pool, and this program keeps a user's ");
            print("data only in private memory; stopping\n");
            exit(heap_alloc::EXIT_PRIVATE_POOL_REFUSED)
        }
    }
}
