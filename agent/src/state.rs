//! `agent-state.json` (0600): what a restarted agent needs to resume the
//! same token and leases instead of issuing new credentials.
//!
//! It holds secrets (the token, the credential's password and, when its
//! source was consumed, the secret_id), which is why it is private to the
//! agent and lives only on the in-memory shared volume.

use chrono::{DateTime, Utc};
use riskfeat_shared::atomic::{write_json_atomic, AtomicWriteError, WriteOptions};
use riskfeat_shared::Secret;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The Vault token in use.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenState {
    pub token: Secret,
    /// Login counter; leases record the serial of the token that made them.
    pub serial: u64,
    pub obtained_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// TTL at login: the increment asked for on renewal.
    pub ttl_s: u64,
    pub renewable: bool,
    /// The token's last possible moment, once known (capped renewal or not
    /// renewable).
    pub hard_end: Option<DateTime<Utc>>,
    pub next_renew_at: DateTime<Utc>,
}

/// One dynamic database credential and its lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseState {
    pub generation: u64,
    pub lease_id: String,
    pub username: String,
    pub password: Secret,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Duration at issue: the increment asked for on renewal.
    pub lease_duration_s: u64,
    pub renewable: bool,
    /// The lease's max_ttl end, once known.
    pub hard_end: Option<DateTime<Utc>>,
    /// Serial of the token that created the lease.
    pub token_serial: u64,
    /// That token's last moment, recorded when it was replaced.
    pub token_end: Option<DateTime<Utc>>,
    pub next_renew_at: DateTime<Utc>,
    /// Set once superseded: revoke at the worker's ack, or at this time.
    pub retire_by: Option<DateTime<Utc>>,
    /// Taken over from db.json after the state was lost: the token that
    /// created it is unknown, so it is not renewed and is replaced at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recovered: bool,
}

impl LeaseState {
    /// The moment after which this credential cannot be kept, if known:
    /// the lease's max_ttl end, the creating token's end, or its expiry when
    /// it cannot be renewed.
    pub fn deadline(&self, token: Option<&TokenState>) -> Option<DateTime<Utc>> {
        let token_end = match token {
            Some(t) if t.serial == self.token_serial => t.hard_end,
            _ => self.token_end,
        };
        let not_renewable = (!self.renewable).then_some(self.expires_at);
        [self.hard_end, token_end, not_renewable]
            .into_iter()
            .flatten()
            .min()
    }
}

/// The whole file; a key it lacks takes its default.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentState {
    pub token: Option<TokenState>,
    pub token_serial: u64,
    /// Replaced tokens still renewed because leases they created are in use.
    pub old_tokens: Vec<TokenState>,
    /// The secret_id, kept only when its source is gone (file deleted after
    /// reading, or a wrapping token already unwrapped).
    pub secret_id: Option<Secret>,
    /// The last generation published in db.json.
    pub generation: u64,
    /// The credential published in db.json (None when none, or fallback).
    pub current: Option<LeaseState>,
    /// Superseded leases waiting for the worker's ack before revocation.
    pub retiring: Vec<LeaseState>,
    /// True while db.json holds the static fallback credential.
    pub fallback_published: bool,
    /// Learned (or configured) credential max_ttl.
    pub max_ttl_s: Option<u64>,
    /// Learned token max lifetime.
    pub token_max_ttl_s: Option<u64>,
    /// When credentials were issued in the last minute (the cap survives a
    /// crash loop).
    pub issued_at: Vec<DateTime<Utc>>,
}

/// Why the state file could not be read (see [`AgentState::load_or_set_aside`]).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: cannot read agent state: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: unreadable agent state: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
}

