//! The small guest programs of the end-to-end tests (`src/bin/`: exit codes, faults,
//! syscalls, the virtio-llm echo service, memory tests such as `canary`, `scrub` and `hog`),
//! and what each shares with its host test (layouts, protocols, reference computations).
//! The programs run on `guest-runtime`, as the engine does.
#![no_std]

#[cfg(target_arch = "x86_64")]
pub mod avx;

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
/// The fixed integer kernel `make bench-boot` times in guest user mode and on the host.
pub fn compute_kernel(iterations: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for i in 0..iterations {
        h = (h ^ i).wrapping_mul(0x0100_0000_01b3).rotate_left(5);
    }
    h
}
