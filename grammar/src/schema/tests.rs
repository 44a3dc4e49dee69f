use super::*;
use crate::error::GrammarError;
use crate::matcher::Matcher;
use alloc::sync::Arc;

fn matcher(schema: &str) -> Matcher {
    Matcher::new(Arc::new(compile_schema(schema).expect("schema compiles")))
}

fn accepts(schema: &str, text: &str) -> bool {
    let mut m = matcher(schema);
    m.accept_bytes(text.as_bytes()) && m.is_complete()
}

fn refused_keyword(schema: &str) -> (String, String) {
    match compile_schema(schema) {
        Err(SchemaError::Unsupported { keyword, pointer }) => (keyword, pointer),
        other => panic!("expected Unsupported for {schema}, got {other:?}"),
    }
}

#[test]
fn object_properties_in_schema_order_optional_ones_may_be_absent() {
    let s = r#"{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"string"},"c":{"type":"boolean"}},"required":["b"]}"#;
    assert!(accepts(s, r#"{"b":"x"}"#));
    assert!(accepts(s, r#"{"a":-12,"b":"x","c":true}"#));
    assert!(!accepts(s, r#"{"b":"x","a":1}"#), "in the schema's order");
    assert!(accepts(s, r#"{"b":"x", "c":false}"#));
    assert!(accepts(s, "{\n  \"b\": \"\\u00e9\\n\"\n}"));
    assert!(
        !accepts(s, r#"{"b":"x","c":true,"a":1}"#),
        "optional ones keep their order"
    );
    assert!(!accepts(s, r#"{"a":1}"#), "b is required");
    assert!(!accepts(s, r#"{"b":"x","d":1}"#), "no extra members");
    assert!(!accepts(s, r#"{"b":"x",}"#));
}

#[test]
fn arrays_counts_and_tuples() {
    let s = r#"{"type":"array","items":{"type":"number"},"minItems":1,"maxItems":3}"#;
    assert!(accepts(s, "[1]"));
    assert!(accepts(s, "[1.5e3, -0.25, 7]"));
    assert!(!accepts(s, "[]"));
    assert!(!accepts(s, "[1,2,3,4]"));
    assert!(!accepts(s, "[01]"));
    let t = r#"{"prefixItems":[{"type":"string"},{"type":"null"}]}"#;
    assert!(accepts(t, r#"["a", null]"#));
    assert!(!accepts(t, r#"["a"]"#));
}

#[test]
fn strings_enums_consts_and_nullable() {
    let s = r#"{"type":["string","null"],"minLength":2,"maxLength":3}"#;
    assert!(accepts(s, r#""ab""#));
    assert!(
        accepts(s, r#""é\"c""#),
        "characters, not bytes, and escapes count as one"
    );
    assert!(accepts(s, "null"));
    assert!(!accepts(s, r#""a""#));
    assert!(!accepts(s, r#""abcd""#));
    let e = r#"{"enum":["red",1,null,{"k":[true]}]}"#;
    assert!(accepts(e, r#""red""#) && accepts(e, "1") && accepts(e, r#"{"k":[true]}"#));
    assert!(!accepts(e, r#""blue""#));
    assert!(accepts(r#"{"const":"x"}"#, r#""x""#));
    assert!(accepts(
        r#"{"type":"string","format":"date"}"#,
        r#""2024-02-29""#
    ));
    assert!(!accepts(
        r#"{"type":"string","format":"date"}"#,
        r#""2024-13-01""#
    ));
    assert!(accepts(
        r#"{"format":"uuid"}"#,
        r#""123e4567-e89b-12d3-a456-426614174000""#
    ));
}

#[test]
fn strings_reject_control_characters_and_bad_utf8() {
    let s = r#"{"type":"string"}"#;
    assert!(!accepts(s, "\"a\nb\""));
    let mut m = matcher(s);
    assert!(
        m.accept_bytes(b"\"\xE2\x82"),
        "a character may end in a later token"
    );
    assert!(!m.clone().accept_bytes(b"\""), "but not be cut short");
    assert!(m.accept_bytes(b"\xAC\"") && m.is_complete());
    assert!(
        !matcher(s).accept_bytes(b"\"\xC0\x80"),
        "overlong encodings are not UTF-8"
    );
    assert!(
        !matcher(s).accept_bytes(b"\"\xED\xA0\x80"),
        "nor are surrogates"
    );
}

#[test]
fn recursive_refs_and_any_of() {
    let s = r##"{"$defs":{"node":{"type":"object","properties":{"v":{"type":"integer"},"kids":{"type":"array","items":{"$ref":"#/$defs/node"}}},"required":["v"]}},"$ref":"#/$defs/node"}"##;
    assert!(accepts(
        s,
        r#"{"v":1,"kids":[{"v":2},{"v":3,"kids":[{"v":4,"kids":[]}]}]}"#
    ));
    assert!(!accepts(s, r#"{"v":1,"kids":[{"kids":[]}]}"#));
    let a = r##"{"anyOf":[{"type":"integer"},{"$ref":"#/definitions/s"}],"definitions":{"s":{"type":"string"}}}"##;
    assert!(accepts(a, "12") && accepts(a, r#""x""#) && !accepts(a, "true"));
}

#[test]
fn any_value_and_json_object() {
    assert!(accepts("{}", r#"[1,{"a":null},"x",false]"#));
    assert!(accepts("true", "-3.5E+2"));
    let g = Arc::new(json_object_grammar());
    let mut m = Matcher::new(g.clone());
    assert!(m.accept_bytes(br#"{"a":[1,2,{"b":"c"}],"d":{}}"#) && m.is_complete());
    assert!(!Matcher::new(g).accept_bytes(b"[1]"));
}

#[test]
fn whitespace_is_bounded() {
    let s = r#"{"type":"object","properties":{"a":{"type":"integer"}}}"#;
    let mut m = matcher(s);
    assert!(m.accept_bytes(b"{\n"));
    assert!(m.accept_bytes(&[b' '; 20]));
    assert!(
        !m.accept_bytes(b" "),
        "21 spaces after a newline are too many"
    );
    assert!(
        !matcher(s).accept_bytes(b"{  "),
        "two spaces in a row need a newline first"
    );
}

#[test]
fn unsupported_keywords_are_named_with_their_pointer() {
    let (k, p) =
        refused_keyword(r#"{"type":"object","properties":{"a":{"type":"string","pattern":"^x"}}}"#);
    assert_eq!((k.as_str(), p.as_str()), ("pattern", "#/properties/a"));
    assert_eq!(refused_keyword(r#"{"not":{}}"#).0, "not");
    assert_eq!(refused_keyword(r#"{"if":{},"then":{}}"#).0, "if");
    assert_eq!(
        refused_keyword(r#"{"patternProperties":{}}"#).0,
        "patternProperties"
    );
    assert_eq!(
        refused_keyword(r#"{"type":"integer","minimum":0}"#).0,
        "minimum"
    );
    let (k, p) = refused_keyword(r#"{"anyOf":[{"type":"string"},{"allOf":[]}]}"#);
    assert_eq!((k.as_str(), p.as_str()), ("allOf", "#/anyOf/1"));
    assert!(refused_keyword(r#"{"format":"email"}"#).0.contains("email"));
}

#[test]
fn bad_refs_and_left_recursion_are_refused() {
    assert!(matches!(
        compile_schema(r#"{"$ref":"https://example.com/s.json"}"#),
        Err(SchemaError::Ref { .. })
    ));
    assert!(matches!(
        compile_schema(r##"{"$ref":"#/$defs/missing"}"##),
        Err(SchemaError::Ref { .. })
    ));
    assert!(matches!(
        compile_schema(r##"{"$defs":{"a":{"$ref":"#/$defs/a"}},"$ref":"#/$defs/a"}"##),
        Err(SchemaError::Grammar(GrammarError::LeftRecursion(_)))
    ));
    assert!(matches!(
        compile_schema(r##"{"anyOf":[{"$ref":"#"},{"type":"null"}]}"##),
        Err(SchemaError::Grammar(GrammarError::LeftRecursion(_)))
    ));
    assert!(matches!(compile_schema("{"), Err(SchemaError::NotJson)));
    assert!(matches!(
        compile_schema(r#"{"type":"string","maxLength":100000}"#),
        Err(SchemaError::Invalid { .. })
    ));
    assert!(matches!(
        compile_schema(r#"{"required":["x"],"properties":{}}"#),
        Err(SchemaError::Invalid { .. })
    ));
}

/// Random and mutated schemas: any answer but a panic or a hang is fine.
#[test]
fn random_schemas_never_panic() {
    const PIECES: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"type\"",
        "\"object\"",
        "\"array\"",
        "\"string\"",
        "\"properties\"",
        "\"items\"",
        "\"$ref\"",
        "\"#\"",
        "\"#/$defs/a\"",
        "\"$defs\"",
        "\"a\"",
        "\"anyOf\"",
        "\"enum\"",
        "\"const\"",
        "\"required\"",
        "\"minItems\"",
        "\"maxLength\"",
        "3",
        "-1",
        "1e9",
        "true",
        "false",
        "null",
        "\"prefixItems\"",
        "\"additionalProperties\"",
    ];
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut ok = 0;
    for _ in 0..3000 {
        let n = 1 + next() % 30;
        let mut text = String::new();
        for _ in 0..n {
            text.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
        }
        if let Ok(g) = compile_schema(&text) {
            ok += 1;
            let mut m = Matcher::new(Arc::new(g));
            let _ = m.accept_bytes(br#"{"a":[1,"x",null]}"#);
        }
    }
    assert!(ok > 0, "some random schemas should compile");
}
