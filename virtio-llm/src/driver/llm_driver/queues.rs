//! The driver's queues at work: receive buffers kept posted on the host → guest queues,
//! transmit buffers reclaimed and reused, every message copied out of the shared window
//! once and decoded from the private copy, and the wake-up arming before the guest sleeps.

use super::{DriverError, LlmDriver, RxQueue, Transport, TxQueue, ring_err};
use crate::WireError;
use crate::driver::layout::{PLANS, buffers_start};
use crate::driver::{Buffer, DriverMemory};
use crate::mmio::reg;
use crate::spec::queue;
use crate::wire::control::{ControlCommand, ControlReply};
use crate::wire::memory::{BudgetChange, MemoryMsg, RelinquishReport};
use crate::wire::request::RequestMsg;
use crate::wire::response::ResponseMsg;
use alloc::vec::Vec;

impl<M: DriverMemory, T: Transport> LlmDriver<M, T> {
    pub(super) fn post_all_rx(&mut self) -> Result<(), DriverError> {
        let memory = self.memory_enabled().then_some(queue::MEMORY_EVENT);
        for which in [queue::CONTROL_CMD, queue::REQUEST]
            .into_iter()
            .chain(memory)
        {
            let plan = PLANS[usize::from(which)];
            let start = buffers_start(self.window_base, which);
            let stride = u64::from(plan.buffer_bytes).next_multiple_of(4096);
            for i in 0..u64::from(plan.buffers) {
                self.post_rx(which, start + i * stride)?;
            }
            self.kick(which)?;
        }
        Ok(())
    }

    /// Receive queue `index`, if it is live.
    pub(super) fn rx(&mut self, index: u16) -> Result<(&M, &mut RxQueue), DriverError> {
        let q = match index {
            queue::CONTROL_CMD => Some(&mut self.commands),
            queue::REQUEST => Some(&mut self.requests),
            queue::MEMORY_EVENT => self.mem_events.as_mut(),
            _ => None,
        };
        let q = q.ok_or(DriverError::NoSuchQueue(index))?;
        Ok((&self.mem, q))
    }

    /// Transmit queue `index`, if it is live.
    pub(super) fn tx(&mut self, index: u16) -> Result<(&M, &mut TxQueue), DriverError> {
        let q = match index {
            queue::CONTROL_REPLY => Some(&mut self.replies),
            queue::RESPONSE => Some(&mut self.responses),
            queue::MEMORY_REPORT => self.mem_reports.as_mut(),
            _ => None,
        };
        let q = q.ok_or(DriverError::NoSuchQueue(index))?;
        Ok((&self.mem, q))
    }

    pub(super) fn post_rx(&mut self, index: u16, addr: u64) -> Result<(), DriverError> {
        let (mem, q) = self.rx(index)?;
        let head = q
            .ring
            .add(
                mem,
                &[Buffer {
                    addr,
                    len: q.buffer_bytes,
                    device_writable: true,
                }],
            )
            .map_err(ring_err(index))?;
        q.buffer_of[usize::from(head)] = addr;
        Ok(())
    }

    /// Notifies the device about queue `index` if it asked for it.
    pub(super) fn kick(&mut self, index: u16) -> Result<(), DriverError> {
        let needs = match index {
            queue::CONTROL_CMD | queue::REQUEST | queue::MEMORY_EVENT => {
                let (mem, q) = self.rx(index)?;
                q.ring.needs_notify(mem)
            }
            _ => {
                let (mem, q) = self.tx(index)?;
                q.ring.needs_notify(mem)
            }
        };
        if needs.map_err(ring_err(index))? {
            self.stats.notifications += 1;
            self.transport.write32(reg::QUEUE_NOTIFY, u32::from(index));
        }
        Ok(())
    }

