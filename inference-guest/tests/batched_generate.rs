//! Generation over batched decode: requests driven by their own `Decoder` (each with its own
//! seeded sampler and penalties) through one `Model::decode_batch` per step end on the same
//! tokens, for the same reason, as each run alone by `generate`: at `max_tokens`, at an
//! end of generation, or at a full context, joining and leaving the batch at different
//! steps. A positive control shows the comparison catches a request whose sampler differs.
//!
//! The tiny model comes from `make setup` (git-ignored); a missing one is skipped with a
//! message, unless `FLEXSERVE_REQUIRE_MODELS=1`, where it fails.

use inference_guest::generate::{Decoder, Finish, Generation, StepContext, generate};
use inference_guest::gguf::Gguf;
use inference_guest::model::{BatchBuffers, DecodeStep, Logits, Model, Session};
use inference_guest::parallel::SingleThread;
use inference_guest::quant::Kernels;
use inference_guest::sampler::{Sampler, SamplerConfig};
mod common;

use common::model_bytes;

/// One request: its prompt, its context, how many tokens it may make, whether it stops at
/// an end of generation, its sampler, and the step at which it joins.
struct Req {
    prompt: Vec<u32>,
    n_ctx: usize,
    max_tokens: usize,
    stop_at_eog: bool,
    sampler: SamplerConfig,
    join: usize,
}

fn requests(n_vocab: usize) -> Vec<Req> {
    let prompt = |len: usize, seed: usize| -> Vec<u32> {
        (0..len)
            .map(|i| (300 + (i * 7919 + seed * 104_729) % (n_vocab - 300)) as u32)
            .collect()
    };
    let sampled = |seed: u64, presence: f32| SamplerConfig {
        temperature: 0.9,
        top_k: 50,
        repeat_penalty: 1.15,
        presence_penalty: presence,
        frequency_penalty: 0.2,
        repeat_last_n: 16,
        seed,
        ..SamplerConfig::default()
    };
    vec![
        // Runs to max_tokens.
        Req {
            prompt: prompt(5, 0),
            n_ctx: 256,
            max_tokens: 40,
            stop_at_eog: false,
            sampler: sampled(1, 0.5),
            join: 0,
        },
        // Greedy, to its end of generation or max_tokens.
        Req {
            prompt: prompt(17, 1),
            n_ctx: 256,
            max_tokens: 60,
            stop_at_eog: true,
            sampler: SamplerConfig::greedy(),
            join: 0,
        },
        // Fills its context: 12 + 20 positions.
        Req {
            prompt: prompt(12, 2),
            n_ctx: 32,
            max_tokens: 100,
            stop_at_eog: false,
            sampler: sampled(3, 0.0),
            join: 3,
        },
        // Joins late, after others have left.
        Req {
            prompt: prompt(9, 3),
            n_ctx: 256,
            max_tokens: 25,
            stop_at_eog: false,
            sampler: sampled(4, 1.0),
            join: 45,
        },
    ]
}

/// Each request alone through `generate`: its tokens and why it ended.
fn alone(model: &Model<'_>, r: &Req, is_eog: &dyn Fn(u32) -> bool) -> (Vec<u32>, Finish) {
    let mut session = model.new_session(r.n_ctx);
    let mut sampler = Sampler::new(r.sampler, model.cfg.n_vocab);
    let mut out = Vec::new();
    let req = Generation {
        prompt: &r.prompt,
        max_tokens: r.max_tokens,
        stop_at_eog: r.stop_at_eog,
    };
    let o = generate(
        model,
        &mut session,
        &mut sampler,
        &SingleThread,
        &req,
        is_eog,
        &mut |t| {
            out.push(t);
            true
        },
    )
    .unwrap();
    assert_eq!(o.generated_tokens, out.len());
    (out, o.finish)
}

/// A request in the batch.
struct Live {
    session: Session,
    decoder: Decoder,
    sampler: Sampler,
    out: Vec<u32>,
    finish: Option<Finish>,
}

