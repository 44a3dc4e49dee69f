//! The driver's view of one split virtqueue.

use super::{DriverMemory, RingError};
use crate::spec::MAX_CHAIN_DESCRIPTORS;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{Ordering, fence};

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
/// Used-ring flag: the device does not want notifications (when event indices are off).
const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;

/// One buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub addr: u64,
    pub len: u32,
    /// The device writes this buffer (otherwise it only reads it).
    pub device_writable: bool,
}

/// A chain the device finished with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    /// The chain's head descriptor (as returned by [`SplitRing::add`]).
    pub head: u16,
    /// Bytes the device wrote into the chain's writable buffers.
    pub len: u32,
}

/// A posted chain, as the driver itself recorded it: the descriptor table is shared
/// memory, so the driver never trusts links read back from it.
#[derive(Clone)]
struct Outstanding {
    ids: Vec<u16>,
    writable: u32,
}

/// A split virtqueue driven from the guest side.
pub struct SplitRing {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    free: Vec<u16>,
    outstanding: Vec<Option<Outstanding>>,
    n_outstanding: usize,
    next_avail: u16,
    last_used: u16,
    /// VIRTIO_F_EVENT_IDX was negotiated: notifications follow the event indices.
    event_idx: bool,
    /// The available index when the driver last decided whether to notify.
    kick_base: u16,
}

fn check_align(what: &'static str, addr: u64, align: u64) -> Result<(), RingError> {
    if addr.is_multiple_of(align) {
        Ok(())
    } else {
        Err(RingError::Misaligned { what, addr, align })
    }
}

impl SplitRing {
    /// Sets up a ring of `size` entries at the given addresses and clears it.
    pub fn new(
        mem: &impl DriverMemory,
        size: u16,
        desc: u64,
        avail: u64,
        used: u64,
    ) -> Result<Self, RingError> {
        if size == 0 || !size.is_power_of_two() || size > 32768 {
            return Err(RingError::BadQueueSize(size));
        }
        check_align("descriptor table", desc, 16)?;
        check_align("available ring", avail, 2)?;
        check_align("used ring", used, 4)?;
        let n = usize::from(size);
        mem.write(desc, &vec![0; 16 * n])?;
        // Both rings end with their event index (used_event, avail_event).
        mem.write(avail, &vec![0; 6 + 2 * n])?;
        mem.write(used, &vec![0; 6 + 8 * n])?;
        Ok(Self {
            size,
            desc,
            avail,
            used,
            free: (0..size).rev().collect(),
            outstanding: vec![None; n],
            n_outstanding: 0,
            next_avail: 0,
            last_used: 0,
            event_idx: false,
            kick_base: 0,
        })
    }

