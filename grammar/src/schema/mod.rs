//! JSON schema → grammar: the subset llama.cpp's `json-schema-to-grammar` covers, with every
//! other constraint keyword refused by name and JSON pointer instead of ignored.

mod object;
mod prims;
mod tools;

pub use tools::{
    CallStyle, NoCallAnswer, ToolSchema, tool_calls_grammar, tool_calls_or_answer_grammar,
};

use crate::error::SchemaError;
use crate::json::Json;
use crate::rules::{Builder, Expr, Grammar};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use prims::Prims;

/// Keywords that only describe: accepted and ignored.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "$schema",
    "$id",
    "$comment",
    "default",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$defs",
    "definitions",
];

/// Keywords this compiler turns into grammar.
const SUPPORTED: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "prefixItems",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "format",
    "enum",
    "const",
    "anyOf",
    "oneOf",
    "$ref",
];

/// Counts above this (`maxLength`, `minItems`, ...) are refused: each count is a rule.
const MAX_COUNT: u64 = 4096;

/// Compiles the JSON schema `text` into a grammar for one JSON value of that schema.
pub fn compile_schema(text: &str) -> Result<Grammar, SchemaError> {
    let root = Json::parse(text).ok_or(SchemaError::NotJson)?;
    compile_value(&root)
}

/// [`compile_schema`] on an already parsed schema.
pub fn compile_value(root: &Json) -> Result<Grammar, SchemaError> {
    let mut b = Builder::new();
    let prims = Prims::new(&mut b)?;
    let (mut b, top) = compile_document(b, prims, root)?;
    let start = b.rule("root", &Expr::Seq(alloc::vec![Expr::Rule(prims.ws), top]))?;
    Ok(b.finish(start)?)
}

/// The expression for one value of the schema document `root` (its `$ref`s resolved within
/// it), its rules added to `b`.
pub(crate) fn compile_document(
    b: Builder,
    prims: Prims,
    root: &Json,
) -> Result<(Builder, Expr), SchemaError> {
    let mut c = Compiler {
        b,
        prims,
        root,
        refs: BTreeMap::new(),
        pending: Vec::new(),
    };
    let top = c.compile(root, "#")?;
    // Each `$ref` target once, however many places name it (recursion included).
    while let Some((rule, pointer)) = c.pending.pop() {
        let target = resolve(root, &pointer).ok_or_else(|| SchemaError::Ref {
            reference: pointer.clone(),
            pointer: pointer.clone(),
        })?;
        let e = c.compile(target, &pointer)?;
        c.b.define(rule, &e)?;
    }
    Ok((c.b, top))
}

/// A grammar for any JSON object (`response_format: {"type": "json_object"}`).
pub fn json_object_grammar() -> Grammar {
    let mut b = Builder::new();
    // Neither step can fail: the grammar is fixed, small and not left-recursive.
    let build = |b: &mut Builder| -> Result<u32, SchemaError> {
        let prims = Prims::new(b)?;
        let obj = prims.object_of(b, Expr::Rule(prims.value))?;
        Ok(b.rule("root", &Expr::Seq(alloc::vec![Expr::Rule(prims.ws), obj]))?)
    };
    match build(&mut b).and_then(|r| Ok(b.finish(r)?)) {
        Ok(g) => g,
        Err(e) => unreachable!("the fixed json_object grammar failed to build: {e}"),
    }
}

pub(crate) struct Compiler<'s> {
    pub(crate) b: Builder,
    pub(crate) prims: Prims,
    root: &'s Json,
    /// `$ref` pointer → its rule.
    refs: BTreeMap<String, u32>,
    /// Rules declared for a `$ref` whose target is not compiled yet.
    pending: Vec<(u32, String)>,
}

pub(crate) fn unsupported(keyword: &str, pointer: &str) -> SchemaError {
    SchemaError::Unsupported {
        keyword: keyword.into(),
        pointer: pointer.into(),
    }
}

pub(crate) fn invalid(keyword: &str, pointer: &str, why: &'static str) -> SchemaError {
    SchemaError::Invalid {
        keyword: keyword.into(),
        pointer: pointer.into(),
        why,
    }
}

