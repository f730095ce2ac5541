//! The production bootstrap files of `k8s/bootstrap/`, compiled into the
//! harness: [`crate::pg`] and [`crate::stack`] apply exactly these texts, so
//! what the tests exercise is what is deployed. [`FILES`] pairs each text
//! with its path, for the test that compares them with the files on disk.

use std::path::PathBuf;

/// Cluster roles: `feature_reader`, `vault_admin` (no password in the file).
pub const ROLES_SQL: &str = include_str!("../../k8s/bootstrap/postgres/00-roles.sql");
/// `transactions`, its index, and the grants to `feature_reader`.
pub const SCHEMA_SQL: &str = include_str!("../../k8s/bootstrap/postgres/01-schema.sql");
/// The optional static fallback login `riskfeat_fallback` (no password).
pub const FALLBACK_SQL: &str = include_str!("../../k8s/bootstrap/postgres/02-fallback.sql");
/// The agent's Vault policy.
pub const AGENT_POLICY_HCL: &str = include_str!("../../k8s/bootstrap/vault/agent-policy.hcl");
/// Creation statements of the `feature-reader` database role.
pub const CREATION_SQL: &str = include_str!("../../k8s/bootstrap/vault/creation.sql");
/// Revocation statements of the `feature-reader` database role.
pub const REVOCATION_SQL: &str = include_str!("../../k8s/bootstrap/vault/revocation.sql");

/// configd's JSON Schema of the `features` namespace (generated from the
/// worker's parameter rules; `worker/src/params_schema.rs` checks it).
pub const FEATURES_SCHEMA_JSON: &str =
    include_str!("../../k8s/bootstrap/configd/features.schema.json");

/// Name of the agent's policy and of its AppRole role.
pub const AGENT_POLICY: &str = "riskfeat-agent";
pub const APPROLE_ROLE: &str = "riskfeat-agent";
/// Mounts, database connection and role names (as in `bootstrap.sh`).
pub const APPROLE_MOUNT: &str = "approle";
pub const DB_MOUNT: &str = "database";
pub const DB_CONNECTION: &str = "riskfeat";
pub const DB_ROLE: &str = "feature-reader";

/// Every compiled-in file: (path relative to `k8s/bootstrap/`, contents).
pub const FILES: &[(&str, &str)] = &[
    ("postgres/00-roles.sql", ROLES_SQL),
    ("postgres/01-schema.sql", SCHEMA_SQL),
    ("postgres/02-fallback.sql", FALLBACK_SQL),
    ("vault/agent-policy.hcl", AGENT_POLICY_HCL),
    ("vault/creation.sql", CREATION_SQL),
    ("vault/revocation.sql", REVOCATION_SQL),
    ("configd/features.schema.json", FEATURES_SCHEMA_JSON),
];

/// `<workspace>/k8s/bootstrap`.
pub fn dir() -> PathBuf {
    crate::process::workspace_root()
        .join("k8s")
        .join("bootstrap")
}
