//! The config sync's metrics (`riskfeat_agent_config_*`), registered in
//! the agent's registry.

use prometheus::{IntCounterVec, IntGaugeVec, Opts};

pub(super) struct Metrics {
    pub(super) version: IntGaugeVec,
    pub(super) updates: IntCounterVec,
    pub(super) errors: IntCounterVec,
    pub(super) bytes: IntCounterVec,
    pub(super) rejected: IntCounterVec,
}

impl Metrics {
    pub(super) fn new(registry: &prometheus::Registry) -> Metrics {
        fn reg<T: prometheus::core::Collector + Clone + 'static>(
            r: &prometheus::Registry,
            c: T,
        ) -> T {
            let _ = r.register(Box::new(c.clone()));
            c
        }
        Metrics {
            version: reg(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "riskfeat_agent_config_version",
                        "configd version published per namespace",
                    ),
                    &["config_namespace"],
                )
                .expect("metric"),
            ),
            updates: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "riskfeat_agent_config_updates_total",
                        "config/<ns>.json publishes by kind (snapshot, incremental, cache)",
                    ),
                    &["config_namespace", "kind"],
                )
                .expect("metric"),
            ),
            errors: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "riskfeat_agent_config_sync_errors_total",
                        "Failed configd requests by kind",
                    ),
                    &["kind"],
                )
                .expect("metric"),
            ),
            bytes: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "riskfeat_agent_config_downloaded_bytes_total",
                        "Bytes downloaded from configd (on the wire) by kind",
                    ),
                    &["kind"],
                )
                .expect("metric"),
            ),
            rejected: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "riskfeat_agent_config_rejected_total",
                        "configd answers and cached configs refused, last good kept, by reason \
                         (too_large, behind)",
                    ),
                    &["config_namespace", "reason"],
                )
                .expect("metric"),
            ),
        }
    }
}
