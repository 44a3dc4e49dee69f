//! KV reuse across requests, through `flexserve serve` with a real guest under KVM: the next
//! turn of a chat goes on from the KV cache its first turn left in the guest, and answers
//! what a guest that never saw the first turn answers.

use flexserve::serve::Daemon;
use flexserve::serve::config::Config;
use flexserve_e2e::serve_rig::*;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

const CHAT: &str = "/v1/chat/completions";

/// Answers `messages` greedily: (text, prompt tokens, cached prompt tokens).
fn ask(addr: SocketAddr, messages: &Value) -> (String, u64, u64) {
    let body = json!({"model": DEFAULT, "messages": messages, "temperature": 0, "max_tokens": 24});
    let r = http(addr, "POST", CHAT, &body.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let usage = &v["usage"];
    (
        v["choices"][0]["message"]["content"]
            .as_str()
            .expect("an answer")
            .to_string(),
        usage["prompt_tokens"].as_u64().expect("prompt tokens"),
        usage["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .expect("cached tokens"),
    )
}

#[test]
fn the_next_chat_turn_goes_on_from_the_first_turns_cache() {
    if !guests_can_run(&[DEFAULT]) {
        return;
    }
    let system = "You are a terse assistant. Answer in one sentence.";
    let first = json!([
        {"role": "system", "content": system},
        {"role": "user", "content": "Name a planet with rings."},
    ]);
    let dir = temp_dir("kv-reuse");
    let d = Daemon::start(config(&dir, DEFAULT, 2048, 8)).expect("daemon starts");
    let addr = d.tcp_addr.unwrap();
    let (answer, first_prompt, cached) = ask(addr, &first);
    assert_eq!(cached, 0, "nothing was kept before the first request");
    let mut second = first.clone();
    let turns = second.as_array_mut().unwrap();
    turns.push(json!({"role": "assistant", "content": answer.clone()}));
    turns.push(json!({"role": "user", "content": "And one without?"}));
    let (reused_answer, second_prompt, cached) = ask(addr, &second);
    // The whole first prompt came from its cache; not its answer, whose tokens were
    // evaluated one at a time (attention summed in another order than in a prompt).
    assert_eq!(
        cached, first_prompt,
        "{cached} of {second_prompt} cached; the first prompt had {first_prompt}"
    );
    let metrics = &d.shared().metrics;
    assert_eq!(metrics.cached_tokens.load(Ordering::Relaxed), cached);
    d.stop();

    // With `guest.kv_reuse = false` the same two turns evaluate every prompt whole, and the
    // second answers as it did from the cache.
    let dir = temp_dir("kv-off");
    let d = Daemon::start(Config {
        kv_reuse: false,
        ..config(&dir, DEFAULT, 2048, 8)
    })
    .expect("daemon starts");
    let addr = d.tcp_addr.unwrap();
    assert_eq!(ask(addr, &first), (answer, first_prompt, 0));
    let (fresh_answer, fresh_prompt, cached) = ask(addr, &second);
    assert_eq!((fresh_prompt, cached), (second_prompt, 0));
    assert_eq!(reused_answer, fresh_answer);
    d.stop();
}
