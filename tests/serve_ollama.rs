//! `flexserve serve`'s Ollama API with a real guest under KVM, driven by the official
//! `ollama` Python client (`make test-venv`, tests/ollama_client.py): chat, generate and
//! their streams answer what the OpenAI routes answer for the same greedy request; list,
//! ps and show describe the model; unsupported fields, unknown models and a too large
//! `num_ctx` are Ollama errors naming what is wrong (embeddings: `serve_embeddings.rs`).

use flexserve::serve::Daemon;
use flexserve_e2e::serve_rig::*;
use serde_json::Value;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;

const CONTEXT: u32 = 512;

fn ollama_client(python: &Path, args: &[&str]) -> Value {
    let out = Command::new(python)
        .arg(repo().join("tests/ollama_client.py"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ollama_client.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap()
}

/// The OpenAI route's greedy answer.
fn openai(addr: SocketAddr, path: &str, body: &str) -> String {
    let r = http(addr, "POST", path, body);
    assert_eq!(r.status, 200, "{}", r.body);
    let choice = &r.json()["choices"][0];
    choice["message"]["content"]
        .as_str()
        .or(choice["text"].as_str())
        .expect("an answer")
        .to_string()
}

/// A chat body sent as `text/plain`, which the guard refuses (a page could send it).
fn text_plain_chat(addr: SocketAddr) -> Reply {
    let body = r#"{"messages":[{"role":"user","content":"x"}]}"#;
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    read_reply(s)
}

fn v1_models_carry_metadata(list: &Value, one: &Value) {
    let listed = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == DEFAULT)
        .expect("the default model is listed");
    assert_eq!(listed, one);
    let file = repo().join(format!("models/{DEFAULT}.gguf"));
    assert_eq!(one["size"], std::fs::metadata(file).unwrap().len(), "{one}");
    assert_eq!(one["context_length"], CONTEXT, "{one}");
    assert!(
        one["model_context_length"].as_u64().unwrap() >= 2048,
        "{one}"
    );
    assert_eq!(one["quantization"], "Q4_1", "{one}");
    assert_eq!(one["architecture"], "llama", "{one}");
    assert_eq!(
        (one["sealed"].as_bool(), one["format"].as_str()),
        (Some(false), Some("gguf"))
    );
    assert_eq!(one["owned_by"], "flexserve", "{one}");
    let params = one["parameter_count"].as_u64().unwrap();
    assert!((100_000_000..200_000_000).contains(&params), "{one}");
}

#[test]
fn the_ollama_client_gets_what_the_openai_routes_answer() {
    if !guests_can_run(&[DEFAULT]) {
        return;
    }
    let Some(python) = python() else {
        return;
    };
    let has_client = Command::new(&python)
        .args(["-c", "import ollama"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_client {
        skip("the `ollama` client is missing from build/test-venv (run `make test-venv`)");
        return;
    }
    let d =
        Daemon::start(config(&temp_dir("ollama"), DEFAULT, CONTEXT, 16)).expect("daemon starts");
    let addr = d.tcp_addr.unwrap();
    let (prompt, raw_prompt) = ("Why is the sky blue?", "Once upon a time");
    let r = ollama_client(
        &python,
        &[
            "--host",
            &format!("http://{addr}"),
            "--model",
            DEFAULT,
            "--prompt",
            prompt,
            "--tokens",
            "24",
            "--raw-prompt",
            raw_prompt,
            "--raw-tokens",
            "12",
        ],
    );
    let chat = openai(
        addr,
        "/v1/chat/completions",
        &chat_body(DEFAULT, prompt, 24, ""),
    );
    let completion = openai(
        addr,
        "/v1/completions",
        &format!(
            r#"{{"model":"{DEFAULT}","prompt":"{raw_prompt}","temperature":0,"max_tokens":12}}"#
        ),
    );
    let models = http(addr, "GET", "/v1/models", "");
    let one = http(addr, "GET", &format!("/v1/models/{DEFAULT}"), "");
    let refused = text_plain_chat(addr);
    d.stop();
    assert_eq!(refused.status, 415, "{}", refused.body);
    assert!(
        refused.json()["error"].is_string(),
        "Ollama's shape: {}",
        refused.body
    );
    v1_models_carry_metadata(&models.json(), &one.json());
    assert!(!chat.is_empty() && !completion.is_empty());
    for k in ["chat", "chat_stream", "generate", "generate_stream"] {
        assert_eq!(r[k], chat.as_str(), "{k}: {r}");
    }
    assert_eq!(r["generate_raw"], completion.as_str(), "{r}");
    for k in ["chat", "chat_stream"] {
        let reason = r[format!("{k}_done_reason")].as_str().unwrap();
        let counts = &r[format!("{k}_counts")];
        assert!(counts[0].as_u64().unwrap() > 0, "{k}: {r}");
        let n = counts[1].as_u64().unwrap();
        assert!(
            (reason == "length" && n == 24) || (reason == "stop" && n <= 24),
            "{k}: {reason} after {n} tokens"
        );
    }

    assert!(
        r["list"].as_array().unwrap().contains(&DEFAULT.into()),
        "{r}"
    );
    let details = &r["list_details"];
    assert_eq!(details["format"], "gguf", "{r}");
    assert_eq!(details["family"], "llama", "{r}");
    assert_eq!(details["quantization_level"], "Q4_1", "{r}");
    assert!(
        details["parameter_size"].as_str().unwrap().ends_with('M'),
        "{r}"
    );
    let file = repo().join(format!("models/{DEFAULT}.gguf"));
    assert_eq!(r["list_size"], std::fs::metadata(file).unwrap().len());
    assert_eq!(r["show_details"], *details);
    assert_eq!(r["show_latest_tag"], *details);
    assert!(
        r["show_model_info"]["llama.context_length"]
            .as_u64()
            .unwrap()
            >= 2048
    );
    assert_eq!(r["show_model_info"]["flexserve.context_length"], CONTEXT);
    assert_eq!(r["show_model_info"]["flexserve.owner"], "flexserve");

    assert_eq!(r["ps"], serde_json::json!([DEFAULT]), "{r}");
    assert_eq!(r["ps_size_vram"], 0);
    assert_eq!(r["ps_context_length"], CONTEXT);
    // Ahead by the keep-alive of the last request to end (the default 5 minutes, or the
    // 10 the last one asked for if the worker has released it already).
    let expires_in = r["ps_expires_in"].as_f64().unwrap();
    assert!((200.0..=600.0).contains(&expires_in), "{r}");

    let error = |k: &str, status: u64, needle: &str| {
        assert_eq!(r[k][0], status, "{k}: {r}");
        let msg = r[k][1].as_str().unwrap();
        assert!(msg.contains(needle), "{k}: {msg}");
    };
    error("format_error", 400, "pattern");
    assert!(r["format_json"].is_object(), "{r}");
    let pet = r["format_schema"].as_object().expect("an object");
    assert!(pet["name"].is_string() && pet["age"].is_i64(), "{r}");
    assert_eq!(pet.len(), 2, "{r}");
    error("mirostat_error", 400, "`options.mirostat`");
    error("unknown_model_error", 404, "no-such-model");
    error("num_ctx_error", 400, "`options.num_ctx`");
}
