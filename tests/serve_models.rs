//! `flexserve serve` with several models in one guest, under KVM: models that fit the
//! budget together stay resident (switching between them boots and loads nothing); a model
//! that does not fit pushes out the least recently used one, never one that is answering;
//! answers are the same whichever way the model got into the guest.

use flexserve::serve::Daemon;
use flexserve::serve::config::Config;
use flexserve::serve::metrics::Outcome;
use flexserve::serve::models::ServedModel;
use flexserve_e2e::serve_rig::*;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;

const OTHER: &str = "tiny-qwen2.Q8_0";
const CHAT: &str = "/v1/chat/completions";
const CONTEXT: u32 = 512;

fn answer(addr: SocketAddr, model: &str) -> String {
    let r = http(addr, "POST", CHAT, &chat_body(model, "Hello there", 8, ""));
    assert_eq!(r.status, 200, "{model}: {}", r.body);
    r.json()["choices"][0]["message"]["content"]
        .as_str()
        .expect("an answer")
        .to_string()
}

/// (guest starts, model loads, model evictions, models resident).
fn counts(d: &Daemon) -> (u64, u64, u64, u64) {
    let m = &d.shared().metrics;
    (
        m.guest_starts.load(Ordering::Relaxed),
        m.model_loads.load(Ordering::Relaxed),
        m.model_evictions.load(Ordering::Relaxed),
        m.models_resident.load(Ordering::Relaxed),
    )
}

/// A daemon whose guest has room for either model, not both (`name`: its scratch directory).
fn daemon_for_one_model(name: &str) -> Daemon {
    let base = config(&temp_dir(name), TINY, CONTEXT, 8);
    let bytes = |model: &str| {
        let path = repo().join(format!("models/{model}.gguf"));
        ServedModel::load(model, &path, base.context, base.max_active, u64::MAX)
            .expect("the model checks")
            .private_bytes
    };
    let (tiny, other) = (bytes(TINY), bytes(OTHER));
    Daemon::start(Config {
        memory_max: tiny.max(other) + tiny.min(other) / 2,
        ..base
    })
    .expect("daemon starts")
}

#[test]
fn models_that_fit_together_stay_resident() {
    if !guests_can_run(&[TINY, OTHER]) {
        return;
    }
    let dir = temp_dir("models-resident");
    let d = Daemon::start(config(&dir, TINY, CONTEXT, 8)).expect("daemon starts");
    let addr = d.tcp_addr.unwrap();
    let a = answer(addr, TINY);
    let b = answer(addr, OTHER);
    assert_ne!(a, b, "two different models, the same answer");
    for _ in 0..2 {
        assert_eq!(answer(addr, TINY), a);
        assert_eq!(answer(addr, OTHER), b);
    }
    // One boot, each model loaded once, nothing unloaded.
    assert_eq!(counts(&d), (1, 2, 0, 2));
    let metrics = http(addr, "GET", "/metrics", "").body;
    assert!(
        metrics.contains("flexserve_guest_models_resident 2"),
        "{metrics}"
    );
    d.stop();
}

#[test]
fn a_model_that_does_not_fit_pushes_out_the_least_recently_used() {
    if !guests_can_run(&[TINY, OTHER]) {
        return;
    }
    let d = daemon_for_one_model("models-evict");
    let addr = d.tcp_addr.unwrap();
    let a = answer(addr, TINY);
    let b = answer(addr, OTHER);
    assert_eq!(counts(&d), (1, 2, 1, 1));
    // Back and forth: each switch unloads the other, in the same guest.
    assert_eq!(answer(addr, TINY), a);
    assert_eq!(answer(addr, OTHER), b);
    assert_eq!(counts(&d), (1, 4, 3, 1));
    d.stop();
}

#[test]
fn a_model_answering_is_not_pushed_out() {
    if !guests_can_run(&[TINY, OTHER]) {
        return;
    }
    let d = daemon_for_one_model("models-busy");
    let addr = d.tcp_addr.unwrap();
    let alone = answer(addr, OTHER);
    // A long answer from TINY streams while OTHER is asked for: OTHER waits for it (TINY
    // cannot be unloaded under it), then is loaded and answers as it did alone.
    let mut long = TcpStream::connect(addr).unwrap();
    let body = chat_body(TINY, "Go on.", 400, r#","stream":true,"ignore_eos":true"#);
    request(&mut long, "POST", CHAT, &body);
    let mut seen = read_until_first_token(&mut long);
    let waiting = std::thread::spawn(move || answer(addr, OTHER));
    seen.push_str(&read_rest(&mut long));
    assert!(seen.contains("[DONE]"), "{seen}");
    assert!(!seen.contains("\"error\""), "{seen}");
    assert_eq!(waiting.join().expect("the second client"), alone);
    let m = &d.shared().metrics;
    assert_eq!(m.requests(Outcome::Failed), 0);
    assert_eq!(counts(&d).0, 1, "the guest was restarted");
    d.stop();
}