impl AgentState {
    /// Loads the state; `Ok(None)` when there is none.
    pub fn load(path: &Path) -> Result<Option<Self>, StateError> {
        let shown = path.display().to_string();
        match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| StateError::Parse {
                        path: shown,
                        source,
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Read {
                path: shown,
                source,
            }),
        }
    }

    /// Loads the state, never silently losing an unreadable one: it is
    /// moved aside to `agent-state.json.corrupt-<UTC time>` (kept for a
    /// post-mortem; it holds secrets, so it stays 0600 on the in-memory
    /// volume) and the problem is returned, for the log and `/status`,
    /// with the default state (the lifecycle then recovers the published
    /// lease from db.json).
    pub fn load_or_set_aside(path: &Path) -> (Self, Option<String>) {
        let err = match Self::load(path) {
            Ok(s) => return (s.unwrap_or_default(), None),
            Err(e) => e,
        };
        let stamp = Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
        let mut aside = path.as_os_str().to_owned();
        aside.push(format!(".corrupt-{stamp}"));
        let aside = std::path::PathBuf::from(aside);
        let kept = match std::fs::rename(path, &aside) {
            Ok(()) => format!("kept as {}", aside.display()),
            Err(e) => format!("cannot move it aside to {}: {e}", aside.display()),
        };
        (Self::default(), Some(format!("{err}; {kept}")))
    }

    /// Writes the state atomically, 0600 (skipped when unchanged).
    pub fn save(&self, path: &Path) -> Result<(), AtomicWriteError> {
        write_json_atomic(path, self, WriteOptions::PRIVATE).map(|_| ())
    }
}

/// A renewable lease of generation 1 (token serial 1) issued at `now` for
/// `duration_s`, next renewed at 2/3 of it: the tests' lease.
#[cfg(test)]
pub(crate) fn lease(now: DateTime<Utc>, duration_s: i64) -> LeaseState {
    let secs = chrono::Duration::seconds;
    LeaseState {
        generation: 1,
        lease_id: "database/creds/r/1".into(),
        username: "u".into(),
        password: Secret::new("p"),
        issued_at: now,
        expires_at: now + secs(duration_s),
        lease_duration_s: duration_s as u64,
        renewable: true,
        hard_end: None,
        token_serial: 1,
        token_end: None,
        next_renew_at: now + secs(duration_s * 2 / 3),
        retire_by: None,
        recovered: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn deadline_is_the_earliest_known_end() {
        let now = Utc::now();
        let mut l = lease(now, 60);
        assert_eq!(l.deadline(None), None);
        l.hard_end = Some(now + Duration::seconds(300));
        assert_eq!(l.deadline(None), l.hard_end);
        let t = TokenState {
            token: Secret::new("t"),
            serial: 1,
            obtained_at: now,
            expires_at: now + Duration::seconds(30),
            ttl_s: 30,
            renewable: true,
            hard_end: Some(now + Duration::seconds(100)),
            next_renew_at: now,
        };
        assert_eq!(l.deadline(Some(&t)), Some(now + Duration::seconds(100)));
        l.token_serial = 0;
        assert_eq!(l.deadline(Some(&t)), l.hard_end);
        l.renewable = false;
        assert_eq!(l.deadline(Some(&t)), Some(l.expires_at));
    }

    #[test]
    fn an_unreadable_state_is_set_aside_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent-state.json");
        std::fs::write(&path, b"{\"generation\": 3, \"curr").unwrap();
        let (s, problem) = AgentState::load_or_set_aside(&path);
        assert_eq!(s.generation, 0);
        let problem = problem.expect("reported");
        assert!(problem.contains("unreadable agent state"), "{problem}");
        assert!(!path.exists());
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(aside.len(), 1);
        assert!(
            aside[0].starts_with("agent-state.json.corrupt-"),
            "{aside:?}"
        );
        assert!(problem.contains(&aside[0]), "{problem}");
        assert_eq!(
            std::fs::read(dir.path().join(&aside[0])).unwrap(),
            b"{\"generation\": 3, \"curr"
        );
        // None at all: the default, nothing to report.
        let (_, problem) = AgentState::load_or_set_aside(&path);
        assert!(problem.is_none());
    }

    #[test]
    fn round_trip_is_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent-state.json");
        assert!(AgentState::load(&path).unwrap().is_none());
        let s = AgentState {
            generation: 3,
            current: Some(lease(Utc::now(), 60)),
            ..Default::default()
        };
        s.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = AgentState::load(&path).unwrap().unwrap();
        assert_eq!(back.generation, 3);
        assert_eq!(back.current.unwrap().password.expose(), "p");
    }
}
