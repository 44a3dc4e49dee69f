//! Batched decode (`Model::decode_batch`) against one session at a time (`Session::eval`):
//! every session's logits must be the same to the bit at every step, with 1, 3 and 8
//! sessions of different prompt lengths joining and leaving between steps (continuous
//! batching), on tiny models of every architecture and on SmolLM2 Q8_0 and Q4_0. A positive
//! control shows the comparison catches a session stepped at a wrong position.
//!
//! The models come from `make setup` (git-ignored); a missing one is skipped with a message,
//! unless `FLEXSERVE_REQUIRE_MODELS=1` (set by `make test`), where it fails.

use inference_guest::gguf::Gguf;
use inference_guest::model::Session;
use inference_guest::model::{BatchBuffers, BatchError, DecodeStep, Logits, Model, ModelError};
use inference_guest::parallel::ThreadPool;
use inference_guest::quant::Kernels;
mod common;

use common::model_bytes;

/// The first largest logit (greedy decoding).
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// One conversation: its prompt's length, the step it joins the batch at (after its prompt
/// is evaluated alone), and how many tokens it generates before it leaves.
#[derive(Clone, Copy, Debug)]
struct Plan {
    prompt_len: usize,
    join: usize,
    gen_len: usize,
}

/// `n` conversations of different prompt lengths joining at steps 0, 2, 4, ... and leaving
/// at different steps, all `n` in the batch at once for a while; then one more joins after
/// the first has left (so at most `n` are ever in a batch), fitting contexts of `n_ctx`.
fn schedule(n: usize, n_ctx: usize) -> Vec<Plan> {
    let mut plans: Vec<Plan> = (0..n)
        .map(|i| Plan {
            prompt_len: 2 + (11 * i) % 37,
            join: 2 * i,
            gen_len: 2 * n + 3 * i,
        })
        .collect();
    plans.push(Plan {
        prompt_len: 9,
        join: plans[0].join + plans[0].gen_len + 1,
        gen_len: 6,
    });
    for p in &mut plans {
        assert!(
            p.prompt_len + p.gen_len < n_ctx,
            "{p:?} does not fit {n_ctx}"
        );
    }
    plans
}

/// A deterministic prompt of ordinary ids (no special tokens at the low end).
fn prompt(len: usize, seed: usize, n_vocab: usize) -> Vec<u32> {
    let span = n_vocab.saturating_sub(300).max(1);
    (0..len)
        .map(|i| (300 % n_vocab + (i * 7919 + seed * 104_729) % span) as u32)
        .collect()
}

/// The first logit a batched session got other than its one-at-a-time twin.
#[derive(Debug, PartialEq)]
struct Divergence {
    session: usize,
    step: usize,
    index: usize,
}

/// What a run covered.
#[derive(Debug, Default)]
struct Coverage {
    steps: usize,
    max_batch: usize,
    tokens: usize,
}

