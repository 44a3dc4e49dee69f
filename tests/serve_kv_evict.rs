//! KV eviction to the host, sealed, through `flexserve serve` with a real guest under KVM
//! and a small budget: after a request, the guest's kept KV caches beyond 75 % of its
//! memory go to sealed files in the daemon's store directory. A file holds neither the
//! prompt's token ids nor the cache's KV bytes; the next request with that prompt restores
//! it and answers what a daemon that never evicted answers, while another kept cache stays
//! (and is evicted sealed, never dropped); a file with one byte flipped,
//! or an earlier eviction's file put back in place of the current one, is refused, the
//! request recomputes with the same answer, and `/metrics` counts it all.

use flexserve::serve::Daemon;
use flexserve::serve::config::{Config, KvRestoreMode};
use flexserve_e2e::serve_rig::*;
use inference_guest::gguf::Gguf;
use inference_guest::model::{Logits, Model};
use inference_guest::parallel::SingleThread;
use inference_guest::quant::Kernels;
use inference_guest::tokenizer::Tokenizer;
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

const CTX: u32 = 2048;
/// Room for the model, a request's KV cache and one kept cache (about 100 MiB each at this
/// context): a second kept cache takes the guest over 75 % (the daemon's pressure mark).
const MEMORY_MAX: u64 = 400 << 20;
const A: &str = "The quick brown fox jumps over the lazy dog, and then it runs far away \
                 into the hills where nobody ever finds it again, because";
const B: &str = "Once upon a time a small robot lived in a lighthouse by the sea, and every \
                 night it";

/// Answers `prompt` greedily: (text, prompt tokens, cached prompt tokens).
fn ask(addr: SocketAddr, prompt: &str) -> (String, u64, u64) {
    let body = json!({"model": DEFAULT, "prompt": prompt, "temperature": 0, "max_tokens": 16});
    let r = http(addr, "POST", "/v1/completions", &body.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let usage = &v["usage"];
    (
        v["choices"][0]["text"]
            .as_str()
            .expect("an answer")
            .to_string(),
        usage["prompt_tokens"].as_u64().expect("prompt tokens"),
        usage["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0),
    )
}

/// A `/metrics` value by name.
fn metric(addr: SocketAddr, name: &str) -> u64 {
    let text = http(addr, "GET", "/metrics", "").body;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

/// The KV eviction counters in `/metrics`: evictions, restores, recomputes, refusals.
fn counters(addr: SocketAddr) -> [u64; 4] {
    [
        "flexserve_kv_evictions_total",
        "flexserve_kv_restores_total",
        "flexserve_kv_recomputes_total",
        "flexserve_kv_restores_refused_total",
    ]
    .map(|name| metric(addr, name))
}

/// A daemon on the default model that runs one request at a time, with `memory_max` of
/// guest memory, `kv_restore` as its choice and its own key root in `dir`.
fn daemon(dir: &Path, memory_max: u64, kv_restore: KvRestoreMode) -> Daemon {
    Daemon::start(Config {
        memory_max,
        max_active: 1,
        kv_restore,
        key_root: Some(dir.join("key-root")),
        ..config(dir, DEFAULT, CTX, 8)
    })
    .expect("daemon starts")
}

/// The daemon's store of evicted caches (this process's: the daemon runs in it).
fn store_dir() -> PathBuf {
    std::env::var_os("CACHE_DIRECTORY")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("flexserve-kv-{}", std::process::id()))
}

/// The one sealed file the store holds (one evicted cache at a time in this test).
fn the_sealed_file(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    let sealed: Vec<&PathBuf> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "sealed"))
        .collect();
    assert_eq!(sealed.len(), 1, "expected one evicted cache in {files:?}");
    sealed[0].clone()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

/// `prompt`'s tokens as the engine encodes a text prompt, and its layer 0 KV bytes as a
/// kept cache exports them (what a sealed block would hold in the clear); and the layers.
fn plaintext(prompt: &str) -> (Vec<u32>, Vec<u8>, usize) {
    let file = std::fs::read(repo().join(format!("models/{DEFAULT}.gguf"))).unwrap();
    let gguf = Gguf::parse(&file).unwrap();
    let model = Model::from_gguf(&gguf, Kernels::detect()).unwrap();
    let tokens = Tokenizer::from_gguf(&gguf)
        .unwrap()
        .encode(prompt, true, true);
    let mut s = model.new_session(CTX as usize);
    s.eval(&model, &tokens, Logits::Last, &SingleThread)
        .unwrap();
    let mut kv = Vec::new();
    s.export_kv_layer(0, tokens.len(), &mut kv);
    (tokens, kv, model.cfg.n_layer)
}

/// The store's file holds neither `prompt`'s token ids nor its KV bytes, yet is exactly
/// its sealed KV cache in size (the same search finds both in the plaintext).
fn sealed_not_plain(file: &[u8], prompt: &str, prompt_tokens: u64) {
    let (tokens, kv, layers) = plaintext(prompt);
    assert_eq!(tokens.len() as u64, prompt_tokens, "the guest's tokens");
    let ids: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    let kv_run = &kv[kv.len() / 2..kv.len() / 2 + 32];
    let plain = [kv.clone(), ids.clone()].concat();
    assert!(contains(&plain, kv_run) && contains(&plain, &ids));
    assert!(!contains(file, kv_run), "the file holds plaintext KV bytes");
    assert!(
        !contains(file, &ids),
        "the file holds the prompt's token ids"
    );
    // Per block: a u32 length, the ciphertext and its 16-byte tag.
    let mut rest = file;
    let mut blocks = 0;
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        rest = &tail[u32::from_le_bytes(*len) as usize..];
        blocks += 1;
    }
    assert_eq!(file.len(), kv.len() * layers + (4 + 16) * blocks);
}

