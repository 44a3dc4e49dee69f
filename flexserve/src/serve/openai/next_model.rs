//! `"flexserve": {"next_model": "NAME"}`: the daemon's own options in an OpenAI body. The
//! one it takes names the model an agent workflow asks next, which the daemon prefetches
//! into the guest's free budget once this request's answer is done (docs/agent-workflows.md).
//! The name is checked here for shape; whether the models directory has it is checked when
//! the request is queued, and a name it lacks is a 400 too.

use super::request::{field, type_name};
use crate::serve::error::ApiError;
use serde_json::{Map, Value};

/// The JSON field that holds the daemon's own options.
pub const FLEXSERVE_FIELD: &str = "flexserve";
/// Its parameter name in errors.
pub const NEXT_MODEL_PARAM: &str = "flexserve.next_model";

/// The next model a request names, if it names one.
pub(super) fn next_model(m: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    let Some(v) = field(m, FLEXSERVE_FIELD) else {
        return Ok(None);
    };
    let Value::Object(o) = v else {
        return Err(ApiError::invalid(
            FLEXSERVE_FIELD,
            format!(
                "`{FLEXSERVE_FIELD}` must be an object, not {}",
                type_name(v)
            ),
        ));
    };
    // Nothing silently ignored: a misspelt option would otherwise do nothing.
    if let Some(k) = o.keys().find(|k| k.as_str() != "next_model") {
        return Err(ApiError::invalid(
            FLEXSERVE_FIELD,
            format!("`{FLEXSERVE_FIELD}.{k}` is not an option; the one taken is `next_model`"),
        ));
    }
    match field(o, "next_model") {
        None => Ok(None),
        Some(Value::String(s)) if valid_name(s) => Ok(Some(s.clone())),
        Some(Value::String(s)) => Err(ApiError::invalid(
            NEXT_MODEL_PARAM,
            format!(
                "`{NEXT_MODEL_PARAM}` {s:?} is not a model name (a file name in the models \
                 directory, without a path)"
            ),
        )),
        Some(v) => Err(ApiError::invalid(
            NEXT_MODEL_PARAM,
            format!(
                "`{NEXT_MODEL_PARAM}` must be a model name string, not {}",
                type_name(v)
            ),
        )),
    }
}

/// A model name: a file name of the models directory, no path, no control characters.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s != "."
        && s != ".."
        && !s.contains('/')
        && !s.chars().any(char::is_control)
}

/// The error for a well-formed name the models directory does not have.
pub fn unknown_next_model(name: &str) -> ApiError {
    ApiError::invalid(
        NEXT_MODEL_PARAM,
        format!(
            "`{NEXT_MODEL_PARAM}` names model {name:?}, which is not in the models directory; \
             GET /v1/models lists the models there"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Option<String>, ApiError> {
        match serde_json::from_str::<Value>(json).unwrap() {
            Value::Object(m) => next_model(&m),
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_next_model_is_taken() {
        assert_eq!(
            parse(r#"{"flexserve":{"next_model":"coder"}}"#).unwrap(),
            Some("coder".into())
        );
        assert_eq!(parse(r#"{"model":"a"}"#).unwrap(), None);
        assert_eq!(parse(r#"{"flexserve":{}}"#).unwrap(), None);
        assert_eq!(parse(r#"{"flexserve":null}"#).unwrap(), None);
    }

    #[test]
    fn anything_else_is_refused_by_name() {
        for bad in [
            r#"{"flexserve":"coder"}"#,
            r#"{"flexserve":{"next_modle":"coder"}}"#,
            r#"{"flexserve":{"next_model":3}}"#,
            r#"{"flexserve":{"next_model":""}}"#,
            r#"{"flexserve":{"next_model":"../etc/passwd"}}"#,
            r#"{"flexserve":{"next_model":"a\nb"}}"#,
        ] {
            let e = parse(bad).unwrap_err();
            assert!(matches!(e, ApiError::Invalid { .. }), "{bad}: {e:?}");
            assert!(e.to_string().contains("flexserve"), "{bad}: {e}");
        }
    }
}