/// Runs `plans` two ways side by side: each conversation as a session stepped together
/// with every active one by `decode_batch` (the columns in a rotating order), and as a twin
/// stepped alone by `eval`, both greedy on the batched logits; compares every logit's bits.
/// `skew = Some((i, step))`: before that step, session `i`'s batched copy is moved back one
/// position (the positive control).
fn compare(
    model: &Model<'_>,
    pool: &ThreadPool,
    plans: &[Plan],
    skew: Option<(usize, usize)>,
) -> Result<Coverage, Divergence> {
    let n_vocab = model.cfg.n_vocab;
    let new = |p: &Plan| model.new_session(p.prompt_len + p.gen_len + 1);
    let mut batched: Vec<Session> = plans.iter().map(new).collect();
    let mut twins: Vec<Session> = plans.iter().map(new).collect();
    let (mut next, mut made) = (vec![0u32; plans.len()], vec![0usize; plans.len()]);
    let mut scratch = BatchBuffers::default();
    let mut cov = Coverage::default();
    let last = plans.iter().map(|p| p.join + p.gen_len).max().unwrap();
    for step in 0..=last {
        for (i, p) in plans.iter().enumerate().filter(|(_, p)| p.join == step) {
            let ids = prompt(p.prompt_len, i, n_vocab);
            let alone = twins[i].eval(model, &ids, Logits::Last, pool).unwrap();
            next[i] = argmax(alone);
            batched[i].eval(model, &ids, Logits::Last, pool).unwrap();
            // As the guest does: a session the batch steps gives its prompt's buffers back
            // (the batch has its own).
            assert!(
                batched[i].scratch_bytes() > 0,
                "an evaluation keeps buffers"
            );
            batched[i].release_scratch();
            assert_eq!(batched[i].scratch_bytes(), 0);
        }
        let mut active: Vec<usize> = (0..plans.len())
            .filter(|&i| plans[i].join <= step && made[i] < plans[i].gen_len)
            .collect();
        if active.is_empty() {
            continue;
        }
        let turn = step % active.len();
        active.rotate_left(turn);
        if let Some((i, _)) = skew.filter(|&(i, s)| s == step && active.contains(&i)) {
            let n = batched[i].n_past();
            batched[i].truncate(n - 1);
        }
        let mut slots: Vec<Option<&mut Session>> = batched.iter_mut().map(Some).collect();
        let mut steps: Vec<DecodeStep<'_>> = active
            .iter()
            .map(|&i| DecodeStep {
                session: slots[i].take().unwrap(),
                token: next[i],
            })
            .collect();
        model.decode_batch(&mut steps, &mut scratch, pool).unwrap();
        drop(steps);
        cov.steps += 1;
        cov.max_batch = cov.max_batch.max(active.len());
        // What the guest makes room for before a session joins bounds what the batch's
        // buffers hold (and they hold every session's logits at least).
        let held = scratch.held_bytes();
        assert!(
            held <= BatchBuffers::bytes_for(&model.cfg, cov.max_batch),
            "{held}"
        );
        assert!(held >= cov.max_batch * n_vocab * 4, "{held}");
        for &i in &active {
            let want = twins[i]
                .eval(model, &[next[i]], Logits::Last, pool)
                .unwrap();
            let got = batched[i].last_logits();
            assert_eq!(got.len(), n_vocab);
            if let Some(index) = (0..n_vocab).find(|&k| got[k].to_bits() != want[k].to_bits()) {
                return Err(Divergence {
                    session: i,
                    step,
                    index,
                });
            }
            next[i] = argmax(got);
            assert_eq!(batched[i].n_past(), twins[i].n_past());
            made[i] += 1;
            cov.tokens += 1;
        }
    }
    assert_eq!(made, plans.iter().map(|p| p.gen_len).collect::<Vec<_>>());
    Ok(cov)
}

/// Batched equals one-at-a-time on `name` with `kernels` for schedules of each of `sizes`
/// sessions; with `control`, a session stepped at the wrong position is caught.
fn check_model(name: &str, kernels: Kernels, sizes: &[usize], control: bool) {
    let Some(bytes) = model_bytes(name) else {
        return;
    };
    let gguf = Gguf::parse(&bytes).expect("parse");
    let model = Model::from_gguf(&gguf, kernels).expect("load");
    let pool = ThreadPool::new(2).expect("threads");
    let n_ctx = model.cfg.n_ctx_train;
    for &n in sizes {
        let plans = schedule(n, n_ctx);
        let cov = compare(&model, &pool, &plans, None).unwrap_or_else(|d| {
            panic!("{name} {:?} {n} sessions: {d:?}", kernels.isa());
        });
        assert_eq!(cov.max_batch, n, "{name}: {cov:?}");
        eprintln!("{name} {:?} {n} sessions: {cov:?}", kernels.isa());
    }
    if !control {
        return;
    }
    // The control: the same run, one session a position behind at one step, must differ
    // there (and not before).
    let plans = schedule(3, n_ctx);
    let d = compare(&model, &pool, &plans, Some((1, 7))).expect_err("skew undetected");
    assert_eq!((d.session, d.step), (1, 7), "{name}: {d:?}");
}

#[test]
fn tiny_architectures_batch_bit_identically() {
    for name in [
        "tiny.Q8_0.gguf",
        "tiny-qwen2.Q8_0.gguf",
        "tiny-qwen3.Q8_0.gguf",
        "tiny-llama3.Q8_0.gguf",
        "tiny-gemma2.Q8_0.gguf",
        "tiny-gemma3.Q8_0.gguf",
        "tiny-phi3.Q8_0.gguf",
    ] {
        check_model(name, Kernels::detect(), &[1, 3, 8], true);
    }
}

