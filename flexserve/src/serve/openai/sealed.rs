//! Sealed requests in the OpenAI shapes (docs/sealed-session.md): the user's content travels
//! as `flexserve_sealed` (base64 of `enc || ciphertext || tag`), the public fields as usual.
//! The daemon and `flexserve proxy` both compute a request's binding here, from the same
//! parsed fields, so they agree on it byte for byte.

use super::request::{GenRequest, Input, common, field, type_name};
use super::response::Endpoint;
use crate::serve::error::ApiError;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};
use virtio_llm::spec::MAX_SEALED_REQUEST_BYTES;
use virtio_llm::wire::request::SamplingParams;

/// The JSON field that carries a sealed request, and each sealed answer piece.
pub const SEALED_FIELD: &str = "flexserve_sealed";

/// Fields that hold user content: in a sealed request they are inside the seal, so finding
/// one in the clear means the client sent what it meant to hide.
const CONTENT_FIELDS: [&str; 3] = ["messages", "prompt", "stop"];

/// The sealed bytes of a request that has `flexserve_sealed`, else `None`.
pub(super) fn sealed_input(m: &Map<String, Value>) -> Result<Option<Vec<u8>>, ApiError> {
    let Some(v) = field(m, SEALED_FIELD) else {
        return Ok(None);
    };
    let Value::String(text) = v else {
        return Err(ApiError::invalid(
            SEALED_FIELD,
            format!(
                "`{SEALED_FIELD}` must be a base64 string, not {}",
                type_name(v)
            ),
        ));
    };
    let bytes = STANDARD.decode(text).map_err(|e| {
        ApiError::invalid(SEALED_FIELD, format!("`{SEALED_FIELD}` is not base64: {e}"))
    })?;
    if bytes.len() > MAX_SEALED_REQUEST_BYTES {
        return Err(ApiError::invalid(
            SEALED_FIELD,
            format!(
                "`{SEALED_FIELD}` holds {} bytes; at most {MAX_SEALED_REQUEST_BYTES} fit",
                bytes.len()
            ),
        ));
    }
    Ok(Some(bytes))
}

/// Options the seal does not bind (the guest refuses them on a sealed request), or whose
/// answer the host must not see: logprobs would name the answer's tokens in the clear.
/// Tools and response formats are not sealed yet: in the clear they would show the host
/// what the user asks for, and the daemon's sealed path does not read them.
const UNBOUND_FIELDS: [&str; 8] = [
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
];

/// A sealed request: no content field in the clear, and `model`, `max_tokens` and `seed`
/// given, since the daemon may not fill them in (they are bound).
pub(super) fn sealed_request(
    m: &Map<String, Value>,
    sealed: Vec<u8>,
    endpoint: Endpoint,
    max_tokens_limit: u32,
) -> Result<GenRequest, ApiError> {
    if let Some(key) = CONTENT_FIELDS.into_iter().find(|k| field(m, k).is_some()) {
        return Err(ApiError::invalid(
            key,
            format!("a sealed request carries `{key}` inside `{SEALED_FIELD}`, not in the clear"),
        ));
    }
    for key in ["model", "max_tokens", "seed"] {
        if field(m, key).is_none() {
            return Err(ApiError::invalid(
                key,
                format!("a sealed request must give `{key}`: it is bound to the seal"),
            ));
        }
    }
    let req = common(m, Input::Sealed(sealed), endpoint, max_tokens_limit)?;
    refuse_unbound(m, &req)?;
    Ok(req)
}

