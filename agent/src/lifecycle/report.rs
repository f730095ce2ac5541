//! What the lifecycle reports: errors (rate-limited in the log), Vault's
//! health, revocation counts, and after every step the status board and the
//! metrics derived from the state.

use super::Lifecycle;
use crate::status::{Board, PublishedView, TokenView};
use crate::vault::VaultError;
use chrono::{Duration, Utc};
use riskfeat_shared::creds::DbCredential;

impl Lifecycle {
    /// Records an error for `/status`; logs it at warn level, except a
    /// repeat of the same error within 30 s (debug), so an outage does not
    /// flood the log but never goes silent.
    pub(super) fn error(&mut self, msg: String) {
        let now = Utc::now();
        let window = Duration::seconds(30);
        self.logged_errors.retain(|_, at| now - *at < window);
        if self.logged_errors.contains_key(&msg) {
            tracing::debug!(error = %msg, "agent error (repeated)");
        } else {
            tracing::warn!(error = %msg, "agent error");
            self.logged_errors.insert(msg.clone(), now);
        }
        self.last_error = Some((msg, now));
    }

    pub(super) fn note_vault<T>(&mut self, r: &Result<T, VaultError>) {
        let now = Utc::now();
        match r {
            Ok(_) => {
                if self.vault_view.outage_since.is_some() {
                    tracing::info!("Vault answers again");
                }
                self.vault_view.up = true;
                self.vault_view.consecutive_failures = 0;
                self.vault_view.outage_since = None;
                self.vault_view.last_success_at = Some(now);
            }
            Err(e) => {
                self.vault_view.last_error = Some(e.to_string());
                if e.is_transient() {
                    self.vault_view.up = false;
                    self.vault_view.consecutive_failures += 1;
                    if self.vault_view.outage_since.is_none() {
                        self.vault_view.outage_since = Some(now);
                    }
                } else {
                    // Vault answered, if only to refuse.
                    self.vault_view.up = true;
                    self.vault_view.consecutive_failures = 0;
                    self.vault_view.outage_since = None;
                    self.vault_view.last_success_at = Some(now);
                }
            }
        }
    }

    pub(super) fn count_revocation<T>(&mut self, r: &Result<T, VaultError>) {
        match r {
            Ok(_) => {
                self.m.revocations.with_label_values(&["ok"]).inc();
                self.counts.revocations_ok += 1;
            }
            Err(e) => {
                self.m.revocations.with_label_values(&["error"]).inc();
                self.counts.revocations_failed += 1;
                self.error(format!("lease revocation failed: {e}"));
            }
        }
    }

    pub(super) fn refresh_board(&mut self) {
        let now = Utc::now();
        let published = if self.st.fallback_published {
            DbCredential::load(&self.shared.db_json())
                .ok()
                .filter(|c| c.fallback)
                .map(|c| PublishedView {
                    generation: c.generation,
                    fallback: true,
                    expires_at: c.expires_at,
                    lease_duration_s: 0,
                    deadline: None,
                })
        } else {
            self.st.current.as_ref().map(|c| PublishedView {
                generation: c.generation,
                fallback: false,
                expires_at: c.expires_at,
                lease_duration_s: c.lease_duration_s,
                deadline: c.deadline(self.st.token.as_ref()),
            })
        };
        let token = self.st.token.as_ref().map(|t| TokenView {
            expires_at: t.expires_at,
            hard_end: t.hard_end,
            renewable: t.renewable,
            serial: t.serial,
        });
        let m = &self.m;
        m.credential_expiry.set(
            published
                .as_ref()
                .map(|p| p.expires_at.timestamp())
                .unwrap_or(0),
        );
        m.generation
            .set(published.as_ref().map(|p| p.generation as i64).unwrap_or(0));
        m.fallback
            .set(published.as_ref().is_some_and(|p| p.fallback) as i64);
        m.token_expiry.set(
            token
                .as_ref()
                .map(|t| t.expires_at.timestamp())
                .unwrap_or(0),
        );
        m.vault_up.set(self.vault_view.up as i64);
        m.vault_consecutive_failures
            .set(self.vault_view.consecutive_failures as i64);
        if let Some(t) = self.vault_view.last_success_at {
            m.vault_last_success.set(t.timestamp());
        }
        let phase = match (&published, *self.shutdown.borrow()) {
            (_, true) => "stopping",
            (None, _) => "starting",
            (Some(p), _) if p.fallback => "fallback",
            (Some(_), _) if self.vault_view.outage_since.is_some() => "vault-outage",
            (Some(_), _) if !self.st.retiring.is_empty() => "rotating",
            _ => "steady",
        };
        self.board.set(Board {
            phase,
            published,
            token,
            vault: self.vault_view.clone(),
            counts: self.counts.clone(),
            retiring_leases: self.st.retiring.len(),
            issuances_last_minute: self
                .st
                .issued_at
                .iter()
                .filter(|t| now - **t < Duration::seconds(60))
                .count(),
            issuance_cap_per_minute: self.cfg.lifecycle.max_issuances_per_minute,
            last_error: self.last_error.as_ref().map(|e| e.0.clone()),
            last_error_at: self.last_error.as_ref().map(|e| e.1),
            last_step_at: Some(now),
            state_error: self.state_problem.clone(),
        });
        m.ready.set(self.board.readiness(now).is_ok() as i64);
    }
}
