//! Admin endpoints: create/delete namespaces, publish a change set and
//! roll back (admin role); read items, history and the diff between
//! versions (read role too, within the token's namespaces: what the web
//! console's read-only view shows). The namespace list is in `rollout.rs`.

use super::auth::{Admin, Caller, JsonBody, Reader};
use super::publish::{check_text, checked, parse_changes, ChangeIn, Request};
use super::{param_u64, query, ApiError, AppState};
use crate::store::{Change, GrayEffect, Op};
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
    let r = st.cache.track(st.cache.store().create_namespace(&ns).await);
    r.map_err(|e| ApiError::store(e, &ns))?;
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
    let r = st.cache.track(st.cache.store().delete_namespace(&ns).await);
    r.map_err(|e| ApiError::store(e, &ns))?;
    st.cache.evict(&ns);
    tracing::info!(namespace = %ns, by = %who, "namespace deleted");
    Ok(Json(json!({"namespace": ns, "deleted": true})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishIn {
    expected_version: Option<u64>,
    author: Option<String>,
    comment: Option<String>,
    changes: Vec<ChangeIn>,
}

/// Names the change that holds `key` (`changes[i].value`), else `items.<key>`.
pub fn change_field<'a>(changes: &'a [Change], prefix: &'a str) -> impl Fn(&str) -> String + 'a {
    move |key: &str| match changes.iter().position(|c| c.key == key) {
        Some(i) => format!("{prefix}[{i}].value"),
        None => format!("items.{key}"),
    }
}

/// `POST /v1/admin/namespaces/{ns}/publish`.
pub async fn publish(
    State(st): State<Arc<AppState>>,
    Admin(Caller { ns, token: who }): Admin,
    JsonBody(req): JsonBody<PublishIn>,
) -> Result<Response, ApiError> {
    check_text(&req.author, "author", 128)?;
    check_text(&req.comment, "comment", 4096)?;
    let changes = parse_changes(&st, req.changes, "changes")?;
    let author = req.author.unwrap_or_else(|| who.clone());
    let fields = changes.clone();
    let field_of = change_field(&fields, "changes");
    let v = checked(
        &st,
        Request {
            ns: &ns,
            expected: req.expected_version,
            token: &who,
            author: &author,
            comment: req.comment.as_deref().unwrap_or(""),
            kind: "publish",
            changes,
            gray: GrayEffect::Keep,
            field_of: &field_of,
        },
    )
    .await?;
    Ok(Json(json!({"namespace": ns, "version": v})).into_response())
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
    let r = st
        .cache
        .track(st.cache.store().history(&ns, limit as i64).await);
    let h = r.map_err(|e| ApiError::store(e, &ns))?;
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
    let r = st.cache.track(st.cache.store().diff(&ns, from, to).await);
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackIn {
    to_version: u64,
    author: Option<String>,
    comment: Option<String>,
}

/// `POST /v1/admin/namespaces/{ns}/rollback` `{"to_version":n}`: publishes
/// the diff from the current version back to `n` as a new version.
pub async fn rollback(
    State(st): State<Arc<AppState>>,
    Admin(Caller { ns, token: who }): Admin,
    JsonBody(req): JsonBody<RollbackIn>,
) -> Result<Response, ApiError> {
    check_text(&req.author, "author", 128)?;
    check_text(&req.comment, "comment", 4096)?;
    let rows = st.cache.track(st.cache.store().list_namespaces().await);
    let rows = rows.map_err(|e| ApiError::store(e, &ns))?;
    let Some(row) = rows.into_iter().find(|r| r.name == ns) else {
        return Err(ApiError::store(
            crate::store::StoreError::NotFound(ns.clone()),
            &ns,
        ));
    };
    if req.to_version > row.version || req.to_version < row.compacted_to {
        return Err(ApiError::bad(
            "to_version",
            format!(
                "to_version {} is outside the retained range {}..={}",
                req.to_version, row.compacted_to, row.version
            ),
        ));
    }
    let r = st.cache.track(
        st.cache
            .store()
            .diff(&ns, row.version, req.to_version)
            .await,
    );
    let (_, d) = r.map_err(|e| ApiError::store(e, &ns))?;
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
    let author = req.author.unwrap_or_else(|| who.clone());
    let comment = req
        .comment
        .unwrap_or_else(|| format!("rollback to version {}", req.to_version));
    let to_field = |_: &str| "to_version".to_string();
    let v = checked(
        &st,
        Request {
            ns: &ns,
            expected: Some(row.version),
            token: &who,
            author: &author,
            comment: &comment,
            kind: "rollback",
            changes,
            gray: GrayEffect::Keep,
            field_of: &to_field,
        },
    )
    .await?;
    Ok(
        Json(json!({"namespace": ns, "version": v, "rolled_back_to": req.to_version}))
            .into_response(),
    )
}
