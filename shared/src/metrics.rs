//! Prometheus metrics: rendering a registry and serving it on `/metrics`.
//!
//! Names follow `riskfeat_<component>_<name>_<unit>`; counters end in
//! `_total`. Labels never carry a secret, a username or a lease id.
//!
//! Every component's registry also carries what [`register_common`] adds:
//! the `process_*` metrics of the running process (CPU, memory, open file
//! descriptors, start time; Linux) and `riskfeat_<component>_build_info`
//! `{version, commit}` = 1, the commit baked in by `shared/build.rs`.
//!
//! A component lists its metrics through a [`Registrar`]: one call a metric
//! with its name and help text, registered as it is made.

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::net::SocketAddr;

/// The git commit this build comes from (`RISKFEAT_COMMIT` at build time,
/// else `git rev-parse HEAD`, else `unknown`).
pub const COMMIT: &str = env!("RISKFEAT_GIT_COMMIT");

/// Registers the process collector and the build-info gauge
/// `build_info_name` (`riskfeat_<component>_build_info`, spelled out by the
/// caller so the name can be found in its sources) with labels `version`
/// and [`COMMIT`], value 1.
pub fn register_common(registry: &Registry, build_info_name: &str, version: &str) {
    let info = IntGaugeVec::new(
        Opts::new(
            build_info_name,
            "Always 1; the labels say which build runs (version, git commit).",
        ),
        &["version", "commit"],
    )
    .expect("valid build_info metric");
    info.with_label_values(&[version, COMMIT]).set(1);
    registry
        .register(Box::new(info))
        .expect("unique build_info metric");
    #[cfg(target_os = "linux")]
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process metrics registered once per registry");
}

/// Makes metrics and registers them in one registry as it makes them, so a
/// component's list of metrics says each name and help text once and nothing
/// else. The definitions are static: an invalid one, or a name registered
/// twice, is a programming error and panics (any test that builds the
/// component's metrics finds it).
pub struct Registrar {
    registry: Registry,
}

impl Registrar {
    /// A new registry carrying what [`register_common`] adds.
    pub fn new(build_info_name: &str, version: &str) -> Self {
        let registry = Registry::new();
        register_common(&registry, build_info_name, version);
        Registrar { registry }
    }

    /// The registry the metrics are registered in.
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    /// Registers `metric` (a constructor's result) and hands it back.
    pub fn add<M: Collector + Clone + 'static>(&self, metric: prometheus::Result<M>) -> M {
        let metric = metric.expect("static metric definition");
        self.registry
            .register(Box::new(metric.clone()))
            .expect("unique metric name");
        metric
    }

    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(name, help))
    }

    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels))
    }

    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::new(name, help))
    }

    /// A gauge of floating-point values (seconds, ratios).
    pub fn float_gauge(&self, name: &str, help: &str) -> Gauge {
        self.add(Gauge::new(name, help))
    }

    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels))
    }

    pub fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        self.add(Histogram::with_opts(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        ))
    }

    pub fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
        labels: &[&str],
    ) -> HistogramVec {
        self.add(HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        ))
    }
}

/// The registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .expect("encoding metrics into a Vec cannot fail");
    String::from_utf8(buf).expect("the text format is UTF-8")
}

/// A router with `GET /metrics` for `registry`.
pub fn router(registry: Registry) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                (
                    [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                    render(&registry),
                )
                    .into_response()
            }
        }),
    )
}

/// Binds `addr` (so a bad address fails at start-up) and serves `/metrics`
/// in the background until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        axum::serve(listener, router(registry))
            .with_graceful_shutdown(shutdown)
            .await
    });
    Ok((local, handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_format() {
        let r = Registry::new();
        let c = prometheus::IntCounter::new("riskfeat_test_events_total", "Events.").unwrap();
        r.register(Box::new(c.clone())).unwrap();
        c.inc();
        let text = render(&r);
        assert!(text.contains("# TYPE riskfeat_test_events_total counter"));
        assert!(text.contains("riskfeat_test_events_total 1"));
    }

    /// What a Registrar makes is in its registry's page. Checked: with the
    /// `register` call removed from `Registrar::add` this test fails with
    /// `no "# HELP riskfeat_test_a_total A.\n" in:` (an empty page).
    #[test]
    fn a_registrar_registers_what_it_makes() {
        let r = Registrar::new("riskfeat_test_build_info", "1.2.3");
        r.counter("riskfeat_test_a_total", "A.").inc();
        r.gauge_vec("riskfeat_test_b", "B.", &["kind"])
            .with_label_values(&["x"])
            .set(2);
        r.histogram("riskfeat_test_c_seconds", "C.", &[0.5, 1.0])
            .observe(0.7);
        let text = render(&r.registry());
        crate::testing::assert_contains_all(
            &text,
            &[
                "# HELP riskfeat_test_a_total A.\n",
                "riskfeat_test_a_total 1\n",
                "riskfeat_test_b{kind=\"x\"} 2\n",
                "riskfeat_test_c_seconds_bucket{le=\"1\"} 1\n",
                "riskfeat_test_build_info{",
            ],
        );
    }

    /// A name made twice is a programming error, found at start-up.
    /// Checked: with `add` ignoring `register`'s error this test fails
    /// (`should panic ... FAILED`).
    #[test]
    #[should_panic(expected = "unique metric name")]
    fn a_name_registered_twice_panics() {
        let r = Registrar::new("riskfeat_test_build_info", "1.2.3");
        r.counter("riskfeat_test_a_total", "A.");
        r.counter("riskfeat_test_a_total", "A.");
    }

    #[test]
    fn common_metrics_name_the_build_and_the_process() {
        let r = Registry::new();
        register_common(&r, "riskfeat_test_build_info", "1.2.3");
        let text = render(&r);
        assert!(!COMMIT.is_empty());
        assert!(
            text.contains(&format!(
                "riskfeat_test_build_info{{commit=\"{COMMIT}\",version=\"1.2.3\"}} 1"
            )),
            "{text}"
        );
        #[cfg(target_os = "linux")]
        for m in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(&format!("\n{m} ")), "no {m}:\n{text}");
        }
    }
}
