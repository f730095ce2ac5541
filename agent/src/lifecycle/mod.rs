//! The credential state machine: token, current lease, retiring leases.
//!
//! One task, woken only when something is due (no busy polling):
//!
//! 1. **Token**: log in when there is none; renew-self at a fraction of its
//!    TTL (with jitter); when a renewal comes back capped (token_max_ttl) the
//!    token's hard end is known and the agent logs in again *before* it,
//!    leaving time to re-issue the credentials created under the old token
//!    (leases die with the token that created them).
//! 2. **Leases**: renew at `renew_fraction` of the lease (with jitter). A
//!    capped renewal reveals the lease's max_ttl end (learned for the next
//!    ones, or given as `max_ttl_hint_s`).
//! 3. **Rotation**: `rotate_lead_s` before the current credential's deadline
//!    (lease max_ttl end, creating token's end, or expiry when not
//!    renewable), issue a new credential, wait until it logs in **on the
//!    replica**, then publish `db.json` with `generation + 1`. Issuance is
//!    capped per minute (the cap is persisted, so a crash loop cannot flood
//!    the database either).
//! 4. **Retirement**: the superseded lease is revoked once `worker.json`
//!    shows a newer generation, or at `min(publish + ack_grace, deadline)`.
//! 5. **Faults**: transient Vault errors back off exponentially with jitter;
//!    the published credential stays while it is valid; when none is valid
//!    and Vault cannot issue, the static fallback (if configured) is
//!    published. Permanent errors (400/403) before anything was published
//!    end the process (exit 77) with one line naming the path and cause.
//!
//! State is saved to `agent-state.json` after every step so a restart
//! resumes the same token and lease.

use crate::config::Config;
use crate::fatal::Fatal;
use crate::inputs::{FallbackCredential, SecretIdSource};
use crate::metrics::AgentMetrics;
use crate::replica;
use crate::state::{AgentState, LeaseState, TokenState};
use crate::status::{Board, Counts, PublishedView, StatusBoard, TokenView, VaultView};
use crate::vault::{VaultClient, VaultError};
use chrono::{DateTime, Duration, Utc};
use rand::Rng;
use riskfeat_shared::ack::WorkerAck;
use riskfeat_shared::atomic::{write_json_atomic, WriteOptions, WriteOutcome};
use riskfeat_shared::ca_file::CaFile;
use riskfeat_shared::creds::DbCredential;
use riskfeat_shared::layout::SharedDir;
use riskfeat_shared::pg_tls::PgTls;
use riskfeat_shared::Secret;
use std::sync::Arc;
use tokio::sync::watch;

/// Retry bookkeeping for one kind of operation.
#[derive(Debug, Default, Clone)]
struct Retry {
    failures: u32,
    not_before: Option<DateTime<Utc>>,
}

impl Retry {
    fn ready(&self, now: DateTime<Utc>) -> bool {
        self.not_before.is_none_or(|t| now >= t)
    }
    fn ok(&mut self) {
        self.failures = 0;
        self.not_before = None;
    }
    fn fail(&mut self, now: DateTime<Utc>, initial_s: f64, max_s: f64) -> DateTime<Utc> {
        let d = backoff_delay(self.failures, initial_s, max_s);
        self.failures = self.failures.saturating_add(1);
        let at = now + d;
        self.not_before = Some(at);
        at
    }
}

/// Exponential backoff with jitter: `initial * 2^n` capped at `max`, then a
/// random factor in [0.5, 1].
fn backoff_delay(failures: u32, initial_s: f64, max_s: f64) -> Duration {
    let base = (initial_s * 2f64.powi(failures.min(30) as i32)).min(max_s);
    let factor = rand::rng().random_range(0.5..=1.0);
    secs(base * factor)
}

fn secs(s: f64) -> Duration {
    Duration::milliseconds((s.max(0.0) * 1000.0) as i64)
}

/// True when a token should be renewed now: renewable, not yet extended
/// to its hard end, and its renewal time has come.
fn token_renew_due(t: &TokenState, now: DateTime<Utc>) -> bool {
    t.renewable
        && now >= t.next_renew_at
        && t.expires_at > now
        && t.hard_end
            .is_none_or(|h| t.expires_at + Duration::seconds(1) < h)
}

