//! The user-mode side of the guest ABI, for the engine and the small test programs in
//! `src/bin/`: the syscall gate and the kernel's services, device-register access, the
//! global allocator over the kernel's heap and the private pool, the virtio-llm glue, and a
//! panic handler. [`arch`] holds what differs between x86_64 and aarch64.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod arch;
#[cfg(target_arch = "x86_64")]
pub mod avx;
pub mod extents;
pub mod heap_alloc;
pub mod mmio;
#[cfg(feature = "guest")]
mod panic;
pub mod private_pool;
mod syscalls;
pub mod virtio;

pub use arch::syscall2;
pub use syscalls::{exit, print, print_hex};

/// The protocol the `scrub` program and the host's reclaim test share.
pub mod scrub {
    /// Bytes of the private region the program fills, the host releases and the program
    /// reads back.
    pub const SCRUB_BYTES: u64 = 8 << 20;
    /// Where in the shared window the u64 mailbox is.
    pub const MAILBOX_OFFSET: u64 = 30 << 20;
    /// Mailbox states, in order.
    pub mod state {
        pub const FILLED: u64 = 1;
        pub const RELEASED: u64 = 2;
        pub const ALL_ZERO: u64 = 3;
        pub const NOT_ZERO: u64 = 4;
    }
}

/// What the `hog` program and the host's forced-reclaim test share.
pub mod hog {
    /// Bytes of the private region the program touches and then holds against any budget.
    pub const HOG_BYTES: u64 = 32 << 20;
}

/// The layout the `canary` program and the host test share.
pub mod canary {
    /// Bytes of each canary.
    pub const CANARY_BYTES: usize = 64;
    /// Where in the shared window canary B goes (past the virtio-llm rings and buffers).
    pub const SHARED_OFFSET: u64 = 30 << 20;
    /// Where in the shared window the two FNV-1a hashes go (A's, then B's).
    pub const HASHES_OFFSET: u64 = SHARED_OFFSET + 4096;

    /// 64-bit FNV-1a: the host looks for blocks by hash so it never holds canary A itself.
    pub fn fnv1a(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }
}
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

/// The fixed integer kernel `make bench-boot` times in guest user mode and on the host.
pub fn compute_kernel(iterations: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for i in 0..iterations {
        h = (h ^ i).wrapping_mul(0x0100_0000_01b3).rotate_left(5);
    }
    h
}
