//! The host side of virtio-llm: the device, on `virtio-queue`'s split rings.
//!
//! The host is the client, so the device *sends* commands and requests into buffers the
//! driver posted (ctrl-cmd, requestq) and *receives* replies and responses from buffers the
//! driver filled (ctrl-reply, responseq). Each chain is checked against the shared window
//! before a byte of it is touched ([`chain`]); a message the driver wrote is copied out of
//! shared memory once, then decoded from the copy (no double fetch).
//!
//! The device is generic over guest memory (any `vm-memory` backend: in the VMM, a mapping
//! of the shared window and nothing else) and over how it interrupts the driver
//! ([`NotifyDriver`]), so the VMM, the in-process loopback tests and the fuzz targets run the
//! same code.

pub mod chain;
mod driver_view;

pub use driver_view::DriverView;

use crate::WireError;
use crate::mmio::F_EVENT_IDX;
use crate::spec::{feature, queue};
use crate::wire::control::{ControlCommand, ControlReply};
use crate::wire::memory::{BudgetChange, MemoryMsg, RelinquishReport};
use crate::wire::request::RequestMsg;
use crate::wire::response::ResponseMsg;
use chain::{ChainError, CheckedChain, DescTable, Direction, Window, check_chain};
use std::vec;
use std::vec::Vec;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// How the device interrupts the driver (in the VMM: wake the vCPUs waiting for work).
pub trait NotifyDriver: Send + Sync {
    /// The device put buffers in the used ring of `queue` and the driver asked to hear of it.
    fn notify(&self, queue: u16);
}

/// Why a device operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The driver offered a chain that breaks the rules; it was returned unused.
    #[error("queue {queue}: refused a descriptor chain: {source}")]
    BadChain {
        queue: u16,
        #[source]
        source: ChainError,
    },
    /// The driver's buffer cannot hold the message being sent; it was returned unused.
    #[error(
        "queue {queue}: the driver's buffer holds {capacity} bytes, the message needs {needed}"
    )]
    BufferTooSmall {
        queue: u16,
        capacity: u64,
        needed: usize,
    },
    /// The driver sent bytes that are not a valid message for the queue.
    #[error("queue {queue}: malformed message from the driver: {source}")]
    Malformed {
        queue: u16,
        #[source]
        source: WireError,
    },
    /// A message the device was asked to send does not encode.
    #[error("cannot encode the message: {0}")]
    Encode(WireError),
    /// The queue does not exist, or is not live, or goes the other way.
    #[error("queue {0} is not a live queue of this direction")]
    NoSuchQueue(u16),
    /// virtio-queue could not access the rings (guest memory or a bad ring address).
    #[error("queue {queue}: ring access failed: {source}")]
    Ring {
        queue: u16,
        #[source]
        source: virtio_queue::Error,
    },
    /// The driver's buffers are not in memory the device can reach.
    #[error("queue {queue}: buffer at {addr:#x} is not accessible")]
    Memory { queue: u16, addr: u64 },
}

/// Counters of what the device refused (the driver is broken or hostile).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    pub sent: u64,
    pub received: u64,
    pub refused_chains: u64,
    pub malformed_messages: u64,
}

/// The virtio-llm device over guest memory `M`.
pub struct LlmDevice<M: GuestMemoryBackend> {
    mem: M,
    window: Window,
    queues: Vec<Option<Queue>>,
    notify: std::sync::Arc<dyn NotifyDriver>,
    stats: DeviceStats,
}

fn direction(queue: u16) -> Option<Direction> {
    match queue {
        queue::CONTROL_CMD | queue::REQUEST | queue::MEMORY_EVENT => Some(Direction::DeviceWrites),
        queue::CONTROL_REPLY | queue::RESPONSE | queue::MEMORY_REPORT => {
            Some(Direction::DeviceReads)
        }
        _ => None,
    }
}

impl<M: GuestMemoryBackend> LlmDevice<M> {
    /// Starts the device on the driver's ready `queues` (indexed by queue number; missing
    /// ones are `None`) with the negotiated `features`. `mem` should reach the shared window
    /// and nothing else; `window` is checked on every chain regardless.
    pub fn new(
        mem: M,
        window: Window,
        features: u64,
        queues: Vec<Option<Queue>>,
        notify: std::sync::Arc<dyn NotifyDriver>,
    ) -> Self {
        let event_idx = features & F_EVENT_IDX != 0;
        let memory = features & (1 << feature::MEMORY) != 0;
        let queues = queues
            .into_iter()
            .enumerate()
            .map(|(i, q)| {
                // The memory queues stay dead unless their feature was negotiated.
                let live = i < usize::from(queue::MEMORY_EVENT) || memory;
                q.filter(|_| live).map(|mut q| {
                    q.set_event_idx(event_idx);
                    q
                })
            })
            .collect();
        Self {
            mem,
            window,
            queues,
            notify,
            stats: DeviceStats::default(),
        }
    }

