//! Checking a descriptor chain the guest offered, before the device touches any byte of it.
//!
//! The device walks the descriptor table itself rather than through virtio-queue's chain
//! iterator, which would follow indirect tables (a feature never offered) before anything
//! could check them. Every descriptor must be inside the queue, plain (no INDIRECT), and its
//! buffer inside the shared window, non-empty, and going the direction the queue carries
//! (device-readable on guest → host queues, device-writable on host → guest queues); chains
//! are at most `MAX_CHAIN_DESCRIPTORS` long (so a loop is refused) and at most
//! `MAX_MESSAGE_BYTES` in all. A bad chain is completed with length 0 and reported; other
//! memory is never touched.

use crate::spec::{MAX_CHAIN_DESCRIPTORS, MAX_MESSAGE_BYTES};
use std::vec::Vec;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const VIRTQ_DESC_F_INDIRECT: u16 = 4;

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

/// Where a queue's descriptor table is and how many entries it has.
#[derive(Clone, Copy, Debug)]
pub struct DescTable {
    pub addr: u64,
    pub size: u16,
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
    #[error("chain {head}: descriptor {index} refers to an indirect table (not negotiated)")]
    Indirect { head: u16, index: usize },
    #[error("chain {head}: descriptor id {id} is outside the queue of {size} entries")]
    BadDescriptorId { head: u16, id: u16, size: u16 },
    #[error("chain {head}: the descriptor table at {addr:#x} is not in reachable memory")]
    TableUnreachable { head: u16, addr: u64 },
}

/// Checks the chain starting at descriptor `head` of `table`, for a queue whose buffers go
/// `direction` within `window`. Reads only the table's own entries.
pub fn check_chain<M: GuestMemoryBackend>(
    mem: &M,
    table: DescTable,
    head: u16,
    window: Window,
    direction: Direction,
) -> Result<CheckedChain, ChainError> {
    let mut buffers = Vec::new();
    let mut total = 0u64;
    let mut id = head;
    for index in 0.. {
        if index >= MAX_CHAIN_DESCRIPTORS {
            return Err(ChainError::TooLong {
                head,
                max: MAX_CHAIN_DESCRIPTORS,
            });
        }
        if id >= table.size {
            return Err(ChainError::BadDescriptorId {
                head,
                id,
                size: table.size,
            });
        }
        // The table's address is the guest's: near the top of the address space the entry's
        // address would wrap around to low memory.
        let at =
            table
                .addr
                .checked_add(16 * u64::from(id))
                .ok_or(ChainError::TableUnreachable {
                    head,
                    addr: table.addr,
                })?;
        let mut raw = [0u8; 16];
        mem.read_slice(&mut raw, GuestAddress(at))
            .map_err(|_| ChainError::TableUnreachable { head, addr: at })?;
        let addr = u64::from_le_bytes([
            raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7],
        ]);
        let len = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
        let flags = u16::from_le_bytes([raw[12], raw[13]]);
        let next = u16::from_le_bytes([raw[14], raw[15]]);
        if flags & VIRTQ_DESC_F_INDIRECT != 0 {
            return Err(ChainError::Indirect { head, index });
        }
        if len == 0 {
            return Err(ChainError::ZeroLength { head, index });
        }
        let end = addr.checked_add(u64::from(len));
        let window_end = window.base.saturating_add(window.size);
        if addr < window.base || end.is_none_or(|e| e > window_end) {
            return Err(ChainError::OutsideWindow { head, addr, len });
        }
        let writable = flags & VIRTQ_DESC_F_WRITE != 0;
        if writable != (direction == Direction::DeviceWrites) {
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
        if flags & VIRTQ_DESC_F_NEXT == 0 {
            break;
        }
        id = next;
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
        let table = DescTable {
            addr: q.desc_table_addr().0,
            size: 256,
        };
        check_chain(&m, table, chain.head_index(), WINDOW, dir)
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
        let table = DescTable {
            addr: q.desc_table_addr().0,
            size: 16,
        };
        let r = check_chain(&m, table, 0, WINDOW, Direction::DeviceReads);
        assert!(matches!(r, Err(ChainError::TooLong { .. })), "{r:?}");
    }

    #[test]
    fn indirect_tables_and_ids_outside_the_queue_are_refused_unread() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        // An indirect table outside the window: refused without following it.
        let indirect = RawDescriptor::from(SplitDescriptor::new(0x1000, 16, 4, 0));
        let bad_next = RawDescriptor::from(SplitDescriptor::new(0x10_0000, 8, NEXT, 99));
        q.add_desc_chains(&[indirect], 0).unwrap();
        q.add_desc_chains(&[bad_next], 1).unwrap();
        let table = DescTable {
            addr: q.desc_table_addr().0,
            size: 16,
        };
        let dir = Direction::DeviceReads;
        assert_eq!(
            check_chain(&m, table, 0, WINDOW, dir),
            Err(ChainError::Indirect { head: 0, index: 0 })
        );
        assert_eq!(
            check_chain(&m, table, 1, WINDOW, dir),
            Err(ChainError::BadDescriptorId {
                head: 1,
                id: 99,
                size: 16
            })
        );
        assert!(matches!(
            check_chain(&m, table, 16, WINDOW, dir),
            Err(ChainError::BadDescriptorId { id: 16, .. })
        ));
        let far = DescTable {
            addr: 0x7fff_f000_0000,
            size: 16,
        };
        assert!(matches!(
            check_chain(&m, far, 0, WINDOW, dir),
            Err(ChainError::TableUnreachable { .. })
        ));
    }

    #[test]
    fn a_table_at_the_top_of_the_address_space_is_refused_not_wrapped() {
        let m = mem();
        let top = DescTable {
            addr: u64::MAX - 15,
            size: 16,
        };
        for head in [0, 1, 15] {
            assert!(matches!(
                check_chain(&m, top, head, WINDOW, Direction::DeviceReads),
                Err(ChainError::TableUnreachable { .. })
            ));
        }
    }
}
