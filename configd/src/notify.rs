//! Change detection: LISTEN/NOTIFY on a dedicated connection (reconnected
//! with backoff) plus a periodic scan of the namespaces table as a fallback.
//! After every (re)connect a scan catches up on whatever was missed while
//! PostgreSQL or the connection was down. Also runs log compaction.

use crate::cache::Cache;
use crate::metrics::Metrics;
use crate::store::CHANNEL;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

/// Runs the listener until the process ends.
pub async fn listen(cache: Arc<Cache>, metrics: Metrics, scan_interval: Duration) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let pg = cache.store().pg_config().clone();
        match pg.connect(cache.store().tls()).await {
            Err(e) => {
                tracing::debug!(error = %e, "LISTEN connection failed");
                let _ =
                    cache.track::<()>(Err(crate::store::StoreError::Unavailable(e.to_string())));
            }
            Ok((client, mut conn)) => {
                let (tx, mut rx) = mpsc::unbounded_channel::<String>();
                let driver = tokio::spawn(async move {
                    let mut stream = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
                    while let Some(msg) = stream.next().await {
                        match msg {
                            Ok(AsyncMessage::Notification(n)) => {
                                if tx.send(n.payload().to_string()).is_err() {
                                    break;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "LISTEN connection lost");
                                break;
                            }
                        }
                    }
                });
                if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
                    tracing::warn!(error = %e, "LISTEN failed");
                } else {
                    backoff = Duration::from_millis(200);
                    tracing::info!("listening for namespace changes");
                    if let Err(e) = cache.scan().await {
                        tracing::warn!(error = %e, "catch-up scan failed");
                    }
                    let mut tick = tokio::time::interval(scan_interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    tick.tick().await;
                    loop {
                        tokio::select! {
                            msg = rx.recv() => match msg {
                                Some(ns) => {
                                    metrics.notifications.inc();
                                    let cache = cache.clone();
                                    tokio::spawn(async move {
                                        if cache.peek(&ns).is_none() {
                                            // Not loaded: nothing to refresh, but a
                                            // deletion must still wake watchers.
                                            return;
                                        }
                                        if let Err(e) = cache.refresh(&ns).await {
                                            tracing::warn!(namespace = %ns, error = %e, "refresh after NOTIFY failed");
                                        }
                                    });
                                }
                                None => break,
                            },
                            _ = tick.tick() => {
                                if let Err(e) = cache.scan().await {
                                    tracing::warn!(error = %e, "scan failed");
                                }
                            }
                        }
                    }
                }
                driver.abort();
                let _ = cache.track::<()>(Err(crate::store::StoreError::Unavailable(
                    "LISTEN connection lost".into(),
                )));
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Compacts every namespace's change log now and then.
pub async fn compactor(cache: Arc<Cache>, metrics: Metrics, retention: u64, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let _ = compact_all(&cache, &metrics, retention).await;
    }
}

/// One compaction pass over every namespace; returns rows removed.
pub async fn compact_all(
    cache: &Cache,
    metrics: &Metrics,
    retention: u64,
) -> Result<u64, crate::store::StoreError> {
    let rows = cache.track(cache.store().list_namespaces().await)?;
    let mut total = 0;
    for r in rows {
        match cache.store().compact(&r.name, retention).await {
            Ok(n) => total += n,
            Err(e) => tracing::warn!(namespace = %r.name, error = %e, "compaction failed"),
        }
    }
    if total > 0 {
        tracing::info!(rows = total, "change log compacted");
    }
    metrics.compacted_rows.inc_by(total);
    Ok(total)
}
