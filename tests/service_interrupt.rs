//! Cancels and preempts in the guest's inference service on the rig of `guest_service.rs`
//! (the service on a host thread against the real device): a cancel ends its running
//! request, or one still queued before it runs; a preempted request resumes on its session
//! as if never stopped. In a batch: `service_batch.rs`.

#[path = "service_rig.rs"]
#[allow(dead_code)]
mod rig;

use rig::*;
use virtio_llm::Status;
use virtio_llm::wire::request::{CancelRequest, PreemptRequest, RequestMsg};
use virtio_llm::wire::response::{ResponseMsg, StopReason};

#[test]
fn a_cancel_ends_its_request_and_a_request_queued_behind_it_runs_next() {
    let Some((file, sha)) = model() else { return };
    let engine = HostEngine { file: file.clone() };
    let rig = Rig::start(limits());
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    assert_eq!(rig.open(1, 1, 4096), Status::Ok);
    assert_eq!(rig.open(2, 1, 256), Status::Ok);
    let prompt = engine.encode("Once upon a time");

    // Request 7 would take thousands of tokens; request 8 arrives while it runs, then a
    // cancel for an unknown request (ignored), then the cancel for 7.
    rig.request(&endless_request(7, 1, prompt.clone(), 4000));
    let first = rig.first_slice(7);
    rig.request(&endless_request(8, 2, prompt.clone(), 16));
    rig.request(&RequestMsg::Cancel(CancelRequest { request_id: 99 }));
    rig.request(&RequestMsg::Cancel(CancelRequest { request_id: 7 }));
    let (got, end) = rig.collect_from(7, first).expect("cancelled, not refused");
    assert_eq!(end.reason, StopReason::Cancelled);
    assert!(
        end.generated_tokens < 4000,
        "{} tokens: the cancel did not stop it",
        end.generated_tokens
    );

    let (tokens, end8) = rig
        .collect(8)
        .expect("the queued request runs after the cancel");
    assert_eq!(end8.reason, StopReason::MaxTokens);
    assert_eq!(tokens, engine.greedy(&prompt, 256, 16, false));
    // What request 7 streamed before the cancel is the greedy output so far.
    assert_eq!(got, engine.greedy(&prompt, 4096, got.len() as u32, false));
    // A cancelled request still counts as completed.
    assert_eq!(rig.stats().requests_completed, 2);
}

/// A cancel for a request still waiting behind a running one ends it at once, with no
/// prompt evaluated and no token, rather than after the running one and at its full length;
/// the running request goes on to its end.
#[test]
fn a_cancel_ends_a_queued_request_before_it_runs() {
    let Some((file, sha)) = model() else { return };
    let engine = HostEngine { file: file.clone() };
    let rig = Rig::start(limits());
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    assert_eq!(rig.open(1, 1, 512), Status::Ok);
    assert_eq!(rig.open(2, 1, 256), Status::Ok);
    let prompt = engine.encode("Once upon a time");
    rig.request(&endless_request(7, 1, prompt.clone(), 300));
    let mut tokens7 = rig.first_slice(7);
    rig.request(&endless_request(8, 2, prompt.clone(), 16));
    rig.request(&RequestMsg::Cancel(CancelRequest { request_id: 8 }));
    let mut end8 = None;
    let end7 = loop {
        match rig.host.recv_response(T).expect("response") {
            ResponseMsg::Tokens(t) if t.request_id == 7 => tokens7.extend(t.token_ids),
            ResponseMsg::EndOfStream(e) if e.request_id == 8 => end8 = Some(e),
            ResponseMsg::EndOfStream(e) if e.request_id == 7 => break e,
            other => panic!("unexpected {other:?}"),
        }
    };
    let end8 = end8.expect("the cancelled request ended only after the running one");
    assert_eq!(end8.reason, StopReason::Cancelled);
    assert_eq!((end8.prompt_tokens, end8.generated_tokens), (0, 0));
    assert_eq!(end7.reason, StopReason::MaxTokens);
    assert_eq!(tokens7, engine.greedy(&prompt, 512, 300, false));
    // The session of the cancelled request serves the next one.
    rig.request(&endless_request(9, 2, prompt.clone(), 16));
    let (tokens, end) = rig.collect(9).expect("the next request on its session");
    assert_eq!(end.reason, StopReason::MaxTokens);
    assert_eq!(tokens, engine.greedy(&prompt, 256, 16, false));
}

#[test]
fn a_preempted_request_resumes_on_its_session_as_if_never_stopped() {
    let Some((file, sha)) = model() else { return };
    let engine = HostEngine { file: file.clone() };
    let rig = Rig::start(limits());
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    assert_eq!(rig.open(1, 1, 512), Status::Ok);
    let prompt = engine.encode("Once upon a time");
    // Long enough that the preempt arrives while it runs (the tiny model's context is 512).
    let want = engine.greedy(&prompt, 512, 450, false);

    rig.request(&endless_request(7, 1, prompt, 450));
    let first = rig.first_slice(7);
    // A preempt for an unknown request is ignored; the one for 7 stops it for now.
    rig.request(&RequestMsg::Preempt(PreemptRequest { request_id: 99 }));
    rig.request(&RequestMsg::Preempt(PreemptRequest { request_id: 7 }));
    let (mut got, end) = rig.collect_from(7, first).expect("preempted, not refused");
    assert_eq!(end.reason, StopReason::Preempted);
    assert!(
        got.len() < 450,
        "{} tokens: the preempt did not stop it",
        got.len()
    );

    // The next turn starts from the last token, which the guest has not fed back yet.
    let last = *got.last().expect("a token before the preempt");
    rig.request(&endless_request(8, 1, vec![last], 450 - got.len() as u32));
    let (rest, end8) = rig.collect(8).expect("the session resumes");
    assert_eq!(end8.reason, StopReason::MaxTokens);
    got.extend(rest);
    assert_eq!(got, want, "preempted and resumed vs in one go");
}
