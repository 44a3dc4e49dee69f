//! `flexserve serve` with a real guest under KVM, its API: the official `openai` Python
//! client (`make test-venv`) against the daemon (text equal to `flexserve run`'s for the
//! same greedy request), 8 concurrent clients × 25 requests with one client disconnecting
//! mid-stream, bad input answered 4xx with OpenAI error objects, stop sequences.
//! `serve_scheduling.rs` has the queue, the guest's life and the binary's.

use flexserve::serve::Daemon;
use flexserve::serve::config::Config;
use flexserve::serve::metrics::Outcome;
use flexserve_e2e::serve_rig::*;
use serde_json::Value;

#[test]
fn the_openai_client_gets_what_flexserve_run_prints() {
    if !guests_can_run(&[DEFAULT]) {
        return;
    }
    let (Some(python), Some(bin)) = (python(), flexserve_bin()) else {
        return;
    };
    let dir = temp_dir("basic");
    let d = Daemon::start(config(&dir, DEFAULT, 512, 16)).expect("daemon starts");
    let base = format!("http://{}/v1", d.tcp_addr.unwrap());
    let socket = d.socket.clone().unwrap();
    let (chat_prompt, completion_prompt) = ("Why is the sky blue?", "Once upon a time");
    let r = run_client(
        &python,
        &[
            "basic",
            "--base-url",
            &base,
            "--uds",
            socket.to_str().unwrap(),
            "--model",
            DEFAULT,
            "--chat-prompt",
            chat_prompt,
            "--chat-tokens",
            "32",
            "--completion-prompt",
            completion_prompt,
            "--completion-tokens",
            "16",
        ],
    );
    d.stop();
    assert!(
        r["models"].as_array().unwrap().contains(&DEFAULT.into()),
        "{r}"
    );
    assert_eq!(r["models"], r["models_uds"]);
    assert_eq!(r["unknown_model_error"], "model_not_found", "{r}");
    assert_eq!(r["bad_temperature_param"], "temperature", "{r}");
    let chat = flexserve_run(&bin, DEFAULT, chat_prompt, 32, false);
    let completion = flexserve_run(&bin, DEFAULT, completion_prompt, 16, true);
    assert!(!chat.is_empty() && !completion.is_empty());
    assert_eq!(r["chat"], chat.as_str());
    assert_eq!(r["chat_stream"], chat.as_str());
    assert_eq!(r["completion"], completion.as_str());
    assert_eq!(r["completion_stream"], completion.as_str());
    for k in ["chat", "chat_stream", "completion", "completion_stream"] {
        let u = &r[format!("{k}_usage")];
        assert!(u["prompt_tokens"].as_u64().unwrap() > 0, "{k}: {u}");
        let n = u["completion_tokens"].as_u64().unwrap();
        assert_eq!(u["total_tokens"], u["prompt_tokens"].as_u64().unwrap() + n);
        let finish = r[format!("{k}_finish")].as_str().unwrap();
        assert!(
            (finish == "length" && n == if k.starts_with("chat") { 32 } else { 16 })
                || finish == "stop",
            "{k}: {finish} after {n} tokens"
        );
    }
}

#[test]
fn eight_clients_times_25_requests_and_a_disconnect() {
    if !guests_can_run(&[TINY]) {
        return;
    }
    let Some(python) = python() else {
        return;
    };
    let dir = temp_dir("concurrent");
    // Slices of 2 tokens: the requests in the guest are interleaved all the time, and
    // each must still get exactly its own greedy text.
    let d = Daemon::start(Config {
        slice_tokens: 2,
        ..config(&dir, TINY, 512, 64)
    })
    .expect("daemon starts");
    let base = format!("http://{}/v1", d.tcp_addr.unwrap());
    let r = run_client(
        &python,
        &[
            "concurrent",
            "--base-url",
            &base,
            "--model",
            TINY,
            "--clients",
            "8",
            "--requests",
            "25",
        ],
    );
    let m = &d.shared().metrics;
    let (ok, cancelled) = (m.requests(Outcome::Ok), m.requests(Outcome::Cancelled));
    let d_failed = m.requests(Outcome::Failed);
    d.stop();
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
    assert_eq!(r["mismatches"], serde_json::json!([]), "{r}");
    assert_eq!(r["ok"], 200, "{r}");
    // The 8 prompts give 8 different answers, so a mixed-up answer would show.
    assert_eq!(r["distinct_expected"], 8, "{r}");
    assert_eq!(r["disconnected_after_chunks"], 3, "{r}");
    // The disconnected stream is cancelled, unless the tiny model was done before the
    // daemon saw the disconnect (a_full_queue_answers_429_and_gone_clients_are_cancelled
    // checks cancelling without that race).
    assert_eq!(
        ok + cancelled,
        8 + 200 + 1,
        "ok {ok}, cancelled {cancelled}"
    );
    assert_eq!(d_failed, 0);
}

