//! The VMM's virtio-mmio register page (`MmioTransport` around the real `VirtioLlm`) driven
//! by a hostile guest: any sequence of register reads and writes (any offset, width and
//! value, often the registers and values that move the state machine: statuses, queue
//! selections and sizes, ring addresses inside, straddling and outside the shared window),
//! scribbles over the shared window's rings, and the host's side polling the device in
//! between (`recv_response`, `recv_reply`, `recv_relinquish`, `send_command`). Half the
//! inputs start with a driver's bring-up (features, then each queue's size, rings and
//! readiness, then DRIVER_OK), each step of it open to the input's deviations, so the
//! sequences also start from a live device and from nearly-live ones.
//!
//! Checked: no panic; the identity registers never change; a read fills exactly the bytes
//! asked for (zeros past the register's four); QueueNumMax never exceeds the device's
//! maximum; a host call never outlasts its timeout by much (a ring that claims work it
//! cannot deliver must not make the host spin).
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};
use virtio_llm::device::chain::Window;
use virtio_llm::driver::layout::ring_addrs;
use virtio_llm::mmio::{F_EVENT_IDX, F_VERSION_1};
use virtio_llm::mmio::{MAGIC, VERSION, reg, status};
use virtio_llm::spec::{feature, layout::SHARED_WINDOW_BASE, queue};
use virtio_llm::wire::control::{ControlCommand, StatsRequest};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::virtio_llm::{LlmConfig, LlmHost, VirtioLlm};
use vmm::devices::virtio_mmio::MmioTransport;
use vmm::devices::{MmioDevice, Timer};

const WINDOW_BASE: u64 = SHARED_WINDOW_BASE;
const WINDOW_SIZE: u64 = 256 << 10;
/// Host calls per input: each may spin briefly before it gives up.
const MAX_HOST_CALLS: usize = 4;

const REGS: [u64; 24] = [
    reg::MAGIC,
    reg::VERSION,
    reg::DEVICE_ID,
    reg::VENDOR_ID,
    reg::DEVICE_FEATURES,
    reg::DEVICE_FEATURES_SEL,
    reg::DRIVER_FEATURES,
    reg::DRIVER_FEATURES_SEL,
    reg::QUEUE_SEL,
    reg::QUEUE_NUM_MAX,
    reg::QUEUE_NUM,
    reg::QUEUE_READY,
    reg::QUEUE_NOTIFY,
    reg::INTERRUPT_STATUS,
    reg::INTERRUPT_ACK,
    reg::STATUS,
    reg::QUEUE_DESC_LOW,
    reg::QUEUE_DESC_HIGH,
    reg::QUEUE_DRIVER_LOW,
    reg::QUEUE_DRIVER_HIGH,
    reg::QUEUE_DEVICE_LOW,
    reg::QUEUE_DEVICE_HIGH,
    reg::CONFIG_GENERATION,
    reg::CONFIG,
];

fn offset(u: &mut Unstructured<'_>) -> Result<u64> {
    Ok(match u.int_in_range(0..=9)? {
        0..=6 => *u.choose(&REGS)?,
        7 => reg::CONFIG + u64::from(u.int_in_range(0u16..=0x200)?),
        8 => u64::from(u.arbitrary::<u16>()?),
        _ => u.arbitrary()?,
    })
}

fn value(u: &mut Unstructured<'_>) -> Result<u32> {
    let all = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
    Ok(match u.int_in_range(0..=9)? {
        0 => *u.choose(&[0, 1, 2, 3, 5, 6, 7])?,
        1 => *u.choose(&[
            all,
            all & !status::DRIVER_OK,
            status::ACKNOWLEDGE | status::DRIVER,
            status::FAILED,
            status::DEVICE_NEEDS_RESET,
        ])?,
        // Queue sizes: powers of two up to past the maximum, and not.
        2 => 1 << u.int_in_range(0..=10)?,
        // Ring addresses: in the window, near its ends, outside it, misaligned.
        3 => {
            (WINDOW_BASE + u64::from(u.int_in_range(0u32..=(WINDOW_SIZE as u32 + 0x1000))?)) as u32
        }
        4 => (WINDOW_BASE + 0x4000 * u64::from(u.int_in_range(0u32..=6)?)) as u32,
        // Feature words: VERSION_1 is bit 0 of the high word.
        5 => *u.choose(&[1, 0x2000_0000, u32::MAX])?,
        _ => u.arbitrary()?,
    })
}

fn host_call(host: &LlmHost, u: &mut Unstructured<'_>) -> Result<()> {
    let timeout = Duration::from_micros(u.int_in_range(0..=500)?);
    let start = Instant::now();
    match u.int_in_range(0..=3)? {
        0 => drop(host.recv_response(timeout)),
        1 => drop(host.recv_reply(timeout)),
        2 => drop(host.recv_relinquish(&mut |_| {}, timeout)),
        _ => drop(host.send_command(&ControlCommand::Stats(StatsRequest), timeout)),
    }
    // Spinning first (200 µs) and a nap's rounding are allowed; seconds are a hang.
    let took = start.elapsed();
    assert!(
        took < timeout + Duration::from_millis(500),
        "a host call took {took:?} with a timeout of {timeout:?}"
    );
    Ok(())
}

