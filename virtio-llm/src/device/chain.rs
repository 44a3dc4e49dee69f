//! Checking a descriptor chain the guest offered, before the device touches any byte of it.
//!
//! Every buffer must lie inside the shared window, be non-empty, and go in the direction
//! the queue carries (device-readable on guest → host queues, device-writable on host →
//! guest queues); chains are at most `MAX_CHAIN_DESCRIPTORS` long (a looping chain is cut
//! off by virtio-queue and then fails this check) and at most `MAX_MESSAGE_BYTES` in all.
//! A bad chain is completed with length 0 and reported; other memory is never touched.

use crate::spec::{MAX_CHAIN_DESCRIPTORS, MAX_MESSAGE_BYTES};
use std::vec::Vec;
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemoryBackend;

/// Which way a queue's buffers go, from the device's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The device reads them (guest → host messages).
    DeviceReads,
    /// The device writes them (host → guest messages).
    DeviceWrites,
}

/// The guest-physical range buffers must lie in.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub base: u64,
    pub size: u64,
}

/// A chain that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedChain {
    pub head: u16,
    /// (guest-physical address, length) of each buffer, in order.
    pub buffers: Vec<(u64, u32)>,
    pub total: u64,
}

/// Why a chain was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("chain {head} has more than {max} descriptors (or loops)")]
    TooLong { head: u16, max: usize },
    #[error("chain {head}: descriptor {index} has length 0")]
    ZeroLength { head: u16, index: usize },
    #[error("chain {head}: buffer {addr:#x}+{len:#x} is outside the shared window")]
    OutsideWindow { head: u16, addr: u64, len: u32 },
    #[error("chain {head}: descriptor {index} goes the wrong way for this queue")]
    WrongDirection { head: u16, index: usize },
    #[error("chain {head} holds {total} bytes, more than the {max}-byte message limit")]
    Oversized { head: u16, total: u64, max: usize },
}

/// Checks `chain` for a queue whose buffers go `direction` within `window`.
pub fn check_chain<M>(
    chain: DescriptorChain<M>,
    window: Window,
    direction: Direction,
) -> Result<CheckedChain, ChainError>
where
    M: core::ops::Deref,
    M::Target: GuestMemoryBackend,
{
    let head = chain.head_index();
    let mut buffers = Vec::new();
    let mut total = 0u64;
    let mut cut_off = false;
    for (index, d) in chain.enumerate() {
        // virtio-queue stops a chain after as many descriptors as the queue has: if the
        // last one it gave still links onwards, the chain loops (or is longer than the
        // queue), which is refused like an over-long chain.
        cut_off = d.has_next();
        if index >= MAX_CHAIN_DESCRIPTORS {
            return Err(ChainError::TooLong {
                head,
                max: MAX_CHAIN_DESCRIPTORS,
            });
        }
        let (addr, len) = (d.addr().0, d.len());
        if len == 0 {
            return Err(ChainError::ZeroLength { head, index });
        }
        let end = addr.checked_add(u64::from(len));
        if addr < window.base || end.is_none_or(|e| e > window.base + window.size) {
            return Err(ChainError::OutsideWindow { head, addr, len });
        }
        if d.is_write_only() != (direction == Direction::DeviceWrites) {
            return Err(ChainError::WrongDirection { head, index });
        }
        total += u64::from(len);
        if total > MAX_MESSAGE_BYTES as u64 {
            return Err(ChainError::Oversized {
                head,
                total,
                max: MAX_MESSAGE_BYTES,
            });
        }
        buffers.push((addr, len));
    }
    if cut_off {
        return Err(ChainError::TooLong {
            head,
            max: MAX_CHAIN_DESCRIPTORS,
        });
    }
    Ok(CheckedChain {
        head,
        buffers,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    const WINDOW: Window = Window {
        base: 0x10_0000,
        size: 0x10_0000,
    };
    const WRITE: u16 = 2;
    const NEXT: u16 = 1;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    fn check(descs: &[RawDescriptor], dir: Direction) -> Result<CheckedChain, ChainError> {
        let m = mem();
        let q = MockSplitQueue::new(&m, 256);
        let chain = q.build_desc_chain(descs).unwrap();
        check_chain(chain, WINDOW, dir)
    }

    #[test]
    fn a_good_chain_passes() {
        let c = check(
            &[desc(0x10_0000, 16, 0), desc(0x10_1000, 32, 0)],
            Direction::DeviceReads,
        )
        .unwrap();
        assert_eq!(c.buffers, [(0x10_0000, 16), (0x10_1000, 32)]);
        assert_eq!(c.total, 48);
    }

    #[test]
    fn bad_chains_are_refused_with_their_reason() {
        use ChainError::*;
        let reads = Direction::DeviceReads;
        assert!(matches!(
            check(&[desc(0x1000, 16, 0)], reads),
            Err(OutsideWindow { .. })
        ));
        assert!(matches!(
            check(&[desc(0x1f_fff0, 32, 0)], reads),
            Err(OutsideWindow { .. })
        ));
        assert!(matches!(
            check(&[desc(u64::MAX - 4, 16, 0)], reads),
            Err(OutsideWindow { .. })
        ));
        assert!(matches!(
            check(&[desc(0x10_0000, 0, 0)], reads),
            Err(ZeroLength { index: 0, .. })
        ));
        assert!(matches!(
            check(&[desc(0x10_0000, 16, 0), desc(0x10_1000, 16, WRITE)], reads),
            Err(WrongDirection { index: 1, .. })
        ));
        assert!(matches!(
            check(&[desc(0x10_0000, 16, 0)], Direction::DeviceWrites),
            Err(WrongDirection { index: 0, .. })
        ));
        let big = (MAX_MESSAGE_BYTES / 2 + 8) as u32;
        assert!(matches!(
            check(&[desc(0x10_0000, big, 0), desc(0x10_0000, big, 0)], reads),
            Err(Oversized { .. }) | Err(OutsideWindow { .. })
        ));
        let long: Vec<_> = (0..MAX_CHAIN_DESCRIPTORS as u64 + 1)
            .map(|i| desc(0x10_0000 + 64 * i, 8, 0))
            .collect();
        assert!(matches!(check(&long, reads), Err(TooLong { .. })));
    }

    #[test]
    fn a_looping_chain_is_cut_off_and_refused() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        // Descriptor 0 points at itself.
        let looping = RawDescriptor::from(SplitDescriptor::new(0x10_0000, 8, NEXT, 0));
        q.add_desc_chains(&[looping], 0).unwrap();
        let mut queue: virtio_queue::Queue = q.create_queue().unwrap();
        let chain = virtio_queue::QueueT::pop_descriptor_chain(&mut queue, &m).unwrap();
        let r = check_chain(chain, WINDOW, Direction::DeviceReads);
        assert!(matches!(r, Err(ChainError::TooLong { .. })), "{r:?}");
    }
}
