//! The worker's Prometheus metrics (`riskfeat_worker_*`). Labels never
//! carry a username, a password or a user id.

use prometheus::{
    Gauge, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
};
use riskfeat_shared::metrics::Registrar;

/// Every metric the worker exports.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub request_duration: HistogramVec,
    pub pool_connections: IntGaugeVec,
    pub pool_max_size: IntGauge,
    pub pool_waiting: IntGauge,
    pub pool_wait_timeouts: IntCounter,
    pub pools_draining: IntGauge,
    pub credential_generation: IntGauge,
    pub credential_swaps: IntCounter,
    pub credential_failures: IntCounterVec,
    pub credential_fallback: IntGauge,
    pub config_version: IntGauge,
    pub config_reloads: IntCounterVec,
    pub replica_lag: Gauge,
    pub replica_stale: IntGauge,
    pub db_retries: IntCounter,
    pub reads_replica: IntCounter,
    pub reads_primary: IntCounter,
    /// Amounts skipped (NULL, NaN, infinite) among the newest rows read.
    pub skipped_latest: IntCounter,
    /// Rows the window aggregates skipped for the same reason.
    pub skipped_windows: IntCounter,
    /// How late the runtime's ticker woke ([`crate::stall`]).
    pub runtime_stall: Histogram,
    /// Runtime threads asleep inside a task ([`crate::stall`]).
    pub runtime_blocked: Histogram,
}

impl Metrics {
    /// Counts skipped amounts of one answer (no-op for zeros).
    pub fn skipped_amounts(&self, latest: u64, windows: u64) {
        if latest > 0 {
            self.skipped_latest.inc_by(latest);
        }
        if windows > 0 {
            self.skipped_windows.inc_by(windows);
        }
    }

    pub fn new() -> Self {
        let r = Registrar::new("riskfeat_worker_build_info", env!("CARGO_PKG_VERSION"));
        let reads = r.counter_vec(
            "riskfeat_worker_db_reads_total",
            "Feature queries by source (replica, primary).",
            &["source"],
        );
        let skipped = r.counter_vec(
            "riskfeat_worker_amounts_skipped_total",
            "Transactions whose amount was NULL or not a finite number, skipped \
             (part: latest = among the newest lookback rows, windows = in the window \
             aggregates).",
            &["part"],
        );
        Metrics {
            runtime_stall: r.histogram(
                "riskfeat_worker_runtime_stall_seconds",
                "How late a 10 ms ticker task on the runtime woke: what any task waits for a \
                 runtime thread (blocking calls, long polls, threads waiting for a CPU).",
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ],
            ),
            runtime_blocked: r.histogram(
                "riskfeat_worker_runtime_blocked_seconds",
                "Stretches during which a runtime thread was asleep in the kernel inside a task \
                 (a blocking call on the runtime), sampled every 20 ms; waiting for a CPU does \
                 not count.",
                &[0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
            ),
            skipped_latest: skipped.with_label_values(&["latest"]),
            skipped_windows: skipped.with_label_values(&["windows"]),
            reads_replica: reads.with_label_values(&["replica"]),
            reads_primary: reads.with_label_values(&["primary"]),
            request_duration: r.histogram_vec(
                "riskfeat_worker_http_request_duration_seconds",
                "HTTP request duration by route and status.",
                &[
                    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01,
                    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ],
                &["route", "status"],
            ),
            pool_connections: r.gauge_vec(
                "riskfeat_worker_pool_connections",
                "Replica pool connections of the credential in use, by state (idle, in_use).",
                &["state"],
            ),
            pool_max_size: r.gauge(
                "riskfeat_worker_pool_max_connections",
                "Replica pool size in use (fallback_pool_size under the fallback credential).",
            ),
            pool_waiting: r.gauge(
                "riskfeat_worker_pool_waiting_requests",
                "Requests waiting for a pooled connection now.",
            ),
            pool_wait_timeouts: r.counter(
                "riskfeat_worker_pool_wait_timeouts_total",
                "Requests that found no free connection within pool_wait_timeout_ms.",
            ),
            pools_draining: r.gauge(
                "riskfeat_worker_pools_draining",
                "Pools of older credentials still finishing in-flight queries.",
            ),
            credential_generation: r.gauge(
                "riskfeat_worker_credential_generation",
                "Generation of the credential the pool uses (0: none yet).",
            ),
            credential_swaps: r.counter(
                "riskfeat_worker_credential_swaps_total",
                "Pools swapped in for a new credential generation.",
            ),
            credential_failures: r.counter_vec(
                "riskfeat_worker_credential_failures_total",
                "db.json files or credentials rejected (the previous pool stays), by reason.",
                &["reason"],
            ),
            credential_fallback: r.gauge(
                "riskfeat_worker_credential_fallback",
                "1 while the credential in use is the static fallback (responses degraded).",
            ),
            config_version: r.gauge(
                "riskfeat_worker_config_version",
                "Version of the feature config in force (0: built-in defaults).",
            ),
            config_reloads: r.counter_vec(
                "riskfeat_worker_config_reloads_total",
                "Feature config files applied (ok) or rejected (rejected).",
                &["result"],
            ),
            replica_lag: r.float_gauge(
                "riskfeat_worker_replica_lag_seconds",
                "Replica replay lag as last measured.",
            ),
            replica_stale: r.gauge(
                "riskfeat_worker_replica_stale",
                "1 while the replica lag exceeds max_replica_lag_ms or cannot be measured.",
            ),
            db_retries: r.counter(
                "riskfeat_worker_db_retries_total",
                "Queries retried on a fresh connection after a connection error.",
            ),
            registry: r.registry(),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
