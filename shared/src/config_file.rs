//! `config/<namespace>.json`: one configuration namespace as published by the
//! agent (from riskfeat-configd) for the worker.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The contents of `config/<namespace>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSnapshot {
    pub namespace: String,
    /// The configd version of this namespace; grows with every publish.
    pub version: u64,
    /// Key to JSON value.
    pub items: BTreeMap<String, serde_json::Value>,
}

/// Why a config file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a valid config file: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
}

impl ConfigSnapshot {
    /// Reads and parses a config file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigFileError> {
        let (shown, bytes) =
            crate::read_named(path, |path, source| ConfigFileError::Read { path, source })?;
        serde_json::from_slice(&bytes).map_err(|source| ConfigFileError::Parse {
            path: shown,
            source,
        })
    }
}