#[test]
fn bad_input_is_answered_4xx_with_openai_errors() {
    if !guests_can_run(&[TINY]) {
        return;
    }
    let dir = temp_dir("bad-input");
    let d = Daemon::start(config(&dir, TINY, 512, 16)).expect("daemon starts");
    let addr = d.tcp_addr.unwrap();
    let chat = "/v1/chat/completions";
    let long_prompt = "word ".repeat(700);
    // method, path, body, status, the error's param and code
    type Case<'a> = (
        &'a str,
        &'a str,
        String,
        u16,
        Option<&'a str>,
        Option<&'a str>,
    );
    let cases: &[Case] = &[
        ("POST", chat, "{not json".into(), 400, None, None),
        ("POST", chat, "[1, 2]".into(), 400, None, None),
        (
            "POST",
            chat,
            chat_body("gpt-9", "hi", 8, ""),
            404,
            Some("model"),
            Some("model_not_found"),
        ),
        (
            "POST",
            chat,
            chat_body("../../etc/passwd", "hi", 8, ""),
            404,
            Some("model"),
            None,
        ),
        (
            "POST",
            chat,
            chat_body(TINY, &long_prompt, 8, ""),
            400,
            Some("messages"),
            Some("context_length_exceeded"),
        ),
        (
            "POST",
            chat,
            chat_body(TINY, "hi", 8, r#","temperature":"hot""#),
            400,
            Some("temperature"),
            None,
        ),
        (
            "POST",
            chat,
            chat_body(TINY, "hi", 8, r#","temperature":1e9"#),
            400,
            Some("temperature"),
            None,
        ),
        (
            "POST",
            chat,
            chat_body(TINY, "hi", 0, ""),
            400,
            Some("max_tokens"),
            None,
        ),
        // (A `max_tokens` beyond the context is clamped: serve_sampling.rs.)
        (
            "POST",
            chat,
            chat_body(TINY, "hi", 8, r#","tools":[{"type":"function"}]"#),
            400,
            Some("tools"),
            None,
        ),
        (
            "POST",
            chat,
            chat_body(TINY, "hi", 8, r#","stream":"yes""#),
            400,
            Some("stream"),
            None,
        ),
        (
            "POST",
            chat,
            format!(r#"{{"model":"{TINY}","messages":[{{"role":"user","content":5}}]}}"#),
            400,
            Some("messages"),
            None,
        ),
        (
            "POST",
            chat,
            format!(r#"{{"model":"{TINY}","messages":[]}}"#),
            400,
            Some("messages"),
            None,
        ),
        (
            "POST",
            "/v1/completions",
            format!(r#"{{"model":"{TINY}","prompt":[99999999]}}"#),
            400,
            Some("prompt"),
            None,
        ),
        (
            "POST",
            "/v1/completions",
            format!(r#"{{"model":"{TINY}","prompt":{{}}}}"#),
            400,
            Some("prompt"),
            None,
        ),
        (
            "GET",
            "/v1/nothing",
            String::new(),
            404,
            None,
            Some("not_found"),
        ),
        (
            "POST",
            "/v1/completions",
            format!(r#"{{"model":"{TINY}","prompt":"{}"}}"#, "x".repeat(5 << 20)),
            413,
            None,
            Some("request_too_large"),
        ),
        (
            "GET",
            "/v1/models/nope",
            String::new(),
            404,
            Some("model"),
            Some("model_not_found"),
        ),
    ];
    for (method, path, body, status, param, code) in cases {
        let r = http(addr, method, path, body);
        assert_eq!(r.status, *status, "{body}: {}", r.body);
        let e = &r.json()["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            r.body
        );
        assert!(e["type"].is_string(), "{}", r.body);
        if let Some(p) = param {
            assert_eq!(e["param"], *p, "{body}: {}", r.body);
        }
        if let Some(c) = code {
            assert_eq!(e["code"], *c, "{body}: {}", r.body);
        }
    }
    // The daemon is unharmed.
    let r = http(addr, "POST", chat, &chat_body(TINY, "hi", 4, ""));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["usage"]["completion_tokens"], 4);
    let one = http(addr, "GET", &format!("/v1/models/{TINY}"), "");
    assert_eq!(one.status, 200, "{}", one.body);
    assert_eq!(one.json()["id"], TINY);
    let h = http(addr, "GET", "/health", "");
    assert_eq!(h.json()["guest"], "up");
    // The level the guest got, in /health and as the one set gauge of /metrics.
    let level = h.json()["isolation"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        ["none", "private-memory", "protected-vm"].contains(&level.as_str()),
        "{}",
        h.body
    );
    let m = http(addr, "GET", "/metrics", "");
    assert!(
        m.body
            .contains(&format!("flexserve_guest_isolation{{level=\"{level}\"}} 1")),
        "{}",
        m.body
    );
    assert!(
        m.body
            .contains("flexserve_requests_total{outcome=\"invalid\"} 15"),
        "{}",
        m.body
    );
    // After a request: what the guest allocated and what the host measures it holds.
    let gauge = |name: &str| -> u64 {
        m.body
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {}", m.body))
    };
    let (used, held, budget) = (
        gauge("flexserve_memory_used_bytes "),
        gauge("flexserve_memory_held_bytes "),
        gauge("flexserve_memory_budget_bytes "),
    );
    assert!(
        used > 0 && held > 0 && held <= budget,
        "{used} {held} {budget}"
    );
    d.stop();
}

#[test]
fn stop_sequences_end_the_text_before_them() {
    if !guests_can_run(&[TINY]) {
        return;
    }
    let dir = temp_dir("stop");
    let d = Daemon::start(config(&dir, TINY, 512, 16)).expect("daemon starts");
    let addr = d.tcp_addr.unwrap();
    let path = "/v1/completions";
    let body = |extra: &str| {
        format!(
            r#"{{"model":"{TINY}","prompt":"Once upon a time","max_tokens":24,"temperature":0{extra}}}"#
        )
    };
    let full = http(addr, "POST", path, &body(""));
    let text = full.json()["choices"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    // A stop sequence from the middle of the greedy text: the answer is what precedes it.
    let cut = text.char_indices().nth(text.chars().count() / 2).unwrap().0;
    let stop: String = text[cut..].chars().take(3).collect();
    let expected = &text[..text.find(&stop).unwrap()];
    let stop_json = serde_json::to_string(&stop).unwrap();
    let r = http(
        addr,
        "POST",
        path,
        &body(&format!(r#","stop":[{stop_json}]"#)),
    );
    let v = r.json();
    assert_eq!(
        v["choices"][0]["text"], expected,
        "full text {text:?}, stop {stop:?}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // Streamed: the same text across the chunks.
    let r = http(
        addr,
        "POST",
        path,
        &body(&format!(r#","stop":{stop_json},"stream":true"#)),
    );
    let mut streamed = String::new();
    for line in r.body.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if let Ok(v) = serde_json::from_str::<Value>(line) {
            streamed.push_str(v["choices"][0]["text"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(streamed, expected);
    assert!(r.body.contains("\"finish_reason\":\"stop\""), "{}", r.body);
    d.stop();
}
