use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::wire::testutil::{assert_every_truncation_fails, with_trailing_byte};

/// Body offsets used by the malformed-input tests.
const TEMPERATURE: usize = 8 + 24;
const TOP_K: usize = 8 + 28;
const REPEAT_PENALTY: usize = 8 + 40;
const PROMPT_KIND: usize = 8 + 44;
const PROMPT_LEN: usize = 8 + 48;
const PROMPT: usize = 8 + 56;

fn sampling() -> SamplingParams {
    SamplingParams {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.05,
        repeat_penalty: 1.1,
        seed: 0xdead_beef,
        max_tokens: 128,
        ignore_eog: false,
    }
}

pub(crate) fn samples() -> Vec<RequestMsg> {
    vec![
        RequestMsg::Generate(GenerateRequest {
            options: Default::default(),
            request_id: 1 << 40,
            session_id: 3,
            sampling: sampling(),
            prompt: Prompt::Tokens(vec![1, 15043, 3186, 0]),
        }),
        RequestMsg::Generate(GenerateRequest {
            options: Default::default(),
            request_id: 2,
            session_id: 4,
            sampling: sampling(),
            prompt: Prompt::Text(String::from("héllo, wörld")),
        }),
        RequestMsg::Generate(GenerateRequest {
            options: Default::default(),
            request_id: 3,
            session_id: 4,
            sampling: SamplingParams {
                ignore_eog: true,
                ..sampling()
            },
            prompt: Prompt::Tokens(vec![7]),
        }),
        RequestMsg::Cancel(CancelRequest { request_id: 2 }),
        RequestMsg::Preempt(PreemptRequest { request_id: 3 }),
        RequestMsg::Generate(GenerateRequest {
            options: Default::default(),
            request_id: 4,
            session_id: 5,
            sampling: sampling(),
            prompt: Prompt::Chat(vec![
                ChatTurn {
                    role: ChatRole::System,
                    content: String::from("Be brief."),
                },
                ChatTurn {
                    role: ChatRole::Assistant,
                    content: String::new(),
                },
                ChatTurn {
                    role: ChatRole::User,
                    content: String::from("héllo"),
                },
            ]),
        }),
        RequestMsg::Generate(GenerateRequest {
            request_id: 5,
            session_id: 6,
            sampling: sampling(),
            prompt: Prompt::Tokens(vec![1, 2]),
            options: crate::wire::options::tests::every_option(),
        }),
    ]
}

fn frame(i: usize) -> Vec<u8> {
    let mut out = Vec::new();
    samples()[i].encode(&mut out).unwrap();
    out
}

#[test]
fn unknown_generate_flags_are_rejected() {
    let mut buf = frame(2);
    assert_eq!(buf[PROMPT_KIND + 1], 1, "ignore_eog is flag bit 0");
    buf[PROMPT_KIND + 1] = 4;
    assert_eq!(
        RequestMsg::decode(&buf),
        Err(WireError::ReservedNotZero {
            field: "generate.flags"
        })
    );
}

#[test]
fn round_trip() {
    for msg in samples() {
        let mut buf = Vec::new();
        msg.encode(&mut buf).unwrap();
        assert_eq!(RequestMsg::decode(&buf), Ok(msg));
    }
}

#[test]
fn every_truncation_fails_and_trailing_bytes_are_rejected() {
    for i in 0..samples().len() {
        let buf = frame(i);
        assert_every_truncation_fails(&buf, |b| RequestMsg::decode(b).is_err());
        assert_eq!(
            RequestMsg::decode(&with_trailing_byte(&buf)),
            Err(WireError::TrailingBytes { count: 1 })
        );
    }
}

#[test]
fn unknown_type_is_rejected() {
    let mut buf = frame(2);
    buf[0..2].copy_from_slice(&0x0306u16.to_le_bytes());
    assert_eq!(
        RequestMsg::decode(&buf),
        Err(WireError::UnknownType(0x0306))
    );
}

