//! The grammar's cost per token on a real vocabulary: `make bench-grammar`, or
//! `cargo run --release -p llm-grammar --example bench_mask [-- model.gguf]`.
//!
//! Drives a constraint along the tokens of a realistic answer (an object with nested
//! objects, arrays, enums, numbers and a long free-text string) and times each step's mask
//! (`Constraint::allowed` and applying it to a logits vector) and its advance.

#[path = "../tests/common/qwen.rs"]
mod qwen;

use inference_guest::constrain::{eog_ids, grammar_vocab};
use llm_grammar::{Constraint, TokenSet, compile_schema};
use std::time::Instant;

const SCHEMA: &str = r#"{"type":"object","properties":{
  "name":{"type":"string","maxLength":40},
  "age":{"type":"integer"},
  "email":{"type":["string","null"]},
  "address":{"type":"object","properties":{"street":{"type":"string"},"city":{"type":"string"},"zip":{"type":"string","minLength":5,"maxLength":10}},"required":["street","city"]},
  "roles":{"type":"array","items":{"enum":["admin","editor","viewer"]},"maxItems":3},
  "scores":{"type":"array","items":{"type":"number"}},
  "active":{"type":"boolean"},
  "summary":{"type":"string"}},
  "required":["name","age","address","roles","active","summary"]}"#;

const ANSWER: &str = r#"{"name":"Ada Lovelace","age":36,"email":null,"address":{"street":"12 St James's Square","city":"London","zip":"SW1Y4"},"roles":["admin","viewer"],"scores":[9.5,7.25,10],"active":true,"summary":"Mathematician and writer, chiefly known for her work on Charles Babbage's proposed mechanical general-purpose computer, the Analytical Engine. She was the first to recognise that the machine had applications beyond pure calculation, and published the first algorithm intended to be carried out by such a machine. Her notes describe loops, conditional branching and the manipulation of symbols other than numbers."}"#;

fn main() {
    let path = std::env::args().nth(1).map(Into::into);
    let Some(tok) = qwen::tokenizer(path) else {
        return;
    };
    let t = Instant::now();
    let vocab = grammar_vocab(&tok);
    println!(
        "vocabulary: {} tokens, trie built in {:.1} ms",
        vocab.len(),
        ms(t)
    );
    let eog = eog_ids(&tok);
    let t = Instant::now();
    let grammar = compile_schema(SCHEMA).expect("schema compiles");
    println!(
        "schema compiled in {:.3} ms ({} rules)",
        ms(t),
        grammar.rule_count()
    );
    let tokens = tok.encode(ANSWER, false, false);
    let mut mask = TokenSet::new(vocab.len());
    let mut logits = vec![0.0f32; vocab.len()];
    let mut times = Vec::with_capacity(tokens.len());
    let mut c = Constraint::new(grammar);
    for &id in &tokens {
        let t = Instant::now();
        c.mask_logits(&vocab, &eog, &mut logits, &mut mask);
        c.accept_token_id(&vocab, &eog, id)
            .expect("the answer follows the schema");
        times.push(t.elapsed().as_secs_f64() * 1e6);
        logits.iter_mut().for_each(|l| *l = 0.0);
    }
    assert!(c.is_complete());
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let max = times.iter().copied().fold(0.0, f64::max);
    times.sort_by(f64::total_cmp);
    let p = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!(
        "{} tokens: mask+advance per token mean {mean:.0} µs, p50 {:.0} µs, p99 {:.0} µs, max {max:.0} µs",
        times.len(),
        p(0.5),
        p(0.99)
    );
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
