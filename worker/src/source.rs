//! The team's own transactions table: which table and columns the feature
//! SQL reads (`[source]` in the worker config), the SQL built from that
//! mapping, and the check of the mapping against the live database.
//!
//! Identifiers are validated when the config is parsed and always written
//! into SQL as quoted identifiers (`"name"`, embedded quotes doubled), never
//! spliced raw. A quoted identifier is matched exactly: write names as they
//! appear in `information_schema` (lower case for tables created without
//! quotes).
//!
//! The mapping is checked at start and on every new pool
//! ([`check`]): the table must exist and be readable by the credential, the
//! user column integer-like, the amount column numeric, floating point or
//! integer, the time column a timestamp (with or without time zone). Every
//! mismatch is reported at once, by name.
//!
//! One statement per request reads the newest `lookback` rows (as two
//! arrays) and, in the same round trip, the exact window aggregates (count
//! and sum of every transaction of the user in the short and the long
//! window), so the windows do not depend on `lookback`. When the newest rows
//! already reach back past the long window's start (fewer than `lookback`
//! rows, or the oldest of them outside the window: the usual case), every
//! row of both windows is among them and the worker sums them itself; only
//! a user with a full page inside the long window costs the aggregate, an
//! index range scan of `(user, time)` within the window. Parameters: `$1`
//! user id (int8; an int8 array in the batch form), `$2` the lookback, `$3`
//! the short window's start and `$4` the long window's start, both in
//! microseconds since the Unix epoch.
//!
//! Rows with a NULL time are ignored. Amounts that are NULL, NaN or infinite
//! are skipped by the worker and counted (the aggregate part returns how
//! many it skipped); a numeric amount beyond float8's range (only possible
//! in an unconstrained `numeric` column) fails that user's query with a
//! `database_error`. A time in the future counts as now.

use riskfeat_shared::exit::Fatal;
use serde::Deserialize;

/// `[source]`: where the transactions are. Defaults are the seed's table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Source {
    /// `table` or `schema.table`.
    pub table: String,
    pub user_column: String,
    pub amount_column: String,
    pub time_column: String,
}

impl Default for Source {
    fn default() -> Self {
        Self {
            table: "transactions".into(),
            user_column: "user_id".into(),
            amount_column: "transaction_amount".into(),
            time_column: "transaction_time".into(),
        }
    }
}

/// PostgreSQL's identifier limit (NAMEDATALEN - 1).
const MAX_IDENT_BYTES: usize = 63;

/// Why an identifier cannot be used, or `None` when it can.
fn ident_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("is empty".into())
    } else if name.len() > MAX_IDENT_BYTES {
        Some(format!(
            "is {} bytes long; PostgreSQL identifiers are at most {MAX_IDENT_BYTES}",
            name.len()
        ))
    } else if name.chars().any(|c| c.is_control()) {
        Some("contains a control character".into())
    } else if name.trim() != name {
        Some("starts or ends with white space".into())
    } else {
        None
    }
}

/// `"name"` with embedded quotes doubled.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Source {
    /// The schema (if given) and the table name.
    pub fn table_parts(&self) -> (Option<&str>, &str) {
        match self.table.split_once('.') {
            Some((schema, table)) => (Some(schema), table),
            None => (None, &self.table),
        }
    }

    /// The table as it is written into SQL: `"schema"."table"` or `"table"`.
    pub fn quoted_table(&self) -> String {
        match self.table_parts() {
            (Some(s), t) => format!("{}.{}", quote(s), quote(t)),
            (None, t) => quote(t),
        }
    }

    /// Every problem with the names, prefixed with their key path.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let (schema, table) = self.table_parts();
        if table.contains('.') {
            out.push(format!(
                "source.table = {:?}: expected \"table\" or \"schema.table\"",
                self.table
            ));
        }
        for (what, name) in [("schema", schema), ("table", Some(table))] {
            if let Some(p) = name.and_then(ident_problem) {
                out.push(format!(
                    "source.table = {:?}: the {what} name {p}",
                    self.table
                ));
            }
        }
        for (key, name) in [
            ("user_column", &self.user_column),
            ("amount_column", &self.amount_column),
            ("time_column", &self.time_column),
        ] {
            if let Some(p) = ident_problem(name) {
                out.push(format!("source.{key} = {name:?}: {p}"));
            } else if name.contains('.') {
                out.push(format!("source.{key} = {name:?}: a column name has no '.'"));
            }
        }
        out
    }

    /// The feature statements for this mapping.
    pub fn sql(&self) -> FeatureSql {
        FeatureSql::new(self)
    }
}

