use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::spec::MAX_TOKEN_ID;
use crate::wire::request::{ChatRole, ChatTurn, RequestMsg};
use crate::wire::response::ResponseMsg;
use crate::wire::testutil::{assert_every_truncation_fails, fix_len, with_trailing_byte};

fn requests() -> Vec<EmbedRequest> {
    vec![
        EmbedRequest {
            request_id: 7,
            model_id: 2,
            prompt: Prompt::Tokens(vec![1, 2, 3]),
        },
        EmbedRequest {
            request_id: 8,
            model_id: 1,
            prompt: Prompt::Text(String::from("the cat sat")),
        },
    ]
}

/// One frame of each message, for the mutation tests: the requests, then an embedding.
pub(crate) fn samples() -> Vec<RequestOrResponse> {
    let mut v: Vec<RequestOrResponse> = requests()
        .into_iter()
        .map(|r| RequestOrResponse::Request(RequestMsg::Embed(r)))
        .collect();
    v.push(RequestOrResponse::Response(ResponseMsg::Embedding(
        embedding(vec![0.6, -0.8]),
    )));
    v
}

/// A request or a response, so one list seeds both decoders.
pub(crate) enum RequestOrResponse {
    Request(RequestMsg),
    Response(ResponseMsg),
}

impl RequestOrResponse {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        match self {
            Self::Request(m) => m.encode(out),
            Self::Response(m) => m.encode(out),
        }
    }
}

fn embedding(values: Vec<f32>) -> Embedding {
    Embedding {
        request_id: 7,
        prompt_tokens: 3,
        prompt_ns: 1_000,
        values,
    }
}

fn encoded<'a>(m: &impl Message<'a>) -> Vec<u8> {
    let mut out = Vec::new();
    m.encode(&mut out).unwrap();
    out
}

#[test]
fn round_trip_through_the_queue_enums() {
    for r in requests() {
        let buf = encoded(&r);
        assert_eq!(RequestMsg::decode(&buf), Ok(RequestMsg::Embed(r)));
    }
    let e = embedding(vec![0.6, -0.8, 0.0]);
    let buf = encoded(&e);
    assert_eq!(ResponseMsg::decode(&buf), Ok(ResponseMsg::Embedding(e)));
}

#[test]
fn layout_is_the_documented_one() {
    // Body 24 + 4n for a request of n token ids; 24 + 4n for an embedding of n values.
    let buf = encoded(&requests()[0]);
    assert_eq!(buf.len(), 8 + 24 + 12);
    assert_eq!(buf[8 + 12], 0, "prompt_kind tokens");
    assert_eq!(&buf[8 + 16..8 + 20], &3u32.to_le_bytes());
    let buf = encoded(&embedding(vec![1.0; 5]));
    assert_eq!(buf.len(), 8 + 24 + 20);
    assert_eq!(&buf[8 + 8..8 + 12], &5u32.to_le_bytes());
}

#[test]
fn every_truncation_fails_and_trailing_bytes_are_rejected() {
    let frames = [
        encoded(&requests()[0]),
        encoded(&requests()[1]),
        encoded(&embedding(vec![0.5, 0.5])),
    ];
    for buf in &frames {
        let fails = |b: &[u8]| RequestMsg::decode(b).is_err() && ResponseMsg::decode(b).is_err();
        assert_every_truncation_fails(buf, fails);
        assert!(RequestMsg::decode(&with_trailing_byte(buf)).is_err());
        assert!(ResponseMsg::decode(&with_trailing_byte(buf)).is_err());
    }
}

#[test]
fn limits_are_enforced_both_ways() {
    // Widest allowed, and one more.
    assert!(
        embedding(vec![0.0; MAX_EMBEDDING_DIM])
            .encode(&mut Vec::new())
            .is_ok()
    );
    assert!(
        embedding(vec![0.0; MAX_EMBEDDING_DIM + 1])
            .encode(&mut Vec::new())
            .is_err()
    );
    assert!(embedding(Vec::new()).encode(&mut Vec::new()).is_err());
    assert!(embedding(vec![f32::NAN]).encode(&mut Vec::new()).is_err());
    assert!(
        embedding(vec![f32::INFINITY])
            .encode(&mut Vec::new())
            .is_err()
    );
    let no_tokens = Embedding {
        prompt_tokens: 0,
        ..embedding(vec![1.0])
    };
    assert!(no_tokens.encode(&mut Vec::new()).is_err());
    // A dimension beyond the limit or the bytes present is refused before allocating.
    let mut buf = encoded(&embedding(vec![1.0, 2.0]));
    buf[16..20].copy_from_slice(&(MAX_EMBEDDING_DIM as u32 + 1).to_le_bytes());
    assert!(matches!(
        Embedding::decode(&buf),
        Err(WireError::TooLong { .. })
    ));
    buf[16..20].copy_from_slice(&3u32.to_le_bytes());
    assert!(matches!(
        Embedding::decode(&buf),
        Err(WireError::TooLong { .. })
    ));
    // A NaN on the wire is refused.
    let mut buf = encoded(&embedding(vec![1.0]));
    let at = buf.len() - 4;
    buf[at..].copy_from_slice(&f32::NAN.to_le_bytes());
    assert!(Embedding::decode(&buf).is_err());
}

#[test]
fn only_plain_prompts_are_embedded() {
    let chat = EmbedRequest {
        request_id: 1,
        model_id: 1,
        prompt: Prompt::Chat(vec![ChatTurn {
            role: ChatRole::User,
            content: String::from("hi"),
        }]),
    };
    assert!(chat.encode(&mut Vec::new()).is_err());
    let empty = EmbedRequest {
        prompt: Prompt::Tokens(Vec::new()),
        ..requests()[0].clone()
    };
    assert!(empty.encode(&mut Vec::new()).is_err());
    let far = EmbedRequest {
        prompt: Prompt::Tokens(vec![MAX_TOKEN_ID]),
        ..requests()[0].clone()
    };
    assert!(far.encode(&mut Vec::new()).is_err());
    // prompt_kind 2 (chat) on the wire: refused before its bytes are read.
    let mut buf = encoded(&requests()[1]);
    buf[8 + 12] = 2;
    assert!(matches!(
        EmbedRequest::decode(&buf),
        Err(WireError::FieldOutOfRange { .. })
    ));
    // Reserved bytes must be zero.
    let mut buf = encoded(&requests()[0]);
    buf[8 + 13] = 1;
    assert!(EmbedRequest::decode(&buf).is_err());
    let mut buf = encoded(&requests()[0]);
    buf[8 + 20] = 1;
    fix_len(&mut buf);
    assert!(EmbedRequest::decode(&buf).is_err());
}
