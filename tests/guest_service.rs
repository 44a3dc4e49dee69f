//! The guest's inference service (`guest-service`, the very code of the engine image) on the
//! host, against the real VMM device in one process over the loopback transport
//! (`loopback.rs`): load, sessions, generation, cancel, token slices, budget changes in the
//! middle of a generation, eviction, and every refusal with its documented status. The host
//! side talks through `LlmHost`, as `GuestVm` does; greedy output is compared with the
//! host engine's. Sealed models over the same rig: `service_sealed.rs`.

// The rig is shared with `service_sealed.rs`, which uses the parts this file does not.
#[path = "service_rig.rs"]
#[allow(dead_code)]
mod rig;

use inference_guest::model::Logits;
use inference_guest::parallel::SingleThread;
use inference_guest::quant::Kernels;
use rig::*;
use std::sync::atomic::Ordering;
use virtio_llm::Status;
use virtio_llm::spec::MAX_LOGPROB_TOKENS_PER_RESPONSE;
use virtio_llm::wire::control::{
    CloseSession, ControlCommand, ControlReply, LoadModelBegin, LoadModelChunk, LoadModelEnd,
    UnloadModel,
};
use virtio_llm::wire::memory::BudgetChange;
use virtio_llm::wire::options::{GenerateOptions, Penalties};
use virtio_llm::wire::probe::{MemoryProbe, ProbeOp};
use virtio_llm::wire::request::{
    GenerateRequest, PreemptRequest, Prompt, RequestMsg, SamplingParams, SealedPrompt,
};
use virtio_llm::wire::response::{ResponseMsg, StopReason};

#[test]
fn greedy_output_equals_the_host_engine_in_bounded_slices() {
    let Some((file, sha)) = model() else { return };
    let engine = HostEngine { file: file.clone() };
    let rig = Rig::start(limits());
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    assert_eq!(rig.open(10, 1, 256), Status::Ok);
    assert_eq!(rig.open(11, 1, 256), Status::Ok);

    // A text prompt (the service tokenizes) and a token prompt, each on its own session.
    let text = "The capital of France is";
    let ids = engine.encode(text);
    let want = engine.greedy(&ids, 256, 48, true);
    rig.request(&greedy_request(1, 10, Prompt::Text(text.into()), 48));
    let (got, end) = rig.collect(1).expect("generation");
    assert_eq!(
        got, want,
        "text prompt: guest service and host engine differ"
    );
    assert_eq!(end.prompt_tokens as usize, ids.len());
    let reason = if want.len() == 48 {
        StopReason::MaxTokens
    } else {
        StopReason::EndOfGeneration
    };
    assert_eq!(end.reason, reason);

    let ids2 = engine.encode("def fibonacci(n):");
    let want2 = engine.greedy(&ids2, 256, 200, false);
    rig.request(&endless_request(2, 11, ids2.clone(), 200));
    let (got2, end2) = rig.collect(2).expect("generation");
    assert_eq!(
        got2, want2,
        "token prompt: guest service and host engine differ"
    );
    assert_eq!(end2.reason, StopReason::MaxTokens);

    let s = rig.stats();
    assert_eq!((s.models_loaded, s.sessions_open), (1, 2));
    assert_eq!(s.requests_completed, 2);
    assert_eq!(s.tokens_generated, (want.len() + want2.len()) as u64);
    assert_eq!(s.engine_kernels, Kernels::detect().isa().code());
    assert_eq!(s.memory_budget_bytes, BUDGET);
}

