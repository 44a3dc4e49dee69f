//! Embeddings through the whole stack (HTTP → fair queue → worker → `EmbedRequest` → the
//! guest's forward pass → `Embedding`) with a real guest under KVM and the official
//! clients (tests/embed_client.py): the `openai` SDK's `embeddings.create` (base64, its
//! default, and floats agree; unit length; the same input gives the same vector; a
//! semantically close pair is closer than a far one on SmolLM2-135M; token-id inputs;
//! `dimensions`), and the `ollama` client's `embed` and older `embeddings`, which give the
//! vectors the OpenAI route gives; `keep_alive` applies to an embedding's model. The
//! engine's vectors are checked against llama.cpp's in
//! inference-guest/tests/embedding_reference.rs.

use flexserve::serve::Daemon;
use flexserve_e2e::serve_rig::*;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;

fn embed_client(python: &Path, scenario: &str, base: &str) -> Value {
    let out = Command::new(python)
        .arg(repo().join("tests/embed_client.py"))
        .args([scenario, "--base-url", base, "--model", DEFAULT])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "embed_client.py {scenario} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap()
}

fn unit_length(norms: &Value) {
    for n in norms.as_array().unwrap() {
        assert!((n.as_f64().unwrap() - 1.0).abs() < 1e-4, "{norms}");
    }
}

/// SmolLM2-135M's hidden width.
const WIDTH: u64 = 576;

#[test]
fn the_openai_and_ollama_clients_get_unit_embeddings() {
    if !guests_can_run(&[DEFAULT]) {
        return;
    }
    let Some(python) = python() else {
        return;
    };
    let dir = temp_dir("embeddings");
    let d = Daemon::start(config(&dir, DEFAULT, 512, 16)).expect("daemon starts");
    let base = format!("http://{}", d.tcp_addr.unwrap());
    let o = embed_client(&python, "openai", &base);
    let l = embed_client(&python, "ollama", &base);
    let addr = d.tcp_addr.unwrap();
    let too_many = format!(r#"{{"input":[{}]}}"#, vec!["\"a\""; 65].join(","));
    let refused = [
        http(addr, "POST", "/v1/embeddings", &too_many),
        http(
            addr,
            "POST",
            "/v1/embeddings",
            r#"{"input":[[1,2],[999999]]}"#,
        ),
        http(
            addr,
            "POST",
            "/v1/embeddings",
            r#"{"input":"x","encoding_format":"int8"}"#,
        ),
    ];
    // An embedding job sets its model's keep-alive as a generation does: with 0 the idle
    // worker unloads the model once the job is done.
    let r = http(
        addr,
        "POST",
        "/api/embed",
        r#"{"input":"x","keep_alive":0}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let unloaded = (0..50).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(200));
        http(addr, "GET", "/api/ps", "").json()["models"] == json!([])
    });
    d.stop();
    assert!(
        unloaded,
        "keep_alive 0 on an embedding left its model resident"
    );

    assert_eq!(o["object"], "list", "{o}");
    assert_eq!(o["indices"], json!([0, 1, 2]), "{o}");
    assert_eq!(o["model"], DEFAULT, "{o}");
    assert_eq!(o["dims"], json!([WIDTH, WIDTH, WIDTH]), "{o}");
    unit_length(&o["norms"]);
    let usage = o["usage"].as_array().unwrap();
    assert_eq!(usage[0], usage[1]);
    assert!(usage[0].as_u64().unwrap() >= 3, "{o}");
    assert_eq!(o["float_equals_base64"], true, "{o}");
    assert_eq!(o["same_input_same_vector"], true, "{o}");
    // A pair that says the same thing is closer than either is to a far sentence (by a
    // wide margin on this model: about 0.94 against 0.67-0.68 with llama.cpp).
    let near = o["near"].as_f64().unwrap();
    for far in o["far"].as_array().unwrap() {
        assert!(near > far.as_f64().unwrap() + 0.1, "{o}");
    }
    assert!(near < 0.9999, "different inputs gave one vector: {o}");
    assert_eq!(o["token_inputs"], json!([WIDTH, WIDTH]), "{o}");
    assert_eq!(o["token_usage"], 5, "{o}");
    assert_eq!(o["dimensions_ok"], WIDTH, "{o}");
    assert_eq!(o["dimensions_error"][0], 400, "{o}");
    assert!(
        o["dimensions_error"][1]
            .as_str()
            .unwrap()
            .contains("dimensions")
    );
    assert_eq!(o["empty_error"][0], 400, "{o}");

    for (r, param) in refused.iter().zip(["input", "input", "encoding_format"]) {
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.json()["error"]["param"], param, "{}", r.body);
    }

    assert_eq!(l["model"], DEFAULT, "{l}");
    assert_eq!(l["dims"], json!([WIDTH, WIDTH, WIDTH]), "{l}");
    unit_length(&l["norms"]);
    assert_eq!(l["prompt_eval_count"], usage[0], "{l}");
    let durations = l["durations"].as_array().unwrap();
    assert!(durations[0].as_u64().unwrap() >= durations[1].as_u64().unwrap());
    // One input or a batch, either route: the OpenAI route's vector.
    assert_eq!(l["single"], o["vector"], "{l}");
    assert_eq!(l["legacy"], o["vector"], "{l}");
    assert_eq!(l["batch_first"], o["vector"], "{l}");
    assert_eq!(l["options_error"][0], 400, "{l}");
}
