//! The JSON Schema of the `features` namespace, generated from the rules
//! the worker checks in [`crate::params`]: one [`Rule`] per known key. It
//! is committed as `k8s/bootstrap/configd/features.schema.json`, which the
//! bootstrap installs in configd so that a bad value is refused at publish
//! instead of by every worker. Tests hold the file equal to
//! [`features_schema`] and the schema's verdict equal to the worker's on
//! every rule's boundaries.
//!
//! Rules across keys (`ma_window <= lookback`, `min_history <= lookback`,
//! `short_window_s <= long_window_s`) are beyond JSON Schema: the worker
//! still refuses those (the last good parameters stay).

use crate::params::{KNOWN_KEYS, MAX_WINDOW_S};
use serde_json::{json, Value};

/// What one key accepts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// An integer within `min..=max`.
    Int { min: i64, max: i64 },
    /// A number at least `min`.
    Number { min: f64 },
}

/// The rule of every key the worker reads ([`KNOWN_KEYS`], same order).
pub const RULES: [(&str, Rule); 9] = [
    ("lookback", Rule::Int { min: 1, max: 1000 }),
    // At most lookback, so at most lookback's maximum.
    ("ma_window", Rule::Int { min: 1, max: 1000 }),
    ("zscore_above", Rule::Number { min: 0.0 }),
    (
        "count_1h_above",
        Rule::Int {
            min: 0,
            max: i64::MAX,
        },
    ),
    ("amount_24h_above", Rule::Number { min: 0.0 }),
    // At most lookback, so at most lookback's maximum.
    ("min_history", Rule::Int { min: 0, max: 1000 }),
    ("std_epsilon", Rule::Number { min: 0.0 }),
    (
        "short_window_s",
        Rule::Int {
            min: 1,
            max: MAX_WINDOW_S as i64,
        },
    ),
    (
        "long_window_s",
        Rule::Int {
            min: 1,
            max: MAX_WINDOW_S as i64,
        },
    ),
];

/// The schema of the `features` namespace's items.
pub fn features_schema() -> Value {
    debug_assert_eq!(RULES.map(|(k, _)| k), KNOWN_KEYS);
    let mut properties = serde_json::Map::new();
    for (key, rule) in RULES {
        let p = match rule {
            Rule::Int { min, max } => json!({"type": "integer", "minimum": min, "maximum": max}),
            Rule::Number { min } => json!({"type": "number", "minimum": min}),
        };
        properties.insert(key.to_string(), p);
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": "Generated from riskfeat-worker's parameter rules (worker/src/params_schema.rs); do not edit.",
        "title": "riskfeat features namespace",
        "type": "object",
        "properties": properties,
        "additionalProperties": true
    })
}

/// The committed file's text: pretty JSON and a newline.
pub fn features_schema_text() -> String {
    let mut s = serde_json::to_string_pretty(&features_schema()).expect("JSON");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::FeatureParams;
    use riskfeat_shared::config_file::ConfigSnapshot;

    fn committed_path() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../k8s/bootstrap/configd/features.schema.json")
    }

    /// Checked: with a rule changed here (lookback max 1001) this test
    /// fails, naming the file and how to regenerate it.
    #[test]
    fn the_committed_schema_is_the_generated_one() {
        let path = committed_path();
        if std::env::var_os("RISKFEAT_WRITE_SCHEMA").is_some() {
            std::fs::write(&path, features_schema_text()).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == features_schema_text(),
            "{} is not the schema generated from worker/src/params_schema.rs; \
             regenerate it: RISKFEAT_WRITE_SCHEMA=1 cargo test -p riskfeat-worker committed_schema",
            path.display()
        );
    }

    /// Values around every rule's edges, as the items of one key alone
    /// plus [`context`] (so the rules across keys hold).
    fn probes(rule: Rule) -> Vec<Value> {
        let mut v = vec![json!("3"), json!(null), json!(true), json!([1]), json!({})];
        match rule {
            Rule::Int { min, max } => {
                for n in [
                    min.saturating_sub(1),
                    min,
                    min.saturating_add(1),
                    max.saturating_sub(1),
                    max,
                ] {
                    v.push(json!(n));
                }
                if max < i64::MAX {
                    v.push(json!(max + 1));
                }
                v.extend([json!(min as f64 + 0.5), json!(min as f64), json!(1e30)]);
            }
            Rule::Number { min } => {
                v.extend([
                    json!(min - 0.5),
                    json!(min),
                    json!(min + 0.5),
                    json!(7),
                    json!(1e300),
                ]);
            }
        }
        v
    }

    /// The other keys that let `key` range over its whole rule.
    fn context(key: &str) -> serde_json::Map<String, Value> {
        let pairs = match key {
            "lookback" => json!({"ma_window": 1, "min_history": 0}),
            "short_window_s" => json!({"lookback": 1000, "long_window_s": MAX_WINDOW_S}),
            "long_window_s" => json!({"lookback": 1000, "short_window_s": 1}),
            _ => json!({"lookback": 1000}),
        };
        pairs.as_object().unwrap().clone()
    }

    /// Checked: with `lookback`'s rule set to max 1001 (or the worker's
    /// integers refusing `5.0`) this test fails naming the key and value.
    #[test]
    fn the_schema_and_the_worker_agree_on_every_rule() {
        let schema = jsonschema::validator_for(&features_schema()).unwrap();
        for (key, rule) in RULES {
            for value in probes(rule) {
                let mut items = context(key);
                items.insert(key.to_string(), value.clone());
                let snap = ConfigSnapshot {
                    namespace: "features".into(),
                    version: 1,
                    items: items.clone().into_iter().collect(),
                };
                let worker = FeatureParams::from_snapshot(&snap).is_ok();
                let configd = schema.is_valid(&Value::Object(items));
                assert_eq!(
                    configd, worker,
                    "{key} = {value}: the schema says {configd}, the worker {worker}"
                );
            }
        }
    }
}