/// Every request through its `Decoder`: the prompt on its own at its join step, then one
/// `decode_batch` per step for all that run. `samplers` overrides a request's sampler.
fn batched(
    model: &Model<'_>,
    reqs: &[Req],
    is_eog: &dyn Fn(u32) -> bool,
    samplers: &[SamplerConfig],
) -> Vec<(Vec<u32>, Finish)> {
    let mut live: Vec<Option<Live>> = reqs.iter().map(|_| None).collect();
    let mut scratch = BatchBuffers::default();
    for step in 0.. {
        for (i, r) in reqs.iter().enumerate().filter(|(_, r)| r.join == step) {
            let mut l = Live {
                session: model.new_session(r.n_ctx),
                decoder: Decoder::new(&Generation {
                    prompt: &r.prompt,
                    max_tokens: r.max_tokens,
                    stop_at_eog: r.stop_at_eog,
                }),
                sampler: Sampler::new(samplers[i], model.cfg.n_vocab),
                out: Vec::new(),
                finish: None,
            };
            let full = l.session.n_past() + l.decoder.input().len() >= l.session.n_ctx();
            let logits = l
                .session
                .eval(model, l.decoder.input(), Logits::Last, &SingleThread)
                .unwrap();
            let ctx = StepContext {
                context_full: full,
                is_eog,
                constraint: None,
            };
            let out = &mut l.out;
            l.finish = l
                .decoder
                .after_logits(logits, &mut l.sampler, ctx, &mut |t| {
                    out.push(t);
                    true
                });
            live[i] = Some(l);
        }
        let mut steps: Vec<DecodeStep<'_>> = live
            .iter_mut()
            .flatten()
            .filter(|l| l.finish.is_none())
            .map(|l| DecodeStep {
                token: l.decoder.fed_back().unwrap(),
                session: &mut l.session,
            })
            .collect();
        if steps.is_empty() {
            if reqs.iter().all(|r| r.join <= step) {
                break;
            }
            continue;
        }
        model
            .decode_batch(&mut steps, &mut scratch, &SingleThread)
            .unwrap();
        drop(steps);
        for l in live.iter_mut().flatten().filter(|l| l.finish.is_none()) {
            let full = l.session.n_past() >= l.session.n_ctx();
            let ctx = StepContext {
                context_full: full,
                is_eog,
                constraint: None,
            };
            let out = &mut l.out;
            l.finish =
                l.decoder
                    .after_logits(l.session.last_logits(), &mut l.sampler, ctx, &mut |t| {
                        out.push(t);
                        true
                    });
        }
    }
    live.into_iter()
        .map(|l| {
            let l = l.unwrap();
            (l.out, l.finish.unwrap())
        })
        .collect()
}

#[test]
fn requests_decoded_in_a_batch_end_as_they_do_alone() {
    let Some(bytes) = model_bytes("tiny.Q8_0.gguf") else {
        return;
    };
    let gguf = Gguf::parse(&bytes).unwrap();
    let model = Model::from_gguf(&gguf, Kernels::detect()).unwrap();
    let tokenizer = inference_guest::tokenizer::Tokenizer::from_gguf(&gguf).unwrap();
    let is_eog = |t: u32| tokenizer.is_end_of_generation(t);
    let reqs = requests(model.cfg.n_vocab);
    let want: Vec<_> = reqs.iter().map(|r| alone(&model, r, &is_eog)).collect();
    // The schedule covers every way to end, and a batch of more than one.
    assert_eq!(want[0].1, Finish::MaxTokens);
    assert_eq!(want[2], (want[2].0.clone(), Finish::ContextFull));
    assert_eq!(want[2].0.len(), 32 - 12 + 1);
    let samplers: Vec<_> = reqs.iter().map(|r| r.sampler).collect();
    let got = batched(&model, &reqs, &is_eog, &samplers);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "request {i}: batched vs alone");
    }
    // The positive control: request 0 with another seed differs.
    let mut other = samplers.clone();
    other[0].seed += 1;
    let got = batched(&model, &reqs, &is_eog, &other);
    assert_ne!(got[0].0, want[0].0, "a different sampler went unnoticed");
    assert_eq!(got[1..], want[1..]);
}
