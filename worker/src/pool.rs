//! Connection pools for one credential generation, and the queries that run
//! on them.
//!
//! A [`DbPools`] holds a pool against the replica (where features are read)
//! and a lazily-filled one against the primary (used only by the `primary`
//! lag policy), both with the same credential: Vault creates the dynamic role
//! on the primary and it reaches the replica by replay, so it exists on both.
//! A new generation gets a new `DbPools`, filled and validated *before* it is
//! swapped in (see [`crate::reload`]); requests hold an `Arc<DbPools>` for
//! their duration, so the old pools drain naturally and are closed when the
//! last request using them is done.
//!
//! Queries are prepared once per connection (statement cache). A query that
//! fails because its connection died (SQLSTATE 57P01/57P02/57P03, 28P01,
//! class 08, closed socket) is retried once, through the same pool: the dead
//! connection is thrown away with every idle one already known closed, and
//! an idle connection handed to the retry is checked with an empty query
//! first (a dead one is thrown away too). So a retry never opens a
//! connection outside the pool: however many requests fail at once (a
//! failover), a pod holds at most `pool_size` connections per server.
//!
//! A query refused for want of privilege (SQLSTATE 42501) on a connection
//! that worked is [`DbError::Refused`]: the credential in use lost its
//! rights under a live session (its role dropped by a lease revocation,
//! which ends the role's sessions on the primary only, or its grant
//! revoked). Not retried (the pool's other sessions are the same role);
//! the caller is told the database is unavailable, as for a login that
//! fails, until a new credential is swapped in.
//!
//! While the credential is the static fallback, the pools are
//! `fallback_pool_size` (all pods share that one login's `CONNECTION LIMIT`).

use crate::source::{FeatureSql, Source, SourceMismatch};
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use riskfeat_shared::creds::{DbCredential, Endpoint};
use riskfeat_shared::pg_tls::{PgTls, PgTlsError};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

/// Replica lag in milliseconds: 0 on a primary or when everything received
/// has been replayed, else the age of the last replayed transaction.
pub const SQL_LAG: &str = "SELECT CASE \
       WHEN NOT pg_is_in_recovery() THEN 0::float8 \
       WHEN pg_last_wal_receive_lsn() IS NOT NULL \
            AND pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0::float8 \
       ELSE COALESCE(GREATEST(0, EXTRACT(EPOCH FROM (clock_timestamp() - pg_last_xact_replay_timestamp())) * 1000), 0)::float8 \
     END";

/// Pool tuning from the worker config, and what a pool must be able to
/// read before it serves.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub size: usize,
    /// The size instead of `size` for a fallback credential.
    pub fallback_size: usize,
    pub wait_timeout: Duration,
    pub connect_timeout: Duration,
    pub statement_timeout: Duration,
    /// The `[source]` mapping, checked on every new pool.
    pub source: Source,
    /// The feature statements built from it.
    pub sql: Arc<FeatureSql>,
}

impl PoolSettings {
    /// How long [`DbPools::validate`] of `warm` connections may take: a
    /// connect and a statement per wave of [`OPEN_AT_ONCE`], and one more
    /// connect of slack.
    pub fn validate_budget(&self, warm: usize) -> Duration {
        let waves = warm.max(1).div_ceil(OPEN_AT_ONCE) as u32;
        (self.connect_timeout + self.statement_timeout) * waves + self.connect_timeout
    }
}

/// Why a pool could not be built, validated or used.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to {target} as {user}: {message}")]
    Connect {
        target: String,
        user: String,
        message: String,
    },
    #[error("no free database connection within {0:?}")]
    PoolTimeout(Duration),
    #[error("the pool was closed")]
    Closed,
    #[error("query failed: {0}")]
    Query(String),
    /// The credential in use may no longer read (SQLSTATE 42501).
    #[error("the credential in use was refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Tls(#[from] PgTlsError),
    #[error("{0}")]
    Source(#[from] SourceMismatch),
}

impl DbError {
    /// True when the error means "this connection or credential is gone",
    /// worth one retry on a fresh connection.
    pub fn is_connection(&self) -> bool {
        matches!(self, DbError::Connect { .. } | DbError::Closed)
    }
}

