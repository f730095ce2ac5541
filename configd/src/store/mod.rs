//! PostgreSQL storage: namespaces, current items, the change log and the
//! audit log. A publish is one transaction that locks the namespace row,
//! bumps its version, writes items, change log and audit, and sends
//! `pg_notify` (delivered on commit to every configd instance).
//!
//! Compaction keeps, for versions at or below `compacted_to`, only the last
//! change of each key (and drops deletes), so the state at any version
//! `>= compacted_to` can still be rebuilt (diff, rollback) while the log
//! stays bounded by the number of keys plus the retained versions.

mod clients;
mod gray;
mod ns_schema;
pub mod schema;

pub use clients::ClientRow;
pub use gray::GrayEffect;
pub use ns_schema::NsSchema;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use riskfeat_shared::pg_tls::{ReloadingPgTls, SslMode};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The NOTIFY channel; payload is the namespace name.
pub const CHANNEL: &str = "riskfeat_configd";

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("namespace {0:?} not found")]
    NotFound(String),
    #[error("namespace {0:?} already exists")]
    Exists(String),
    #[error("expected version {expected} but the namespace is at {current}")]
    Conflict { expected: u64, current: u64 },
    #[error("version {version} is out of range (retained {min}..={max})")]
    VersionRange { version: u64, min: u64, max: u64 },
    /// The version or schema checked before the publish moved on (the
    /// handler checks again).
    #[error("the namespace changed while the publish was checked")]
    Stale,
    #[error("a gray release is already in progress (started at version {0})")]
    GrayActive(u64),
    #[error("no gray release is in progress")]
    NoGray,
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

impl StoreError {
    /// True when the database could not be reached (degraded mode).
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Db(e) => e.is_closed() || e.code().is_none(),
            _ => false,
        }
    }
}

/// upsert or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Upsert,
    Delete,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Upsert => "upsert",
            Op::Delete => "delete",
        }
    }
}

/// One requested change; `value` is JSON text (present for upserts).
#[derive(Debug, Clone)]
pub struct Change {
    pub op: Op,
    pub key: String,
    pub value: Option<String>,
}

/// One change from the log; `value` is JSON text.
#[derive(Debug, Clone)]
pub struct LoggedChange {
    pub version: u64,
    pub op: Op,
    pub key: Arc<str>,
    pub value: Option<Arc<str>>,
}

/// One publish: who, why, what, and what it does to a gray release.
#[derive(Debug)]
pub struct Publish<'a> {
    pub ns: &'a str,
    /// The caller's `expected_version` (a mismatch is a 409).
    pub expected: Option<u64>,
    /// The version the result was checked (schema) against: a mismatch is
    /// [`StoreError::Stale`].
    pub checked_at: Option<u64>,
    /// The schema version it was checked against (0: none); another is
    /// [`StoreError::Stale`].
    pub schema_version: u64,
    pub token: &'a str,
    pub author: &'a str,
    pub comment: &'a str,
    /// `publish`, `rollback`, `replace`, `gray_start`, `gray_promote`, `gray_abort`.
    pub kind: &'a str,
    pub changes: &'a [Change],
    pub gray: GrayEffect<'a>,
}

/// A namespace row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsRow {
    pub name: String,
    pub version: u64,
    pub compacted_to: u64,
}

/// What a full load returns: items, and the log after `log_from`.
#[derive(Debug)]
pub struct Loaded {
    pub version: u64,
    pub log_from: u64,
    pub items: BTreeMap<Arc<str>, Arc<str>>,
    pub log: Vec<LoggedChange>,
    pub gray: Option<crate::gray::Gray>,
    pub marks: crate::gray::GrayMarks,
}

/// The log after some version.
#[derive(Debug)]
pub struct Since {
    pub version: u64,
    pub compacted_to: u64,
    pub log: Vec<LoggedChange>,
    /// The gray release in progress at `version`.
    pub gray: Option<crate::gray::Gray>,
    /// Gray marks after `from`.
    pub marks: Vec<(u64, bool)>,
}