    /// What the device sent, received and refused so far.
    pub fn stats(&self) -> DeviceStats {
        self.stats
    }

    /// Pops and checks the next chain of `index`; a bad chain is returned unused (length 0)
    /// and reported.
    fn pop_checked(
        &mut self,
        index: u16,
        dir: Direction,
    ) -> Result<Option<CheckedChain>, DeviceError> {
        let window = self.window;
        let mem = &self.mem;
        let q = self
            .queues
            .get_mut(usize::from(index))
            .and_then(Option::as_mut)
            .filter(|_| direction(index) == Some(dir))
            .ok_or(DeviceError::NoSuchQueue(index))?;
        // Only the available ring entry is read here; the chain itself is walked (and
        // checked) by `check_chain`, never by virtio-queue's iterator. A bad available index
        // is an error, not "nothing yet": `arm` would see work pending forever, and its
        // caller spin.
        let ring = |source| DeviceError::Ring {
            queue: index,
            source,
        };
        let Some(chain) = q.iter(mem).map_err(ring)?.next() else {
            return Ok(None);
        };
        let head = chain.head_index();
        let table = DescTable {
            addr: q.desc_table(),
            size: q.size(),
        };
        match check_chain(mem, table, head, window, dir) {
            Ok(c) => Ok(Some(c)),
            Err(source) => {
                self.stats.refused_chains += 1;
                // A head outside the queue cannot be returned: there is no such chain.
                if head < table.size {
                    self.complete(index, head, 0)?;
                }
                Err(DeviceError::BadChain {
                    queue: index,
                    source,
                })
            }
        }
    }

    /// Puts `head` in the used ring with `len` bytes written and interrupts the driver if it
    /// asked for it (event index).
    fn complete(&mut self, index: u16, head: u16, len: u32) -> Result<(), DeviceError> {
        let mem = &self.mem;
        let q = self
            .queues
            .get_mut(usize::from(index))
            .and_then(Option::as_mut)
            .ok_or(DeviceError::NoSuchQueue(index))?;
        let ring = |source| DeviceError::Ring {
            queue: index,
            source,
        };
        q.add_used(mem, head, len).map_err(ring)?;
        if q.needs_notification(mem).map_err(ring)? {
            self.notify.notify(index);
        }
        Ok(())
    }

    /// Sends one frame on a device → driver queue. `Ok(false)`: the driver has no buffer
    /// posted right now (wait for its notification and retry).
    pub fn send_frame(&mut self, index: u16, frame: &[u8]) -> Result<bool, DeviceError> {
        let Some(chain) = self.pop_checked(index, Direction::DeviceWrites)? else {
            return Ok(false);
        };
        if chain.total < frame.len() as u64 {
            self.stats.refused_chains += 1;
            self.complete(index, chain.head, 0)?;
            return Err(DeviceError::BufferTooSmall {
                queue: index,
                capacity: chain.total,
                needed: frame.len(),
            });
        }
        let mut rest = frame;
        for &(addr, len) in &chain.buffers {
            if rest.is_empty() {
                break;
            }
            let n = rest.len().min(len as usize);
            self.mem
                .write_slice(&rest[..n], GuestAddress(addr))
                .map_err(|_| DeviceError::Memory { queue: index, addr })?;
            rest = &rest[n..];
        }
        self.stats.sent += 1;
        // The frame is at most MAX_MESSAGE_BYTES (checked with the chain), so it fits u32.
        self.complete(index, chain.head, frame.len() as u32)?;
        Ok(true)
    }

    /// Takes one frame from a driver → device queue, copied out of shared memory.
    pub fn recv_frame(&mut self, index: u16) -> Result<Option<Vec<u8>>, DeviceError> {
        let Some((head, frame)) = self.take_frame(index)? else {
            return Ok(None);
        };
        self.complete(index, head, 0)?;
        Ok(Some(frame))
    }

    /// Copies the next frame of a driver → device queue out of shared memory without
    /// returning its buffer yet (the caller completes `head`).
    fn take_frame(&mut self, index: u16) -> Result<Option<(u16, Vec<u8>)>, DeviceError> {
        let Some(chain) = self.pop_checked(index, Direction::DeviceReads)? else {
            return Ok(None);
        };
        let mut frame = vec![0u8; chain.total as usize];
        let mut at = 0;
        for &(addr, len) in &chain.buffers {
            let end = at + len as usize;
            if self
                .mem
                .read_slice(&mut frame[at..end], GuestAddress(addr))
                .is_err()
            {
                self.stats.refused_chains += 1;
                self.complete(index, chain.head, 0)?;
                return Err(DeviceError::Memory { queue: index, addr });
            }
            at = end;
        }
        self.stats.received += 1;
        Ok(Some((chain.head, frame)))
    }

