//! The agent's Prometheus metrics, all named `riskfeat_agent_*`.
//!
//! Labels are limited to `result` and `op`: never a username, a lease id or
//! a secret.

use prometheus::{HistogramVec, IntCounterVec, IntGauge, Registry};
use riskfeat_shared::metrics::Registrar;

/// Every metric the lifecycle updates.
#[derive(Clone)]
pub struct AgentMetrics {
    pub registry: Registry,
    pub logins: IntCounterVec,
    pub token_renewals: IntCounterVec,
    pub lease_renewals: IntCounterVec,
    pub issuances: IntCounterVec,
    pub revocations: IntCounterVec,
    pub replica_checks: IntCounterVec,
    /// Superseded leases revoked: `acked` (the worker moved past them) or
    /// `grace` (ack_grace_s or their deadline came first).
    pub lease_retirements: IntCounterVec,
    /// `[[output]]` files: `ok` written, `unchanged`, `error`.
    pub output_writes: IntCounterVec,
    /// Reload signals sent after outputs changed.
    pub output_notifications: IntCounterVec,
    pub vault_request_duration: HistogramVec,
    pub credential_expiry: IntGauge,
    pub token_expiry: IntGauge,
    pub generation: IntGauge,
    pub fallback: IntGauge,
    pub ready: IntGauge,
    pub vault_up: IntGauge,
    pub vault_last_success: IntGauge,
    pub vault_consecutive_failures: IntGauge,
}

/// A counter by `result`, its `ok` and `error` series shown from the start
/// (with `more` results besides).
fn by_result(r: &Registrar, name: &str, help: &str, more: &[&str]) -> IntCounterVec {
    let c = r.counter_vec(name, help, &["result"]);
    for result in ["ok", "error"].iter().chain(more) {
        c.with_label_values(&[result]);
    }
    c
}

impl AgentMetrics {
    /// Registers every metric in a new registry.
    pub fn new() -> Self {
        let r = &Registrar::new("riskfeat_agent_build_info", env!("CARGO_PKG_VERSION"));
        let lease_retirements = r.counter_vec(
            "riskfeat_agent_lease_retirements_total",
            "Superseded leases revoked, by result: acked = after the worker's ack of a newer generation, grace = without it (ack_grace_s or the lease's deadline came first).",
            &["result"],
        );
        for result in ["acked", "grace"] {
            lease_retirements.with_label_values(&[result]);
        }
        Self {
            vault_request_duration: r.histogram_vec(
                "riskfeat_agent_vault_request_duration_seconds",
                "Duration of Vault HTTP requests, by operation.",
                &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
                &["op"],
            ),
            issuances: by_result(
                r,
                "riskfeat_agent_credential_issuances_total",
                "Dynamic database credentials requested from Vault, by result (capped = refused by the per-minute cap).",
                &["capped"],
            ),
            replica_checks: by_result(
                r,
                "riskfeat_agent_replica_checks_total",
                "Login checks of a new credential on the replica, by result.",
                &[],
            ),
            output_writes: by_result(
                r,
                "riskfeat_agent_output_writes_total",
                "[[output]] files (pgpass, dsn, env, jdbc) per publish, by result (ok = written, unchanged = same bytes, not rewritten).",
                &["unchanged"],
            ),
            lease_retirements,
            output_notifications: by_result(
                r,
                "riskfeat_agent_output_notifications_total",
                "Reload signals sent to the notify_pid_file program after its outputs changed, by result.",
                &[],
            ),
            logins: by_result(
                r,
                "riskfeat_agent_vault_logins_total",
                "Vault logins (AppRole, JWT or Kubernetes), by result.",
                &[],
            ),
            token_renewals: by_result(
                r,
                "riskfeat_agent_token_renewals_total",
                "Vault token renewals, by result.",
                &[],
            ),
            lease_renewals: by_result(
                r,
                "riskfeat_agent_lease_renewals_total",
                "Database lease renewals, by result.",
                &[],
            ),
            revocations: by_result(
                r,
                "riskfeat_agent_lease_revocations_total",
                "Database lease revocations, by result.",
                &[],
            ),
            credential_expiry: r.gauge(
                "riskfeat_agent_credential_expiry_timestamp_seconds",
                "Unix time at which the published credential expires (0 = none).",
            ),
            token_expiry: r.gauge(
                "riskfeat_agent_token_expiry_timestamp_seconds",
                "Unix time at which the Vault token expires (0 = none).",
            ),
            generation: r.gauge(
                "riskfeat_agent_published_generation",
                "Generation of the credential published in db.json (0 = none).",
            ),
            fallback: r.gauge(
                "riskfeat_agent_fallback_active",
                "1 while the static fallback credential is published.",
            ),
            ready: r.gauge("riskfeat_agent_ready", "1 while the agent is ready."),
            vault_up: r.gauge(
                "riskfeat_agent_vault_up",
                "1 when the last Vault request got an answer, 0 during an outage.",
            ),
            vault_last_success: r.gauge(
                "riskfeat_agent_vault_last_success_timestamp_seconds",
                "Unix time of the last successful Vault request.",
            ),
            vault_consecutive_failures: r.gauge(
                "riskfeat_agent_vault_consecutive_failures",
                "Vault requests failed in a row since the last success.",
            ),
            registry: r.registry(),
        }
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_without_secrets() {
        let m = AgentMetrics::new();
        m.logins.with_label_values(&["ok"]).inc();
        m.vault_request_duration
            .with_label_values(&["login"])
            .observe(0.01);
        let text = riskfeat_shared::metrics::render(&m.registry);
        assert!(text.contains("riskfeat_agent_vault_logins_total{result=\"ok\"} 1"));
        assert!(text.contains("# TYPE riskfeat_agent_vault_request_duration_seconds histogram"));
        assert!(text.contains("riskfeat_agent_credential_issuances_total{result=\"capped\"} 0"));
    }
}
