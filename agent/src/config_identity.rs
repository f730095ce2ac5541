//! Who this agent is to configd and what it reports back: the client id
//! and labels sent on every configd request (gray releases select by
//! them), and, on every watch, the version of each namespace it published,
//! the version the worker has in force and what the worker rejected (from
//! the worker's `/status` on its health socket; configd's rollout view).

use crate::config::ConfigdSettings as Settings;
use riskfeat_shared::health::{request, ProbeKind};
use riskfeat_shared::layout::SharedDir;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// The header carrying the client id.
pub const CLIENT_ID_HEADER: &str = "riskfeat-client-id";
/// The header carrying the labels, `key=value` separated by commas.
pub const CLIENT_LABELS_HEADER: &str = "riskfeat-client-labels";

/// The client id: `configd.client_id`, else `$POD_NAME`, else the host
/// name (a pod's name in Kubernetes).
pub fn client_id(settings: &Settings) -> String {
    settings
        .client_id
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// Text configd accepts in a label (Kubernetes label keys and values fit).
fn label_ok(s: &str) -> bool {
    s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
}

/// Parses a downward API labels file: one `key="value"` per line (labels
/// configd would refuse are left out).
pub fn parse_labels_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .filter(|(k, v)| !k.is_empty() && label_ok(k) && label_ok(v))
        .collect()
}

/// The labels: `configd.labels`, then those of `configd.labels_file`
/// (read again every time, as the downward API updates it in place; an
/// unreadable file adds none).
pub fn labels(settings: &Settings) -> BTreeMap<String, String> {
    let mut out = settings.labels.clone();
    if let Some(path) = &settings.labels_file {
        match std::fs::read_to_string(path) {
            Ok(text) => out.extend(parse_labels_file(&text)),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "labels_file unreadable")
            }
        }
    }
    out
}

/// The identity headers of every configd request.
pub fn headers(settings: &Settings) -> reqwest::header::HeaderMap {
    let mut h = reqwest::header::HeaderMap::new();
    if let Ok(v) = client_id(settings).parse() {
        h.insert(CLIENT_ID_HEADER, v);
    }
    let labels: Vec<String> = labels(settings)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if let Ok(v) = labels.join(",").parse() {
        h.insert(CLIENT_LABELS_HEADER, v);
    }
    h
}

/// The worker's config state from its `/status` (`config.namespace`,
/// `config.version`, `config.error.message`); None when it does not answer.
async fn worker_config(shared: &SharedDir) -> Option<Value> {
    let (_, body) = request(
        &shared.worker_socket(),
        ProbeKind::Status,
        Duration::from_secs(2),
    )
    .await
    .ok()?;
    let v: Value = serde_json::from_str(&body).ok()?;
    Some(v["config"].clone())
}

/// The report sent with a watch: per namespace `{"applied", "in_force",
/// "rejected": null | {"version", "reason"}}`. `applied` are the versions
/// this agent published.
pub async fn report(shared: &SharedDir, applied: &BTreeMap<String, u64>) -> Value {
    let worker = worker_config(shared).await;
    let mut out = serde_json::Map::new();
    for (ns, v) in applied {
        let mine = worker
            .as_ref()
            .filter(|w| w["namespace"].as_str() == Some(ns.as_str()));
        let in_force = mine.and_then(|w| w["version"].as_u64());
        let rejected = mine
            .and_then(|w| w["error"]["message"].as_str())
            .filter(|_| in_force != Some(*v))
            .map(|reason| json!({"version": v, "reason": reason}));
        out.insert(
            ns.clone(),
            json!({"applied": v, "in_force": in_force, "rejected": rejected}),
        );
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downward_api_labels_parse() {
        let l = parse_labels_file(
            "app=\"riskfeat\"\ncanary=\"true\"\n\npod-template-hash=\"abc\"\nodd=\"a,b\"\n",
        );
        assert_eq!(l["canary"], "true");
        assert_eq!(l["app"], "riskfeat");
        assert_eq!(l.len(), 3);
    }
}