#[test]
fn a_budget_change_mid_generation_is_answered_while_the_generation_goes_on() {
    let Some((file, sha)) = model() else { return };
    let engine = HostEngine { file: file.clone() };
    let rig = Rig::start(limits());
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    assert_eq!(rig.open(1, 1, 512), Status::Ok);
    let prompt = engine.encode("Write a haiku about the sea.");
    let want = engine.greedy(&prompt, 512, 450, false);

    rig.request(&endless_request(5, 1, prompt, 450));
    let first = rig.first_slice(5);
    let shrunk = BUDGET - 128 * MIB;
    rig.host
        .send_budget(
            &BudgetChange {
                sequence: 1,
                new_budget_bytes: shrunk,
            },
            T,
        )
        .expect("budget change");
    let report = rig.report_for(1);
    assert!(report.ranges.is_empty(), "nothing was resident beyond use");
    assert_eq!(rig.pool.budget.load(Ordering::SeqCst), shrunk);
    let (got, end) = rig.collect_from(5, first).expect("the generation goes on");
    assert_eq!(end.reason, StopReason::MaxTokens);
    assert_eq!(got, want, "the budget change disturbed the generation");
    assert_eq!(rig.stats().memory_budget_bytes, shrunk);
    // Applied between two tokens, not after the request: tokens were generated after it.
    let budgets = rig.pool.budgets.lock().unwrap().clone();
    let at = budgets
        .iter()
        .find(|b| b.0 == shrunk)
        .expect("the new budget")
        .1;
    let last = rig.pool.ticks.load(Ordering::SeqCst);
    assert!(
        at + 10 < last,
        "the budget was applied at counter read {at} of {last}: not mid-generation"
    );
}

#[test]
fn a_shrink_below_what_is_in_use_evicts_models_and_closes_their_sessions() {
    let Some((file, sha)) = model() else { return };
    let rig = Rig::start(limits());
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    assert_eq!(rig.open(1, 1, 256), Status::Ok);
    rig.request(&greedy_request(1, 1, Prompt::Text("Hello".into()), 4));
    rig.collect(1).expect("generation");
    assert_eq!(rig.stats().models_loaded, 1);

    // More in use than the new budget, and nothing the service frees lowers it: it evicts
    // everything it holds (caches, tokenizers, models) and still answers the change.
    rig.pool.in_use.store(300 * MIB, Ordering::SeqCst);
    rig.host
        .send_budget(
            &BudgetChange {
                sequence: 9,
                new_budget_bytes: 256 * MIB,
            },
            T,
        )
        .expect("budget change");
    rig.report_for(9);
    let s = rig.stats();
    assert_eq!((s.models_loaded, s.sessions_open), (0, 0));
    rig.request(&greedy_request(2, 1, Prompt::Text("Hello".into()), 4));
    assert_eq!(rig.collect(2).err(), Some(Status::NoSuchSession));
}

#[test]
fn a_request_sent_after_a_budget_raise_is_served_under_the_new_budget() {
    let Some((file, sha)) = model() else { return };
    let rig = Rig::start(limits());
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    assert_eq!(rig.open(1, 1, 256), Status::Ok);
    // Each round: too little room for a request under the current budget, then a raise and
    // a request sent right after it. Budget changes come on their own queue, so the service
    // may see the request first in a step; it must still serve it under the raise (once a
    // 1-in-15 flake in CI).
    let mut budget = BUDGET;
    for round in 1..=40u64 {
        rig.pool.in_use.store(budget - 8 * MIB, Ordering::SeqCst);
        budget += 32 * MIB;
        let raise = BudgetChange {
            sequence: round,
            new_budget_bytes: budget,
        };
        rig.host.send_budget(&raise, T).expect("budget change");
        let prompt = Prompt::Tokens(vec![1, 2, 3]);
        rig.request(&greedy_request(round, 1, prompt, 1));
        let (_, end) = rig
            .collect(round)
            .unwrap_or_else(|s| panic!("round {round}: refused with {s:?}"));
        assert_eq!(end.generated_tokens, 1);
        rig.report_for(round);
    }
}

#[test]
fn an_evicted_session_rebuilds_its_cache_from_its_history() {
    let Some((file, sha)) = model() else { return };
    let engine = HostEngine { file: file.clone() };
    let rig = Rig::start(limits());
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    assert_eq!(rig.open(1, 1, 512), Status::Ok);
    let p1 = engine.encode("The capital of France is");
    rig.request(&endless_request(1, 1, p1.clone(), 20));
    let (t1, _) = rig.collect(1).expect("generation");

    // Short of memory, opening session 2 evicts session 1's KV cache and still fails.
    rig.pool.in_use.store(BUDGET - 20 * MIB, Ordering::SeqCst);
    assert_eq!(rig.open(2, 1, 512), Status::OutOfMemory);
    rig.pool.in_use.store(0, Ordering::SeqCst);

    // Session 1's next request rebuilds the cache from the prompt and the generated tokens
    // that were fed back (all but the last), then goes on.
    let p2 = engine.encode(" and the capital of Italy is");
    rig.request(&endless_request(2, 1, p2.clone(), 20));
    let (t2, _) = rig.collect(2).expect("generation after eviction");
    let want = engine.with(|model, tok| {
        let mut session = model.new_session(512);
        let history: Vec<u32> = p1.iter().chain(&t1[..t1.len() - 1]).copied().collect();
        session
            .eval(model, &history, Logits::Last, &SingleThread)
            .unwrap();
        HostEngine::greedy_on(model, tok, &mut session, &p2, 20, false)
    });
    assert_eq!(
        t2, want,
        "the rebuilt cache differs from the evaluated history"
    );
}

