//! The host device receiving hostile input from the guest.
//!
//! 1. The raw input is handed to every decoder of a driver → device queue (`ControlReply`,
//!    `ResponseMsg`, `MemoryMsg`), as is and with its header fixed up; whatever decodes must
//!    re-encode to exactly the same bytes.
//! 2. The input then plays a hostile driver: it sets up the six queues (sizes, ring
//!    addresses, readiness), writes descriptor tables (addresses inside and outside the
//!    shared window, any length, NEXT loops, WRITE bits on the wrong queues), available rings
//!    and buffer bytes, and in between calls the real `LlmDevice` (`recv_reply`,
//!    `recv_response`, `recv_relinquish`, `recv_frame`, `send_frame`, `arm`).
//!
//! Checked: no panic; the device never touches guest memory outside the shared window
//! (guard areas around it stay zero); a chain that passed the device's checks is always
//! accessible (`DeviceError::Memory` never happens when the window is mapped); the device's
//! counters move as its results say; accepted messages re-encode.
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use virtio_llm::device::chain::Window;
use virtio_llm::device::{DeviceError, DeviceStats, LlmDevice, NotifyDriver};
use virtio_llm::driver::layout::ring_addrs;
use virtio_llm::mmio::F_EVENT_IDX;
use virtio_llm::spec::{feature, layout::SHARED_WINDOW_BASE, queue};
use virtio_llm_fuzz as common;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The shared window the device checks chains against: big enough for a single descriptor
/// to exceed `MAX_MESSAGE_BYTES`, small enough to map per input (pages are only touched
/// where the input writes).
const WINDOW_BASE: u64 = SHARED_WINDOW_BASE;
const WINDOW_SIZE: u64 = 2 << 20;
const WINDOW_END: u64 = WINDOW_BASE + WINDOW_SIZE;
/// Mapped memory just outside the window on both sides: reachable by the device's memory
/// object, so only the window check keeps the device out of it.
const GUARD: u64 = 64 << 10;
const MEM_BASE: u64 = WINDOW_BASE - GUARD;
const MEM_SIZE: u64 = WINDOW_SIZE + 2 * GUARD;
/// Rings of queue q at `ring_addrs(WINDOW_BASE, q)` (16 KiB each); buffers after them.
const DATA_START: u64 = WINDOW_BASE + 6 * (16 << 10);

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;

struct Notes(AtomicU64);

impl NotifyDriver for Notes {
    fn notify(&self, _queue: u16) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// The harness's (the driver's) view of one queue.
#[derive(Clone, Copy)]
struct Q {
    size: u16,
    desc: u64,
    avail: u64,
    avail_idx: u16,
    next_slot: u16,
}

struct Harness {
    mem: GuestMemoryMmap,
    qs: Vec<Q>,
    /// Bump allocator for buffer bytes in the data area.
    cursor: u64,
    /// Every ring lies in the window, so the guard areas must stay untouched.
    rings_in_window: bool,
}

impl Harness {
    /// Ring addresses may be hostile (any u64), so callers compute addresses with wrapping
    /// arithmetic and writes that miss the memory are dropped.
    fn write(&self, addr: u64, bytes: &[u8]) {
        // Writes the harness makes stay in the window (hostile ring addresses aside).
        let _ = self.mem.write_slice(bytes, GuestAddress(addr));
    }

    fn q(&self, index: u8) -> Option<(usize, Q)> {
        let i = usize::from(index) % self.qs.len().max(1);
        self.qs.get(i).map(|q| (i, *q))
    }

    /// Places `bytes` in the data area and returns their address.
    fn alloc(&mut self, bytes: &[u8]) -> u64 {
        let len = bytes.len() as u64;
        if self.cursor + len > WINDOW_END {
            self.cursor = DATA_START;
        }
        let at = self.cursor;
        self.write(at, &bytes[..len.min(WINDOW_END - at) as usize]);
        self.cursor = (at + len).next_multiple_of(8);
        at
    }

    fn write_desc(&self, q: &Q, slot: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.write(q.desc.wrapping_add(16 * u64::from(slot)), &d);
    }