    /// Re-arms the driver's notifications for `index` before the caller sleeps. Returns
    /// `true` if buffers arrived meanwhile (do not sleep; poll again).
    pub fn arm(&mut self, index: u16) -> Result<bool, DeviceError> {
        let mem = &self.mem;
        let q = self
            .queues
            .get_mut(usize::from(index))
            .and_then(Option::as_mut)
            .ok_or(DeviceError::NoSuchQueue(index))?;
        q.enable_notification(mem)
            .map_err(|source| DeviceError::Ring {
                queue: index,
                source,
            })
    }

    fn malformed(&mut self, queue: u16, source: WireError) -> DeviceError {
        self.stats.malformed_messages += 1;
        DeviceError::Malformed { queue, source }
    }

    /// Sends a control command. `Ok(false)`: no buffer posted yet.
    pub fn send_command(&mut self, cmd: &ControlCommand<'_>) -> Result<bool, DeviceError> {
        let mut frame = Vec::new();
        cmd.encode(&mut frame).map_err(DeviceError::Encode)?;
        self.send_frame(queue::CONTROL_CMD, &frame)
    }

    /// Sends a request. `Ok(false)`: no buffer posted yet.
    pub fn send_request(&mut self, req: &RequestMsg) -> Result<bool, DeviceError> {
        let mut frame = Vec::new();
        req.encode(&mut frame).map_err(DeviceError::Encode)?;
        self.send_frame(queue::REQUEST, &frame)
    }

    /// Takes the next control reply, if any.
    pub fn recv_reply(&mut self) -> Result<Option<ControlReply>, DeviceError> {
        match self.recv_frame(queue::CONTROL_REPLY)? {
            None => Ok(None),
            Some(f) => ControlReply::decode(&f)
                .map(Some)
                .map_err(|e| self.malformed(queue::CONTROL_REPLY, e)),
        }
    }

    /// Sends a budget change on the memory event queue. `Ok(false)`: no buffer posted yet.
    pub fn send_budget(&mut self, change: &BudgetChange) -> Result<bool, DeviceError> {
        let mut frame = Vec::new();
        MemoryMsg::BudgetChange(*change)
            .encode(&mut frame)
            .map_err(DeviceError::Encode)?;
        self.send_frame(queue::MEMORY_EVENT, &frame)
    }

    /// Takes the next relinquish report and hands it to `release` before its buffer goes
    /// back: the driver reuses the ranges only once it sees the buffer returned, so whatever
    /// `release` does (discard the pages) happens first.
    pub fn recv_relinquish(
        &mut self,
        release: &mut dyn FnMut(&RelinquishReport),
    ) -> Result<Option<RelinquishReport>, DeviceError> {
        let Some((head, report)) = self.take_relinquish()? else {
            return Ok(None);
        };
        release(&report);
        self.complete_relinquish(head)?;
        Ok(Some(report))
    }

    /// Takes the next relinquish report but keeps its buffer (chain `head`) until
    /// [`Self::complete_relinquish`]: the caller releases the ranges in between, without
    /// holding up whatever else uses the device. A malformed report's buffer goes back at
    /// once.
    pub fn take_relinquish(&mut self) -> Result<Option<(u16, RelinquishReport)>, DeviceError> {
        let Some((head, frame)) = self.take_frame(queue::MEMORY_REPORT)? else {
            return Ok(None);
        };
        match MemoryMsg::decode(&frame) {
            Ok(MemoryMsg::Relinquish(r)) => Ok(Some((head, r))),
            Ok(MemoryMsg::BudgetChange(_)) => {
                self.complete(queue::MEMORY_REPORT, head, 0)?;
                Err(self.malformed(
                    queue::MEMORY_REPORT,
                    WireError::UnknownType(crate::wire::memory::msg_type::BUDGET_CHANGE),
                ))
            }
            Err(e) => {
                self.complete(queue::MEMORY_REPORT, head, 0)?;
                Err(self.malformed(queue::MEMORY_REPORT, e))
            }
        }
    }

    /// Gives back the buffer of a report taken with [`Self::take_relinquish`], telling the
    /// driver its ranges are released.
    pub fn complete_relinquish(&mut self, head: u16) -> Result<(), DeviceError> {
        self.complete(queue::MEMORY_REPORT, head, 0)
    }

    /// Takes the next response, if any.
    pub fn recv_response(&mut self) -> Result<Option<ResponseMsg>, DeviceError> {
        match self.recv_frame(queue::RESPONSE)? {
            None => Ok(None),
            Some(f) => ResponseMsg::decode(&f)
                .map(Some)
                .map_err(|e| self.malformed(queue::RESPONSE, e)),
        }
    }
}

#[cfg(test)]
mod tests;
