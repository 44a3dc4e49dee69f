//! A JSON value that keeps object members in the order they were written.
//!
//! `serde_json::Value` sorts keys unless its `preserve_order` feature is on, and that feature
//! needs `std` and would change key order for every crate of the workspace on the host. A
//! schema's property order is the order the model must write them in, so the schema is
//! parsed by `serde_json` into this type instead (its parser also caps nesting at 128, so a
//! hostile schema cannot overflow the stack here).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A parsed JSON value; objects are member lists in document order.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    /// Integers that fit an `i64` (or `u64`, clamped) keep their exactness here.
    Int(i64),
    Float(f64),
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    /// Parses `text`; `None` if it is not JSON.
    pub fn parse(text: &str) -> Option<Json> {
        serde_json_alloc::from_str(text).ok()
    }

    /// The member `key` of an object (the last one if written twice, like serde_json).
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(m) => m.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A non-negative integer (`3` or `3.0`).
    pub fn as_count(&self) -> Option<u64> {
        match *self {
            Json::Int(i) => u64::try_from(i).ok(),
            Json::Float(f) if f >= 0.0 && f <= u32::MAX as f64 && f == (f as u64) as f64 => {
                Some(f as u64)
            }
            _ => None,
        }
    }

    /// This value written as compact JSON (for `const` and `enum`: the model writes exactly it).
    pub fn to_compact(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Int(i) => out.push_str(&alloc::format!("{i}")),
            Json::Float(f) => {
                // serde_json writes floats so they read back exactly; reuse it.
                let text = serde_json_alloc::to_string(f).unwrap_or_else(|_| "null".into());
                out.push_str(&text);
            }
            Json::Str(s) => write_string(s, out),
            Json::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.to_compact(out);
                }
                out.push(']');
            }
            Json::Object(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_string(k, out);
                    out.push(':');
                    v.to_compact(out);
                }
                out.push('}');
            }
        }
    }
}

/// `s` as a JSON string literal (serde_json's escaping).
pub fn write_string(s: &str, out: &mut String) {
    let text = serde_json_alloc::to_string(s).unwrap_or_else(|_| "\"\"".into());
    out.push_str(&text);
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(i64::try_from(v).map_or(Json::Float(v as f64), Json::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
        Ok(Json::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::Str(v.into()))
    }
    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element()? {
            items.push(v);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut members = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Json>()? {
            members.push((k, v));
        }
        Ok(Json::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_member_order_and_round_trips() {
        let v = Json::parse(r#"{"z":1,"a":[true,null,"x\n"],"m":2.5}"#).unwrap();
        let Json::Object(m) = &v else { panic!() };
        let keys: Vec<&str> = m.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["z", "a", "m"]);
        let mut s = String::new();
        v.to_compact(&mut s);
        assert_eq!(s, r#"{"z":1,"a":[true,null,"x\n"],"m":2.5}"#);
    }

    #[test]
    fn refuses_non_json_and_deep_nesting() {
        assert!(Json::parse("{").is_none());
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(Json::parse(&deep).is_none());
    }
}
