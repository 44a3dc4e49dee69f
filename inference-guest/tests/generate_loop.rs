//! `generate()`, the token loop every product path runs (guest service, `--unprotected`,
//! the bench), against a hand-written eval + copy + sample loop on the tiny test model, and
//! each of its ways to stop.
//!
//! The model comes from `make setup` (git-ignored); when it is missing the test says so and
//! skips, unless `FLEXSERVE_REQUIRE_MODELS=1` (set by `make test`), where it fails.

use inference_guest::generate::{Finish, Generation, generate};
use inference_guest::gguf::Gguf;
use inference_guest::model::{Logits, Model};
use inference_guest::parallel::ThreadPool;
use inference_guest::quant::Kernels;
use inference_guest::sampler::{Sampler, SamplerConfig};
use std::path::Path;

const PROMPT: [u32; 6] = [1, 17, 254, 3, 99, 42];

/// Runs `test` on the tiny test model with a 2-thread pool; skips (after saying so) when the
/// model is missing and allowed to be.
fn with_tiny_model(test: impl FnOnce(&Model<'_>, &ThreadPool)) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny.Q8_0.gguf");
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if std::env::var("FLEXSERVE_REQUIRE_MODELS").as_deref() == Ok("1") => {
            panic!("{}: {e}: run `make setup`", path.display())
        }
        Err(_) => {
            eprintln!("SKIPPED: {} missing, run `make setup`", path.display());
            return;
        }
    };
    let gguf = Gguf::parse(&bytes).expect("parse");
    let model = Model::from_gguf(&gguf, Kernels::detect()).expect("load");
    let pool = ThreadPool::new(2).expect("threads");
    test(&model, &pool);
}

/// The first `n` tokens after `PROMPT` by a plain loop: eval, copy the logits out, sample
/// the copy.
fn reference(model: &Model<'_>, pool: &ThreadPool, n: usize, cfg: SamplerConfig) -> Vec<u32> {
    let mut session = model.new_session(512);
    let mut sampler = Sampler::new(cfg, model.cfg.n_vocab);
    let mut history = PROMPT.to_vec();
    let mut logits = session
        .eval(model, &PROMPT, Logits::Last, pool)
        .expect("eval")
        .to_vec();
    for _ in 0..n {
        let token = sampler.sample(&mut logits, &history);
        history.push(token);
        logits = session
            .eval(model, &[token], Logits::Last, pool)
            .expect("eval")
            .to_vec();
    }
    history.split_off(PROMPT.len())
}

struct Run {
    tokens: Vec<u32>,
    stop: Finish,
    n_past: usize,
}

fn run(
    model: &Model<'_>,
    pool: &ThreadPool,
    n_ctx: usize,
    max_tokens: usize,
    sampler: SamplerConfig,
    is_eog: &dyn Fn(u32) -> bool,
    keep_going: &dyn Fn(usize) -> bool,
) -> Run {
    let mut session = model.new_session(n_ctx);
    let mut sampler = Sampler::new(sampler, model.cfg.n_vocab);
    let req = Generation {
        prompt: &PROMPT,
        max_tokens,
        stop_at_eog: true,
    };
    let mut tokens = Vec::new();
    let outcome = generate(
        model,
        &mut session,
        &mut sampler,
        pool,
        &req,
        is_eog,
        &mut |t| {
            tokens.push(t);
            keep_going(tokens.len())
        },
    )
    .expect("generate");
    assert_eq!(outcome.prompt_tokens, PROMPT.len());
    assert_eq!(outcome.generated_tokens, tokens.len());
    Run {
        tokens,
        stop: outcome.finish,
        n_past: session.n_past(),
    }
}

#[test]
fn generate_stops_each_way_with_the_tokens_a_plain_loop_picks() {
    with_tiny_model(|model, pool| {
        let greedy = SamplerConfig::greedy();
        let never = |_: u32| false;
        let always = |_: usize| true;
        let expected = reference(model, pool, 24, greedy);

        let full = run(model, pool, 512, 24, greedy, &never, &always);
        assert_eq!(full.tokens, expected, "greedy generate() vs the plain loop");
        assert_eq!(full.stop, Finish::MaxTokens);
        // The session keeps the prompt and every generated token but the last.
        assert_eq!(full.n_past, PROMPT.len() + 23);

        let none = run(model, pool, 512, 0, greedy, &never, &always);
        assert_eq!((none.tokens.len(), none.stop), (0, Finish::MaxTokens));
        assert_eq!(none.n_past, PROMPT.len(), "the prompt is still evaluated");

        let cancelled = run(model, pool, 512, 24, greedy, &never, &|n| n < 3);
        assert_eq!(cancelled.tokens, expected[..3]);
        assert_eq!(cancelled.stop, Finish::Stopped);
        // A stop asked on the last token the request may make is its natural end.
        let at_max = run(model, pool, 512, 3, greedy, &never, &|n| n < 3);
        assert_eq!(at_max.tokens, expected[..3]);
        assert_eq!(at_max.stop, Finish::MaxTokens);

        let eog = expected[4];
        let first_eog = expected.iter().position(|&t| t == eog).expect("present");
        let ended = run(model, pool, 512, 24, greedy, &|t| t == eog, &always);
        assert_eq!(ended.tokens, expected[..=first_eog]);
        assert_eq!(ended.stop, Finish::EndOfGeneration);

        let n_ctx = PROMPT.len() + 5;
        let short = run(model, pool, n_ctx, 24, greedy, &never, &always);
        assert_eq!(short.stop, Finish::ContextFull);
        assert_eq!(short.tokens, expected[..6]);
        assert_eq!(short.n_past, n_ctx);
    });
}

#[test]
fn seeded_sampling_with_a_penalty_in_place_matches_sampling_a_copy() {
    // The sampler edits the session's own logits (NaNs out, the repetition penalty); no later
    // step may see those edits, so sampling in place must pick what sampling a copy picks.
    with_tiny_model(|model, pool| {
        let sampled = SamplerConfig {
            temperature: 1.0,
            repeat_penalty: 1.5,
            seed: 7,
            ..SamplerConfig::default()
        };
        let got = run(model, pool, 512, 24, sampled, &|_| false, &|_| true);
        assert_eq!(got.tokens, reference(model, pool, 24, sampled));
        assert_ne!(
            got.tokens,
            reference(model, pool, 24, SamplerConfig::greedy()),
            "sampling draws other tokens than greedy here, so the comparison is not greedy's again"
        );
    });
}
