use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::spec::HEADER_BYTES;
use crate::wire::testutil::{assert_every_truncation_fails, with_trailing_byte};

pub(crate) fn samples() -> Vec<ResponseMsg> {
    vec![
        ResponseMsg::Tokens(Tokens {
            logprobs: Default::default(),
            request_id: 9,
            token_ids: vec![42, 7],
            text: Vec::new(),
        }),
        ResponseMsg::Error(ErrorResponse {
            request_id: 9,
            status: Status::ContextFull,
            message: String::from("context is full (4096 tokens)"),
        }),
        ResponseMsg::EndOfStream(EndOfStream {
            request_id: 9,
            reason: StopReason::EndOfGeneration,
            prompt_tokens: 12,
            generated_tokens: 30,
            cached_tokens: 0,
            timings: Timings {
                prompt_ns: 1_000_000,
                generation_ns: 90_000_000,
            },
        }),
        ResponseMsg::Tokens(Tokens {
            logprobs: Default::default(),
            request_id: 9,
            token_ids: vec![42, 7],
            text: b"Hello, w\xc3".to_vec(),
        }),
        ResponseMsg::Tokens(Tokens {
            request_id: 9,
            token_ids: vec![42, 7],
            text: b"Hi".to_vec(),
            logprobs: vec![
                TokenLogprob {
                    logprob: -0.25,
                    top: vec![(42, -0.25), (3, -1.5)],
                },
                TokenLogprob {
                    logprob: -3.0,
                    top: vec![(8, -0.1), (9, -2.5)],
                },
            ],
        }),
    ]
}

/// The sample whose `Tokens` carries logprobs.
const WITH_LOGPROBS: usize = 4;

fn frame(i: usize) -> Vec<u8> {
    let mut out = Vec::new();
    samples()[i].encode(&mut out).unwrap();
    out
}

#[test]
fn round_trip() {
    for msg in samples() {
        let mut buf = Vec::new();
        msg.encode(&mut buf).unwrap();
        assert_eq!(ResponseMsg::decode(&buf), Ok(msg));
    }
}

#[test]
fn every_truncation_fails_and_trailing_bytes_are_rejected() {
    for i in 0..samples().len() {
        let buf = frame(i);
        if i == WITH_LOGPROBS {
            continue;
        }
        assert_every_truncation_fails(&buf, |b| ResponseMsg::decode(b).is_err());
        let longer = ResponseMsg::decode(&with_trailing_byte(&buf));
        if matches!(samples()[i], ResponseMsg::Tokens(_)) {
            // After a `Tokens` text, more bytes are read as a logprob block.
            assert!(matches!(longer, Err(WireError::Truncated { .. })));
        } else {
            assert_eq!(longer, Err(WireError::TrailingBytes { count: 1 }));
        }
    }
}

#[test]
fn logprob_blocks_are_checked() {
    let buf = frame(WITH_LOGPROBS);
    // The block is optional, so the cut right after the text is a message without it;
    // every other cut fails.
    let bare = buf.len() - 4 - 2 * (4 + 16);
    for cut in (HEADER_BYTES..buf.len()).filter(|&c| c != bare) {
        let mut short = buf[..cut].to_vec();
        crate::wire::testutil::fix_len(&mut short);
        assert!(ResponseMsg::decode(&short).is_err(), "cut {cut}");
    }
    let logprobs = |l: Vec<TokenLogprob>| {
        let mut t = match samples().remove(WITH_LOGPROBS) {
            ResponseMsg::Tokens(t) => t,
            _ => unreachable!(),
        };
        t.logprobs = l;
        t.encode(&mut Vec::new())
    };
    let lp = |logprob: f32, top: Vec<(u32, f32)>| TokenLogprob { logprob, top };
    // One per id, the same number of alternatives each, logprobs at most 0, ids in range.
    assert!(logprobs(vec![lp(-1.0, vec![])]).is_err());
    assert!(logprobs(vec![lp(-1.0, vec![(1, -1.0)]), lp(-1.0, vec![])]).is_err());
    assert!(logprobs(vec![lp(0.5, vec![]), lp(-1.0, vec![])]).is_err());
    assert!(logprobs(vec![lp(f32::NAN, vec![]), lp(-1.0, vec![])]).is_err());
    let far = vec![(MAX_TOKEN_ID, -1.0)];
    assert!(logprobs(vec![lp(-1.0, far.clone()), lp(-1.0, far)]).is_err());
    let many = vec![(1, -1.0); MAX_TOP_LOGPROBS + 1];
    assert!(logprobs(vec![lp(-1.0, many.clone()), lp(-1.0, many)]).is_err());
    assert!(logprobs(vec![lp(0.0, vec![]), lp(MIN_LOGPROB, vec![])]).is_ok());
    // A top_n above the limit is refused before anything is read for it.
    let mut buf = frame(WITH_LOGPROBS);
    let top_n_at = buf.len() - 4 - 2 * (4 + 16);
    buf[top_n_at] = 200;
    assert!(matches!(
        ResponseMsg::decode(&buf),
        Err(WireError::TooLong {
            what: "top logprobs",
            ..
        })
    ));
}

