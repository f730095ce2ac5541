//! Client reports (`configd_clients`): per namespace and client id, the
//! labels, the version the client applied, the version its worker has in
//! force, what it rejected and why, and when it was last seen. Written in
//! batches by [`crate::rollout`], shared by every configd instance.

use super::{Store, StoreError};
use std::collections::BTreeMap;

/// One client's report for one namespace.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClientRow {
    pub namespace: String,
    pub client_id: String,
    pub labels: BTreeMap<String, String>,
    /// The version the client published for its worker.
    pub version: u64,
    /// The version the worker reports in force (None: not known).
    pub in_force: Option<u64>,
    /// `{"version": n, "reason": "..."}` of the last rejected version.
    pub rejected: Option<serde_json::Value>,
    /// The name of the token it watches with.
    pub token: String,
    /// RFC 3339, UTC.
    pub last_seen: String,
    /// Seconds since `last_seen` (by the database's clock).
    #[serde(skip)]
    pub age_s: f64,
}

impl Store {
    /// Upserts a batch of reports.
    pub async fn save_clients(&self, rows: &[ClientRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        let col = |f: fn(&ClientRow) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
        let ns = col(|r| Some(r.namespace.clone()));
        let id = col(|r| Some(r.client_id.clone()));
        let labels = col(|r| serde_json::to_string(&r.labels).ok());
        let version: Vec<i64> = rows.iter().map(|r| r.version as i64).collect();
        let in_force: Vec<Option<i64>> =
            rows.iter().map(|r| r.in_force.map(|v| v as i64)).collect();
        let rejected = col(|r| r.rejected.as_ref().map(|v| v.to_string()));
        let token = col(|r| Some(r.token.clone()));
        let seen = col(|r| Some(r.last_seen.clone()));
        client
            .execute(
                "INSERT INTO configd_clients(namespace, client_id, labels, version, in_force, rejected, token, last_seen) \
                 SELECT n, i, l::jsonb, v, f, r::jsonb, t, s::timestamptz \
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::text[], $7::text[], $8::text[]) \
                   AS x(n, i, l, v, f, r, t, s) \
                 ON CONFLICT (namespace, client_id) DO UPDATE SET labels = excluded.labels, version = excluded.version, \
                   in_force = excluded.in_force, rejected = excluded.rejected, token = excluded.token, \
                   last_seen = greatest(configd_clients.last_seen, excluded.last_seen)",
                &[&ns, &id, &labels, &version, &in_force, &rejected, &token, &seen],
            )
            .await?;
        Ok(())
    }

    /// The reports of `ns` (all when None) seen within `keep_s`, by client id.
    pub async fn clients(
        &self,
        ns: Option<&str>,
        keep_s: f64,
    ) -> Result<Vec<ClientRow>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT namespace, client_id, labels::text, version, in_force, rejected::text, token, \
                   to_char(last_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
                   extract(epoch FROM now() - last_seen)::float8 \
                 FROM configd_clients WHERE ($1::text IS NULL OR namespace = $1) \
                   AND last_seen > now() - make_interval(secs => $2) \
                 ORDER BY namespace, client_id LIMIT 100000",
                &[&ns, &keep_s],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ClientRow {
                namespace: r.get(0),
                client_id: r.get(1),
                labels: serde_json::from_str(r.get(2)).unwrap_or_default(),
                version: super::u(r.get(3)),
                in_force: r.get::<_, Option<i64>>(4).map(super::u),
                rejected: r
                    .get::<_, Option<&str>>(5)
                    .and_then(|s| serde_json::from_str(s).ok()),
                token: r.get(6),
                last_seen: r.get(7),
                age_s: r.get(8),
            })
            .collect())
    }

    /// Forgets reports older than `keep_s`; returns how many.
    pub async fn forget_clients(&self, keep_s: f64) -> Result<u64, StoreError> {
        let client = self.client().await?;
        Ok(client
            .execute(
                "DELETE FROM configd_clients WHERE last_seen < now() - make_interval(secs => $1)",
                &[&keep_s],
            )
            .await?)
    }
}
