//! Sampling and outputs through the whole stack (OpenAI request → options trailer → guest
//! sampler → logprobs back), with the official `openai` Python client: logprobs whole and
//! streamed (chat and completions), a seed drawn when none is given and returned so the
//! run reproduces, penalties, logit bias, many stop strings, `max_tokens` clamped to the
//! context, unsupported fields refused by name.

use flexserve::serve::Daemon;
use flexserve_e2e::serve_rig::*;
use serde_json::{Value, json};

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
