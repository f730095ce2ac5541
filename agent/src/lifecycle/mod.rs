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
//!
//! One [`Lifecycle`] value holds all of it; its methods are spread over
//! one file per concern: this file has the state, the loop and the
//! schedule (`run`, `step`, `next_wake`); [`token`] the Vault token;
//! [`auth`] the login request of each `vault.auth.method`;
//! [`issue`] new credentials and the fallback; [`leases`] the leases
//! already held (resume, renewal, retirement, shutdown revocation);
//! [`report`] the status board and metrics; [`retry`] the backoff.

mod auth;
mod issue;
mod leases;
mod report;
pub(crate) mod retry;
mod token;

use crate::config::Config;
use crate::fatal::Fatal;
use crate::inputs::{FallbackCredential, LoginInputs, SecretIdSource};
use crate::metrics::AgentMetrics;
use crate::outputs::Outputs;
use crate::state::{AgentState, LeaseState, TokenState};
use crate::status::{Counts, StatusBoard, VaultView};
use crate::vault::VaultClient;
use chrono::{DateTime, Duration, Utc};
use rand::Rng;
use retry::Retry;
use riskfeat_shared::ca_file::CaFile;
use riskfeat_shared::layout::SharedDir;
use riskfeat_shared::pg_tls::PgTls;
use riskfeat_shared::Secret;
use std::sync::Arc;
use tokio::sync::watch;

/// `s` seconds (negative or NaN counts as zero, at most
/// [`MAX_SECS`](crate::vault::secs::MAX_SECS)), to the millisecond.
fn secs(s: f64) -> Duration {
    let max = crate::vault::secs::MAX_SECS as f64;
    let s = if s.is_nan() { 0.0 } else { s.clamp(0.0, max) };
    Duration::milliseconds((s * 1000.0) as i64)
}

/// What decides when a token or a lease is renewed.
struct Schedule {
    renewable: bool,
    next_renew_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    /// Its last possible moment, once a capped renewal revealed it.
    hard_end: Option<DateTime<Utc>>,
}

/// A token or a lease: renewed on a schedule, each renewal extending its
/// expiry, until a renewal comes back capped at its hard end.
trait Renewable {
    fn schedule(&self) -> Schedule;

    /// True when it should be renewed at `now`: renewable, alive, not yet
    /// extended to its hard end, and its renewal time has come.
    fn renew_due(&self, now: DateTime<Utc>) -> bool {
        let s = self.schedule();
        s.renewable
            && now >= s.next_renew_at
            && s.expires_at > now
            && s.hard_end
                .is_none_or(|h| s.expires_at + Duration::seconds(1) < h)
    }

    /// Its next renewal time, if a renewal will be due then (the same test,
    /// asked at that time): what [`Lifecycle::next_wake`] waits for.
    fn next_renewal(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let at = self.schedule().next_renew_at;
        self.renew_due(at.max(now)).then_some(at)
    }
}

/// Tokens and leases keep their schedule in fields of the same names.
macro_rules! renewable {
    ($($state:ty),*) => {$(
        impl Renewable for $state {
            fn schedule(&self) -> Schedule {
                Schedule {
                    renewable: self.renewable,
                    next_renew_at: self.next_renew_at,
                    expires_at: self.expires_at,
                    hard_end: self.hard_end,
                }
            }
        }
    )*};
}
renewable!(TokenState, LeaseState);

/// The state machine; see the module docs.
pub struct Lifecycle {
    cfg: Arc<Config>,
    shared: SharedDir,
    vault: VaultClient,
    m: AgentMetrics,
    board: Arc<StatusBoard>,
    login: LoginInputs,
    fallback: Option<FallbackCredential>,
    /// The TLS for check logins without `database.ca_file`.
    pg_tls: PgTls,
    /// `database.ca_file`, read again before each check login.
    pg_ca: Option<CaFile<PgTls>>,
    st: AgentState,
    /// `[[output]]`: written with `db.json` ([`crate::outputs`]).
    outputs: Outputs,
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
    /// See [`Inputs::state_problem`].
    state_problem: Option<String>,
}