/// A JSON pointer one level down (`~` and `/` escaped as RFC 6901 says).
pub(crate) fn child(pointer: &str, key: &str) -> String {
    format!("{pointer}/{}", key.replace('~', "~0").replace('/', "~1"))
}

/// The value a local reference (`#`, `#/$defs/a`, `#/definitions/a/items`) points at.
fn resolve<'j>(root: &'j Json, reference: &str) -> Option<&'j Json> {
    let path = reference.strip_prefix('#')?;
    if path.is_empty() {
        return Some(root);
    }
    let mut at = root;
    for token in path.strip_prefix('/')?.split('/') {
        let token = token.replace("~1", "/").replace("~0", "~");
        at = match at {
            Json::Object(_) => at.get(&token)?,
            Json::Array(items) => items.get(token.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(at)
}

impl Compiler<'_> {
    /// The expression for one value of `schema` (found at `pointer`), whitespace included.
    pub(crate) fn compile(&mut self, schema: &Json, pointer: &str) -> Result<Expr, SchemaError> {
        let members = match schema {
            Json::Bool(true) => return Ok(Expr::Rule(self.prims.value)),
            Json::Object(m) => m,
            _ => {
                return Err(invalid(
                    "schema",
                    pointer,
                    "a schema must be an object or true",
                ));
            }
        };
        for (k, _) in members {
            if !SUPPORTED.contains(&k.as_str()) && !ANNOTATIONS.contains(&k.as_str()) {
                return Err(unsupported(k, pointer));
            }
        }
        if let Some(r) = schema.get("$ref") {
            return self.reference(schema, r, pointer);
        }
        if let Some(c) = schema.get("const") {
            return Ok(self.literal(c));
        }
        if let Some(e) = schema.get("enum") {
            let Json::Array(values) = e else {
                return Err(invalid("enum", pointer, "must be an array"));
            };
            if values.is_empty() {
                return Err(invalid("enum", pointer, "must not be empty"));
            }
            return Ok(Expr::Alt(values.iter().map(|v| self.literal(v)).collect()));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(list) = schema.get(key) {
                return self.any_of(list, &child(pointer, key));
            }
        }
        match schema.get("type") {
            None => self.untyped(schema, pointer),
            Some(Json::Str(t)) => self.typed(schema, t, pointer),
            Some(Json::Array(types)) if !types.is_empty() => {
                let mut alts = Vec::new();
                for t in types {
                    let t = t
                        .as_str()
                        .ok_or_else(|| invalid("type", pointer, "types must be strings"))?;
                    alts.push(self.typed(schema, t, pointer)?);
                }
                Ok(Expr::Alt(alts))
            }
            Some(_) => Err(invalid(
                "type",
                pointer,
                "must be a string or non-empty array",
            )),
        }
    }

    /// `$ref`: the target's rule (declared now, compiled once later).
    fn reference(&mut self, schema: &Json, r: &Json, pointer: &str) -> Result<Expr, SchemaError> {
        if let Json::Object(m) = schema
            && let Some((k, _)) = m
                .iter()
                .find(|(k, _)| k != "$ref" && !ANNOTATIONS.contains(&k.as_str()))
        {
            // Keywords beside `$ref` would have to hold together with it (an intersection).
            return Err(unsupported(k, pointer));
        }
        let reference = r
            .as_str()
            .ok_or_else(|| invalid("$ref", pointer, "must be a string"))?;
        if resolve(self.root, reference).is_none() {
            return Err(SchemaError::Ref {
                reference: reference.into(),
                pointer: pointer.into(),
            });
        }
        if let Some(&rule) = self.refs.get(reference) {
            return Ok(Expr::Rule(rule));
        }
        let rule = self.b.declare(reference);
        self.refs.insert(reference.into(), rule);
        self.pending.push((rule, reference.into()));
        Ok(Expr::Rule(rule))
    }

    /// Exactly `v` as compact JSON, then whitespace.
    fn literal(&self, v: &Json) -> Expr {
        let mut text = String::new();
        v.to_compact(&mut text);
        self.prims.tok(Expr::lit(&text))
    }

    fn any_of(&mut self, list: &Json, pointer: &str) -> Result<Expr, SchemaError> {
        let key = pointer.rsplit('/').next().unwrap_or("anyOf");
        let Json::Array(subs) = list else {
            return Err(invalid(key, pointer, "must be an array"));
        };
        if subs.is_empty() {
            return Err(invalid(key, pointer, "must not be empty"));
        }
        let mut alts = Vec::new();
        for (i, s) in subs.iter().enumerate() {
            alts.push(self.compile(s, &child(pointer, &i.to_string()))?);
        }
        Ok(Expr::Alt(alts))
    }

    /// No `type`: guessed from the keywords present, else any value.
    fn untyped(&mut self, schema: &Json, pointer: &str) -> Result<Expr, SchemaError> {
        let has = |k: &str| schema.get(k).is_some();
        if has("properties") || has("additionalProperties") || has("required") {
            self.typed(schema, "object", pointer)
        } else if has("items") || has("prefixItems") || has("minItems") || has("maxItems") {
            self.typed(schema, "array", pointer)
        } else if has("minLength") || has("maxLength") || has("format") {
            self.typed(schema, "string", pointer)
        } else {
            Ok(Expr::Rule(self.prims.value))
        }
    }

    fn typed(&mut self, schema: &Json, ty: &str, pointer: &str) -> Result<Expr, SchemaError> {
        let p = &self.prims;
        Ok(match ty {
            "object" => self.object(schema, pointer)?,
            "array" => self.array(schema, pointer)?,
            "string" => self.string(schema, pointer)?,
            "number" => p.tok(prims::number_expr()),
            "integer" => p.tok(prims::integer_expr()),
            "boolean" => p.tok(Expr::Alt(alloc::vec![
                Expr::lit("true"),
                Expr::lit("false")
            ])),
            "null" => p.tok(Expr::lit("null")),
            _ => return Err(invalid("type", pointer, "unknown type name")),
        })
    }

    fn string(&mut self, schema: &Json, pointer: &str) -> Result<Expr, SchemaError> {
        let quote = || Expr::lit("\"");
        if let Some(f) = schema.get("format") {
            let name = f
                .as_str()
                .ok_or_else(|| invalid("format", pointer, "must be a string"))?;
            let contents = prims::format_expr(name)
                .ok_or_else(|| unsupported(&format!("format: {name}"), pointer))?;
            if schema.get("minLength").is_some() || schema.get("maxLength").is_some() {
                return Err(unsupported("minLength/maxLength with format", pointer));
            }
            return Ok(self
                .prims
                .tok(Expr::Seq(alloc::vec![quote(), contents, quote()])));
        }
        let (min, max) = self.counts(schema, "minLength", "maxLength", pointer)?;
        if min == 0 && max.is_none() {
            return Ok(Expr::Rule(self.prims.string));
        }
        let chars = Expr::repeat(Expr::Rule(self.prims.ch), min, max);
        Ok(self
            .prims
            .tok(Expr::Seq(alloc::vec![quote(), chars, quote()])))
    }

    /// A `min`/`max` pair of counts, checked (`max` ≥ `min`, both ≤ [`MAX_COUNT`]).
    pub(crate) fn counts(
        &self,
        schema: &Json,
        min_key: &str,
        max_key: &str,
        pointer: &str,
    ) -> Result<(u32, Option<u32>), SchemaError> {
        let read = |key: &str| -> Result<Option<u32>, SchemaError> {
            match schema.get(key) {
                None => Ok(None),
                Some(v) => match v.as_count() {
                    Some(n) if n <= MAX_COUNT => Ok(Some(n as u32)),
                    Some(_) => Err(invalid(key, pointer, "counts above 4096 are not supported")),
                    None => Err(invalid(key, pointer, "must be a non-negative integer")),
                },
            }
        };
        let min = read(min_key)?.unwrap_or(0);
        let max = read(max_key)?;
        if max.is_some_and(|m| m < min) {
            return Err(invalid(max_key, pointer, "is smaller than the minimum"));
        }
        Ok((min, max))
    }
}

#[cfg(test)]
mod tests;
