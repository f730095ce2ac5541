//! Prometheus metrics `riskfeat_configd_*`.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

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

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("metric");
    r.register(Box::new(g.clone())).expect("register");
    g
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("metric");
    r.register(Box::new(c.clone())).expect("register");
    c
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        riskfeat_shared::metrics::register_common(
            &registry,
            "riskfeat_configd_build_info",
            env!("CARGO_PKG_VERSION"),
        );
        let requests = IntCounterVec::new(
            Opts::new(
                "riskfeat_configd_http_requests_total",
                "HTTP requests by route and status",
            ),
            &["route", "status"],
        )
        .expect("metric");
        registry
            .register(Box::new(requests.clone()))
            .expect("register");
        let response_bytes = IntCounterVec::new(
            Opts::new(
                "riskfeat_configd_changes_response_bytes_total",
                "Bytes of /changes bodies sent, by kind (ops, snapshot, snapshot_gzip)",
            ),
            &["kind"],
        )
        .expect("metric");
        registry
            .register(Box::new(response_bytes.clone()))
            .expect("register");
        let watchers =
            IntGauge::new("riskfeat_configd_watchers", "Long-poll requests held").expect("metric");
        registry
            .register(Box::new(watchers.clone()))
            .expect("register");
        let pg_up = IntGauge::new(
            "riskfeat_configd_pg_up",
            "1 when PostgreSQL answers, 0 when degraded",
        )
        .expect("metric");
        registry
            .register(Box::new(pg_up.clone()))
            .expect("register");
        Metrics {
            clients: gauge_vec(
                &registry,
                "riskfeat_configd_clients",
                "Clients reporting per namespace and applied version (newest 5 versions; others as version=\"older\")",
                &["config_namespace", "version"],
            ),
            clients_stale: gauge_vec(
                &registry,
                "riskfeat_configd_clients_stale",
                "Clients behind the namespace's version or no longer reporting",
                &["config_namespace"],
            ),
            clients_rejected: gauge_vec(
                &registry,
                "riskfeat_configd_clients_rejected",
                "Clients whose worker rejected the version they applied",
                &["config_namespace"],
            ),
            snapshot_queries: counter(
                &registry,
                "riskfeat_configd_db_snapshot_queries_total",
                "Full namespace loads from PostgreSQL (cache misses)",
            ),
            incremental_queries: counter(
                &registry,
                "riskfeat_configd_db_incremental_queries_total",
                "Change-log reads from PostgreSQL (cache refreshes)",
            ),
            publishes: counter(
                &registry,
                "riskfeat_configd_publishes_total",
                "Versions published through this instance",
            ),
            notifications: counter(
                &registry,
                "riskfeat_configd_notifications_total",
                "NOTIFY messages received",
            ),
            scans: counter(
                &registry,
                "riskfeat_configd_scans_total",
                "Periodic namespace scans completed",
            ),
            wakeups: counter(
                &registry,
                "riskfeat_configd_wakeups_total",
                "Watchers woken by a new version",
            ),
            snapshot_builds: counter(
                &registry,
                "riskfeat_configd_snapshot_builds_total",
                "Pre-serialized snapshot buffers built (one per version and encoding)",
            ),
            compacted_rows: counter(
                &registry,
                "riskfeat_configd_compacted_rows_total",
                "Change-log rows removed by compaction",
            ),
            registry,
            requests,
            watchers,
            pg_up,
            response_bytes,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
