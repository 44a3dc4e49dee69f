//! `inspect`: a human-readable dump of a GGUF file's header, metadata and tensor table.

use std::collections::BTreeMap;
use std::fmt::Write;

use inference_guest::gguf::{Gguf, Value};

/// Array elements shown before eliding the rest.
const ARRAY_PREVIEW: usize = 5;
/// Characters of a string shown before eliding the rest.
const STRING_PREVIEW: usize = 80;

/// Renders the report for a parsed file of `file_len` bytes.
pub fn report(g: &Gguf<'_>, file_len: usize) -> String {
    let mut s = String::new();
    // Writing into a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(
        s,
        "GGUF v{}, {file_len} bytes, alignment {}, data at offset {}",
        g.version(),
        g.alignment(),
        g.data_offset()
    );
    let _ = writeln!(s, "\nmetadata ({} keys):", g.metadata().len());
    for (key, value) in g.metadata() {
        let _ = writeln!(s, "  {key}: {} = {}", value.value_type(), show(value));
    }
    let _ = writeln!(s, "\ntensors ({}):", g.tensors().len());
    let width = g.tensors().iter().map(|t| t.name.len()).max().unwrap_or(4);
    let _ = writeln!(
        s,
        "  {:width$}  {:5}  {:16}  {:>12}",
        "name", "type", "dims", "bytes"
    );
    let mut by_type: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for t in g.tensors() {
        let dims = t
            .dims
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" x ");
        let _ = writeln!(
            s,
            "  {:width$}  {:5}  {dims:16}  {:>12}",
            t.name,
            t.ty.name(),
            t.data.len()
        );
        let entry = by_type.entry(t.ty.name()).or_default();
        *entry = (entry.0 + 1, entry.1 + t.data.len());
    }
    let _ = write!(s, "\ntotals:");
    for (ty, (n, bytes)) in by_type {
        let _ = write!(s, " {n}x{ty} ({bytes} bytes)");
    }
    s.push('\n');
    s
}

fn show(v: &Value<'_>) -> String {
    match v {
        Value::String(st) => show_str(st),
        Value::Array(elem, items) => {
            let shown: Vec<String> = items.iter().take(ARRAY_PREVIEW).map(show).collect();
            let more = if items.len() > ARRAY_PREVIEW {
                ", ..."
            } else {
                ""
            };
            format!("[{} x {elem}] [{}{more}]", items.len(), shown.join(", "))
        }
        Value::U8(x) => x.to_string(),
        Value::I8(x) => x.to_string(),
        Value::U16(x) => x.to_string(),
        Value::I16(x) => x.to_string(),
        Value::U32(x) => x.to_string(),
        Value::I32(x) => x.to_string(),
        Value::U64(x) => x.to_string(),
        Value::I64(x) => x.to_string(),
        Value::F32(x) => format!("{x:e}"),
        Value::F64(x) => format!("{x:e}"),
        Value::Bool(x) => x.to_string(),
    }
}

/// Quoted, escaped (so control characters cannot mess up the terminal) and shortened.
fn show_str(s: &str) -> String {
    let n = s.chars().count();
    let head: String = s.chars().take(STRING_PREVIEW).collect();
    let more = if n > STRING_PREVIEW {
        format!("... ({n} chars)")
    } else {
        String::new()
    };
    format!("{:?}{more}", head)
}