    /// Uses the event indices (VIRTIO_F_EVENT_IDX) to decide notifications both ways.
    pub fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    /// Whether the device wants a notification for what was made available since the last
    /// call (virtio 1.2 §2.7.10): with event indices, only if the available index passed
    /// the device's `avail_event`; without, unless the device set `VIRTQ_USED_F_NO_NOTIFY`.
    pub fn needs_notify(&mut self, mem: &impl DriverMemory) -> Result<bool, RingError> {
        let (new, old) = (self.next_avail, self.kick_base);
        if new == old {
            return Ok(false);
        }
        self.kick_base = new;
        // The published index must be visible before the device's event index is read,
        // or both sides could decide the other is awake.
        fence(Ordering::SeqCst);
        if self.event_idx {
            let mut e = [0u8; 2];
            mem.read(self.used + 4 + 8 * u64::from(self.size), &mut e)?;
            let event = u16::from_le_bytes(e);
            Ok(new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old))
        } else {
            let mut f = [0u8; 2];
            mem.read(self.used, &mut f)?;
            Ok(u16::from_le_bytes(f) & VIRTQ_USED_F_NO_NOTIFY == 0)
        }
    }

    /// Asks the device to notify when the next buffer is used (before the driver sleeps).
    /// Returns `true` if one already was: poll instead of sleeping.
    pub fn arm(&mut self, mem: &impl DriverMemory) -> Result<bool, RingError> {
        if self.event_idx {
            mem.write(
                self.avail + 4 + 2 * u64::from(self.size),
                &self.last_used.to_le_bytes(),
            )?;
        }
        fence(Ordering::SeqCst);
        self.has_used(mem)
    }

    /// Whether the device has returned a chain not yet taken with [`SplitRing::pop_used`].
    pub fn has_used(&self, mem: &impl DriverMemory) -> Result<bool, RingError> {
        let mut idx = [0u8; 2];
        mem.read(self.used + 2, &mut idx)?;
        Ok(u16::from_le_bytes(idx) != self.last_used)
    }

    /// Chains posted and not yet returned.
    pub fn outstanding(&self) -> usize {
        self.n_outstanding
    }

    /// Free descriptors left.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Posts `chain` and makes it available to the device; returns its head.
    pub fn add(&mut self, mem: &impl DriverMemory, chain: &[Buffer]) -> Result<u16, RingError> {
        if chain.is_empty() || chain.len() > MAX_CHAIN_DESCRIPTORS {
            return Err(RingError::BadChainLength {
                len: chain.len(),
                max: MAX_CHAIN_DESCRIPTORS,
            });
        }
        if self.free.len() < chain.len() {
            return Err(RingError::NoFreeDescriptors {
                needed: chain.len(),
            });
        }
        let ids: Vec<u16> = (0..chain.len()).filter_map(|_| self.free.pop()).collect();
        let mut writable = 0u32;
        for (k, (buf, &id)) in chain.iter().zip(&ids).enumerate() {
            let next = ids.get(k + 1).copied();
            let flags = if next.is_some() { DESC_F_NEXT } else { 0 }
                | if buf.device_writable { DESC_F_WRITE } else { 0 };
            if buf.device_writable {
                writable = writable.saturating_add(buf.len);
            }
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&buf.addr.to_le_bytes());
            d[8..12].copy_from_slice(&buf.len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.unwrap_or(0).to_le_bytes());
            mem.write(self.desc + 16 * u64::from(id), &d)?;
        }
        let head = ids[0];
        self.outstanding[usize::from(head)] = Some(Outstanding { ids, writable });
        self.n_outstanding += 1;
        let slot = u64::from(self.next_avail % self.size);
        mem.write(self.avail + 4 + 2 * slot, &head.to_le_bytes())?;
        self.next_avail = self.next_avail.wrapping_add(1);
        // The entry must be visible before the index that publishes it.
        fence(Ordering::Release);
        mem.write(self.avail + 2, &self.next_avail.to_le_bytes())?;
        Ok(head)
    }

    /// Takes the next completed chain, if any, after checking what the device wrote.
    pub fn pop_used(&mut self, mem: &impl DriverMemory) -> Result<Option<Used>, RingError> {
        let mut idx = [0u8; 2];
        mem.read(self.used + 2, &mut idx)?;
        let device_idx = u16::from_le_bytes(idx);
        let advance = device_idx.wrapping_sub(self.last_used);
        if advance == 0 {
            return Ok(None);
        }
        if usize::from(advance) > self.n_outstanding {
            return Err(RingError::UsedIndexJump {
                advance,
                outstanding: self.n_outstanding,
            });
        }
        // Read the entry only after seeing the index that published it.
        fence(Ordering::Acquire);
        let slot = u64::from(self.last_used % self.size);
        let mut e = [0u8; 8];
        mem.read(self.used + 4 + 8 * slot, &mut e)?;
        let id = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
        let len = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let index = usize::try_from(id).map_err(|_| RingError::BogusUsedId { id })?;
        let writable = self
            .outstanding
            .get(index)
            .and_then(Option::as_ref)
            .ok_or(RingError::BogusUsedId { id })?
            .writable;
        // Check before taking the record: a refused entry must leave the chain outstanding
        // (a device that corrects the entry can still complete it), never leak it.
        if len > writable {
            return Err(RingError::UsedLenTooLarge {
                id,
                len,
                capacity: writable,
            });
        }
        let o = self.outstanding[index]
            .take()
            .ok_or(RingError::BogusUsedId { id })?;
        self.last_used = self.last_used.wrapping_add(1);
        self.n_outstanding -= 1;
        self.free.extend(o.ids.iter().rev());
        Ok(Some(Used {
            head: id as u16,
            len,
        }))
    }
}
