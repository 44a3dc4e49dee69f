//! Objects and arrays.
//!
//! An object's properties come in the schema's order (optional ones may be left out; unlike
//! llama.cpp, required ones are not moved first, so a model writes the fields in the order
//! the caller declared them), then (when `additionalProperties` allows them) extra members. Without `properties`, a `type: object`
//! is any object unless `additionalProperties` says otherwise. With `properties`, a missing
//! `additionalProperties` means none (llama.cpp's reading, and what OpenAI's strict mode
//! asks for anyway).

use super::{Compiler, child, invalid, unsupported};
use crate::error::SchemaError;
use crate::json::{Json, write_string};
use crate::rules::Expr;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

impl Compiler<'_> {
    pub(super) fn object(&mut self, schema: &Json, pointer: &str) -> Result<Expr, SchemaError> {
        let extra = self.additional(schema, pointer)?;
        let props = match schema.get("properties") {
            None => {
                let value = extra.unwrap_or(Expr::Rule(self.prims.value));
                return Ok(self.prims.object_of(&mut self.b, value)?);
            }
            Some(Json::Object(m)) => m,
            Some(_) => return Err(invalid("properties", pointer, "must be an object")),
        };
        let required = self.required(schema, props, pointer)?;
        let props_ptr = child(pointer, "properties");
        let mut members = Vec::new();
        for (name, sub) in props {
            let value = self.compile(sub, &child(&props_ptr, name))?;
            let mut key = String::new();
            write_string(name, &mut key);
            let kv = Expr::Seq(vec![
                self.prims.tok(Expr::Lit(key.into_bytes())),
                self.prims.tok(Expr::lit(":")),
                value,
            ]);
            let rule = self.b.rule(&child(&props_ptr, name), &kv)?;
            members.push((Expr::Rule(rule), required.contains(&name.as_str())));
        }
        if let Some(value) = extra {
            // Extra members, any number, after the declared ones. Their keys are not kept
            // apart from the declared names (a known gap: see docs/structured-output.md).
            let kv = self.b.rule(
                "extra-kv",
                &Expr::Seq(vec![
                    Expr::Rule(self.prims.string),
                    self.prims.tok(Expr::lit(":")),
                    value,
                ]),
            )?;
            let more = Expr::repeat(Expr::Seq(vec![self.comma(), Expr::Rule(kv)]), 0, None);
            let kvs = self
                .b
                .rule("extra-kvs", &Expr::Seq(vec![Expr::Rule(kv), more]))?;
            members.push((Expr::Rule(kvs), false));
        }
        let body = self.members(members)?;
        Ok(Expr::Seq(vec![
            self.prims.tok(Expr::lit("{")),
            body,
            self.prims.tok(Expr::lit("}")),
        ]))
    }

    fn comma(&self) -> Expr {
        self.prims.tok(Expr::lit(","))
    }

    /// The members in order, optional ones possibly absent, commas only between those
    /// present. Built from the last member back, two rules per member: `first_i` (nothing
    /// written yet: no comma before member i) and `later_i` (a comma first):
    /// `first_i ::= kv_i later_{i+1} | first_{i+1}` (the second alternative if optional),
    /// `later_i ::= "," kv_i later_{i+1} | later_{i+1}`. Linear in the member count.
    fn members(&mut self, members: Vec<(Expr, bool)>) -> Result<Expr, SchemaError> {
        let (mut first, mut later) = (Expr::Seq(vec![]), Expr::Seq(vec![]));
        for (kv, required) in members.into_iter().rev() {
            let take_first = Expr::Seq(vec![kv.clone(), later.clone()]);
            let take_later = Expr::Seq(vec![self.comma(), kv, later.clone()]);
            let (f, l) = match required {
                true => (take_first, take_later),
                false => (
                    Expr::Alt(vec![take_first, first]),
                    Expr::Alt(vec![take_later, later]),
                ),
            };
            first = Expr::Rule(self.b.rule("members", &f)?);
            later = Expr::Rule(self.b.rule("more-members", &l)?);
        }
        Ok(first)
    }

    /// `additionalProperties`: `None` for no extra members, else the extra values' grammar.
    fn additional(&mut self, schema: &Json, pointer: &str) -> Result<Option<Expr>, SchemaError> {
        let declared = schema.get("properties").is_some();
        Ok(match schema.get("additionalProperties") {
            None if declared => None,
            None | Some(Json::Bool(true)) => Some(Expr::Rule(self.prims.value)),
            Some(Json::Bool(false)) => None,
            Some(s @ Json::Object(_)) => {
                Some(self.compile(s, &child(pointer, "additionalProperties"))?)
            }
            Some(_) => {
                return Err(invalid(
                    "additionalProperties",
                    pointer,
                    "must be a boolean or a schema",
                ));
            }
        })
    }

    /// The `required` names, each of which must be a declared property.
    fn required<'j>(
        &self,
        schema: &'j Json,
        props: &[(String, Json)],
        pointer: &str,
    ) -> Result<Vec<&'j str>, SchemaError> {
        let Some(list) = schema.get("required") else {
            return Ok(Vec::new());
        };
        let Json::Array(names) = list else {
            return Err(invalid("required", pointer, "must be an array of names"));
        };
        let mut out = Vec::new();
        for n in names {
            let n = n
                .as_str()
                .ok_or_else(|| invalid("required", pointer, "must be an array of names"))?;
            if !props.iter().any(|(k, _)| k == n) {
                return Err(invalid(
                    "required",
                    pointer,
                    "names a property not in `properties`",
                ));
            }
            out.push(n);
        }
        Ok(out)
    }

    pub(super) fn array(&mut self, schema: &Json, pointer: &str) -> Result<Expr, SchemaError> {
        let (min, max) = self.counts(schema, "minItems", "maxItems", pointer)?;
        let prefix = match (schema.get("prefixItems"), schema.get("items")) {
            (Some(Json::Array(p)), _) | (None, Some(Json::Array(p))) => Some(p),
            (Some(_), _) => return Err(invalid("prefixItems", pointer, "must be an array")),
            _ => None,
        };
        let Some(prefix) = prefix else {
            let item = match schema.get("items") {
                None => Expr::Rule(self.prims.value),
                Some(s) => {
                    let e = self.compile(s, &child(pointer, "items"))?;
                    Expr::Rule(self.b.rule(&child(pointer, "items"), &e)?)
                }
            };
            return Ok(self.prims.array_of(item, min, max));
        };
        if schema.get("minItems").is_some() || schema.get("maxItems").is_some() {
            return Err(unsupported("minItems/maxItems with prefixItems", pointer));
        }
        let key = if schema.get("prefixItems").is_some() {
            "prefixItems"
        } else {
            "items"
        };
        let mut seq = vec![self.prims.tok(Expr::lit("["))];
        for (i, s) in prefix.iter().enumerate() {
            if i > 0 {
                seq.push(self.comma());
            }
            seq.push(self.compile(s, &child(&child(pointer, key), &i.to_string()))?);
        }
        // 2020-12 tuples: `items` (a schema) covers the items after the prefix.
        if key == "prefixItems"
            && let Some(rest) = schema.get("items")
            && *rest != Json::Bool(false)
            && !prefix.is_empty()
        {
            let e = self.compile(rest, &child(pointer, "items"))?;
            seq.push(Expr::repeat(Expr::Seq(vec![self.comma(), e]), 0, None));
        }
        seq.push(self.prims.tok(Expr::lit("]")));
        Ok(Expr::Seq(seq))
    }
}
