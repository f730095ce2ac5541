//! The rollout view: which client runs which version. Agents report on
//! every watch (`report` in `POST /v1/watch`, with their identity headers);
//! reports are kept in memory and written to PostgreSQL in batches every
//! [`FLUSH_EVERY`] (an unchanged report at most every [`REWRITE_AFTER`]),
//! so every instance shows the whole fleet and a watch never waits on the
//! database. The same pass refreshes the `riskfeat_configd_clients*`
//! gauges: counts per namespace and version (the newest
//! [`METRIC_VERSIONS`] versions, older ones as `version="older"`; never a
//! client id).

use crate::gray::{Client, Selector};
use crate::metrics::Metrics;
use crate::store::{ClientRow, Store, StoreError};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often reports are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(2);
/// An unchanged report is written again after this (its `last_seen`).
pub const REWRITE_AFTER: Duration = Duration::from_secs(30);
/// Versions per namespace with their own `version` label.
pub const METRIC_VERSIONS: usize = 5;
/// Reports older than this are forgotten (a day).
pub const FORGET_AFTER_S: f64 = 86_400.0;

type Key = (String, String);

/// Reports not yet written, and when each client's was last written.
#[derive(Default)]
pub struct Rollout {
    pending: Mutex<HashMap<Key, ClientRow>>,
    written: Mutex<HashMap<Key, (ClientRow, Instant)>>,
}

/// A client's state relative to its namespace.
pub fn status(row: &ClientRow, version: u64, stale_after_s: f64) -> &'static str {
    if row.age_s > stale_after_s {
        "gone"
    } else if row.rejected.is_some() {
        "rejected"
    } else if row.version < version {
        "behind"
    } else {
        "current"
    }
}

/// Whether the gray release `selector` of `ns` picks the client of `row`.
pub fn is_gray(selector: Option<&Selector>, row: &ClientRow) -> bool {
    let client = Client {
        id: Some(row.client_id.clone()),
        labels: row.labels.clone(),
    };
    selector.is_some_and(|s| s.matches(&row.namespace, &client))
}

impl Rollout {
    /// Notes a report (written at the next flush unless unchanged).
    pub fn record(&self, row: ClientRow) {
        let key = (row.namespace.clone(), row.client_id.clone());
        let same = self
            .written
            .lock()
            .expect("rollout")
            .get(&key)
            .is_some_and(|(w, at)| {
                at.elapsed() < REWRITE_AFTER
                    && (&w.labels, w.version, w.in_force, &w.rejected, &w.token)
                        == (
                            &row.labels,
                            row.version,
                            row.in_force,
                            &row.rejected,
                            &row.token,
                        )
            });
        if !same {
            self.pending.lock().expect("rollout").insert(key, row);
        }
    }

    /// Writes the pending reports (kept for the next try on failure).
    pub async fn flush(&self, store: &Store) -> Result<(), StoreError> {
        let rows: Vec<ClientRow> = {
            let mut p = self.pending.lock().expect("rollout");
            p.drain().map(|(_, r)| r).collect()
        };
        if rows.is_empty() {
            return Ok(());
        }
        if let Err(e) = store.save_clients(&rows).await {
            let mut p = self.pending.lock().expect("rollout");
            for r in rows {
                p.entry((r.namespace.clone(), r.client_id.clone()))
                    .or_insert(r);
            }
            return Err(e);
        }
        let now = Instant::now();
        let mut w = self.written.lock().expect("rollout");
        for r in rows {
            w.insert((r.namespace.clone(), r.client_id.clone()), (r, now));
        }
        w.retain(|_, (_, at)| at.elapsed() < REWRITE_AFTER * 4);
        Ok(())
    }
}

/// Sets the client gauges from every report (fleet-wide).
pub fn set_gauges(
    metrics: &Metrics,
    rows: &[ClientRow],
    versions: &BTreeMap<String, u64>,
    stale_after_s: f64,
) {
    metrics.clients.reset();
    metrics.clients_stale.reset();
    metrics.clients_rejected.reset();
    let mut by_ns: BTreeMap<&str, Vec<&ClientRow>> = BTreeMap::new();
    for r in rows {
        by_ns.entry(r.namespace.as_str()).or_default().push(r);
    }
    for (ns, rows) in by_ns {
        let Some(current) = versions.get(ns) else {
            continue;
        };
        let mut counts: BTreeMap<u64, i64> = BTreeMap::new();
        let (mut stale, mut rejected) = (0, 0);
        for r in rows.iter().filter(|r| r.age_s <= stale_after_s) {
            *counts.entry(r.version).or_default() += 1;
            match status(r, *current, stale_after_s) {
                "behind" => stale += 1,
                "rejected" => rejected += 1,
                _ => {}
            }
        }
        stale += rows.iter().filter(|r| r.age_s > stale_after_s).count() as i64;
        let newest: Vec<u64> = counts.keys().rev().take(METRIC_VERSIONS).copied().collect();
        let mut older = 0;
        for (v, n) in &counts {
            if newest.contains(v) {
                metrics
                    .clients
                    .with_label_values(&[ns, &v.to_string()])
                    .set(*n);
            } else {
                older += n;
            }
        }
        if older > 0 {
            metrics.clients.with_label_values(&[ns, "older"]).set(older);
        }
        metrics.clients_stale.with_label_values(&[ns]).set(stale);
        metrics
            .clients_rejected
            .with_label_values(&[ns])
            .set(rejected);
    }
}

/// Writes reports and refreshes the gauges every [`FLUSH_EVERY`]; forgets
/// old reports now and then.
pub async fn flusher(
    rollout: std::sync::Arc<Rollout>,
    cache: std::sync::Arc<crate::cache::Cache>,
    metrics: Metrics,
    stale_after_s: f64,
) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut passes: u64 = 0;
    loop {
        tick.tick().await;
        passes += 1;
        let store = cache.store();
        if let Err(e) = rollout.flush(store).await {
            tracing::debug!(error = %e, "client reports not written yet");
            continue;
        }
        if passes.is_multiple_of(1800) {
            let _ = store.forget_clients(FORGET_AFTER_S).await;
        }
        // The gauges: every few passes is enough.
        if passes % 5 != 1 {
            continue;
        }
        let (Ok(rows), Ok(ns)) = (
            store.clients(None, FORGET_AFTER_S).await,
            store.list_namespaces().await,
        ) else {
            continue;
        };
        let versions = ns.into_iter().map(|r| (r.name, r.version)).collect();
        set_gauges(&metrics, &rows, &versions, stale_after_s);
    }
}
