//! Continuous batching in the guest service (`feature::BATCH`), on the rig of
//! `guest_service.rs` (the service on a host thread against the real device): requests on
//! different sessions of one model run together, each getting exactly the tokens and the
//! end it gets alone (the host engine's greedy output, or the same request run without
//! batching), while their responses interleave. Requests join a running batch, leave it on
//! a cancel or a preempt, and a request on another model waits for the batch to end.

#[path = "service_rig.rs"]
#[allow(dead_code)]
mod rig;

use rig::*;
use std::collections::BTreeMap;
use virtio_llm::Status;
use virtio_llm::wire::options::{GenerateOptions, Penalties};
use virtio_llm::wire::request::{
    CancelRequest, GenerateRequest, PreemptRequest, Prompt, RequestMsg, SamplingParams,
};
use virtio_llm::wire::response::{EndOfStream, ResponseMsg, StopReason, TokenLogprob};

/// The device offers `feature::BATCH`, with room for nine sessions.
fn batch_limits() -> vmm::devices::virtio_llm::LlmConfig {
    vmm::devices::virtio_llm::LlmConfig {
        max_sessions: 9,
        batch: true,
        ..limits()
    }
}

/// One request's responses, and where they came in the order of all responses.
#[derive(Default)]
struct Stream {
    tokens: Vec<u32>,
    logprobs: Vec<TokenLogprob>,
    end: Option<EndOfStream>,
    /// Indices (in arrival order) of its first `Tokens` and of its end of stream.
    first_at: Option<usize>,
    end_at: Option<usize>,
}

/// Responses until `n` requests have ended, by request id; errors fail the test.
fn collect_all(rig: &Rig, n: usize) -> BTreeMap<u64, Stream> {
    collect_after(rig, n, None)
}

/// [`collect_all`] once the first slice of request `id`, `first`, was taken: it counts as
/// the first response.
fn collect_after(rig: &Rig, n: usize, first: Option<(u64, Vec<u32>)>) -> BTreeMap<u64, Stream> {
    let mut streams: BTreeMap<u64, Stream> = BTreeMap::new();
    if let Some((id, tokens)) = first {
        let s = streams.entry(id).or_default();
        s.tokens = tokens;
        s.first_at = Some(0);
    }
    let mut ended = 0;
    for at in 1.. {
        if ended == n {
            break;
        }
        match rig.host.recv_response(T).expect("response") {
            ResponseMsg::Tokens(t) => {
                let s = streams.entry(t.request_id).or_default();
                assert!(s.end.is_none(), "tokens after the end of {}", t.request_id);
                assert!(!t.token_ids.is_empty());
                s.first_at.get_or_insert(at);
                s.tokens.extend_from_slice(&t.token_ids);
                s.logprobs.extend(t.logprobs);
            }
            ResponseMsg::EndOfStream(e) => {
                let s = streams.entry(e.request_id).or_default();
                assert_eq!(e.generated_tokens as usize, s.tokens.len());
                s.end_at = Some(at);
                s.end = Some(e);
                ended += 1;
            }
            other => panic!("unexpected response {other:?}"),
        }
    }
    streams
}

/// A prompt of `len` tokens: the start of a text's tokens, repeated as needed.
fn prompt_of(engine: &HostEngine, seed: usize, len: usize) -> Vec<u32> {
    let texts = [
        "Once upon a time there was a little fox who lived in the forest.",
        "def fibonacci(n):\n    if n < 2:\n        return n",
        "The capital of France is Paris, and the capital of Italy is",
        "Write a haiku about the sea and the wind over the dunes.",
    ];
    let ids = engine.encode(texts[seed % texts.len()]);
    ids.iter().copied().cycle().take(len).collect()
}

