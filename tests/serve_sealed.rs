//! Sealed models end to end, with the `flexserve` binary and the daemon: a `.fsm` sealed to
//! this host's guest (a development key root of the test's own, the images' measurement)
//! answers exactly as its plain GGUF does, in `flexserve run` and in the daemon (chat,
//! completions, a stop sequence, usage), while the host holds no tokenizer for it: the
//! guest renders the chat template, tokenizes, and sends the text. A model sealed to
//! another guest is refused with a message that says what to do.

use flexserve::serve::Daemon;
use flexserve_e2e::serve_rig::*;
use sealed_model::derive_guest_key;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use vmm::guest_images::GuestImages;
use vmm::key_root::{DevelopmentRoot, KeyRoot};

/// A models directory with `sealed.fsm` (the default model sealed to this host's guest)
/// and `plain.gguf` (the same model, plain), and the key root the guest derives from.
struct SealedModels {
    models: PathBuf,
    root: PathBuf,
    /// The owner key that signed `sealed.fsm`.
    owner: String,
}

fn sealed_models(name: &str) -> Option<SealedModels> {
    if !guests_can_run(&[DEFAULT]) {
        return None;
    }
    let dir = temp_dir(name);
    let root = dir.join("key-root");
    let secret = *DevelopmentRoot::open_or_create(&root).unwrap().secret();
    let images = GuestImages::locate(Some(&repo().join("images/out"))).unwrap();
    let guest = derive_guest_key(&secret, &images.measurement()).public();
    let owner = dir.join("owner.key");
    let owner_key = model_tools::sealing::keygen(&owner).unwrap();
    let models = dir.join("models");
    std::fs::create_dir_all(&models).unwrap();
    let plain = repo().join(format!("models/{DEFAULT}.gguf"));
    model_tools::sealing::seal_file(
        &plain,
        &models.join("sealed.fsm"),
        &[guest.to_string()],
        &owner,
        sealed_model::MAX_CHUNK_BYTES,
    )
    .unwrap();
    std::os::unix::fs::symlink(&plain, models.join("plain.gguf")).unwrap();
    Some(SealedModels {
        models,
        root,
        owner: owner_key,
    })
}

/// `flexserve run` on `model` with the key root `root`, greedy, 24 tokens.
fn run(bin: &Path, model: &Path, root: &Path, prompt: &str, raw: bool) -> Output {
    run_with(bin, model, root, prompt, raw, "--ctx=512")
}

/// [`run`] with one more flag.
fn run_with(bin: &Path, model: &Path, root: &Path, prompt: &str, raw: bool, flag: &str) -> Output {
    let mut cmd = Command::new(bin);
    cmd.current_dir(repo())
        .env("FLEXSERVE_KEY_ROOT", root)
        .arg("run")
        .arg(flag)
        .arg("-m")
        .arg(model)
        .args(["--temperature", "0", "-n", "24"]);
    if raw {
        cmd.arg("--raw");
    }
    cmd.arg(prompt).output().unwrap()
}

