//! `worker.json`: the worker tells the agent which credential generation it
//! uses. The agent revokes an old lease only once the worker has moved past
//! it (or a grace period bounded by the old lease's expiry has ended).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The contents of `worker.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerAck {
    /// The credential generation every pooled connection now uses; older
    /// pools are drained and closed.
    pub generation: u64,
    /// The worker's process id (to tell a restarted worker apart).
    pub pid: u32,
    pub updated_at: DateTime<Utc>,
    /// Config version in force per namespace.
    #[serde(default)]
    pub config_versions: BTreeMap<String, u64>,
}

impl WorkerAck {
    /// Reads `worker.json`; `None` when it is missing or unreadable (the
    /// agent then waits for the grace period).
    pub fn load(path: &std::path::Path) -> Option<Self> {
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}
