//! The guest driver's view of `vm-memory` guest memory, so the real driver runs against the
//! real device in one process (loopback tests, fuzzing) with no VM.

use crate::driver::{DriverMemory, RingError};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// `vm-memory` guest memory seen through [`DriverMemory`].
pub struct DriverView<M>(pub M);

impl<M: GuestMemoryBackend> DriverMemory for DriverView<M> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), RingError> {
        self.0
            .read_slice(buf, GuestAddress(addr))
            .map_err(|_| RingError::Memory {
                addr,
                len: buf.len(),
            })
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), RingError> {
        self.0
            .write_slice(data, GuestAddress(addr))
            .map_err(|_| RingError::Memory {
                addr,
                len: data.len(),
            })
    }
}
