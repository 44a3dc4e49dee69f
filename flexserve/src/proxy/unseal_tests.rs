//! Answers sealed in-process as a guest seals them (`open_request`, `ResponseSealer`), then
//! opened whole and streamed, untouched and tampered with.

use super::*;
use crate::proxy::trust::tests::guest;
use crate::serve::openai::sealed::encode;
use sealed_session::{OsRng, ResponseSealer, TryRngCore, open_request, seal_request};
use serde_json::json;

/// A client's opener and the guest's sealer of one request.
fn pair() -> (ResponseOpener, ResponseSealer) {
    let (key, _) = guest();
    let (req, opener) = seal_request(
        &key.public(),
        b"binding",
        b"content",
        &mut OsRng.unwrap_err(),
    )
    .unwrap();
    let (_, sealer) = open_request(&key, &req, b"binding").unwrap();
    (opener, sealer)
}

/// "Hé, là!" in three pieces, `é` split over the first two.
fn pieces(sealer: &mut ResponseSealer) -> Vec<String> {
    let text = "Hé, là!".as_bytes();
    [
        (&text[..2], false),
        (&text[2..6], false),
        (&text[6..], true),
    ]
    .into_iter()
    .map(|(t, last)| encode(&sealer.seal(t, last).unwrap()))
    .collect()
}

