//! Sealed sessions from the client's side, with a real daemon and guest under KVM:
//! `flexserve proxy` in front of the daemon gives the official `openai` client the same
//! greedy text as plain requests (chat and completions, whole and streamed); a relay that
//! tampers with the sealed pieces (a flipped bit, a dropped, reordered or replayed piece,
//! the last one removed) gets the client an error every time and never text that did not
//! authenticate; a pinned key that is not the guest's is refused; `flexserve chat` answers
//! a piped conversation, sealed as plain. The `flexserve proxy` binary, asked by plain HTTP
//! (no Python: the arm64 tier runs that test too, in normal and protected VMs), gives the
//! plain text while the daemon is sent and sends back only sealed content.

use flexserve::proxy::trust::TrustError;
use flexserve::proxy::upstream::Upstream;
use flexserve::proxy::{Proxy, ProxyConfig, ProxyError};
use flexserve::serve::Daemon;
use flexserve::serve::config::Config;
use flexserve_e2e::relay::{Relay, Traffic};
use flexserve_e2e::serve_rig::*;
use sealed_session::SessionPublicKey;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

fn daemon(name: &str) -> Option<(Daemon, SocketAddr)> {
    if !guests_can_run(&[DEFAULT]) {
        return None;
    }
    let d = Daemon::start(config(&temp_dir(name), DEFAULT, 512, 16)).expect("daemon starts");
    let addr = d.tcp_addr.unwrap();
    Some((d, addr))
}

fn proxy(upstream: Upstream, guest_key: Option<SessionPublicKey>) -> Result<Proxy, ProxyError> {
    Proxy::start(ProxyConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream,
        guest_key,
        plain: false,
    })
}