/// `n` requests of different prompt lengths and token counts sent at once; each one's
/// tokens are the host engine's, and all run together: every request's first tokens come
/// before the end of the first (and longest) one.
fn batch_of(n: usize) {
    let Some((file, sha)) = model() else { return };
    let engine = HostEngine { file: file.clone() };
    let rig = Rig::start(batch_limits());
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    for i in 0..n {
        assert_eq!(rig.open(10 + i as u32, 1, 512), Status::Ok);
    }
    // Every request built (and the host engine's answer computed) before any is sent, so
    // that they reach the service together.
    let mut want = Vec::new();
    let mut requests = Vec::new();
    for i in 0..n {
        let prompt = prompt_of(&engine, i, 3 + 7 * i);
        let max_tokens = if i == 0 { 160 } else { 20 + 9 * i as u32 };
        // Half stop at an end of generation, half go on to `max_tokens`.
        let stop_at_eog = i % 2 == 1;
        want.push(engine.greedy(&prompt, 512, max_tokens, stop_at_eog));
        let mut sampling = SamplingParams::greedy(max_tokens);
        sampling.ignore_eog = !stop_at_eog;
        requests.push(RequestMsg::Generate(GenerateRequest {
            options: Default::default(),
            request_id: 100 + i as u64,
            session_id: 10 + i as u32,
            sampling,
            prompt: Prompt::Tokens(prompt),
        }));
    }
    for r in &requests {
        rig.request(r);
    }
    let streams = collect_all(&rig, n);
    let first_end = streams[&100].end_at.unwrap();
    for (i, want) in want.iter().enumerate() {
        let s = &streams[&(100 + i as u64)];
        assert_eq!(&s.tokens, want, "request {i} of {n}: batched vs alone");
        let end = s.end.as_ref().unwrap();
        assert_eq!(end.prompt_tokens as usize, 3 + 7 * i);
        let reason = if i % 2 == 1 && want.len() < 20 + 9 * i {
            StopReason::EndOfGeneration
        } else {
            StopReason::MaxTokens
        };
        assert_eq!(end.reason, reason, "request {i}");
        assert!(
            s.first_at.unwrap() < first_end,
            "request {i}'s tokens came after request 0 ended: not batched"
        );
    }
    let stats = rig.stats();
    assert_eq!(stats.requests_completed, n as u64);
    assert_eq!(
        stats.tokens_generated,
        want.iter().map(|w| w.len() as u64).sum::<u64>()
    );
}

#[test]
fn one_request_in_a_batch_equals_the_host_engine() {
    batch_of(1);
}

#[test]
fn three_requests_run_together_each_as_alone() {
    batch_of(3);
}

#[test]
fn eight_requests_run_together_each_as_alone() {
    batch_of(8);
}

/// A request that arrives while a batch runs joins it after its prompt; its session is
/// opened while the batch runs (the command is served between steps).
#[test]
fn a_request_joins_a_running_batch() {
    let Some((file, sha)) = model() else { return };
    let engine = HostEngine { file: file.clone() };
    let rig = Rig::start(batch_limits());
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    assert_eq!(rig.open(1, 1, 512), Status::Ok);
    let (a, b) = (prompt_of(&engine, 0, 12), prompt_of(&engine, 1, 30));
    rig.request(&endless_request(1, 1, a.clone(), 400));
    let first = rig.first_slice(1);
    assert_eq!(rig.open(2, 1, 512), Status::Ok);
    rig.request(&endless_request(2, 2, b.clone(), 40));
    let mut streams = collect_after(&rig, 2, Some((1, first)));
    let sa = streams.remove(&1).unwrap();
    let sb = streams.remove(&2).unwrap();
    assert_eq!(sa.tokens, engine.greedy(&a, 512, 400, false));
    assert_eq!(sb.tokens, engine.greedy(&b, 512, 40, false));
    assert!(
        sb.end_at.unwrap() < sa.end_at.unwrap(),
        "the late request ran after the first one instead of joining it"
    );
    assert_eq!(sb.end.unwrap().reason, StopReason::MaxTokens);
}

