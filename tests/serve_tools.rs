//! Tool calling and structured output through `flexserve serve` with a real guest under
//! KVM, driven by the real clients (`make test-venv`, tests/tools_client.py): the `openai`
//! SDK (a forced call parsed into `tool_calls`, whole and streamed, its result answered;
//! `.parse()` with a Pydantic model; `json_object`; a seeded batch at temperature 1 whose
//! every answer validates (three of them the choices of one `n` request), beside an
//! unconstrained answer that does not; the streamed call with `n: 2`) and LangChain's
//! `ChatOpenAI` (`bind_tools`, `with_structured_output`). Then, on the same daemon, a tiny
//! random-weight model carrying a Mistral template: a forced call in Mistral's
//! `[TOOL_CALLS]` format, whole and streamed, and `response_format` beside `tools` (a call
//! where a logit bias favours it, JSON for the schema where none does, each validated).
//! Then the refusals: a schema outside the supported subset, a `tool_choice` naming no
//! declared tool.

use flexserve::serve::Daemon;
use flexserve::serve::config::Config;
use flexserve_e2e::serve_rig::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

const CONTEXT: u32 = 1024;
/// `tiny.Q8_0` with the `mistral-v3` template (made by the test, `models_with_template`).
const MISTRAL: &str = "tiny-mistral";

const WEATHER: &str = r#"{"type":"function","function":{"name":"get_weather","parameters":
    {"type":"object","properties":{"city":{"type":"string","maxLength":12},
    "unit":{"type":"string","enum":["celsius","fahrenheit"]}},
    "required":["city","unit"],"additionalProperties":false}}}"#;
const ANSWER: &str = r#"{"type":"json_schema","json_schema":{"name":"a","strict":true,
    "schema":{"type":"object","properties":{"answer":{"type":"string","maxLength":12}},
    "required":["answer"],"additionalProperties":false}}}"#;

/// A chat body for the Mistral model with the weather tool and `extra` fields.
fn mistral_body(extra: &str) -> String {
    format!(
        r#"{{"model":"{MISTRAL}","messages":[{{"role":"user","content":"Weather in Paris?"}}],
           "tools":[{WEATHER}],"max_tokens":160{extra}}}"#
    )
}

/// The arguments of a `get_weather` call, checked against its schema.
fn weather_args(call: &Value) -> Value {
    assert_eq!(call["function"]["name"], "get_weather", "{call}");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("{e}: {call}"));
    let o = args.as_object().unwrap();
    assert_eq!(o.len(), 2, "{args}");
    assert!(o["city"].as_str().is_some_and(|c| c.chars().count() <= 12));
    assert!(matches!(o["unit"].as_str(), Some("celsius" | "fahrenheit")));
    args
}