fn text(out: &Output) -> String {
    assert!(
        out.status.success(),
        "flexserve run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn flexserve_run_answers_from_a_sealed_model_as_from_its_plain_gguf() {
    let (Some(m), Some(bin)) = (sealed_models("run"), flexserve_bin()) else {
        return;
    };
    for (prompt, raw) in [
        ("Why is the sky blue?", false),
        ("Once upon a time, there", true),
    ] {
        let sealed = run(&bin, &m.models.join("sealed.fsm"), &m.root, prompt, raw);
        let pipelined = run_with(
            &bin,
            &m.models.join("sealed.fsm"),
            &m.root,
            prompt,
            raw,
            "--pipeline",
        );
        let plain = run(&bin, &m.models.join("plain.gguf"), &m.root, prompt, raw);
        let (sealed_text, plain_text) = (text(&sealed), text(&plain));
        assert!(plain_text.trim().len() > 10, "{plain_text:?}");
        assert_eq!(sealed_text, plain_text, "raw: {raw}");
        assert_eq!(text(&pipelined), plain_text, "raw: {raw}, --pipeline");
        let log = String::from_utf8_lossy(&pipelined.stderr);
        assert!(log.contains("ran as sealed model 1 arrived"), "{log}");
        let log = String::from_utf8_lossy(&sealed.stderr);
        assert!(log.contains("sealed: yes"), "{log}");
        assert!(log.contains("key root: development"), "{log}");
        assert!(String::from_utf8_lossy(&plain.stderr).contains("sealed: no"));
    }
}

#[test]
fn a_model_sealed_to_another_guest_is_refused_with_what_to_do() {
    let (Some(m), Some(bin)) = (sealed_models("other"), flexserve_bin()) else {
        return;
    };
    // Another host's root: its guest derives another key.
    let other_root = m.root.with_file_name("other-root");
    let out = run(&bin, &m.models.join("sealed.fsm"), &other_root, "Hi", false);
    assert!(!out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("sealed model"), "{log}");
    assert!(log.contains("not sealed to this guest"), "{log}");
    assert!(log.contains("flexserve guest-key"), "{log}");
}

#[test]
fn only_an_accepted_owner_s_sealed_model_runs_when_owners_are_named() {
    let (Some(m), Some(bin)) = (sealed_models("owners"), flexserve_bin()) else {
        return;
    };
    let sealed = m.models.join("sealed.fsm");
    let stranger = "ab".repeat(32);
    let any = run(&bin, &sealed, &m.root, "Hi", false);
    let log = String::from_utf8_lossy(&any.stderr);
    assert!(any.status.success(), "{log}");
    assert!(log.contains("any owner accepted"), "{log}");
    let refused = Command::new(&bin)
        .current_dir(repo())
        .env("FLEXSERVE_KEY_ROOT", &m.root)
        .args(["run", "-n", "4", "--accept-owner", &stranger, "-m"])
        .arg(&sealed)
        .arg("Hi")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let log = String::from_utf8_lossy(&refused.stderr);
    assert!(log.contains("is not one of the accepted owners"), "{log}");
    let accepted = Command::new(&bin)
        .current_dir(repo())
        .env("FLEXSERVE_KEY_ROOT", &m.root)
        .args([
            "run",
            "-n",
            "4",
            "--accept-owner",
            &stranger,
            "--accept-owner",
            &m.owner,
        ])
        .arg("-m")
        .arg(&sealed)
        .arg("Hi")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&accepted.stderr);
    assert!(accepted.status.success(), "{log}");
    assert!(log.contains("one of 2 accepted"), "{log}");
}

fn post(addr: std::net::SocketAddr, path: &str, body: &str) -> Value {
    let r = http(addr, "POST", path, body);
    assert_eq!(r.status, 200, "{path} {body}: {}", r.body);
    r.json()
}

#[test]
fn the_daemon_serves_a_sealed_model_as_its_plain_gguf() {
    let Some(m) = sealed_models("daemon") else {
        return;
    };
    let dir = m.models.parent().unwrap();
    let mut config = config(dir, "sealed", 512, 16);
    config.models_dir = m.models.clone();
    config.key_root = Some(m.root.clone());
    let d = Daemon::start(config).expect("daemon starts");
    let addr = d.tcp_addr.unwrap();
    let health = http(addr, "GET", "/health", "").json();
    assert!(
        health["key_root"]
            .as_str()
            .unwrap()
            .starts_with("development"),
        "{health}"
    );
    let models = http(addr, "GET", "/v1/models", "").json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["plain", "sealed"]);

    let chat = |model: &str| {
        let body = format!(
            r#"{{"model":"{model}","max_tokens":24,"temperature":0,"messages":[
                {{"role":"system","content":"You are brief."}},
                {{"role":"user","content":"Name three colours."}}]}}"#
        );
        post(addr, "/v1/chat/completions", &body)
    };
    let (sealed, plain) = (chat("sealed"), chat("plain"));
    let content = |v: &Value| {
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(content(&plain).len() > 5, "{plain}");
    assert_eq!(content(&sealed), content(&plain));
    assert_eq!(sealed["usage"], plain["usage"]);

    let complete = |model: &str, stop: Option<&str>| {
        let stop = stop.map_or(String::new(), |s| format!(r#","stop":["{s}"]"#));
        let body = format!(
            r#"{{"model":"{model}","max_tokens":24,"temperature":0,"prompt":"Once upon a time"{stop}}}"#
        );
        post(addr, "/v1/completions", &body)
    };
    let whole = complete("plain", None);
    let text = whole["choices"][0]["text"].as_str().unwrap().to_string();
    // A stop sequence from the middle of the answer: the sealed model's text ends before it.
    let words: Vec<&str> = text.split_whitespace().collect();
    assert!(words.len() >= 4, "{text:?}");
    let stop = words[words.len() / 2];
    let cut = complete("sealed", Some(stop));
    assert_eq!(
        cut["choices"][0]["text"].as_str().unwrap(),
        &text[..text.find(stop).unwrap()]
    );
    assert_eq!(cut["choices"][0]["finish_reason"], "stop");
    // The guest counted the prompt; the host learnt the count from the end of the stream.
    assert_eq!(
        cut["usage"]["prompt_tokens"],
        whole["usage"]["prompt_tokens"]
    );
    tools_and_formats_as_the_plain_model(addr);
    d.stop();
}

const WEATHER: &str = r#"{"type":"function","function":{"name":"get_weather",
    "description":"The current weather in a city.","parameters":{"type":"object",
    "properties":{"city":{"type":"string"}},"required":["city"],"additionalProperties":false}}}"#;

