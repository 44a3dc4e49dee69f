//! Where the driver puts its rings and bounce buffers inside the shared window.
//!
//! Every buffer is one descriptor; its size is the largest message its queue carries, so a
//! message never needs a scattered chain. Host → guest queues hold posted receive buffers;
//! guest → host queues draw transmit buffers from a pool.

use crate::spec::{
    HEADER_BYTES, MAX_ECHO_BYTES, MAX_KV_BLOCK_BYTES, MAX_MESSAGE_BYTES, MAX_PROMPT_TEXT_BYTES,
    MAX_PROMPT_TOKENS, MAX_RELINQUISH_RANGES, queue,
};

/// One queue's share of the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueuePlan {
    /// Ring entries (a power of two, at most `queue::MAX_SIZE`).
    pub size: u16,
    /// Buffers: posted (receive queues) or pooled (transmit queues).
    pub buffers: u16,
    /// Bytes of each buffer.
    pub buffer_bytes: u32,
}

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

/// Room for a message's fixed fields around its variable part.
const FIXED_FIELDS: usize = 4096;

/// The six queues of protocol version 1, by queue index (the last two only with
/// `feature::MEMORY`).
pub const PLANS: [QueuePlan; 6] = [
    // ctrl-cmd: model chunks are the largest messages; 8 in flight keep the stream moving.
    QueuePlan {
        size: 16,
        buffers: 8,
        buffer_bytes: MAX_MESSAGE_BYTES as u32,
    },
    // ctrl-reply: acks and stats are tens of bytes; a sealed KV block is the largest.
    QueuePlan {
        size: 16,
        buffers: 16,
        buffer_bytes: (MAX_KV_BLOCK_BYTES + FIXED_FIELDS) as u32,
    },
    // requestq: the longest prompt (text or tokens) or echo.
    QueuePlan {
        size: 64,
        buffers: 16,
        buffer_bytes: (max(
            max(MAX_PROMPT_TEXT_BYTES, 4 * MAX_PROMPT_TOKENS),
            MAX_ECHO_BYTES,
        ) + FIXED_FIELDS) as u32,
    },
    // responseq: token batches are small; echo replies are the largest.
    QueuePlan {
        size: 64,
        buffers: 32,
        buffer_bytes: (MAX_ECHO_BYTES + FIXED_FIELDS) as u32,
    },
    // mem-event: budget changes, 24 bytes each.
    QueuePlan {
        size: 16,
        buffers: 8,
        buffer_bytes: 4096,
    },
    // mem-report: the largest report; the device keeps each until it released the ranges.
    QueuePlan {
        size: 16,
        buffers: 4,
        buffer_bytes: (HEADER_BYTES + 16 + 16 * MAX_RELINQUISH_RANGES) as u32,
    },
];

/// Bytes reserved for each queue's rings (descriptor table, available and used rings of
/// `queue::MAX_SIZE` entries fit in 16 KiB).
const RING_AREA: u64 = 16 << 10;
/// Buffers start after the ring areas of all queues, page-aligned.
const BUFFERS_OFFSET: u64 = RING_AREA * queue::COUNT as u64;

/// Guest-physical addresses of one queue's rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingAddrs {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

/// The rings of queue `index` in a window at `base`.
pub fn ring_addrs(base: u64, index: u16) -> RingAddrs {
    let start = base + RING_AREA * u64::from(index);
    let size = u64::from(queue::MAX_SIZE);
    let desc = start;
    let avail = desc + 16 * size;
    // The used ring must be 4-byte aligned; round up past the available ring.
    let used = (avail + 6 + 2 * size).next_multiple_of(4);
    RingAddrs { desc, avail, used }
}

/// The first buffer of queue `index` in a window at `base`; its buffers follow each other.
pub fn buffers_start(base: u64, index: u16) -> u64 {
    let before: u64 = PLANS[..usize::from(index)]
        .iter()
        .map(|p| u64::from(p.buffers) * u64::from(p.buffer_bytes).next_multiple_of(4096))
        .sum();
    base + BUFFERS_OFFSET + before
}

/// Bytes of the window the plan uses.
pub fn window_bytes_needed() -> u64 {
    buffers_start(0, PLANS.len() as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::layout::SHARED_WINDOW_SIZE;

    #[test]
    fn the_plan_fits_the_window_and_nothing_overlaps() {
        // The last page stays spare (memory probes expose a canary there).
        assert!(window_bytes_needed() <= SHARED_WINDOW_SIZE - 4096);
        for i in 0..queue::COUNT {
            let r = ring_addrs(0, i);
            assert!(r.used + 6 + 8 * u64::from(queue::MAX_SIZE) <= ring_addrs(0, i + 1).desc);
            assert!(r.desc.is_multiple_of(16) && r.used.is_multiple_of(4));
        }
        for (i, p) in PLANS.iter().enumerate() {
            assert!(p.size.is_power_of_two() && p.size <= queue::MAX_SIZE);
            assert!(p.buffers <= p.size);
            assert!(buffers_start(0, i as u16) >= BUFFERS_OFFSET);
        }
        assert!(PLANS[queue::REQUEST as usize].buffer_bytes as usize >= MAX_ECHO_BYTES + 24);
    }
}
