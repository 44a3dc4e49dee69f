//! Ollama's `/api/chat` and `/api/generate` bodies, parsed into the same [`GenRequest`] the
//! OpenAI routes make, with a 400 naming each field this server cannot honour.

use super::json::{boolean, given, obj, string, type_name};
use super::options;
use crate::serve::error::ApiError;
use crate::serve::keep_alive;
use crate::serve::openai::structured::checked_schema;
use crate::serve::openai::tools::history_calls;
use crate::serve::openai::{GenRequest, Input};
use inference_guest::tokenizer::ChatMessage;
use serde_json::{Map, Value};
use virtio_llm::wire::options::{GenerateOptions, ResponseFormat};

/// A parsed Ollama generation request.
#[derive(Debug, Clone)]
pub struct OllamaRequest {
    pub request: GenRequest,
    /// `options.num_ctx`, checked against the model once it is known.
    pub num_ctx: Option<u32>,
    /// The model as the client named it, echoed in every answer as Ollama does.
    pub model: String,
}

/// Fields no route here honours yet, each refused with why. This is the seam for the work
/// in progress: when structured output or tool calling lands, its field leaves this table
/// and is mapped in [`parse_chat`] / [`parse_generate`] like `options`.
const UNSUPPORTED: [(&str, &str); 9] = [
    (
        "images",
        "images are not supported: the models served here read text",
    ),
    (
        "template",
        "`template` is not supported: the model's own chat template is used (`raw` sends \
         the prompt without it)",
    ),
    (
        "context",
        "`context` is not supported: send the conversation as `/api/chat` messages",
    ),
    ("suffix", "fill-in-the-middle (`suffix`) is not supported"),
    ("top_logprobs", "`top_logprobs` is not supported yet"),
    ("width", "image generation (`width`) is not supported"),
    ("height", "image generation (`height`) is not supported"),
    ("steps", "image generation (`steps`) is not supported"),
    ("think", "thinking (`think`) is not supported"),
];

fn refuse_unsupported(m: &Map<String, Value>) -> Result<(), ApiError> {
    for (key, why) in UNSUPPORTED {
        // `"think": false` and `"logprobs": false` ask for what happens anyway.
        if let Some(v) = given(m, key)
            && *v != Value::Bool(false)
        {
            return Err(ApiError::invalid(key, why));
        }
    }
    if boolean(m, "logprobs")? == Some(true) {
        return Err(ApiError::invalid(
            "logprobs",
            "`logprobs` is not supported yet",
        ));
    }
    Ok(())
}

/// Parses an `/api/chat` body.
pub fn parse_chat(body: &[u8], max_tokens_limit: u32) -> Result<OllamaRequest, ApiError> {
    let m = obj(body)?;
    refuse_unsupported(&m)?;
    let messages = match m.get("messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        None | Some(Value::Null) | Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                "messages",
                "`messages` must not be empty (loading or unloading a model with an empty \
                 request is not supported)",
            ));
        }
        Some(v) => {
            return Err(ApiError::invalid(
                "messages",
                format!("`messages` must be an array, not {}", type_name(v)),
            ));
        }
    };
    let chat = messages
        .iter()
        .enumerate()
        .map(|(i, msg)| message(i, msg))
        .collect::<Result<Vec<_>, _>>()?;
    let mut r = common(&m, Input::Chat(chat), max_tokens_limit)?;
    r.request.tools = super::tools::request_tools(&m)?;
    Ok(r)
}

/// One chat message: `role`, `content`, an assistant's `tool_calls`; images are refused.
/// A `tool` message's `tool_name` is taken and not shown: the tool formats rendered here
/// answer calls in order (as OpenAI's `tool_call_id` on the other route).
fn message(i: usize, msg: &Value) -> Result<ChatMessage, ApiError> {
    let bad = |what: &str| ApiError::invalid("messages", format!("`messages[{i}]`: {what}"));
    let Value::Object(o) = msg else {
        return Err(bad("must be an object with `role` and `content`"));
    };
    let role = match o.get("role") {
        Some(Value::String(r))
            if matches!(r.as_str(), "system" | "user" | "assistant" | "tool") =>
        {
            r
        }
        Some(Value::String(r)) => {
            return Err(bad(&format!(
                "role {r:?} is not system, user, assistant or tool"
            )));
        }
        _ => return Err(bad("`role` must be a string")),
    };
    if given(o, "images").is_some() {
        return Err(bad(
            "`images` are not supported: the models served here read text",
        ));
    }
    let tool_calls = match role.as_str() {
        "assistant" => history_calls(i, o.get("tool_calls"))?,
        _ if given(o, "tool_calls").is_some() => {
            return Err(bad("only an assistant message has `tool_calls`"));
        }
        _ => Vec::new(),
    };
    let content = match o.get("content") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) if role == "assistant" => String::new(),
        _ => return Err(bad("`content` must be a string")),
    };
    let mut m = ChatMessage::new(role, &content);
    m.tool_calls = tool_calls;
    Ok(m)
}

