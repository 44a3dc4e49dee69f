//! The guest side of a split virtqueue (virtio 1.2 §2.7): the driver posts descriptor
//! chains in the available ring and takes completed ones from the used ring.
//!
//! Written against [`DriverMemory`] so the same code runs in the guest (over its own
//! physical memory) and in host tests (over `vm-memory`), and it checks everything the
//! device writes back: a used entry must name a chain the driver actually posted, with a
//! length within what that chain offered.

pub mod echo_service;
pub mod layout;
mod llm_driver;
mod split_ring;

pub use llm_driver::{
    DeviceLimits, DriverError, DriverStats, KeyRoot, LlmDriver, OPTIONAL_FEATURES,
    REQUIRED_FEATURES, Transport,
};
pub use split_ring::{Buffer, SplitRing, Used};

/// Why a ring operation failed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("queue size {0} is not a power of two between 1 and 32768")]
    BadQueueSize(u16),
    #[error("{what} address {addr:#x} is not {align}-byte aligned")]
    Misaligned {
        what: &'static str,
        addr: u64,
        align: u64,
    },
    #[error("no free descriptors for a chain of {needed}")]
    NoFreeDescriptors { needed: usize },
    #[error("a chain needs 1 to {max} buffers, got {len}")]
    BadChainLength { len: usize, max: usize },
    #[error("guest memory at {addr:#x} (+{len}) is not accessible")]
    Memory { addr: u64, len: usize },
    #[error("the device returned descriptor {id}, which is not an outstanding chain head")]
    BogusUsedId { id: u32 },
    #[error("the device reported {len} bytes written to chain {id}, which offered {capacity}")]
    UsedLenTooLarge { id: u32, len: u32, capacity: u32 },
    #[error(
        "the device advanced the used index by {advance}, more than the {outstanding} chains posted"
    )]
    UsedIndexJump { advance: u16, outstanding: usize },
}

/// Guest-physical memory as the driver reaches it.
pub trait DriverMemory {
    /// Copies `buf.len()` bytes from `addr`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), RingError>;
    /// Copies `data` to `addr`.
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), RingError>;
    /// Zeroes `len` bytes at `addr` (transit buffers are cleared after use).
    fn clear(&self, addr: u64, len: usize) -> Result<(), RingError> {
        const ZEROS: [u8; 4096] = [0; 4096];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(ZEROS.len());
            self.write(addr + done as u64, &ZEROS[..n])?;
            done += n;
        }
        Ok(())
    }
}