/// One audit entry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Audit {
    pub version: u64,
    /// The author the publisher gave: a free comment, not verified.
    pub who: String,
    /// The name of the token that published (None: before migration 2).
    pub token: Option<String>,
    pub at: String,
    pub comment: String,
    pub changes: i32,
    /// What the version is (`publish`, `rollback`, `replace`, `gray_start`,
    /// `gray_promote`, `gray_abort`; None: before migration 3).
    pub kind: Option<String>,
}

/// The connection pool and every query.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    pg: tokio_postgres::Config,
    tls: ReloadingPgTls,
}

fn u(v: i64) -> u64 {
    v.max(0) as u64
}

fn parse_op(s: &str) -> Op {
    if s == "delete" {
        Op::Delete
    } else {
        Op::Upsert
    }
}

impl Store {
    /// A pool for `dsn` (no connection is made yet) over `tls`:
    /// `sslmode` overrides the DSN's (verify-full requires TLS; the
    /// connector checks the chain and the host name).
    pub fn new(
        dsn: &str,
        pool_size: usize,
        sslmode: SslMode,
        tls: ReloadingPgTls,
    ) -> Result<Store, StoreError> {
        let mut pg: tokio_postgres::Config = dsn
            .parse()
            .map_err(|e: tokio_postgres::Error| StoreError::Unavailable(e.to_string()))?;
        pg.connect_timeout(Duration::from_secs(3));
        pg.application_name("riskfeat-configd");
        pg.ssl_mode(match sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        });
        let mgr = Manager::from_config(
            pg.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(3)))
            .recycle_timeout(Some(Duration::from_secs(3)))
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Store { pool, pg, tls })
    }

    /// The connector (for the LISTEN connection).
    pub fn tls(&self) -> ReloadingPgTls {
        self.tls.clone()
    }

    /// The connection settings (for the LISTEN connection).
    pub fn pg_config(&self) -> &tokio_postgres::Config {
        &self.pg
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.pool.get().await?)
    }

    /// Applies the embedded migrations under an advisory lock.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&schema::MIGRATION_LOCK])
            .await?;
        let result = async {
            client
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS configd_schema (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
                )
                .await?;
            for (version, sql) in schema::MIGRATIONS {
                let done = client
                    .query_opt("SELECT 1 FROM configd_schema WHERE version = $1", &[version])
                    .await?
                    .is_some();
                if !done {
                    client.batch_execute(sql).await?;
                    client
                        .execute("INSERT INTO configd_schema(version) VALUES ($1)", &[version])
                        .await?;
                    tracing::info!(version, "applied schema migration");
                }
            }
            Ok::<(), StoreError>(())
        }
        .await;
        let _ = client
            .execute("SELECT pg_advisory_unlock($1)", &[&schema::MIGRATION_LOCK])
            .await;
        result
    }

    /// Holds `key` as a session advisory lock until the guard is released.
    pub async fn advisory_lock(&self, key: i64) -> Result<deadpool_postgres::Object, StoreError> {
        let client = self.client().await?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&key])
            .await?;
        Ok(client)
    }

    /// Releases a lock taken with [`Store::advisory_lock`].
    pub async fn advisory_unlock(client: deadpool_postgres::Object, key: i64) {
        let _ = client
            .execute("SELECT pg_advisory_unlock($1)", &[&key])
            .await;
    }

    /// Every namespace.
    pub async fn list_namespaces(&self) -> Result<Vec<NsRow>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT name, version, compacted_to FROM configd_namespaces ORDER BY name",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| NsRow {
                name: r.get(0),
                version: u(r.get(1)),
                compacted_to: u(r.get(2)),
            })
            .collect())
    }

    /// Creates a namespace at version 0.
    pub async fn create_namespace(&self, ns: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        let n = client
            .execute(
                "INSERT INTO configd_namespaces(name) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&ns],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::Exists(ns.to_string()));
        }
        client
            .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &ns])
            .await?;
        Ok(())
    }

    /// Deletes a namespace and everything in it.
    pub async fn delete_namespace(&self, ns: &str) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let n = tx
            .execute("DELETE FROM configd_namespaces WHERE name = $1", &[&ns])
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound(ns.to_string()));
        }
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &ns])
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Publishes `p.changes` as one new version; see the module docs.
    pub async fn publish(&self, p: &Publish<'_>) -> Result<u64, StoreError> {
        let ns = p.ns;
        let changes = p.changes;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let (current, _) = Self::versions(&tx, ns, Lock::ForUpdate).await?;
        if let Some(expected) = p.expected {
            if expected != current {
                return Err(StoreError::Conflict { expected, current });
            }
        }
        if p.checked_at.is_some_and(|v| v != current) {
            return Err(StoreError::Stale);
        }
        ns_schema::check(&tx, ns, p.schema_version).await?;
        gray::apply(&tx, p, current).await?;
        let version = (current + 1) as i64;
        let mut up_keys = Vec::new();
        let mut up_vals = Vec::new();
        let mut del_keys = Vec::new();
        let mut keys = Vec::new();
        let mut ops = Vec::new();
        let mut vals: Vec<Option<&str>> = Vec::new();
        for c in changes {
            keys.push(c.key.as_str());
            ops.push(c.op.as_str());
            vals.push(c.value.as_deref());
            match c.op {
                Op::Upsert => {
                    up_keys.push(c.key.as_str());
                    up_vals.push(c.value.as_deref().unwrap_or("null"));
                }
                Op::Delete => del_keys.push(c.key.as_str()),
            }
        }
        if !up_keys.is_empty() {
            tx.execute(
                "INSERT INTO configd_items(namespace, key, value, version) \
                 SELECT $1, k, v::jsonb, $2 FROM unnest($3::text[], $4::text[]) AS t(k, v) \
                 ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, version = excluded.version",
                &[&ns, &version, &up_keys, &up_vals],
            )
            .await?;
        }
        if !del_keys.is_empty() {
            tx.execute(
                "DELETE FROM configd_items WHERE namespace = $1 AND key = ANY($2::text[])",
                &[&ns, &del_keys],
            )
            .await?;
        }
        tx.execute(
            "INSERT INTO configd_changes(namespace, version, key, op, value) \
             SELECT $1, $2, k, o, v::jsonb FROM unnest($3::text[], $4::text[], $5::text[]) AS t(k, o, v)",
            &[&ns, &version, &keys, &ops, &vals],
        )
        .await?;
        tx.execute(
            "INSERT INTO configd_audits(namespace, version, who, comment, changes, token, kind) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&ns, &version, &p.author, &p.comment, &(changes.len() as i32), &p.token, &p.kind],
        )
        .await?;
        tx.execute(
            "UPDATE configd_namespaces SET version = $2 WHERE name = $1",
            &[&ns, &version],
        )
        .await?;
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &ns])
            .await?;
        tx.commit().await?;
        Ok(version as u64)
    }

    /// Full load of a namespace in one consistent (repeatable read) view:
    /// its items plus the retained log after `max(compacted_to, version - retention)`.
    pub async fn load(&self, ns: &str, retention: u64) -> Result<Loaded, StoreError> {
        let mut client = self.client().await?;
        let tx = Self::consistent_view(&mut client).await?;
        let (version, compacted_to) = Self::versions(&tx, ns, Lock::None).await?;
        let log_from = compacted_to.max(version.saturating_sub(retention));
        // Streamed: never holds every row and the map at once.
        let stream = tx
            .query_raw(
                "SELECT key, value::text FROM configd_items WHERE namespace = $1",
                [ns],
            )
            .await?;
        futures::pin_mut!(stream);
        let mut items = BTreeMap::new();
        while let Some(r) = futures::TryStreamExt::try_next(&mut stream).await? {
            let k: &str = r.get(0);
            let v: &str = r.get(1);
            items.insert(Arc::<str>::from(k), Arc::<str>::from(v));
        }
        // The latest upsert of a key usually holds the current value: the log
        // shares that allocation with the items, row by row as it streams.
        let log = Self::log_after(&tx, ns, log_from, Some(&items)).await?;
        let gray = gray::current(&tx, ns).await?;
        let marks = crate::gray::GrayMarks(gray::marks(&tx, ns, None).await?);
        tx.commit().await?;
        Ok(Loaded {
            version,
            log_from,
            items,
            log,
            gray,
            marks,
        })
    }

    /// A read-only repeatable-read transaction: every query in it sees the
    /// same committed state (the namespace row, its items, its log).
    async fn consistent_view(
        client: &mut deadpool_postgres::Object,
    ) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
        Ok(client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?)
    }

    /// `(version, compacted_to)` of `ns` (`NotFound` when it does not
    /// exist); with [`Lock::ForUpdate`] its row stays locked until `tx` ends.
    async fn versions(
        tx: &tokio_postgres::Transaction<'_>,
        ns: &str,
        lock: Lock,
    ) -> Result<(u64, u64), StoreError> {
        let sql = match lock {
            Lock::None => "SELECT version, compacted_to FROM configd_namespaces WHERE name = $1",
            Lock::ForUpdate => {
                "SELECT version, compacted_to FROM configd_namespaces WHERE name = $1 FOR UPDATE"
            }
        };
        let row = tx
            .query_opt(sql, &[&ns])
            .await?
            .ok_or_else(|| StoreError::NotFound(ns.to_string()))?;
        Ok((u(row.get(0)), u(row.get(1))))
    }

    /// The change log after `from`, streamed: never more than one row
    /// buffered beside the result. With `share`, a key and value equal to
    /// the current item reuse its allocations instead of copying them (the
    /// log of a freshly loaded namespace is mostly the current values).
    async fn log_after(
        tx: &tokio_postgres::Transaction<'_>,
        ns: &str,
        from: u64,
        share: Option<&BTreeMap<Arc<str>, Arc<str>>>,
    ) -> Result<Vec<LoggedChange>, StoreError> {
        let from = from as i64;
        let stream = tx
            .query_raw(
                "SELECT version, key, op, value::text FROM configd_changes \
                 WHERE namespace = $1 AND version > $2 ORDER BY version, key",
                [&ns as &(dyn tokio_postgres::types::ToSql + Sync), &from],
            )
            .await?;
        futures::pin_mut!(stream);
        let mut log = Vec::new();
        while let Some(r) = futures::TryStreamExt::try_next(&mut stream).await? {
            let key: &str = r.get(1);
            let value: Option<&str> = r.get(3);
            let current = share.and_then(|items| items.get_key_value(key));
            let (key, value) = match (current, value) {
                (Some((k, cur)), Some(v)) if **cur == *v => (k.clone(), Some(cur.clone())),
                (Some((k, _)), v) => (k.clone(), v.map(Arc::from)),
                (None, v) => (Arc::from(key), v.map(Arc::from)),
            };
            log.push(LoggedChange {
                version: u(r.get(0)),
                key,
                op: parse_op(r.get(2)),
                value,
            });
        }
        Ok(log)
    }

    /// The log after `from` in one consistent view.
    pub async fn since(&self, ns: &str, from: u64) -> Result<Since, StoreError> {
        let mut client = self.client().await?;
        let tx = Self::consistent_view(&mut client).await?;
        let (version, compacted_to) = Self::versions(&tx, ns, Lock::None).await?;
        let log = if from >= compacted_to {
            Self::log_after(&tx, ns, from, None).await?
        } else {
            Vec::new()
        };
        let gray = gray::current(&tx, ns).await?;
        let marks = gray::marks(&tx, ns, Some(from)).await?;
        tx.commit().await?;
        Ok(Since {
            version,
            compacted_to,
            log,
            gray,
            marks,
        })
    }

    /// The value of every key touched in `(a, b]`, at `a` and at `b`
    /// (`None` = absent). Needs `compacted_to <= a <= b <= version`.
    #[allow(clippy::type_complexity)]
    pub async fn diff(
        &self,
        ns: &str,
        a: u64,
        b: u64,
    ) -> Result<(u64, BTreeMap<String, (Option<String>, Option<String>)>), StoreError> {
        let mut client = self.client().await?;
        let tx = Self::consistent_view(&mut client).await?;
        let (version, compacted_to) = Self::versions(&tx, ns, Lock::None).await?;
        for v in [a, b] {
            if v < compacted_to || v > version {
                return Err(StoreError::VersionRange {
                    version: v,
                    min: compacted_to,
                    max: version,
                });
            }
        }
        let (lo, hi) = (a.min(b), a.max(b));
        let rows = tx
            .query(
                "WITH touched AS (SELECT DISTINCT key FROM configd_changes WHERE namespace = $1 AND version > $2 AND version <= $3) \
                 SELECT t.key, \
                   (SELECT CASE WHEN c.op = 'upsert' THEN c.value::text END FROM configd_changes c WHERE c.namespace = $1 AND c.key = t.key AND c.version <= $4 ORDER BY c.version DESC LIMIT 1), \
                   (SELECT CASE WHEN c.op = 'upsert' THEN c.value::text END FROM configd_changes c WHERE c.namespace = $1 AND c.key = t.key AND c.version <= $5 ORDER BY c.version DESC LIMIT 1) \
                 FROM touched t ORDER BY t.key",
                &[&ns, &(lo as i64), &(hi as i64), &(a as i64), &(b as i64)],
            )
            .await?;
        tx.commit().await?;
        Ok((
            version,
            rows.iter()
                .map(|r| (r.get::<_, String>(0), (r.get(1), r.get(2))))
                .collect(),
        ))
    }

    /// Audit entries, newest first.
    pub async fn history(&self, ns: &str, limit: i64) -> Result<Vec<Audit>, StoreError> {
        let client = self.client().await?;
        namespace_exists(&client, ns).await?;
        let rows = client
            .query(
                "SELECT version, who, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), comment, changes, token, kind \
                 FROM configd_audits WHERE namespace = $1 ORDER BY version DESC LIMIT $2",
                &[&ns, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Audit {
                version: u(r.get(0)),
                who: r.get(1),
                at: r.get(2),
                comment: r.get(3),
                changes: r.get(4),
                token: r.get(5),
                kind: r.get(6),
            })
            .collect())
    }

    /// Compacts the log of `ns` up to `version - retention`; returns rows deleted.
    pub async fn compact(&self, ns: &str, retention: u64) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let (version, compacted_to) = Self::versions(&tx, ns, Lock::ForUpdate).await?;
        let to = version.saturating_sub(retention);
        if to <= compacted_to {
            return Ok(0);
        }
        let to_i = to as i64;
        let n = tx
            .execute(
                "DELETE FROM configd_changes c WHERE c.namespace = $1 AND c.version <= $2 AND \
                 (c.op = 'delete' OR EXISTS (SELECT 1 FROM configd_changes d WHERE d.namespace = c.namespace \
                  AND d.key = c.key AND d.version > c.version AND d.version <= $2))",
                &[&ns, &to_i],
            )
            .await?;
        tx.execute(
            "UPDATE configd_namespaces SET compacted_to = $2 WHERE name = $1",
            &[&ns, &to_i],
        )
        .await?;
        tx.commit().await?;
        Ok(n)
    }
}

/// Whether [`Store::versions`] locks the namespace row.
#[derive(Clone, Copy)]
enum Lock {
    /// A plain read (in a consistent view).
    None,
    /// `FOR UPDATE`: in a writing transaction, until it ends.
    ForUpdate,
}

/// `NotFound` unless namespace `ns` exists.
pub(crate) async fn namespace_exists(
    client: &deadpool_postgres::Object,
    ns: &str,
) -> Result<(), StoreError> {
    match client
        .query_opt("SELECT 1 FROM configd_namespaces WHERE name = $1", &[&ns])
        .await?
    {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound(ns.to_string())),
    }
}