/// What the lifecycle needs at construction.
pub struct Inputs {
    /// What to log in with (AppRole's secret_id is `None` when the state
    /// file already holds it).
    pub login: LoginInputs,
    pub fallback: Option<FallbackCredential>,
    pub state: AgentState,
    /// TLS to the replica for the login check: as built at start, and
    /// `database.ca_file` to read again when set.
    pub pg_tls: PgTls,
    pub pg_ca: Option<CaFile<PgTls>>,
    /// Why the previous state could not be loaded (shown in `/status`).
    pub state_problem: Option<String>,
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
        let mut login = inputs.login;
        if let LoginInputs::AppRole { secret, .. } = &mut login {
            // A secret_id whose file is gone must survive a restart.
            if let Some(SecretIdSource::Plain(s)) = &secret {
                if cfg.vault.delete_secret_id_after_read {
                    st.secret_id = Some(s.clone());
                }
            }
            if secret.is_none() {
                *secret = st.secret_id.clone().map(SecretIdSource::Plain);
            }
        }
        if cfg.lifecycle.max_ttl_hint_s > 0 {
            st.max_ttl_s = Some(cfg.lifecycle.max_ttl_hint_s);
        }
        Self {
            shared: SharedDir::new(cfg.shared_dir.clone()),
            outputs: Outputs::new(&cfg),
            cfg,
            vault,
            m,
            board,
            login,
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
            state_problem: inputs.state_problem,
        }
    }

    /// When to renew something that lasts `duration_s` from `now`: at
    /// `fraction` of it, jittered only earlier (as Vault's own lifetime
    /// watcher does), so that jitter never eats into the margin left
    /// before the expiry (a 5 s lease renewed at up to 110% of 2/3 kept
    /// 1.3 s, which a loaded machine once overran).
    fn renew_at(&self, now: DateTime<Utc>, duration_s: u64, fraction: f64) -> DateTime<Utc> {
        let j = self.cfg.lifecycle.jitter;
        let f = if j > 0.0 {
            rand::rng().random_range(1.0 - j..=1.0)
        } else {
            1.0
        };
        now + secs(duration_s as f64 * fraction * f).max(Duration::milliseconds(200))
    }

    /// The token in use, unless it has expired.
    fn token_valid(&self, now: DateTime<Utc>) -> Option<Secret> {
        self.st
            .token
            .as_ref()
            .filter(|t| t.expires_at > now)
            .map(|t| t.token.clone())
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
        self.publish_outputs(None);
        self.retire().await;
        Ok(())
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
                t.extend(tok.next_renewal(now));
            }
        }
        t.extend(
            self.st
                .old_tokens
                .iter()
                .filter_map(|o| o.next_renewal(now)),
        );
        if !self.leases_verified || self.outputs.pending() {
            t.push(now + Duration::seconds(1));
        }
        for l in self.st.current.iter().chain(self.st.retiring.iter()) {
            // (`next_renewal` also asks that the lease outlive that time;
            // its expiry, an earlier wake-up, is pushed in any case.)
            t.extend(l.next_renewal(now));
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
}

#[cfg(test)]
mod tests {
    use super::*;
    pub(super) use crate::state::lease;

    pub(super) fn lifecycle(lifecycle_toml: &str) -> Lifecycle {
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
                login: LoginInputs::AppRole {
                    role_id: Secret::new("r"),
                    secret: Some(SecretIdSource::Plain(Secret::new("s"))),
                },
                fallback: None,
                state: AgentState::default(),
                pg_tls: PgTls::new("database.ca_file", None).unwrap(),
                pg_ca: None,
                state_problem: None,
            },
            rx,
        )
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
    fn renewal_due_for_tokens_and_leases_alike() {
        let now = Utc::now();
        let at = now + Duration::seconds(40);
        let mut l = lease(now, 60);
        let mut t = TokenState {
            token: Secret::new("t"),
            serial: 1,
            obtained_at: now,
            expires_at: l.expires_at,
            ttl_s: 60,
            renewable: true,
            hard_end: None,
            next_renew_at: at,
        };
        for r in [&l as &dyn Renewable, &t] {
            assert!(!r.renew_due(now), "not yet");
            assert!(r.renew_due(at) && r.renew_due(at + Duration::seconds(19)));
            assert!(!r.renew_due(at + Duration::seconds(20)), "expired");
            assert_eq!(r.next_renewal(now), Some(at));
            assert_eq!(r.next_renewal(at + Duration::seconds(5)), Some(at));
        }
        // Extended to its hard end (within a second): no more renewals.
        l.hard_end = Some(l.expires_at + Duration::milliseconds(500));
        t.hard_end = Some(t.expires_at + Duration::seconds(2));
        assert!(!l.renew_due(at) && l.next_renewal(now).is_none());
        assert!(t.renew_due(at), "the hard end is further away");
        // Not renewable, or expiring before its renewal time.
        t.renewable = false;
        l.hard_end = None;
        l.next_renew_at = l.expires_at + Duration::seconds(1);
        assert!(!t.renew_due(at) && t.next_renewal(now).is_none());
        assert!(l.next_renewal(now).is_none());
    }
}
