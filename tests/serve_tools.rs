//! Tool calling and structured output through `flexserve serve` with a real guest under
//! KVM, driven by the real clients (`make test-venv`, tests/tools_client.py): the `openai`
//! SDK (a forced call parsed into `tool_calls`, whole and streamed, its result answered;
//! `.parse()` with a Pydantic model; `json_object`; a seeded batch at temperature 1 whose
//! every answer validates (three of them the choices of one `n` request), beside an
//! unconstrained answer that does not; the streamed call with `n: 2`) and LangChain's
//! `ChatOpenAI` (`bind_tools`, `with_structured_output`). Then the refusals: a schema
//! outside the supported subset, a `tool_choice` naming no declared tool.

use flexserve::serve::Daemon;
use flexserve_e2e::serve_rig::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

const CONTEXT: u32 = 1024;

fn tools_client(python: &Path, scenario: &str, addr: SocketAddr) -> Value {
    let out = Command::new(python)
        .arg(repo().join("tests/tools_client.py"))
        .args([scenario, "--base-url", &format!("http://{addr}/v1")])
        .args(["--model", DEFAULT])
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
    if !guests_can_run(&[DEFAULT]) {
        return;
    }
    let Some(python) = python() else {
        return;
    };
    if !has_module(&python, "langchain_openai") {
        skip("langchain-openai is missing from build/test-venv (run `make test-venv`)");
        return;
    }
    let d = Daemon::start(config(&temp_dir("tools"), DEFAULT, CONTEXT, 16)).expect("daemon");
    let addr = d.tcp_addr.unwrap();
    let openai = tools_client(&python, "openai", addr);
    let langchain = tools_client(&python, "langchain", addr);
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
    assert_eq!(schema_refused, (400, "response_format".into()));
    assert_eq!(unknown_choice, (400, "tool_choice".into()));
}
