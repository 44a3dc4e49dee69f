//! `flexserve serve` with a real guest under KVM: the official `openai` Python client
//! (`make test-venv`) against the daemon (text equal to `flexserve run`'s for the same greedy
//! request), 8 concurrent clients × 25 requests with one client disconnecting mid-stream,
//! bad input answered 4xx with OpenAI error objects, a full queue answered 429 with
//! Retry-After, clients taking turns in the queue, a guest crash failing the request in
//! flight and the next request served by a new guest, and the real binary's sd_notify
//! handshake and drain on SIGTERM.

use flexserve_e2e::{kvm_required, target_dir};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vmm::serve::Daemon;
use vmm::serve::config::{Config, StartMode};
use vmm::serve::metrics::Outcome;

const DEFAULT: &str = "SmolLM2-135M-Instruct.Q4_1";
const TINY: &str = "tiny.Q8_0";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Says why a test cannot run here and skips it, or fails it when KVM tests are required.
fn skip(why: &str) {
    assert!(!kvm_required(), "{why}");
    eprintln!("SKIPPED: {why}");
}

/// Whether guests, models and the guest image are here.
fn guests_can_run(models: &[&str]) -> bool {
    if !Path::new("/dev/kvm").exists() || !repo().join("images/out/manifest.json").exists() {
        skip("/dev/kvm or the guest images are missing (run `make image`)");
        return false;
    }
    for m in models {
        if !repo().join(format!("models/{m}.gguf")).exists() {
            skip(&format!("models/{m}.gguf is missing (run `make setup`)"));
            return false;
        }
    }
    true
}

/// The `openai` client's Python (`make test-venv`).
fn python() -> Option<PathBuf> {
    let p = repo().join("build/test-venv/bin/python");
    if p.exists() {
        return Some(p);
    }
    skip("build/test-venv is missing (run `make test-venv`)");
    None
}

/// The release `flexserve` binary (`make test` builds it).
fn flexserve_bin() -> Option<PathBuf> {
    let p = target_dir().join("release/flexserve");
    if p.exists() {
        return Some(p);
    }
    skip("target/release/flexserve is missing (run `cargo build --release -p vmm`)");
    None
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flexserve-serve-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config(dir: &Path, model: &str, context: u32, queue_depth: usize) -> Config {
    Config {
        socket: dir.join("flexserve.sock"),
        tcp: Some("127.0.0.1:0".parse().unwrap()),
        images: Some(repo().join("images/out")),
        start: StartMode::Startup,
        models_dir: repo().join("models"),
        default_model: model.into(),
        context,
        queue_depth,
        ..Config::default()
    }
}

/// An HTTP answer read to the end (the request asked to close the connection).
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

fn request(stream: &mut impl Write, method: &str, path: &str, body: &str) {
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: flexserve\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
}

fn read_reply(mut stream: impl Read) -> Reply {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Reply {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

/// Everything left on the connection, as text.
fn read_rest(mut stream: impl Read) -> String {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    String::from_utf8_lossy(&raw).into_owned()
}

fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    request(&mut s, method, path, body);
    read_reply(s)
}

fn chat_body(model: &str, prompt: &str, max_tokens: u32, extra: &str) -> String {
    format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"{prompt}"}}],"temperature":0,"max_tokens":{max_tokens}{extra}}}"#
    )
}

