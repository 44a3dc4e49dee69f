//! The calls a model wrote, found in its answer's text; and, while the answer streams, where
//! the text that may still become a call starts (so it is held back, not sent as content).

use super::ToolFormat;
use alloc::string::String;
use alloc::vec::Vec;

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
/// Llama 3.1 may start a JSON call with its `<|python_tag|>` token.
const PYTHON_TAG: &str = "<|python_tag|>";
/// Mistral's calls marker (a control token in its vocabularies, or text).
const MISTRAL_CALLS: &str = "[TOOL_CALLS]";

/// An answer split into its prose and the JSON of each call it made.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ToolReply {
    /// The text outside the calls, trimmed.
    pub content: String,
    /// Each call's JSON object as the model wrote it (Hermes, Mistral: `name` and
    /// `arguments`; Llama 3: `name` and `parameters`), not yet parsed: the caller has the JSON parser.
    pub calls: Vec<String>,
}

impl ToolFormat {
    /// The answer's calls and the text around them. Text that only looks like a call is
    /// found here all the same; the caller parses each call and treats the answer as plain
    /// content if one is not JSON.
    pub fn parse(self, text: &str) -> ToolReply {
        match self {
            ToolFormat::Hermes => hermes(text),
            ToolFormat::Llama3Json => llama3(text),
            ToolFormat::Mistral => mistral(text),
        }
    }

    /// The byte offset in a streaming answer's `text` from which it may be (the start of) a
    /// call: what precedes it can be sent as content now, the rest waits for more text.
    pub fn held_from(self, text: &str) -> usize {
        match self {
            ToolFormat::Hermes => held_from_marker(text, HERMES_OPEN),
            ToolFormat::Mistral => held_from_marker(text, MISTRAL_CALLS),
            ToolFormat::Llama3Json => {
                let t = text.trim_start();
                let starts_call = t.is_empty()
                    || t.starts_with('{')
                    || t.starts_with(PYTHON_TAG)
                    || PYTHON_TAG.starts_with(t);
                if starts_call { 0 } else { text.len() }
            }
        }
    }
}

/// Where `marker`, or a prefix of it that ends `text`, starts (`text.len()` if neither).
fn held_from_marker(text: &str, marker: &str) -> usize {
    match text.find(marker) {
        Some(at) => at,
        None => text.len() - longest_suffix_prefix(text, marker),
    }
}

/// The length of the longest suffix of `text` that is a proper prefix of `marker`.
fn longest_suffix_prefix(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len() + 1))
        .rev()
        .find(|&n| text.is_char_boundary(text.len() - n) && text.ends_with(&marker[..n]))
        .unwrap_or(0)
}

fn hermes(text: &str) -> ToolReply {
    let Some(first) = text.find(HERMES_OPEN) else {
        return ToolReply {
            content: String::from(text.trim()),
            calls: Vec::new(),
        };
    };
    let mut content = String::from(text[..first].trim());
    let mut calls = Vec::new();
    let mut rest = &text[first..];
    while let Some(at) = rest.find(HERMES_OPEN) {
        let between = rest[..at].trim();
        if !between.is_empty() {
            if !content.is_empty() {
                content.push('\n');
            }
            content.push_str(between);
        }
        let body = &rest[at + HERMES_OPEN.len()..];
        // A model that ends its answer right after the object leaves the last block open.
        let (call, after) = match body.find(HERMES_CLOSE) {
            Some(end) => (&body[..end], &body[end + HERMES_CLOSE.len()..]),
            None => (body, ""),
        };
        calls.push(String::from(call.trim()));
        rest = after;
    }
    let tail = rest.trim();
    if !tail.is_empty() {
        if !content.is_empty() {
            content.push('\n');
        }
        content.push_str(tail);
    }
    ToolReply { content, calls }
}

fn llama3(text: &str) -> ToolReply {
    let t = text.trim();
    let t = t.strip_prefix(PYTHON_TAG).unwrap_or(t).trim_start();
    if !t.starts_with('{') {
        return ToolReply {
            content: String::from(text.trim()),
            calls: Vec::new(),
        };
    }
    // Several calls are written `; `-separated (the template writes them so too).
    ToolReply {
        content: String::new(),
        calls: split_top_level(t, b';')
            .0
            .into_iter()
            .map(|c| String::from(c.trim()))
            .filter(|c| !c.is_empty())
            .collect(),
    }
}

