//! `db.json`: the database credential the agent publishes for the worker.
//!
//! The file is replaced atomically (see [`crate::atomic`]) and carries a
//! `generation` that grows by one each time the agent publishes a *different*
//! credential. Renewing a lease rewrites `expires_at` but keeps the
//! generation: the worker rebuilds its pool only on a new generation.

use crate::secret::Secret;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where a database listens, and whether to reach it over TLS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    /// `disable` (default) or `verify-full` ([`crate::pg_tls`]).
    #[serde(default, skip_serializing_if = "SslMode::is_disable")]
    pub sslmode: SslMode,
}

impl Endpoint {
    /// Every problem with the address, named `<name>.<field>`; empty when
    /// valid.
    pub fn problems(&self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.host.is_empty() {
            out.push(format!("{name}.host is empty"));
        }
        if self.port == 0 {
            out.push(format!("{name}.port is 0"));
        }
        if self.dbname.is_empty() {
            out.push(format!("{name}.dbname is empty"));
        }
        out
    }
}

/// The contents of `db.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbCredential {
    /// Grows by one per distinct credential published; starts at 1.
    pub generation: u64,
    pub username: String,
    pub password: Secret,
    /// Vault lease id; empty for a static fallback credential.
    #[serde(default)]
    pub lease_id: String,
    pub lease_duration_s: u64,
    pub renewable: bool,
    pub issued_at: DateTime<Utc>,
    /// When the credential stops working at the latest, as known now.
    pub expires_at: DateTime<Utc>,
    /// True for the static limited-privilege fallback credential, used only
    /// while Vault cannot issue a dynamic one.
    #[serde(default)]
    pub fallback: bool,
    /// Where writes (and lag-policy reads) go.
    pub primary: Endpoint,
    /// Where the worker reads features.
    pub replica: Endpoint,
}

/// Why a `db.json` was rejected.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a valid credential file: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path}: invalid credential: {problems}")]
    Invalid { path: String, problems: String },
}

impl DbCredential {
    /// A valid credential for tests and examples: generation 1, user
    /// `v-approle-feature-abc`, password `pw`, primary `127.0.0.1:5432` and
    /// replica `127.0.0.1:5433` (database `riskfeat`, no TLS), an hour left.
    pub fn example() -> DbCredential {
        let now = Utc::now();
        let ep = |port| Endpoint {
            host: "127.0.0.1".into(),
            port,
            dbname: "riskfeat".into(),
            sslmode: SslMode::Disable,
        };
        DbCredential {
            generation: 1,
            username: "v-approle-feature-abc".into(),
            password: Secret::new("pw"),
            lease_id: "database/creds/feature-reader/xyz".into(),
            lease_duration_s: 3600,
            renewable: true,
            issued_at: now,
            expires_at: now + chrono::Duration::hours(1),
            fallback: false,
            primary: ep(5432),
            replica: ep(5433),
        }
    }

    /// Every problem with the fields, all at once; empty when valid.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.generation == 0 {
            out.push("generation must be at least 1".to_string());
        }
        if self.username.is_empty() {
            out.push("username is empty".to_string());
        }
        if self.password.is_empty() {
            out.push("password is empty".to_string());
        }
        if !self.fallback && self.lease_id.is_empty() {
            out.push("lease_id is empty for a dynamic credential".to_string());
        }
        out.extend(self.primary.problems("primary"));
        out.extend(self.replica.problems("replica"));
        out
    }

    /// Parses and validates the bytes of a `db.json`; `path` only names the
    /// file in errors.
    pub fn from_slice(path: &str, bytes: &[u8]) -> Result<Self, CredentialError> {
        let cred: Self =
            serde_json::from_slice(bytes).map_err(|source| CredentialError::Parse {
                path: path.to_string(),
                source,
            })?;
        let problems = cred.problems();
        if problems.is_empty() {
            Ok(cred)
        } else {
            Err(CredentialError::Invalid {
                path: path.to_string(),
                problems: problems.join("; "),
            })
        }
    }

    /// Reads, parses and validates a `db.json`.
    pub fn load(path: &std::path::Path) -> Result<Self, CredentialError> {
        let (shown, bytes) =
            crate::read_named(path, |path, source| CredentialError::Read { path, source })?;
        Self::from_slice(&shown, &bytes)
    }

    /// Seconds until `expires_at` (negative when past).
    pub fn seconds_left(&self, now: DateTime<Utc>) -> i64 {
        (self.expires_at - now).num_seconds()
    }
}

/// How to reach an endpoint. Serialized in `db.json` only when not
/// `disable`, so files stay readable by a worker that predates TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP.
    #[default]
    Disable,
    /// TLS; the server's certificate must chain to the CA file and name
    /// the host (DNS name or IP address).
    VerifyFull,
}

impl SslMode {
    /// True for [`SslMode::Disable`] (serde's `skip_serializing_if`).
    pub fn is_disable(&self) -> bool {
        *self == SslMode::Disable
    }

    /// libpq's spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> DbCredential {
        DbCredential::example()
    }

    #[test]
    fn round_trip() {
        let c = sample();
        let bytes = serde_json::to_vec(&c).unwrap();
        assert_eq!(DbCredential::from_slice("db.json", &bytes).unwrap(), c);
    }

    #[test]
    fn truncated_file_is_a_parse_error_naming_the_file() {
        let bytes = serde_json::to_vec(&sample()).unwrap();
        let err = DbCredential::from_slice("/run/riskfeat/db.json", &bytes[..bytes.len() / 2])
            .unwrap_err();
        assert!(matches!(err, CredentialError::Parse { .. }));
        assert!(err.to_string().contains("/run/riskfeat/db.json"));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut c = sample();
        c.username.clear();
        c.replica.port = 0;
        let bytes = serde_json::to_vec(&c).unwrap();
        let err = DbCredential::from_slice("db.json", &bytes)
            .unwrap_err()
            .to_string();
        assert!(err.contains("username is empty"), "{err}");
        assert!(err.contains("replica.port is 0"), "{err}");
        assert!(
            !err.contains("pw"),
            "error must not contain the password: {err}"
        );
    }
}
