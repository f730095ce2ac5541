//! Namespace schemas (`configd_ns_schemas`): one JSON Schema per namespace,
//! versioned (every set is a new version; a `null` schema removes it), set
//! under the namespace row's lock so a publish checked against version N is
//! refused when N is no longer the latest.

use super::{namespace_exists, Lock, Store, StoreError};

/// One schema version of a namespace (`schema` None: no schema).
#[derive(Debug, Clone, serde::Serialize)]
pub struct NsSchema {
    pub namespace: String,
    /// 0: never set.
    pub version: u64,
    pub schema: Option<serde_json::Value>,
    pub token: Option<String>,
    pub at: Option<String>,
}

/// In a publish transaction: the latest schema version must be `expected`.
pub(super) async fn check(
    tx: &tokio_postgres::Transaction<'_>,
    ns: &str,
    expected: u64,
) -> Result<(), StoreError> {
    if latest(tx, ns).await? != expected {
        return Err(StoreError::Stale);
    }
    Ok(())
}

/// The latest schema version of `ns` (0: never set).
async fn latest(tx: &tokio_postgres::Transaction<'_>, ns: &str) -> Result<u64, StoreError> {
    let row = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM configd_ns_schemas WHERE namespace = $1",
            &[&ns],
        )
        .await?;
    Ok(super::u(row.get(0)))
}

impl Store {
    /// The latest schema of `ns` (version 0 when never set).
    pub async fn schema(&self, ns: &str) -> Result<NsSchema, StoreError> {
        let client = self.client().await?;
        namespace_exists(&client, ns).await?;
        let row = client
            .query_opt(
                "SELECT version, schema::text, token, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') \
                 FROM configd_ns_schemas WHERE namespace = $1 ORDER BY version DESC LIMIT 1",
                &[&ns],
            )
            .await?;
        Ok(match row {
            None => NsSchema {
                namespace: ns.to_string(),
                version: 0,
                schema: None,
                token: None,
                at: None,
            },
            Some(r) => NsSchema {
                namespace: ns.to_string(),
                version: super::u(r.get(0)),
                schema: r
                    .get::<_, Option<&str>>(1)
                    .and_then(|s| serde_json::from_str(s).ok()),
                token: r.get(2),
                at: r.get(3),
            },
        })
    }

    /// Sets a new schema version of `ns`, if the namespace is still at
    /// `at_version` (the items were checked against it) and the schema at
    /// `expected` (a caller's `expected_version`, when given).
    pub async fn set_schema(
        &self,
        ns: &str,
        schema: Option<&serde_json::Value>,
        token: &str,
        at_version: u64,
        expected: Option<u64>,
    ) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if Store::versions(&tx, ns, Lock::ForUpdate).await?.0 != at_version {
            return Err(StoreError::Stale);
        }
        let current = latest(&tx, ns).await?;
        if let Some(expected) = expected {
            if expected != current {
                return Err(StoreError::Conflict { expected, current });
            }
        }
        let text = schema.map(|s| s.to_string());
        tx.execute(
            "INSERT INTO configd_ns_schemas(namespace, version, schema, token) VALUES ($1, $2, $3::text::jsonb, $4)",
            &[&ns, &((current + 1) as i64), &text, &token],
        )
        .await?;
        tx.commit().await?;
        Ok(current + 1)
    }
}