/// Mistral's calls: one JSON array after `[TOOL_CALLS]` (a space before it in v3), prose
/// only before the marker or after the array.
fn mistral(text: &str) -> ToolReply {
    let Some(at) = text.find(MISTRAL_CALLS) else {
        return ToolReply {
            content: String::from(text.trim()),
            calls: Vec::new(),
        };
    };
    let mut content = String::from(text[..at].trim());
    let body = text[at + MISTRAL_CALLS.len()..].trim_start();
    // An answer cut short may lack the closing `]`; one that lacks the `[` is one call.
    let (pieces, after) = match body.strip_prefix('[') {
        Some(inner) => split_top_level(inner, b','),
        None => (alloc::vec![body], ""),
    };
    let after = after.strip_prefix(']').unwrap_or(after).trim();
    if !after.is_empty() {
        if !content.is_empty() {
            content.push('\n');
        }
        content.push_str(after);
    }
    ToolReply {
        content,
        calls: pieces
            .into_iter()
            .map(|c| String::from(c.trim()))
            .filter(|c| !c.is_empty())
            .collect(),
    }
}

/// `text` split at `sep` where it is outside every JSON string and bracket, up to a closing
/// bracket that closes nothing in it: the pieces, and the text from that bracket on.
fn split_top_level(text: &str, sep: u8) -> (Vec<&str>, &str) {
    let (mut depth, mut in_string, mut escaped, mut start) = (0i32, false, false, 0);
    let mut pieces = Vec::new();
    for (i, &b) in text.as_bytes().iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth == 0 => {
                pieces.push(&text[start..i]);
                return (pieces, &text[i..]);
            }
            b'}' | b']' => depth -= 1,
            _ if b == sep && depth == 0 => {
                pieces.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    pieces.push(&text[start..]);
    (pieces, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hermes_calls_and_prose_come_apart() {
        let r = ToolFormat::Hermes.parse(
            "Let me look.\n<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", \"arguments\": {\"x\": \"</\"}}",
        );
        assert_eq!(r.content, "Let me look.");
        assert_eq!(
            r.calls,
            [
                "{\"name\": \"a\", \"arguments\": {}}",
                "{\"name\": \"b\", \"arguments\": {\"x\": \"</\"}}"
            ]
        );
        let plain = ToolFormat::Hermes.parse("  just words ");
        assert_eq!(
            (plain.content.as_str(), plain.calls.len()),
            ("just words", 0)
        );
    }

    #[test]
    fn llama3_calls_are_the_whole_answer() {
        let r = ToolFormat::Llama3Json
            .parse("<|python_tag|>{\"name\": \"a\", \"parameters\": {\"s\": \"x;y\"}}; {\"name\": \"b\", \"parameters\": {}}");
        assert_eq!(r.content, "");
        assert_eq!(
            r.calls,
            [
                "{\"name\": \"a\", \"parameters\": {\"s\": \"x;y\"}}",
                "{\"name\": \"b\", \"parameters\": {}}"
            ]
        );
        assert_eq!(ToolFormat::Llama3Json.parse("It is sunny.").calls.len(), 0);
    }

    #[test]
    fn mistral_calls_are_one_array_after_the_marker() {
        let r = ToolFormat::Mistral.parse(
            "Checking. [TOOL_CALLS] [{\"name\": \"a\", \"arguments\": {\"s\": \"x,]\"}, \"id\": \"abcdefghi\"}, {\"name\": \"b\", \"arguments\": {}}]",
        );
        assert_eq!(r.content, "Checking.");
        assert_eq!(
            r.calls,
            [
                "{\"name\": \"a\", \"arguments\": {\"s\": \"x,]\"}, \"id\": \"abcdefghi\"}",
                "{\"name\": \"b\", \"arguments\": {}}"
            ]
        );
        // Cut short before the `]`; no marker at all.
        let cut = ToolFormat::Mistral.parse("[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {}}");
        assert_eq!(cut.calls, ["{\"name\": \"a\", \"arguments\": {}}"]);
        assert_eq!(ToolFormat::Mistral.parse("[1, 2]").calls.len(), 0);
    }

    #[test]
    fn streaming_holds_back_what_may_become_a_call() {
        let h = |t: &str| ToolFormat::Hermes.held_from(t);
        assert_eq!(h("Hello"), 5);
        assert_eq!(h("Hello <tool"), 6);
        assert_eq!(h("Hello <tool_call>\n{"), 6);
        assert_eq!(h("a < b"), 5);
        assert_eq!(h("é<"), "é".len());
        let l = |t: &str| ToolFormat::Llama3Json.held_from(t);
        assert_eq!(l("  "), 0);
        assert_eq!(l(" {\"na"), 0);
        assert_eq!(l("<|pyth"), 0);
        assert_eq!(l("Sure"), 4);
        let m = |t: &str| ToolFormat::Mistral.held_from(t);
        assert_eq!(m("Hi [TOOL"), 3);
        assert_eq!(m("Hi [TOOL_CALLS][{"), 3);
        assert_eq!(m("[1]"), 3);
    }
}
