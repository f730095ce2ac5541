//! Namespace schemas: a JSON Schema (2020-12 unless it says otherwise with
//! `$schema`) describes a namespace's items as one JSON object, key to
//! value. A publish, rollback, replace or gray start is checked against it
//! before anything is written: each violation names the key and the rule.
//!
//! The whole object is checked (so `required` and `additionalProperties`
//! work): a schema is meant for namespaces of parameters, not for ones of
//! 100,000 items.

use crate::cache::Items;
use crate::store::{Change, Op};
use serde::Serialize;

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The item key (None: the object as a whole).
    pub key: Option<String>,
    /// The JSON Schema keyword (`maximum`, `type`, `required`, ...).
    pub rule: String,
    /// What is wrong, e.g. `5000 is greater than the maximum of 1000`.
    pub message: String,
}

/// A compiled schema.
pub struct Schema(jsonschema::Validator);

impl Schema {
    /// Compiles `schema`; the error says why it is not a usable schema.
    /// References are resolved only inside the document (no network).
    pub fn compile(schema: &serde_json::Value) -> Result<Schema, String> {
        if !schema.is_object() && !schema.is_boolean() {
            return Err("a schema is a JSON object (or true/false)".into());
        }
        jsonschema::validator_for(schema)
            .map(Schema)
            .map_err(|e| format!("not a valid JSON Schema: {e}"))
    }

    /// Every violation of `items` (at most 20).
    pub fn check(&self, items: &serde_json::Value) -> Vec<Violation> {
        self.0
            .iter_errors(items)
            .take(20)
            .map(|e| {
                let key = e
                    .instance_path()
                    .iter()
                    .next()
                    .map(|s| s.to_string())
                    .or_else(|| match e.kind() {
                        jsonschema::error::ValidationErrorKind::Required { property } => {
                            property.as_str().map(str::to_string)
                        }
                        jsonschema::error::ValidationErrorKind::AdditionalProperties {
                            unexpected,
                        } => unexpected.first().cloned(),
                        _ => None,
                    });
                Violation {
                    key,
                    rule: e.kind().keyword().to_string(),
                    message: e.to_string(),
                }
            })
            .collect()
    }
}

/// `items` with `changes` applied, as one JSON object (values parsed).
pub fn object_after(items: &Items, changes: &[Change]) -> serde_json::Value {
    let mut out: serde_json::Map<String, serde_json::Value> = items
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::from_str(v).unwrap_or(serde_json::Value::Null),
            )
        })
        .collect();
    for c in changes {
        match c.op {
            Op::Upsert => {
                let v = c.value.as_deref().unwrap_or("null");
                out.insert(
                    c.key.clone(),
                    serde_json::from_str(v).unwrap_or(serde_json::Value::Null),
                );
            }
            Op::Delete => {
                out.remove(&c.key);
            }
        }
    }
    serde_json::Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn violations_name_the_key_and_the_rule() {
        let s = Schema::compile(&json!({
            "type": "object",
            "properties": {"lookback": {"type": "integer", "maximum": 1000}},
            "required": ["lookback"],
            "additionalProperties": false
        }))
        .unwrap();
        assert!(s.check(&json!({"lookback": 5})).is_empty());
        let v = s.check(&json!({"lookback": 5000}));
        assert_eq!(v[0].key.as_deref(), Some("lookback"));
        assert_eq!(v[0].rule, "maximum");
        assert!(v[0].message.contains("1000"), "{v:?}");
        let v = s.check(&json!({}));
        assert_eq!(
            (v[0].key.as_deref(), v[0].rule.as_str()),
            (Some("lookback"), "required")
        );
        let v = s.check(&json!({"lookback": 1, "typo": 2}));
        assert_eq!(v[0].key.as_deref(), Some("typo"));
        assert!(Schema::compile(&json!({"type": "nonsense"})).is_err());
        assert!(Schema::compile(&json!(3)).is_err());
    }
}