/// The statements the request path runs, built once from the mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureSql {
    /// One user: one row `(amounts, times, windows)`, `windows` NULL or
    /// `[count_short, amount_short, count_long, amount_long, skipped]`.
    pub one: String,
    /// Users `$1::int8[]`: one row per user, the user id first.
    pub batch: String,
}

/// `$n` (µs since the epoch) as a timestamptz.
fn at(n: u8) -> String {
    format!("('epoch'::timestamptz + ${n}::int8 * interval '1 microsecond')")
}

impl FeatureSql {
    fn new(s: &Source) -> FeatureSql {
        let table = s.quoted_table();
        let user = quote(&s.user_column);
        // The newest rows are read as float8; the aggregate sums the column's
        // own type (a numeric is not converted row by row, which costs more
        // than the sum) and skips NULL, NaN and infinities (NaN sorts above
        // every number in PostgreSQL, so BETWEEN excludes it).
        let raw = quote(&s.amount_column);
        let amount = format!("{raw}::float8");
        let time = quote(&s.time_column);
        let (short_start, long_start) = (at(3), at(4));
        let latest = |uid: &str| {
            format!(
                "(SELECT array_agg(s.a ORDER BY s.t DESC) AS a, \
                 array_agg(s.t ORDER BY s.t DESC) AS t \
                 FROM (SELECT {amount} AS a, (extract(epoch FROM {time}) * 1000000)::int8 AS t \
                 FROM {table} WHERE {user} = {uid} AND {time} IS NOT NULL \
                 ORDER BY {time} DESC LIMIT $2) s)"
            )
        };
        // Only when the newest rows do not reach back past the long window
        // (a full page, its oldest row inside the window): PostgreSQL runs a
        // sub-select in a CASE branch only when the branch is taken. The
        // test reads the page's last time (NULL when the page is short)
        // instead of aggregating a count and a minimum beside the arrays:
        // 6% less backend CPU per statement (docs/benchmarks.md).
        let windows = |uid: &str| {
            format!(
                "CASE WHEN l.t[$2::int8::int4] > $4 THEN \
                 (SELECT ARRAY[count(*) FILTER (WHERE w.ok AND w.t > {short_start}), \
                 COALESCE(sum(w.a) FILTER (WHERE w.ok AND w.t > {short_start}), 0), \
                 count(*) FILTER (WHERE w.ok), COALESCE(sum(w.a) FILTER (WHERE w.ok), 0), \
                 count(*) FILTER (WHERE NOT w.ok)]::float8[] \
                 FROM (SELECT {raw} AS a, {time} AS t, \
                 COALESCE({raw} BETWEEN -1.7976931348623157e308 AND 1.7976931348623157e308, \
                 false) AS ok \
                 FROM {table} WHERE {user} = {uid} AND {time} > {long_start}) w) END"
            )
        };
        let one = format!(
            "SELECT l.a, l.t, {} FROM {} AS l",
            windows("$1::int8"),
            latest("$1::int8")
        );
        let batch = format!(
            "SELECT u.id, l.a, l.t, {} FROM unnest($1::int8[]) AS u(id) \
             CROSS JOIN LATERAL {} AS l",
            windows("u.id"),
            latest("u.id")
        );
        FeatureSql { one, batch }
    }
}

