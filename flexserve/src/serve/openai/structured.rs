//! `response_format`: structured output. The schema goes to the guest, which compiles it
//! into a grammar and holds the answer to it; it is compiled here first too, with the same
//! compiler, so that a schema outside the supported subset is a 400 naming the keyword
//! before the request waits in the queue.

use super::request::{field, type_name};
use super::tools::python_json_compact;
use crate::serve::error::ApiError;
use serde_json::{Map, Value};
use virtio_llm::spec::MAX_OPTION_RECORD_BYTES;
use virtio_llm::wire::options::ResponseFormat;

/// The request's response format; `None` for plain text (absent, or `{"type": "text"}`).
pub fn response_format(m: &Map<String, Value>) -> Result<Option<ResponseFormat>, ApiError> {
    let bad = |what: String| ApiError::invalid("response_format", what);
    let Some(v) = field(m, "response_format") else {
        return Ok(None);
    };
    let Value::Object(o) = v else {
        return Err(bad(format!(
            "`response_format` must be an object, not {}",
            type_name(v)
        )));
    };
    match o.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(ResponseFormat::JsonObject)),
        Some("json_schema") => {
            let schema = o
                .get("json_schema")
                .and_then(Value::as_object)
                .and_then(|j| j.get("schema"))
                .ok_or_else(|| {
                    bad(
                        "`response_format.json_schema.schema` is required for type json_schema"
                            .into(),
                    )
                })?;
            Ok(Some(ResponseFormat::JsonSchema(checked_schema(
                schema,
                "response_format",
            )?)))
        }
        Some(t) => Err(bad(format!(
            "`response_format.type` {t:?} is not text, json_object or json_schema"
        ))),
        None => Err(bad("`response_format.type` must be a string".into())),
    }
}

/// `schema` as the text the guest compiles, refused here when the compiler refuses it or
/// it is too long for the wire; `param` names the field in the error.
pub fn checked_schema(schema: &Value, param: &'static str) -> Result<String, ApiError> {
    let text = python_json_compact(schema);
    if text.len() > MAX_OPTION_RECORD_BYTES - 4 {
        return Err(ApiError::invalid(
            param,
            format!(
                "the schema is longer than {} bytes",
                MAX_OPTION_RECORD_BYTES - 4
            ),
        ));
    }
    llm_grammar::compile_schema(&text)
        .map_err(|e| ApiError::invalid(param, format!("`{param}`: {e}")))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Option<ResponseFormat>, ApiError> {
        response_format(&serde_json::from_str(body).unwrap())
    }

    #[test]
    fn formats_parse_and_bad_schemas_are_named() {
        assert_eq!(
            parse(r#"{"response_format":{"type":"text"}}"#).unwrap(),
            None
        );
        assert_eq!(
            parse(r#"{"response_format":{"type":"json_object"}}"#).unwrap(),
            Some(ResponseFormat::JsonObject)
        );
        let s = parse(r#"{"response_format":{"type":"json_schema","json_schema":{"name":"p","strict":true,"schema":{"type":"object","properties":{"a":{"type":"integer"}}}}}}"#)
            .unwrap();
        assert_eq!(
            s,
            Some(ResponseFormat::JsonSchema(
                r#"{"properties": {"a": {"type": "integer"}}, "type": "object"}"#.into()
            ))
        );
        for bad in [
            r#"{"response_format":"json"}"#,
            r#"{"response_format":{"type":"yaml"}}"#,
            r#"{"response_format":{"type":"json_schema"}}"#,
            r#"{"response_format":{"type":"json_schema","json_schema":{"schema":{"type":"string","pattern":"a+"}}}}"#,
        ] {
            match parse(bad) {
                Err(ApiError::Invalid { param, message }) => {
                    assert_eq!(param, Some("response_format"), "{bad}");
                    if bad.contains("pattern") {
                        assert!(message.contains("pattern"), "{message}");
                    }
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