#[test]
fn refused_loads_get_their_documented_status() {
    let Some((file, sha)) = model() else { return };
    let rig = Rig::start(limits());
    let ack = |cmd: ControlCommand<'_>| rig.ack(&cmd).status;
    let begin = |model_id, total_bytes| {
        ControlCommand::LoadModelBegin(LoadModelBegin {
            model_id,
            total_bytes,
        })
    };

    // Loading.
    assert_eq!(
        ack(begin(1, BUDGET + MIB)),
        Status::OutOfMemory,
        "larger than the budget"
    );
    assert_eq!(
        rig.load(1, b"not a gguf file", sha256(b"not a gguf file")),
        Status::BadModel
    );
    assert_eq!(
        rig.load(1, &file, [0; 32]),
        Status::BadModel,
        "wrong SHA-256"
    );
    let end = |model_id| {
        ControlCommand::LoadModelEnd(LoadModelEnd {
            model_id,
            sha256: sha,
        })
    };
    assert_eq!(ack(end(1)), Status::BadRequest, "an end without a begin");
    assert_eq!(ack(begin(2, file.len() as u64)), Status::Ok);
    assert_eq!(
        ack(begin(3, file.len() as u64)),
        Status::Busy,
        "a load in progress"
    );
    let chunk = |model_id, offset| {
        ControlCommand::LoadModelChunk(LoadModelChunk {
            model_id,
            offset,
            data: &file[..16],
        })
    };
    assert_eq!(
        ack(chunk(3, 0)),
        Status::BadRequest,
        "a chunk of another model"
    );
    assert_eq!(
        ack(chunk(2, 16)),
        Status::BadRequest,
        "a chunk out of order"
    );
    assert_eq!(
        ack(end(2)),
        Status::BadRequest,
        "the failed chunk discarded the load"
    );
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    assert_eq!(ack(begin(1, file.len() as u64)), Status::AlreadyExists);
    assert_eq!(rig.load(2, &file, sha), Status::Ok);
    assert_eq!(
        ack(begin(3, file.len() as u64)),
        Status::Busy,
        "max_models loaded"
    );
    let unload = |model_id| {
        ControlCommand::UnloadModel(UnloadModel {
            model_id,
            keep_layers: 0,
        })
    };
    assert_eq!(ack(unload(3)), Status::NoSuchModel);
    assert_eq!(ack(unload(2)), Status::Ok);
    assert_eq!(rig.stats().models_loaded, 1);
}

#[test]
fn refused_sessions_and_probes_get_their_documented_status() {
    let Some((file, sha)) = model() else { return };
    let rig = Rig::start(limits());
    let ack = |cmd: ControlCommand<'_>| rig.ack(&cmd).status;
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    assert_eq!(rig.open(1, 9, 256), Status::NoSuchModel);
    assert_eq!(rig.open(1, 1, 256), Status::Ok);
    assert_eq!(rig.open(1, 1, 256), Status::AlreadyExists);
    rig.pool.in_use.store(BUDGET - 20 * MIB, Ordering::SeqCst);
    assert_eq!(
        rig.open(2, 1, 256),
        Status::OutOfMemory,
        "a KV cache over budget"
    );
    rig.pool.in_use.store(0, Ordering::SeqCst);
    assert_eq!(rig.open(2, 1, 16), Status::Ok);
    assert_eq!(rig.open(3, 1, 16), Status::Ok);
    assert_eq!(rig.open(4, 1, 16), Status::Busy, "max_sessions open");
    let close = |session_id| ControlCommand::CloseSession(CloseSession { session_id });
    assert_eq!(ack(close(3)), Status::Ok);
    assert_eq!(ack(close(3)), Status::NoSuchSession);
    let probe = ControlCommand::Probe(MemoryProbe {
        op: ProbeOp::PlaceCanary,
    });
    match rig.command(&probe) {
        ControlReply::Probe(p) => assert_eq!(p.status, Status::Unsupported),
        other => panic!("expected a probe reply, got {other:?}"),
    }
    assert_eq!(rig.stats().sessions_open, 2);
}