/// What a daemon that never evicts (nor reuses) answers to `prompts`.
fn never_evicted(prompts: &[&str]) -> Vec<String> {
    let dir = temp_dir("kv-evict-baseline");
    let d = Daemon::start(Config {
        kv_reuse: false,
        max_active: 1,
        key_root: Some(dir.join("key-root")),
        ..config(&dir, DEFAULT, CTX, 8)
    })
    .expect("daemon starts");
    let addr = d.tcp_addr.unwrap();
    let answers = prompts.iter().map(|p| ask(addr, p).0).collect();
    assert_eq!(counters(addr), [0; 4], "a daemon without pressure evicted");
    d.stop();
    answers
}

#[test]
fn evicted_caches_are_restored_sealed_or_refused_and_recomputed() {
    if !guests_can_run(&[DEFAULT]) {
        return;
    }
    let expect = never_evicted(&[A, B]);
    let dir = temp_dir("kv-evict");
    // Forced restore: with its rates measured the guest might recompute a cache this
    // small, and a refusal needs a restore to refuse.
    let d = daemon(&dir, MEMORY_MAX, KvRestoreMode::Restore);
    let addr = d.tcp_addr.unwrap();
    let store = store_dir();
    // Asks `prompt`: its answer must be the never-evicted one, its start cached or not;
    // the counters after it ([evictions, restores, recomputes, refusals]).
    let ask_checked = |prompt: &str, want: &str, cached: bool| {
        let (text, tokens, got) = ask(addr, prompt);
        assert_eq!(text, want, "greedy continuation of {prompt:?}");
        assert_eq!(got > 0, cached, "{got} of {tokens} tokens cached");
        (tokens, counters(addr))
    };

    // One kept cache fits; the second takes the guest over the mark and A's is evicted.
    let (a_tokens, c) = ask_checked(A, &expect[0], false);
    assert_eq!(c, [0; 4], "evicted without pressure");
    let (_, c) = ask_checked(B, &expect[1], false);
    assert_eq!(c, [1, 0, 0, 0], "nothing evicted under pressure");
    let a_file = the_sealed_file(&store);
    sealed_not_plain(&std::fs::read(&a_file).unwrap(), A, a_tokens);

    // (a) A comes back from its file: the never-evicted answer, its tokens cached. It is
    // restored into its request's own session, so B's kept cache stays beside it (no third
    // cache to make room for) and, with A kept again, goes to the host sealed: evicted,
    // not dropped.
    let (_, c) = ask_checked(A, &expect[0], true);
    assert_eq!(c, [2, 1, 0, 0], "B's kept cache was not evicted sealed");
    assert!(!a_file.exists(), "a restored cache's file stays behind");
    the_sealed_file(&store);

    // A stale file: A's file of one eviction, copied; A restored and evicted again; the
    // copy put back in place of the newer file is refused (another eviction's key). Each
    // time B is asked, its cache comes back from its file and A's goes.
    let mut last = c;
    let evicted_again = |last: &mut [u64; 4], prompt: &str, want: &str, cached: bool| {
        let (_, c) = ask_checked(prompt, want, cached);
        assert!(c[0] > last[0], "{prompt:?}: no eviction after it");
        *last = c;
        the_sealed_file(&store)
    };
    let a_old = std::fs::read(evicted_again(&mut last, B, &expect[1], true)).unwrap();
    let (_, c) = ask_checked(A, &expect[0], true);
    assert_eq!(c[1..], [last[1] + 1, 0, 0], "A's file was not restored");
    let a_new = evicted_again(&mut last, B, &expect[1], true);
    assert_eq!(std::fs::read(&a_new).unwrap().len(), a_old.len());
    assert_ne!(
        std::fs::read(&a_new).unwrap(),
        a_old,
        "the same sealing twice"
    );
    std::fs::write(&a_new, &a_old).unwrap();
    let (_, c) = ask_checked(A, &expect[0], false);
    assert_eq!(c[1..], [last[1], 0, 1], "the stale file was not refused");

    // A file with one byte flipped: refused, recomputed, the same answer.
    let a_file = evicted_again(&mut last, B, &expect[1], true);
    let mut bytes = std::fs::read(&a_file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&a_file, &bytes).unwrap();
    let (_, c) = ask_checked(A, &expect[0], false);
    assert_eq!(c[1..], [last[1], 0, 2], "the tampered file was not refused");
    d.stop();
    assert!(!store.exists(), "the daemon's store outlived it");
}