fn wr(page: &MmioTransport, off: u64, v: u32) {
    page.write(off, &v.to_le_bytes());
}

/// virtio 1.2 §3.1.1 as a driver does it, with the input choosing the features, skipping
/// queues, and bending sizes and ring addresses.
fn bring_up(page: &MmioTransport, u: &mut Unstructured<'_>) -> Result<()> {
    let mut features = F_VERSION_1 | 1 << feature::ACCESS_PLATFORM;
    for (bit, odds) in [
        (1 << feature::MEMORY, 2),
        (F_EVENT_IDX, 2),
        (1 << feature::GUEST_TEXT, 4),
        (1 << feature::PREEMPT, 4),
    ] {
        if u.ratio(1, odds)? {
            features |= bit;
        }
    }
    if u.ratio(1, 16)? {
        features ^= 1 << u.int_in_range(0..=63)?;
    }
    wr(page, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    for sel in 0..2 {
        wr(page, reg::DRIVER_FEATURES_SEL, sel);
        wr(page, reg::DRIVER_FEATURES, (features >> (32 * sel)) as u32);
    }
    let negotiating = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    wr(page, reg::STATUS, negotiating);
    for q in 0..queue::COUNT {
        if u.ratio(1, 16)? {
            continue;
        }
        let rings = ring_addrs(WINDOW_BASE, q);
        let mut addrs = [rings.desc, rings.avail, rings.used];
        if u.ratio(1, 8)? {
            let i = u.int_in_range(0..=2)?;
            addrs[i] = u64::from(value(u)?) | (u64::from(u.ratio(1, 4)?) << 40);
        }
        let size = if u.ratio(1, 8)? {
            value(u)?
        } else {
            u32::from(queue::MAX_SIZE) >> u.int_in_range(0..=4)?
        };
        wr(page, reg::QUEUE_SEL, u32::from(q));
        wr(page, reg::QUEUE_NUM, size);
        for (low, addr) in [
            reg::QUEUE_DESC_LOW,
            reg::QUEUE_DRIVER_LOW,
            reg::QUEUE_DEVICE_LOW,
        ]
        .into_iter()
        .zip(addrs)
        {
            wr(page, low, addr as u32);
            wr(page, low + 4, (addr >> 32) as u32);
        }
        wr(page, reg::QUEUE_READY, 1);
    }
    wr(page, reg::STATUS, negotiating | status::DRIVER_OK);
    Ok(())
}

fn run(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(WINDOW_BASE), WINDOW_SIZE as usize)])
        .expect("mapping the shared window");
    let interrupt_status = Arc::new(AtomicU32::new(0));
    let window = Window {
        base: WINDOW_BASE,
        size: WINDOW_SIZE,
    };
    let (device, host) = VirtioLlm::new(
        mem.clone(),
        window,
        interrupt_status.clone(),
        Arc::new(Timer::default()),
        LlmConfig::default(),
    )
    .expect("eventfds for the device");
    host.vm_started();
    let page = MmioTransport::with_interrupt_status(Box::new(device), interrupt_status);
    let mut host_calls = 0;
    if u.ratio(1, 2)? {
        bring_up(&page, &mut u)?;
    }
    while !u.is_empty() {
        match u.int_in_range(0..=9)? {
            0..=4 => {
                let (off, v) = (offset(&mut u)?, value(&mut u)?);
                let width = *u.choose(&[4usize, 4, 4, 1, 2, 8, 0])?;
                let bytes = u64::from(v).to_le_bytes();
                page.write(off, &bytes[..width]);
            }
            5..=6 => {
                let off = offset(&mut u)?;
                let width = u.int_in_range(0..=8)?;
                let mut buf = [0xa5u8; 8];
                page.read(off, &mut buf[..width]);
                assert!(
                    buf[width..].iter().all(|&b| b == 0xa5),
                    "read past its width"
                );
                if off < reg::CONFIG {
                    assert!(buf[4.min(width)..width].iter().all(|&b| b == 0));
                }
                let word = u32::from_le_bytes(buf[..4].try_into().unwrap());
                if width == 4 {
                    match off {
                        reg::MAGIC => assert_eq!(word, MAGIC),
                        reg::VERSION => assert_eq!(word, VERSION),
                        reg::QUEUE_NUM_MAX => assert!(word <= u32::from(queue::MAX_SIZE)),
                        _ => {}
                    }
                }
            }
            7..=8 => {
                let at = u.int_in_range(0..=WINDOW_SIZE - 1)?;
                let len = u.int_in_range(1..=64usize)?;
                let bytes = u.bytes(len)?;
                let _ = mem.write_slice(bytes, GuestAddress(WINDOW_BASE + at));
            }
            _ if host_calls < MAX_HOST_CALLS => {
                host_calls += 1;
                host_call(&host, &mut u)?;
            }
            _ => {}
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