/// Parses an `/api/generate` body: the prompt (with `system`) in the model's chat template
/// as Ollama renders it, or as it is with `raw`.
pub fn parse_generate(body: &[u8], max_tokens_limit: u32) -> Result<OllamaRequest, ApiError> {
    let m = obj(body)?;
    refuse_unsupported(&m)?;
    if given(&m, "tools").is_some() {
        return Err(ApiError::invalid(
            "tools",
            "`/api/generate` takes no `tools` (as in Ollama): use `/api/chat`",
        ));
    }
    let prompt = match string(&m, "prompt")? {
        Some(p) if !p.is_empty() => p,
        _ => {
            return Err(ApiError::invalid(
                "prompt",
                "`prompt` is required (loading or unloading a model with an empty prompt is \
                 not supported)",
            ));
        }
    };
    let system = string(&m, "system")?.filter(|s| !s.is_empty());
    let input = if boolean(&m, "raw")? == Some(true) {
        if system.is_some() {
            return Err(ApiError::invalid(
                "system",
                "`system` needs the chat template, which `raw` leaves out; put it in the prompt",
            ));
        }
        Input::Text(prompt)
    } else {
        let mut chat: Vec<ChatMessage> = system
            .iter()
            .map(|s| ChatMessage::new("system", s))
            .collect();
        chat.push(ChatMessage::new("user", &prompt));
        Input::Chat(chat)
    };
    common(&m, input, max_tokens_limit)
}

/// What chat and generate share: model, stream (on unless `false`), keep_alive, options.
fn common(
    m: &Map<String, Value>,
    input: Input,
    max_tokens_limit: u32,
) -> Result<OllamaRequest, ApiError> {
    let model = string(m, "model")?.unwrap_or_default();
    let o = options::parse(m.get("options"), max_tokens_limit)?;
    let options = GenerateOptions {
        response_format: format(m)?,
        ..GenerateOptions::default()
    };
    let request = GenRequest {
        model: (!model.is_empty()).then(|| catalogue_name(&model).to_string()),
        input,
        max_tokens: o.max_tokens,
        sampling: o.sampling,
        seed: o.seed,
        options,
        tools: None,
        stream: boolean(m, "stream")?.unwrap_or(true),
        include_usage: false,
        stop: o.stop,
        user: None,
        n: 1,
        keep_alive: m
            .get("keep_alive")
            .filter(|v| !v.is_null())
            .map(keep_alive::from_json)
            .transpose()
            .map_err(|e| ApiError::invalid("keep_alive", format!("`keep_alive`: {e}")))?,
        // Ollama's API has no field for it; `[[workflows]]` still applies.
        next_model: None,
    };
    Ok(OllamaRequest {
        request,
        num_ctx: o.num_ctx,
        model,
    })
}

/// `format`: `"json"` (any JSON object) or a JSON schema, as Ollama takes them; `""` is
/// none. The schema is checked with the guest's compiler, as OpenAI's `response_format`.
fn format(m: &Map<String, Value>) -> Result<Option<ResponseFormat>, ApiError> {
    match m.get("format") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s == "json" => Ok(Some(ResponseFormat::JsonObject)),
        Some(schema @ Value::Object(_)) => Ok(Some(ResponseFormat::JsonSchema(checked_schema(
            schema, "format",
        )?))),
        Some(_) => Err(ApiError::invalid(
            "format",
            "`format` must be \"json\" or a JSON schema object",
        )),
    }
}

