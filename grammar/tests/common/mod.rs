//! Shared by the integration tests: a seeded PRNG, the test schemas, and a validator for the
//! supported subset (written here so the check does not share code with the compiler).

#![allow(dead_code)]

use serde_json_alloc::Value;

/// xorshift64*: deterministic across platforms.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Schemas exercising every supported construct.
pub const SCHEMAS: &[&str] = &[
    r#"{"type":"object","properties":{"name":{"type":"string","maxLength":12},"age":{"type":"integer"},"tags":{"type":"array","items":{"enum":["a","b","c"]},"maxItems":3}},"required":["name","age"]}"#,
    r#"{"type":"object","properties":{"id":{"type":"string","format":"uuid"},"score":{"type":["number","null"]},"ok":{"type":"boolean"}},"required":["ok"],"additionalProperties":false}"#,
    r##"{"$defs":{"node":{"type":"object","properties":{"v":{"type":"integer"},"kids":{"type":"array","items":{"$ref":"#/$defs/node"},"maxItems":2}},"required":["v"]}},"$ref":"#/$defs/node"}"##,
    r#"{"anyOf":[{"type":"object","properties":{"kind":{"const":"circle"},"r":{"type":"number"}},"required":["kind","r"]},{"type":"object","properties":{"kind":{"const":"rect"},"w":{"type":"integer"},"h":{"type":"integer"}},"required":["kind","w","h"]}]}"#,
    r#"{"type":"array","prefixItems":[{"type":"string","minLength":1,"maxLength":4},{"type":"null"},{"enum":[1,2,3]}]}"#,
    r#"{"type":"object","properties":{"meta":{"type":"object","properties":{"a":{"type":["string","null"]},"b":{"type":"array","items":{"type":"integer"},"minItems":1,"maxItems":4}},"required":["b"]},"extra":{"type":"object","additionalProperties":{"type":"integer"}}},"required":["meta","extra"]}"#,
    r##"{"definitions":{"list":{"anyOf":[{"type":"null"},{"type":"object","properties":{"head":{"type":"integer"},"tail":{"$ref":"#/definitions/list"}},"required":["head","tail"]}]}},"$ref":"#/definitions/list"}"##,
    r#"{"type":"object","properties":{"when":{"type":"string","format":"date-time"},"n":{"type":"integer"}},"required":["when"],"additionalProperties":true}"#,
];

/// Whether `v` is valid for `schema` (with `root` for `$ref`), in the supported subset.
pub fn valid(v: &Value, schema: &Value, root: &Value) -> bool {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let target = if r == "#" {
            Some(root)
        } else {
            root.pointer(&r[1..])
        };
        return target.is_some_and(|t| valid(v, t, root));
    }
    if let Some(c) = schema.get("const") {
        return v == c;
    }
    if let Some(Value::Array(e)) = schema.get("enum") {
        return e.contains(v);
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(subs)) = schema.get(key) {
            return subs.iter().any(|s| valid(v, s, root));
        }
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !types.is_empty() && !types.iter().any(|t| has_type(v, t)) {
        return false;
    }
    match v {
        Value::Object(m) => valid_object(m, schema, root),
        Value::Array(items) => valid_array(items, schema, root),
        Value::String(s) => {
            let n = s.chars().count() as u64;
            let min = schema.get("minLength").and_then(Value::as_u64).unwrap_or(0);
            let max = schema
                .get("maxLength")
                .and_then(Value::as_u64)
                .unwrap_or(u64::MAX);
            n >= min && n <= max && valid_format(s, schema.get("format").and_then(Value::as_str))
        }
        _ => true,
    }
}

fn has_type(v: &Value, t: &str) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        // JSON schema integers are numbers with no fraction: `-0` and `1.0` count.
        "integer" => v.as_f64().is_some_and(|f| f.fract() == 0.0),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => false,
    }
}

fn valid_format(s: &str, format: Option<&str>) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: core::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    match format {
        Some("uuid") => {
            b.len() == 36
                && b.iter().enumerate().all(|(i, c)| match i {
                    8 | 13 | 18 | 23 => *c == b'-',
                    _ => c.is_ascii_hexdigit(),
                })
        }
        Some("date-time") => {
            digits(0..4)
                && b.get(4) == Some(&b'-')
                && digits(5..7)
                && b.get(10) == Some(&b'T')
                && digits(11..13)
                && (s.ends_with('Z') || s.len() > 20)
        }
        _ => true,
    }
}

fn valid_object(m: &serde_json_alloc::Map<String, Value>, schema: &Value, root: &Value) -> bool {
    let props = schema.get("properties").and_then(Value::as_object);
    if let Some(Value::Array(req)) = schema.get("required")
        && !req
            .iter()
            .filter_map(Value::as_str)
            .all(|k| m.contains_key(k))
    {
        return false;
    }
    for (k, v) in m {
        let declared = props.and_then(|p| p.get(k));
        let ok = match (declared, schema.get("additionalProperties")) {
            (Some(s), _) => valid(v, s, root),
            (None, Some(Value::Bool(false))) => false,
            (None, None) if props.is_some() => false,
            (None, Some(s @ Value::Object(_))) => valid(v, s, root),
            (None, _) => true,
        };
        if !ok {
            return false;
        }
    }
    true
}

fn valid_array(items: &[Value], schema: &Value, root: &Value) -> bool {
    if let Some(Value::Array(prefix)) = schema.get("prefixItems") {
        return items.len() == prefix.len()
            && items.iter().zip(prefix).all(|(v, s)| valid(v, s, root));
    }
    let min = schema.get("minItems").and_then(Value::as_u64).unwrap_or(0);
    let max = schema
        .get("maxItems")
        .and_then(Value::as_u64)
        .unwrap_or(u64::MAX);
    let n = items.len() as u64;
    n >= min
        && n <= max
        && schema
            .get("items")
            .is_none_or(|s| items.iter().all(|v| valid(v, s, root)))
}

/// Parses `out` and validates it against `schema`; the error says why not.
pub fn check(out: &[u8], schema: &str) -> Result<(), String> {
    let text = core::str::from_utf8(out).map_err(|e| format!("not UTF-8: {e}"))?;
    let v: Value =
        serde_json_alloc::from_str(text).map_err(|e| format!("not JSON: {e}: {text}"))?;
    let s: Value = serde_json_alloc::from_str(schema).map_err(|e| format!("bad schema: {e}"))?;
    if valid(&v, &s, &s) {
        Ok(())
    } else {
        Err(format!("invalid for the schema: {text}"))
    }
}

/// Weight of a byte when sampling: structural bytes often, so outputs finish.
pub fn weight(b: u8) -> u64 {
    match b {
        b'"' | b'}' | b']' | b',' | b':' => 40,
        b'0'..=b'9' | b'-' | b't' | b'f' | b'n' | b'[' | b'{' => 4,
        b' ' | b'\n' | b'\t' => 1,
        _ => 1,
    }
}
