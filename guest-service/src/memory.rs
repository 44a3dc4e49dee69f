//! The guest's side of flexible memory: what the service needs from the private pool, and
//! the relinquish reports in flight.
//!
//! Giving memory back is a three-step hand-off: the pool takes free granules out of
//! circulation ([`PrivateMemory::trim`]), a `RelinquishReport` names them to the host, and
//! when the host hands the report's buffer back (after it discarded the pages) the pool
//! takes them back as fresh memory ([`PrivateMemory::released`]). Until then they are used
//! by no one, so the host's discard can never destroy live data.
#![forbid(unsafe_code)]

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use virtio_llm::driver::{DriverError, DriverMemory, LlmDriver, Transport};
use virtio_llm::spec::MAX_RELINQUISH_RANGES;
use virtio_llm::wire::memory::{MemRange, RelinquishReport};

/// What the private pool holds, in bytes (see `guest_runtime::private_pool::PoolUsage`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryUse {
    pub in_use: u64,
    pub resident: u64,
    pub pending: u64,
    pub budget: u64,
    pub size: u64,
}

impl MemoryUse {
    /// Bytes that may still be allocated once free memory is trimmed and released.
    pub fn available(&self) -> u64 {
        self.budget.saturating_sub(self.in_use + self.pending)
    }
}

/// The private pool as the service drives it.
pub trait PrivateMemory {
    /// What the pool holds.
    fn usage(&self) -> MemoryUse;
    /// Whether blocks of `blocks` bytes, allocated in that order now, would each find a
    /// free extent large enough: the budget can have room while the pool's free memory is in
    /// pieces too small for a large block (a failed allocation ends the guest).
    fn fits(&self, blocks: &[u64]) -> bool;
    /// Sets the budget.
    fn set_budget(&self, bytes: u64);
    /// Takes free resident memory out of circulation until at most `target` bytes stay
    /// resident; writes the ranges to `out` and returns how many.
    fn trim(&self, target: u64, out: &mut [(u64, u64)]) -> usize;
    /// The host released a range `trim` gave out.
    fn released(&self, start: u64, len: u64);
}

/// Relinquish reports the host has not given back yet.
pub struct Relinquisher {
    /// Ticket (the report's buffer) and the ranges it named, oldest first.
    in_flight: VecDeque<(u64, Vec<(u64, u64)>)>,
    scratch: Vec<u8>,
}

/// Reports in flight the queue holds without growing.
const IN_FLIGHT: usize = 8;

impl Default for Relinquisher {
    /// Sized at start for a full report: grown later, during the first shrink, these
    /// long-lived buffers would take small blocks just freed by the eviction (a tokenizer's,
    /// say) and keep their whole chunk out of the budget for good.
    fn default() -> Self {
        Self {
            in_flight: VecDeque::with_capacity(IN_FLIGHT),
            // A full report's frame: header, sequence, count, 16 bytes a range.
            scratch: Vec::with_capacity(64 + 16 * MAX_RELINQUISH_RANGES),
        }
    }
}

impl Relinquisher {
    /// Whether reports are still with the host.
    pub fn busy(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// Returns to the pool what the host released since the last call.
    pub fn collect<M: DriverMemory, T: Transport>(
        &mut self,
        driver: &mut LlmDriver<M, T>,
        mem: &dyn PrivateMemory,
    ) -> Result<(), DriverError> {
        while let Some(ticket) = driver.poll_released()? {
            // The device returns buffers in the order it took them, but nothing relies on
            // it: the ticket names the report.
            if let Some(i) = self.in_flight.iter().position(|(t, _)| *t == ticket)
                && let Some((_, ranges)) = self.in_flight.remove(i)
            {
                for (start, len) in ranges {
                    mem.released(start, len);
                }
            }
        }
        Ok(())
    }

    /// Trims the pool to `target` resident bytes and reports what it took, answering budget
    /// change `sequence` (0: unsolicited). A budget change is always answered, with an empty
    /// report if nothing is to be given back: a report shorter than `MAX_RELINQUISH_RANGES`
    /// ends the answer, which tells the host the change is applied. `park` waits for the
    /// device while every report buffer is busy. Returns the bytes reported.
    pub fn trim_and_report<M: DriverMemory, T: Transport>(
        &mut self,
        driver: &mut LlmDriver<M, T>,
        mem: &dyn PrivateMemory,
        target: u64,
        sequence: u64,
        park: &dyn Fn(),
    ) -> Result<u64, DriverError> {
        if !driver.memory_enabled() {
            return Ok(0);
        }
        let mut total = 0;
        let mut ranges = [(0u64, 0u64); MAX_RELINQUISH_RANGES];
        loop {
            let n = mem.trim(target, &mut ranges);
            if n == 0 && sequence == 0 {
                return Ok(total);
            }
            let report = RelinquishReport {
                sequence,
                ranges: ranges[..n]
                    .iter()
                    .map(|&(guest_phys, len)| MemRange { guest_phys, len })
                    .collect(),
            };
            let ticket = loop {
                if let Some(t) = driver.send_relinquish(&report, &mut self.scratch)? {
                    break t;
                }
                self.collect(driver, mem)?;
                if !driver.arm()? {
                    park();
                }
            };
            total += ranges[..n].iter().map(|r| r.1).sum::<u64>();
            self.in_flight.push_back((ticket, ranges[..n].to_vec()));
            if n < MAX_RELINQUISH_RANGES {
                return Ok(total);
            }
        }
    }

    /// Waits until the host gave every report back, or `give_up()` says to stop waiting.
    /// Returns whether all came back.
    pub fn wait_all<M: DriverMemory, T: Transport>(
        &mut self,
        driver: &mut LlmDriver<M, T>,
        mem: &dyn PrivateMemory,
        park: &dyn Fn(),
        give_up: &dyn Fn() -> bool,
    ) -> Result<bool, DriverError> {
        loop {
            self.collect(driver, mem)?;
            if !self.busy() {
                return Ok(true);
            }
            if give_up() {
                return Ok(false);
            }
            if !driver.arm()? {
                park();
            }
        }
    }
}