/// The guest's own pressure: one kept cache sits below the daemon's 75 % mark, so the sweep
/// after a request leaves it, but the next request's session does not fit beside it. The
/// guest would drop it to make room (and count the drop); the daemon evicts it sealed
/// before the session opens, and the cache comes back from its file for the prompt that
/// goes on from it, with the never-evicted answer.
#[test]
fn a_session_makes_room_by_sealed_eviction_not_by_dropping() {
    if !guests_can_run(&[DEFAULT]) {
        return;
    }
    let expect = never_evicted(&[A, B]);
    // The guest's memory with A's cache kept, measured with room to spare.
    let probe_dir = temp_dir("kv-evict-room-probe");
    let d = daemon(&probe_dir, MEMORY_MAX, KvRestoreMode::Measured);
    let addr = d.tcp_addr.unwrap();
    ask(addr, A);
    let kept = metric(addr, "flexserve_memory_used_bytes");
    d.stop();
    let file = flexserve::model::HostModel::open(
        &repo().join(format!("models/{DEFAULT}.gguf")),
        flexserve::model::Access::Mapped,
    )
    .expect("the model opens");
    let session = file.session_bytes(CTX as usize);
    // Short of one session's room by 16 MiB, yet A's cache under the 75 % mark.
    let budget = (kept + session - (16 << 20)) & !((2 << 20) - 1);
    assert!(
        kept * 100 <= budget * 75,
        "the setting does not test what it says: {kept} bytes in use of {budget}"
    );

    let dir = temp_dir("kv-evict-room");
    let d = daemon(&dir, budget, KvRestoreMode::Restore);
    let addr = d.tcp_addr.unwrap();
    let dropped = || metric(addr, "flexserve_kv_caches_dropped_total");
    let (text, _, _) = ask(addr, A);
    assert_eq!(text, expect[0]);
    assert_eq!(counters(addr), [0; 4], "evicted under the 75 % mark");
    // B's session needs the room A's kept cache holds.
    let (text, _, _) = ask(addr, B);
    assert_eq!(text, expect[1]);
    assert_eq!(
        counters(addr),
        [1, 0, 0, 0],
        "A's cache was not evicted sealed"
    );
    assert_eq!(
        dropped(),
        0,
        "the guest dropped a cache the daemon could evict"
    );
    // A again: its cache back from the file (B's evicted in turn to make its room).
    let (text, tokens, cached) = ask(addr, A);
    assert_eq!(text, expect[0]);
    assert!(
        cached > 0,
        "none of A's {tokens} tokens came from its sealed file"
    );
    assert_eq!(counters(addr), [2, 1, 0, 0]);
    assert_eq!(dropped(), 0);
    d.stop();
}
