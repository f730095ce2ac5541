//! Prometheus metrics `riskfeat_configd_*`.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use riskfeat_shared::metrics::Registrar;

/// Every configd metric.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub snapshot_queries: IntCounter,
    pub incremental_queries: IntCounter,
    pub publishes: IntCounter,
    pub notifications: IntCounter,
    pub scans: IntCounter,
    pub watchers: IntGauge,
    pub wakeups: IntCounter,
    pub pg_up: IntGauge,
    pub snapshot_builds: IntCounter,
    pub response_bytes: IntCounterVec,
    pub compacted_rows: IntCounter,
    pub clients: IntGaugeVec,
    pub clients_stale: IntGaugeVec,
    pub clients_rejected: IntGaugeVec,
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Metrics {
        let r = Registrar::new("riskfeat_configd_build_info", env!("CARGO_PKG_VERSION"));
        Metrics {
            requests: r.counter_vec(
                "riskfeat_configd_http_requests_total",
                "HTTP requests by route and status",
                &["route", "status"],
            ),
            response_bytes: r.counter_vec(
                "riskfeat_configd_changes_response_bytes_total",
                "Bytes of /changes bodies sent, by kind (ops, snapshot, snapshot_gzip)",
                &["kind"],
            ),
            watchers: r.gauge("riskfeat_configd_watchers", "Long-poll requests held"),
            pg_up: r.gauge(
                "riskfeat_configd_pg_up",
                "1 when PostgreSQL answers, 0 when degraded",
            ),
            clients: r.gauge_vec(
                "riskfeat_configd_clients",
                "Clients reporting per namespace and applied version (newest 5 versions; others as version=\"older\")",
                &["config_namespace", "version"],
            ),
            clients_stale: r.gauge_vec(
                "riskfeat_configd_clients_stale",
                "Clients behind the namespace's version or no longer reporting",
                &["config_namespace"],
            ),
            clients_rejected: r.gauge_vec(
                "riskfeat_configd_clients_rejected",
                "Clients whose worker rejected the version they applied",
                &["config_namespace"],
            ),
            snapshot_queries: r.counter(
                "riskfeat_configd_db_snapshot_queries_total",
                "Full namespace loads from PostgreSQL (cache misses)",
            ),
            incremental_queries: r.counter(
                "riskfeat_configd_db_incremental_queries_total",
                "Change-log reads from PostgreSQL (cache refreshes)",
            ),
            publishes: r.counter(
                "riskfeat_configd_publishes_total",
                "Versions published through this instance",
            ),
            notifications: r.counter(
                "riskfeat_configd_notifications_total",
                "NOTIFY messages received",
            ),
            scans: r.counter(
                "riskfeat_configd_scans_total",
                "Periodic namespace scans completed",
            ),
            wakeups: r.counter(
                "riskfeat_configd_wakeups_total",
                "Watchers woken by a new version",
            ),
            snapshot_builds: r.counter(
                "riskfeat_configd_snapshot_builds_total",
                "Pre-serialized snapshot buffers built (one per version and encoding)",
            ),
            compacted_rows: r.counter(
                "riskfeat_configd_compacted_rows_total",
                "Change-log rows removed by compaction",
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