/// The mapping does not fit the database: every mismatch, by name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[source] does not match the database: {}", problems.join("; "))]
pub struct SourceMismatch {
    pub problems: Vec<String>,
}

/// The column types each role accepts (`information_schema` spelling).
const USER_TYPES: &[&str] = &["smallint", "integer", "bigint"];
const AMOUNT_TYPES: &[&str] = &[
    "numeric",
    "double precision",
    "real",
    "smallint",
    "integer",
    "bigint",
];
const TIME_TYPES: &[&str] = &["timestamp with time zone", "timestamp without time zone"];

/// Checks the mapping on `client` (a connection as the worker's
/// credential). `Err(Ok(..))` is a mismatch; `Err(Err(..))` a failed query.
pub async fn check(
    client: &tokio_postgres::Client,
    source: &Source,
) -> Result<(), Result<SourceMismatch, tokio_postgres::Error>> {
    check_inner(client, source).await.map_err(|e| match e {
        // No USAGE on the schema, no SELECT: a mapping this credential
        // cannot use, said as such rather than as a failed query.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
            let why = e
                .as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| e.to_string());
            Ok(SourceMismatch {
                problems: vec![format!("source.table = {:?}: {why}", source.table)],
            })
        }
        other => other,
    })
}

async fn check_inner(
    client: &tokio_postgres::Client,
    source: &Source,
) -> Result<(), Result<SourceMismatch, tokio_postgres::Error>> {
    // to_regclass resolves an unqualified name through search_path, as the
    // feature query will; the quoted form keeps the name exact.
    let row = client
        .query_one(
            "SELECT c.oid::int8, n.nspname::text, c.relname::text, \
             has_table_privilege(c.oid, 'SELECT') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = to_regclass($1) \
             UNION ALL SELECT NULL, NULL, NULL, NULL LIMIT 1",
            &[&source.quoted_table()],
        )
        .await
        .map_err(Err)?;
    let Some(_oid) = row.get::<_, Option<i64>>(0) else {
        return Err(Ok(SourceMismatch {
            problems: vec![format!(
                "source.table = {:?}: no such table (or view) on the search path",
                source.table
            )],
        }));
    };
    let schema: String = row.get(1);
    let table: String = row.get(2);
    let readable: bool = row.get(3);
    let mut problems = Vec::new();
    if !readable {
        problems.push(format!(
            "source.table = {:?}: the credential may not SELECT from {schema}.{table}",
            source.table
        ));
    }
    let columns: Vec<(String, String)> = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, NULL) \
             FROM pg_attribute a WHERE a.attrelid = to_regclass($1) \
             AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&source.quoted_table()],
        )
        .await
        .map_err(Err)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
    for (key, name, accepted, what) in [
        (
            "user_column",
            &source.user_column,
            USER_TYPES,
            "an integer type",
        ),
        (
            "amount_column",
            &source.amount_column,
            AMOUNT_TYPES,
            "numeric, real, double precision or an integer type",
        ),
        (
            "time_column",
            &source.time_column,
            TIME_TYPES,
            "timestamp or timestamptz",
        ),
    ] {
        match columns.iter().find(|(n, _)| n == name) {
            None => problems.push(format!(
                "source.{key} = {name:?}: {schema}.{table} has no such column (columns: {})",
                names.join(", ")
            )),
            Some((_, ty)) if !accepted.contains(&ty.as_str()) => problems.push(format!(
                "source.{key} = {name:?}: {schema}.{table}.{name} is {ty}, expected {what}"
            )),
            Some(_) => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Ok(SourceMismatch { problems }))
    }
}

