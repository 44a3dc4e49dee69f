//! `generate_constrained()`: the token loop with a grammar constraint, on the tiny Qwen2
//! model (random weights, Qwen2's real tokenizer): whatever the model prefers, the output is
//! JSON of the schema and ends with an end-of-generation token once complete.
//!
//! The model comes from `make setup`; when it is missing the test says so and skips.

use inference_guest::constrain::{
    Constrained, Constraint, ConstraintState, Trigger, compile_schema, eog_ids, grammar_vocab,
};
use inference_guest::generate::{Finish, Generation, generate_constrained};
use inference_guest::gguf::Gguf;
use inference_guest::model::Model;
use inference_guest::parallel::ThreadPool;
use inference_guest::quant::Kernels;
use inference_guest::sampler::{Sampler, SamplerConfig};
use inference_guest::tokenizer::Tokenizer;
use std::path::Path;

const SCHEMA: &str = r#"{"type":"object","properties":{"ok":{"type":"boolean"},"color":{"enum":["red","green"]},"n":{"type":"integer"},"tag":{"type":"string","maxLength":6}},"required":["ok","color","n","tag"]}"#;

#[test]
fn constrained_outputs_are_json_of_the_schema() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-qwen2.Q8_0.gguf");
    let Ok(bytes) = std::fs::read(&path) else {
        eprintln!("SKIPPED: {} missing, run `make setup`", path.display());
        return;
    };
    let gguf = Gguf::parse(&bytes).expect("parse");
    let model = Model::from_gguf(&gguf, Kernels::detect()).expect("load");
    let tok = Tokenizer::from_gguf(&gguf).expect("tokenizer");
    let pool = ThreadPool::new(2).expect("threads");
    let vocab = grammar_vocab(&tok);
    let prompt = tok.encode("Answer in JSON:", false, false);
    for seed in 0..3 {
        let mut session = model.new_session(512);
        let cfg = SamplerConfig {
            seed,
            ..SamplerConfig::default()
        };
        let mut sampler = Sampler::new(cfg, model.cfg.n_vocab);
        let state = ConstraintState::new(Constraint::new(compile_schema(SCHEMA).unwrap()));
        let mut c = Constrained::new(&vocab, &tok, state, eog_ids(&tok));
        let req = Generation {
            prompt: &prompt,
            max_tokens: 300,
            stop_at_eog: true,
        };
        let mut out = Vec::new();
        let outcome = generate_constrained(
            &model,
            &mut session,
            &mut sampler,
            &pool,
            &req,
            &|id| tok.is_end_of_generation(id),
            Some(&mut c),
            &mut |id| {
                out.push(id);
                true
            },
        )
        .expect("generate");
        assert_eq!(
            outcome.finish,
            Finish::EndOfGeneration,
            "seed {seed}: {outcome:?}"
        );
        assert!(c.is_complete());
        let text = tok.decode(&out[..out.len() - 1]);
        let v: serde_json::Value = serde_json::from_slice(&text).expect("JSON");
        assert!(v["ok"].is_boolean(), "{v}");
        assert!(v["n"].as_f64().is_some_and(|n| n.fract() == 0.0), "{v}");
        assert!(
            ["red", "green"].contains(&v["color"].as_str().unwrap()),
            "{v}"
        );
        assert!(v["tag"].as_str().unwrap().chars().count() <= 6, "{v}");
    }
}

/// A lazy constraint (`tool_choice: auto`): free text masks nothing; from the trigger on,
/// only what continues the grammar is allowed, and the state survives a pause (preemption).
#[test]
fn a_lazy_constraint_starts_at_its_trigger() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-qwen2.Q8_0.gguf");
    let Ok(bytes) = std::fs::read(&path) else {
        eprintln!("SKIPPED: {} missing, run `make setup`", path.display());
        return;
    };
    let gguf = Gguf::parse(&bytes).expect("parse");
    let tok = Tokenizer::from_gguf(&gguf).expect("tokenizer");
    let vocab = grammar_vocab(&tok);
    let params = llm_grammar::Json::parse(r#"{"type":"object","properties":{}}"#).unwrap();
    let tools = [llm_grammar::ToolSchema {
        name: "f",
        parameters: &params,
    }];
    let style = llm_grammar::CallStyle::Hermes;
    let grammar = llm_grammar::tool_calls_grammar(style, &tools, false).unwrap();
    let trigger = Trigger {
        text: style.trigger().as_bytes().to_vec(),
        at_start: style.trigger_at_start(),
    };
    let state = ConstraintState::lazy(Constraint::new(grammar), trigger);
    let mut c = Constrained::new(&vocab, &tok, state, eog_ids(&tok));
    let allowed = |c: &mut Constrained<'_>| {
        let mut logits = vec![0.0f32; tok.n_vocab()];
        assert!(c.mask(&mut logits));
        logits.iter().filter(|l| l.is_finite()).count()
    };
    assert_eq!(allowed(&mut c), tok.n_vocab(), "free before the trigger");
    for id in tok.encode("Let me check. <tool_call>\n{\"name", false, false) {
        c.advance(id).unwrap();
    }
    let after = allowed(&mut c);
    assert!(
        after > 0 && after < 100,
        "{after} tokens allowed after the trigger"
    );
    // Paused and resumed: the same state goes on.
    let mut c = Constrained::new(&vocab, &tok, c.into_state(), eog_ids(&tok));
    for id in tok.encode("\": \"f\", \"arguments\": {}}\n</tool_call>", false, false) {
        let mut logits = vec![0.0f32; tok.n_vocab()];
        c.mask(&mut logits);
        assert!(logits[id as usize].is_finite(), "token {id} masked");
        c.advance(id).unwrap();
    }
    assert!(c.is_complete());
}