/// Pools for one credential generation.
pub struct DbPools {
    pub generation: u64,
    pub username: String,
    /// Built for the static fallback credential (`fallback_size` pools).
    pub fallback: bool,
    pub replica_endpoint: Endpoint,
    pub primary_endpoint: Endpoint,
    pub replica: Pool,
    pub primary: Pool,
    pub built_at_utc: chrono::DateTime<chrono::Utc>,
    settings: PoolSettings,
    /// Connections per pool: `size`, or `fallback_size` for a fallback.
    size: usize,
}

impl std::fmt::Debug for DbPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbPools")
            .field("generation", &self.generation)
            .field("username", &self.username)
            .finish()
    }
}

fn pg_config(
    ep: &Endpoint,
    cred: &DbCredential,
    s: &PoolSettings,
    tls: &PgTls,
) -> Result<tokio_postgres::Config, PgTlsError> {
    let mut c = tokio_postgres::Config::new();
    c.host(&ep.host)
        .port(ep.port)
        .dbname(&ep.dbname)
        .user(&cred.username)
        .password(cred.password.expose())
        .application_name("riskfeat-worker")
        .connect_timeout(s.connect_timeout)
        .keepalives(true)
        // UTC: a `timestamp without time zone` column is read as UTC, the
        // same instant the window bounds are computed in. Generic plans: the
        // feature statement's custom plans are estimated so much cheaper
        // than its generic one that PostgreSQL would re-plan it on every
        // execution (about 1 ms, half the throughput, measured with pgbench
        // in docs/benchmarks.md); its one good plan is the (user, time)
        // index either way.
        .options(format!(
            "-c statement_timeout={} -c TimeZone=UTC -c plan_cache_mode=force_generic_plan",
            s.statement_timeout.as_millis().max(1)
        ));
    tls.configure(ep, &mut c)?;
    Ok(c)
}

