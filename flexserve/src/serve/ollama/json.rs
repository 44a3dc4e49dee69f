//! Small helpers for reading Ollama's JSON bodies with an error that names the field.

use crate::serve::error::ApiError;
use serde_json::{Map, Value};

/// The body as a JSON object.
pub fn obj(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::BadJson("expected a JSON object".into())),
        Err(e) => Err(ApiError::BadJson(e.to_string())),
    }
}

pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A field that is there: absent, `null`, `""`, `[]` and `{}` are all "not given", as
/// Ollama's Go structs read them (its clients send `"tools": []` with every chat).
pub fn given<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.get(key).filter(|v| match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Bool(_) | Value::Number(_) => true,
    })
}

/// A number in `lo..=hi`, as f32.
pub fn in_range(v: &Value, lo: f64, hi: f64) -> Option<f32> {
    v.as_f64()
        .filter(|n| (lo..=hi).contains(n))
        .map(|n| n as f32)
}

/// An optional string field.
pub fn string(m: &Map<String, Value>, key: &'static str) -> Result<Option<String>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(ApiError::invalid(
            key,
            format!("`{key}` must be a string, not {}", type_name(v)),
        )),
    }
}

/// An optional boolean field.
pub fn boolean(m: &Map<String, Value>, key: &'static str) -> Result<Option<bool>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(ApiError::invalid(
            key,
            format!("`{key}` must be a boolean, not {}", type_name(v)),
        )),
    }
}
