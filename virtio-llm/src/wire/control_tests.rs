use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::wire::testutil::{assert_every_truncation_fails, fix_len, with_trailing_byte};

const DATA: [u8; 5] = [1, 2, 3, 4, 5];

pub(crate) fn sample_commands() -> Vec<ControlCommand<'static>> {
    vec![
        ControlCommand::LoadModelBegin(LoadModelBegin {
            model_id: 7,
            total_bytes: 1 << 30,
        }),
        ControlCommand::LoadModelChunk(LoadModelChunk {
            model_id: 7,
            offset: 4096,
            data: &DATA,
        }),
        ControlCommand::LoadModelEnd(LoadModelEnd {
            model_id: 7,
            sha256: [0xab; 32],
        }),
        ControlCommand::UnloadModel(UnloadModel {
            model_id: 7,
            keep_layers: 12,
        }),
        ControlCommand::OpenSession(OpenSession {
            session_id: 3,
            model_id: 7,
            context_len: 4096,
        }),
        ControlCommand::CloseSession(CloseSession { session_id: 3 }),
        ControlCommand::Stats(StatsRequest),
    ]
}

pub(crate) fn sample_replies() -> Vec<ControlReply> {
    vec![
        ControlReply::Ack(Ack {
            command: msg_type::OPEN_SESSION,
            status: Status::OutOfMemory,
            object_id: 3,
        }),
        ControlReply::Stats(StatsReply {
            models_loaded: 1,
            sessions_open: 2,
            memory_used_bytes: 3 << 30,
            memory_budget_bytes: 4 << 30,
            requests_completed: 99,
            tokens_generated: 12345,
            engine_kernels: 2,
            cpu_features: 0x3ff,
            kv_caches_dropped: 3,
        }),
    ]
}

fn frame(cmd: &ControlCommand<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    cmd.encode(&mut out).unwrap();
    out
}

#[test]
fn commands_round_trip() {
    for cmd in sample_commands() {
        let buf = frame(&cmd);
        assert_eq!(ControlCommand::decode(&buf).unwrap(), cmd);
    }
    let begin = LoadModelBegin {
        model_id: 1,
        total_bytes: 10,
    };
    let mut buf = Vec::new();
    begin.encode(&mut buf).unwrap();
    assert_eq!(LoadModelBegin::decode(&buf), Ok(begin));
}

#[test]
fn replies_round_trip() {
    for reply in sample_replies() {
        let mut buf = Vec::new();
        reply.encode(&mut buf).unwrap();
        assert_eq!(ControlReply::decode(&buf), Ok(reply));
    }
}

