use super::*;
use crate::serve::openai::{GenRequest, parse_chat, parse_completion};

const MSG: &str = r#""messages":[{"role":"user","content":"x"}]"#;

fn chat(extra: &str) -> Result<GenRequest, ApiError> {
    parse_chat(format!("{{{MSG}{extra}}}").as_bytes(), 4096)
}

fn param(r: Result<GenRequest, ApiError>) -> String {
    match r {
        Err(e) => e.body()["error"]["param"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        Ok(r) => panic!("accepted: {r:?}"),
    }
}

#[test]
fn unsupported_fields_are_refused_by_name() {
    for key in NOT_YET {
        assert_eq!(param(chat(&format!(r#","{key}":[{{}}]"#))), *key);
    }
    // Structured output is taken; a schema outside the compiler's subset is refused.
    assert!(chat(r#","response_format":{"type":"json_object"}"#).is_ok());
    assert_eq!(
        param(chat(
            r#","response_format":{"type":"json_schema","json_schema":{"schema":{"not":{}}}}"#
        )),
        "response_format"
    );
    assert!(chat(r#","response_format":{"type":"text"}"#).is_ok());
    // So are tools, with a response format too (the answer is a call or the format's JSON).
    let tool = r#","tools":[{"type":"function","function":{"name":"f"}}]"#;
    assert!(chat(tool).is_ok());
    let both = chat(&format!(
        r#"{tool},"response_format":{{"type":"json_object"}}"#
    ))
    .unwrap();
    assert!(both.tools.is_some() && both.options.response_format.is_some());
    assert_eq!(param(chat(r#","modalities":["audio"]"#)), "modalities");
    assert!(chat(r#","modalities":["text"]"#).is_ok());
    // Unknown fields, as OpenAI: "Unrecognized request argument supplied".
    let e = chat(r#","max_token":5"#).unwrap_err();
    assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
    assert_eq!(e.body()["error"]["param"], "max_token");
    assert!(e.to_string().contains("Unrecognized request argument"));
    // A chat field on completions is unknown there.
    assert_eq!(
        param(parse_completion(br#"{"prompt":"x","top_logprobs":2}"#, 64)),
        "top_logprobs"
    );
    // Harmless fields, and null for anything, pass.
    assert!(
        chat(r#","metadata":{"a":"b"},"store":false,"service_tier":"auto","user":"u","parallel_tool_calls":true,"tools":null"#)
            .is_ok()
    );
}

#[test]
fn penalties_bias_and_logprobs_parse() {
    let r = chat(
        r#","presence_penalty":0.5,"frequency_penalty":-1,"logit_bias":{"20":-100,"3":2.5},
            "logprobs":true,"top_logprobs":4"#,
    )
    .unwrap();
    assert_eq!(
        r.options.penalties,
        Some(Penalties {
            presence: 0.5,
            frequency: -1.0,
            last_n: PENALTY_LAST_N
        })
    );
    assert_eq!(r.options.logit_bias, [(3, 2.5), (20, -100.0)]);
    assert_eq!(r.options.logprobs, Some(4));
    assert!(r.options.validate().is_ok());
    // Zero penalties and `logprobs: false` ask for nothing.
    let r = chat(r#","presence_penalty":0,"logprobs":false"#).unwrap();
    assert!(r.options.is_empty());
    let c = parse_completion(br#"{"prompt":"x","logprobs":3}"#, 64).unwrap();
    assert_eq!(c.options.logprobs, Some(3));
    for (extra, p) in [
        (r#","presence_penalty":2.5"#, "presence_penalty"),
        (r#","frequency_penalty":"x""#, "frequency_penalty"),
        (r#","logit_bias":{"x":1}"#, "logit_bias"),
        (r#","logit_bias":{"1":101}"#, "logit_bias"),
        (r#","logit_bias":{"1":1,"01":2}"#, "logit_bias"),
        (r#","logit_bias":[1]"#, "logit_bias"),
        (r#","logprobs":1"#, "logprobs"),
        (r#","top_logprobs":3"#, "top_logprobs"),
        (r#","logprobs":true,"top_logprobs":21"#, "top_logprobs"),
    ] {
        assert_eq!(param(chat(extra)), p, "{extra}");
    }
    let many: Vec<String> = (0..=MAX_LOGIT_BIAS)
        .map(|i| format!(r#""{i}":1"#))
        .collect();
    assert_eq!(
        param(chat(&format!(r#","logit_bias":{{{}}}"#, many.join(",")))),
        "logit_bias"
    );
}

#[test]
fn stop_strings_are_bounded() {
    let five = chat(r#","stop":["a","b","c","d","e"]"#).unwrap();
    assert_eq!(five.stop.len(), 5);
    let list = |n: usize, len: usize| {
        let s: Vec<String> = (0..n).map(|_| format!("\"{}\"", "x".repeat(len))).collect();
        chat(&format!(r#","stop":[{}]"#, s.join(",")))
    };
    assert_eq!(
        list(MAX_STOP_STRINGS, 3).unwrap().stop.len(),
        MAX_STOP_STRINGS
    );
    assert_eq!(param(list(MAX_STOP_STRINGS + 1, 3)), "stop");
    assert!(list(1, MAX_STOP_BYTES).is_ok());
    assert_eq!(param(list(1, MAX_STOP_BYTES + 1)), "stop");
}

#[test]
fn max_tokens_beyond_the_limit_is_clamped_and_seed_is_optional() {
    let r = chat(r#","max_tokens":1000000"#).unwrap();
    assert_eq!(r.max_tokens, Some(4096));
    assert_eq!(r.seed, None);
    let r = chat(r#","seed":-1"#).unwrap();
    assert_eq!((r.seed, r.sampling.seed), (Some(u64::MAX), u64::MAX));
}