/// The state machine; see the module docs.
pub struct Lifecycle {
    cfg: Arc<Config>,
    shared: SharedDir,
    vault: VaultClient,
    m: AgentMetrics,
    board: Arc<StatusBoard>,
    role_id: Secret,
    secret: Option<SecretIdSource>,
    fallback: Option<FallbackCredential>,
    /// The TLS for check logins without `database.ca_file`.
    pg_tls: PgTls,
    /// `database.ca_file`, read again before each check login.
    pg_ca: Option<CaFile<PgTls>>,
    st: AgentState,
    shutdown: watch::Receiver<bool>,
    login_retry: Retry,
    issue_retry: Retry,
    revoke_retry: Retry,
    fallback_retry: Retry,
    leases_verified: bool,
    established: bool,
    vault_view: VaultView,
    counts: Counts,
    last_error: Option<(String, DateTime<Utc>)>,
    /// Errors logged at warn level in the last 30 s.
    logged_errors: std::collections::HashMap<String, DateTime<Utc>>,
}

/// What the lifecycle needs at construction.
pub struct Inputs {
    pub role_id: Secret,
    /// `None` when the state file already holds the secret_id.
    pub secret: Option<SecretIdSource>,
    pub fallback: Option<FallbackCredential>,
    pub state: AgentState,
    /// TLS to the replica for the login check: as built at start, and
    /// `database.ca_file` to read again when set.
    pub pg_tls: PgTls,
    pub pg_ca: Option<CaFile<PgTls>>,
}

impl Lifecycle {
    /// A lifecycle over a loaded state.
    pub fn new(
        cfg: Arc<Config>,
        vault: VaultClient,
        m: AgentMetrics,
        board: Arc<StatusBoard>,
        inputs: Inputs,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let mut st = inputs.state;
        let mut secret = inputs.secret;
        // A secret_id whose file is gone must survive a restart.
        if let Some(SecretIdSource::Plain(s)) = &secret {
            if cfg.vault.delete_secret_id_after_read {
                st.secret_id = Some(s.clone());
            }
        }
        if secret.is_none() {
            secret = st.secret_id.clone().map(SecretIdSource::Plain);
        }
        if cfg.lifecycle.max_ttl_hint_s > 0 {
            st.max_ttl_s = Some(cfg.lifecycle.max_ttl_hint_s);
        }
        Self {
            shared: SharedDir::new(cfg.shared_dir.clone()),
            cfg,
            vault,
            m,
            board,
            role_id: inputs.role_id,
            secret,
            fallback: inputs.fallback,
            pg_tls: inputs.pg_tls,
            pg_ca: inputs.pg_ca,
            st,
            shutdown,
            login_retry: Retry::default(),
            issue_retry: Retry::default(),
            revoke_retry: Retry::default(),
            fallback_retry: Retry::default(),
            leases_verified: false,
            established: false,
            vault_view: VaultView::default(),
            counts: Counts::default(),
            last_error: None,
            logged_errors: Default::default(),
        }
    }

    fn backoff(&self) -> (f64, f64) {
        (
            self.cfg.lifecycle.backoff_initial_s,
            self.cfg.lifecycle.backoff_max_s,
        )
    }

    fn jittered(&self, base_s: f64) -> Duration {
        let j = self.cfg.lifecycle.jitter;
        let f = if j > 0.0 {
            rand::rng().random_range(1.0 - j..=1.0 + j)
        } else {
            1.0
        };
        secs(base_s * f)
    }

    /// When to renew something that lasts `duration_s` from `now`.
    fn renew_at(&self, now: DateTime<Utc>, duration_s: u64, fraction: f64) -> DateTime<Utc> {
        now + self
            .jittered(duration_s as f64 * fraction)
            .max(Duration::milliseconds(200))
    }

    /// Below this much time left a credential counts as close to expiry
    /// (the readiness threshold, scaled down for short leases).
    fn min_left(&self, l: &LeaseState) -> Duration {
        let s = (self.cfg.lifecycle.ready_min_remaining_s as i64)
            .min((l.lease_duration_s as i64 / 4).max(1));
        Duration::seconds(s)
    }

