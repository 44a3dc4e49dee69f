use super::*;
use inference_guest::tokenizer::ToolFormat;
use serde_json::json;

fn body(extra: &str) -> Map<String, Value> {
    let tools = r#"[{"type":"function","function":{"name":"get_weather","description":"Weather now","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}]"#;
    serde_json::from_str(&format!(r#"{{"tools":{tools}{extra}}}"#)).unwrap()
}

fn err_param(r: Result<Option<Tools>, ApiError>) -> Option<&'static str> {
    match r {
        Err(ApiError::Invalid { param, .. }) => param,
        other => panic!("{other:?}"),
    }
}

#[test]
fn tools_parse_and_render_as_tojson() {
    let t = parse_tools(&body("")).unwrap().unwrap();
    assert_eq!(t.choice, ToolChoice::Auto);
    assert!(t.parallel);
    let d = &t.defs[0];
    assert_eq!(d.spec.name, "get_weather");
    assert_eq!(
        d.spec.json,
        r#"{"function": {"description": "Weather now", "name": "get_weather", "parameters": {"properties": {"city": {"type": "string"}}, "required": ["city"], "type": "object"}}, "type": "function"}"#
    );
    assert!(
        d.spec
            .json_indented
            .starts_with("{\n    \"function\": {\n        \"description\"")
    );
    assert_eq!(d.parameters["required"], json!(["city"]));
    let named = parse_tools(&body(r#","tool_choice":{"type":"function","function":{"name":"get_weather"}},"parallel_tool_calls":false"#))
        .unwrap()
        .unwrap();
    assert_eq!(named.choice, ToolChoice::Function("get_weather".into()));
    assert!(!named.parallel);
    assert_eq!(
        parse_tools(&serde_json::from_str(r#"{"tools":[]}"#).unwrap()).unwrap(),
        None
    );
}

#[test]
fn bad_tools_are_named() {
    assert_eq!(
        err_param(parse_tools(&body(r#","tool_choice":"sometimes""#))),
        Some("tool_choice")
    );
    assert_eq!(
        err_param(parse_tools(&body(
            r#","tool_choice":{"type":"function","function":{"name":"nope"}}"#
        ))),
        Some("tool_choice")
    );
    assert_eq!(
        err_param(parse_tools(&body(r#","parallel_tool_calls":"yes""#))),
        Some("parallel_tool_calls")
    );
    let bad = |tools: &str| {
        let m: Map<String, Value> =
            serde_json::from_str(&format!(r#"{{"tools":{tools}}}"#)).unwrap();
        err_param(parse_tools(&m))
    };
    assert_eq!(bad("{}"), Some("tools"));
    assert_eq!(bad(r#"[{"type":"retrieval"}]"#), Some("tools"));
    assert_eq!(
        bad(r#"[{"type":"function","function":{"name":"has space"}}]"#),
        Some("tools")
    );
    assert_eq!(
        bad(r#"[{"type":"function","function":{"name":"a","parameters":"x"}}]"#),
        Some("tools")
    );
    assert_eq!(
        bad(
            r#"[{"type":"function","function":{"name":"a"}},{"type":"function","function":{"name":"a"}}]"#
        ),
        Some("tools")
    );
    let old: Map<String, Value> = serde_json::from_str(r#"{"functions":[]}"#).unwrap();
    assert_eq!(err_param(parse_tools(&old)), Some("functions"));
}

#[test]
fn history_calls_take_arguments_as_json_text() {
    let v = json!([{"id":"c1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]);
    let calls = history_calls(2, Some(&v)).unwrap();
    assert_eq!(calls[0].name, "get_weather");
    assert_eq!(calls[0].arguments, r#"{"city": "Paris"}"#);
    assert!(history_calls(2, Some(&json!([{"id":"c1"}]))).is_err());
}

#[test]
fn answers_become_tool_calls() {
    let t = parse_tools(&body("")).unwrap().unwrap();
    let a = answer_calls(
        ToolFormat::Hermes,
        &t,
        "Checking.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
        "call_1",
    )
    .unwrap();
    assert_eq!(a.content.as_deref(), Some("Checking."));
    assert_eq!(a.calls[0]["id"], "call_1_0");
    assert_eq!(a.calls[0]["function"]["name"], "get_weather");
    assert_eq!(a.calls[0]["function"]["arguments"], r#"{"city":"Paris"}"#);
    let l = answer_calls(
        ToolFormat::Llama3Json,
        &t,
        r#"{"name": "get_weather", "parameters": {"city": "Oslo"}}"#,
        "c",
    )
    .unwrap();
    assert_eq!(l.calls[0]["function"]["arguments"], r#"{"city":"Oslo"}"#);
    // Mistral's own call id is the model's; the answer's ids are the server's.
    let m = answer_calls(
        ToolFormat::Mistral,
        &t,
        r#"[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Rome"}, "id": "a1b2c3d4e"}]"#,
        "c",
    )
    .unwrap();
    assert_eq!((m.calls[0]["id"].as_str(), m.content), (Some("c_0"), None));
    assert_eq!(m.calls[0]["function"]["arguments"], r#"{"city":"Rome"}"#);
    // Cut by `max_tokens` inside a second call: the first stands.
    let cut = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"A\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_";
    assert_eq!(
        answer_calls(ToolFormat::Hermes, &t, cut, "c")
            .unwrap()
            .calls
            .len(),
        1
    );
    // Not a declared tool, or not JSON: the text is the answer.
    assert_eq!(
        answer_calls(
            ToolFormat::Hermes,
            &t,
            "<tool_call>{\"name\": \"rm\"}</tool_call>",
            "c"
        ),
        None
    );
    assert_eq!(
        answer_calls(ToolFormat::Hermes, &t, "<tool_call>{nope</tool_call>", "c"),
        None
    );
    assert_eq!(answer_calls(ToolFormat::Hermes, &t, "Sunny.", "c"), None);
}

#[test]
fn a_stream_holds_back_only_what_may_be_a_call() {
    let t = parse_tools(&body("")).unwrap().unwrap();
    let mut s = ToolStream::new(ToolFormat::Hermes);
    assert_eq!(s.push("Let me ").as_deref(), Some("Let me "));
    assert_eq!(s.push("check <tool").as_deref(), Some("check "));
    assert_eq!(
        s.push("_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>"),
        None
    );
    let (rest, calls) = s.finish(&t, "c");
    assert_eq!((rest, calls.len()), (None, 1));
    let mut mistral = ToolStream::new(ToolFormat::Mistral);
    assert_eq!(mistral.push("[TOOL").as_deref(), None);
    assert_eq!(
        mistral.push("_CALLS][{\"name\": \"get_weather\", \"arguments\": {}}]"),
        None
    );
    assert_eq!(mistral.finish(&t, "c").1.len(), 1);
    let mut prose = ToolStream::new(ToolFormat::Hermes);
    assert_eq!(prose.push("a <").as_deref(), Some("a "));
    let (rest, calls) = prose.finish(&t, "c");
    assert_eq!((rest.as_deref(), calls.len()), (Some("<"), 0));
}
