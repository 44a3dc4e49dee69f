//! `flexserve serve` with several models in one guest, under KVM: models that fit the
//! budget together stay resident (switching between them boots and loads nothing); a model
//! that does not fit pushes out the least recently used one, never one that is answering;
//! answers are the same whichever way the model got into the guest, prefetched as the next
//! model of a workflow included (a prefetch only takes free budget).

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
    chat_answer(addr, model, "")
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

/// A third tiny model, for a request that names its next model over its workflow's.
const THIRD: &str = "tiny-llama3.Q8_0";

fn next(model: &str) -> String {
    format!(r#","flexserve":{{"next_model":"{model}"}}"#)
}

/// Waits (a few seconds at most) until `what` of the daemon's metrics holds.
fn wait_for(d: &Daemon, what: &str, ok: impl Fn(&flexserve::serve::metrics::Metrics) -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !ok(&d.shared().metrics) {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn prefetches(d: &Daemon) -> u64 {
    d.shared().metrics.model_prefetches.load(Ordering::Relaxed)
}

#[test]
fn the_next_model_of_a_workflow_is_prefetched_and_answers_as_loaded_on_demand() {
    if !guests_can_run(&[TINY, OTHER, THIRD]) {
        return;
    }
    let base = config(&temp_dir("models-prefetch"), TINY, CONTEXT, 8);
    let workflows = flexserve::serve::workflows::Workflows::new(vec![vec![
        TINY.to_string(),
        OTHER.to_string(),
    ]])
    .expect("a workflow");
    let d = Daemon::start(Config { workflows, ..base }).expect("daemon starts");
    let addr = d.tcp_addr.unwrap();
    // OTHER loaded on demand (the workflow names nothing after it), then let go at once.
    let on_demand = chat_answer(addr, OTHER, r#","keep_alive":0"#);
    wait_for(&d, "OTHER unloaded", |m| {
        m.model_idle_unloads.load(Ordering::Relaxed) == 1
    });
    assert_eq!(counts(&d), (1, 2, 0, 1));
    assert_eq!(prefetches(&d), 0);
    // A request to TINY: the workflow says OTHER comes next, so it is loaded ahead...
    answer(addr, TINY);
    wait_for(&d, "OTHER prefetched", |m| {
        m.model_prefetches.load(Ordering::Relaxed) == 1
    });
    assert_eq!(counts(&d), (1, 3, 0, 2));
    // ...and its request loads nothing and answers as the on-demand load did.
    assert_eq!(answer(addr, OTHER), on_demand);
    assert_eq!(counts(&d), (1, 3, 0, 2));
    // A model the request names wins over the workflow's.
    chat_answer(addr, TINY, &next(THIRD));
    wait_for(&d, "THIRD prefetched", |m| {
        m.model_prefetches.load(Ordering::Relaxed) == 2
    });
    assert_eq!(counts(&d), (1, 4, 0, 3));
    answer(addr, THIRD);
    assert_eq!(counts(&d).1, 4, "the prefetched model was loaded again");
    // A name the models directory lacks is the client's error, before anything runs.
    let r = http(
        addr,
        "POST",
        CHAT,
        &chat_body(TINY, "Hi", 4, &next("no-such-model")),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        r.json()["error"]["param"],
        "flexserve.next_model",
        "{}",
        r.body
    );
    assert!(r.body.contains("no-such-model"), "{}", r.body);
    let r = http(
        addr,
        "POST",
        CHAT,
        &chat_body(TINY, "Hi", 4, r#","flexserve":{"next":"x"}"#),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let metrics = http(addr, "GET", "/metrics", "").body;
    assert!(
        metrics.contains("flexserve_guest_model_prefetches_total 2"),
        "{metrics}"
    );
    assert_eq!(d.shared().metrics.requests(Outcome::Failed), 0);
    d.stop();
}

#[test]
fn a_prefetch_never_pushes_out_a_model() {
    if !guests_can_run(&[TINY, OTHER]) {
        return;
    }
    // Room for one model: TINY answering (and afterwards, idle) is never unloaded for OTHER.
    let d = daemon_for_one_model("models-prefetch-no-room");
    let addr = d.tcp_addr.unwrap();
    let mut long = TcpStream::connect(addr).unwrap();
    let extra = format!(r#","stream":true,"ignore_eos":true{}"#, next(OTHER));
    request(
        &mut long,
        "POST",
        CHAT,
        &chat_body(TINY, "Go on.", 200, &extra),
    );
    let mut seen = read_until_first_token(&mut long);
    assert_eq!((counts(&d), prefetches(&d)), ((1, 1, 0, 1), 0));
    seen.push_str(&read_rest(&mut long));
    assert!(
        seen.contains("[DONE]") && !seen.contains("\"error\""),
        "{seen}"
    );
    // The worker decides on the prefetch as soon as the answer is done; another request
    // to TINY after it finds TINY still resident, and nothing was loaded or unloaded.
    std::thread::sleep(std::time::Duration::from_millis(300));
    answer(addr, TINY);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!((counts(&d), prefetches(&d)), ((1, 1, 0, 1), 0));
    // Positive control: OTHER itself still loads on demand, in place of TINY.
    answer(addr, OTHER);
    assert_eq!(counts(&d), (1, 2, 1, 1));
    d.stop();
}
