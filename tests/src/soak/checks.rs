//! The soak's checks, each a plain function over what was collected, so a
//! unit test can plant what it must find:
//!
//! - [`Secrets`]: every password, token and secret_id handed out during
//!   the run (read from `db.json` and `agent-state.json` while it runs, plus
//!   the fixed ones), and [`scan`], which looks for each of them in every
//!   process log;
//! - [`Known`]: the leases and usernames the agent's state file names;
//!   [`unknown`] what Vault (or PostgreSQL) holds beyond them;
//! - [`dynamic_roles`]: the roles the database engine created that are
//!   still in `pg_roles`.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Shorter strings are not looked for (they would match by chance).
pub const MIN_SECRET_LEN: usize = 8;

/// Keys of `db.json` and `agent-state.json` whose string values are secrets.
const SECRET_KEYS: &[&str] = &["password", "token", "secret_id"];

/// Every secret seen, with what it is ("password", "token", ...).
#[derive(Debug, Default, Clone)]
pub struct Secrets {
    by_value: BTreeMap<String, String>,
}

impl Secrets {
    /// Adds `value` as a `kind` (ignored when shorter than
    /// [`MIN_SECRET_LEN`]).
    pub fn add(&mut self, kind: &str, value: &str) {
        if value.len() >= MIN_SECRET_LEN {
            self.by_value
                .entry(value.to_string())
                .or_insert_with(|| kind.to_string());
        }
    }

    /// Adds every string under a key of [`SECRET_KEYS`] anywhere in `v`
    /// (`{"token": {"token": "..."}}` included).
    pub fn add_json(&mut self, v: &Value) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match v {
                        Value::String(s) if SECRET_KEYS.contains(&k.as_str()) => self.add(k, s),
                        _ => self.add_json(v),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| self.add_json(v)),
            _ => {}
        }
    }

    /// How many secrets are known.
    pub fn len(&self) -> usize {
        self.by_value.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_value.is_empty()
    }

    /// How many of each kind.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for kind in self.by_value.values() {
            *counts.entry(kind.clone()).or_insert(0) += 1;
        }
        counts
    }
}

/// One process log, by name ("agent #2", "postgres primary"...).
#[derive(Debug, Clone)]
pub struct LogText {
    pub name: String,
    pub text: String,
}

/// A secret found in a log: where, and what kind (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub log: String,
    /// 1-based.
    pub line: usize,
    pub kind: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} log, line {}: a {}", self.log, self.line, self.kind)
    }
}

/// Every line of every log that contains one of `secrets`.
pub fn scan(logs: &[LogText], secrets: &Secrets) -> Vec<Finding> {
    let mut found = Vec::new();
    for log in logs {
        for (i, line) in log.text.lines().enumerate() {
            for (value, kind) in &secrets.by_value {
                if line.contains(value.as_str()) {
                    found.push(Finding {
                        log: log.name.clone(),
                        line: i + 1,
                        kind: kind.clone(),
                    });
                }
            }
        }
    }
    found
}

