//! The JSON Schemas (draft 2020-12) of the shared-dir files in
//! `docs/schemas/`: `db.json`, `config/<ns>.json` and `worker.json`, held
//! against files the real programs wrote (the end-to-end tests call
//! [`check_shared_dir`]) with `format` asserted, through the same validator
//! as the OpenAPI documents ([`crate::openapi::validate_json`]).

use crate::openapi::validate_json;
use crate::process::workspace_root;
use anyhow::{bail, Context};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// `docs/schemas/<name>.schema.json`.
pub fn schema_path(name: &str) -> PathBuf {
    workspace_root()
        .join("docs/schemas")
        .join(format!("{name}.schema.json"))
}

/// Checks `value` against the schema `name` (`db`, `config`, `worker`).
pub fn check_value(name: &str, value: &Value, what: &str) -> anyhow::Result<()> {
    let path = schema_path(name);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let schema: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    validate_json(&schema, value, what, &path, true)
}

/// Checks the JSON file `file` against the schema `name`.
pub fn check_file(name: &str, file: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let value: Value =
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", file.display()))?;
    check_value(name, &value, &file.display().to_string())
}

/// Checks every `db.json`, `worker.json` and `config/*.json` in the shared
/// dir `dir`; returns the schema names checked (an error when none of the
/// three kinds is there).
pub fn check_shared_dir(dir: &Path) -> anyhow::Result<Vec<&'static str>> {
    let mut checked = Vec::new();
    for (name, file) in [("db", "db.json"), ("worker", "worker.json")] {
        let path = dir.join(file);
        if path.exists() {
            check_file(name, &path)?;
            checked.push(name);
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir.join("config")) {
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "json") {
                check_file("config", &path)?;
                checked.push("config");
            }
        }
    }
    if checked.is_empty() {
        bail!("{}: no shared-dir file to check", dir.display());
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use riskfeat_shared::ack::WorkerAck;
    use riskfeat_shared::config_file::ConfigSnapshot;
    use riskfeat_shared::creds::{DbCredential, SslMode};
    use serde_json::json;

    fn db() -> Value {
        let mut c = DbCredential::example();
        c.replica.sslmode = SslMode::VerifyFull;
        serde_json::to_value(c).unwrap()
    }

    /// What the Rust types write passes; each kind of drift the readers
    /// would refuse fails, naming the field.
    #[test]
    fn schemas_accept_what_the_types_write_and_refuse_drift() {
        check_value("db", &db(), "db.json").unwrap();
        let config = ConfigSnapshot {
            namespace: "features".into(),
            version: 4,
            items: [("ma_window".to_string(), json!(10))].into(),
        };
        check_value("config", &serde_json::to_value(config).unwrap(), "config").unwrap();
        let ack = WorkerAck {
            generation: 3,
            pid: 7,
            updated_at: chrono::Utc::now(),
            config_versions: [("features".to_string(), 4)].into(),
        };
        let ack = serde_json::to_value(ack).unwrap();
        check_value("worker", &ack, "worker.json").unwrap();
        // What the Python example writes (an offset, microseconds).
        let py = json!({"generation": 1, "pid": 9, "updated_at": "2026-12-01T10:00:00.123456+00:00", "config_versions": {}});
        check_value("worker", &py, "reader.py's worker.json").unwrap();

        let mut fallback = db();
        fallback["fallback"] = json!(true);
        fallback["lease_id"] = json!("");
        check_value("db", &fallback, "fallback").unwrap();
        for (what, edit, want) in [
            ("extra field", json!({"colour": 1}), "colour"),
            ("generation 0", json!({"generation": 0}), "generation"),
            (
                "sslmode",
                json!({"replica": {"host": "pg", "port": 5433, "dbname": "r", "sslmode": "require"}}),
                "sslmode",
            ),
            ("dynamic without lease", json!({"lease_id": ""}), "lease_id"),
            ("not a time", json!({"expires_at": "soon"}), "expires_at"),
        ] {
            let mut v = db();
            for (k, x) in edit.as_object().unwrap() {
                v[k] = x.clone();
            }
            let err = check_value("db", &v, what).unwrap_err().to_string();
            assert!(err.contains(want), "{what}: {err}");
        }
        let mut v = ack.clone();
        v.as_object_mut().unwrap().remove("generation");
        assert!(check_value("worker", &v, "no generation").is_err());
        let bad_ns = json!({"namespace": "../x", "version": 1, "items": {}});
        assert!(check_value("config", &bad_ns, "bad namespace").is_err());
    }
}
