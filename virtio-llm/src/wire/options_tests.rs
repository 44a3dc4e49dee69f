use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::spec::HEADER_BYTES;
use crate::wire::Message;
use crate::wire::request::{GenerateRequest, Prompt, RequestMsg, SamplingParams};

/// Options with one record of every defined type.
pub(crate) fn every_option() -> GenerateOptions {
    GenerateOptions {
        penalties: Some(Penalties {
            presence: 0.5,
            frequency: -1.25,
            last_n: 64,
        }),
        logit_bias: vec![(3, -100.0), (70, 2.5), (MAX_TOKEN_ID - 1, 100.0)],
        logprobs: Some(5),
        response_format: Some(ResponseFormat::JsonSchema(r#"{"type":"integer"}"#.into())),
        tools: Some(ToolConstraint {
            style: CallStyle::Hermes,
            lazy: true,
            parallel: false,
            tools: r#"[{"name":"f","parameters":{"type":"object"}}]"#.into(),
        }),
        // A chat prompt's record: `wire::tool_chat`'s tests.
        tool_chat: None,
    }
}

fn request(options: GenerateOptions) -> GenerateRequest {
    GenerateRequest {
        request_id: 1,
        session_id: 2,
        sampling: SamplingParams::greedy(8),
        prompt: Prompt::Tokens(vec![1, 2, 3]),
        options,
    }
}

fn encode(options: GenerateOptions) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::new();
    request(options).encode(&mut out).map(|()| out)
}

/// Offset of the trailer in a frame of [`request`] (header, 56 fixed bytes, 3 ids).
const TRAILER: usize = HEADER_BYTES + 56 + 12;

fn decode(buf: &[u8]) -> Result<GenerateOptions, WireError> {
    match RequestMsg::decode(buf)? {
        RequestMsg::Generate(g) => Ok(g.options),
        other => panic!("{other:?}"),
    }
}

#[test]
fn options_round_trip_and_size() {
    for options in [
        every_option(),
        GenerateOptions {
            logprobs: Some(0),
            ..GenerateOptions::default()
        },
        GenerateOptions {
            tools: Some(ToolConstraint {
                style: CallStyle::Mistral,
                lazy: false,
                parallel: true,
                tools: "[]".into(),
            }),
            ..GenerateOptions::default()
        },
        GenerateOptions::default(),
    ] {
        let buf = encode(options.clone()).unwrap();
        assert_eq!(buf.len(), TRAILER + options.wire_len());
        assert_eq!(decode(&buf).unwrap(), options);
    }
    // No options, no trailer: the frame a driver without the feature knows.
    let plain = encode(GenerateOptions::default()).unwrap();
    assert_eq!(plain.len(), TRAILER);
    assert_eq!(plain[HEADER_BYTES + 45], 0, "no options flag");
}

#[test]
fn out_of_range_options_are_refused_both_ways() {
    let bad = [
        GenerateOptions {
            penalties: Some(Penalties {
                presence: 2.5,
                frequency: 0.0,
                last_n: 64,
            }),
            ..GenerateOptions::default()
        },
        GenerateOptions {
            penalties: Some(Penalties {
                presence: 0.0,
                frequency: f32::NAN,
                last_n: 64,
            }),
            ..GenerateOptions::default()
        },
        GenerateOptions {
            logit_bias: vec![(5, 1.0), (5, 2.0)],
            ..GenerateOptions::default()
        },
        GenerateOptions {
            logit_bias: vec![(9, 1.0), (5, 2.0)],
            ..GenerateOptions::default()
        },
        GenerateOptions {
            logit_bias: vec![(MAX_TOKEN_ID, 1.0)],
            ..GenerateOptions::default()
        },
        GenerateOptions {
            logit_bias: vec![(1, -100.5)],
            ..GenerateOptions::default()
        },
        GenerateOptions {
            logit_bias: (0..MAX_LOGIT_BIAS as u32 + 1).map(|i| (i, 1.0)).collect(),
            ..GenerateOptions::default()
        },
        GenerateOptions {
            logprobs: Some(21),
            ..GenerateOptions::default()
        },
    ];
    for options in bad {
        assert!(encode(options.clone()).is_err(), "{options:?}");
    }
    // The decoder runs the same checks: a presence penalty of 2.5 written in by hand.
    let mut buf = encode(every_option()).unwrap();
    let presence = TRAILER + 4 + 6;
    buf[presence..presence + 4].copy_from_slice(&2.5f32.to_le_bytes());
    assert!(matches!(
        decode(&buf),
        Err(WireError::FieldOutOfRange {
            field: "presence_penalty",
            ..
        })
    ));
}

/// A frame of [`request`] with `trailer` after the prompt and the options flag set.
fn with_trailer(trailer: &[u8]) -> Vec<u8> {
    let mut buf = encode(GenerateOptions::default()).unwrap();
    buf[HEADER_BYTES + 45] |= 2;
    buf.extend_from_slice(trailer);
    crate::wire::testutil::fix_len(&mut buf);
    buf
}

fn record(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut r = kind.to_le_bytes().to_vec();
    r.extend_from_slice(&(value.len() as u32).to_le_bytes());
    r.extend_from_slice(value);
    r
}

fn trailer(records: &[Vec<u8>]) -> Vec<u8> {
    let mut t = vec![OPTIONS_VERSION, 0];
    t.extend_from_slice(&(records.len() as u16).to_le_bytes());
    for r in records {
        t.extend_from_slice(r);
    }
    t
}

#[test]
fn malformed_trailers_are_refused() {
    let logprobs = record(record::LOGPROBS, &[3, 0, 0, 0]);
    assert_eq!(
        decode(&with_trailer(&trailer(core::slice::from_ref(&logprobs)))).unwrap(),
        GenerateOptions {
            logprobs: Some(3),
            ..GenerateOptions::default()
        }
    );
    // Unknown types.
    for kind in [0x0007, 0x7777] {
        assert_eq!(
            decode(&with_trailer(&trailer(&[record(kind, b"{}")]))),
            Err(WireError::UnknownOption(kind))
        );
    }

    // A duplicate, and records out of order.
    let penalties = record(record::PENALTIES, &[0; 12]);
    assert!(
        decode(&with_trailer(&trailer(&[
            logprobs.clone(),
            logprobs.clone()
        ])))
        .is_err()
    );
    assert!(
        decode(&with_trailer(&trailer(&[
            logprobs.clone(),
            penalties.clone()
        ])))
        .is_err()
    );
    assert!(decode(&with_trailer(&trailer(&[penalties, logprobs.clone()]))).is_ok());
    // Wrong fixed lengths, a bias count that disagrees with its length.
    assert!(
        decode(&with_trailer(&trailer(&[record(
            record::LOGPROBS,
            &[3, 0, 0]
        )])))
        .is_err()
    );
    let mut bias = 2u32.to_le_bytes().to_vec();
    bias.extend_from_slice(&[0; 8]);
    assert!(
        decode(&with_trailer(&trailer(&[record(
            record::LOGIT_BIAS,
            &bias
        )])))
        .is_err()
    );
    // Reserved bytes, version, count.
    assert!(
        decode(&with_trailer(&trailer(&[record(
            record::LOGPROBS,
            &[3, 0, 1, 0]
        )])))
        .is_err()
    );
    let mut t = trailer(core::slice::from_ref(&logprobs));
    t[0] = 2;
    assert!(decode(&with_trailer(&t)).is_err());
    assert!(decode(&with_trailer(&trailer(&[]))).is_err());
    // A record length past the limit is refused before anything is read for it.
    let mut huge = record(record::LOGIT_BIAS, &[]);
    huge[2..6].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        decode(&with_trailer(&trailer(&[huge]))),
        Err(WireError::TooLong {
            what: "option record",
            ..
        })
    ));
    // The flag without a trailer, and a trailer without the flag.
    assert!(decode(&with_trailer(&[])).is_err());
    let mut buf = encode(every_option()).unwrap();
    buf[HEADER_BYTES + 45] &= !2;
    assert!(matches!(decode(&buf), Err(WireError::TrailingBytes { .. })));
}