    /// The effective rotation lead: configured, at most half the lifetime.
    /// Also at most half a token's lifetime, since a credential cannot
    /// outlive the token that created it.
    fn lead(&self) -> Duration {
        let mut s = self.cfg.lifecycle.rotate_lead_s as f64;
        if let Some(m) = self.st.max_ttl_s {
            s = s.min(m as f64 / 2.0);
        }
        if let Some(m) = self.st.token_max_ttl_s {
            s = s.min(m as f64 / 2.0);
        }
        secs(s)
    }

    /// How long before its hard end a token is replaced.
    fn relogin_lead(&self, t: &TokenState) -> Duration {
        let lead = self.lead();
        let want = lead + Duration::seconds(5).max(lead / 5);
        match t.hard_end {
            Some(end) => want.min((end - t.obtained_at) / 2),
            None => want,
        }
    }

    /// Records an error for `/status`; logs it at warn level, except a
    /// repeat of the same error within 30 s (debug), so an outage does not
    /// flood the log but never goes silent.
    fn error(&mut self, msg: String) {
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

    fn note_vault<T>(&mut self, r: &Result<T, VaultError>) {
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

    fn token_valid(&self, now: DateTime<Utc>) -> Option<Secret> {
        self.st
            .token
            .as_ref()
            .filter(|t| t.expires_at > now)
            .map(|t| t.token.clone())
    }

    /// The TLS for a replica check login, with `database.ca_file` read
    /// again: a CA rotated through its ConfigMap applies to the next check
    /// without a restart; a file that cannot be read or used keeps the CA
    /// in use and says so (see [`CaFile`]).
    fn current_pg_tls(&mut self) -> PgTls {
        match &mut self.pg_ca {
            Some(file) => file.current(|path, bytes| {
                PgTls::from_pem("database.ca_file", path, bytes).map_err(|e| e.to_string())
            }),
            None => self.pg_tls.clone(),
        }
    }

    /// Runs until shutdown; then revokes (when configured) and returns.
    pub async fn run(mut self) -> Result<(), Fatal> {
        self.resume().await;
        loop {
            let r = self.step().await;
            if r.is_err() && !self.established {
                // Refused at start-up: do not leave a live token behind.
                if let Some(t) = self.st.token.take() {
                    let revoke = self.vault.revoke_self(&t.token);
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), revoke).await;
                }
            }
            self.save_state();
            self.refresh_board();
            r?;
            if *self.shutdown.borrow() {
                break;
            }
            let now = Utc::now();
            let wake = self.next_wake(now);
            let dur = (wake - now)
                .to_std()
                .unwrap_or_default()
                .max(std::time::Duration::from_millis(100));
            tracing::trace!(sleep_ms = dur.as_millis() as u64, "lifecycle sleeps");
            tokio::select! {
                _ = tokio::time::sleep(dur) => {}
                _ = self.shutdown.wait_for(|s| *s) => {}
            }
            if *self.shutdown.borrow() {
                break;
            }
        }
        self.shutdown_revoke().await;
        self.save_state();
        self.refresh_board();
        Ok(())
    }

    fn save_state(&mut self) {
        let now = Utc::now();
        self.st
            .issued_at
            .retain(|t| now - *t < Duration::seconds(60));
        if let Err(e) = self.st.save(&self.shared.agent_state()) {
            self.error(e.to_string());
        }
    }

