//! What a compromised daemon host can read of a sealed request: nothing. A client process
//! sends a chat with a random canary sentence through `flexserve proxy` (its own process)
//! to the daemon (this process, which is also the VMM); afterwards no readable mapping of
//! this process outside the guest's own memory holds the canary, nor does `/metrics`. The
//! daemon's log is written through the test harness's capture into this process's memory,
//! so the scan covers it too. The positive control sends the same kind of canary as a plain
//! request and finds it. The guest's memory is left out: what it holds is guarded by the
//! isolation level (`guest_sealed_scan.rs`, `private_memory.rs`), not by the daemon.
//!
//! This process never holds a canary in the clear: the client generates it and prints it
//! masked (each byte XOR 0x5a), and the scan searches the masked form of what it reads.

use flexserve::serve::Daemon;
use flexserve_e2e::memscan;
use flexserve_e2e::serve_rig::*;
use memchr::memmem::{self, Finder};
use std::ops::Range;
use std::path::Path;
use std::process::Command;

const MASK: u8 = 0x5a;

/// The client: a fresh canary sentence sent with the `openai` SDK, printed masked.
const CLIENT: &str = r#"
import secrets, sys, openai
canary = "Remember the violet heron " + secrets.token_hex(16) + " of Lake Quill."
client = openai.OpenAI(base_url=sys.argv[1], api_key="unused")
r = client.chat.completions.create(model=sys.argv[2], max_tokens=4, temperature=0,
    messages=[{"role": "user", "content": canary}])
assert r.choices[0].message.content is not None
print(bytes(b ^ 0x5a for b in canary.encode()).hex())
"#;

fn send_canary(python: &Path, base_url: &str) -> Vec<u8> {
    let out = Command::new(python)
        .args(["-c", CLIENT, base_url, DEFAULT])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hex = String::from_utf8(out.stdout).unwrap();
    let hex = hex.trim();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// Whether any readable mapping of this process outside `guest` holds the canary whose
/// masked bytes are `masked`.
fn found_outside(masked: &[u8], guest: &[Range<u64>]) -> bool {
    let finder = Finder::new(masked);
    let mut scratch = vec![0u8; 1 << 20];
    let mut found = false;
    memscan::scan_process(masked.len(), &mut |addr, bytes| {
        let end = addr + bytes.len() as u64;
        if found || guest.iter().any(|g| addr < g.end && g.start < end) {
            return;
        }
        let buf = &mut scratch[..bytes.len()];
        for (o, b) in buf.iter_mut().zip(bytes) {
            *o = b ^ MASK;
        }
        found = finder.find(buf).is_some();
    });
    scratch.fill(0);
    found
}

#[test]
fn a_sealed_canary_never_reaches_the_daemon_and_a_plain_one_does() {
    let (Some(python), Some(bin)) = (python(), flexserve_bin()) else {
        return;
    };
    if !guests_can_run(&[DEFAULT]) {
        return;
    }
    let d = Daemon::start(config(&temp_dir("sealed-canary"), DEFAULT, 512, 16)).unwrap();
    let addr = d.tcp_addr.unwrap();
    let upstream = format!("unix:{}", d.socket.as_ref().unwrap().display());
    let proxy = start_proxy(&bin, &upstream);
    let port = proxy.port;

    let sealed = send_canary(&python, &format!("http://127.0.0.1:{port}/v1"));
    let guest = d.guest_ranges_for_tests();
    assert!(!guest.is_empty(), "the guest's memory is known");
    let metrics = http(addr, "GET", "/metrics", "").body;
    let metrics_masked: Vec<u8> = metrics.bytes().map(|b| b ^ MASK).collect();
    assert!(
        memmem::find(&metrics_masked, &sealed).is_none(),
        "/metrics holds the sealed canary"
    );
    assert!(
        !found_outside(&sealed, &guest),
        "the daemon's process holds a sealed request's text outside the guest"
    );

    // Positive control: a plain request's canary is in the daemon's memory.
    let plain = send_canary(&python, &format!("http://{addr}/v1"));
    assert!(
        found_outside(&plain, &d.guest_ranges_for_tests()),
        "the scan must find a plain request's canary, or it proves nothing"
    );
    drop(proxy);
}