#[test]
fn bad_sampling_values_are_rejected() {
    let cases: [(usize, u32, &str); 6] = [
        (TEMPERATURE, f32::NAN.to_bits(), "temperature"),
        (TEMPERATURE, (-0.5f32).to_bits(), "temperature"),
        (TEMPERATURE, f32::INFINITY.to_bits(), "temperature"),
        (TOP_K, u32::MAX, "top_k"),
        (REPEAT_PENALTY, 0f32.to_bits(), "repeat_penalty"),
        (REPEAT_PENALTY, 1e30f32.to_bits(), "repeat_penalty"),
    ];
    for (offset, raw, field) in cases {
        let mut buf = frame(0);
        buf[offset..offset + 4].copy_from_slice(&raw.to_le_bytes());
        assert_eq!(
            RequestMsg::decode(&buf),
            Err(WireError::FieldOutOfRange {
                field,
                value: raw.into()
            }),
            "{field}"
        );
    }
    let mut s = sampling();
    s.top_p = 1.5;
    s.max_tokens = 0;
    let req = GenerateRequest {
        options: Default::default(),
        request_id: 1,
        session_id: 1,
        sampling: s,
        prompt: Prompt::Tokens(vec![1]),
    };
    assert!(matches!(
        req.encode(&mut Vec::new()),
        Err(WireError::FieldOutOfRange { field: "top_p", .. })
    ));
}

#[test]
fn prompt_count_is_checked_against_limit_and_remaining_bytes() {
    let mut buf = frame(0);
    buf[PROMPT_LEN..PROMPT_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        RequestMsg::decode(&buf),
        Err(WireError::TooLong {
            what: "prompt tokens",
            ..
        })
    ));
    buf[PROMPT_LEN..PROMPT_LEN + 4].copy_from_slice(&5u32.to_le_bytes());
    assert_eq!(
        RequestMsg::decode(&buf),
        Err(WireError::Truncated {
            needed: 20,
            available: 16
        })
    );
}

#[test]
fn prompt_contents_are_checked() {
    let mut buf = frame(0);
    buf[PROMPT..PROMPT + 4].copy_from_slice(&MAX_TOKEN_ID.to_le_bytes());
    assert_eq!(
        RequestMsg::decode(&buf),
        Err(WireError::FieldOutOfRange {
            field: "prompt token",
            value: MAX_TOKEN_ID.into()
        })
    );
    let mut buf = frame(1);
    buf[PROMPT + 1] = 0xff;
    assert_eq!(
        RequestMsg::decode(&buf),
        Err(WireError::InvalidUtf8 { field: "prompt" })
    );
    let mut buf = frame(1);
    buf[PROMPT_KIND] = 9;
    assert_eq!(
        RequestMsg::decode(&buf),
        Err(WireError::FieldOutOfRange {
            field: "prompt_kind",
            value: 9
        })
    );
    let empty = GenerateRequest {
        options: Default::default(),
        request_id: 1,
        session_id: 1,
        sampling: sampling(),
        prompt: Prompt::Text(String::new()),
    };
    assert!(empty.encode(&mut Vec::new()).is_err());
}

#[test]
fn chat_messages_are_checked() {
    // The first message's role byte, then its content's first byte.
    let mut buf = frame(5);
    buf[PROMPT] = 4;
    assert_eq!(
        RequestMsg::decode(&buf),
        Err(WireError::FieldOutOfRange {
            field: "chat role",
            value: 4
        })
    );
    let mut buf = frame(5);
    buf[PROMPT + 1] = 1;
    assert!(matches!(
        RequestMsg::decode(&buf),
        Err(WireError::ReservedNotZero { .. })
    ));
    let mut buf = frame(5);
    buf[PROMPT + 8] = 0xff;
    assert_eq!(
        RequestMsg::decode(&buf),
        Err(WireError::InvalidUtf8 {
            field: "chat content"
        })
    );
    // A content length that runs past the prompt is truncated, not read from what follows.
    let mut buf = frame(5);
    buf[PROMPT + 4..PROMPT + 8].copy_from_slice(&1000u32.to_le_bytes());
    assert!(matches!(
        RequestMsg::decode(&buf),
        Err(WireError::Truncated { .. })
    ));
    let empty = RequestMsg::Generate(GenerateRequest {
        options: Default::default(),
        request_id: 1,
        session_id: 1,
        sampling: sampling(),
        prompt: Prompt::Chat(Vec::new()),
    });
    assert!(empty.encode(&mut Vec::new()).is_err());
}
