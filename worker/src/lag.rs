//! Replica lag, measured continuously on the replica pool in use.
//!
//! Lag = `clock_timestamp() - pg_last_xact_replay_timestamp()`, and 0 when
//! the replica has replayed everything it received (receive LSN == replay
//! LSN: an idle primary is not lag) or is not in recovery. The value feeds
//! `replica_lag_ms` in every response, the `riskfeat_worker_replica_lag_seconds`
//! gauge, and the policy in [`crate::app::App::read_context`]. When a
//! measurement fails (an error, or no answer within 2 s) the error is shown
//! in `/status`; once it has failed for longer than `lag_check_interval_ms`
//! the lag is unknown and treated as over the limit (answers `stale: true`,
//! or read from the primary), until a measurement succeeds again.

use crate::app::{App, LastError};
use crate::pool::SQL_LAG;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Measures every `lag_check_interval_ms` until `shutdown` fires.
pub async fn run(app: Arc<App>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let every = Duration::from_millis(app.cfg.lag_check_interval_ms);
    let mut was_stale = false;
    loop {
        measure(&app).await;
        let stale = app.lag_over();
        if stale != was_stale {
            let lag_ms = app.lag_ms.load(Ordering::Relaxed);
            if stale && app.read_context().lag_unknown {
                tracing::warn!(every_ms = app.cfg.lag_check_interval_ms, policy = ?app.cfg.lag_policy, "replica lag cannot be measured; applying the lag policy");
            } else if stale {
                tracing::warn!(lag_ms, max_ms = app.cfg.max_replica_lag_ms, policy = ?app.cfg.lag_policy, "replica lag above the limit; applying the lag policy");
            } else {
                tracing::info!(lag_ms, "replica lag back under the limit");
            }
            was_stale = stale;
        }
        app.metrics.replica_stale.set(stale as i64);
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn measure(app: &App) {
    let Some(pools) = app.pools.load_full() else {
        return;
    };
    let got = tokio::time::timeout(Duration::from_secs(2), async {
        let conn = pools
            .replica
            .get()
            .await
            .map_err(|e| format!("no connection: {e}"))?;
        let stmt = conn
            .prepare_cached(SQL_LAG)
            .await
            .map_err(|e| crate::pool::describe_pg(&e))?;
        let row = conn
            .query_one(&stmt, &[])
            .await
            .map_err(|e| crate::pool::describe_pg(&e))?;
        Ok::<f64, String>(row.get(0))
    })
    .await
    .unwrap_or_else(|_| Err("timed out".into()));
    match got {
        Ok(ms) => {
            let ms = if ms.is_finite() { ms.max(0.0) } else { 0.0 };
            app.lag_ms.store(ms.round() as i64, Ordering::Relaxed);
            app.lag_failing_since_ms.store(-1, Ordering::Relaxed);
            app.metrics.replica_lag.set(ms / 1000.0);
            App::set_error(&app.lag_error, None);
        }
        Err(e) => {
            let _ = app.lag_failing_since_ms.compare_exchange(
                -1,
                app.now_ms(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            App::set_error(
                &app.lag_error,
                Some(LastError::now(
                    format!("cannot measure replica lag: {e}"),
                    None,
                )),
            );
        }
    }
}