#[test]
fn refused_requests_get_their_documented_status_and_serving_goes_on() {
    let Some((file, sha)) = model() else { return };
    let rig = Rig::start(limits());
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    assert_eq!(rig.open(1, 1, 256), Status::Ok);
    assert_eq!(rig.open(2, 1, 16), Status::Ok);
    let tokens =
        |id, session, prompt: Vec<u32>| greedy_request(id, session, Prompt::Tokens(prompt), 4);
    rig.request(&tokens(1, 42, vec![1, 2, 3]));
    assert_eq!(rig.collect(1).err(), Some(Status::NoSuchSession));
    rig.request(&tokens(2, 2, (0..20).collect()));
    assert_eq!(
        rig.collect(2).err(),
        Some(Status::ContextFull),
        "a prompt over the context"
    );
    rig.request(&tokens(3, 1, vec![1, 1 << 23]));
    assert_eq!(
        rig.collect(3).err(),
        Some(Status::BadRequest),
        "a token past the vocabulary"
    );
    let mut bad = SamplingParams::greedy(4);
    bad.temperature = 1.0;
    bad.top_p = 0.0;
    rig.request(&RequestMsg::Generate(GenerateRequest {
        options: Default::default(),
        request_id: 4,
        session_id: 1,
        sampling: bad,
        prompt: Prompt::Tokens(vec![1]),
    }));
    // The wire allows top_p 0; the engine's sampler does not.
    assert_eq!(
        rig.collect(4).err(),
        Some(Status::BadRequest),
        "sampling the engine refuses"
    );
    rig.pool.in_use.store(BUDGET, Ordering::SeqCst);
    rig.request(&tokens(5, 1, vec![1]));
    assert_eq!(
        rig.collect(5).err(),
        Some(Status::OutOfMemory),
        "no room to run"
    );
    rig.pool.in_use.store(0, Ordering::SeqCst);

    // Still serving after every refusal.
    rig.request(&tokens(6, 1, vec![1, 2, 3]));
    let (_, end) = rig.collect(6).expect("a good request after the refusals");
    assert_eq!(end.generated_tokens, 4);
    let s = rig.stats();
    assert_eq!(
        (s.models_loaded, s.sessions_open, s.requests_completed),
        (1, 2, 1)
    );
}

/// The clock is the host's (the VMM emulates it): one that starts near the end of its range
/// and runs backwards must not stop the service, which once subtracted and added clock
/// readings unchecked (a panic in the guest, or a deadline wrapped into the past). Loading,
/// generating and the engine's timings all go through it.
#[test]
fn a_hostile_host_clock_does_not_stop_the_service() {
    let Some((file, sha)) = model() else { return };
    let rig = Rig::start(limits());
    rig.pool.backwards_clock.store(true, Ordering::SeqCst);
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    assert_eq!(rig.open(1, 1, 64), Status::Ok);
    rig.request(&greedy_request(1, 1, Prompt::Tokens(vec![1, 2, 3]), 4));
    let (tokens, end) = rig.collect(1).expect("the request runs");
    assert_eq!(tokens.len(), 4);
    assert_eq!(end.generated_tokens, 4);
    assert_eq!(rig.stats().requests_completed, 1);
}