#[test]
fn malformed_constraint_records_are_refused() {
    // Constraint records: a known kind and style, reserved bytes zero, text that is UTF-8,
    // `json_object` without a schema and `json_schema` with one.
    let json_object = record(record::RESPONSE_FORMAT, &[1, 0, 0, 0]);
    assert_eq!(
        decode(&with_trailer(&trailer(core::slice::from_ref(&json_object)))).unwrap(),
        GenerateOptions {
            response_format: Some(ResponseFormat::JsonObject),
            ..GenerateOptions::default()
        }
    );
    for bad in [
        record(record::RESPONSE_FORMAT, &[3, 0, 0, 0]),
        record(record::RESPONSE_FORMAT, &[1, 0, 0, 0, b'{']),
        record(record::RESPONSE_FORMAT, &[2, 0, 0, 0]),
        record(record::RESPONSE_FORMAT, &[2, 1, 0, 0, b'{', b'}']),
        record(record::RESPONSE_FORMAT, &[2, 0, 0, 0, 0xff]),
        record(record::TOOLS, &[4, 0, 0, 0, b'[', b']']),
        record(record::TOOLS, &[1, 4, 0, 0, b'[', b']']),
        record(record::TOOLS, &[1, 0, 0, 0]),
    ] {
        assert!(
            decode(&with_trailer(&trailer(core::slice::from_ref(&bad)))).is_err(),
            "{bad:?}"
        );
    }
}
