//! `flexserve serve`'s on-demand isolation under KVM: a model stays resident for its last
//! request's `keep_alive`; once it ran out the model is unloaded and, with nothing left,
//! the guest is stopped (an idle stop, not a failure: `/health` stays 200); the next
//! request boots a guest again and answers as before.

use flexserve::serve::Daemon;
use flexserve::serve::config::Config;
use flexserve::serve::keep_alive::KeepAlive;
use flexserve::serve::metrics::GuestState;
use flexserve_e2e::serve_rig::*;
use std::sync::atomic::Ordering;
use std::time::Duration;
use vmm::hypervisor::IsolationLevel;
use vmm::key_root::DevelopmentRoot;

const OTHER: &str = "tiny-qwen2.Q8_0";
const CHAT: &str = "/v1/chat/completions";
const CONTEXT: u32 = 512;

/// (guest starts, model loads, idle unloads, idle stops, models resident).
fn counts(d: &Daemon) -> (u64, u64, u64, u64, u64) {
    let m = &d.shared().metrics;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    (
        get(&m.guest_starts),
        get(&m.model_loads),
        get(&m.model_idle_unloads),
        get(&m.guest_idle_stops),
        get(&m.models_resident),
    )
}

#[test]
fn keep_alive_zero_stops_the_guest_and_the_next_request_boots_it() {
    if !guests_can_run(&[TINY]) {
        return;
    }
    let dir = temp_dir("keep-alive-zero");
    let root = dir.join("key-root");
    DevelopmentRoot::open_or_create(&root).expect("a key root");
    let d = Daemon::start(Config {
        key_root: Some(root),
        ..config(&dir, TINY, CONTEXT, 8)
    })
    .expect("daemon starts");
    let addr = d.tcp_addr.unwrap();
    let m = &d.shared().metrics;
    let session_key = || {
        let r = http(addr, "GET", "/v1/flexserve/guest", "");
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["session_key"].clone()
    };
    let key = session_key();
    assert!(key.is_string(), "no session key: {key}");
    let bad = http(
        addr,
        "POST",
        CHAT,
        &chat_body(TINY, "Hi", 4, r#","keep_alive":"soon""#),
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.json()["error"]["param"], "keep_alive", "{}", bad.body);

    let first = chat_answer(addr, TINY, r#","keep_alive":0"#);
    wait_for("the idle stop", || m.guest_idle());
    assert_eq!(counts(&d), (1, 1, 1, 1, 0));
    let metrics = http(addr, "GET", "/metrics", "").body;
    for line in [
        "flexserve_guest_up 0",
        "flexserve_guest_idle 1",
        "flexserve_guest_model_idle_unloads_total 1",
        "flexserve_guest_idle_stops_total 1",
        "flexserve_guest_models_resident 0",
        "flexserve_memory_budget_bytes 0",
    ] {
        assert!(metrics.contains(line), "no {line:?} in {metrics}");
    }
    let health = http(addr, "GET", "/health", "");
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.json()["guest"], "down");
    assert_eq!(health.json()["idle"], true);

    // The next request boots a guest again and answers the same; with the default
    // keep-alive (five minutes) its model stays.
    assert_eq!(chat_answer(addr, TINY, ""), first);
    assert_eq!(m.guest(), GuestState::Up);
    assert!(!m.guest_idle());
    // The new guest's session key is the old one's: requests sealed to it still open.
    assert_eq!(session_key(), key);
    // The worker sweeps as soon as it is idle, and at least every second.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(counts(&d), (2, 2, 1, 1, 1));
    assert_eq!(m.guest(), GuestState::Up);
    d.stop();
}

#[test]
fn an_idle_model_goes_and_the_others_stay_in_a_running_guest() {
    if !guests_can_run(&[TINY, OTHER]) {
        return;
    }
    let dir = temp_dir("keep-alive-partial");
    let d = Daemon::start(Config {
        keep_alive: KeepAlive::Forever,
        ..config(&dir, TINY, CONTEXT, 8)
    })
    .expect("daemon starts");
    let addr = d.tcp_addr.unwrap();
    let m = &d.shared().metrics;
    let tiny = chat_answer(addr, TINY, "");
    let other = chat_answer(addr, OTHER, r#","keep_alive":"200ms""#);
    // Its memory goes back to the host (a protected VM's cannot shrink while it runs).
    let max = d.shared().config.memory_max;
    let shrinks = m.isolation() != Some(IsolationLevel::ProtectedVm);
    wait_for("the idle unload and the lower budget", || {
        m.model_idle_unloads.load(Ordering::Relaxed) == 1
            && (!shrinks || m.memory_budget_bytes.load(Ordering::Relaxed) < max)
    });
    // TINY (kept for ever) stays, and so does the guest.
    assert_eq!(counts(&d), (1, 2, 1, 0, 1));
    assert_eq!(m.guest(), GuestState::Up);
    // Both still answer as before: TINY as it is, OTHER loaded again (its budget back).
    assert_eq!(chat_answer(addr, TINY, ""), tiny);
    assert_eq!(chat_answer(addr, OTHER, r#","keep_alive":-1"#), other);
    assert_eq!(counts(&d), (1, 3, 1, 0, 2));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(counts(&d), (1, 3, 1, 0, 2));
    d.stop();
}
