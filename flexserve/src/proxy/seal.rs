//! A client's plain OpenAI request turned into a sealed one (docs/sealed-session.md): the
//! user's content (messages or prompt, and stop strings) sealed to the guest, the public
//! fields kept, and the three fields the daemon may not fill in (`model`, `max_tokens`,
//! `seed`: they are bound to the seal) chosen here when the client left them out.

use super::trust::GuestInfo;
use crate::serve::error::ApiError;
use crate::serve::openai::sealed::{SEALED_FIELD, binding, encode};
use crate::serve::openai::{Endpoint, GenRequest, Input, parse_chat, parse_completion};
use sealed_session::{OsRng, ResponseOpener, SessionError, TryRngCore, seal_request};
use serde_json::{Map, Value};
use virtio_llm::spec::MAX_SEALED_REQUEST_BYTES;
use virtio_llm::wire::request::{ChatRole, ChatTurn, Prompt};
use virtio_llm::wire::sealed_session::SealedContent;

/// The fields that travel in the clear. Everything else is dropped: an unknown field may
/// hold the user's data (`metadata`, ...), and the daemon ignores or refuses what is not
/// here anyway (`n`, penalties, `logprobs`, `tools` and `response_format` are refused
/// below).
const PUBLIC_FIELDS: [&str; 12] = [
    "model",
    "max_tokens",
    "seed",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repeat_penalty",
    "stream",
    "stream_options",
    "user",
    "ignore_eos",
];

/// Why a request could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The client's request is invalid as the daemon would find it.
    #[error(transparent)]
    Invalid(#[from] ApiError),
    #[error(
        "`{SEALED_FIELD}` is for requests sealed by a client; send the plain request and \
         the proxy seals it"
    )]
    AlreadySealed,
    #[error(
        "a prompt of token ids cannot be sealed (the guest tokenizes sealed prompts); send \
         the prompt as text"
    )]
    TokenPrompt,
    #[error("the content cannot be sealed: {0}")]
    Content(virtio_llm::error::WireError),
    #[error(
        "the sealed request would be {got} bytes; at most {MAX_SEALED_REQUEST_BYTES} fit: \
         shorten the messages"
    )]
    TooLarge { got: usize },
    #[error("cannot draw a random seed from the OS: {0}")]
    Random(String),
    #[error("{0}")]
    Session(#[from] SessionError),
}

impl SealError {
    /// Whether the client can fix it (400) or the proxy failed (500).
    pub fn is_client_error(&self) -> bool {
        !matches!(self, Self::Random(_) | Self::Session(_))
    }
}

/// A sealed request ready to send, and what its answer needs.
#[derive(Debug)]
pub struct SealedCall {
    /// The JSON body for the daemon.
    pub body: Vec<u8>,
    /// Opens the answer's pieces.
    pub opener: ResponseOpener,
    /// The seed the proxy chose when the client gave none (the client gets it back).
    pub chosen_seed: Option<u64>,
}

fn parse(endpoint: Endpoint, body: &[u8], limit: u32) -> Result<GenRequest, ApiError> {
    match endpoint {
        Endpoint::Chat => parse_chat(body, limit),
        Endpoint::Completion => parse_completion(body, limit),
    }
}

/// The user's content as the guest will render it: `parse_chat` has already mapped
/// `developer` to `system` and joined text parts, so what is sealed is exactly what the
/// daemon would have rendered from the plain request.
fn content(req: &GenRequest) -> Result<SealedContent, SealError> {
    let prompt = match &req.input {
        Input::Text(s) => Prompt::Text(s.clone()),
        Input::Chat(messages)
            if messages
                .iter()
                .any(|m| m.role == "tool" || !m.tool_calls.is_empty()) =>
        {
            return Err(SealError::Invalid(ApiError::invalid(
                "messages",
                "tool calls and tool results cannot be sealed yet: send them to the daemon \
                 directly",
            )));
        }
        Input::Chat(messages) => Prompt::Chat(
            messages
                .iter()
                .map(|m| {
                    let role = match m.role.as_str() {
                        "system" => ChatRole::System,
                        "assistant" => ChatRole::Assistant,
                        _ => ChatRole::User,
                    };
                    ChatTurn {
                        role,
                        content: m.content.clone(),
                    }
                })
                .collect(),
        ),
        Input::Tokens(_) => return Err(SealError::TokenPrompt),
        Input::Sealed(_) => return Err(SealError::AlreadySealed),
    };
    Ok(SealedContent {
        prompt,
        stop: req.stop.clone(),
    })
}

