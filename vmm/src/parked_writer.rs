//! Tests only: writes into guest memory while every vCPU is parked.
//!
//! Tests make a guest hang by rewriting its code. A vCPU that runs that code while it is
//! being rewritten can execute half of an old instruction and half of the new bytes, and
//! fault instead of hanging; so the write waits until every vCPU is parked in its wait
//! register, and holds them there until it is done.

use crate::devices::Timer;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory, and the timer its vCPUs park in.
#[derive(Clone)]
pub struct ParkedWriter {
    mem: GuestMemoryMmap,
    timer: Arc<Timer>,
    vcpus: usize,
}

/// Why a parked write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ParkedWriteError {
    #[error(
        "the guest's {vcpus} vCPUs were not all parked at once within {waited:?}: \
         is the guest busy, or did it start fewer vCPUs?"
    )]
    NeverParked { vcpus: usize, waited: Duration },
    #[error("cannot write {len} bytes at guest address {addr:#x}: {source}")]
    Write {
        len: usize,
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
}

impl ParkedWriter {
    pub fn new(mem: GuestMemoryMmap, timer: Arc<Timer>, vcpus: u8) -> Self {
        Self {
            mem,
            timer,
            vcpus: usize::from(vcpus),
        }
    }

    /// The guest memory itself, for writes that need no parked vCPUs.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Writes `bytes` at `addr` once every vCPU is parked, waiting up to `patience`.
    pub fn write(
        &self,
        bytes: &[u8],
        addr: u64,
        patience: Duration,
    ) -> Result<(), ParkedWriteError> {
        let start = Instant::now();
        loop {
            let write = || self.mem.write_slice(bytes, GuestAddress(addr));
            if let Some(result) = self.timer.while_parked(self.vcpus, write) {
                return result.map_err(|source| ParkedWriteError::Write {
                    len: bytes.len(),
                    addr,
                    source,
                });
            }
            if start.elapsed() >= patience {
                return Err(ParkedWriteError::NeverParked {
                    vcpus: self.vcpus,
                    waited: patience,
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Overwrites the engine program's code (and what follows it up to 4 MiB) with a slide
    /// of `nop`s into `jmp $`: once its vCPUs run again they spin in user mode, as a stuck
    /// guest would, without a fault the host would notice. x86_64 code: an arm64 guest
    /// would fault on it instead.
    #[cfg(target_arch = "x86_64")]
    pub fn hang_engine(&self) -> Result<(), ParkedWriteError> {
        let mut code = vec![0x90u8; 0x20_0000];
        let n = code.len();
        code[n - 2..].copy_from_slice(&[0xeb, 0xfe]);
        self.write(&code, 0x20_0000, Duration::from_secs(30))
    }
}
