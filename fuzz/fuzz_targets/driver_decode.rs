//! The guest driver receiving hostile input from the host.
//!
//! 1. The raw input is handed to every decoder of a device → driver queue (`ControlCommand`,
//!    `RequestMsg`), as is and with its header fixed up; whatever decodes must re-encode to
//!    exactly the same bytes.
//! 2. A real `LlmDriver` is brought up through the VMM's real register page (`MmioTransport`
//!    around `VirtioLlm`) over a mapping of the shared window; the input may override any
//!    register the driver reads (a lying device). The input then plays a hostile device:
//!    it completes posted chains with buffer contents and used lengths of its choosing,
//!    writes raw used entries and indices (bogus ids, lengths beyond the buffer, index
//!    jumps), flags and event indices on every live queue (the memory queues when the driver
//!    took them), scribbles over the rings, and in between calls `poll_command`,
//!    `poll_request`, `poll_budget`, `send_reply`, `send_response`, `send_relinquish`,
//!    `poll_released` and `arm`.
//!
//! Checked: no panic; the driver never fails to reach its own buffers (`RingError::Memory`
//! would mean it computed an address outside the window); a failed initialisation leaves
//! FAILED set; every command or request the driver accepts re-encodes to exactly the bytes
//! it was decoded from.
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use virtio_llm::device::DriverView;
use virtio_llm::device::chain::Window;
use virtio_llm::driver::layout::{PLANS, ring_addrs, window_bytes_needed};
use virtio_llm::driver::{DriverError, LlmDriver, RingError, Transport};
use virtio_llm::mmio::{reg, status};
use virtio_llm::spec::{layout::SHARED_WINDOW_BASE, queue};
use virtio_llm::wire::control::ControlCommand;
use virtio_llm::wire::memory::MemoryMsg;
use virtio_llm_fuzz as common;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::MmioDevice;
use vmm::devices::Timer;
use vmm::devices::virtio_llm::{LlmConfig, VirtioLlm};
use vmm::devices::virtio_mmio::MmioTransport;

const WINDOW_BASE: u64 = SHARED_WINDOW_BASE;

/// The smallest window the driver's layout fits in (about 14.5 MiB; mapped per input, but
/// only the pages the driver and the input touch are ever faulted in).
fn window_size() -> u64 {
    window_bytes_needed().next_multiple_of(4096)
}

/// The VMM's register page, with reads the input chose to falsify (shared so the harness
/// can look at the true registers after the driver took its transport).
#[derive(Clone)]
struct Regs(Rc<RegsInner>);

struct RegsInner {
    page: MmioTransport,
    lies: Vec<(u64, u32)>,
    notifies: Cell<u64>,
}

impl Transport for Regs {
    fn read32(&self, offset: u64) -> u32 {
        let r = &self.0;
        if let Some(&(_, v)) = r.lies.iter().find(|&&(o, _)| o == offset) {
            return v;
        }
        let mut b = [0u8; 4];
        r.page.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn write32(&self, offset: u64, value: u32) {
        let r = &self.0;
        if offset == reg::QUEUE_NOTIFY {
            r.notifies.set(r.notifies.get() + 1);
        }
        r.page.write(offset, &value.to_le_bytes());
    }
}

impl Regs {
    fn true_status(&self) -> u32 {
        let mut b = [0u8; 4];
        self.0.page.read(reg::STATUS, &mut b);
        u32::from_le_bytes(b)
    }
}

/// Registers a lying device might falsify.
const LIE_REGS: [u64; 14] = [
    reg::MAGIC,
    reg::VERSION,
    reg::DEVICE_ID,
    reg::DEVICE_FEATURES,
    reg::QUEUE_NUM_MAX,
    reg::STATUS,
    reg::CONFIG,
    reg::CONFIG + 4,
    reg::CONFIG + 8,
    reg::CONFIG + 12,
    reg::CONFIG + 16,
    reg::CONFIG + 20,
    reg::CONFIG + 24,
    reg::CONFIG + 28,
];

/// The hostile device's view of one queue.
#[derive(Clone, Copy, Default)]
struct DevQ {
    last_avail: u16,
    used_idx: u16,
}

struct Device {
    mem: GuestMemoryMmap,
    qs: [DevQ; 6],
}

impl Device {
    fn read<const N: usize>(&self, addr: u64) -> [u8; N] {
        let mut b = [0u8; N];
        let _ = self.mem.read_slice(&mut b, GuestAddress(addr));
        b
    }

    fn write(&self, addr: u64, bytes: &[u8]) {
        let _ = self.mem.write_slice(bytes, GuestAddress(addr));
    }