/// The catalogue's name for an Ollama model name: its `:latest` tag is the only one here.
pub fn catalogue_name(name: &str) -> &str {
    name.strip_suffix(":latest").unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(r: Result<OllamaRequest, ApiError>) -> &'static str {
        match r {
            Err(ApiError::Invalid { param, .. }) => param.unwrap_or("?"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_chat_request_parses() {
        let r = parse_chat(
            br#"{"model":"m:latest","messages":[{"role":"system","content":"Be brief."},
                {"role":"user","content":"Hi"},{"role":"assistant","content":null}],
                "tools":[],"format":"","think":false,"keep_alive":"1m",
                "options":{"temperature":0,"num_predict":8,"stop":["\n"]}}"#,
            100,
        )
        .unwrap();
        assert_eq!(
            (r.model.as_str(), r.request.model.as_deref()),
            ("m:latest", Some("m"))
        );
        assert!(r.request.stream, "Ollama streams unless told not to");
        assert_eq!(
            (r.request.max_tokens, r.request.sampling.temperature),
            (Some(8), 0.0)
        );
        assert_eq!(r.request.stop, ["\n"]);
        assert_eq!(
            r.request.keep_alive,
            Some(keep_alive::KeepAlive::For(std::time::Duration::from_secs(
                60
            )))
        );
        assert_eq!(
            r.request.input,
            Input::Chat(vec![
                ChatMessage::new("system", "Be brief."),
                ChatMessage::new("user", "Hi"),
                ChatMessage::new("assistant", ""),
            ])
        );
    }

    #[test]
    fn generate_renders_the_template_unless_raw() {
        let r = parse_generate(
            br#"{"model":"m","prompt":"Hi","system":"S","stream":false}"#,
            9,
        )
        .unwrap();
        assert!(!r.request.stream);
        assert_eq!(
            r.request.input,
            Input::Chat(vec![
                ChatMessage::new("system", "S"),
                ChatMessage::new("user", "Hi")
            ])
        );
        let r = parse_generate(br#"{"prompt":"Once","raw":true}"#, 9).unwrap();
        assert_eq!(
            (r.request.input, r.request.model),
            (Input::Text("Once".into()), None)
        );
    }

    #[test]
    fn tool_calls_and_results_in_the_history() {
        let r = parse_chat(
            br#"{"messages":[{"role":"user","content":"Weather?"},
                {"role":"assistant","content":"","tool_calls":[{"function":
                    {"name":"get_weather","arguments":{"city":"Oslo"}}}]},
                {"role":"tool","content":"18C","tool_name":"get_weather"}],
                "tools":[{"type":"function","function":{"name":"get_weather"}}]}"#,
            9,
        )
        .unwrap();
        let Input::Chat(chat) = r.request.input else {
            panic!("a chat");
        };
        assert_eq!(chat[1].tool_calls[0].arguments, r#"{"city": "Oslo"}"#);
        assert_eq!(
            (chat[2].role.as_str(), chat[2].content.as_str()),
            ("tool", "18C")
        );
        assert_eq!(r.request.tools.unwrap().defs[0].spec.name, "get_weather");
    }

    #[test]
    fn unsupported_fields_are_named() {
        let chat = |extra: &str| {
            let body = format!(r#"{{"messages":[{{"role":"user","content":"x"}}]{extra}}}"#);
            param(parse_chat(body.as_bytes(), 100))
        };
        assert_eq!(chat(r#","format":"yaml""#), "format");
        assert_eq!(
            chat(r#","format":{"type":"string","pattern":"a"}"#),
            "format"
        );
        assert_eq!(chat(r#","tools":[{"type":"function"}]"#), "tools");
        assert_eq!(chat(r#","think":true"#), "think");
        assert_eq!(chat(r#","logprobs":true"#), "logprobs");
        assert_eq!(chat(r#","options":{"mirostat":1}"#), "options");
        assert_eq!(chat(r#","keep_alive":"soon""#), "keep_alive");
        assert_eq!(chat(r#","stream":"yes""#), "stream");
        let request = |extra: &str| {
            let body = format!(r#"{{"prompt":"x"{extra}}}"#);
            param(parse_generate(body.as_bytes(), 100))
        };
        for key in ["images", "template", "context", "suffix"] {
            let v = if key == "images" || key == "context" {
                r#"["a"]"#
            } else {
                r#""a""#
            };
            assert_eq!(request(&format!(r#","{key}":{v}"#)), key);
        }
        assert_eq!(request(r#","raw":true,"system":"s""#), "system");
        assert_eq!(param(parse_generate(br#"{"model":"m"}"#, 9)), "prompt");
        let msg = |m: &str| param(parse_chat(format!(r#"{{"messages":[{m}]}}"#).as_bytes(), 9));
        assert_eq!(msg(r#"{"role":"robot","content":"1"}"#), "messages");
        assert_eq!(
            msg(r#"{"role":"user","content":"x","tool_calls":[{"function":{"name":"f"}}]}"#),
            "messages"
        );
        assert_eq!(request(r#","tools":[{"type":"function"}]"#), "tools");
        assert_eq!(
            msg(r#"{"role":"user","content":"x","images":["aGk="]}"#),
            "messages"
        );
        assert_eq!(msg(r#"{"role":"user"}"#), "messages");
        assert_eq!(param(parse_chat(br#"{"messages":[]}"#, 9)), "messages");
        assert!(matches!(parse_chat(b"[1]", 9), Err(ApiError::BadJson(_))));
    }

    #[test]
    fn no_body_makes_the_parsers_panic() {
        // Type confusion on every field, then random mutations of a valid body.
        let keys = [
            "model",
            "messages",
            "prompt",
            "system",
            "raw",
            "stream",
            "keep_alive",
            "options",
            "format",
            "tools",
            "images",
            "template",
            "context",
            "suffix",
            "think",
            "logprobs",
        ];
        let values = [
            "null",
            "true",
            "false",
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
            "{}",
            "[{}]",
            "[{\"role\":\"user\"}]",
            "{\"num_predict\":-3}",
            "{\"temperature\":1e400}",
            "{\"stop\":\"x\"}",
            "{\"seed\":-1e30}",
            "{\"num_ctx\":1e20}",
        ];
        for k in keys {
            for v in values {
                let body = format!(
                    r#"{{"messages":[{{"role":"user","content":"x"}}],"prompt":"x","{k}":{v}}}"#
                );
                let _ = parse_chat(body.as_bytes(), 4096);
                let _ = parse_generate(body.as_bytes(), 4096);
            }
        }
        let valid = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"prompt":"p","options":{"temperature":0.5,"stop":["a"],"num_predict":3},"stream":true}"#;
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
            let _ = parse_generate(&b, 4096);
        }
    }
}
