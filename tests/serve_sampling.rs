//! Sampling and outputs through the whole stack (OpenAI request → options trailer → guest
//! sampler → logprobs back), with the official `openai` Python client: logprobs whole and
//! streamed (chat and completions), a seed drawn when none is given and returned so the
//! run reproduces, penalties, logit bias, many stop strings, `max_tokens` clamped to the
//! context, unsupported fields refused by name; `n` choices, each reproducible from its seed
//! and sharing the prompt's prefill.

use flexserve::serve::Daemon;
use flexserve_e2e::serve_rig::*;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

fn bytes_of(v: &Value) -> Vec<u8> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap() as u8)
        .collect()
}

#[test]
fn the_openai_client_gets_logprobs_seeds_penalties_and_bias() {
    if !guests_can_run(&[DEFAULT]) {
        return;
    }
    let Some(python) = python() else {
        return;
    };
    let dir = temp_dir("sampling");
    let d = Daemon::start(config(&dir, DEFAULT, 512, 16)).expect("daemon starts");
    let base = format!("http://{}/v1", d.tcp_addr.unwrap());
    let prompt = "Write one sentence about the sea.";
    let args = [
        "--base-url",
        &base,
        "--model",
        DEFAULT,
        "--chat-prompt",
        prompt,
    ];
    let r = run_client(&python, &[&["sampling"][..], &args].concat());

    // Logprobs: one per token of the text, greedy's token the most likely, none above 0,
    // the alternatives' mass at most 1; streamed ones the same tokens.
    assert_eq!(r["lp_text"], r["text"], "{r}");
    assert_eq!(r["lp_top_n"], json!([3]), "{r}");
    for k in ["lp_greedy_is_top", "lp_nonpositive", "lp_mass_le_1"] {
        assert_eq!(r[k], true, "{k}: {r}");
    }
    assert_eq!(r["stream_text"], r["text"], "{r}");
    assert_eq!(r["stream_lp_tokens"], r["lp_tokens"], "{r}");
    let lengths = r["cmpl_lengths"].as_array().unwrap();
    assert!(lengths.iter().all(|n| n == &lengths[0]) && lengths[0].as_u64() > Some(0));

    // No seed: two different answers, each with the seed it ran with, and that seed
    // reproduces the first one exactly.
    let seeds = r["seeds"].as_array().unwrap();
    assert_ne!(seeds[0], seeds[1], "{r}");
    assert_eq!(r["body_seeds"], r["seeds"], "{r}");
    let texts = r["unseeded_texts"].as_array().unwrap();
    assert_ne!(texts[0], texts[1], "{r}");
    assert_eq!(r["reproduced"], texts[0], "{r}");

    assert!(
        r["penalised"].as_str().is_some_and(|t| !t.is_empty()),
        "{r}"
    );
    assert!(
        ["stop", "length"].contains(&r["five_stops_finish"].as_str().unwrap()),
        "{r}"
    );
    // max_tokens far beyond the 512-token context: clamped, and the answer says "length".
    assert_eq!(r["clamped_finish"], "length", "{r}");
    assert!(r["clamped_tokens"].as_u64().unwrap() < 512, "{r}");
    // The SDK takes `n` choices, each numbered.
    assert_eq!(r["n_indexes"], json!([0, 1, 2]), "{r}");
    // Usage sums the three completions (at least a token each, at most `max_tokens` each).
    let n_tokens = r["n_completion_tokens"].as_u64().unwrap();
    assert!((3..=12).contains(&n_tokens), "{r}");
    assert_eq!(
        r["refused"],
        json!({"functions": "functions", "response_format": "response_format",
               "unknown": "no_such_field"}),
        "{r}"
    );

    // logit_bias -100 on the greedy first token (every id that spells it) changes it.
    let first = bytes_of(&r["first_bytes"]);
    let ids = ids_with_bytes(DEFAULT, &first);
    assert!(!ids.is_empty(), "no token spells {first:?}");
    let bias: serde_json::Map<String, Value> =
        ids.iter().map(|id| (id.to_string(), json!(-100))).collect();
    let bias = Value::Object(bias).to_string();
    let b = run_client(&python, &[&["bias", "--bias", &bias][..], &args].concat());
    choices_share_the_prompt(d.tcp_addr.unwrap(), &d.shared().metrics.cached_tokens);
    d.stop();
    assert_ne!(bytes_of(&b["first_bytes"]), first, "{b}");
    assert_ne!(b["text"], r["text"], "{b}");
}

