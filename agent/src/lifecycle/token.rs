//! The Vault token: login (AppRole, JWT or Kubernetes alike, the request
//! from [`super::auth`]), renew-self on schedule, and the re-login before a
//! capped token's hard end; replaced tokens are renewed while leases they
//! created are still in use.

use super::retry::backoff_delay;
use super::{Lifecycle, Renewable};
use crate::fatal::Fatal;
use crate::state::TokenState;
use chrono::{Duration, Utc};

impl Lifecycle {
    /// How long before its hard end a token is replaced.
    pub(super) fn relogin_lead(&self, t: &TokenState) -> Duration {
        let lead = self.lead();
        let want = lead + Duration::seconds(5).max(lead / 5);
        match t.hard_end {
            Some(end) => want.min((end - t.obtained_at) / 2),
            None => want,
        }
    }

    pub(super) async fn ensure_token(&mut self) -> Result<(), Fatal> {
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
            if t.renew_due(now) {
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
            let kept = if t.renew_due(now) {
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

    pub(super) async fn login(&mut self) -> Result<(), Fatal> {
        let Some(r) = self.login_request().await? else {
            let (i, mx) = self.backoff();
            self.login_retry.fail(Utc::now(), i, mx);
            return Ok(());
        };
        self.note_vault(&r);
        let method = self.cfg.vault.auth.method.display_name();
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
                    "logged in to Vault with {method}"
                );
            }
            Err(e) => {
                self.m.logins.with_label_values(&["error"]).inc();
                self.counts.logins_failed += 1;
                let hint = self.login_hint(&e);
                // 404: no such namespace (or mount); it will not appear soon.
                let refused = e.is_permission() || e.status() == Some(404);
                if refused && !self.established {
                    return Err(Fatal::Permission(format!(
                        "{method} login refused: {e}{hint}"
                    )));
                }
                self.error(format!("{method} login failed: {e}{hint}"));
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
}