/// Reads the files that name secrets (`db.json`, `agent-state.json`) every
/// 200 ms while the soak runs, so every credential and token issued is
/// known to [`scan`], also those that lived between two faults.
pub struct SecretSampler {
    secrets: Arc<Mutex<Secrets>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl SecretSampler {
    /// Starts sampling `files` (a missing or half-read file is skipped);
    /// `initial` are the secrets known from the start.
    pub fn start(files: Vec<PathBuf>, initial: Secrets) -> SecretSampler {
        let secrets = Arc::new(Mutex::new(initial));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (secrets.clone(), stop.clone());
        let task = tokio::spawn(async move {
            loop {
                // One last round after the stop: the final state too.
                let last = st.load(Ordering::Relaxed);
                for f in &files {
                    if let Some(v) = read_json(f) {
                        s.lock().unwrap().add_json(&v);
                    }
                }
                if last {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        SecretSampler {
            secrets,
            stop,
            task,
        }
    }

    /// Stops after one more round; every secret seen.
    pub async fn finish(self) -> Secrets {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let s = self.secrets.lock().unwrap().clone();
        s
    }
}

/// A JSON file, or `None` when missing or not (yet) JSON.
pub fn read_json(path: &std::path::Path) -> Option<Value> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// The leases (ids) and usernames a state file names: every object with a
/// `lease_id` string, wherever it is.
#[derive(Debug, Default, Clone)]
pub struct Known {
    pub lease_ids: BTreeSet<String>,
    pub usernames: BTreeSet<String>,
}

impl Known {
    pub fn from_state(v: &Value) -> Known {
        let mut k = Known::default();
        k.walk(v);
        k
    }

    fn walk(&mut self, v: &Value) {
        match v {
            Value::Object(map) => {
                if let Some(id) = map.get("lease_id").and_then(Value::as_str) {
                    self.lease_ids.insert(id.to_string());
                    if let Some(user) = map.get("username").and_then(Value::as_str) {
                        self.usernames.insert(user.to_string());
                    }
                }
                map.values().for_each(|v| self.walk(v));
            }
            Value::Array(items) => items.iter().for_each(|v| self.walk(v)),
            _ => {}
        }
    }
}

/// The items of `held` not in `known`, sorted.
pub fn unknown(held: &[String], known: &BTreeSet<String>) -> Vec<String> {
    let mut left: Vec<String> = held
        .iter()
        .filter(|h| !known.contains(*h))
        .cloned()
        .collect();
    left.sort();
    left
}

/// Roles the database engine created (`v-...`, Vault's username template)
/// still in `pg_roles` on the server `db` is connected to.
pub async fn dynamic_roles(db: &tokio_postgres::Client) -> anyhow::Result<Vec<String>> {
    Ok(db
        .query(
            "SELECT rolname::text FROM pg_roles WHERE rolname LIKE 'v-%' ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn log(name: &str, text: &str) -> LogText {
        LogText {
            name: name.into(),
            text: text.into(),
        }
    }

    #[test]
    fn a_planted_secret_is_found_and_named_without_its_value() {
        let mut secrets = Secrets::default();
        secrets.add_json(&json!({
            "token": {"token": "hvs.PLANTEDtoken123", "serial": 1},
            "current": {"lease_id": "database/creds/x/1", "password": "A1b2C3d4-planted"},
            "retiring": [{"password": "old-password-99"}],
        }));
        secrets.add("secret_id", "0f1e2d3c-secret-id");
        secrets.add("password", "short");
        assert_eq!(secrets.len(), 4, "{secrets:?}");
        let logs = [
            log("worker", "all fine\nconnected as v-x-1\n"),
            log(
                "agent #2",
                "line one\nDEBUG login body {\"secret_id\":\"0f1e2d3c-secret-id\"}\n",
            ),
            log("configd", "old-password-99 in an error\n"),
        ];
        let found = scan(&logs, &secrets);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].to_string(), "agent #2 log, line 2: a secret_id");
        assert_eq!(found[1].to_string(), "configd log, line 1: a password");
        // The report never shows the secret itself.
        assert!(!found.iter().any(|f| f.to_string().contains("old-password")));
        assert!(scan(&logs[..1], &secrets).is_empty());
    }

    #[test]
    fn a_lease_or_role_the_state_does_not_name_is_reported() {
        let state = json!({
            "current": {"lease_id": "database/creds/feature-reader/a", "username": "v-a"},
            "retiring": [{"lease_id": "database/creds/feature-reader/b", "username": "v-b"}],
        });
        let known = Known::from_state(&state);
        let in_vault: Vec<String> = ["a", "b", "planted"]
            .iter()
            .map(|k| format!("database/creds/feature-reader/{k}"))
            .collect();
        assert_eq!(
            unknown(&in_vault, &known.lease_ids),
            ["database/creds/feature-reader/planted"]
        );
        let roles = ["v-b".to_string(), "v-planted".to_string()];
        assert_eq!(unknown(&roles, &known.usernames), ["v-planted"]);
        assert!(unknown(&in_vault[..2], &known.lease_ids).is_empty());
    }
}