#[test]
fn every_truncation_fails() {
    for cmd in sample_commands() {
        assert_every_truncation_fails(&frame(&cmd), |b| ControlCommand::decode(b).is_err());
    }
    for reply in sample_replies() {
        let mut buf = Vec::new();
        reply.encode(&mut buf).unwrap();
        assert_every_truncation_fails(&buf, |b| ControlReply::decode(b).is_err());
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    for cmd in sample_commands() {
        let buf = with_trailing_byte(&frame(&cmd));
        assert_eq!(
            ControlCommand::decode(&buf),
            Err(WireError::TrailingBytes { count: 1 })
        );
    }
}

#[test]
fn wrong_family_or_type_is_unknown() {
    let mut buf = Vec::new();
    sample_replies()[0].encode(&mut buf).unwrap();
    assert_eq!(
        ControlCommand::decode(&buf),
        Err(WireError::UnknownType(msg_type::ACK))
    );
    let buf = frame(&sample_commands()[2]);
    assert_eq!(
        UnloadModel::decode(&buf),
        Err(WireError::UnknownType(msg_type::LOAD_MODEL_END))
    );
}

#[test]
fn reserved_bytes_must_be_zero() {
    let mut buf = frame(&sample_commands()[5]);
    buf[8 + 5] = 1;
    assert_eq!(
        ControlCommand::decode(&buf),
        Err(WireError::ReservedNotZero {
            field: "close_session.reserved"
        })
    );
}

#[test]
fn an_unload_carries_the_layers_to_keep_where_a_plain_one_has_zeros() {
    let plain = frame(&ControlCommand::UnloadModel(UnloadModel {
        model_id: 7,
        keep_layers: 0,
    }));
    // The plain unload's bytes are those of the message before `keep_layers` existed.
    assert_eq!(&plain[8..], &[7, 0, 0, 0, 0, 0, 0, 0]);
    let keep = frame(&sample_commands()[3]);
    assert_eq!(&keep[8..], &[7, 0, 0, 0, 12, 0, 0, 0]);
    assert_eq!(
        ControlCommand::decode(&keep),
        Ok(ControlCommand::UnloadModel(UnloadModel {
            model_id: 7,
            keep_layers: 12
        }))
    );
}

#[test]
fn chunk_length_is_checked_before_reading() {
    let mut buf = frame(&sample_commands()[1]);
    // data_len claims more than the limit: refused as too long, not read.
    buf[12..16].copy_from_slice(&(u32::MAX).to_le_bytes());
    assert!(matches!(
        ControlCommand::decode(&buf),
        Err(WireError::TooLong {
            what: "chunk data",
            ..
        })
    ));
    // data_len claims more than is there.
    buf[12..16].copy_from_slice(&6u32.to_le_bytes());
    assert_eq!(
        ControlCommand::decode(&buf),
        Err(WireError::Truncated {
            needed: 6,
            available: 5
        })
    );
    // data_len claims less than is there.
    buf[12..16].copy_from_slice(&4u32.to_le_bytes());
    assert_eq!(
        ControlCommand::decode(&buf),
        Err(WireError::TrailingBytes { count: 1 })
    );
}

#[test]
fn out_of_range_values_are_rejected() {
    let empty = LoadModelChunk {
        model_id: 1,
        offset: 0,
        data: &[],
    };
    assert!(matches!(
        empty.encode(&mut Vec::new()),
        Err(WireError::FieldOutOfRange { .. })
    ));
    let mut buf = frame(&sample_commands()[1]);
    buf[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(
        ControlCommand::decode(&buf),
        Err(WireError::FieldOutOfRange {
            field: "chunk offset",
            value: u64::MAX
        })
    );
    let mut buf = frame(&sample_commands()[0]);
    buf[16..24].copy_from_slice(&0u64.to_le_bytes());
    assert_eq!(
        ControlCommand::decode(&buf),
        Err(WireError::FieldOutOfRange {
            field: "total_bytes",
            value: 0
        })
    );
    let mut buf = frame(&sample_commands()[4]);
    buf[16..20].copy_from_slice(&(MAX_CONTEXT_LEN + 1).to_le_bytes());
    assert_eq!(
        ControlCommand::decode(&buf),
        Err(WireError::FieldOutOfRange {
            field: "context_len",
            value: u64::from(MAX_CONTEXT_LEN + 1)
        })
    );
}

#[test]
fn ack_rejects_unknown_status_and_command() {
    let mut buf = Vec::new();
    sample_replies()[0].encode(&mut buf).unwrap();
    let mut bad = buf.clone();
    bad[10..12].copy_from_slice(&500u16.to_le_bytes());
    assert_eq!(
        ControlReply::decode(&bad),
        Err(WireError::UnknownStatus(500))
    );
    let mut bad = buf.clone();
    bad[8..10].copy_from_slice(&msg_type::STATS_REQUEST.to_le_bytes());
    assert!(matches!(
        ControlReply::decode(&bad),
        Err(WireError::FieldOutOfRange {
            field: "ack.command",
            ..
        })
    ));
}

#[test]
fn length_field_must_match_buffer() {
    let mut buf = frame(&sample_commands()[3]);
    buf[4..8].copy_from_slice(&9u32.to_le_bytes());
    assert_eq!(
        ControlCommand::decode(&buf),
        Err(WireError::LengthMismatch {
            declared: 9,
            actual: 8
        })
    );
    fix_len(&mut buf);
    assert!(ControlCommand::decode(&buf).is_ok());
}
