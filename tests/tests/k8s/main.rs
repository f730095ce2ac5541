//! Offline checks of the Kubernetes deployment (issue 7). No cluster is
//! needed: every overlay is rendered with `kubectl kustomize`, every rendered
//! core object is validated with `kubernetes-validate --strict` against
//! [`support::K8S_VERSION`], the invariants of the pods are asserted on the parsed
//! manifests, and the alert rules go through `promtool check rules` and
//! `promtool test rules`.
//!
//! Tools are installed when missing (kubernetes-validate with pip into
//! `~/.cache/riskfeat/pytools` under a file lock; promtool from the Debian
//! package `prometheus`); a failed install fails the test. The one exception:
//! promtool missing and not root outside CI skips with a message (inside CI,
//! `CI` set, it fails).
//!
//! Objects of CRDs (the prod overlay's `PodMonitor` and `PrometheusRule`)
//! have no schema in kubernetes-validate: they are skipped there with the
//! reason and checked structurally here instead, and any other kind without
//! a schema fails the test.
//!
//! - [`validation`]: rendering and strict validation;
//! - [`pods`]: the pods' shape, probes, privileges and shutdown;
//! - [`secrets`]: secrets, ConfigMaps and CA files;
//! - [`monitoring`]: PodMonitor, alert rules, PrometheusRule, dashboard;
//! - [`prometheus`]: a real Prometheus scraping the three programs, with
//!   the shipped rules (the one test here that starts PostgreSQL and
//!   OpenBao);
//! - [`network`]: the NetworkPolicies and HTTPS configd in prod;
//! - [`shipped`]: the shipped configs and the Dockerfile;
//! - [`support`]: rendering, lookups, the tools.

mod monitoring;
mod network;
mod pods;
mod prometheus;
mod secrets;
mod shipped;
mod support;
mod validation;