fn whole(pieces: &[String]) -> Value {
    json!({"object": "chat.completion", "choices": [{"index": 0,
        "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        "flexserve_sealed": pieces})
}

/// The tamperings a hostile host can try on the list of pieces.
fn tamperings(p: &[String]) -> Vec<(&'static str, Vec<String>)> {
    let mut flipped = decode(&p[1]).unwrap();
    flipped[10] ^= 1;
    vec![
        (
            "flipped bit",
            vec![p[0].clone(), encode(&flipped), p[2].clone()],
        ),
        ("dropped", vec![p[0].clone(), p[2].clone()]),
        ("reordered", vec![p[1].clone(), p[0].clone(), p[2].clone()]),
        (
            "replayed",
            vec![p[0].clone(), p[0].clone(), p[1].clone(), p[2].clone()],
        ),
        ("cut", vec![p[0].clone(), p[1].clone()]),
        (
            "piece after the end",
            vec![p[0].clone(), p[1].clone(), p[2].clone(), p[2].clone()],
        ),
    ]
}

#[test]
fn a_whole_answer_opens_and_tampering_is_refused() {
    let (opener, mut sealer) = pair();
    let p = pieces(&mut sealer);
    let mut v = whole(&p);
    let text = open_whole(&mut v, Endpoint::Chat, Some(opener)).unwrap();
    assert_eq!(text, "Hé, là!");
    assert_eq!(v["choices"][0]["message"]["content"], "Hé, là!");
    assert!(v.get(SEALED_FIELD).is_none());
    for (what, tampered) in tamperings(&p) {
        let (opener, mut sealer) = pair();
        // Fresh pieces of the same shape under this request's key.
        let fresh = pieces(&mut sealer);
        let remap: Vec<String> = tampered
            .iter()
            .map(|t| match p.iter().position(|x| x == t) {
                Some(i) => fresh[i].clone(),
                None => {
                    let mut b = decode(&fresh[1]).unwrap();
                    b[10] ^= 1;
                    encode(&b)
                }
            })
            .collect();
        let r = open_whole(&mut whole(&remap), Endpoint::Chat, Some(opener));
        assert!(r.is_err(), "{what}: {r:?}");
    }
    // Text outside the seal, a missing seal, another request's pieces: refused.
    let mut plain = whole(&p);
    plain["choices"][0]["message"]["content"] = "host words".into();
    assert!(matches!(
        open_whole(&mut plain, Endpoint::Chat, Some(pair().0)),
        Err(UnsealError::Plaintext)
    ));
    let mut unsealed = whole(&p);
    unsealed.as_object_mut().unwrap().remove(SEALED_FIELD);
    assert!(matches!(
        open_whole(&mut unsealed, Endpoint::Chat, Some(pair().0)),
        Err(UnsealError::NotSealed)
    ));
    assert!(matches!(
        open_whole(&mut whole(&p), Endpoint::Chat, Some(pair().0)),
        Err(UnsealError::Session(SessionError::PieceForged { seq: 0 }))
    ));
}

fn sse(v: &Value) -> String {
    format!("data: {v}\n\n")
}

/// A completion stream as the daemon sends it: a chunk per piece, the finish chunk, the
/// usage chunk, `[DONE]`.
fn stream(pieces: &[String]) -> String {
    let chunk = |extra: Value| {
        let mut c = json!({"object": "text_completion", "choices": [{"index": 0, "text": "",
            "finish_reason": null}]});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let mut out: String = pieces
        .iter()
        .map(|p| sse(&chunk(json!({ SEALED_FIELD: p }))))
        .collect();
    out.push_str(&sse(
        &json!({"object": "text_completion", "choices": [{"index": 0,
        "text": "", "finish_reason": "stop"}]}),
    ));
    out.push_str(&sse(&json!({"choices": [], "usage": {"total_tokens": 7}})));
    out.push_str("data: [DONE]\n\n");
    out
}

/// Feeds `bytes` in slices of 5; the texts, the events, and the first error.
fn feed(u: &mut StreamUnsealer, bytes: &[u8]) -> (String, Vec<StreamItem>, Option<UnsealError>) {
    let (mut text, mut items) = (String::new(), Vec::new());
    for part in bytes.chunks(5) {
        match u.push(part) {
            Ok(new) => {
                for i in new {
                    if let StreamItem::Chunk(_, t) = &i {
                        text.push_str(t);
                    }
                    items.push(i);
                }
            }
            Err(e) => return (text, items, Some(e)),
        }
    }
    let end = u.end().err();
    (text, items, end)
}

#[test]
fn a_stream_opens_piece_by_piece_and_tampering_ends_it() {
    let (opener, mut sealer) = pair();
    let p = pieces(&mut sealer);
    let mut u = StreamUnsealer::new(Endpoint::Completion, Some(opener));
    let (text, items, err) = feed(&mut u, stream(&p).as_bytes());
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text, "Hé, là!");
    assert_eq!(items.last(), Some(&StreamItem::Done));
    let StreamItem::Chunk(first, t) = &items[0] else {
        panic!("{items:?}")
    };
    assert_eq!(
        (first["choices"][0]["text"].as_str(), t.as_str()),
        (Some("H"), "H")
    );
    assert!(first.get(SEALED_FIELD).is_none());

    for (what, tampered) in tamperings(&p) {
        let (opener, mut sealer) = pair();
        let fresh = pieces(&mut sealer);
        let remap: Vec<String> = tampered
            .iter()
            .map(|t| match p.iter().position(|x| x == t) {
                Some(i) => fresh[i].clone(),
                None => {
                    let mut b = decode(&fresh[1]).unwrap();
                    b[10] ^= 1;
                    encode(&b)
                }
            })
            .collect();
        let mut u = StreamUnsealer::new(Endpoint::Completion, Some(opener));
        let (text, items, err) = feed(&mut u, stream(&remap).as_bytes());
        assert!(err.is_some(), "{what}: {items:?}");
        assert!(!items.contains(&StreamItem::Done), "{what}");
        // Whatever text came through is authenticated: a prefix of the answer.
        assert!("Hé, là!".starts_with(&text), "{what}: {text:?}");
    }
}

#[test]
fn streams_cut_short_with_plaintext_or_with_errors_are_handled() {
    let (opener, mut sealer) = pair();
    let p = pieces(&mut sealer);
    let full = stream(&p);
    let cut = &full[..full.find("data: [DONE]").unwrap()];
    let mut u = StreamUnsealer::new(Endpoint::Completion, Some(opener));
    let (_, _, err) = feed(&mut u, cut.as_bytes());
    assert!(matches!(err, Some(UnsealError::Cut(_))), "{err:?}");

    let mut u = StreamUnsealer::new(Endpoint::Completion, Some(pair().0));
    let forged =
        sse(&json!({"choices": [{"index": 0, "text": "host words", "finish_reason": null}]}));
    assert!(matches!(
        u.push(forged.as_bytes()),
        Err(UnsealError::Plaintext)
    ));

    let mut u = StreamUnsealer::new(Endpoint::Chat, Some(pair().0));
    let error = json!({"error": {"message": "guest crashed", "type": "server_error"}});
    let items = u.push(sse(&error).as_bytes()).unwrap();
    assert_eq!(items, [StreamItem::Error(error)]);
    assert!(u.is_over() && u.end().is_ok());

    // Plain: the text as sent.
    let mut u = StreamUnsealer::new(Endpoint::Chat, None);
    let chunk =
        json!({"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": null}]});
    let items = u
        .push(format!("{}data: [DONE]\n\n", sse(&chunk)).as_bytes())
        .unwrap();
    assert!(matches!(&items[0], StreamItem::Chunk(_, t) if t == "hi"));
    assert_eq!(items[1], StreamItem::Done);
}
