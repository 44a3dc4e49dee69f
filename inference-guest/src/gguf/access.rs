//! Typed metadata accessors. A missing key is `Ok(None)`; a key of the wrong type is an error
//! naming the key, so a corrupt or foreign model fails loudly instead of being misread.

use alloc::borrow::ToOwned;
use alloc::vec::Vec;

use super::error::GgufError;
use super::reader::Gguf;
use super::value::{Value, ValueType};

fn type_error(key: &str, expected: &'static str, found: ValueType) -> GgufError {
    GgufError::MetadataType {
        key: key.to_owned(),
        expected,
        found,
    }
}

/// The elements of an array value whose element type is one of `accepted`.
fn array_items<'v, 'a>(
    key: &str,
    value: &'v Value<'a>,
    expected: &'static str,
    accepted: fn(ValueType) -> bool,
) -> Result<&'v [Value<'a>], GgufError> {
    match value {
        Value::Array(elem, items) if accepted(*elem) => Ok(items),
        Value::Array(..) => Err(type_error(key, expected, ValueType::Array)),
        other => Err(type_error(key, expected, other.value_type())),
    }
}

fn is_integer(t: ValueType) -> bool {
    use ValueType::*;
    matches!(t, U8 | I8 | U16 | I16 | U32 | I32 | U64 | I64)
}

impl<'a> Gguf<'a> {
    /// An integer value of any GGUF integer type, if it fits in `u32`.
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let n = v
            .as_integer()
            .ok_or_else(|| type_error(key, "an integer", v.value_type()))?;
        u32::try_from(n)
            .map(Some)
            .map_err(|_| GgufError::MetadataRange {
                key: key.to_owned(),
                expected: "u32",
                value: n,
            })
    }

    /// An integer value of any GGUF integer type, if it fits in `u64`.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let n = v
            .as_integer()
            .ok_or_else(|| type_error(key, "an integer", v.value_type()))?;
        u64::try_from(n)
            .map(Some)
            .map_err(|_| GgufError::MetadataRange {
                key: key.to_owned(),
                expected: "u64",
                value: n,
            })
    }

    /// An F32 or F64 value as `f32`.
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_f32()
            .map(Some)
            .ok_or_else(|| type_error(key, "f32 or f64", v.value_type()))
    }

    /// A bool value.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(type_error(key, "bool", v.value_type())),
        }
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Result<Option<&'a str>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_str()
            .map(Some)
            .ok_or_else(|| type_error(key, "string", v.value_type()))
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&'a str>>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let items = array_items(key, v, "array of string", |t| t == ValueType::String)?;
        // The element type was checked; filter_map only keeps this total.
        Ok(Some(items.iter().filter_map(Value::as_str).collect()))
    }

    /// An array of F32 (or F64, narrowed) values.
    pub fn get_f32_array(&self, key: &str) -> Result<Option<Vec<f32>>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let items = array_items(key, v, "array of f32", |t| {
            matches!(t, ValueType::F32 | ValueType::F64)
        })?;
        Ok(Some(items.iter().filter_map(Value::as_f32).collect()))
    }

    /// An array of integers of any GGUF integer type, each of which must fit in `i32`.
    pub fn get_i32_array(&self, key: &str) -> Result<Option<Vec<i32>>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let items = array_items(key, v, "array of i32", is_integer)?;
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let n = item.as_integer().unwrap_or(i128::MAX);
            let x = i32::try_from(n).map_err(|_| GgufError::MetadataRange {
                key: key.to_owned(),
                expected: "i32",
                value: n,
            })?;
            out.push(x);
        }
        Ok(Some(out))
    }
}