/// The body the daemon gets, without the sealed bytes yet: the public fields, with model,
/// `max_tokens` and seed filled in. Returns it and the seed chosen here, if any.
fn public_body(
    m: &Map<String, Value>,
    req: &GenRequest,
    guest: &GuestInfo,
) -> Result<(Map<String, Value>, Option<u64>), SealError> {
    let mut out: Map<String, Value> = PUBLIC_FIELDS
        .iter()
        .filter_map(|k| {
            m.get(*k)
                .filter(|v| !v.is_null())
                .map(|v| (k.to_string(), v.clone()))
        })
        .collect();
    let model = req
        .model
        .clone()
        .unwrap_or_else(|| guest.default_model.clone());
    let max_tokens = req
        .max_tokens
        .unwrap_or_else(|| guest.default_max_tokens(&model));
    out.insert("model".into(), model.into());
    // `max_completion_tokens` is dropped above; `max_tokens` carries the value either way.
    out.insert("max_tokens".into(), max_tokens.into());
    let mut chosen = None;
    if !out.contains_key("seed") {
        let seed = OsRng
            .try_next_u64()
            .map_err(|e| SealError::Random(e.to_string()))?;
        out.insert("seed".into(), seed.into());
        chosen = Some(seed);
    }
    Ok((out, chosen))
}