/// A cancel ends one request of a batch, a preempt another (which resumes later as if
/// never stopped); the third goes on to its end undisturbed.
#[test]
fn a_cancel_and_a_preempt_end_one_request_each_and_the_others_go_on() {
    let Some((file, sha)) = model() else { return };
    let engine = HostEngine { file: file.clone() };
    let rig = Rig::start(batch_limits());
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    let prompts: Vec<Vec<u32>> = (0..3).map(|i| prompt_of(&engine, i, 5 + 4 * i)).collect();
    for i in 1..=3 {
        assert_eq!(rig.open(i, 1, 512), Status::Ok);
    }
    for (i, p) in prompts.iter().enumerate() {
        rig.request(&endless_request(i as u64 + 1, i as u32 + 1, p.clone(), 450));
    }
    let mut streams = BTreeMap::<u64, Vec<u32>>::new();
    // Each request's first tokens, then the cancel and the preempt.
    while streams.len() < 3 {
        match rig.host.recv_response(T).expect("response") {
            ResponseMsg::Tokens(t) => streams.entry(t.request_id).or_default().extend(t.token_ids),
            other => panic!("unexpected {other:?}"),
        }
    }
    rig.request(&RequestMsg::Cancel(CancelRequest { request_id: 2 }));
    rig.request(&RequestMsg::Preempt(PreemptRequest { request_id: 3 }));
    let mut ends = BTreeMap::new();
    while ends.len() < 3 {
        match rig.host.recv_response(T).expect("response") {
            ResponseMsg::Tokens(t) => streams.entry(t.request_id).or_default().extend(t.token_ids),
            ResponseMsg::EndOfStream(e) => {
                assert_eq!(e.generated_tokens as usize, streams[&e.request_id].len());
                ends.insert(e.request_id, e);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(ends[&1].reason, StopReason::MaxTokens);
    assert_eq!(streams[&1], engine.greedy(&prompts[0], 512, 450, false));
    assert_eq!(ends[&2].reason, StopReason::Cancelled);
    assert_eq!(ends[&3].reason, StopReason::Preempted);
    for id in [2, 3] {
        let got = &streams[&id];
        assert!(got.len() < 450, "request {id} was not stopped");
        let p = &prompts[id as usize - 1];
        assert_eq!(got, &engine.greedy(p, 512, got.len() as u32, false));
    }
    // The preempted session resumes from its last token, which was not fed back.
    let mut got = streams.remove(&3).unwrap();
    let last = *got.last().unwrap();
    rig.request(&endless_request(4, 3, vec![last], 450 - got.len() as u32));
    let (rest, end) = rig.collect(4).expect("the session resumes");
    assert_eq!(end.reason, StopReason::MaxTokens);
    got.extend(rest);
    assert_eq!(got, engine.greedy(&prompts[2], 512, 450, false));
}

/// A batching rig with the test model loaded twice (models 1 and 2) and session `i + 1` on
/// model `models[i]` (512 positions each), and a prompt per session.
fn two_models(models: &[u32]) -> Option<(HostEngine, Rig, Vec<Vec<u32>>)> {
    let (file, sha) = model()?;
    let engine = HostEngine { file: file.clone() };
    let rig = Rig::start(batch_limits());
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    assert_eq!(rig.load(2, &file, sha), Status::Ok);
    for (i, &m) in models.iter().enumerate() {
        assert_eq!(rig.open(i as u32 + 1, m, 512), Status::Ok);
    }
    let p = (0..models.len())
        .map(|i| prompt_of(&engine, i, 6 + 5 * i))
        .collect();
    Some((engine, rig, p))
}

/// A request on another model cannot join: it waits for the batch to end, and a request
/// that could have joined, sent after it, waits too.
#[test]
fn a_request_on_another_model_waits_for_the_batch() {
    let Some((engine, rig, p)) = two_models(&[1, 2, 1]) else {
        return;
    };
    rig.request(&endless_request(1, 1, p[0].clone(), 200));
    let first = rig.first_slice(1);
    rig.request(&endless_request(2, 2, p[1].clone(), 30));
    rig.request(&endless_request(3, 3, p[2].clone(), 30));
    let streams = collect_after(&rig, 3, Some((1, first)));
    for (i, max) in [(1u64, 200), (2, 30), (3, 30)] {
        let want = engine.greedy(&p[i as usize - 1], 512, max, false);
        assert_eq!(streams[&i].tokens, want, "request {i}");
    }
    let (s1, s2, s3) = (&streams[&1], &streams[&2], &streams[&3]);
    assert!(
        s1.end_at < s2.first_at,
        "the other model's request ran inside the batch"
    );
    assert!(
        s2.end_at < s3.first_at,
        "a request joined the batch while another waited"
    );
}

/// Sampling options stay each request's own in a batch: seeded sampling with penalties,
/// a logit bias and logprobs gives every request the tokens and logprobs it gets when
/// the same requests run one at a time.
#[test]
fn options_in_a_batch_are_each_requests_own() {
    let Some((file, sha)) = model() else { return };
    let engine = HostEngine { file: file.clone() };
    let requests: Vec<RequestMsg> = (0..4u32)
        .map(|i| {
            let mut sampling = SamplingParams::greedy(60 - 8 * i);
            sampling.temperature = 0.8;
            sampling.top_k = 40;
            sampling.seed = 7 + u64::from(i);
            sampling.repeat_penalty = 1.1;
            sampling.ignore_eog = true;
            let options = GenerateOptions {
                penalties: (i % 2 == 0).then_some(Penalties {
                    presence: 0.5,
                    frequency: 0.3,
                    last_n: 32,
                }),
                logit_bias: vec![(13, -100.0), (200 + i, 2.0)],
                logprobs: (i != 1).then_some(2),
                ..Default::default()
            };
            RequestMsg::Generate(GenerateRequest {
                options,
                request_id: u64::from(i) + 1,
                session_id: i + 1,
                sampling,
                prompt: Prompt::Tokens(prompt_of(&engine, i as usize, 4 + 6 * i as usize)),
            })
        })
        .collect();
    let run = |batch: bool| {
        let rig = Rig::start(vmm::devices::virtio_llm::LlmConfig {
            batch,
            ..batch_limits()
        });
        assert_eq!(rig.load(1, &file, sha), Status::Ok);
        for i in 1..=4 {
            assert_eq!(rig.open(i, 1, 256), Status::Ok);
        }
        for r in &requests {
            rig.request(r);
        }
        collect_all(&rig, 4)
    };
    let (batched, alone) = (run(true), run(false));
    for id in 1..=4u64 {
        let (b, a) = (&batched[&id], &alone[&id]);
        assert_eq!(b.tokens, a.tokens, "request {id}: batched vs one at a time");
        assert_eq!(b.logprobs.len(), a.logprobs.len());
        for (x, y) in b.logprobs.iter().zip(&a.logprobs) {
            assert_eq!(x.logprob.to_bits(), y.logprob.to_bits(), "request {id}");
            assert_eq!(x.top.len(), y.top.len());
        }
        assert_eq!(b.end.as_ref().unwrap().reason, StopReason::MaxTokens);
    }
    // Not a trivial comparison: the sampling was not greedy.
    let greedy = engine.greedy(&prompt_of(&engine, 0, 4), 256, 60, false);
    assert_ne!(
        batched[&1].tokens, greedy,
        "the options did not reach the sampler"
    );
    // And the batched run interleaved.
    let first_end = batched.values().map(|s| s.end_at.unwrap()).min().unwrap();
    assert!(batched.values().all(|s| s.first_at.unwrap() < first_end));
}

/// Closing the session of a running request ends that request (`Cancelled`) before the
/// close is acknowledged; the batch goes on, and a command that could disturb it (an
/// unload) waits for its end.
#[test]
fn closing_a_running_session_cancels_its_request_and_an_unload_waits_for_the_batch() {
    use virtio_llm::wire::control::{CloseSession, ControlCommand, ControlReply, UnloadModel};
    let Some((file, sha)) = model() else { return };
    let engine = HostEngine { file: file.clone() };
    let rig = Rig::start(batch_limits());
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    assert_eq!(rig.load(2, &file, sha), Status::Ok);
    assert_eq!(rig.open(1, 1, 512), Status::Ok);
    assert_eq!(rig.open(2, 1, 512), Status::Ok);
    let (a, b) = (prompt_of(&engine, 0, 9), prompt_of(&engine, 2, 17));
    rig.request(&endless_request(1, 1, a.clone(), 450));
    rig.request(&endless_request(2, 2, b.clone(), 450));
    let mut tokens = BTreeMap::<u64, Vec<u32>>::new();
    while tokens.len() < 2 {
        match rig.host.recv_response(T).expect("response") {
            ResponseMsg::Tokens(t) => tokens.entry(t.request_id).or_default().extend(t.token_ids),
            other => panic!("unexpected {other:?}"),
        }
    }
    let close = ControlCommand::CloseSession(CloseSession { session_id: 2 });
    rig.host.send_command(&close, T).expect("close");
    // Request 2's end comes before the close's ack, and request 1 still runs.
    let end2 = loop {
        match rig.host.recv_response(T).expect("response") {
            ResponseMsg::Tokens(t) => tokens.entry(t.request_id).or_default().extend(t.token_ids),
            ResponseMsg::EndOfStream(e) => break e,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!((end2.request_id, end2.reason), (2, StopReason::Cancelled));
    match rig.host.recv_reply(T).expect("the close's ack") {
        ControlReply::Ack(a) => assert_eq!((a.status, a.object_id), (Status::Ok, 2)),
        other => panic!("expected an ack, got {other:?}"),
    }
    let got2 = &tokens[&2];
    assert_eq!(end2.generated_tokens as usize, got2.len());
    assert_eq!(got2, &engine.greedy(&b, 512, got2.len() as u32, false));
    // An unload (of the other model) waits for the batch's end.
    let unload = ControlCommand::UnloadModel(UnloadModel {
        model_id: 2,
        keep_layers: 0,
    });
    rig.host.send_command(&unload, T).expect("unload");
    // Request 1 has hundreds of tokens to go: an unload served at once would be answered
    // well within this wait.
    assert!(
        rig.host
            .recv_reply(std::time::Duration::from_millis(100))
            .is_err(),
        "the unload was served while the batch ran"
    );
    let (rest, end1) = rig
        .collect_from(1, tokens.remove(&1).unwrap())
        .expect("request 1 goes on");
    assert_eq!(end1.reason, StopReason::MaxTokens);
    assert_eq!(rest, engine.greedy(&a, 512, 450, false));
    match rig.host.recv_reply(T).expect("the unload's ack") {
        ControlReply::Ack(a) => assert_eq!((a.status, a.object_id), (Status::Ok, 2)),
        other => panic!("expected an ack, got {other:?}"),
    }
    let s = rig.stats();
    assert_eq!((s.models_loaded, s.sessions_open), (1, 1));
}

/// A request waiting for the batch to end (on another model) that is cancelled ends at
/// once, with no token, while the batch goes on; the batch's request is undisturbed.
#[test]
fn a_cancel_ends_a_request_waiting_for_the_batch_at_once() {
    let Some((engine, rig, p)) = two_models(&[1, 2]) else {
        return;
    };
    rig.request(&endless_request(1, 1, p[0].clone(), 300));
    let first = rig.first_slice(1);
    rig.request(&endless_request(2, 2, p[1].clone(), 30));
    // The batch takes it between two steps and sets it aside to wait for its end.
    std::thread::sleep(std::time::Duration::from_millis(200));
    rig.request(&RequestMsg::Cancel(CancelRequest { request_id: 2 }));
    let streams = collect_after(&rig, 2, Some((1, first)));
    let (s1, s2) = (&streams[&1], &streams[&2]);
    let end2 = s2.end.as_ref().expect("an end");
    assert_eq!(end2.reason, StopReason::Cancelled);
    assert_eq!((end2.prompt_tokens, end2.generated_tokens), (0, 0));
    assert!(
        s2.end_at < s1.end_at,
        "the cancelled request ended only after the batch"
    );
    assert_eq!(s1.tokens, engine.greedy(&p[0], 512, 300, false));
}
