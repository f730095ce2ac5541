//! What the worker reports on `<shared>/worker.sock` (via
//! [`riskfeat_shared::health`]): live while the reload loop turns, ready
//! while a validated pool is in use, and a `/status` document that says why
//! not (never a secret: no password, no username).

use crate::app::App;
use riskfeat_shared::health::HealthSource;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The reload loop must turn at least this often to count as live.
const STUCK_AFTER_MS: u64 = 60_000;

/// [`HealthSource`] over the shared [`App`] state.
pub struct Health(pub Arc<App>);

impl HealthSource for Health {
    fn live(&self) -> Result<(), String> {
        let app = &self.0;
        let now = app.started.elapsed().as_millis() as u64;
        let last = app.heartbeat_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) > STUCK_AFTER_MS + app.cfg.recheck_interval_ms {
            return Err(format!("reload loop stuck for {} ms", now - last));
        }
        Ok(())
    }

    fn ready(&self) -> Result<(), String> {
        let app = &self.0;
        if app.shutting_down.load(Ordering::Relaxed) {
            return Err("shutting down".into());
        }
        if app.pools.load().is_some() {
            return Ok(());
        }
        Err(match App::get_error(&app.credential_error) {
            Some(e) => format!("no usable database credential: {}", e.message),
            None => "no usable database credential yet".into(),
        })
    }

    fn status(&self) -> serde_json::Value {
        let app = &self.0;
        let pools = app.pools.load_full();
        let params = app.params.load_full();
        let ctx = app.read_context();
        let credential = pools.as_ref().map(|p| {
            let (size, available, waiting) = p.stats();
            serde_json::json!({
                "generation": p.generation,
                "fallback": app.fallback.load(Ordering::Relaxed),
                "in_use_since": p.built_at_utc,
                "replica": format!("{}:{}/{}", p.replica_endpoint.host, p.replica_endpoint.port, p.replica_endpoint.dbname),
                "sslmode": p.replica_endpoint.sslmode.as_str(),
                "pool": {"max": p.max_size(), "open": size, "idle": available, "waiting": waiting},
            })
        });
        serde_json::json!({
            "ready": self.ready().is_ok(),
            "ready_reason": self.ready().err(),
            "shared_dir": app.cfg.shared_dir,
            "db_json_seen": app.db_json_seen.load(Ordering::Relaxed),
            "credential": credential,
            "credential_error": App::get_error(&app.credential_error),
            "pools_draining": app.metrics.pools_draining.get(),
            "source": {
                "table": app.cfg.source.table,
                "user_column": app.cfg.source.user_column,
                "amount_column": app.cfg.source.amount_column,
                "time_column": app.cfg.source.time_column,
                "error": App::get_error(&app.source_error),
            },
            "config": {
                "namespace": app.cfg.namespace,
                "version": params.version,
                "params": &*params,
                "error": App::get_error(&app.config_error),
            },
            "replica_lag": {
                "lag_ms": ctx.lag_ms,
                "max_ms": app.cfg.max_replica_lag_ms,
                "policy": app.cfg.lag_policy,
                "stale": ctx.stale,
                "measurement_failing": ctx.lag_unknown,
                "reading_from": if ctx.use_primary { "primary" } else { "replica" },
                "error": App::get_error(&app.lag_error),
            },
        })
    }
}