    /// Loads what a previous run left: db.json's generation, the token
    /// (checked with lookup-self); leases are checked once a token exists.
    async fn resume(&mut self) {
        // Generations only grow, even if the state file was lost: a reused
        // number could match an old ack and retire a lease in use.
        if let Ok(c) = DbCredential::load(&self.shared.db_json()) {
            self.st.generation = self.st.generation.max(c.generation);
        }
        if let Some(ack) = WorkerAck::load(&self.shared.worker_ack()) {
            self.st.generation = self.st.generation.max(ack.generation);
        }
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

    /// Checks resumed leases with sys/leases/lookup; drops the dead ones.
    async fn verify_leases(&mut self, token: &Secret) {
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
                    lease.renewable = info.renewable;
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

    /// One pass over everything that may be due.
    async fn step(&mut self) -> Result<(), Fatal> {
        self.ensure_token().await?;
        if !self.leases_verified {
            if let Some(tok) = self.token_valid(Utc::now()) {
                self.verify_leases(&tok).await;
            }
        }
        self.renew_leases().await;
        self.ensure_credential().await?;
        self.retire().await;
        Ok(())
    }

    async fn secret_id(&mut self) -> Result<Option<Secret>, Fatal> {
        match self.secret.clone() {
            Some(SecretIdSource::Plain(s)) => Ok(Some(s)),
            Some(SecretIdSource::Wrapped(w)) => {
                let r = self.vault.unwrap_secret_id(&w).await;
                self.note_vault(&r);
                match r {
                    Ok(s) => {
                        tracing::info!("unwrapped the response-wrapped secret_id");
                        self.secret = Some(SecretIdSource::Plain(s.clone()));
                        // The wrapping token is spent: keep the secret_id.
                        self.st.secret_id = Some(s.clone());
                        Ok(Some(s))
                    }
                    Err(e) if !e.is_transient() => Err(Fatal::Permission(format!(
                        "cannot unwrap the secret_id from {}: {e}",
                        self.cfg
                            .vault
                            .secret_id_file
                            .as_deref()
                            .unwrap_or(std::path::Path::new("?"))
                            .display()
                    ))),
                    Err(e) => {
                        self.error(format!("cannot unwrap the secret_id: {e}"));
                        Ok(None)
                    }
                }
            }
            None => Err(Fatal::Input(
                "no secret_id: vault.secret_id_file is gone and agent-state.json holds none".into(),
            )),
        }
    }

    async fn ensure_token(&mut self) -> Result<(), Fatal> {
        let now = Utc::now();
        let need_login = match &self.st.token {
            None => true,
            Some(t) if t.expires_at <= now + Duration::seconds(1) => true,
            Some(t) => t
                .hard_end
                .is_some_and(|end| end - now <= self.relogin_lead(t)),
        };
        if need_login {
            if self.login_retry.ready(now) {
                self.login().await?;
            }
            return Ok(());
        }
        if let Some(t) = self.st.token.clone() {
            if token_renew_due(&t, now) {
                self.st.token = self.renew_token(t).await;
            }
        }
        // Tokens replaced by a login keep the leases they created alive:
        // renew them until those leases are retired or the token's end.
        let serials: Vec<u64> = self
            .st
            .current
            .iter()
            .chain(self.st.retiring.iter())
            .map(|l| l.token_serial)
            .collect();
        let old = std::mem::take(&mut self.st.old_tokens);
        for t in old {
            if t.expires_at <= now || !serials.contains(&t.serial) {
                continue;
            }
            let kept = if token_renew_due(&t, now) {
                self.renew_token(t).await
            } else {
                Some(t)
            };
            self.st.old_tokens.extend(kept);
        }
        Ok(())
    }

    /// Renews one token; `None` when Vault refused (the token is dead).
    async fn renew_token(&mut self, mut t: TokenState) -> Option<TokenState> {
        let r = self.vault.renew_self(&t.token, t.ttl_s).await;
        self.note_vault(&r);
        let now = Utc::now();
        match r {
            Ok(g) => {
                self.m.token_renewals.with_label_values(&["ok"]).inc();
                self.counts.token_renewals_ok += 1;
                let fraction = self.cfg.vault.token_renew_fraction;
                t.next_renew_at = self.renew_at(now, g.lease_duration, fraction);
                t.expires_at = now + Duration::seconds(g.lease_duration as i64);
                t.renewable = g.renewable;
                if g.lease_duration + 1 < t.ttl_s || !g.renewable {
                    if t.hard_end.is_none() {
                        tracing::info!(
                            serial = t.serial,
                            "token renewal capped: logging in again before the token's end"
                        );
                    }
                    t.hard_end = Some(t.expires_at);
                    let max = (t.expires_at - t.obtained_at).num_seconds().max(1) as u64;
                    self.st.token_max_ttl_s = Some(max);
                }
                tracing::debug!(
                    serial = t.serial,
                    ttl_s = g.lease_duration,
                    "renewed a Vault token"
                );
                Some(t)
            }
            Err(e) if !e.is_transient() => {
                self.m.token_renewals.with_label_values(&["error"]).inc();
                self.counts.token_renewals_failed += 1;
                self.error(format!("token renewal refused: {e}"));
                None
            }
            Err(e) => {
                self.m.token_renewals.with_label_values(&["error"]).inc();
                self.counts.token_renewals_failed += 1;
                self.error(format!("token renewal failed: {e}"));
                let (i, mx) = self.backoff();
                let d = backoff_delay(self.vault_view.consecutive_failures.min(30), i, mx);
                t.next_renew_at = now + d;
                Some(t)
            }
        }
    }

    async fn login(&mut self) -> Result<(), Fatal> {
        let Some(secret_id) = self.secret_id().await? else {
            let (i, mx) = self.backoff();
            self.login_retry.fail(Utc::now(), i, mx);
            return Ok(());
        };
        let mount = self.cfg.vault.approle_mount.clone();
        let r = self
            .vault
            .approle_login(&mount, &self.role_id, &secret_id)
            .await;
        self.note_vault(&r);
        let now = Utc::now();
        match r {
            Ok(g) => {
                self.m.logins.with_label_values(&["ok"]).inc();
                self.counts.logins_ok += 1;
                self.login_retry.ok();
                if let Some(old) = self.st.token.take() {
                    // Leases made under the old token die with it: keep
                    // renewing it until they are retired (up to its end).
                    let end = old.hard_end.unwrap_or(old.expires_at);
                    let mut used = false;
                    for l in self
                        .st
                        .current
                        .iter_mut()
                        .chain(self.st.retiring.iter_mut())
                    {
                        if l.token_serial == old.serial {
                            l.token_end = Some(end);
                            used = true;
                        }
                    }
                    if used && old.expires_at > now {
                        self.st.old_tokens.push(old);
                    }
                }
                self.st.token_serial += 1;
                let expires_at = if g.lease_duration == 0 {
                    now + Duration::days(3650)
                } else {
                    now + Duration::seconds(g.lease_duration as i64)
                };
                let hard_end = if !g.renewable || g.lease_duration == 0 {
                    Some(expires_at)
                } else {
                    self.st
                        .token_max_ttl_s
                        .map(|m| now + Duration::seconds(m as i64))
                        .map(|e| e.max(expires_at))
                };
                let fraction = self.cfg.vault.token_renew_fraction;
                self.st.token = Some(TokenState {
                    token: g.token,
                    serial: self.st.token_serial,
                    obtained_at: now,
                    expires_at,
                    ttl_s: g.lease_duration,
                    renewable: g.renewable,
                    hard_end,
                    next_renew_at: self.renew_at(now, g.lease_duration, fraction),
                });
                tracing::info!(
                    ttl_s = g.lease_duration,
                    renewable = g.renewable,
                    serial = self.st.token_serial,
                    "logged in to Vault with AppRole"
                );
            }
            Err(e) => {
                self.m.logins.with_label_values(&["error"]).inc();
                self.counts.logins_failed += 1;
                if e.is_permission() && !self.established {
                    return Err(Fatal::Permission(format!("AppRole login refused: {e}")));
                }
                self.error(format!("AppRole login failed: {e}"));
                let (i, mx) = self.backoff();
                let at = if e.is_transient() {
                    self.login_retry.fail(now, i, mx)
                } else {
                    // A refusal will not go away soon: retry slowly.
                    self.login_retry.failures = self.login_retry.failures.max(20);
                    self.login_retry.fail(now, i, mx)
                };
                tracing::debug!(retry_at = %at, "login retry scheduled");
            }
        }
        Ok(())
    }

    /// Renews the current and retiring leases that are due.
    async fn renew_leases(&mut self) {
        let now = Utc::now();
        let Some(token) = self.token_valid(now) else {
            return;
        };
        let due = |l: &LeaseState| {
            l.renewable
                && now >= l.next_renew_at
                && l.expires_at > now
                && l.hard_end
                    .is_none_or(|h| l.expires_at + Duration::seconds(1) < h)
        };
        let mut targets: Vec<(Option<usize>, LeaseState)> = Vec::new();
        if let Some(c) = self.st.current.as_ref().filter(|l| due(l)) {
            targets.push((None, c.clone()));
        }
        for (i, l) in self.st.retiring.iter().enumerate() {
            if due(l) && l.retire_by.is_none_or(|r| r > now) {
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

    /// Time when the issuance cap allows the next credential.
    fn cap_free_at(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
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
    fn need_credential(&self, now: DateTime<Utc>) -> Option<&'static str> {
        match &self.st.current {
            None => Some("no credential"),
            Some(c) if c.expires_at <= now => Some("credential expired"),
            // Renewals lag (outage): replace it (or fall back) in time.
            Some(c) if c.expires_at - now <= self.min_left(c) => Some("credential about to expire"),
            Some(c) => match c.deadline(self.st.token.as_ref()) {
                Some(d) if d - now <= self.lead() => Some("rotation"),
                _ => None,
            },
        }
    }

    async fn ensure_credential(&mut self) -> Result<(), Fatal> {
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
        };
        if !self.publish_lease(&lease) {
            let r = self.vault.revoke_lease(&token, &lease.lease_id).await;
            self.count_revocation(&r);
            let (i, mx) = self.backoff();
            self.issue_retry.fail(now, i, mx);
            return Ok(());
        }
        self.st.generation = lease.generation;
        self.st.fallback_published = false;
        self.established = true;
        tracing::info!(
            generation = lease.generation,
            lease_duration_s = lease.lease_duration_s,
            "published a new database credential"
        );
        if let Some(mut old) = self.st.current.replace(lease) {
            let grace = now + Duration::seconds(self.cfg.lifecycle.ack_grace_s as i64);
            let bound = old.deadline(self.st.token.as_ref()).unwrap_or(grace);
            old.retire_by = Some(grace.min(bound).max(now));
            self.st.retiring.push(old);
        }
        Ok(())
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
        if self.write_db_json(&cred) {
            self.fallback_retry.ok();
            self.st.generation = cred.generation;
            self.st.fallback_published = true;
            self.counts.fallback_publications += 1;
            tracing::warn!(
                generation = cred.generation,
                "Vault cannot issue a credential: published the static fallback credential"
            );
            if let Some(mut old) = self.st.current.take() {
                old.retire_by = Some(now);
                self.st.retiring.push(old);
            }
        }
    }

    fn write_db_json(&mut self, cred: &DbCredential) -> bool {
        let opts = WriteOptions::SHARED.with_gid(self.cfg.file_group);
        match write_json_atomic(&self.shared.db_json(), cred, opts) {
            Ok(WriteOutcome::Written) => true,
            Ok(WriteOutcome::Unchanged) => true,
            Err(e) => {
                self.error(e.to_string());
                false
            }
        }
    }

    fn publish_lease(&mut self, l: &LeaseState) -> bool {
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

    fn count_revocation<T>(&mut self, r: &Result<T, VaultError>) {
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

    /// Revokes superseded leases once the worker moved on (or the grace
    /// period ended); forgets the ones that expired.
    async fn retire(&mut self) {
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

    /// When something is next due.
    fn next_wake(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let mut t: Vec<DateTime<Utc>> = vec![now + Duration::seconds(60)];
        let retry = |r: &Retry| r.not_before.unwrap_or(now);
        match &self.st.token {
            None => t.push(retry(&self.login_retry)),
            Some(tok) => {
                t.push(tok.expires_at - Duration::seconds(1));
                if let Some(end) = tok.hard_end {
                    t.push((end - self.relogin_lead(tok)).max(retry(&self.login_retry)));
                }
                if token_renew_due(tok, tok.next_renew_at.max(now)) {
                    t.push(tok.next_renew_at);
                }
            }
        }
        for old in &self.st.old_tokens {
            if token_renew_due(old, old.next_renew_at.max(now)) {
                t.push(old.next_renew_at);
            }
        }
        if !self.leases_verified {
            t.push(now + Duration::seconds(1));
        }
        for l in self.st.current.iter().chain(self.st.retiring.iter()) {
            if l.renewable
                && l.hard_end
                    .is_none_or(|h| l.expires_at + Duration::seconds(1) < h)
            {
                t.push(l.next_renew_at);
            }
            t.push(l.expires_at);
        }
        if let Some(c) = &self.st.current {
            t.push(c.expires_at - self.min_left(c));
            if let Some(d) = c.deadline(self.st.token.as_ref()) {
                t.push(d - self.lead());
            }
        }
        if self.need_credential(now).is_some() {
            let mut at = retry(&self.issue_retry);
            if let Some(free) = self.cap_free_at(now) {
                at = at.max(free);
            }
            t.push(at);
            if self.fallback.is_some() && !self.st.fallback_published {
                t.push(retry(&self.fallback_retry));
            }
        }
        if !self.st.retiring.is_empty() {
            // Waiting for the worker's ack: a small file, read twice a second.
            t.push(now + Duration::milliseconds(500));
            for l in &self.st.retiring {
                if let Some(r) = l.retire_by {
                    t.push(r.max(retry(&self.revoke_retry)));
                }
            }
        }
        t.into_iter().min().unwrap_or(now).max(now)
    }

    fn refresh_board(&mut self) {
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
        });
        m.ready.set(self.board.readiness(now).is_ok() as i64);
    }

    /// SIGTERM: stop renewing; revoke every lease (bounded), remove db.json
    /// when its credential was revoked, then revoke the token.
    async fn shutdown_revoke(&mut self) {
        if !self.cfg.lifecycle.revoke_on_shutdown {
            tracing::info!(
                "shutdown: keeping leases for the next start (revoke_on_shutdown = false)"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for n in 0..40 {
            let d = backoff_delay(n, 0.5, 30.0).num_milliseconds();
            let base = (500.0 * 2f64.powi(n.min(30) as i32)).min(30_000.0);
            assert!(
                d as f64 <= base + 1.0 && d as f64 >= base * 0.5 - 1.0,
                "n={n} d={d}"
            );
        }
    }

    fn lifecycle(lifecycle_toml: &str) -> Lifecycle {
        let text = format!(
            r#"
            shared_dir = "/nonexistent"
            [vault]
            addr = "http://127.0.0.1:1"
            secret_id_file = "/s"
            [database]
            primary = {{ host = "p", port = 5432, dbname = "riskfeat" }}
            replica = {{ host = "r", port = 5432, dbname = "riskfeat" }}
            [lifecycle]
            {lifecycle_toml}
            "#
        );
        let cfg = Config::parse("t.toml", &text, &Default::default()).unwrap();
        let vault = VaultClient::new(
            &cfg.vault.addr,
            std::time::Duration::from_secs(1),
            None,
            &[],
        )
        .unwrap();
        let (_tx, rx) = watch::channel(false);
        Lifecycle::new(
            Arc::new(cfg),
            vault,
            AgentMetrics::new(),
            Arc::new(StatusBoard::new(10, None)),
            Inputs {
                role_id: Secret::new("r"),
                secret: Some(SecretIdSource::Plain(Secret::new("s"))),
                fallback: None,
                state: AgentState::default(),
                pg_tls: PgTls::new("database.ca_file", None).unwrap(),
                pg_ca: None,
            },
            rx,
        )
    }

    fn lease(now: DateTime<Utc>, duration_s: i64) -> LeaseState {
        LeaseState {
            generation: 1,
            lease_id: "database/creds/r/1".into(),
            username: "u".into(),
            password: Secret::new("p"),
            issued_at: now,
            expires_at: now + Duration::seconds(duration_s),
            lease_duration_s: duration_s as u64,
            renewable: true,
            hard_end: None,
            token_serial: 1,
            token_end: None,
            next_renew_at: now + Duration::seconds(duration_s * 2 / 3),
            retire_by: None,
        }
    }

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

    #[test]
    fn sleeps_until_the_next_renewal_not_busy() {
        let now = Utc::now();
        let mut l = lifecycle("rotate_lead_s = 8");
        l.leases_verified = true;
        l.st.token = Some(TokenState {
            token: Secret::new("t"),
            serial: 1,
            obtained_at: now,
            expires_at: now + Duration::seconds(3600),
            ttl_s: 3600,
            renewable: true,
            hard_end: None,
            next_renew_at: now + Duration::seconds(2400),
        });
        l.st.current = Some(lease(now, 600));
        let wake = l.next_wake(now);
        assert_eq!(
            wake,
            now + Duration::seconds(60),
            "at most a minute, here the cap"
        );
        l.st.current.as_mut().unwrap().next_renew_at = now + Duration::seconds(30);
        assert_eq!(l.next_wake(now), now + Duration::seconds(30));
    }

    #[test]
    fn retry_gate() {
        let now = Utc::now();
        let mut r = Retry::default();
        assert!(r.ready(now));
        let at = r.fail(now, 1.0, 10.0);
        assert!(!r.ready(now) && r.ready(at));
        r.ok();
        assert!(r.ready(now));
    }
}