/// Seals the client's `body` for `endpoint` to `guest`.
pub fn seal(endpoint: Endpoint, body: &[u8], guest: &GuestInfo) -> Result<SealedCall, SealError> {
    let m = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(ApiError::BadJson("expected a JSON object".into()).into()),
        Err(e) => return Err(ApiError::BadJson(e.to_string()).into()),
    };
    if m.contains_key(SEALED_FIELD) {
        return Err(SealError::AlreadySealed);
    }
    // The daemon's own parser: a request it would refuse is refused here with its words.
    let req = parse(endpoint, body, guest.max_tokens)?;
    crate::serve::openai::sealed::refuse_unbound(&m, &req)?;
    let content = content(&req)?.encode().map_err(SealError::Content)?;
    let (mut public, chosen_seed) = public_body(&m, &req, guest)?;
    // The binding is computed from the body the daemon will parse, by the same code, so
    // both sides derive the same bytes; the sealed field's value does not enter it.
    public.insert(SEALED_FIELD.into(), "".into());
    let sent = serde_json::to_vec(&public).map_err(|e| ApiError::BadJson(e.to_string()))?;
    let parsed = parse(endpoint, &sent, guest.max_tokens)?;
    let binding = binding(&parsed).ok_or(SealError::Session(SessionError::Seal {
        why: "the request has no model or max_tokens to bind",
    }))?;
    let (sealed, opener) = seal_request(
        &guest.session_key(),
        &binding,
        &content,
        &mut OsRng.unwrap_err(),
    )?;
    let bytes = sealed.to_bytes();
    if bytes.len() > MAX_SEALED_REQUEST_BYTES {
        return Err(SealError::TooLarge { got: bytes.len() });
    }
    public.insert(SEALED_FIELD.into(), encode(&bytes).into());
    let body = serde_json::to_vec(&public).map_err(|e| ApiError::BadJson(e.to_string()))?;
    Ok(SealedCall {
        body,
        opener,
        chosen_seed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::trust::tests::guest;
    use sealed_session::SealedRequest;
    use sealed_session::open_request;

    /// What the daemon and the guest do with a sealed body: parse it, compute the binding,
    /// open the request.
    fn open(endpoint: Endpoint, body: &[u8]) -> (GenRequest, SealedContent) {
        let (key, _) = guest();
        let req = parse(endpoint, body, 4096).unwrap();
        let Input::Sealed(bytes) = &req.input else {
            panic!("not sealed: {req:?}")
        };
        let sealed = SealedRequest::from_bytes(bytes).unwrap();
        let (content, _) = open_request(&key, &sealed, &binding(&req).unwrap()).unwrap();
        (req, SealedContent::decode(&content).unwrap())
    }

    #[test]
    fn a_chat_request_is_sealed_with_its_content_hidden() {
        let (_, v) = guest();
        let info = GuestInfo::from_json(&v).unwrap();
        let body = br#"{"model":"m","messages":[{"role":"developer","content":"Be brief."},
            {"role":"user","content":[{"type":"text","text":"Hi "},{"type":"text","text":"there"}]}],
            "stop":["END"],"temperature":0,"metadata":{"secret":"1"},"max_completion_tokens":9}"#;
        let call = seal(Endpoint::Chat, body, &info).unwrap();
        let sent: Value = serde_json::from_slice(&call.body).unwrap();
        for hidden in ["messages", "stop", "metadata", "max_completion_tokens"] {
            assert!(sent.get(hidden).is_none(), "{hidden} in {sent}");
        }
        assert_eq!(sent["seed"].as_u64(), call.chosen_seed);
        let (req, content) = open(Endpoint::Chat, &call.body);
        assert_eq!(req.max_tokens, Some(9));
        assert_eq!(req.sampling.temperature, 0.0);
        let Prompt::Chat(turns) = &content.prompt else {
            panic!("{content:?}")
        };
        assert_eq!(turns[0].role, ChatRole::System);
        assert_eq!(turns[1].content, "Hi there");
        assert_eq!(content.stop, ["END"]);
    }

    #[test]
    fn completions_get_defaults_and_bad_requests_are_refused() {
        let (_, v) = guest();
        let info = GuestInfo::from_json(&v).unwrap();
        let call = seal(
            Endpoint::Completion,
            br#"{"prompt":"Once","seed":5}"#,
            &info,
        )
        .unwrap();
        assert_eq!(call.chosen_seed, None);
        let (req, content) = open(Endpoint::Completion, &call.body);
        assert_eq!(req.model.as_deref(), Some("m"));
        assert_eq!((req.max_tokens, req.sampling.seed), (Some(512), 5));
        assert_eq!(content.prompt, Prompt::Text("Once".into()));
        let refused = |body: &[u8]| seal(Endpoint::Completion, body, &info).unwrap_err();
        assert!(matches!(
            refused(br#"{"prompt":[1,2]}"#),
            SealError::TokenPrompt
        ));
        assert!(matches!(
            refused(br#"{"prompt":"x","temperature":9}"#),
            SealError::Invalid(ApiError::Invalid { .. })
        ));
        assert!(matches!(
            refused(br#"{"prompt":"x","flexserve_sealed":"AA=="}"#),
            SealError::AlreadySealed
        ));
        assert!(refused(b"[").is_client_error());
        assert!(matches!(
            refused(br#"{"prompt":"x","logprobs":2}"#),
            SealError::Invalid(ApiError::Invalid {
                param: Some("logprobs"),
                ..
            })
        ));
    }

    #[test]
    fn more_than_one_choice_is_refused_not_dropped() {
        let (_, v) = guest();
        let info = GuestInfo::from_json(&v).unwrap();
        let body = br#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#;
        assert!(matches!(
            seal(Endpoint::Chat, body, &info),
            Err(SealError::Invalid(ApiError::Invalid {
                param: Some("n"),
                ..
            }))
        ));
    }

    #[test]
    fn tools_and_formats_are_refused_not_dropped() {
        let (_, v) = guest();
        let info = GuestInfo::from_json(&v).unwrap();
        let chat = |extra: &str| {
            let body =
                format!(r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}]{extra}}}"#);
            match seal(Endpoint::Chat, body.as_bytes(), &info) {
                Err(SealError::Invalid(ApiError::Invalid { param, .. })) => param,
                other => panic!("{extra}: {other:?}"),
            }
        };
        let tool = r#"[{"type":"function","function":{"name":"f"}}]"#;
        assert_eq!(chat(&format!(r#","tools":{tool}"#)), Some("tools"));
        assert_eq!(
            chat(r#","response_format":{"type":"json_object"}"#),
            Some("response_format")
        );
        let history = r#"{"model":"m","messages":[{"role":"user","content":"x"},
            {"role":"tool","content":"18C"}]}"#;
        assert!(matches!(
            seal(Endpoint::Chat, history.as_bytes(), &info),
            Err(SealError::Invalid(ApiError::Invalid {
                param: Some("messages"),
                ..
            }))
        ));
    }
}
