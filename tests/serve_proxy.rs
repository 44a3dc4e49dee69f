//! Sealed sessions from the client's side, with a real daemon and guest under KVM:
//! `flexserve proxy` in front of the daemon gives the official `openai` client the same
//! greedy text as plain requests (chat and completions, whole and streamed); a relay that
//! tampers with the sealed pieces (a flipped bit, a dropped, reordered or replayed piece,
//! the last one removed) gets the client an error every time and never text that did not
//! authenticate; a pinned key that is not the guest's is refused; `flexserve chat` answers
//! a piped conversation, sealed as plain.

use flexserve::proxy::trust::TrustError;
use flexserve::proxy::upstream::Upstream;
use flexserve::proxy::{Proxy, ProxyConfig, ProxyError};
use flexserve::serve::Daemon;
use flexserve_e2e::serve_rig::*;
use sealed_session::SessionPublicKey;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
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