/// The weight types' products, on every SIMD kernel set this CPU runs (AVX-512 VNNI and
/// AVX2 here; `kernel_parity.rs` checks the scalar reference's columns). The 8-session
/// schedule alone: its batches grow from 1 to 8 columns and shrink again.
#[test]
fn tiny_weight_types_batch_bit_identically_on_every_kernel_set() {
    for name in [
        "tiny.Q4_K.gguf",
        "tiny.Q5_K.gguf",
        "tiny.Q6_K.gguf",
        "tiny.Q5_0.gguf",
        "tiny.Q5_1.gguf",
        "tiny.IQ4_NL.gguf",
        "tiny.IQ4_XS.gguf",
        "tiny.BF16.gguf",
        "tiny.mix.gguf",
    ] {
        for k in Kernels::available() {
            check_model(name, k, &[8], false);
        }
    }
}

/// A real model's shapes: the 8-session schedule alone, whose batches grow from 1 to 8
/// columns and shrink again (the tiny models run the 1- and 3-session ones too).
#[test]
fn smollm2_q8_0_batches_bit_identically() {
    check_model(
        "SmolLM2-135M-Instruct.Q8_0.gguf",
        Kernels::detect(),
        &[8],
        true,
    );
}

#[test]
fn smollm2_q4_0_batches_bit_identically() {
    check_model(
        "SmolLM2-135M-Instruct.Q4_0.gguf",
        Kernels::detect(),
        &[8],
        true,
    );
}

/// A step that cannot run changes no session and names the one that failed.
#[test]
fn a_refused_step_changes_no_session_and_names_it() {
    let Some(bytes) = model_bytes("tiny.Q8_0.gguf") else {
        return;
    };
    let gguf = Gguf::parse(&bytes).expect("parse");
    let model = Model::from_gguf(&gguf, Kernels::detect()).expect("load");
    let pool = ThreadPool::new(2).expect("threads");
    let n_vocab = model.cfg.n_vocab;
    let mut sessions: Vec<Session> = (0..3).map(|_| model.new_session(8)).collect();
    for (i, s) in sessions.iter_mut().enumerate() {
        // Session 2 fills its context of 8.
        let len = if i == 2 { 8 } else { 3 + i };
        s.eval(&model, &prompt(len, i, n_vocab), Logits::Last, &pool)
            .unwrap();
    }
    let before: Vec<(usize, Vec<f32>)> = sessions
        .iter_mut()
        .map(|s| (s.n_past(), s.last_logits().to_vec()))
        .collect();
    let mut scratch = BatchBuffers::default();
    for (tokens, failing) in [([5, 6, 7], 2), ([5, n_vocab as u32, 7], 1)] {
        let mut steps: Vec<DecodeStep<'_>> = sessions
            .iter_mut()
            .zip(tokens)
            .map(|(session, token)| DecodeStep { session, token })
            .collect();
        let err = model
            .decode_batch(&mut steps, &mut scratch, &pool)
            .unwrap_err();
        match (&err, failing) {
            (
                BatchError::Session {
                    index: 2,
                    source:
                        ModelError::ContextFull {
                            needed: 9,
                            n_ctx: 8,
                        },
                },
                2,
            ) => {}
            (
                BatchError::Session {
                    index: 1,
                    source: ModelError::BadToken { .. },
                },
                1,
            ) => {}
            _ => panic!("session {failing} should fail: {err:?}"),
        }
        assert!(err.to_string().starts_with(&format!("session {failing} ")));
        for (s, (n_past, logits)) in sessions.iter_mut().zip(&before) {
            assert_eq!(s.n_past(), *n_past);
            assert_eq!(s.last_logits(), &logits[..]);
        }
    }
    assert!(matches!(
        model.decode_batch(&mut [], &mut scratch, &pool),
        Err(BatchError::Empty)
    ));
    // The two that have room still step, and the full one alone is refused.
    let mut steps: Vec<DecodeStep<'_>> = sessions[..2]
        .iter_mut()
        .map(|session| DecodeStep { session, token: 5 })
        .collect();
    model.decode_batch(&mut steps, &mut scratch, &pool).unwrap();
    assert_eq!(
        sessions.iter().map(Session::n_past).collect::<Vec<_>>(),
        [4, 5, 8]
    );
}
