//! The leases already held: resumed on start (with the generation and the
//! stored token, checked by lookup-self; the leases then by
//! sys/leases/lookup; the one db.json names taken over when the state lost
//! it), renewed on schedule, the superseded ones revoked
//! after the worker's ack (or the grace period), and every one revoked on
//! shutdown when so configured and the worker is gone (a SIGTERM next to a
//! live worker is a container restart: everything is kept for the next
//! start).

use super::retry::backoff_delay;
use super::{Lifecycle, Renewable};
use crate::state::LeaseState;
use crate::vault::VaultError;
use chrono::{Duration, Utc};
use riskfeat_shared::ack::WorkerAck;
use riskfeat_shared::creds::DbCredential;
use riskfeat_shared::health::{request, ProbeKind};
use riskfeat_shared::Secret;

/// How long the worker's health socket may take to answer at shutdown.
const WORKER_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl Lifecycle {
    /// Loads what a previous run left: db.json's generation, the token
    /// (checked with lookup-self); leases are checked once a token exists.
    pub(super) async fn resume(&mut self) {
        // Generations only grow, even if the state file was lost: a reused
        // number could match an old ack and retire a lease in use.
        if let Ok(c) = DbCredential::load(&self.shared.db_json()) {
            self.st.generation = self.st.generation.max(c.generation);
        }
        if let Some(ack) = WorkerAck::load(&self.shared.worker_ack()) {
            self.st.generation = self.st.generation.max(ack.generation);
        }
        self.recover_published_lease();
        let now = Utc::now();
        if let Some(t) = self.st.token.clone() {
            let r = self.vault.lookup_self(&t.token).await;
            self.note_vault(&r);
            match r {
                Ok((ttl, renewable)) if ttl > 0 => {
                    let tok = self.st.token.as_mut().expect("token present");
                    tok.expires_at = now + Duration::seconds(ttl as i64);
                    tok.renewable = renewable;
                    tok.next_renew_at = tok.next_renew_at.min(tok.expires_at);
                    tracing::info!(ttl_s = ttl, "resumed the Vault token from agent-state.json");
                }
                Ok(_) => {
                    tracing::info!("stored Vault token has expired; logging in again");
                    self.st.token = None;
                }
                Err(e) if !e.is_transient() => {
                    tracing::info!(error = %e, "stored Vault token is no longer valid; logging in again");
                    self.st.token = None;
                }
                Err(e) => {
                    self.error(format!("cannot check the stored token: {e}"));
                    if t.expires_at <= now {
                        self.st.token = None;
                    }
                }
            }
        }
        if self.st.current.is_some() || !self.st.retiring.is_empty() {
            tracing::info!(
                generation = self.st.generation,
                current = self.st.current.is_some(),
                retiring = self.st.retiring.len(),
                "resuming leases from agent-state.json"
            );
        } else {
            self.leases_verified = true;
        }
        if let Some(c) = &self.st.current {
            if c.expires_at > now {
                self.established = true;
            }
        }
    }

    /// When the state names no credential but db.json holds a dynamic one
    /// (the state file was corrupt, or lost), takes that lease over rather
    /// than orphaning it: it is checked by lookup like any resumed lease,
    /// not renewed (the token that created it is gone with the state), and
    /// replaced at once; the worker's ack of the replacement retires it.
    fn recover_published_lease(&mut self) {
        if self.st.current.is_some() || self.st.fallback_published {
            return;
        }
        let Ok(c) = DbCredential::load(&self.shared.db_json()) else {
            return;
        };
        let known = self.st.retiring.iter().any(|l| l.lease_id == c.lease_id);
        if c.fallback || c.lease_id.is_empty() || known {
            return;
        }
        tracing::warn!(
            generation = c.generation,
            "the agent state names no credential: taking over the lease db.json names (it will be replaced under a new token)"
        );
        self.st.current = Some(LeaseState {
            generation: c.generation,
            lease_id: c.lease_id,
            username: c.username,
            password: c.password,
            issued_at: c.issued_at,
            expires_at: c.expires_at,
            lease_duration_s: c.lease_duration_s,
            renewable: false,
            hard_end: None,
            token_serial: 0,
            token_end: None,
            next_renew_at: c.expires_at,
            retire_by: None,
            recovered: true,
        });
    }

    /// Checks resumed leases with sys/leases/lookup; drops the dead ones.
    pub(super) async fn verify_leases(&mut self, token: &Secret) {
        let now = Utc::now();
        let mut all: Vec<(bool, LeaseState)> = Vec::new();
        if let Some(c) = self.st.current.take() {
            all.push((true, c));
        }
        all.extend(self.st.retiring.drain(..).map(|l| (false, l)));
        let mut transient = false;
        for (is_current, mut lease) in all {
            let r = self.vault.lookup_lease(token, &lease.lease_id).await;
            self.note_vault(&r);
            let keep = match r {
                Ok(Some(info)) => {
                    lease.expires_at = now + Duration::seconds(info.ttl as i64);
                    lease.renewable = info.renewable && !lease.recovered;
                    tracing::info!(
                        generation = lease.generation,
                        ttl_s = info.ttl,
                        "resumed lease is alive"
                    );
                    true
                }
                Ok(None) => {
                    tracing::info!(
                        generation = lease.generation,
                        "resumed lease no longer exists"
                    );
                    false
                }
                Err(e) => {
                    if e.is_transient() {
                        transient = true;
                    } else {
                        self.error(format!("cannot look up a resumed lease: {e}"));
                    }
                    lease.expires_at > now
                }
            };
            if keep {
                if is_current {
                    self.st.current = Some(lease);
                } else {
                    self.st.retiring.push(lease);
                }
            }
        }
        self.leases_verified = !transient;
        if let Some(c) = self.st.current.clone() {
            self.established = true;
            self.publish_lease(&c);
        }
    }

    /// Renews the current and retiring leases that are due.
    pub(super) async fn renew_leases(&mut self) {
        let now = Utc::now();
        let Some(token) = self.token_valid(now) else {
            return;
        };
        let mut targets: Vec<(Option<usize>, LeaseState)> = Vec::new();
        if let Some(c) = self.st.current.as_ref().filter(|l| l.renew_due(now)) {
            targets.push((None, c.clone()));
        }
        for (i, l) in self.st.retiring.iter().enumerate() {
            if l.renew_due(now) && l.retire_by.is_none_or(|r| r > now) {
                targets.push((Some(i), l.clone()));
            }
        }
        let mut gone: Vec<Option<usize>> = Vec::new();
        for (slot, lease) in targets {
            let r = self
                .vault
                .renew_lease(&token, &lease.lease_id, lease.lease_duration_s)
                .await;
            self.note_vault(&r);
            let now = Utc::now();
            let mut updated = lease.clone();
            match r {
                Ok(rn) => {
                    self.m.lease_renewals.with_label_values(&["ok"]).inc();
                    self.counts.lease_renewals_ok += 1;
                    updated.expires_at = now + Duration::seconds(rn.lease_duration as i64);
                    updated.renewable = rn.renewable;
                    if rn.lease_duration + 1 < lease.lease_duration_s || !rn.renewable {
                        updated.hard_end = Some(updated.expires_at);
                        let max = (updated.expires_at - updated.issued_at)
                            .num_seconds()
                            .max(1);
                        if self.cfg.lifecycle.max_ttl_hint_s == 0 {
                            self.st.max_ttl_s = Some(max as u64);
                        }
                        tracing::info!(
                            generation = lease.generation,
                            max_ttl_s = max,
                            "lease renewal capped by max_ttl"
                        );
                    }
                    updated.next_renew_at =
                        self.renew_at(now, rn.lease_duration, self.cfg.lifecycle.renew_fraction);
                    tracing::debug!(
                        generation = lease.generation,
                        ttl_s = rn.lease_duration,
                        "renewed lease"
                    );
                }
                Err(e) => {
                    self.m.lease_renewals.with_label_values(&["error"]).inc();
                    self.counts.lease_renewals_failed += 1;
                    self.error(format!(
                        "renewal of the generation {} lease failed: {e}",
                        lease.generation
                    ));
                    if matches!(e, VaultError::Rejected { .. }) {
                        // "lease not found" or "not renewable": ask Vault.
                        match self.vault.lookup_lease(&token, &lease.lease_id).await {
                            Ok(None) => {
                                gone.push(slot);
                                continue;
                            }
                            Ok(Some(info)) => {
                                updated.expires_at = now + Duration::seconds(info.ttl as i64);
                                updated.renewable = info.renewable;
                            }
                            Err(_) => {}
                        }
                    }
                    let (i, mx) = self.backoff();
                    let d = backoff_delay(self.counts.lease_renewals_failed.min(30) as u32, i, mx);
                    updated.next_renew_at = now + d;
                }
            }
            match slot {
                None => {
                    if self.st.current.as_ref().map(|c| &c.lease_id) == Some(&lease.lease_id) {
                        self.publish_lease(&updated);
                        self.st.current = Some(updated);
                    }
                }
                Some(i) => {
                    if let Some(l) = self.st.retiring.get_mut(i) {
                        *l = updated;
                    }
                }
            }
        }
        for slot in gone {
            match slot {
                None => {
                    tracing::warn!(
                        "the published credential's lease no longer exists; issuing a new one"
                    );
                    self.st.current = None;
                }
                Some(i) => {
                    if i < self.st.retiring.len() {
                        self.st.retiring.remove(i);
                    }
                }
            }
        }
    }

    /// Revokes superseded leases once the worker moved on (or the grace
    /// period ended); forgets the ones that expired.
    pub(super) async fn retire(&mut self) {
        if self.st.retiring.is_empty() {
            return;
        }
        let now = Utc::now();
        let ack = WorkerAck::load(&self.shared.worker_ack()).map(|a| a.generation);
        let token = self.token_valid(now);
        let mut keep = Vec::new();
        let retiring = std::mem::take(&mut self.st.retiring);
        for lease in retiring {
            let acked = ack.is_some_and(|g| g > lease.generation);
            let due = acked || lease.retire_by.is_none_or(|r| now >= r);
            let dead = lease.expires_at <= now
                || lease
                    .deadline(self.st.token.as_ref())
                    .is_some_and(|d| d <= now);
            if !due {
                keep.push(lease);
                continue;
            }
            match (&token, self.revoke_retry.ready(now)) {
                (Some(tok), true) => {
                    let r = self.vault.revoke_lease(tok, &lease.lease_id).await;
                    self.note_vault(&r);
                    self.count_revocation(&r);
                    match r {
                        Ok(()) => {
                            self.revoke_retry.ok();
                            let how = if acked { "acked" } else { "grace" };
                            self.m.lease_retirements.with_label_values(&[how]).inc();
                            tracing::info!(
                                generation = lease.generation,
                                acked,
                                "revoked the superseded lease"
                            );
                        }
                        Err(_) if dead => {}
                        Err(e) if !e.is_transient() && e.status() == Some(400) => {}
                        Err(_) => {
                            let (i, mx) = self.backoff();
                            self.revoke_retry.fail(Utc::now(), i, mx);
                            keep.push(lease);
                        }
                    }
                }
                _ if dead => {
                    tracing::info!(generation = lease.generation, "superseded lease expired");
                }
                _ => keep.push(lease),
            }
        }
        self.st.retiring.extend(keep);
    }

    /// True when the worker of this pod answers `/livez` on its health
    /// socket (`<shared_dir>/worker.sock`). The kubelet stops a pod's main
    /// containers before its sidecars, so a SIGTERM while the worker lives
    /// is the agent's own container restarting (a failed liveness probe, an
    /// OOM kill), not the pod going away.
    async fn worker_alive(&self) -> bool {
        let socket = self.shared.worker_socket();
        let r = request(&socket, ProbeKind::Live, WORKER_PROBE_TIMEOUT).await;
        matches!(r, Ok((200, _)))
    }

    /// SIGTERM: stop renewing. When the worker is alive (a container
    /// restart, see [`Self::worker_alive`]) keep the leases, the token and
    /// db.json for the next start; otherwise revoke every lease (bounded),
    /// remove db.json when its credential was revoked, then revoke the
    /// token.
    pub(super) async fn shutdown_revoke(&mut self) {
        if !self.cfg.lifecycle.revoke_on_shutdown {
            tracing::info!(
                "shutdown: keeping leases for the next start (revoke_on_shutdown = false)"
            );
            return;
        }
        if self.worker_alive().await {
            let acked = WorkerAck::load(&self.shared.worker_ack()).map(|a| a.generation);
            tracing::info!(
                generation = self.st.generation,
                worker_acks = acked,
                "shutdown: the worker is alive (the agent's container restarts): keeping the leases, the token and db.json for the next start"
            );
            return;
        }
        let timeout = std::time::Duration::from_secs(self.cfg.lifecycle.shutdown_timeout_s);
        let now = Utc::now();
        let Some(token) = self.token_valid(now) else {
            tracing::warn!("shutdown: no valid token, leases are left to expire");
            return;
        };
        let fut = async {
            let mut leases: Vec<LeaseState> = Vec::new();
            let current_gen = self.st.current.as_ref().map(|c| c.generation);
            leases.extend(self.st.current.take());
            leases.append(&mut self.st.retiring);
            let mut left = Vec::new();
            for l in leases {
                let r = self.vault.revoke_lease(&token, &l.lease_id).await;
                self.note_vault(&r);
                self.count_revocation(&r);
                match r {
                    Ok(()) => {
                        tracing::info!(generation = l.generation, "shutdown: revoked lease");
                        if Some(l.generation) == current_gen {
                            let _ = std::fs::remove_file(self.shared.db_json());
                            self.outputs.remove_all();
                        }
                    }
                    Err(_) => left.push(l),
                }
            }
            let all_revoked = left.is_empty();
            for l in left {
                if Some(l.generation) == current_gen {
                    self.st.current = Some(l);
                } else {
                    self.st.retiring.push(l);
                }
            }
            if all_revoked {
                let r = self.vault.revoke_self(&token).await;
                if r.is_ok() {
                    self.st.token = None;
                    tracing::info!("shutdown: revoked the Vault token");
                }
            }
        };
        if tokio::time::timeout(timeout, fut).await.is_err() {
            self.error(format!(
                "shutdown: revocation did not finish within {}s",
                timeout.as_secs()
            ));
        }
    }
}