/// Generation options (`feature::OPTIONS`) reach the engine's sampler: logprobs come with
/// every token (greedy's token the most likely, at most 16 ids a message), a logit bias
/// bans greedy's first token, and a sealed request with options is refused.
#[test]
fn options_shape_sampling_and_logprobs_come_with_the_tokens() {
    let Some((file, sha)) = model() else { return };
    let rig = Rig::start(limits());
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    assert_eq!(rig.open(1, 1, 256), Status::Ok);
    let with = |id, options: GenerateOptions| {
        RequestMsg::Generate(GenerateRequest {
            request_id: id,
            session_id: 1,
            sampling: SamplingParams::greedy(20),
            prompt: Prompt::Tokens(vec![1, 2, 3]),
            options,
        })
    };
    let logprobs = GenerateOptions {
        logprobs: Some(3),
        ..GenerateOptions::default()
    };
    rig.request(&with(1, logprobs));
    let mut ids = Vec::new();
    loop {
        match rig
            .host
            .recv_response(std::time::Duration::from_secs(60))
            .unwrap()
        {
            ResponseMsg::Tokens(t) => {
                assert!(t.token_ids.len() <= MAX_LOGPROB_TOKENS_PER_RESPONSE);
                assert_eq!(t.logprobs.len(), t.token_ids.len());
                for (id, lp) in t.token_ids.iter().zip(&t.logprobs) {
                    assert_eq!(lp.top.len(), 3);
                    assert_eq!(lp.top[0], (*id, lp.logprob), "greedy takes the most likely");
                    assert!(lp.top.iter().all(|&(_, l)| l <= 0.0));
                }
                ids.extend(t.token_ids);
            }
            ResponseMsg::EndOfStream(e) => {
                assert_eq!(e.generated_tokens as usize, ids.len());
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(!ids.is_empty());
    assert_eq!(rig.open(2, 1, 256), Status::Ok);
    let banned = GenerateOptions {
        logit_bias: vec![(ids[0], -100.0)],
        ..GenerateOptions::default()
    };
    let mut req = with(2, banned);
    if let RequestMsg::Generate(g) = &mut req {
        g.session_id = 2;
    }
    rig.request(&req);
    let (other, _) = rig.collect(2).expect("a banned token's request");
    assert_ne!(other[0], ids[0], "the banned token came first");
    let mut sealed = with(
        3,
        GenerateOptions {
            logprobs: Some(0),
            ..GenerateOptions::default()
        },
    );
    if let RequestMsg::Generate(g) = &mut sealed {
        g.prompt = Prompt::Sealed(SealedPrompt {
            model: "m".into(),
            stream: false,
            request: vec![0; 64],
        });
    }
    rig.request(&sealed);
    assert_eq!(rig.collect(3).err(), Some(Status::BadRequest));
}

/// Penalties look at the whole context: a request preempted and resumed gets the tokens
/// one run gets, though its second slice's prompt is a single token.
#[test]
fn penalties_see_earlier_slices_of_a_preempted_request() {
    let Some((file, sha)) = model() else { return };
    let engine = HostEngine { file: file.clone() };
    let rig = Rig::start(limits());
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    assert_eq!(rig.open(1, 1, 512), Status::Ok);
    assert_eq!(rig.open(2, 1, 512), Status::Ok);
    let prompt = engine.encode("Once upon a time");
    let penalised = |id, session, prompt, n| {
        let mut r = endless_request(id, session, prompt, n);
        if let RequestMsg::Generate(g) = &mut r {
            g.sampling.repeat_penalty = 2.0;
            g.options.penalties = Some(Penalties {
                presence: 2.0,
                frequency: 2.0,
                last_n: 64,
            });
        }
        r
    };
    rig.request(&penalised(1, 2, prompt.clone(), 450));
    let (want, _) = rig.collect(1).expect("one run");

    rig.request(&penalised(2, 1, prompt, 450));
    let first = rig.first_slice(2);
    // Some tokens in, so that the window the second slice needs reaches into the first.
    std::thread::sleep(std::time::Duration::from_millis(100));
    rig.request(&RequestMsg::Preempt(PreemptRequest { request_id: 2 }));
    let (mut got, end) = rig.collect_from(2, first).expect("preempted");
    assert_eq!(end.reason, StopReason::Preempted);
    assert!(got.len() < 450, "the preempt did not stop it");
    let last = *got.last().expect("a token before the preempt");
    rig.request(&penalised(3, 1, vec![last], 450 - got.len() as u32));
    let (rest, _) = rig.collect(3).expect("the session resumes");
    got.extend(rest);
    assert_eq!(
        got, want,
        "preempted and resumed vs in one go, penalties on"
    );
}
