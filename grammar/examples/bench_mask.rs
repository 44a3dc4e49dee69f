//! The grammar's cost per token on a real vocabulary: `make bench-grammar`, or
//! `cargo run --release -p llm-grammar --example bench_mask [-- model.gguf [filter]]`.
//!
//! Drives a constraint along the tokens of realistic answers and times each step's mask
//! (`Constraint::allowed` and applying it to a logits vector) and its advance: an object
//! with nested objects, arrays, enums, numbers and a long free-text string; the answer of
//! `make bench-structured`'s schema (strings with `maxLength`: the case the plain-token
//! shortcut is for); and a `json_object` answer. Each twice, in the same process: with the
//! content shortcut (`content.rs`) and without it (`Constraint::set_shortcuts(false)`: a
//! mask not in the cache walks the whole vocabulary, as before the shortcut; the masks are
//! the same). Each step is
//! timed on three copies of the constraint and the fastest kept, so that a busy machine's
//! preemptions do not become the tail.

#[path = "../tests/common/qwen.rs"]
mod qwen;

use inference_guest::constrain::{eog_ids, grammar_vocab};
use inference_guest::tokenizer::Tokenizer;
use llm_grammar::{Constraint, Grammar, TokenSet, Vocab, compile_schema, json_object_grammar};
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

/// `tools/bench/bench_structured.py`'s schema and an answer to it.
const CITY_SCHEMA: &str = r#"{"type":"object","properties":{
  "name":{"type":"string","maxLength":40},
  "country":{"type":"string","maxLength":40},
  "population":{"type":"integer"},
  "climate":{"enum":["hot","mild","cold"]},
  "description":{"type":"string","maxLength":600}},
  "required":["name","country","population","climate","description"],"additionalProperties":false}"#;

const CITY: &str = r#"{"name": "Kyoto", "country": "Japan", "population": 1463723, "climate": "mild", "description": "Kyoto was the capital of Japan for more than a thousand years. Its temples, shrines and wooden houses line quiet streets below green hills; in spring the cherry trees along the Philosopher's Path blossom, and in autumn the maples of Tofuku-ji turn red. I would walk through the bamboo grove of Arashiyama at dawn, eat tofu in a small restaurant near Nanzen-ji and watch the lanterns of Gion in the evening."}"#;

const OBJECT: &str = r#"{"title": "Weekly report", "items": [{"task": "Write the parser", "done": true, "hours": 12.5}, {"task": "Review the grammar crate's trie walk and its cache", "done": false, "hours": 3}], "notes": "Next week: benchmarks on the 1.5B model, and the documentation of the structured-output path."}"#;

const ANSWER: &str = r#"{"name":"Ada Lovelace","age":36,"email":null,"address":{"street":"12 St James's Square","city":"London","zip":"SW1Y4"},"roles":["admin","viewer"],"scores":[9.5,7.25,10],"active":true,"summary":"Mathematician and writer, chiefly known for her work on Charles Babbage's proposed mechanical general-purpose computer, the Analytical Engine. She was the first to recognise that the machine had applications beyond pure calculation, and published the first algorithm intended to be carried out by such a machine. Her notes describe loops, conditional branching and the manipulation of symbols other than numbers."}"#;

fn main() {
    let path = std::env::args().nth(1).map(Into::into);
    let Some(tok) = qwen::tokenizer(path) else {
        return;
    };
    let t = Instant::now();
    let vocab = grammar_vocab(&tok);
    let st = vocab.stats();
    println!(
        "vocabulary: {} tokens ({} plain up to {} bytes, {} other string content; {} trie nodes, {} of them for the rest; {} class-trie nodes), built in {:.1} ms",
        vocab.len(),
        st.plain_tokens,
        st.longest_plain,
        st.mixed_tokens,
        st.trie_nodes,
        st.other_nodes,
        st.class_nodes,
        ms(t)
    );
    let t = Instant::now();
    let grammar = compile_schema(SCHEMA).expect("schema compiles");
    println!(
        "schema compiled in {:.3} ms ({} rules)",
        ms(t),
        grammar.rule_count()
    );
    let city = compile_schema(CITY_SCHEMA).expect("schema compiles");
    let cases = [
        ("8-property schema", &grammar, ANSWER),
        ("maxLength schema", &city, CITY),
        ("json_object", &json_object_grammar(), OBJECT),
    ];
    // A second argument keeps only the runs whose name contains it (for profiling one).
    let only = std::env::args().nth(2).unwrap_or_default();
    for (name, g, answer) in cases {
        for shortcuts in [false, true] {
            let label = if shortcuts { "shortcut" } else { "walk" };
            if !format!("{name}, {label}").contains(&only) {
                continue;
            }
            bench(
                &tok,
                &vocab,
                g,
                answer,
                shortcuts,
                &format!("{name}, {label}"),
            );
        }
    }
}

/// Drives a constraint of `g` along `answer`'s tokens; prints the per-token times.
fn bench(tok: &Tokenizer, vocab: &Vocab, g: &Grammar, answer: &str, shortcuts: bool, name: &str) {
    let eog = eog_ids(tok);
    let tokens = tok.encode(answer, false, false);
    let mut mask = TokenSet::new(vocab.len());
    let mut logits = vec![0.0f32; vocab.len()];
    let mut times = Vec::with_capacity(tokens.len());
    let mut c = Constraint::new(g.clone());
    c.set_shortcuts(shortcuts);
    for &id in &tokens {
        // The machine may be shared: each step is timed on three copies, the fastest kept.
        let mut best = f64::MAX;
        let mut after = None;
        for _ in 0..3 {
            let mut copy = c.clone();
            let t = Instant::now();
            copy.mask_logits(vocab, &eog, &mut logits, &mut mask);
            copy.accept_token_id(vocab, &eog, id)
                .expect("the answer follows the schema");
            best = best.min(t.elapsed().as_secs_f64() * 1e6);
            logits.iter_mut().for_each(|l| *l = 0.0);
            after = Some(copy);
        }
        c = after.expect("three runs");
        times.push(best);
    }
    assert!(c.is_complete());
    if std::env::var_os("BENCH_MASK_SLOWEST").is_some() {
        let mut worst: Vec<(f64, usize)> = times.iter().copied().zip(0..).collect();
        worst.sort_by(|a, b| b.0.total_cmp(&a.0));
        for &(t, i) in worst.iter().take(6) {
            let before =
                String::from_utf8_lossy(&tok.decode(&tokens[i.saturating_sub(3)..i])).into_owned();
            println!(
                "  {t:6.0} µs before {:?} after {before:?}",
                String::from_utf8_lossy(&tok.decode(&tokens[i..=i]))
            );
        }
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let max = times.iter().copied().fold(0.0, f64::max);
    times.sort_by(f64::total_cmp);
    let p = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name}: {} tokens, mask+advance per token mean {mean:.0} µs, p50 {:.0} µs, p99 {:.0} µs, max {max:.0} µs",
        times.len(),
        p(0.5),
        p(0.99)
    );
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