    /// Copies the next message of receive queue `index` into `out` and reposts its buffer.
    /// `Ok(false)`: nothing arrived.
    pub(super) fn receive(&mut self, index: u16, out: &mut Vec<u8>) -> Result<bool, DriverError> {
        loop {
            let (mem, q) = self.rx(index)?;
            let Some(used) = q.ring.pop_used(mem).map_err(ring_err(index))? else {
                return Ok(false);
            };
            let addr = q.buffer_of[usize::from(used.head)];
            if used.len == 0 {
                // The device refused the buffer (it judged the chain bad): post it again.
                self.stats.refused_buffers += 1;
                self.post_rx(index, addr)?;
                self.kick(index)?;
                continue;
            }
            out.clear();
            out.resize(used.len as usize, 0);
            self.mem.read(addr, out).map_err(ring_err(index))?;
            // Nothing stays in the shared window once it has been taken in.
            self.mem.clear(addr, out.len()).map_err(ring_err(index))?;
            self.post_rx(index, addr)?;
            self.kick(index)?;
            self.stats.received += 1;
            return Ok(true);
        }
    }

    pub(super) fn malformed(&mut self, queue: u16, source: WireError) -> DriverError {
        self.stats.malformed += 1;
        DriverError::Malformed { queue, source }
    }

