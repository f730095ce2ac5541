//! What `/livez`, `/readyz` and `/status` answer: a board the lifecycle
//! updates after every step, read by the health socket.
//!
//! Readiness is computed at request time from the published credential's
//! expiry, so it turns false on time even while the lifecycle sleeps. The
//! board never holds a secret, a lease id or a username.

use crate::config_sync::SyncStatus;
use chrono::{DateTime, Utc};
use riskfeat_shared::health::HealthSource;
use serde::Serialize;
use std::sync::{Arc, Mutex};

/// The published credential, as far as health is concerned.
#[derive(Debug, Clone, Serialize)]
pub struct PublishedView {
    pub generation: u64,
    pub fallback: bool,
    pub expires_at: DateTime<Utc>,
    /// The lease duration at issue (0 for the fallback).
    pub lease_duration_s: u64,
    /// When the credential cannot be kept any longer (max_ttl or token end).
    pub deadline: Option<DateTime<Utc>>,
}

/// The token, without the token.
#[derive(Debug, Clone, Serialize)]
pub struct TokenView {
    pub expires_at: DateTime<Utc>,
    pub hard_end: Option<DateTime<Utc>>,
    pub renewable: bool,
    pub serial: u64,
}

/// Vault reachability.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VaultView {
    pub up: bool,
    pub consecutive_failures: u32,
    pub outage_since: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// Counters shown in `/status` (the same numbers as the metrics).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub logins_ok: u64,
    pub logins_failed: u64,
    pub token_renewals_ok: u64,
    pub token_renewals_failed: u64,
    pub lease_renewals_ok: u64,
    pub lease_renewals_failed: u64,
    pub issuances_ok: u64,
    pub issuances_failed: u64,
    pub issuances_capped: u64,
    pub revocations_ok: u64,
    pub revocations_failed: u64,
    pub fallback_publications: u64,
}

/// Everything `/status` shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Board {
    pub phase: &'static str,
    pub published: Option<PublishedView>,
    pub token: Option<TokenView>,
    pub vault: VaultView,
    pub counts: Counts,
    pub retiring_leases: usize,
    pub issuances_last_minute: usize,
    pub issuance_cap_per_minute: u32,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// When the lifecycle last finished a step (liveness).
    pub last_step_at: Option<DateTime<Utc>>,
    /// Why the state file of the previous run could not be used (it was
    /// set aside; see `AgentState::load_or_set_aside`).
    pub state_error: Option<String>,
}

/// The shared board plus what readiness needs.
pub struct StatusBoard {
    board: Mutex<Board>,
    ready_min_remaining_s: i64,
    sync: Option<Arc<SyncStatus>>,
    metrics_addr: Mutex<Option<String>>,
}

impl StatusBoard {
    /// A board; `sync` adds the config-sync status when configd is used.
    pub fn new(ready_min_remaining_s: u64, sync: Option<Arc<SyncStatus>>) -> Self {
        Self {
            board: Mutex::new(Board {
                phase: "starting",
                ..Default::default()
            }),
            ready_min_remaining_s: ready_min_remaining_s as i64,
            sync,
            metrics_addr: Mutex::new(None),
        }
    }

    /// Records where `/metrics` is served (shown in `/status`).
    pub fn set_metrics_addr(&self, addr: String) {
        *self.metrics_addr.lock().expect("status lock") = Some(addr);
    }

    /// Replaces the board.
    pub fn set(&self, board: Board) {
        *self.board.lock().expect("status lock") = board;
    }

    /// A copy of the board.
    pub fn get(&self) -> Board {
        self.board.lock().expect("status lock").clone()
    }

    /// Ready when a credential is published with enough time left.
    pub fn readiness(&self, now: DateTime<Utc>) -> Result<(), String> {
        let b = self.board.lock().expect("status lock");
        match &b.published {
            None => Err(match &b.last_error {
                Some(e) => format!("no credential published yet; last error: {e}"),
                None => "no credential published yet".to_string(),
            }),
            Some(p) => {
                let left = (p.expires_at - now).num_seconds();
                // Short leases are renewed well before this threshold: scale
                // it down so a 6 s lease is not "close to expiry" all the time.
                let threshold = if p.lease_duration_s > 0 {
                    self.ready_min_remaining_s
                        .min((p.lease_duration_s as i64 / 4).max(1))
                } else {
                    self.ready_min_remaining_s
                };
                if left <= threshold {
                    Err(format!(
                        "published credential (generation {}) expires in {left}s",
                        p.generation
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// A lifecycle that has not finished a step for this long is stuck (a
/// step waits at most for the replica check and a few timed-out requests;
/// the loop wakes at least once a minute).
const STUCK_AFTER_S: i64 = 300;

impl HealthSource for StatusBoard {
    fn live(&self) -> Result<(), String> {
        let b = self.board.lock().expect("status lock");
        match b.last_step_at {
            Some(t) if (Utc::now() - t).num_seconds() > STUCK_AFTER_S => Err(format!(
                "the credential lifecycle has not made progress since {t}"
            )),
            _ => Ok(()),
        }
    }

    fn ready(&self) -> Result<(), String> {
        self.readiness(Utc::now())
    }

    fn status(&self) -> serde_json::Value {
        let now = Utc::now();
        let ready = self.readiness(now);
        let board = self.get();
        let mut v = serde_json::to_value(&board).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("ready".into(), ready.is_ok().into());
            obj.insert(
                "not_ready_reason".into(),
                ready
                    .err()
                    .map(Into::into)
                    .unwrap_or(serde_json::Value::Null),
            );
            obj.insert("now".into(), serde_json::to_value(now).unwrap_or_default());
            let addr = self.metrics_addr.lock().expect("status lock").clone();
            obj.insert("metrics_addr".into(), addr.into());
            if let Some(s) = &self.sync {
                obj.insert("config".into(), s.to_json());
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_with_time_left() {
        let s = StatusBoard::new(10, None);
        let now = Utc::now();
        assert!(s.readiness(now).is_err());
        s.set(Board {
            published: Some(PublishedView {
                generation: 2,
                fallback: false,
                expires_at: now + chrono::Duration::seconds(60),
                lease_duration_s: 3600,
                deadline: None,
            }),
            ..Default::default()
        });
        assert!(s.readiness(now).is_ok());
        let e = s
            .readiness(now + chrono::Duration::seconds(55))
            .unwrap_err();
        assert!(e.contains("generation 2"), "{e}");
        let st = s.status();
        assert_eq!(st["published"]["generation"], 2);
        assert!(st.get("ready").is_some());
    }
}
