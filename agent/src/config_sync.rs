//! Config sync with riskfeat-configd: long-polls the configured namespaces,
//! applies incremental changes to a local copy and publishes
//! `config/<namespace>.json` atomically.
//!
//! PLACEHOLDER written by the agent owner so that `main.rs` / `config.rs`
//! compile against the agreed signatures. The configd owner replaces the
//! body of this module (it may become a directory `config_sync/`); keep
//! `Settings`, `SyncStatus` and `run` with these shapes, or tell the agent
//! owner what changed.

use riskfeat_shared::layout::SharedDir;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The `[configd]` section of the agent's config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Base URL of riskfeat-configd, e.g. `http://127.0.0.1:8070`.
    pub addr: String,
    /// File holding the bearer token (read role).
    pub token_file: PathBuf,
    /// Namespaces to watch and publish.
    #[serde(default = "default_namespaces")]
    pub namespaces: Vec<String>,
    /// Long-poll timeout asked of configd, seconds.
    #[serde(default = "default_poll_timeout_s")]
    pub poll_timeout_s: u64,
}

fn default_namespaces() -> Vec<String> {
    vec!["features".to_string()]
}

fn default_poll_timeout_s() -> u64 {
    30
}

impl Settings {
    /// Every problem with the settings, all at once (empty when valid).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.addr.is_empty() {
            out.push("configd.addr is empty".to_string());
        }
        for ns in &self.namespaces {
            if !riskfeat_shared::layout::valid_namespace(ns) {
                out.push(format!("configd.namespaces: invalid namespace name {ns:?}"));
            }
        }
        out
    }
}

/// What the sync loop reports to `/status` and metrics.
#[derive(Debug, Default)]
pub struct SyncStatus {
    inner: Mutex<SyncState>,
}

#[derive(Debug, Default, Clone, Serialize)]
struct SyncState {
    versions: std::collections::BTreeMap<String, u64>,
    last_error: Option<String>,
}

impl SyncStatus {
    /// An empty status.
    pub fn new() -> Self {
        Self::default()
    }

    /// The status as JSON for `/status` (never a token).
    pub fn to_json(&self) -> serde_json::Value {
        let state = self.inner.lock().expect("sync status lock").clone();
        serde_json::to_value(state).unwrap_or(serde_json::Value::Null)
    }
}

/// Runs the sync loop until `shutdown` turns true.
pub async fn run(
    settings: Settings,
    shared: SharedDir,
    status: Arc<SyncStatus>,
    registry: prometheus::Registry,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let _ = (settings, shared, status, registry);
    tracing::warn!("config sync is not implemented yet (placeholder)");
    let _ = shutdown.wait_for(|stop| *stop).await;
}
