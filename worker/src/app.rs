//! The worker's shared state: the pools in use (swapped atomically), the
//! feature parameters in force, the measured replica lag, and what went wrong
//! last (for `/status`). Everything a request reads is lock-free.

use crate::config::{Config, LagPolicy};
use crate::metrics::Metrics;
use crate::params::FeatureParams;
use crate::pool::{DbError, DbPools, PoolSettings};
use arc_swap::{ArcSwap, ArcSwapOption};
use riskfeat_shared::layout::SharedDir;
use riskfeat_shared::pg_tls::PgTls;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;
use tokio_postgres::types::ToSql;

/// A problem seen last, for `/status` (never a secret).
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastError {
    pub message: String,
    pub at: chrono::DateTime<chrono::Utc>,
    /// The generation or version it concerns, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

impl LastError {
    pub fn now(message: impl Into<String>, generation: Option<u64>) -> Self {
        Self {
            message: message.into(),
            at: chrono::Utc::now(),
            generation,
        }
    }
}

/// The state every task and request shares.
pub struct App {
    pub cfg: Config,
    pub layout: SharedDir,
    pub metrics: Metrics,
    pub pool_settings: PoolSettings,
    /// How new pools reach PostgreSQL; replaced when `database_ca_file`
    /// changes (reload.rs), which also rebuilds the pools.
    pub pg_tls: ArcSwap<PgTls>,
    pub pools: ArcSwapOption<DbPools>,
    pub params: ArcSwap<FeatureParams>,
    /// Latest db.json says `fallback: true` for the generation in use.
    pub fallback: AtomicBool,
    /// Replica lag in ms as last measured; -1 until measured.
    pub lag_ms: AtomicI64,
    /// Milliseconds since `started` when the lag measurement began to fail;
    /// -1 while it works. Failing for longer than `lag_check_interval_ms`
    /// makes the lag unknown, and unknown counts as over the limit.
    pub lag_failing_since_ms: AtomicI64,
    pub lag_error: Mutex<Option<LastError>>,
    pub credential_error: Mutex<Option<LastError>>,
    pub config_error: Mutex<Option<LastError>>,
    /// The `[source]` mapping did not match what the last new credential
    /// saw (cleared by the next successful swap).
    pub source_error: Mutex<Option<LastError>>,
    pub db_json_seen: AtomicBool,
    pub shutting_down: AtomicBool,
    /// Milliseconds since `started` at the reload loop's last turn (liveness).
    pub heartbeat_ms: AtomicU64,
    pub started: Instant,
}

/// Where a request's data came from and how fresh it is.
#[derive(Debug, Clone, Copy)]
pub struct ReadContext {
    pub use_primary: bool,
    pub stale: bool,
    /// None until measured, and while the measurement fails.
    pub lag_ms: Option<u64>,
    /// The lag measurement has failed for longer than its interval.
    pub lag_unknown: bool,
}

impl App {
    /// `tls` is how every pool reaches PostgreSQL (`database_ca_file`).
    pub fn new(cfg: Config, tls: PgTls) -> Self {
        let pool_settings = PoolSettings {
            size: cfg.pool_size,
            fallback_size: cfg.fallback_pool_size,
            wait_timeout: Config::ms(cfg.pool_wait_timeout_ms),
            connect_timeout: Config::ms(cfg.connect_timeout_ms),
            statement_timeout: Config::ms(cfg.statement_timeout_ms),
            source: cfg.source.clone(),
            sql: std::sync::Arc::new(cfg.source.sql()),
        };
        let metrics = Metrics::new();
        metrics.pool_max_size.set(cfg.pool_size as i64);
        App {
            layout: SharedDir::new(&cfg.shared_dir),
            cfg,
            metrics,
            pool_settings,
            pg_tls: ArcSwap::from_pointee(tls),
            pools: ArcSwapOption::empty(),
            params: ArcSwap::from_pointee(FeatureParams::default()),
            fallback: AtomicBool::new(false),
            lag_ms: AtomicI64::new(-1),
            lag_failing_since_ms: AtomicI64::new(-1),
            lag_error: Mutex::new(None),
            credential_error: Mutex::new(None),
            config_error: Mutex::new(None),
            source_error: Mutex::new(None),
            db_json_seen: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            heartbeat_ms: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// Milliseconds since `started`.
    pub fn now_ms(&self) -> i64 {
        self.started.elapsed().as_millis() as i64
    }

    /// The lag policy decision for a request made now. A lag that cannot
    /// be measured (failing for longer than `lag_check_interval_ms`) is
    /// treated as over the limit: the answer says stale, or the primary
    /// is read.
    pub fn read_context(&self) -> ReadContext {
        let since = self.lag_failing_since_ms.load(Ordering::Relaxed);
        let lag_unknown =
            since >= 0 && self.now_ms() - since > self.cfg.lag_check_interval_ms as i64;
        let lag = self.lag_ms.load(Ordering::Relaxed);
        let lag_ms = (lag >= 0 && !lag_unknown).then_some(lag as u64);
        let over = lag_unknown || lag_ms.is_some_and(|l| l > self.cfg.max_replica_lag_ms);
        let use_primary = over && self.cfg.lag_policy == LagPolicy::Primary;
        ReadContext {
            use_primary,
            stale: over && !use_primary,
            lag_ms,
            lag_unknown,
        }
    }

    /// Whether the lag is over the limit (or unknown), whatever the policy.
    pub fn lag_over(&self) -> bool {
        let ctx = self.read_context();
        ctx.stale || ctx.use_primary
    }

    /// Runs a feature query on the pools in use; a connection error is
    /// retried once through the pools in use by then (which may be a newer
    /// generation), never on a connection outside them. Returns the rows
    /// and the generation that answered.
    pub async fn query(
        &self,
        ctx: ReadContext,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<(Vec<tokio_postgres::Row>, u64), QueryFailure> {
        let pools = self.pools.load_full().ok_or(QueryFailure::NoCredential)?;
        if ctx.use_primary {
            self.metrics.reads_primary.inc();
        } else {
            self.metrics.reads_replica.inc();
        }
        match pools.query(ctx.use_primary, sql, params, false).await {
            Ok(rows) => Ok((rows, pools.generation)),
            Err(e) if e.is_connection() => {
                drop(pools);
                self.metrics.db_retries.inc();
                let pools = self.pools.load_full().ok_or(QueryFailure::NoCredential)?;
                tracing::debug!(error = %e, generation = pools.generation, "retrying through the pool");
                pools
                    .query(ctx.use_primary, sql, params, true)
                    .await
                    .map(|rows| (rows, pools.generation))
                    .map_err(QueryFailure::Db)
            }
            Err(e) => {
                if matches!(e, DbError::PoolTimeout(_)) {
                    self.metrics.pool_wait_timeouts.inc();
                }
                Err(QueryFailure::Db(e))
            }
        }
    }

    /// Refreshes the pool gauges (called when `/metrics` is scraped).
    pub fn refresh_gauges(&self) {
        if let Some(p) = self.pools.load().as_ref() {
            let (size, available, waiting) = p.stats();
            self.metrics
                .pool_connections
                .with_label_values(&["idle"])
                .set(available as i64);
            self.metrics
                .pool_connections
                .with_label_values(&["in_use"])
                .set(size.saturating_sub(available) as i64);
            self.metrics.pool_waiting.set(waiting as i64);
        }
    }

    pub fn beat(&self) {
        self.heartbeat_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn set_error(slot: &Mutex<Option<LastError>>, e: Option<LastError>) {
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    pub fn get_error(slot: &Mutex<Option<LastError>>) -> Option<LastError> {
        slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Why a feature query could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryFailure {
    #[error("no usable database credential yet")]
    NoCredential,
    #[error(transparent)]
    Db(DbError),
}
