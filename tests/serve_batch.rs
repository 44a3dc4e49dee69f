//! `flexserve serve` batching requests with a real guest under KVM (`limits.batch`, the
//! guest's `VIRTIO_LLM_F_BATCH`): clients served at the same time each get exactly the
//! greedy text they get alone, while their decode steps overlap in the guest; a client
//! that goes away mid-batch leaves the others' answers untouched; with batching off the
//! requests take turns as before.

use flexserve::serve::Daemon;
use flexserve::serve::config::Config;
use flexserve::serve::metrics::Outcome;
use flexserve_e2e::serve_rig::*;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};

const CHAT: &str = "/v1/chat/completions";
const PROMPTS: [&str; 4] = [
    "Tell me a story about a dragon.",
    "What is the capital of France?",
    "Write a poem about the sea.",
    "Explain how a bicycle works.",
];

fn batched_daemon(name: &str, model: &str, batch: bool) -> Daemon {
    let dir = temp_dir(name);
    Daemon::start(Config {
        max_active: 4,
        batch,
        ..config(&dir, model, 2048, 16)
    })
    .expect("daemon starts")
}

/// The greedy answer of `model` in `n` tokens to `prompt` (all `n` generated).
fn answer(addr: SocketAddr, model: &str, prompt: &str, n: u32) -> String {
    let r = http(
        addr,
        "POST",
        CHAT,
        &chat_body(model, prompt, n, r#","ignore_eos":true"#),
    );
    assert_eq!(r.json()["usage"]["completion_tokens"], n, "{}", r.body);
    r.chat_text(false)
}

/// The answers to `prompts`, all asked at once.
fn answers_at_once(
    addr: SocketAddr,
    model: &'static str,
    prompts: &[&'static str],
    n: u32,
) -> Vec<String> {
    let start = Arc::new(Barrier::new(prompts.len()));
    let threads: Vec<_> = prompts
        .iter()
        .map(|&p| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                answer(addr, model, p, n)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Every prompt of [`PROMPTS`] asked alone, one after another, then all at once: both sets
/// of answers (`n` tokens each) and the mean batch size of the decode steps while they ran
/// at once (one at a time, every step would have had one request: the mean would be 1).
fn alone_then_at_once(d: &Daemon, model: &'static str, n: u32) -> (Vec<String>, Vec<String>, f64) {
    let addr = d.tcp_addr.unwrap();
    let alone = PROMPTS.iter().map(|p| answer(addr, model, p, n)).collect();
    let before = batch_counts(d);
    let together = answers_at_once(addr, model, &PROMPTS, n);
    (alone, together, mean_batch(d, before))
}

/// The mean batch size of the decode steps since `before` (sum, count).
fn mean_batch(d: &Daemon, before: (u64, u64)) -> f64 {
    let b = &d.shared().metrics.batch;
    let sum = b.decoding_sum.load(Ordering::Relaxed) - before.0;
    let count = b.decoding_count.load(Ordering::Relaxed) - before.1;
    assert!(count > 0, "no batched tokens");
    sum as f64 / count as f64
}

fn batch_counts(d: &Daemon) -> (u64, u64) {
    let b = &d.shared().metrics.batch;
    (
        b.decoding_sum.load(Ordering::Relaxed),
        b.decoding_count.load(Ordering::Relaxed),
    )
}

#[test]
fn clients_at_once_get_their_greedy_text_alone_while_batched() {
    if !guests_can_run(&[DEFAULT]) {
        return;
    }
    let d = batched_daemon("together", DEFAULT, true);
    let (alone, together, mean) = alone_then_at_once(&d, DEFAULT, 64);
    let distinct: std::collections::HashSet<_> = alone.iter().collect();
    assert_eq!(
        distinct.len(),
        PROMPTS.len(),
        "a mixed-up answer would show"
    );
    let m = &d.shared().metrics;
    assert_eq!(m.requests(Outcome::Ok), 8);
    // The gauge falls back once the worker sees the batch empty (just after the answers).
    wait_for("the batch to empty", || {
        m.batch.requests.load(Ordering::Relaxed) == 0
    });
    d.stop();
    assert_eq!(together, alone);
    assert!(mean >= 1.5, "the decode steps did not overlap: {mean}");
    eprintln!("4 clients at once: {mean:.2} requests per decode step on average");
}

/// The same on the tiny model, which the arm64 tier can afford under QEMU (its `e2e-batch`
/// check): the guest's batched steps there run the NEON kernels' column tiles.
#[test]
fn tiny_model_clients_at_once_get_their_greedy_text_alone_while_batched() {
    if !guests_can_run(&[TINY]) {
        return;
    }
    let d = batched_daemon("tiny-together", TINY, true);
    let (alone, together, mean) = alone_then_at_once(&d, TINY, 32);
    d.stop();
    assert_eq!(together, alone);
    assert!(mean >= 1.5, "the decode steps did not overlap: {mean}");
    eprintln!("4 clients at once (tiny model): {mean:.2} requests per decode step on average");
}

#[test]
fn a_client_gone_mid_batch_leaves_the_others_alone() {
    if !guests_can_run(&[DEFAULT]) {
        return;
    }
    let d = batched_daemon("gone", DEFAULT, true);
    let addr = d.tcp_addr.unwrap();
    let stayers = &PROMPTS[1..];
    let alone: Vec<String> = stayers
        .iter()
        .map(|p| answer(addr, DEFAULT, p, 96))
        .collect();
    // The leaver streams a long answer; the others join its batch.
    let mut leaver = TcpStream::connect(addr).unwrap();
    let long = chat_body(
        DEFAULT,
        PROMPTS[0],
        1500,
        r#","stream":true,"ignore_eos":true"#,
    );
    request(&mut leaver, "POST", CHAT, &long);
    read_until_first_token(&mut leaver);
    let threads = {
        let stayers = stayers.to_vec();
        std::thread::spawn(move || answers_at_once(addr, DEFAULT, &stayers, 96))
    };
    let m = &d.shared().metrics;
    wait_for("the others to join the batch", || {
        m.batch.requests.load(Ordering::Relaxed) >= 4
    });
    drop(leaver);
    let together = threads.join().unwrap();
    wait_for("the leaver's cancel", || {
        m.requests(Outcome::Cancelled) >= 1
    });
    let generated = m.generated_tokens.load(Ordering::Relaxed);
    assert_eq!(m.requests(Outcome::Ok), 6);
    d.stop();
    assert_eq!(together, alone);
    // 3 × 96 alone, 3 × 96 together, and the leaver's far fewer than its 1500.
    assert!(generated < 6 * 96 + 1500, "{generated} tokens generated");
}

#[test]
fn with_batching_off_requests_take_turns() {
    if !guests_can_run(&[DEFAULT]) {
        return;
    }
    let d = batched_daemon("off", DEFAULT, false);
    let addr = d.tcp_addr.unwrap();
    let alone: Vec<String> = PROMPTS
        .iter()
        .map(|p| answer(addr, DEFAULT, p, 32))
        .collect();
    let together = answers_at_once(addr, DEFAULT, &PROMPTS, 32);
    let counts = batch_counts(&d);
    d.stop();
    assert_eq!(together, alone);
    assert_eq!(counts, (0, 0), "nothing ran batched");
}

/// The embedding of `text` by `model` (OpenAI's route), as its floats.
fn embedding(addr: SocketAddr, model: &str, text: &str) -> Vec<f64> {
    let body = format!(r#"{{"model":"{model}","input":"{text}"}}"#);
    let r = http(addr, "POST", "/v1/embeddings", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["data"][0]["embedding"]
        .as_array()
        .expect("an embedding")
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

#[test]
fn another_model_and_an_embedding_wait_for_a_batch_and_are_served() {
    if !guests_can_run(&[DEFAULT, TINY]) {
        return;
    }
    let d = batched_daemon("others", DEFAULT, true);
    let addr = d.tcp_addr.unwrap();
    let stayers = &PROMPTS[1..3];
    let alone: Vec<String> = stayers
        .iter()
        .map(|p| answer(addr, DEFAULT, p, 48))
        .collect();
    let vector = embedding(addr, DEFAULT, "a lighthouse");
    let tiny_body = chat_body(TINY, "Once upon a time", 8, "");
    let tiny_alone = http(addr, "POST", CHAT, &tiny_body);
    assert_eq!(tiny_alone.status, 200, "{}", tiny_alone.body);

    // A long answer holds a batch open; two more clients join it.
    let mut long = TcpStream::connect(addr).unwrap();
    let body = chat_body(
        DEFAULT,
        PROMPTS[0],
        400,
        r#","stream":true,"ignore_eos":true"#,
    );
    request(&mut long, "POST", CHAT, &body);
    read_until_first_token(&mut long);
    let joiners = {
        let stayers = stayers.to_vec();
        std::thread::spawn(move || answers_at_once(addr, DEFAULT, &stayers, 48))
    };
    let m = &d.shared().metrics;
    wait_for("a request to join the batch", || {
        m.batch.requests.load(Ordering::Relaxed) >= 2
    });
    // Neither can run in the batch: each waits for it, and both are answered as alone.
    let other = std::thread::spawn(move || http(addr, "POST", CHAT, &tiny_body));
    assert_eq!(embedding(addr, DEFAULT, "a lighthouse"), vector);
    let other = other.join().unwrap();
    assert_eq!(other.status, 200, "{}", other.body);
    assert_eq!(other.chat_text(false), tiny_alone.chat_text(false));
    assert_eq!(joiners.join().unwrap(), alone);
    let rest = read_rest(&mut long);
    assert!(
        rest.contains("[DONE]") && !rest.contains("\"error\""),
        "{rest}"
    );
    d.stop();
}