#[test]
fn the_openai_client_through_the_proxy_gets_the_daemons_text() {
    let Some(python) = python() else {
        return;
    };
    let Some((d, addr)) = daemon("proxy-same") else {
        return;
    };
    let socket = d.socket.clone().unwrap();
    let p = proxy(Upstream::Unix(socket.clone()), None).expect("proxy starts");
    let key = p.client.guest.as_ref().unwrap().session_key();
    let basic = |base: String| {
        run_client(
            &python,
            &[
                "basic",
                "--base-url",
                &base,
                "--uds",
                socket.to_str().unwrap(),
                "--model",
                DEFAULT,
            ],
        )
    };
    let plain = basic(format!("http://{addr}/v1"));
    let sealed = basic(format!("http://{}/v1", p.addr));
    p.stop();
    for k in ["chat", "chat_stream", "completion", "completion_stream"] {
        assert!(!plain[k].as_str().unwrap().is_empty(), "{k}: {plain}");
        assert_eq!(sealed[k], plain[k], "{k}");
        assert_eq!(sealed[format!("{k}_finish")], plain[format!("{k}_finish")]);
        let n = |r: &Value| r[format!("{k}_usage")]["completion_tokens"].clone();
        assert_eq!(n(&sealed), n(&plain), "{k}");
        // A sealed prompt never takes a kept KV cache (its timing would tell the host how
        // much of it another session held); each was evaluated whole, and answered as the
        // plain requests were; the plain streamed chat took the cache of the same prompt
        // asked a moment before (the completion's 4-token prompt is too short to reuse).
        let cached =
            |r: &Value| r[format!("{k}_usage")]["prompt_tokens_details"]["cached_tokens"].as_u64();
        assert_eq!(cached(&sealed), Some(0), "{k}: {sealed}");
        if k == "chat_stream" {
            let whole = plain[format!("{k}_usage")]["prompt_tokens"]
                .as_u64()
                .unwrap();
            assert_eq!(cached(&plain), Some(whole - 2), "{k}: {plain}");
        }
    }
    assert_eq!(sealed["models"], plain["models"]);
    assert_eq!(sealed["unknown_model_error"], "model_not_found", "{sealed}");
    assert_eq!(sealed["bad_temperature_param"], "temperature", "{sealed}");

    // The right pinned key is accepted, a wrong one refused with both keys named.
    let tcp = Upstream::Tcp(addr.to_string());
    proxy(tcp.clone(), Some(key))
        .expect("the pinned key")
        .stop();
    let wrong = SessionPublicKey([0x42; 32]);
    match proxy(tcp, Some(wrong)) {
        Err(ProxyError::Trust(e @ TrustError::PinMismatch { .. })) => {
            let m = e.to_string();
            assert!(
                m.contains(&wrong.to_string()) && m.contains(&key.to_string()),
                "{m}"
            );
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a wrong pinned key was accepted"),
    }
    d.stop();
}

#[test]
fn tampered_answers_are_errors_never_unauthenticated_text() {
    let Some(python) = python() else {
        return;
    };
    let Some((d, addr)) = daemon("proxy-tamper") else {
        return;
    };
    let mut relay = Command::new(&python)
        .arg(repo().join("tests/proxy_client.py"))
        .args(["tamper", "--upstream", &format!("http://{addr}")])
        .args(["--model", DEFAULT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(relay.stdout.take().unwrap());
    let mut port = String::new();
    out.read_line(&mut port).unwrap();
    let relay_url = format!("http://127.0.0.1:{}", port.trim());
    let p = proxy(relay_url.parse().unwrap(), None).expect("proxy starts through the relay");
    writeln!(relay.stdin.take().unwrap(), "http://{}/v1", p.addr).unwrap();
    let mut last = String::new();
    for line in out.lines() {
        last = line.unwrap();
    }
    assert!(relay.wait().unwrap().success());
    p.stop();
    d.stop();
    let r: Value = serde_json::from_str(&last).unwrap_or_else(|e| panic!("{e}: {last}"));
    for (kind, got) in r["untampered"].as_object().unwrap() {
        assert!(got["error"].is_null(), "{kind}: {got}");
        assert!(!got["text"].as_str().unwrap().is_empty(), "{kind}: {got}");
    }
    for t in r["tampered"].as_array().unwrap() {
        let what = format!("{} {} stream={}", t["mode"], t["kind"], t["stream"]);
        assert_eq!(
            t["applied"],
            serde_json::json!([true]),
            "{what}: not tampered"
        );
        assert_eq!(t["error"]["type"], "sealed_session_error", "{what}: {t}");
        let text = t["text"].as_str().unwrap();
        if t["stream"] == true {
            // Pieces before the tampered one authenticated and were passed on.
            let key = format!("{}_stream", t["kind"].as_str().unwrap());
            let full = r["untampered"][key]["text"].as_str().unwrap();
            assert!(
                full.starts_with(text),
                "{what}: {text:?} is not a prefix of {full:?}"
            );
        } else {
            assert_eq!(text, "", "{what}");
        }
    }
}

#[test]
fn flexserve_chat_answers_a_piped_conversation() {
    let Some(bin) = flexserve_bin() else {
        return;
    };
    let Some((d, addr)) = daemon("proxy-chat") else {
        return;
    };
    let chat = |input: &str, plain: bool| {
        let mut cmd = Command::new(&bin);
        cmd.args([
            "chat",
            "--url",
            &format!("http://{addr}"),
            "--model",
            DEFAULT,
        ])
        .args(["--temperature", "0", "-n", "16"]);
        if plain {
            cmd.arg("--plain");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        (String::from_utf8(out.stdout).unwrap(), stderr)
    };
    let q = "Why is the sky blue?\n";
    let (plain, _) = chat(q, true);
    // Asked twice with a reset between: the same greedy answer twice.
    let (sealed, notes) = chat(&format!("{q}/reset\n{q}/quit\nnever sent\n"), false);
    d.stop();
    assert!(plain.trim().len() > 1, "{plain:?}");
    assert_eq!(sealed, format!("{plain}{plain}"), "{notes}");
    assert!(
        notes.contains("on first use") && notes.contains("--guest-key"),
        "{notes}"
    );
}

/// A prompt no other request sends: it carries 16 random hex digits.
fn unique_prompt() -> String {
    let mut nonce = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut nonce))
        .expect("read /dev/urandom");
    format!(
        "Remember the violet heron {:016x} of Lake Quill.",
        u64::from_le_bytes(nonce)
    )
}

/// How `text` appears inside a JSON string.
fn in_json(text: &str) -> Vec<u8> {
    let quoted = serde_json::to_string(text).unwrap();
    quoted.as_bytes()[1..quoted.len() - 1].to_vec()
}

#[test]
fn the_proxy_binary_gives_the_plain_text_and_the_daemon_sees_only_sealed_content() {
    let Some(bin) = flexserve_bin() else {
        return;
    };
    if !guests_can_run(&[TINY]) {
        return;
    }
    // The tiny model alone: the guest statement the proxy fetches lists (and so checks) every
    // model the daemon has, which takes seconds for the shared models directory.
    let dir = temp_dir("proxy-bin");
    let models = dir.join("models");
    std::fs::create_dir(&models).unwrap();
    let tiny = format!("{TINY}.gguf");
    std::os::unix::fs::symlink(repo().join("models").join(&tiny), models.join(&tiny)).unwrap();
    let d = Daemon::start(Config {
        models_dir: models,
        ..config(&dir, TINY, 512, 4)
    })
    .expect("daemon starts");
    // The plain requests go through a relay of their own: the same recording, which must
    // see their text (the control).
    let (plain_relay, sealed_relay) = (
        Relay::start(d.tcp_addr.unwrap()),
        Relay::start(d.tcp_addr.unwrap()),
    );
    let proxy = start_proxy(&bin, &format!("http://{}", sealed_relay.addr));
    let proxy_addr = SocketAddr::from(([127, 0, 0, 1], proxy.port));
    let prompt = unique_prompt();
    let mut whole = String::new();
    for stream in [false, true] {
        let extra = if stream { r#","stream":true"# } else { "" };
        let body = chat_body(TINY, &prompt, 24, extra);
        let chat = |addr| http(addr, "POST", "/v1/chat/completions", &body).chat_text(stream);
        let plain = chat(plain_relay.addr);
        let sealed = chat(proxy_addr);
        assert_eq!(sealed, plain, "stream: {stream}");
        if !stream {
            whole = plain;
        }
    }
    drop(proxy);
    d.stop();
    // Eight bytes or more: a shorter answer could turn up in sealed bytes by chance.
    assert!(
        whole.len() >= 8,
        "the answer is too short to look for: {whole:?}"
    );
    let (prompt, answer) = (prompt.into_bytes(), in_json(&whole));
    let plain: Vec<Traffic> = plain_relay.traffic();
    assert!(
        plain.iter().any(|t| t.holds(&prompt)) && plain.iter().any(|t| t.holds(&answer)),
        "the relay did not see a plain request's prompt and answer: it proves nothing"
    );
    let sealed = sealed_relay.traffic();
    for t in &sealed {
        assert!(
            !t.holds(&prompt),
            "the daemon was sent the prompt in the clear"
        );
        assert!(
            !t.holds(&answer),
            "the daemon handled the answer in the clear"
        );
    }
    let requests = sealed
        .iter()
        .map(|t| {
            t.sent
                .windows(16)
                .filter(|w| w == b"flexserve_sealed")
                .count()
        })
        .sum::<usize>();
    assert_eq!(requests, 2, "the daemon did not get the two chats sealed");
}