    fn write_used(&mut self, q: usize, slot: u16, id: u32, len: u32) {
        let r = ring_addrs(WINDOW_BASE, q as u16);
        let size = PLANS[q].size;
        let mut e = [0u8; 8];
        e[..4].copy_from_slice(&id.to_le_bytes());
        e[4..].copy_from_slice(&len.to_le_bytes());
        self.write(r.used + 4 + 8 * u64::from(slot % size), &e);
    }

    fn publish_used(&mut self, q: usize, idx: u16) {
        let r = ring_addrs(WINDOW_BASE, q as u16);
        self.write(r.used + 2, &idx.to_le_bytes());
        self.qs[q].used_idx = idx;
    }

    /// Takes the next chain the driver made available on `q`, like a real device: the head
    /// from the available ring, the buffer from the descriptor table.
    fn next_avail(&mut self, q: usize) -> Option<(u16, u64, u32)> {
        let r = ring_addrs(WINDOW_BASE, q as u16);
        let size = PLANS[q].size;
        let avail_idx = u16::from_le_bytes(self.read(r.avail + 2));
        let d = &mut self.qs[q];
        if avail_idx == d.last_avail {
            return None;
        }
        let slot = u64::from(d.last_avail % size);
        d.last_avail = d.last_avail.wrapping_add(1);
        let head = u16::from_le_bytes(self.read(r.avail + 4 + 2 * slot));
        let desc: [u8; 16] = self.read(r.desc + 16 * u64::from(head % size));
        let addr = u64::from_le_bytes(desc[..8].try_into().unwrap());
        let len = u32::from_le_bytes(desc[8..12].try_into().unwrap());
        Some((head, addr, len))
    }
}

fn check<T>(r: &std::result::Result<T, DriverError>) {
    if let Err(DriverError::Ring {
        queue,
        source: source @ RingError::Memory { .. },
    }) = r
    {
        panic!("queue {queue}: the driver reached outside its window: {source}");
    }
}

fn run(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let size = window_size();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(WINDOW_BASE), size as usize)])
        .expect("mapping the shared window");
    let interrupt_status = Arc::new(AtomicU32::new(0));
    let window = Window {
        base: WINDOW_BASE,
        size,
    };
    let (device, _host) = VirtioLlm::new(
        mem.clone(),
        window,
        interrupt_status.clone(),
        Arc::new(Timer::default()),
        LlmConfig::default(),
    )
    .expect("eventfds for the device");
    let mut lies = Vec::new();
    if u.ratio(1, 8)? {
        for _ in 0..u.int_in_range(1..=3)? {
            lies.push((*u.choose(&LIE_REGS)?, u.arbitrary()?));
        }
    }
    let regs = Regs(Rc::new(RegsInner {
        page: MmioTransport::with_interrupt_status(Box::new(device), interrupt_status),
        lies,
        notifies: Cell::new(0),
    }));
    // A lying device may also announce a window the driver's layout does not fit.
    let announced = if u.ratio(1, 32)? {
        u.arbitrary()?
    } else {
        size
    };
    let drv = LlmDriver::new(
        DriverView(mem.clone()),
        regs.clone(),
        WINDOW_BASE,
        announced.min(size),
    );
    let mut drv = match drv {
        Ok(d) => d,
        Err(e) => {
            assert!(
                !matches!(
                    e,
                    DriverError::Ring {
                        source: RingError::Memory { .. },
                        ..
                    }
                ),
                "{e}"
            );
            // A device the driver took on (right magic, version and type) is told it failed.
            if !matches!(
                e,
                DriverError::NotVirtioMmio { .. } | DriverError::WrongDevice(_)
            ) {
                let s = regs.true_status();
                assert!(
                    s & status::FAILED != 0,
                    "init failed ({e}) with status {s:#x}"
                );
            }
            return Ok(());
        }
    };
    let mut dev = Device {
        mem,
        qs: [DevQ::default(); 6],
    };
    let mut scratch = Vec::new();
    let mut tx = Vec::new();
    // The last queue the device serves: the memory queues exist only when negotiated.
    let queues: u8 = if drv.memory_enabled() { 5 } else { 3 };

    let mut ops = 0;
    while !u.is_empty() && ops < 256 {
        ops += 1;
        match u.int_in_range(0u8..=16)? {
            // Complete the next posted chain: a message in a receive buffer with the used
            // length of the device's choosing, or a transmit buffer handed back.
            0..=3 => {
                let q = usize::from(u.int_in_range(0u8..=queues)?);
                let receive = q == usize::from(queue::CONTROL_CMD)
                    || q == usize::from(queue::REQUEST)
                    || q == usize::from(queue::MEMORY_EVENT);
                let Some((head, addr, cap)) = dev.next_avail(q) else {
                    continue;
                };
                let len = if receive {
                    let bytes = common::payload(&mut u, 1 << 16, |u, out| {
                        let _ = match q as u16 {
                            queue::CONTROL_CMD => common::command(u)?.encode(out),
                            queue::REQUEST => common::request(u)?.encode(out),
                            _ => common::memory_msg(u)?.encode(out),
                        };
                        Ok(())
                    })?;
                    let n = bytes.len().min(cap as usize);
                    dev.write(addr, &bytes[..n]);
                    match u.int_in_range(0u8..=7)? {
                        0 => 0,
                        1 => u.arbitrary()?,
                        2 => cap.wrapping_add(u.int_in_range(0..=1)?),
                        _ => n as u32,
                    }
                } else if u.ratio(7, 8)? {
                    0
                } else {
                    u.arbitrary()?
                };
                let id = if u.ratio(15, 16)? {
                    u32::from(head)
                } else {
                    u.arbitrary()?
                };
                let idx = dev.qs[q].used_idx;
                dev.write_used(q, idx, id, len);
                dev.publish_used(q, idx.wrapping_add(1));
            }
            // A raw used entry, published or not.
            4 => {
                let q = usize::from(u.int_in_range(0u8..=queues)?);
                let slot = u.arbitrary()?;
                let (id, len) = (u.arbitrary()?, u.arbitrary()?);
                dev.write_used(q, slot, id, len);
                if u.arbitrary()? {
                    let idx = dev.qs[q].used_idx.wrapping_add(1);
                    dev.publish_used(q, idx);
                }
            }
            // Any used index.
            5 => {
                let q = usize::from(u.int_in_range(0u8..=queues)?);
                let idx = u.arbitrary()?;
                dev.publish_used(q, idx);
            }
            // The used ring's flags (NO_NOTIFY) or avail_event.
            6 => {
                let q = usize::from(u.int_in_range(0u8..=queues)?);
                let r = ring_addrs(WINDOW_BASE, q as u16);
                let v: u16 = u.arbitrary()?;
                let at = if u.arbitrary()? {
                    r.used
                } else {
                    r.used + 4 + 8 * u64::from(PLANS[q].size)
                };
                dev.write(at, &v.to_le_bytes());
            }
            // Scribble anywhere in the window (descriptor tables, rings, buffers).
            7 => {
                let at = WINDOW_BASE + u64::from(u.arbitrary::<u32>()?) % size;
                let b = common::bytes(&mut u, 256)?;
                let n = b.len().min((WINDOW_BASE + size - at) as usize);
                dev.write(at, &b[..n]);
            }
            8 => {
                let mut out = Vec::new();
                let r = drv.poll_command(&mut scratch);
                check(&r);
                let accepted = matches!(r, Ok(Some(_)));
                if let Ok(Some(cmd)) = &r {
                    cmd.encode(&mut out)
                        .expect("an accepted command re-encodes");
                }
                drop(r);
                if accepted {
                    // Exactly the bytes the driver decoded from (`scratch`, its private copy).
                    assert!(
                        out == scratch,
                        "command {:?} re-encodes differently",
                        ControlCommand::decode(&scratch)
                    );
                }
            }
            9 => {
                let r = drv.poll_request(&mut scratch);
                check(&r);
                if let Ok(Some(req)) = &r {
                    let mut out = Vec::new();
                    req.encode(&mut out)
                        .expect("an accepted request re-encodes");
                    assert!(out == scratch, "request {req:?} re-encodes differently");
                }
            }
            10 => {
                let m = common::reply(&mut u)?;
                check(&drv.send_reply(&m, &mut tx));
            }
            11 => {
                let m = common::response(&mut u)?;
                check(&drv.send_response(&m, &mut tx));
            }
            12 => {
                let r = drv.poll_budget(&mut scratch);
                check(&r);
                if let Ok(Some(b)) = &r {
                    let mut out = Vec::new();
                    MemoryMsg::BudgetChange(*b)
                        .encode(&mut out)
                        .expect("an accepted budget change re-encodes");
                    assert!(out == scratch, "budget {b:?} re-encodes differently");
                }
            }
            13 => {
                if let MemoryMsg::Relinquish(report) = common::memory_msg(&mut u)? {
                    check(&drv.send_relinquish(&report, &mut tx));
                }
            }
            14 => check(&drv.poll_released()),
            _ => check(&drv.arm()),
        }
    }
    // Every notification the driver counted went to the register page, and no other.
    assert_eq!(drv.stats().notifications, regs.0.notifies.get());
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    common::decode_raw_and_fixed(data, &[common::rt_command, common::rt_request]);
    let _ = run(data);
});