/// The guest renders a sealed model's tool chat in its template's tool format and
/// constrains the call (docs/chat-templates.md, *Tools*): the same weights make the same
/// greedy call as the plain model, read back into OpenAI `tool_calls` (streamed here, whole
/// for the plain model); a history with a call and its result, and a response format,
/// answer alike too. Each model pays for its grammar vocabulary once.
fn tools_and_formats_as_the_plain_model(addr: std::net::SocketAddr) {
    let forced = |model: &str, stream: bool| {
        format!(
            r#"{{"model":"{model}","max_tokens":48,"temperature":0,"stream":{stream},
               "messages":[{{"role":"user","content":"What is the weather in Paris?"}}],
               "tools":[{WEATHER}],
               "tool_choice":{{"type":"function","function":{{"name":"get_weather"}}}}}}"#
        )
    };
    let call = |v: &Value| v["choices"][0]["message"]["tool_calls"][0]["function"].clone();
    let plain = post(addr, "/v1/chat/completions", &forced("plain", false));
    assert_eq!(
        plain["choices"][0]["finish_reason"], "tool_calls",
        "{plain}"
    );
    assert_eq!(call(&plain)["name"], "get_weather", "{plain}");
    let args = call(&plain)["arguments"].as_str().unwrap().to_string();
    assert!(serde_json::from_str::<Value>(&args).unwrap()["city"].is_string());

    // Streamed, the sealed model's call arrives as deltas once its guest named the style.
    let r = http(
        addr,
        "POST",
        "/v1/chat/completions",
        &forced("sealed", true),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let chunks: Vec<Value> = r
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data: {"))
        .map(|l| serde_json::from_str(&format!("{{{l}")).unwrap())
        .collect();
    let delta = |c: &Value| c["choices"][0]["delta"]["tool_calls"][0]["function"].clone();
    let name = chunks
        .iter()
        .find_map(|c| delta(c)["name"].as_str().map(String::from));
    assert_eq!(name.as_deref(), Some("get_weather"), "{}", r.body);
    let streamed: String = chunks
        .iter()
        .filter_map(|c| delta(c)["arguments"].as_str().map(String::from))
        .collect();
    assert_eq!(streamed, args);
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("tool_calls"));

    // The call and its result in the history: rendered alike by guest and host.
    let after = |model: &str| {
        let args = serde_json::to_string(&args).unwrap();
        let body = format!(
            r#"{{"model":"{model}","max_tokens":8,"temperature":0,"tools":[{WEATHER}],
               "messages":[{{"role":"user","content":"What is the weather in Paris?"}},
               {{"role":"assistant","content":null,"tool_calls":[{{"id":"c1","type":"function",
                 "function":{{"name":"get_weather","arguments":{args}}}}}]}},
               {{"role":"tool","tool_call_id":"c1","content":"Sunny, 21 C"}}]}}"#
        );
        post(addr, "/v1/chat/completions", &body)
    };
    let (sealed, plain) = (after("sealed"), after("plain"));
    assert_eq!(
        sealed["choices"][0]["message"],
        plain["choices"][0]["message"]
    );
    assert_eq!(sealed["usage"], plain["usage"]);

    let structured = |model: &str| {
        let body = format!(
            r#"{{"model":"{model}","max_tokens":24,"temperature":0,
               "messages":[{{"role":"user","content":"Name a colour."}}],
               "response_format":{{"type":"json_schema","json_schema":{{"name":"c",
               "schema":{{"type":"object","properties":{{"colour":{{"type":"string",
               "maxLength":12}}}},"required":["colour"]}}}}}}}}"#
        );
        post(addr, "/v1/chat/completions", &body)["choices"][0]["message"]["content"].clone()
    };
    let sealed = structured("sealed");
    assert_eq!(sealed, structured("plain"));
    let object: Value = serde_json::from_str(sealed.as_str().unwrap()).unwrap();
    assert!(object["colour"].is_string(), "{object}");
}
