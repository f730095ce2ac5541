//! A new credential: when one is needed (the rotation lead before the
//! current one's deadline, or close to expiry), issue it within the
//! per-minute cap, wait until it logs in on the replica, publish `db.json`
//! with the next generation (then the `[[output]]` files,
//! [`crate::outputs`]), and move the superseded lease to retirement.
//! When no dynamic credential is valid and Vault cannot issue one, the
//! static fallback is published.

use super::{secs, Lifecycle};
use crate::fatal::Fatal;
use crate::replica;
use crate::state::LeaseState;
use crate::vault::VaultError;
use chrono::{DateTime, Duration, Utc};
use riskfeat_shared::atomic::{write_json_atomic, WriteOptions, WriteOutcome};
use riskfeat_shared::creds::DbCredential;
use riskfeat_shared::pg_tls::PgTls;

/// Test-only fault hook: with `RISKFEAT_AGENT_TEST_CRASH_AT=<point>:<generation>`
/// in the environment, the process aborts (like a kill -9: no destructor,
/// no state save) at `point` while publishing `generation`. The points are
/// `after_state_save` (the state names the new lease, db.json still the
/// old one) and `after_publish` (both name it). The end-to-end tests use it
/// to hit the crash windows deterministically; unset, it costs one lookup
/// of a cached value per publication. Never set it in a deployment.
fn crash_point(point: &str, generation: u64) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("RISKFEAT_AGENT_TEST_CRASH_AT").ok());
    if at.as_deref() == Some(&format!("{point}:{generation}")) {
        tracing::error!(
            point,
            generation,
            "RISKFEAT_AGENT_TEST_CRASH_AT: aborting (test fault hook)"
        );
        std::process::abort();
    }
}

impl Lifecycle {
    /// Below this much time left a credential counts as close to expiry
    /// (the readiness threshold, scaled down for short leases).
    pub(super) fn min_left(&self, l: &LeaseState) -> Duration {
        let s = (self.cfg.lifecycle.ready_min_remaining_s as i64)
            .min((l.lease_duration_s as i64 / 4).max(1));
        Duration::seconds(s)
    }

    /// The effective rotation lead: configured, at most half the lifetime.
    /// Also at most half a token's lifetime, since a credential cannot
    /// outlive the token that created it.
    pub(super) fn lead(&self) -> Duration {
        let mut s = self.cfg.lifecycle.rotate_lead_s as f64;
        if let Some(m) = self.st.max_ttl_s {
            s = s.min(m as f64 / 2.0);
        }
        if let Some(m) = self.st.token_max_ttl_s {
            s = s.min(m as f64 / 2.0);
        }
        secs(s)
    }

    /// Time when the issuance cap allows the next credential.
    pub(super) fn cap_free_at(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let window = Duration::seconds(60);
        let recent: Vec<_> = self
            .st
            .issued_at
            .iter()
            .filter(|t| now - **t < window)
            .copied()
            .collect();
        if recent.len() < self.cfg.lifecycle.max_issuances_per_minute as usize {
            None
        } else {
            recent.iter().min().map(|t| *t + window)
        }
    }

