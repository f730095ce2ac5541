//! Admin endpoints: create/delete namespaces, publish a change set and
//! roll back (admin role); read items, history and the diff between
//! versions (read role too, within the token's namespaces: what the web
//! console's read-only view shows). The namespace list is in `rollout.rs`.

use super::auth::{Admin, Caller, JsonBody, Reader};
use super::publish::{apply, parse_changes, ChangeIn, Signed, What};
use super::{param_u64, query, ApiError, AppState};
use crate::store::{Change, Op};
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

/// `PUT /v1/admin/namespaces/{ns}`: 201, or 409 when it exists.
pub async fn create(
    State(st): State<Arc<AppState>>,
    Admin(Caller { ns, token: who }): Admin,
) -> Result<Response, ApiError> {
    st.stored(&ns, st.store().create_namespace(&ns).await)?;
    tracing::info!(namespace = %ns, by = %who, "namespace created");
    Ok((
        StatusCode::CREATED,
        Json(json!({"namespace": ns, "version": 0})),
    )
        .into_response())
}

/// `DELETE /v1/admin/namespaces/{ns}`.
pub async fn delete(
    State(st): State<Arc<AppState>>,
    Admin(Caller { ns, token: who }): Admin,
) -> Result<Response, ApiError> {
    st.stored(&ns, st.store().delete_namespace(&ns).await)?;
    st.cache.evict(&ns);
    tracing::info!(namespace = %ns, by = %who, "namespace deleted");
    Ok(Json(json!({"namespace": ns, "deleted": true})).into_response())
}

/// `POST /v1/admin/namespaces/{ns}/publish`.
pub async fn publish(
    State(st): State<Arc<AppState>>,
    Admin(caller): Admin,
    JsonBody(req): JsonBody<PublishIn>,
) -> Result<Response, ApiError> {
    let changes = parse_changes(&st, req.changes, "changes")?;
    let by = Signed::new(&caller, req.author, req.comment)?;
    let v = apply(&st, by, req.expected_version, What::Publish(&changes)).await?;
    Ok(Json(json!({"namespace": caller.ns, "version": v})).into_response())
}

/// `GET /v1/admin/namespaces/{ns}/items`: the current items (snapshot shape).
pub async fn items(
    State(st): State<Arc<AppState>>,
    Reader(Caller { ns, .. }): Reader,
) -> Result<Response, ApiError> {
    let state = st.ns_state(&ns).await?;
    let bytes = state.snapshot(false, &st.metrics).await;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(bytes),
    )
        .into_response())
}

/// `GET /v1/admin/namespaces/{ns}/history?limit=N`.
pub async fn history(
    State(st): State<Arc<AppState>>,
    Reader(Caller { ns, .. }): Reader,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q, &["limit"])?;
    let limit = param_u64(&q, "limit", Some(100))?;
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad("limit", "limit must be 1..=1000"));
    }
    let h = st.stored(&ns, st.store().history(&ns, limit as i64).await)?;
    Ok(Json(json!({"namespace": ns, "history": h})).into_response())
}

fn parse_json(v: &Option<String>) -> serde_json::Value {
    v.as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// `GET /v1/admin/namespaces/{ns}/diff?from=a&to=b`.
pub async fn diff(
    State(st): State<Arc<AppState>>,
    Reader(Caller { ns, .. }): Reader,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q, &["from", "to"])?;
    let from = param_u64(&q, "from", None)?;
    let to = param_u64(&q, "to", None)?;
    let r = st.cache.track(st.store().diff(&ns, from, to).await);
    let (_, d) = r.map_err(|e| {
        let mut e = ApiError::store(e, &ns);
        if e.field.as_deref() == Some("version") {
            e.field = Some("from/to".to_string());
        }
        e
    })?;
    let changes: Vec<_> = d
        .iter()
        .filter(|(_, (a, b))| a != b)
        .map(|(k, (a, b))| {
            let kind = match (a, b) {
                (None, Some(_)) => "added",
                (Some(_), None) => "removed",
                _ => "changed",
            };
            json!({"key": k, "kind": kind, "before": parse_json(a), "after": parse_json(b)})
        })
        .collect();
    Ok(Json(json!({"namespace": ns, "from": from, "to": to, "changes": changes})).into_response())
}

/// `POST /v1/admin/namespaces/{ns}/rollback` `{"to_version":n}`: publishes
/// the diff from the current version back to `n` as a new version.
pub async fn rollback(
    State(st): State<Arc<AppState>>,
    Admin(caller): Admin,
    JsonBody(req): JsonBody<RollbackIn>,
) -> Result<Response, ApiError> {
    let ns = &caller.ns;
    let rows = st.stored(ns, st.store().list_namespaces().await)?;
    let by = Signed::new(&caller, req.author, req.comment)?;
    let Some(row) = rows.into_iter().find(|r| &r.name == ns) else {
        return Err(ApiError::store(
            crate::store::StoreError::NotFound(ns.clone()),
            ns,
        ));
    };
    let to = req.to_version;
    if to > row.version || to < row.compacted_to {
        return Err(ApiError::bad(
            "to_version",
            format!(
                "to_version {to} is outside the retained range {}..={}",
                row.compacted_to, row.version
            ),
        ));
    }
    let (_, d) = st.stored(ns, st.store().diff(ns, row.version, to).await)?;
    let changes: Vec<Change> = d
        .into_iter()
        .filter(|(_, (now, then))| now != then)
        .map(|(key, (_, then))| match then {
            Some(v) => Change {
                op: Op::Upsert,
                key,
                value: Some(v),
            },
            None => Change {
                op: Op::Delete,
                key,
                value: None,
            },
        })
        .collect();
    if changes.is_empty() {
        return Ok(
            Json(json!({"namespace": ns, "version": row.version, "unchanged": true}))
                .into_response(),
        );
    }
    let what = What::Rollback {
        changes: &changes,
        to,
    };
    let v = apply(&st, by, Some(row.version), what).await?;
    Ok(Json(json!({"namespace": ns, "version": v, "rolled_back_to": to})).into_response())
}

/// The body of `POST .../publish`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishIn {
    expected_version: Option<u64>,
    author: Option<String>,
    comment: Option<String>,
    changes: Vec<ChangeIn>,
}

/// The body of `POST .../rollback`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackIn {
    to_version: u64,
    author: Option<String>,
    comment: Option<String>,
}
