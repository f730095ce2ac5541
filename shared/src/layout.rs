//! Where things live in the shared directory (default `/run/riskfeat`).
//!
//! ```text
//! /run/riskfeat/
//!   db.json                 agent -> worker   the credential in force (0640)
//!   config/<namespace>.json agent -> worker   feature parameters (0640)
//!   worker.json             worker -> agent   the generation the worker uses (0640)
//!   agent-state.json        agent only        token + leases to resume after a restart (0600)
//!   config-cache/           agent only        last known config per namespace (0600)
//!   agent.sock, worker.sock health endpoints (0660)
//! ```

use std::path::{Path, PathBuf};

/// The default shared directory in a pod.
pub const DEFAULT_SHARED_DIR: &str = "/run/riskfeat";

/// Paths inside one shared directory.
#[derive(Debug, Clone)]
pub struct SharedDir {
    root: PathBuf,
}

impl SharedDir {
    /// A layout rooted at `root`. Nothing is created.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The published credential.
    pub fn db_json(&self) -> PathBuf {
        self.root.join("db.json")
    }

    /// The directory of published config namespaces.
    pub fn config_dir(&self) -> PathBuf {
        self.root.join("config")
    }

    /// The published config of one namespace.
    pub fn config_json(&self, namespace: &str) -> PathBuf {
        self.config_dir().join(format!("{namespace}.json"))
    }

    /// The worker's acknowledgement.
    pub fn worker_ack(&self) -> PathBuf {
        self.root.join("worker.json")
    }

    /// The agent's private state (token, leases).
    pub fn agent_state(&self) -> PathBuf {
        self.root.join("agent-state.json")
    }

    /// The agent's private last-known config cache.
    pub fn config_cache_dir(&self) -> PathBuf {
        self.root.join("config-cache")
    }

    /// The agent's health socket.
    pub fn agent_socket(&self) -> PathBuf {
        self.root.join("agent.sock")
    }

    /// The worker's health socket.
    pub fn worker_socket(&self) -> PathBuf {
        self.root.join("worker.sock")
    }
}

/// True when `name` is a valid namespace name: 1-128 of `[A-Za-z0-9._-]`,
/// not starting with a dot. Used for file names, so it must never contain a
/// path separator.
pub fn valid_namespace(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names() {
        assert!(valid_namespace("features"));
        assert!(valid_namespace("risk.v2_a-b"));
        assert!(!valid_namespace(""));
        assert!(!valid_namespace("../etc"));
        assert!(!valid_namespace(".hidden"));
        assert!(!valid_namespace("a/b"));
    }
}