#[test]
fn a_streamed_answer_carries_logprobs_and_its_seed_header() {
    if !guests_can_run(&[TINY]) {
        return;
    }
    let dir = temp_dir("sampling-raw");
    let d = Daemon::start(config(&dir, TINY, 512, 16)).expect("daemon starts");
    let addr = d.tcp_addr.unwrap();
    let chat = "/v1/chat/completions";
    // A streamed answer carries the seed in its header too, and logprobs in its chunks.
    let r = http(
        addr,
        "POST",
        chat,
        &chat_body(TINY, "hi", 4, r#","stream":true,"logprobs":true,"seed":7"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.head.to_ascii_lowercase().contains("x-flexserve-seed: 7"),
        "{}",
        r.head
    );
    assert!(
        r.body.contains("\"logprobs\":{\"content\":[{"),
        "{}",
        r.body
    );
    assert!(r.body.contains("\"seed\":7"), "{}", r.body);
    let r = http(
        addr,
        "POST",
        chat,
        &chat_body(TINY, "hi", 4, r#","logit_bias":{"99999999":5}"#),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["param"], "logit_bias");
    d.stop();
}

const CHOICES_PROMPT: &str = "Tell me about a lighthouse keeper named Ada.";

fn choices_body(n: u32, seed: u64, extra: &str) -> String {
    let extra = format!(r#","temperature":1,"n":{n},"seed":{seed}{extra}"#);
    chat_body(DEFAULT, CHOICES_PROMPT, 6, &extra).replace(r#""temperature":0,"#, "")
}

/// The content of each choice of a streamed answer, in order of `index`; checks that each
/// choice ends with its own finish chunk and `[DONE]` comes once, last.
fn streamed_choices(body: &str, n: usize) -> Vec<String> {
    let events: Vec<&str> = body
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{body}");
    assert_eq!(events.iter().filter(|e| **e == "[DONE]").count(), 1);
    let mut texts = vec![String::new(); n];
    let mut finished = vec![0; n];
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        for c in v["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            texts[i].push_str(c["delta"]["content"].as_str().unwrap_or(""));
            finished[i] += usize::from(c["finish_reason"].is_string());
        }
    }
    assert_eq!(finished, vec![1; n], "{body}");
    texts
}

/// `n: 3` at temperature 1: three choices, streamed as whole, choice `i` the answer of
/// `n: 1` with seed + i, and choices 1 and 2 reuse the prompt's KV cache in the guest.
fn choices_share_the_prompt(addr: SocketAddr, cached_total: &AtomicU64) {
    let chat = "/v1/chat/completions";
    let before = cached_total.load(Ordering::Relaxed);
    let r = http(addr, "POST", chat, &choices_body(3, 41, ""));
    assert_eq!(r.status, 200, "{}", r.body);
    let reused = cached_total.load(Ordering::Relaxed) - before;
    let v = r.json();
    let choices = v["choices"].as_array().unwrap();
    let texts: Vec<&str> = choices
        .iter()
        .map(|c| c["message"]["content"].as_str().unwrap())
        .collect();
    let indexes: Vec<u64> = choices
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [0, 1, 2], "{v}");
    assert_eq!(v["seed"], 41);
    let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(
        v["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
        "{v}"
    );
    // Choices 1 and 2 went on from the cache the choice before left: all of the prompt
    // but the last two tokens (the guest evaluates those again for the first logits).
    assert_eq!(reused, 2 * (prompt - 2), "{v}");

    let s = http(
        addr,
        "POST",
        chat,
        &choices_body(3, 41, r#","stream":true"#),
    );
    assert_eq!(s.status, 200, "{}", s.body);
    assert_eq!(streamed_choices(&s.body, 3), texts, "{}", s.body);

    for (i, text) in texts.iter().enumerate() {
        let one = http(addr, "POST", chat, &choices_body(1, 41 + i as u64, ""));
        assert_eq!(
            one.json()["choices"][0]["message"]["content"],
            *text,
            "choice {i}"
        );
    }
    assert!(texts.iter().any(|t| t != &texts[0]), "{texts:?}");

    let sealed = r#"{"model":"m","max_tokens":4,"seed":1,"flexserve_sealed":"AAAA","n":2}"#;
    let refused = http(addr, "POST", chat, sealed);
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.json()["error"]["param"], "n");
}