fn make_pool(cfg: tokio_postgres::Config, s: &PoolSettings, size: usize, tls: &PgTls) -> Pool {
    let mgr = Manager::from_config(
        cfg,
        tls.connector(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(s.wait_timeout))
        .create_timeout(Some(s.connect_timeout + Duration::from_millis(500)))
        .recycle_timeout(Some(Duration::from_secs(1)))
        .build()
        .expect("runtime and sizes are set")
}

/// Connections [`DbPools::validate`] opens at once: a pool of hundreds
/// is not a burst of hundreds of forks on the server.
pub const OPEN_AT_ONCE: usize = 16;

fn target(ep: &Endpoint) -> String {
    format!("{}:{}/{}", ep.host, ep.port, ep.dbname)
}

impl DbPools {
    /// Pools for `cred` (no connection made yet); fails when an endpoint
    /// asks for TLS the settings cannot give (no CA file).
    pub fn new(cred: &DbCredential, settings: &PoolSettings, tls: &PgTls) -> Result<Self, DbError> {
        let replica_cfg = pg_config(&cred.replica, cred, settings, tls)?;
        let primary_cfg = pg_config(&cred.primary, cred, settings, tls)?;
        let size = if cred.fallback {
            settings.fallback_size.min(settings.size)
        } else {
            settings.size
        };
        Ok(DbPools {
            generation: cred.generation,
            username: cred.username.clone(),
            fallback: cred.fallback,
            replica_endpoint: cred.replica.clone(),
            primary_endpoint: cred.primary.clone(),
            replica: make_pool(replica_cfg, settings, size, tls),
            primary: make_pool(primary_cfg, settings, size, tls),
            built_at_utc: chrono::Utc::now(),
            settings: settings.clone(),
            size,
        })
    }

    /// Opens `warm` replica connections (at most [`OPEN_AT_ONCE`] at a
    /// time), checks the `[source]` mapping on the first, and on each
    /// prepares the feature statements and runs one, so that the pool is
    /// known to work (login on the replica, the table and columns there,
    /// SELECT granted) and is warm before it serves. A rotation warms the
    /// whole pool: a connection opened later would be opened under load, a
    /// fork and a login on a busy server in front of a request.
    pub async fn validate(&self, warm: usize) -> Result<(), DbError> {
        use futures::stream::{self, StreamExt, TryStreamExt};
        let conns: Vec<Object> = stream::iter(0..warm.max(1))
            .map(|_| async {
                self.replica
                    .get()
                    .await
                    .map_err(|e| self.pool_error(e, &self.replica_endpoint))
            })
            .buffer_unordered(OPEN_AT_ONCE)
            .try_collect()
            .await?;
        if let Some(first) = conns.first() {
            crate::source::check(first, &self.settings.source)
                .await
                .map_err(|e| match e {
                    Ok(mismatch) => DbError::Source(mismatch),
                    Err(e) => query_err(e),
                })?;
        }
        let sql = &self.settings.sql;
        for conn in &conns {
            let one = conn.prepare_cached(&sql.one).await.map_err(query_err)?;
            conn.prepare_cached(&sql.batch).await.map_err(query_err)?;
            let now = chrono::Utc::now().timestamp_micros();
            conn.query(&one, &[&-1i64, &1i64, &now, &now])
                .await
                .map_err(query_err)?;
        }
        Ok(())
    }

    fn pool_error(&self, e: PoolError, ep: &Endpoint) -> DbError {
        match e {
            PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => {
                DbError::PoolTimeout(self.settings.wait_timeout)
            }
            PoolError::Closed => DbError::Closed,
            PoolError::Backend(e) => DbError::Connect {
                target: target(ep),
                user: self.username.clone(),
                message: describe_pg(&e),
            },
            other => DbError::Connect {
                target: target(ep),
                user: self.username.clone(),
                message: other.to_string(),
            },
        }
    }

    /// Closes both pools: idle connections are dropped now, busy ones when
    /// they are returned.
    pub fn close(&self) {
        self.replica.close();
        self.primary.close();
    }

    /// Runs a prepared query on `pool` (replica or primary). `retry` is the
    /// second attempt after a connection error: it drops the idle
    /// connections known closed and checks an idle one before using it.
    pub async fn query(
        &self,
        use_primary: bool,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        retry: bool,
    ) -> Result<Vec<tokio_postgres::Row>, DbError> {
        let (pool, ep) = if use_primary {
            (&self.primary, &self.primary_endpoint)
        } else {
            (&self.replica, &self.replica_endpoint)
        };
        let conn = if retry {
            self.live_connection(pool, ep).await?
        } else {
            pool.get().await.map_err(|e| self.pool_error(e, ep))?
        };
        let result = async {
            let stmt = conn.prepare_cached(sql).await?;
            conn.query(&stmt, params).await
        }
        .await;
        match result {
            Ok(rows) => Ok(rows),
            Err(e) => {
                if conn_dead(&e) {
                    // Never return a dead connection to the pool.
                    drop(Object::take(conn));
                }
                Err(query_err(e))
            }
        }
    }

    /// A connection of `pool` that answers: a new one, or an idle one that
    /// answers an empty query (each that does not is thrown away; at most
    /// the pool's size of them).
    async fn live_connection(&self, pool: &Pool, ep: &Endpoint) -> Result<Object, DbError> {
        pool.retain(|c, _| !c.is_closed());
        for _ in 0..self.size {
            let conn = pool.get().await.map_err(|e| self.pool_error(e, ep))?;
            if Object::metrics(&conn).recycle_count == 0 || conn.simple_query("").await.is_ok() {
                return Ok(conn);
            }
            drop(Object::take(conn));
        }
        Err(DbError::Closed)
    }

    /// (size, available, waiting) of the replica pool.
    pub fn stats(&self) -> (usize, usize, usize) {
        let s = self.replica.status();
        (s.size, s.available, s.waiting)
    }

    /// Connections per pool (smaller for a fallback credential).
    pub fn max_size(&self) -> usize {
        self.size
    }
}

/// True for errors that mean the connection (or its role) is gone.
pub fn conn_dead(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::INVALID_PASSWORD
                || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                || code.code().starts_with("08")
        }
        // No SQLSTATE and not "closed": an I/O error on the socket.
        None => true,
    }
}

/// True for a refusal of the credential's rights (SQLSTATE 42501,
/// `insufficient_privilege`): its role was dropped under the session, or a
/// grant it relied on was revoked.
pub fn credential_refused(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE)
}

fn query_err(e: tokio_postgres::Error) -> DbError {
    if conn_dead(&e) {
        DbError::Closed
    } else if credential_refused(&e) {
        DbError::Refused(describe_pg(&e))
    } else {
        DbError::Query(describe_pg(&e))
    }
}

/// A one-line description of a PostgreSQL error (never contains a password:
/// tokio-postgres errors do not echo the connection string).
pub fn describe_pg(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => riskfeat_shared::telemetry::error_chain(e),
    }
}