    /// Why a new credential is needed now, if it is.
    pub(super) fn need_credential(&self, now: DateTime<Utc>) -> Option<&'static str> {
        match &self.st.current {
            None => Some("no credential"),
            Some(c) if c.expires_at <= now => Some("credential expired"),
            // Renewals lag (outage): replace it (or fall back) in time.
            Some(c) if c.expires_at - now <= self.min_left(c) => Some("credential about to expire"),
            // Its token is unknown and may end any time: replace it now.
            Some(c) if c.recovered => Some("lease recovered from db.json"),
            Some(c) => match c.deadline(self.st.token.as_ref()) {
                Some(d) if d - now <= self.lead() => Some("rotation"),
                _ => None,
            },
        }
    }

    pub(super) async fn ensure_credential(&mut self) -> Result<(), Fatal> {
        let now = Utc::now();
        let Some(why) = self.need_credential(now) else {
            return Ok(());
        };
        let Some(token) = self.token_valid(now) else {
            self.maybe_fallback().await;
            return Ok(());
        };
        if !self.issue_retry.ready(now) {
            self.maybe_fallback().await;
            return Ok(());
        }
        if let Some(free) = self.cap_free_at(now) {
            if self.issue_retry.not_before != Some(free) {
                self.m.issuances.with_label_values(&["capped"]).inc();
                self.counts.issuances_capped += 1;
                self.error(format!(
                    "issuance cap of {} per minute reached; next credential at {free}",
                    self.cfg.lifecycle.max_issuances_per_minute
                ));
                self.issue_retry.not_before = Some(free);
            }
            self.maybe_fallback().await;
            return Ok(());
        }
        // A credential made under a token about to end would be due again
        // at once: log in first so it lives under the fresh token.
        let token_ending = self
            .st
            .token
            .as_ref()
            .and_then(|t| t.hard_end)
            .is_some_and(|end| end - now <= self.lead());
        let token = if token_ending && self.login_retry.ready(now) {
            tracing::info!("the token ends before the next credential would: logging in first");
            self.login().await?;
            match self.token_valid(Utc::now()) {
                Some(t) => t,
                None => return Ok(()),
            }
        } else {
            token
        };
        if self.issue_retry.failures == 0 {
            tracing::info!(reason = why, "issuing a new database credential");
        } else {
            tracing::debug!(
                reason = why,
                attempt = self.issue_retry.failures + 1,
                "issuing a new database credential"
            );
        }
        self.st.issued_at.push(now);
        let (mount, role) = (
            self.cfg.database.mount.clone(),
            self.cfg.database.role.clone(),
        );
        let r = self.vault.issue_credential(&token, &mount, &role).await;
        self.note_vault(&r);
        let cred = match r {
            Ok(c) => c,
            Err(e) => {
                self.m.issuances.with_label_values(&["error"]).inc();
                self.counts.issuances_failed += 1;
                if matches!(e, VaultError::Connect { .. }) {
                    // Vault never saw the request: no role was created, so
                    // it does not count against the cap.
                    self.st.issued_at.retain(|t| *t != now);
                }
                if e.is_permission() && !self.established {
                    return Err(Fatal::Permission(format!(
                        "cannot issue database credentials: {e}"
                    )));
                }
                self.error(format!("cannot issue a database credential: {e}"));
                let (i, mx) = self.backoff();
                if !e.is_transient() {
                    self.issue_retry.failures = self.issue_retry.failures.max(20);
                }
                self.issue_retry.fail(Utc::now(), i, mx);
                self.maybe_fallback().await;
                return Ok(());
            }
        };
        let wait = std::time::Duration::from_secs(self.cfg.lifecycle.replica_wait_s);
        let tls = self.current_pg_tls();
        let check = replica::wait_for_login(
            &tls,
            &self.cfg.database.replica,
            &cred.username,
            &cred.password,
            wait,
            &self.shutdown,
        )
        .await;
        let now = Utc::now();
        match check {
            Ok(attempts) => {
                self.m.replica_checks.with_label_values(&["ok"]).inc();
                tracing::debug!(attempts, "new credential logs in on the replica");
            }
            Err(msg) => {
                self.m.replica_checks.with_label_values(&["error"]).inc();
                self.m.issuances.with_label_values(&["error"]).inc();
                self.counts.issuances_failed += 1;
                self.error(format!("new credential not published: {msg}"));
                let r = self.vault.revoke_lease(&token, &cred.lease_id).await;
                self.count_revocation(&r);
                let (i, mx) = self.backoff();
                self.issue_retry.fail(now, i, mx);
                self.maybe_fallback().await;
                return Ok(());
            }
        }
        self.m.issuances.with_label_values(&["ok"]).inc();
        self.counts.issuances_ok += 1;
        self.issue_retry.ok();
        let issued_at = now;
        let serial = self.st.token.as_ref().map(|t| t.serial).unwrap_or(0);
        let lease = LeaseState {
            generation: self.st.generation + 1,
            lease_id: cred.lease_id,
            username: cred.username,
            password: cred.password,
            issued_at,
            expires_at: issued_at + Duration::seconds(cred.lease_duration as i64),
            lease_duration_s: cred.lease_duration,
            renewable: cred.renewable,
            hard_end: self
                .st
                .max_ttl_s
                .map(|m| issued_at + Duration::seconds(m as i64)),
            token_serial: serial,
            token_end: None,
            next_renew_at: self.renew_at(
                now,
                cred.lease_duration,
                self.cfg.lifecycle.renew_fraction,
            ),
            retire_by: None,
            recovered: false,
        };
        // The state naming the new lease (and the old one as retiring) is
        // durable before db.json names it: a crash between the two resumes
        // the new lease, never the older one under a lower generation, and
        // no lease is left that the state does not know.
        let before = self.st.clone();
        let generation = lease.generation;
        self.st.generation = generation;
        self.st.fallback_published = false;
        if let Some(mut old) = self.st.current.replace(lease.clone()) {
            let grace = now + Duration::seconds(self.cfg.lifecycle.ack_grace_s as i64);
            let bound = old.deadline(self.st.token.as_ref()).unwrap_or(grace);
            old.retire_by = Some(grace.min(bound).max(now));
            self.st.retiring.push(old);
        }
        let committed = self.commit_state();
        if committed {
            crash_point("after_state_save", generation);
        }
        if !committed || !self.publish_lease(&lease) {
            self.st = before;
            self.abandon(&token, lease).await;
            let (i, mx) = self.backoff();
            self.issue_retry.fail(now, i, mx);
            return Ok(());
        }
        crash_point("after_publish", generation);
        self.established = true;
        tracing::info!(
            generation,
            lease_duration_s = self.st.current.as_ref().map(|c| c.lease_duration_s),
            "published a new database credential"
        );
        Ok(())
    }

    /// A new lease that was not published: revoked now, or, when Vault
    /// does not answer, kept as retiring (due now) so that it is revoked
    /// later rather than forgotten.
    async fn abandon(&mut self, token: &riskfeat_shared::Secret, mut lease: LeaseState) {
        let r = self.vault.revoke_lease(token, &lease.lease_id).await;
        self.count_revocation(&r);
        if r.is_err() {
            lease.retire_by = Some(Utc::now());
            self.st.retiring.push(lease);
        }
    }

    /// Saves the state now, synchronously (temp file, fsync, rename, fsync
    /// of the directory): false, with the error reported, when it could
    /// not be saved (ENOSPC...), and then nothing may be published that the
    /// saved state does not name.
    pub(super) fn commit_state(&mut self) -> bool {
        match self.st.save(&self.shared.agent_state()) {
            Ok(()) => true,
            Err(e) => {
                self.error(format!(
                    "not publishing: the agent state cannot be saved: {e}"
                ));
                false
            }
        }
    }

    /// Publishes the static fallback when no dynamic credential is valid and
    /// Vault cannot issue one.
    async fn maybe_fallback(&mut self) {
        let now = Utc::now();
        let Some(fb) = self.fallback.clone() else {
            return;
        };
        if self.st.fallback_published || !self.fallback_retry.ready(now) {
            return;
        }
        let dynamic_ok = self
            .st
            .current
            .as_ref()
            .is_some_and(|c| c.expires_at - now > self.min_left(c));
        if dynamic_ok {
            return;
        }
        let wait = std::time::Duration::from_secs(self.cfg.lifecycle.replica_wait_s.min(5));
        let tls = self.current_pg_tls();
        if let Err(msg) = replica::wait_for_login(
            &tls,
            &self.cfg.database.replica,
            &fb.username,
            &fb.password,
            wait,
            &self.shutdown,
        )
        .await
        {
            self.error(format!("fallback credential not published: {msg}"));
            let (i, mx) = self.backoff();
            self.fallback_retry.fail(now, i, mx);
            return;
        }
        let cred = DbCredential {
            generation: self.st.generation + 1,
            username: fb.username.clone(),
            password: fb.password.clone(),
            lease_id: String::new(),
            lease_duration_s: 0,
            renewable: false,
            issued_at: now,
            expires_at: now + Duration::days(30),
            fallback: true,
            primary: self.cfg.database.primary.clone(),
            replica: self.cfg.database.replica.clone(),
        };
        // As for a new lease: the state first, then db.json.
        let before = self.st.clone();
        self.st.generation = cred.generation;
        self.st.fallback_published = true;
        if let Some(mut old) = self.st.current.take() {
            old.retire_by = Some(now);
            self.st.retiring.push(old);
        }
        if self.commit_state() && self.write_db_json(&cred) {
            self.fallback_retry.ok();
            self.counts.fallback_publications += 1;
            tracing::warn!(
                generation = cred.generation,
                "Vault cannot issue a credential: published the static fallback credential"
            );
        } else {
            self.st = before;
            let (i, mx) = self.backoff();
            self.fallback_retry.fail(now, i, mx);
        }
    }

    fn write_db_json(&mut self, cred: &DbCredential) -> bool {
        let opts = WriteOptions::SHARED.with_gid(self.cfg.file_group);
        match write_json_atomic(&self.shared.db_json(), cred, opts) {
            Ok(WriteOutcome::Written) | Ok(WriteOutcome::Unchanged) => {
                self.publish_outputs(Some(cred));
                true
            }
            Err(e) => {
                self.error(e.to_string());
                false
            }
        }
    }

    /// The `[[output]]` files of `cred`, right after its `db.json` (`None`:
    /// those a failure left unwritten); an error is reported and retried
    /// at the next step, `db.json` stays published.
    pub(super) fn publish_outputs(&mut self, cred: Option<&DbCredential>) {
        for e in self.outputs.publish(cred, &self.m) {
            self.error(e);
        }
    }

    pub(super) fn publish_lease(&mut self, l: &LeaseState) -> bool {
        let cred = DbCredential {
            generation: l.generation,
            username: l.username.clone(),
            password: l.password.clone(),
            lease_id: l.lease_id.clone(),
            lease_duration_s: l.lease_duration_s,
            renewable: l.renewable,
            issued_at: l.issued_at,
            expires_at: l.expires_at,
            fallback: false,
            primary: self.cfg.database.primary.clone(),
            replica: self.cfg.database.replica.clone(),
        };
        self.write_db_json(&cred)
    }

    /// The TLS for a replica check login, with `database.ca_file` read
    /// again: a CA rotated through its ConfigMap applies to the next check
    /// without a restart; a file that cannot be read or used keeps the CA
    /// in use and says so (see
    /// [`CaFile`](riskfeat_shared::ca_file::CaFile)).
    fn current_pg_tls(&mut self) -> PgTls {
        match &mut self.pg_ca {
            Some(file) => file.current(|path, bytes| {
                PgTls::from_pem("database.ca_file", path, bytes).map_err(|e| e.to_string())
            }),
            None => self.pg_tls.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{lease, lifecycle};
    use chrono::{Duration, Utc};

    #[test]
    fn lead_is_clamped_to_half_the_lifetimes() {
        let mut l = lifecycle("rotate_lead_s = 600");
        assert_eq!(l.lead(), Duration::seconds(600));
        l.st.max_ttl_s = Some(20);
        assert_eq!(l.lead(), Duration::seconds(10));
        l.st.token_max_ttl_s = Some(12);
        assert_eq!(l.lead(), Duration::seconds(6));
    }

    #[test]
    fn when_a_new_credential_is_needed() {
        let now = Utc::now();
        let mut l = lifecycle("rotate_lead_s = 8");
        assert_eq!(l.need_credential(now), Some("no credential"));
        l.st.current = Some(lease(now, 60));
        assert_eq!(l.need_credential(now), None, "renewable, no known end");
        l.st.current.as_mut().unwrap().hard_end = Some(now + Duration::seconds(30));
        assert_eq!(l.need_credential(now), None);
        assert_eq!(
            l.need_credential(now + Duration::seconds(23)),
            Some("rotation"),
            "within the lead of the max_ttl end"
        );
        // Renewals lagging: close to expiry (a quarter of a 60 s lease).
        let mut c = lease(now, 60);
        c.expires_at = now + Duration::seconds(5);
        l.st.current = Some(c);
        assert_eq!(l.need_credential(now), Some("credential about to expire"));
        assert_eq!(
            l.need_credential(now + Duration::seconds(6)),
            Some("credential expired")
        );
    }

    #[test]
    fn issuance_cap_window() {
        let now = Utc::now();
        let mut l = lifecycle("max_issuances_per_minute = 2");
        assert!(l.cap_free_at(now).is_none());
        l.st.issued_at = vec![now - Duration::seconds(50), now - Duration::seconds(10)];
        assert_eq!(l.cap_free_at(now), Some(now + Duration::seconds(10)));
        l.st.issued_at = vec![now - Duration::seconds(70), now - Duration::seconds(10)];
        assert!(
            l.cap_free_at(now).is_none(),
            "older than a minute does not count"
        );
    }
}