/// `check-config --database`: the mapping checked once, as the worker
/// would on a new pool, with the credential of the shared dir's `db.json`
/// (so it runs where the worker runs). Ok names what was checked; a
/// mismatch is [`Fatal::Data`] (65), a credential that cannot be read is
/// [`Fatal::Input`] (66), a database that cannot be used is
/// [`Fatal::Unavailable`] (69).
pub async fn check_database(cfg: &crate::config::Config) -> Result<String, Fatal> {
    use crate::pool::{DbError, DbPools};
    let (tls, _) = crate::run::load_ca(cfg)?;
    let path = riskfeat_shared::layout::SharedDir::new(&cfg.shared_dir).db_json();
    let bytes = std::fs::read(&path)
        .map_err(|e| Fatal::Input(format!("{}: cannot read: {e}", path.display())))?;
    let cred =
        riskfeat_shared::creds::DbCredential::from_slice(&path.display().to_string(), &bytes)
            .map_err(|e| Fatal::Input(e.to_string()))?;
    let app = crate::app::App::new(cfg.clone(), tls.clone());
    let pools =
        DbPools::new(&cred, &app.pool_settings, &tls).map_err(|e| Fatal::Config(e.to_string()))?;
    let budget = app.pool_settings.validate_budget(1);
    let result = tokio::time::timeout(budget, pools.validate(1)).await;
    pools.close();
    match result {
        Ok(Ok(())) => Ok(format!(
            "[source] {} matches the database at {}:{}/{} (as {})",
            cfg.source.quoted_table(),
            cred.replica.host,
            cred.replica.port,
            cred.replica.dbname,
            cred.username
        )),
        Ok(Err(DbError::Source(m))) => Err(Fatal::Data(m.to_string())),
        Ok(Err(e)) => Err(Fatal::Unavailable(e.to_string())),
        Err(_) => Err(Fatal::Unavailable(format!(
            "no answer from the database within {budget:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_seed_table() {
        let s = Source::default();
        assert_eq!(
            (
                s.table.as_str(),
                s.user_column.as_str(),
                s.amount_column.as_str(),
                s.time_column.as_str()
            ),
            (
                "transactions",
                "user_id",
                "transaction_amount",
                "transaction_time"
            )
        );
        assert!(s.problems().is_empty());
    }

    #[test]
    fn identifiers_are_quoted_never_spliced() {
        let s = Source {
            table: "risk.tx\"; DROP TABLE x; --".into(),
            user_column: "Uid".into(),
            ..Default::default()
        };
        assert!(s.problems().is_empty(), "{:?}", s.problems());
        let sql = s.sql();
        assert!(
            sql.one
                .contains("FROM \"risk\".\"tx\"\"; DROP TABLE x; --\" WHERE \"Uid\" = $1::int8"),
            "{}",
            sql.one
        );
        assert!(!sql.one.contains(" tx\";"), "{}", sql.one);
    }

    #[test]
    fn every_bad_name_is_reported_at_once() {
        let s = Source {
            table: "a.b.c".into(),
            user_column: String::new(),
            amount_column: "x".repeat(64),
            time_column: "t\n".into(),
        };
        let p = s.problems();
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p[0].contains("source.table"), "{p:?}");
        assert!(p
            .iter()
            .any(|m| m.starts_with("source.user_column") && m.contains("empty")));
        assert!(p
            .iter()
            .any(|m| m.starts_with("source.amount_column") && m.contains("63")));
        assert!(p.iter().any(|m| m.starts_with("source.time_column")));
    }

    #[test]
    fn batch_and_one_share_the_parts() {
        let sql = Source::default().sql();
        assert!(sql.batch.starts_with("SELECT u.id, l.a, l.t, CASE"));
        assert!(sql.one.starts_with("SELECT l.a, l.t, CASE"));
        for s in [&sql.one, &sql.batch] {
            assert!(s.contains("ORDER BY \"transaction_time\" DESC LIMIT $2"));
            assert!(s.contains("\"transaction_time\" > ('epoch'::timestamptz + $4::int8"));
            assert!(s.contains("CASE WHEN l.t[$2::int8::int4] > $4 THEN"));
        }
    }
}