    fn push_avail(&mut self, i: usize, head: u16) {
        let q = self.qs[i];
        let slot = u64::from(q.avail_idx % q.size);
        self.write(q.avail.wrapping_add(4 + 2 * slot), &head.to_le_bytes());
        let idx = q.avail_idx.wrapping_add(1);
        self.write(q.avail.wrapping_add(2), &idx.to_le_bytes());
        self.qs[i].avail_idx = idx;
    }
}

/// A buffer address: mostly in the data area, sometimes anywhere in the window, straddling
/// its edges, in the guard areas or anywhere at all.
fn addr(u: &mut Unstructured<'_>) -> Result<u64> {
    Ok(match u.int_in_range(0u8..=15)? {
        0..=8 => DATA_START + u64::from(u.arbitrary::<u32>()?) % (WINDOW_END - DATA_START),
        9 | 10 => WINDOW_BASE + u64::from(u.arbitrary::<u32>()?) % WINDOW_SIZE,
        11 => WINDOW_END.wrapping_add_signed(i64::from(u.arbitrary::<i16>()?)),
        12 => WINDOW_BASE.wrapping_add_signed(i64::from(u.arbitrary::<i16>()?)),
        13 => MEM_BASE + u64::from(u.arbitrary::<u16>()?) % GUARD,
        14 => WINDOW_END + u64::from(u.arbitrary::<u16>()?) % GUARD,
        _ => u.arbitrary()?,
    })
}

fn len(u: &mut Unstructured<'_>) -> Result<u32> {
    Ok(match u.int_in_range(0u8..=7)? {
        0..=4 => u32::from(u.arbitrary::<u16>()?) % 8192,
        5 => virtio_llm::spec::MAX_MESSAGE_BYTES as u32 + u.int_in_range(0..=2)? - 1,
        _ => u.arbitrary()?,
    })
}

fn setup(
    u: &mut Unstructured<'_>,
    mem: &GuestMemoryMmap,
) -> Result<(Harness, Vec<Option<Queue>>, u64)> {
    let mut features = 1 << feature::VERSION_1 | 1 << feature::ACCESS_PLATFORM;
    if u.arbitrary()? {
        features |= F_EVENT_IDX;
    }
    if u.ratio(1, 4)? {
        features |= 1 << feature::MEMORY;
    }
    let n = if u.ratio(7, 8)? {
        6
    } else {
        u.int_in_range(0..=8)?
    };
    let mut qs = Vec::new();
    let mut queues = Vec::new();
    let mut rings_in_window = true;
    for i in 0..n {
        let mut q = Queue::new(queue::MAX_SIZE).expect("256 is a valid queue size");
        // Sizes are powers of two up to 256 most of the time; others are ignored by
        // virtio-queue (the queue keeps its maximum size).
        let size: u16 = if u.ratio(7, 8)? {
            1 << u.int_in_range(0..=8)?
        } else {
            u.arbitrary()?
        };
        q.set_size(size);
        let std = ring_addrs(WINDOW_BASE, (i % 6) as u16);
        let (desc, avail, used) = match u.int_in_range(0u8..=9)? {
            0..=7 => (std.desc, std.avail, std.used),
            8 => {
                // Anywhere in the window with room for the largest rings.
                let mut at = || -> Result<u64> {
                    Ok(WINDOW_BASE + u64::from(u.arbitrary::<u32>()?) % (WINDOW_SIZE - 8192))
                };
                (at()? & !15, at()? & !1, at()? & !3)
            }
            _ => {
                rings_in_window = false;
                (u.arbitrary()?, u.arbitrary()?, u.arbitrary()?)
            }
        };
        // Misaligned addresses are ignored by virtio-queue (the defaults stay).
        q.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
        q.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
        q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
        q.set_ready(u.ratio(15, 16)?);
        if q.desc_table() != desc || q.avail_ring() != avail || q.used_ring() != used {
            rings_in_window = false;
        }
        qs.push(Q {
            size: q.size(),
            desc: q.desc_table(),
            avail: q.avail_ring(),
            avail_idx: 0,
            next_slot: 0,
        });
        queues.push(if u.ratio(15, 16)? { Some(q) } else { None });
    }
    let h = Harness {
        mem: mem.clone(),
        qs,
        cursor: DATA_START,
        rings_in_window,
    };
    Ok((h, queues, features))
}

/// The harness's expectation of how the counters move for one result.
fn check_stats<T>(
    before: DeviceStats,
    after: DeviceStats,
    r: &std::result::Result<T, DeviceError>,
    delivered: bool,
) {
    match r {
        Err(DeviceError::Memory { queue, addr }) => {
            panic!("queue {queue}: a checked chain's buffer at {addr:#x} was not accessible")
        }
        Err(DeviceError::Encode(e)) => panic!("send_frame cannot fail to encode: {e}"),
        Err(DeviceError::BadChain { .. } | DeviceError::BufferTooSmall { .. }) => {
            assert_eq!(after.refused_chains, before.refused_chains + 1);
            assert_eq!((after.sent, after.received), (before.sent, before.received));
        }
        Err(DeviceError::Malformed { .. }) => {
            assert_eq!(after.malformed_messages, before.malformed_messages + 1);
            assert_eq!(after.received, before.received + 1);
        }
        Err(DeviceError::NoSuchQueue(_)) => assert_eq!(after, before),
        // A ring error can come after the chain was counted (its used entry did not land).
        Err(DeviceError::Ring { .. }) => {}
        Ok(_) if delivered => {
            assert_eq!(
                after.sent + after.received,
                before.sent + before.received + 1
            );
            assert_eq!(after.refused_chains, before.refused_chains);
        }
        Ok(_) => assert_eq!(after, before),
    }
}

fn run(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(MEM_BASE), MEM_SIZE as usize)])
        .expect("mapping the test window");
    let (mut h, queues, features) = setup(&mut u, &mem)?;
    let notes = Arc::new(Notes(AtomicU64::new(0)));
    let window = Window {
        base: WINDOW_BASE,
        size: WINDOW_SIZE,
    };
    let mut dev = LlmDevice::new(mem, window, features, queues, notes.clone());

    let mut ops = 0;
    while !u.is_empty() && ops < 256 {
        ops += 1;
        let before = dev.stats();
        match u.int_in_range(0u8..=15)? {
            // A raw descriptor.
            0 | 1 => {
                let Some((_, q)) = h.q(u.arbitrary()?) else {
                    continue;
                };
                let slot = u.arbitrary::<u16>()? % q.size;
                let flags = if u.ratio(3, 4)? {
                    u.arbitrary::<u16>()? & (DESC_F_NEXT | DESC_F_WRITE | DESC_F_INDIRECT)
                } else {
                    u.arbitrary()?
                };
                let next = if u.ratio(3, 4)? {
                    u.arbitrary::<u16>()? % q.size
                } else {
                    u.arbitrary()?
                };
                let (a, l) = (addr(&mut u)?, len(&mut u)?);
                h.write_desc(&q, slot, a, l, flags, next);
            }
            // A head in the available ring.
            2 => {
                let Some((i, q)) = h.q(u.arbitrary()?) else {
                    continue;
                };
                let head = if u.ratio(7, 8)? {
                    u.arbitrary::<u16>()? % q.size
                } else {
                    u.arbitrary()?
                };
                h.push_avail(i, head);
            }
            // Any available index.
            3 => {
                let Some((i, q)) = h.q(u.arbitrary()?) else {
                    continue;
                };
                let idx: u16 = u.arbitrary()?;
                h.write(q.avail.wrapping_add(2), &idx.to_le_bytes());
                h.qs[i].avail_idx = idx;
            }
            // A well-formed chain: for a queue the device reads, holding a frame split over
            // up to four descriptors; for one it writes, empty buffers of some capacity.
            4..=6 => {
                let Some((i, q)) = h.q(u.arbitrary()?) else {
                    continue;
                };
                let device_writes = matches!(
                    i as u16,
                    queue::CONTROL_CMD | queue::REQUEST | queue::MEMORY_EVENT
                );
                let frame = if device_writes {
                    vec![0; usize::from(u.arbitrary::<u16>()?) % 8192]
                } else {
                    common::payload(&mut u, 8192, |u, out| {
                        let _ = match i as u16 {
                            queue::CONTROL_REPLY => common::reply(u)?.encode(out),
                            queue::RESPONSE => common::response(u)?.encode(out),
                            _ => common::memory_msg(u)?.encode(out),
                        };
                        Ok(())
                    })?
                };
                let parts = usize::from(u.int_in_range(1u8..=4)?).min(frame.len().max(1));
                let wrong_way = u.ratio(1, 16)?;
                let write = device_writes != wrong_way;
                let at = h.alloc(&frame);
                let chunk = frame.len().div_ceil(parts).max(1);
                let ids: Vec<u16> = (0..parts)
                    .map(|k| (q.next_slot.wrapping_add(k as u16)) % q.size)
                    .collect();
                for (k, &id) in ids.iter().enumerate() {
                    let start = (k * chunk).min(frame.len());
                    let end = ((k + 1) * chunk).min(frame.len());
                    let next = ids.get(k + 1).copied();
                    let flags = if next.is_some() { DESC_F_NEXT } else { 0 }
                        | if write { DESC_F_WRITE } else { 0 };
                    let l = if k + 1 == parts && frame.is_empty() {
                        0
                    } else {
                        end - start
                    };
                    h.write_desc(
                        &q,
                        id,
                        at + start as u64,
                        l as u32,
                        flags,
                        next.unwrap_or(0),
                    );
                }
                h.qs[i].next_slot = q.next_slot.wrapping_add(parts as u16) % q.size;
                h.push_avail(i, ids[0]);
            }
            // Bytes anywhere in the window (over rings and buffers alike).
            7 => {
                let at = WINDOW_BASE + u64::from(u.arbitrary::<u32>()?) % WINDOW_SIZE;
                let b = common::bytes(&mut u, 512)?;
                let n = b.len().min((WINDOW_END - at) as usize);
                h.write(at, &b[..n]);
            }
            // used_event (end of the available ring) and the available ring's flags.
            8 => {
                let Some((_, q)) = h.q(u.arbitrary()?) else {
                    continue;
                };
                let v: u16 = u.arbitrary()?;
                let at = if u.arbitrary()? {
                    q.avail.wrapping_add(4 + 2 * u64::from(q.size))
                } else {
                    q.avail
                };
                h.write(at, &v.to_le_bytes());
            }
            9 => {
                let r = dev.recv_reply();
                if let Ok(Some(m)) = &r {
                    let mut out = Vec::new();
                    m.encode(&mut out).expect("an accepted reply re-encodes");
                    assert!(common::rt_reply(&out));
                }
                check_stats(before, dev.stats(), &r, matches!(r, Ok(Some(_))));
            }
            10 => {
                let r = dev.recv_response();
                if let Ok(Some(m)) = &r {
                    let mut out = Vec::new();
                    m.encode(&mut out).expect("an accepted response re-encodes");
                    assert!(common::rt_response(&out));
                }
                check_stats(before, dev.stats(), &r, matches!(r, Ok(Some(_))));
            }
            11 => {
                let index = u.int_in_range(0u16..=7)?;
                let r = dev.recv_frame(index);
                if let Ok(Some(f)) = &r {
                    assert!(f.len() <= virtio_llm::spec::MAX_MESSAGE_BYTES);
                    if index == queue::MEMORY_REPORT {
                        common::rt_memory(f);
                    }
                }
                check_stats(before, dev.stats(), &r, matches!(r, Ok(Some(_))));
            }
            12 | 13 => {
                let index = u.int_in_range(0u16..=7)?;
                let frame = common::bytes(&mut u, 8192)?.to_vec();
                let r = dev.send_frame(index, &frame);
                check_stats(before, dev.stats(), &r, matches!(r, Ok(true)));
            }
            14 => {
                let mut released = 0usize;
                let r = dev.recv_relinquish(&mut |rep| released += rep.ranges.len());
                if let Ok(Some(rep)) = &r {
                    assert_eq!(released, rep.ranges.len(), "release ran on the report");
                    let mut out = Vec::new();
                    virtio_llm::wire::memory::MemoryMsg::Relinquish(rep.clone())
                        .encode(&mut out)
                        .expect("an accepted report re-encodes");
                    assert!(common::rt_memory(&out));
                } else {
                    assert_eq!(released, 0, "release ran on a refused report");
                }
                check_stats(before, dev.stats(), &r, matches!(r, Ok(Some(_))));
            }
            _ => {
                let index = u.int_in_range(0u16..=7)?;
                let r = dev.arm(index);
                check_stats(before, dev.stats(), &r, false);
            }
        }
    }

    if h.rings_in_window {
        static ZEROS: [u8; GUARD as usize] = [0; GUARD as usize];
        let mut guard = vec![0u8; GUARD as usize];
        for at in [MEM_BASE, WINDOW_END] {
            h.mem
                .read_slice(&mut guard, GuestAddress(at))
                .expect("the guard areas are mapped");
            // One memcmp: a byte loop here would be instrumented and dominate the run time.
            if guard[..] != ZEROS[..] {
                let off = guard.iter().position(|&b| b != 0).unwrap_or(0);
                panic!(
                    "the device wrote outside the shared window, at {:#x}",
                    at + off as u64
                );
            }
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    common::decode_raw_and_fixed(
        data,
        &[common::rt_reply, common::rt_response, common::rt_memory],
    );
    let _ = run(data);
});