/// Mistral's format, whole and streamed, then `response_format` beside `tools`: how many
/// of a seeded batch called and how many answered in the schema (each checked).
fn mistral_and_alternation(addr: SocketAddr) -> (usize, usize) {
    let named =
        r#","temperature":0,"tool_choice":{"type":"function","function":{"name":"get_weather"}}"#;
    let r = http(addr, "POST", "/v1/chat/completions", &mistral_body(named));
    assert_eq!(r.status, 200, "{}", r.body);
    let choice = &r.json()["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{choice}");
    let whole = weather_args(&choice["message"]["tool_calls"][0]);
    let body = mistral_body(&format!(r#"{named},"stream":true"#));
    let sse = http(addr, "POST", "/v1/chat/completions", &body).body;
    let streamed = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0).cloned())
        .unwrap_or_else(|| panic!("no streamed call: {sse}"));
    assert_eq!(weather_args(&streamed), whole);
    // A random-weight model's first token is all but fixed whatever the seed; a bias on
    // `[` (where the calls start) makes the call, none leaves the JSON (`{`).
    let bracket = ids_with_bytes(TINY, b"[")[0];
    let (mut calls, mut answers) = (0, 0);
    for bias in [
        format!(r#","logit_bias":{{"{bracket}":100}}"#),
        String::new(),
    ] {
        let extra = format!(r#","temperature":1,"seed":1,"response_format":{ANSWER}{bias}"#);
        let r = http(addr, "POST", "/v1/chat/completions", &mistral_body(&extra));
        assert_eq!(r.status, 200, "{}", r.body);
        let msg = &r.json()["choices"][0]["message"];
        if let Some(call) = msg["tool_calls"].get(0) {
            weather_args(call);
            calls += 1;
            continue;
        }
        let text = msg["content"].as_str().unwrap();
        let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let o = v.as_object().unwrap();
        assert!(o.len() == 1 && o["answer"].is_string(), "{v}");
        answers += 1;
    }
    (calls, answers)
}

fn tools_client(python: &Path, scenario: &str, addr: SocketAddr, model: &str) -> Value {
    let out = Command::new(python)
        .arg(repo().join("tests/tools_client.py"))
        .args([scenario, "--base-url", &format!("http://{addr}/v1")])
        .args(["--model", model])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tools_client.py {scenario} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap()
}

fn has_module(python: &Path, module: &str) -> bool {
    Command::new(python)
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success())
}

/// The error a chat body gets: status and `param`.
fn refused(addr: SocketAddr, body: &str) -> (u16, Value) {
    let r = http(addr, "POST", "/v1/chat/completions", body);
    (r.status, r.json()["error"]["param"].clone())
}

#[test]
fn real_clients_get_tool_calls_and_structured_output() {
    if !guests_can_run(&[DEFAULT, TINY]) {
        return;
    }
    let Some(python) = python() else {
        return;
    };
    if !has_module(&python, "langchain_openai") {
        skip("langchain-openai is missing from build/test-venv (run `make test-venv`)");
        return;
    }
    let dir = temp_dir("tools");
    let models = models_with_template(&dir, TINY, MISTRAL, "mistral-v3");
    let d = Daemon::start(Config {
        models_dir: models,
        ..config(&dir, DEFAULT, CONTEXT, 16)
    })
    .expect("daemon");
    let addr = d.tcp_addr.unwrap();
    let (calls, answers) = mistral_and_alternation(addr);
    let openai = tools_client(&python, "openai", addr, DEFAULT);
    let langchain = tools_client(&python, "langchain", addr, DEFAULT);
    let ollama =
        has_module(&python, "ollama").then(|| tools_client(&python, "ollama", addr, MISTRAL));
    let schema_refused = refused(
        addr,
        &format!(
            r#"{{"model":"{DEFAULT}","messages":[{{"role":"user","content":"x"}}],
               "response_format":{{"type":"json_schema","json_schema":{{"name":"s",
               "schema":{{"type":"string","pattern":"a+"}}}}}}}}"#
        ),
    );
    let unknown_choice = refused(
        addr,
        &format!(
            r#"{{"model":"{DEFAULT}","messages":[{{"role":"user","content":"x"}}],
               "tools":[{{"type":"function","function":{{"name":"f"}}}}],
               "tool_choice":{{"type":"function","function":{{"name":"g"}}}}}}"#
        ),
    );
    d.stop();

    let tools = &openai["tools"];
    // Streamed with `n: 2`: each choice the same greedy call, under ids of its own.
    let args = &tools["stream_args"];
    assert_eq!(
        (&args[0], &args[1]),
        (&tools["args"], &tools["args"]),
        "{tools}"
    );
    assert_ne!(tools["stream_ids"][0], tools["stream_ids"][1], "{tools}");
    assert!(tools["args"]["city"].is_string(), "{tools}");
    let after = tools["after_tool"].as_str().unwrap();
    assert!(!after.is_empty(), "the tool's result was answered: {tools}");
    let structured = &openai["structured"];
    assert_eq!(
        structured["batch"].as_array().unwrap().len(),
        6,
        "{structured}"
    );
    assert_eq!(
        structured["unconstrained_valid"], false,
        "the control: {structured}"
    );
    assert!(langchain["call"]["city"].is_string(), "{langchain}");
    assert!(langchain["pet"]["name"].is_string(), "{langchain}");
    assert_eq!((calls, answers), (1, 1), "one call, one JSON answer");
    match ollama {
        Some(o) => {
            assert_eq!(o["args"], o["stream_args"], "{o}");
            assert!(!o["after_tool"].as_str().unwrap().is_empty(), "{o}");
        }
        None => skip("the `ollama` client is missing from build/test-venv (run `make test-venv`)"),
    }
    assert_eq!(schema_refused, (400, "response_format".into()));
    assert_eq!(unknown_choice, (400, "tool_choice".into()));
}
