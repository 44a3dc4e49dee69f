use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::wire::control::{ControlCommand, ControlReply};
use crate::wire::testutil::{assert_every_truncation_fails, with_trailing_byte};

fn frame<'a, M: Message<'a>>(m: &M) -> Vec<u8> {
    let mut out = Vec::new();
    m.encode(&mut out).expect("encodes");
    out
}

fn block() -> KvBlock {
    KvBlock {
        status: Status::Ok,
        handle: 3,
        block: 1,
        n_blocks: 4,
        epoch: 9,
        data: vec![0xa5; 100],
    }
}

fn wanted() -> KvWanted {
    KvWanted {
        request_id: 77,
        handle: 3,
        choice: KvChoice::Restore,
        n_blocks: 4,
        tokens: 600,
        restore_us: 1200,
        recompute_us: 90_000,
    }
}

#[test]
fn every_message_round_trips_through_its_queue_enum() {
    let data = [1u8, 2, 3];
    let commands = [
        ControlCommand::KvEvict(KvEvict {
            handle: 0,
            block: 0,
        }),
        ControlCommand::KvWant(KvWant {
            request_id: 5,
            flags: want_flag::FORCE_RESTORE,
        }),
        ControlCommand::KvRestore(KvRestore {
            handle: 3,
            block: 2,
            data: &data,
        }),
        ControlCommand::KvRestore(KvRestore {
            handle: 3,
            block: 2,
            data: &[],
        }),
    ];
    for c in commands {
        let mut out = Vec::new();
        c.encode(&mut out).unwrap();
        assert_eq!(ControlCommand::decode(&out).unwrap(), c);
        assert_every_truncation_fails(&out, |b| ControlCommand::decode(b).is_err());
        assert!(ControlCommand::decode(&with_trailing_byte(&out)).is_err());
    }
    for r in [
        ControlReply::KvBlock(block()),
        ControlReply::KvWanted(wanted()),
    ] {
        let mut out = Vec::new();
        r.encode(&mut out).unwrap();
        assert_eq!(ControlReply::decode(&out).unwrap(), r);
        assert_every_truncation_fails(&out, |b| ControlReply::decode(b).is_err());
        assert!(ControlReply::decode(&with_trailing_byte(&out)).is_err());
    }
}

#[test]
fn out_of_range_values_are_refused_both_ways() {
    let mut out = Vec::new();
    // Too large a block, an ok block without data, an error with data.
    let big = KvBlock {
        data: vec![0; MAX_KV_BLOCK_BYTES + 1],
        ..block()
    };
    assert!(big.encode(&mut out).is_err());
    let empty = KvBlock {
        data: Vec::new(),
        ..block()
    };
    assert!(empty.encode(&mut out).is_err());
    let refused_with_data = KvBlock {
        status: Status::NoSuchSession,
        ..block()
    };
    assert!(refused_with_data.encode(&mut out).is_err());
    let past_the_end = KvBlock {
        block: 4,
        ..block()
    };
    assert!(past_the_end.encode(&mut out).is_err());
    // Both forcing flags at once, or an undefined one.
    for flags in [want_flag::DEFINED, 1 << 5] {
        assert!(
            KvWant {
                request_id: 1,
                flags
            }
            .encode(&mut out)
            .is_err()
        );
    }
    // A block of no cache; a handle with no choice; a restore of nothing.
    assert!(
        KvEvict {
            handle: 0,
            block: 1
        }
        .encode(&mut out)
        .is_err()
    );
    let huge = vec![0u8; MAX_KV_BLOCK_BYTES + 1];
    let r = KvRestore {
        handle: 1,
        block: 0,
        data: &huge,
    };
    assert!(r.encode(&mut out).is_err());
    let w = KvWanted {
        choice: KvChoice::None,
        ..wanted()
    };
    assert!(w.encode(&mut out).is_err());
    let w = KvWanted {
        n_blocks: 0,
        ..wanted()
    };
    assert!(w.encode(&mut out).is_err());
    assert!(out.is_empty(), "nothing refused was written");

    // On the way in: an unknown choice, a non-zero reserved byte, a length past the limit.
    let mut f = frame(&wanted());
    f[8 + 12] = 3;
    assert!(KvWanted::decode(&f).is_err());
    let mut f = frame(&wanted());
    f[8 + 13] = 1;
    assert!(KvWanted::decode(&f).is_err());
    let mut f = frame(&KvRestore {
        handle: 1,
        block: 0,
        data: &[1],
    });
    f[8 + 8..8 + 12].copy_from_slice(&((MAX_KV_BLOCK_BYTES as u32) + 1).to_le_bytes());
    assert!(KvRestore::decode(&f).is_err());
}

#[test]
fn the_largest_block_fits_a_control_reply_buffer() {
    let largest = KvBlock {
        data: vec![0; MAX_KV_BLOCK_BYTES],
        ..block()
    };
    let plan = crate::driver::layout::PLANS[usize::from(crate::spec::queue::CONTROL_REPLY)];
    assert!(frame(&largest).len() <= plan.buffer_bytes as usize);
}