/// Refuses a request to be sealed (or sealed already) that asks for generation options:
/// the seal does not bind them, and logprobs would show the host the answer's tokens; or
/// for more than one choice (`n`).
/// (`flexserve proxy` asks this too, rather than drop them silently.)
pub fn refuse_unbound(m: &Map<String, Value>, req: &GenRequest) -> Result<(), ApiError> {
    if req.n > 1 {
        return Err(ApiError::invalid(
            "n",
            "a sealed request cannot ask for `n` > 1 choices: the seal binds one seed, and \
             each choice samples with its own",
        ));
    }
    let given = UNBOUND_FIELDS.into_iter().find(|k| field(m, k).is_some());
    let asked = !req.options.is_empty() || req.tools.is_some();
    let Some(key) = given.or(asked.then_some("logprobs")) else {
        return Ok(());
    };
    Err(ApiError::invalid(
        key,
        format!(
            "a sealed request cannot use `{key}` yet: the seal does not bind it (and \
             logprobs would show the host the answer's tokens)"
        ),
    ))
}

/// The bytes a sealed request is bound to: the model name and stream flag as sent, and the
/// sampling the guest will receive (`max_tokens` as given; the daemon does not change it).
pub fn binding(req: &GenRequest) -> Option<Vec<u8>> {
    let model = req.model.as_deref()?;
    let sampling = SamplingParams {
        max_tokens: req.max_tokens?,
        ..req.sampling
    };
    Some(virtio_llm::wire::sealed_session::binding(
        model, req.stream, &sampling,
    ))
}

/// Base64 of a sealed request or answer piece, as it travels in JSON.
pub fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Bytes of a base64 answer piece.
pub fn decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    STANDARD.decode(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::openai::parse_chat;

    #[test]
    fn a_sealed_request_parses_and_binds_its_public_fields() {
        let body = br#"{"model":"m","max_tokens":8,"seed":3,"temperature":0,"stream":true,
            "flexserve_sealed":"AAEC"}"#;
        let r = parse_chat(body, 4096).unwrap();
        assert_eq!(r.input, Input::Sealed(vec![0, 1, 2]));
        let b = binding(&r).unwrap();
        let changed = parse_chat(
            br#"{"model":"m","max_tokens":9,"seed":3,"temperature":0,"stream":true,
            "flexserve_sealed":"AAEC"}"#,
            4096,
        )
        .unwrap();
        assert_ne!(b, binding(&changed).unwrap());
    }

    #[test]
    fn content_in_the_clear_or_missing_bound_fields_are_refused() {
        let param = |body: &str| match parse_chat(body.as_bytes(), 4096) {
            Err(ApiError::Invalid { param, .. }) => param,
            other => panic!("{body}: {other:?}"),
        };
        let s = r#""flexserve_sealed":"AAEC""#;
        assert_eq!(
            param(&format!(
                r#"{{{s},"model":"m","max_tokens":1,"seed":0,"messages":[]}}"#
            )),
            Some("messages")
        );
        assert_eq!(
            param(&format!(
                r#"{{{s},"model":"m","max_tokens":1,"seed":0,"stop":"x"}}"#
            )),
            Some("stop")
        );
        assert_eq!(
            param(&format!(r#"{{{s},"max_tokens":1,"seed":0}}"#)),
            Some("model")
        );
        assert_eq!(
            param(&format!(r#"{{{s},"model":"m","seed":0}}"#)),
            Some("max_tokens")
        );
        assert_eq!(
            param(r#"{"flexserve_sealed":"***","model":"m","max_tokens":1,"seed":0}"#),
            Some("flexserve_sealed")
        );
        assert_eq!(
            param(r#"{"flexserve_sealed":5,"model":"m","max_tokens":1,"seed":0}"#),
            Some("flexserve_sealed")
        );
        // Options the seal does not bind, and logprobs, which would show the answer.
        for (extra, key) in [
            (r#""logprobs":true"#, "logprobs"),
            (r#""logit_bias":{"1":5}"#, "logit_bias"),
            (r#""presence_penalty":1"#, "presence_penalty"),
        ] {
            assert_eq!(
                param(&format!(
                    r#"{{{s},"model":"m","max_tokens":1,"seed":0,{extra}}}"#
                )),
                Some(key)
            );
        }
        // A bound `max_tokens` above the limit is refused, not clamped.
        assert_eq!(
            param(&format!(
                r#"{{{s},"model":"m","max_tokens":5000,"seed":0}}"#
            )),
            Some("max_tokens")
        );
    }
}
