//! The daemon in front of a guest that stops answering: the request fails at its deadline,
//! the guest is restarted, and the next request is served, with the deadlines the daemon's
//! config sets. x86_64 only: the hang is
//! x86_64 code (`nop`s into `jmp $`), on which an arm64 guest would fault instead.
#![cfg(target_arch = "x86_64")]

use flexserve::serve::Daemon;
use flexserve::serve::config::Config;
use flexserve::serve::deadlines::DeadlineSettings;
use flexserve::serve::metrics::Outcome;
use flexserve_e2e::serve_rig::*;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[test]
fn a_stuck_guest_fails_its_request_and_a_new_guest_serves_the_next() {
    if !guests_can_run(&[TINY]) {
        return;
    }
    // Short deadlines through the daemon's own settings (`guest.*_timeout_seconds`).
    let first_token = Duration::from_secs(2);
    let dir = temp_dir("unresponsive");
    let config = Config {
        deadlines: DeadlineSettings {
            first_token: Some(first_token),
            between_tokens: Some(Duration::from_secs(2)),
            per_token: Some(Duration::from_secs(1)),
            command: Some(Duration::from_secs(2)),
        },
        ..config(&dir, TINY, 512, 16)
    };
    let d = Daemon::start(config).expect("daemon starts");
    let addr = d.tcp_addr.unwrap();
    let path = "/v1/completions";
    let body = format!(
        r#"{{"model":"{TINY}","prompt":"Once upon a time","max_tokens":8,"temperature":0}}"#
    );
    let before = http(addr, "POST", path, &body);
    assert_eq!(before.status, 200, "{}", before.body);

    // Once both vCPUs are parked, their code becomes a slide of `nop`s into `jmp $`, so the
    // next request wakes a guest that spins and never answers.
    d.hang_guest_for_tests().expect("the guest hangs");
    let start = Instant::now();
    let stuck = http(addr, "POST", path, &body);
    let waited = start.elapsed();
    assert!(stuck.status >= 500, "{} {}", stuck.status, stuck.body);
    assert!(stuck.body.contains("stopped answering"), "{}", stuck.body);
    assert!(
        (first_token..first_token + Duration::from_secs(10)).contains(&waited),
        "failed after {waited:?}"
    );

    let after = http(addr, "POST", path, &body);
    assert_eq!(after.status, 200, "{}", after.body);
    assert_eq!(
        after.json()["choices"][0]["text"],
        before.json()["choices"][0]["text"]
    );
    let m = &d.shared().metrics;
    assert_eq!(m.guest_crashes.load(Ordering::Relaxed), 1);
    assert_eq!(m.guest_starts.load(Ordering::Relaxed), 2);
    assert_eq!(m.requests(Outcome::Failed), 1);
    d.stop();
}