/// Reads a streamed answer until its first content chunk has arrived.
fn read_until_first_token(s: &mut impl Read) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"content\":\"")
        || String::from_utf8_lossy(&seen).matches("data: ").count() < 2
    {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the stream ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// `flexserve run`'s text for a greedy request (stdout less the final newline).
fn flexserve_run(bin: &Path, model: &str, prompt: &str, n: u32, raw: bool) -> String {
    let mut cmd = Command::new(bin);
    cmd.current_dir(repo())
        .args(["run", "-m", &format!("models/{model}.gguf")]);
    cmd.args(["--temperature", "0", "--ctx", "512", "-n", &n.to_string()]);
    if raw {
        cmd.arg("--raw");
    }
    let out = cmd.arg(prompt).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.strip_suffix('\n').unwrap_or(&text).to_string()
}

fn run_client(python: &Path, args: &[&str]) -> Value {
    let out = Command::new(python)
        .arg(repo().join("tests/serve_client.py"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "serve_client.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap()
}

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
            chat_body(TINY, "hi", 1_000_000_000, ""),
            400,
            Some("max_tokens"),
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
    let m = http(addr, "GET", "/metrics", "");
    assert!(
        m.body
            .contains("flexserve_requests_total{outcome=\"invalid\"} 14"),
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
fn a_full_queue_answers_429_and_gone_clients_are_cancelled() {
    if !guests_can_run(&[DEFAULT]) {
        return;
    }
    let dir = temp_dir("queue");
    // One request in the guest at a time, one waiting.
    let d = Daemon::start(Config {
        max_active: 1,
        ..config(&dir, DEFAULT, 2048, 1)
    })
    .expect("daemon starts");
    let addr = d.tcp_addr.unwrap();
    let chat = "/v1/chat/completions";
    let long = chat_body(
        DEFAULT,
        "Count to a million.",
        1500,
        r#","stream":true,"ignore_eos":true"#,
    );
    // A: in the guest, streaming.
    let mut a = TcpStream::connect(addr).unwrap();
    request(&mut a, "POST", chat, &long);
    read_until_first_token(&mut a);
    // B: waiting in the queue (the only place).
    let mut b = TcpStream::connect(addr).unwrap();
    request(
        &mut b,
        "POST",
        chat,
        &chat_body(DEFAULT, "Hello", 1500, r#","ignore_eos":true"#),
    );
    let start = Instant::now();
    while d.shared().queue.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "B never queued");
        std::thread::sleep(Duration::from_millis(5));
    }
    // C: no room.
    let c = http(addr, "POST", chat, &chat_body(DEFAULT, "Hi", 4, ""));
    assert_eq!(c.status, 429, "{}", c.body);
    assert!(c.head.contains("retry-after: 1"), "{}", c.head);
    assert_eq!(c.json()["error"]["code"], "rate_limit_exceeded");
    // A and B go away: A stops between two tokens, B never runs.
    drop(a);
    drop(b);
    let start = Instant::now();
    let m = &d.shared().metrics;
    while m.requests(Outcome::Cancelled) < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "A and B were not cancelled"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Far fewer than 1500 tokens were generated for A.
    let generated = m
        .generated_tokens
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        generated < 1500,
        "{generated} tokens generated for cancelled requests"
    );
    let r = http(addr, "POST", chat, &chat_body(DEFAULT, "Hi", 4, ""));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(m.requests(Outcome::Rejected), 1);
    d.stop();
}

#[test]
fn a_guest_crash_fails_the_request_and_a_new_guest_serves_the_next() {
    if !guests_can_run(&[DEFAULT]) {
        return;
    }
    let dir = temp_dir("crash");
    let d = Daemon::start(config(&dir, DEFAULT, 2048, 16)).expect("daemon starts");
    let addr = d.tcp_addr.unwrap();
    let chat = "/v1/chat/completions";
    let probe = chat_body(DEFAULT, "What is two plus two?", 12, "");
    let before = http(addr, "POST", chat, &probe);
    assert_eq!(before.status, 200, "{}", before.body);

    let mut s = TcpStream::connect(addr).unwrap();
    let long = chat_body(
        DEFAULT,
        "Go on.",
        1500,
        r#","stream":true,"ignore_eos":true"#,
    );
    request(&mut s, "POST", chat, &long);
    let mut seen = read_until_first_token(&mut s);
    assert!(d.crash_guest_for_tests(), "a guest is running");
    seen.push_str(&read_rest(&mut s));
    assert!(seen.contains("\"error\""), "{seen}");
    assert!(seen.contains("guest VM failed"), "{seen}");
    assert!(!seen.contains("[DONE]"), "{seen}");

    let after = http(addr, "POST", chat, &probe);
    assert_eq!(after.status, 200, "{}", after.body);
    assert_eq!(
        after.json()["choices"][0]["message"]["content"],
        before.json()["choices"][0]["message"]["content"]
    );
    let m = &d.shared().metrics;
    assert_eq!(
        m.guest_crashes.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(m.guest_starts.load(std::sync::atomic::Ordering::Relaxed), 2);
    assert_eq!(m.requests(Outcome::Failed), 1);
    d.stop();
}

#[test]
fn the_daemon_binary_tells_systemd_and_drains_on_sigterm() {
    use std::os::unix::net::{UnixDatagram, UnixStream};
    if !guests_can_run(&[TINY]) {
        return;
    }
    let Some(bin) = flexserve_bin() else {
        return;
    };
    let dir = temp_dir("binary");
    // A bad key is refused with its name before anything starts.
    std::fs::write(dir.join("bad.toml"), "[guest]\nvcpu = 2\n").unwrap();
    let out = Command::new(&bin)
        .args(["serve", "--config"])
        .arg(dir.join("bad.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vcpu"), "{err}");

    let socket = dir.join("api.sock");
    std::fs::write(
        dir.join("flexserve.toml"),
        format!(
            "[listen]\nsocket = {socket:?}\nsocket_mode = \"0600\"\n[guest]\nvcpus = 2\n\
             images = {:?}\n[models]\ndir = {:?}\ndefault = \"{TINY}\"\ncontext = 256\n",
            repo().join("images/out"),
            repo().join("models"),
        ),
    )
    .unwrap();
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut child = Command::new(&bin)
        .args(["serve", "--config"])
        .arg(dir.join("flexserve.toml"))
        .env("NOTIFY_SOCKET", &notify_path)
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 within a minute");
    assert_eq!(&buf[..n], b"READY=1");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let mut s = UnixStream::connect(&socket).unwrap();
    request(&mut s, "GET", "/health", "");
    let health = read_reply(s);
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["guest"], "up");
    // A stream in flight when SIGTERM comes still gets to its end.
    let mut s = UnixStream::connect(&socket).unwrap();
    let body = chat_body(TINY, "Hi", 200, r#","stream":true,"ignore_eos":true"#);
    request(&mut s, "POST", "/v1/chat/completions", &body);
    read_until_first_token(&mut s);
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let n = notify.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let rest = read_rest(s);
    assert!(rest.contains("\"completion_tokens\":200"), "{rest}");
    assert!(rest.contains("[DONE]"), "{rest}");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "the socket is removed on exit");
}

#[test]
fn clients_take_turns_in_the_queue() {
    if !guests_can_run(&[DEFAULT]) {
        return;
    }
    let dir = temp_dir("fair");
    // One request in the guest at a time: the order is the queue's.
    let d = Daemon::start(Config {
        max_active: 1,
        ..config(&dir, DEFAULT, 2048, 16)
    })
    .expect("daemon starts");
    let addr = d.tcp_addr.unwrap();
    let chat = "/v1/chat/completions";
    let done = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let body = |user: &str, n: u32| {
        chat_body(
            DEFAULT,
            "Tell me a story.",
            n,
            &format!(r#","ignore_eos":true,"user":"{user}""#),
        )
    };
    // x1 runs in the guest while x2..x6 and then y1 queue up.
    let mut x1 = TcpStream::connect(addr).unwrap();
    let stream = chat_body(
        DEFAULT,
        "Tell me a story.",
        48,
        r#","ignore_eos":true,"stream":true,"user":"x""#,
    );
    request(&mut x1, "POST", chat, &stream);
    read_until_first_token(&mut x1);
    let mut threads = vec![std::thread::spawn({
        let done = done.clone();
        move || {
            read_rest(x1);
            done.lock().unwrap().push("x1".to_string());
        }
    })];
    let submit =
        |name: String, user: &'static str, threads: &mut Vec<std::thread::JoinHandle<()>>| {
            let mut s = TcpStream::connect(addr).unwrap();
            request(&mut s, "POST", chat, &body(user, 24));
            let done = done.clone();
            threads.push(std::thread::spawn(move || {
                let r = read_reply(s);
                assert_eq!(r.status, 200, "{}", r.body);
                done.lock().unwrap().push(name);
            }));
        };
    for i in 2..=6 {
        submit(format!("x{i}"), "x", &mut threads);
        let start = Instant::now();
        while d.shared().queue.len() < i - 1 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "x{i} never queued"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    submit("y1".into(), "y", &mut threads);
    for t in threads {
        t.join().unwrap();
    }
    d.stop();
    let order = done.lock().unwrap().clone();
    // Round-robin: after x1 and x2 (the head of x's line when y arrived), y1 goes next
    // instead of after x6.
    let y = order.iter().position(|n| n == "y1").unwrap();
    assert!(y <= 2, "{order:?}");
}

#[test]
fn a_short_request_is_not_stuck_behind_a_long_one() {
    if !guests_can_run(&[DEFAULT]) {
        return;
    }
    let dir = temp_dir("interleave");
    let d = Daemon::start(config(&dir, DEFAULT, 2048, 16)).expect("daemon starts");
    let addr = d.tcp_addr.unwrap();
    let chat = "/v1/chat/completions";
    let long = chat_body(
        DEFAULT,
        "Count to a million.",
        1500,
        r#","stream":true,"ignore_eos":true"#,
    );
    let mut a = TcpStream::connect(addr).unwrap();
    request(&mut a, "POST", chat, &long);
    read_until_first_token(&mut a);
    // The long request alone took ~12 s; the short one is answered within its slices.
    let start = Instant::now();
    let b = http(
        addr,
        "POST",
        chat,
        &chat_body(DEFAULT, "What is two plus two?", 12, ""),
    );
    let took = start.elapsed();
    assert_eq!(b.status, 200, "{}", b.body);
    assert_eq!(b.json()["usage"]["completion_tokens"], 12);
    let m = &d.shared().metrics;
    assert_eq!(
        m.requests(Outcome::Ok),
        1,
        "the long request is still running"
    );
    assert!(
        took < Duration::from_secs(5),
        "the short request took {took:?}"
    );
    drop(a);
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