    /// The next control command, decoded from `scratch` (which it borrows: model chunks are
    /// not copied twice).
    pub fn poll_command<'b>(
        &mut self,
        scratch: &'b mut Vec<u8>,
    ) -> Result<Option<ControlCommand<'b>>, DriverError> {
        if !self.receive(queue::CONTROL_CMD, scratch)? {
            return Ok(None);
        }
        match ControlCommand::decode(scratch) {
            Ok(c) => Ok(Some(c)),
            Err(e) => {
                self.stats.malformed += 1;
                Err(DriverError::Malformed {
                    queue: queue::CONTROL_CMD,
                    source: e,
                })
            }
        }
    }

    /// The next request.
    pub fn poll_request(
        &mut self,
        scratch: &mut Vec<u8>,
    ) -> Result<Option<RequestMsg>, DriverError> {
        if !self.receive(queue::REQUEST, scratch)? {
            return Ok(None);
        }
        RequestMsg::decode(scratch)
            .map(Some)
            .map_err(|e| self.malformed(queue::REQUEST, e))
    }

    /// Takes back (and clears) the buffers the device finished reading on queue `index`.
    pub(super) fn reclaim(&mut self, index: u16) -> Result<(), DriverError> {
        let (mem, q) = self.tx(index)?;
        while let Some(used) = q.ring.pop_used(mem).map_err(ring_err(index))? {
            let (addr, len) = q.in_flight[usize::from(used.head)];
            mem.clear(addr, len as usize).map_err(ring_err(index))?;
            q.free.push(addr);
            if let Some(returned) = q.returned.as_mut() {
                returned.push(addr);
            }
        }
        Ok(())
    }

    /// Sends `frame` on transmit queue `index`; `Ok(None)` if every buffer is still with the
    /// device, else the buffer it went in.
    pub(super) fn transmit(
        &mut self,
        index: u16,
        frame: &[u8],
    ) -> Result<Option<u64>, DriverError> {
        self.reclaim(index)?;
        let (mem, q) = self.tx(index)?;
        if frame.len() > q.buffer_bytes as usize {
            return Err(DriverError::TooBig {
                queue: index,
                len: frame.len(),
                max: q.buffer_bytes,
            });
        }
        let Some(addr) = q.free.pop() else {
            return Ok(None);
        };
        mem.write(addr, frame).map_err(ring_err(index))?;
        // Bounded by buffer_bytes (checked above).
        let len = frame.len() as u32;
        let head = q
            .ring
            .add(
                mem,
                &[Buffer {
                    addr,
                    len,
                    device_writable: false,
                }],
            )
            .map_err(ring_err(index))?;
        q.in_flight[usize::from(head)] = (addr, len);
        self.stats.sent += 1;
        self.kick(index)?;
        Ok(Some(addr))
    }

    /// Sends a control reply. `Ok(false)`: every transmit buffer is still with the device.
    pub fn send_reply(
        &mut self,
        reply: &ControlReply,
        scratch: &mut Vec<u8>,
    ) -> Result<bool, DriverError> {
        scratch.clear();
        reply.encode(scratch).map_err(DriverError::Encode)?;
        Ok(self.transmit(queue::CONTROL_REPLY, scratch)?.is_some())
    }

    /// Sends a response. `Ok(false)`: every transmit buffer is still with the device.
    pub fn send_response(
        &mut self,
        response: &ResponseMsg,
        scratch: &mut Vec<u8>,
    ) -> Result<bool, DriverError> {
        scratch.clear();
        response.encode(scratch).map_err(DriverError::Encode)?;
        Ok(self.transmit(queue::RESPONSE, scratch)?.is_some())
    }

    /// The next budget change, if the memory queues are live and one arrived.
    pub fn poll_budget(
        &mut self,
        scratch: &mut Vec<u8>,
    ) -> Result<Option<BudgetChange>, DriverError> {
        if !self.memory_enabled() || !self.receive(queue::MEMORY_EVENT, scratch)? {
            return Ok(None);
        }
        match MemoryMsg::decode(scratch) {
            Ok(MemoryMsg::BudgetChange(b)) => Ok(Some(b)),
            Ok(MemoryMsg::Relinquish(_)) => Err(self.malformed(
                queue::MEMORY_EVENT,
                WireError::UnknownType(crate::wire::memory::msg_type::RELINQUISH_REPORT),
            )),
            Err(e) => Err(self.malformed(queue::MEMORY_EVENT, e)),
        }
    }

    /// Sends a relinquish report. `Ok(None)`: every report buffer is still with the device;
    /// else a ticket that [`LlmDriver::poll_released`] returns once the device released the
    /// ranges (it gives the buffer back only then).
    pub fn send_relinquish(
        &mut self,
        report: &RelinquishReport,
        scratch: &mut Vec<u8>,
    ) -> Result<Option<u64>, DriverError> {
        scratch.clear();
        MemoryMsg::Relinquish(report.clone())
            .encode(scratch)
            .map_err(DriverError::Encode)?;
        self.transmit(queue::MEMORY_REPORT, scratch)
    }

    /// The ticket of a relinquish report the device has finished with, oldest first.
    pub fn poll_released(&mut self) -> Result<Option<u64>, DriverError> {
        if !self.memory_enabled() {
            return Ok(None);
        }
        self.reclaim(queue::MEMORY_REPORT)?;
        let (_, q) = self.tx(queue::MEMORY_REPORT)?;
        Ok(q.returned.as_mut().and_then(|r| {
            if r.is_empty() {
                None
            } else {
                Some(r.remove(0))
            }
        }))
    }

    /// Asks for notifications on every queue before the caller sleeps. Returns `true` if
    /// something arrived meanwhile: poll again instead of sleeping.
    pub fn arm(&mut self) -> Result<bool, DriverError> {
        let mut pending = false;
        let mem = &self.mem;
        let events = self.mem_events.as_mut().map(|q| (queue::MEMORY_EVENT, q));
        for (index, q) in [
            (queue::CONTROL_CMD, &mut self.commands),
            (queue::REQUEST, &mut self.requests),
        ]
        .into_iter()
        .chain(events)
        {
            pending |= q.ring.arm(mem).map_err(ring_err(index))?;
        }
        // Transmit queues matter when a sender waits for a free buffer, and for reports
        // when one is still with the device (its return means the memory was released).
        let reports = self.mem_reports.as_mut().map(|q| (queue::MEMORY_REPORT, q));
        for (index, q) in [
            (queue::CONTROL_REPLY, &mut self.replies),
            (queue::RESPONSE, &mut self.responses),
        ]
        .into_iter()
        .chain(reports)
        {
            let waiting = q.free.is_empty() || (q.returned.is_some() && q.ring.outstanding() > 0);
            if waiting {
                pending |= q.ring.arm(mem).map_err(ring_err(index))?;
            }
        }
        Ok(pending)
    }
}
