//! The layer-prefix cache end to end, under KVM: two sealed models share a guest that holds
//! one at a time. The first, evicted for the second, leaves its first layers in the guest;
//! its next cold start streams only the layers after them, and answers exactly as its first
//! cold start did. The second model's load, which no prefix of its own precedes, reuses
//! nothing; with `[guest.layer_prefix] enabled = false` nothing is kept or reused at all.
//! The first model is loaded whole at startup; every later cold start runs its request as
//! the model arrives (the pipelined load), through the kept blocks before any chunk, and
//! answers as the whole load did.

use flexserve::serve::Daemon;
use flexserve::serve::layer_prefix::LayerPrefixConfig;
use flexserve::serve::models::ServedModel;
use flexserve_e2e::serve_rig::*;
use sealed_model::derive_guest_key;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use vmm::guest_images::GuestImages;
use vmm::key_root::{DevelopmentRoot, KeyRoot};

const FIRST: &str = "SmolLM2-135M-Instruct.Q8_0";
const SECOND: &str = "SmolLM2-135M-Instruct.Q4_0";
const CONTEXT: u32 = 512;

/// `first.fsm` and `second.fsm` sealed to this host's guest in `dir`, and the key root.
fn sealed_pair(dir: &Path) -> (PathBuf, PathBuf) {
    let root = dir.join("key-root");
    let secret = *DevelopmentRoot::open_or_create(&root).unwrap().secret();
    let images = GuestImages::locate(Some(&repo().join("images/out"))).unwrap();
    let guest = derive_guest_key(&secret, &images.measurement()).public();
    let owner = dir.join("owner.key");
    model_tools::sealing::keygen(&owner).unwrap();
    let models = dir.join("models");
    std::fs::create_dir_all(&models).unwrap();
    for (name, from) in [("first", FIRST), ("second", SECOND)] {
        model_tools::sealing::seal_file(
            &repo().join(format!("models/{from}.gguf")),
            &models.join(format!("{name}.fsm")),
            &[guest.to_string()],
            &owner,
            sealed_model::MAX_CHUNK_BYTES,
        )
        .unwrap();
    }
    (models, root)
}

/// A daemon on the pair whose guest holds either model but not both.
fn daemon(name: &str, layer_prefix: LayerPrefixConfig) -> Option<Daemon> {
    if !guests_can_run(&[FIRST, SECOND]) {
        return None;
    }
    let dir = temp_dir(name);
    let (models, root) = sealed_pair(&dir);
    let base = config(&dir, "first", CONTEXT, 8);
    let bytes = |m: &str| {
        ServedModel::load(m, &models.join(format!("{m}.fsm")), CONTEXT, 1, u64::MAX)
            .expect("the sealed model checks")
            .private_bytes
    };
    let (first, second) = (bytes("first"), bytes("second"));
    let config = flexserve::serve::config::Config {
        models_dir: models.clone(),
        key_root: Some(root),
        memory_max: (first + second / 2).next_multiple_of(2 << 20),
        max_active: 1,
        layer_prefix,
        ..base
    };
    Some(Daemon::start(config).expect("daemon starts"))
}

fn answer(addr: SocketAddr, model: &str) -> String {
    let body = chat_body(model, "Name three colours.", 16, r#","temperature":0"#);
    let r = http(addr, "POST", "/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{model}: {}", r.body);
    r.json()["choices"][0]["message"]["content"]
        .as_str()
        .expect("an answer")
        .to_string()
}

/// The value of series `name` in `/metrics`.
fn metric(addr: SocketAddr, name: &str) -> u64 {
    let text = http(addr, "GET", "/metrics", "").body;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// (prefixes kept, hits, layers reused, bytes not streamed, model evictions).
fn counters(addr: SocketAddr) -> [u64; 5] {
    [
        "flexserve_layer_prefix_kept_total",
        "flexserve_layer_prefix_hits_total",
        "flexserve_layer_prefix_layers_reused_total",
        "flexserve_layer_prefix_bytes_not_streamed_total",
        "flexserve_guest_model_evictions_total",
    ]
    .map(|n| metric(addr, n))
}

/// (pipelined cold starts, those of them after a kept prefix).
fn pipelined(addr: SocketAddr) -> [u64; 2] {
    [
        "flexserve_layer_prefix_pipelined_loads_total",
        "flexserve_layer_prefix_pipelined_hits_total",
    ]
    .map(|n| metric(addr, n))
}

#[test]
fn an_evicted_model_s_kept_layers_start_its_next_cold_load() {
    let Some(d) = daemon("layer-prefix", LayerPrefixConfig::default()) else {
        return;
    };
    let addr = d.tcp_addr.unwrap();
    // Loaded whole at startup: no pipelined load yet.
    let cold = answer(addr, "first");
    assert!(cold.len() > 3, "{cold}");
    assert_eq!(counters(addr), [0, 0, 0, 0, 0]);
    assert_eq!(pipelined(addr), [0, 0]);
    // The second model evicts the first, which keeps a prefix; the second's own load is
    // no hit (no prefix of its body exists).
    let second = answer(addr, "second");
    let [kept, hits, _, _, evictions] = counters(addr);
    assert_eq!((kept, hits, evictions), (1, 0, 1));
    assert_eq!(
        pipelined(addr),
        [1, 0],
        "the second model's cold start is pipelined"
    );
    let blocks = metric(addr, "flexserve_layer_prefix_blocks");
    assert!(blocks > 0, "no block kept");
    assert!(metric(addr, "flexserve_layer_prefix_block_compute_ns") > 0);
    assert!(metric(addr, "flexserve_layer_prefix_block_load_ns") > 0);
    // Back to the first: its request runs through the kept layers while the rest streams,
    // and answers as the whole load at startup did.
    assert_eq!(answer(addr, "first"), cold);
    let [_, hits, reused, not_streamed, evictions] = counters(addr);
    assert_eq!((hits, evictions), (1, 2));
    assert_eq!(
        pipelined(addr),
        [2, 1],
        "the prefix hit's prefill overlapped its load"
    );
    // The header-and-embeddings layer and the kept blocks.
    assert_eq!(reused, blocks + 1);
    assert!(not_streamed > 1 << 20, "{not_streamed} bytes not streamed");
    // And the second model answers as before after its own eviction and reload.
    assert_eq!(answer(addr, "second"), second);
    assert_eq!(pipelined(addr)[0], 3);
    d.stop();
}

#[test]
fn with_the_cache_off_nothing_is_kept_or_reused() {
    let off = LayerPrefixConfig {
        enabled: false,
        ..Default::default()
    };
    let Some(d) = daemon("layer-prefix-off", off) else {
        return;
    };
    let addr = d.tcp_addr.unwrap();
    let cold = answer(addr, "first");
    answer(addr, "second");
    assert_eq!(answer(addr, "first"), cold);
    // Positive control for the counters: the switches happened (two evictions), both cold
    // starts pipelined, neither after a prefix.
    assert_eq!(counters(addr), [0, 0, 0, 0, 2]);
    assert_eq!(pipelined(addr), [2, 0]);
    d.stop();
}
