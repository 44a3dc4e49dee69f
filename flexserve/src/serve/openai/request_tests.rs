use super::*;

fn chat(body: &str) -> Result<GenRequest, ApiError> {
    parse_chat(body.as_bytes(), 4096)
}

#[test]
fn a_chat_request_parses() {
    let r = chat(
        r#"{"model":"m","messages":[{"role":"system","content":"Be brief."},
            {"role":"user","content":[{"type":"text","text":"Hi"}]}],
            "temperature":0,"max_tokens":16,"stream":true,"stop":"\n","seed":3}"#,
    )
    .unwrap();
    assert_eq!(r.model.as_deref(), Some("m"));
    assert_eq!(
        r.input,
        Input::Chat(vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi")
        ])
    );
    assert_eq!(
        (r.max_tokens, r.stream, r.sampling.seed),
        (Some(16), true, 3)
    );
    assert_eq!(r.sampling.temperature, 0.0);
    assert_eq!(r.stop, ["\n"]);
    assert_eq!(r.keep_alive, None);
    let keep = |k: &str| {
        let body = format!(r#"{{"messages":[{{"role":"user","content":"x"}}],"keep_alive":{k}}}"#);
        chat(&body).unwrap().keep_alive
    };
    let secs = |s| Some(KeepAlive::For(std::time::Duration::from_secs(s)));
    assert_eq!(keep(r#""10m""#), secs(600));
    assert_eq!(keep("0"), secs(0));
    assert_eq!(keep("-1"), Some(KeepAlive::Forever));
    assert_eq!(keep("null"), None);
}

#[test]
fn bad_fields_are_named() {
    let param = |body: &str| match chat(body) {
        Err(ApiError::Invalid { param, .. }) => param,
        other => panic!("{body}: {other:?}"),
    };
    let m = r#""messages":[{"role":"user","content":"x"}]"#;
    assert_eq!(
        param(&format!(r#"{{{m},"temperature":"hot"}}"#)),
        Some("temperature")
    );
    assert_eq!(
        param(&format!(r#"{{{m},"temperature":7}}"#)),
        Some("temperature")
    );
    assert_eq!(
        param(&format!(r#"{{{m},"max_tokens":0}}"#)),
        Some("max_tokens")
    );
    assert_eq!(
        param(&format!(r#"{{{m},"max_tokens":1e12}}"#)),
        Some("max_tokens")
    );
    assert_eq!(
        param(&format!(r#"{{{m},"max_tokens":-5}}"#)),
        Some("max_tokens")
    );
    assert_eq!(param(&format!(r#"{{{m},"top_p":2}}"#)), Some("top_p"));
    assert_eq!(param(&format!(r#"{{{m},"stream":"yes"}}"#)), Some("stream"));
    for bad in [r#""soon""#, "true", "[1]"] {
        assert_eq!(
            param(&format!(r#"{{{m},"keep_alive":{bad}}}"#)),
            Some("keep_alive")
        );
    }
    assert_eq!(param(r#"{"messages":[]}"#), Some("messages"));
    assert_eq!(param(r#"{"messages":"hi"}"#), Some("messages"));
    assert_eq!(
        param(r#"{"messages":[{"role":"robot","content":"x"}]}"#),
        Some("messages")
    );
    assert_eq!(param(r#"{"model":"m"}"#), Some("messages"));
    assert!(matches!(chat("{nope"), Err(ApiError::BadJson(_))));
    assert!(matches!(chat("[1]"), Err(ApiError::BadJson(_))));
}

#[test]
fn n_choices_parse_up_to_the_bound() {
    let m = r#""messages":[{"role":"user","content":"x"}]"#;
    let n = |extra: &str| chat(&format!(r#"{{{m}{extra}}}"#)).map(|r| r.n);
    assert_eq!(n("").unwrap(), 1);
    assert_eq!(n(r#","n":null"#).unwrap(), 1);
    assert_eq!(n(r#","n":3"#).unwrap(), 3);
    assert_eq!(n(r#","n":8"#).unwrap(), 8);
    for bad in ["0", "9", "-1", "2.5", r#""3""#] {
        match n(&format!(r#","n":{bad}"#)) {
            Err(ApiError::Invalid { param, .. }) => assert_eq!(param, Some("n"), "{bad}"),
            other => panic!("n = {bad}: {other:?}"),
        }
    }
    let c = |b: &str| parse_completion(b.as_bytes(), 100);
    assert_eq!(c(r#"{"prompt":"Once","n":4}"#).unwrap().n, 4);
    // `best_of` stays refused by name, with or without `n`.
    for body in [
        r#"{"prompt":"Once","n":2,"best_of":2}"#,
        r#"{"prompt":"Once","best_of":3}"#,
    ] {
        match c(body) {
            Err(ApiError::Invalid { param, .. }) => assert_eq!(param, Some("best_of")),
            other => panic!("{body}: {other:?}"),
        }
    }
}

#[test]
fn a_sealed_request_refuses_more_than_one_choice() {
    let body = r#"{"model":"m","max_tokens":4,"seed":1,"flexserve_sealed":"AAAA","n":2}"#;
    match chat(body) {
        Err(ApiError::Invalid { param, message }) => {
            assert_eq!(param, Some("n"));
            assert!(message.contains("seed"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let one = r#"{"model":"m","max_tokens":4,"seed":1,"flexserve_sealed":"AAAA","n":1}"#;
    assert_eq!(chat(one).unwrap().n, 1);
}

#[test]
fn completion_prompts_parse() {
    let p = |b: &str| parse_completion(b.as_bytes(), 100).map(|r| r.input);
    let keep = |b: &str| parse_completion(b.as_bytes(), 100).map(|r| r.keep_alive);
    assert_eq!(
        keep(r#"{"prompt":"Once","keep_alive":"30s"}"#).unwrap(),
        Some(KeepAlive::For(std::time::Duration::from_secs(30)))
    );
    assert!(matches!(
        keep(r#"{"prompt":"Once","keep_alive":"later"}"#),
        Err(ApiError::Invalid {
            param: Some("keep_alive"),
            ..
        })
    ));
    assert_eq!(
        p(r#"{"prompt":"Once"}"#).unwrap(),
        Input::Text("Once".into())
    );
    assert_eq!(
        p(r#"{"prompt":["Once"]}"#).unwrap(),
        Input::Text("Once".into())
    );
    assert_eq!(
        p(r#"{"prompt":[1,2,3]}"#).unwrap(),
        Input::Tokens(vec![1, 2, 3])
    );
    assert!(p(r#"{"prompt":""}"#).is_err());
    assert!(p(r#"{"prompt":[-1]}"#).is_err());
    assert!(p(r#"{"prompt":5}"#).is_err());
    assert!(p(r#"{}"#).is_err());
}

#[test]
fn no_body_makes_the_parsers_panic() {
    // Type confusion on every field, then random mutations of a valid body.
    let keys = [
        "model",
        "messages",
        "prompt",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "repeat_penalty",
        "seed",
        "stream",
        "stream_options",
        "stop",
        "user",
        "logprobs",
        "echo",
        "suffix",
        "ignore_eos",
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "top_logprobs",
        "best_of",
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "parallel_tool_calls",
        "response_format",
        "audio",
        "modalities",
        "prediction",
        "web_search_options",
        "reasoning_effort",
        "metadata",
        "store",
        "service_tier",
        "keep_alive",
        "flexserve_sealed",
        "no_such_field",
    ];
    let values = [
        "null",
        "true",
        "-1",
        "0",
        "1e400",
        "-1e400",
        "18446744073709551616",
        "3.5",
        "\"\"",
        "\"x\"",
        "[]",
        "[1]",
        "[\"a\",\"b\",\"c\",\"d\",\"e\"]",
        "{}",
        "[{}]",
        "[{\"role\":\"user\"}]",
        "[{\"role\":\"user\",\"content\":[{\"type\":\"image\"}]}]",
    ];
    for k in keys {
        for v in values {
            let body = format!(
                r#"{{"messages":[{{"role":"user","content":"x"}}],"prompt":"x","{k}":{v}}}"#
            );
            let _ = parse_chat(body.as_bytes(), 4096);
            let _ = parse_completion(body.as_bytes(), 4096);
        }
    }
    let valid = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"prompt":[1,2],"temperature":0.5,"stop":["a"],"stream":true}"#;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..20_000 {
        let mut b = valid.to_vec();
        for _ in 0..(x % 4 + 1) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = (x as usize) % b.len();
            b[at] = (x >> 32) as u8;
        }
        let _ = parse_chat(&b, 4096);
        let _ = parse_completion(&b, 4096);
    }
}
