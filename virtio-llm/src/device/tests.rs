//! The device against malformed chains built with virtio-queue's mock queues: each is
//! refused with its reason, returned unused, and the queue goes on working.

use super::*;
use crate::wire::response::{ResponseMsg, Tokens};
use std::format;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::vec;
use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::Address;
use vm_memory::{GuestAddress, GuestMemoryMmap};

const WINDOW: Window = Window {
    base: 0x10_0000,
    size: 0x60_0000,
};
const NEXT: u16 = 1;
const WRITE: u16 = 2;

#[derive(Default)]
struct Count(AtomicUsize);

impl NotifyDriver for Count {
    fn notify(&self, _: u16) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

fn response_frame() -> Vec<u8> {
    let mut f = Vec::new();
    ResponseMsg::Tokens(Tokens {
        logprobs: Default::default(),
        request_id: 5,
        token_ids: vec![1, 2, 3],
        text: b"abc".to_vec(),
    })
    .encode(&mut f)
    .unwrap();
    f
}

#[test]
fn malformed_chains_are_refused_with_their_reason_and_the_queue_goes_on() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x80_0000)]).unwrap();
    let mock = MockSplitQueue::new(&mem, 64);
    let frame = response_frame();
    mem.write_slice(&frame, GuestAddress(0x10_0000)).unwrap();
    mem.write_slice(b"not a message", GuestAddress(0x20_0000))
        .unwrap();
    let big = 0x9_0000; // two of these exceed MAX_MESSAGE_BYTES
    let mut descs = vec![
        desc(0x1000, 16, 0, 0),        // 0: outside the window
        desc(0x10_0000, 0, 0, 0),      // 1: zero length
        desc(0x10_0000, 16, WRITE, 0), // 2: device-writable on a read queue
        desc(0x10_0000, big, NEXT, 4), // 3-4: oversized
        desc(0x30_0000, big, 0, 0),
        desc(0x6f_fff0, 32, 0, 0), // 5: straddles the window's end
    ];
    // 6..=22: a chain of 17 descriptors.
    for i in 0..17u16 {
        let flags = if i < 16 { NEXT } else { 0 };
        descs.push(desc(0x10_0000 + 64 * u64::from(i), 8, flags, 7 + i));
    }
    descs.push(desc(0x20_0000, 13, 0, 0)); // 23: garbage bytes
    descs.push(desc(0x10_0000, frame.len() as u32, 0, 0)); // 24: a good message
    mock.add_desc_chains(&descs, 0).unwrap();
    let queue: Queue = mock.create_queue().unwrap();

    let notes = Arc::new(Count::default());
    let mut queues: Vec<Option<Queue>> = (0..4).map(|_| None).collect();
    queues[usize::from(queue::RESPONSE)] = Some(queue);
    let mut dev = LlmDevice::new(mem.clone(), WINDOW, 0, queues, notes.clone());

    let mut reasons = Vec::new();
    let msg = loop {
        match dev.recv_response() {
            Ok(Some(m)) => break m,
            Ok(None) => panic!("the good chain was lost"),
            Err(DeviceError::BadChain { source, .. }) => reasons.push(format!("{source:?}")),
            Err(DeviceError::Malformed { source, .. }) => reasons.push(format!("{source:?}")),
            Err(e) => panic!("unexpected {e}"),
        }
    };
    let kinds: Vec<&str> = reasons
        .iter()
        .map(|r| r.split([' ', '{', '(']).next().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "OutsideWindow",
            "ZeroLength",
            "WrongDirection",
            "Oversized",
            "OutsideWindow",
            "TooLong",
            "BadVersion"
        ]
    );
    assert!(matches!(msg, ResponseMsg::Tokens(ref t) if t.request_id == 5));
    let stats = dev.stats();
    assert_eq!(
        (
            stats.refused_chains,
            stats.malformed_messages,
            stats.received
        ),
        (6, 1, 2)
    );
    // Every chain came back in the used ring, the refused ones with length 0.
    let used_idx: u16 = mem.read_obj(mock.used_addr().unchecked_add(2)).unwrap();
    assert_eq!(used_idx, 8);
    for slot in 0..8u64 {
        let len: u32 = mem
            .read_obj(mock.used_addr().unchecked_add(4 + 8 * slot + 4))
            .unwrap();
        assert_eq!(len, 0, "slot {slot}");
    }
    // Without event indices the driver is notified of every used buffer.
    assert_eq!(notes.0.load(Ordering::SeqCst), 8);
    assert_eq!(dev.recv_response().unwrap(), None);
}

#[test]
fn a_send_into_a_too_small_buffer_is_refused_and_queues_go_one_way() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x80_0000)]).unwrap();
    let mock = MockSplitQueue::new(&mem, 16);
    mock.add_desc_chains(
        &[
            desc(0x10_0000, 8, WRITE, 0),
            desc(0x10_1000, 4096, WRITE, 0),
        ],
        0,
    )
    .unwrap();
    let mut queues: Vec<Option<Queue>> = (0..4).map(|_| None).collect();
    queues[usize::from(queue::REQUEST)] = Some(mock.create_queue().unwrap());
    let mut dev = LlmDevice::new(mem.clone(), WINDOW, 0, queues, Arc::new(Count::default()));
    let frame = response_frame();
    assert!(matches!(
        dev.send_frame(queue::REQUEST, &frame),
        Err(DeviceError::BufferTooSmall { capacity: 8, .. })
    ));
    assert!(dev.send_frame(queue::REQUEST, &frame).unwrap());
    let mut back = vec![0u8; frame.len()];
    mem.read_slice(&mut back, GuestAddress(0x10_1000)).unwrap();
    assert_eq!(back, frame);
    assert!(
        !dev.send_frame(queue::REQUEST, &frame).unwrap(),
        "no buffer left"
    );
    // Receiving on a send queue, or using a queue that is not live, is refused.
    assert!(matches!(
        dev.recv_frame(queue::REQUEST),
        Err(DeviceError::NoSuchQueue(2))
    ));
    assert!(matches!(
        dev.recv_frame(queue::RESPONSE),
        Err(DeviceError::NoSuchQueue(3))
    ));
    assert!(matches!(
        dev.send_frame(queue::MEMORY_EVENT, &frame),
        Err(DeviceError::NoSuchQueue(4))
    ));
}

#[test]
fn an_available_index_beyond_the_queue_is_an_error_not_work_pending() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x80_0000)]).unwrap();
    let mock = MockSplitQueue::new(&mem, 16);
    let mut queues: Vec<Option<Queue>> = (0..4).map(|_| None).collect();
    queues[usize::from(queue::RESPONSE)] = Some(mock.create_queue().unwrap());
    let mut dev = LlmDevice::new(mem.clone(), WINDOW, 0, queues, Arc::new(Count::default()));
    // The driver claims 17 chains on a queue of 16.
    mem.write_obj(17u16, mock.avail_addr().unchecked_add(2))
        .unwrap();
    // `arm` sees the index moved; taking the chain must then fail rather than find nothing
    // (the host would otherwise poll forever).
    assert!(dev.arm(queue::RESPONSE).unwrap());
    assert!(matches!(
        dev.recv_response(),
        Err(DeviceError::Ring {
            queue: 3,
            source: virtio_queue::Error::InvalidAvailRingIndex
        })
    ));
}