#[test]
fn counts_are_checked_before_reading() {
    let mut buf = frame(0);
    buf[16..20].copy_from_slice(&1000u32.to_le_bytes());
    assert_eq!(
        ResponseMsg::decode(&buf),
        Err(WireError::TooLong {
            what: "response tokens",
            len: 1000,
            max: MAX_TOKENS_PER_RESPONSE
        })
    );
    let mut buf = frame(0);
    buf[16..20].copy_from_slice(&3u32.to_le_bytes());
    assert_eq!(
        ResponseMsg::decode(&buf),
        Err(WireError::Truncated {
            needed: 12,
            available: 8
        })
    );
}

#[test]
fn text_length_is_checked_before_reading() {
    let mut buf = frame(3);
    buf[20..24].copy_from_slice(&(MAX_TOKEN_TEXT_BYTES as u32 + 1).to_le_bytes());
    assert_eq!(
        ResponseMsg::decode(&buf),
        Err(WireError::TooLong {
            what: "response text",
            len: MAX_TOKEN_TEXT_BYTES + 1,
            max: MAX_TOKEN_TEXT_BYTES
        })
    );
    let too_long = ResponseMsg::Tokens(Tokens {
        logprobs: Default::default(),
        request_id: 1,
        token_ids: vec![1],
        text: vec![b'a'; MAX_TOKEN_TEXT_BYTES + 1],
    });
    assert!(too_long.encode(&mut Vec::new()).is_err());
}

#[test]
fn error_fields_are_checked() {
    let mut buf = frame(1);
    buf[16..18].copy_from_slice(&0u16.to_le_bytes());
    assert_eq!(
        ResponseMsg::decode(&buf),
        Err(WireError::FieldOutOfRange {
            field: "error.status",
            value: 0
        })
    );
    let mut buf = frame(1);
    buf[16..18].copy_from_slice(&77u16.to_le_bytes());
    assert_eq!(ResponseMsg::decode(&buf), Err(WireError::UnknownStatus(77)));
    let mut buf = frame(1);
    buf[24] = 0x80;
    assert_eq!(
        ResponseMsg::decode(&buf),
        Err(WireError::InvalidUtf8 { field: "message" })
    );
}

#[test]
fn end_of_stream_fields_are_checked() {
    let mut buf = frame(2);
    buf[16] = 0;
    assert_eq!(
        ResponseMsg::decode(&buf),
        Err(WireError::FieldOutOfRange {
            field: "reason",
            value: 0
        })
    );
    let mut buf = frame(2);
    buf[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        ResponseMsg::decode(&buf),
        Err(WireError::FieldOutOfRange {
            field: "generated_tokens",
            ..
        })
    ));
    let mut buf = frame(2);
    buf[0..2].copy_from_slice(&0x0301u16.to_le_bytes());
    assert_eq!(
        ResponseMsg::decode(&buf),
        Err(WireError::UnknownType(0x0301))
    );
}
