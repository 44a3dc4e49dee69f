//! JSON as Python's `json.dumps(…, ensure_ascii=False)` writes it, which is what a chat
//! template's `tojson` filter gives the model: `", "` and `": "` between items on one line,
//! or `indent` spaces per level with `","` line ends. serde_json's own writers use `,`/`:`
//! (compact) or two spaces (pretty), so a model would see the tools differently than it
//! did in training.

use serde_json::Value;
use std::fmt::Write;

/// `json.dumps(v)`.
pub fn compact(v: &Value) -> String {
    let mut out = String::new();
    write(&mut out, v, None, 0);
    out
}

/// `json.dumps(v, indent=indent)`.
pub fn indented(v: &Value, indent: usize) -> String {
    let mut out = String::new();
    write(&mut out, v, Some(indent), 0);
    out
}

fn newline(out: &mut String, indent: Option<usize>, level: usize) {
    if let Some(n) = indent {
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', n * level));
    }
}

fn write(out: &mut String, v: &Value, indent: Option<usize>, level: usize) {
    let sep = if indent.is_some() { "," } else { ", " };
    match v {
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (k, item) in items.iter().enumerate() {
                if k > 0 {
                    out.push_str(sep);
                }
                newline(out, indent, level + 1);
                write(out, item, indent, level + 1);
            }
            newline(out, indent, level);
            out.push(']');
        }
        Value::Object(map) if !map.is_empty() => {
            out.push('{');
            for (k, (key, item)) in map.iter().enumerate() {
                if k > 0 {
                    out.push_str(sep);
                }
                newline(out, indent, level + 1);
                // serde_json escapes strings as Python does with ensure_ascii=False.
                let _ = write!(out, "{}: ", Value::String(key.clone()));
                write(out, item, indent, level + 1);
            }
            newline(out, indent, level);
            out.push('}');
        }
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn as_python_writes_it() {
        let v = json!({"a": [1, 2.5, "é\n"], "b": {}, "c": [], "d": {"e": null, "f": true}});
        // json.dumps(v, ensure_ascii=False)
        assert_eq!(
            compact(&v),
            r#"{"a": [1, 2.5, "é\n"], "b": {}, "c": [], "d": {"e": null, "f": true}}"#
        );
        // json.dumps(v, ensure_ascii=False, indent=4)
        assert_eq!(
            indented(&v, 4),
            "{\n    \"a\": [\n        1,\n        2.5,\n        \"é\\n\"\n    ],\n    \"b\": {},\n    \"c\": [],\n    \"d\": {\n        \"e\": null,\n        \"f\": true\n    }\n}"
        );
    }
}
