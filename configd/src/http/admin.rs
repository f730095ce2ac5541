//! Admin endpoints: create/delete namespaces, publish a change set and
//! roll back (admin role); list namespaces, read items, history and the diff
//! between versions (read role too, within the token's namespaces: what the
//! web console's read-only view shows).

use super::auth::{Admin, Caller, JsonBody, Reader};
use super::{authorize, param_u64, query, ApiError, AppState};
use crate::config::Role;
use crate::store::{Change, Op};
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// After a write: serve it from this instance's cache right away.
async fn refresh(st: &AppState, ns: &str) {
    if let Err(e) = st.cache.refresh(ns).await {
        tracing::warn!(namespace = ns, error = %e, "refresh after publish failed");
    }
}

/// `GET /v1/admin/namespaces`: who the token is (name, role) and the
/// namespaces it may see, each with its version, compaction point and the
/// long-polls held on it now.
pub async fn list(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = authorize(&st.cfg, &headers, Role::Read, &[])?;
    let rows = st.cache.track(st.cache.store().list_namespaces().await);
    let rows = rows.map_err(|e| ApiError::store(e, "*"))?;
    let namespaces: Vec<_> = rows
        .into_iter()
        .filter(|r| token.allows(&r.name))
        .map(|r| {
            let clients = st.cache.hubs().watching(&r.name);
            json!({"namespace": r.name, "version": r.version,
                   "compacted_to": r.compacted_to, "clients": clients})
        })
        .collect();
    let role = match token.role {
        Role::Admin => "admin",
        Role::Read => "read",
    };
    Ok(Json(json!({
        "token": {"name": token.name, "role": role},
        "namespaces": namespaces,
    }))
    .into_response())
}

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
pub struct ChangeIn {
    op: Op,
    key: String,
    value: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishIn {
    expected_version: Option<u64>,
    author: Option<String>,
    comment: Option<String>,
    changes: Vec<ChangeIn>,
}

/// Validates a key.
fn check_key(key: &str, field: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > 256 || key.chars().any(|c| c.is_control()) {
        return Err(ApiError::bad(
            field,
            format!("invalid key {key:?}: 1-256 bytes, no control characters"),
        ));
    }
    Ok(())
}

fn check_text(v: &Option<String>, field: &str, max: usize) -> Result<(), ApiError> {
    if v.as_ref().is_some_and(|s| s.len() > max) {
        return Err(ApiError::bad(
            field,
            format!("{field} is longer than {max} bytes"),
        ));
    }
    Ok(())
}

async fn do_publish(
    st: &AppState,
    ns: &str,
    expected: Option<u64>,
    token: &str,
    author: &str,
    comment: &str,
    changes: Vec<Change>,
) -> Result<u64, ApiError> {
    let r = st.cache.track(
        st.cache
            .store()
            .publish(ns, expected, token, author, comment, &changes)
            .await,
    );
    let v = r.map_err(|e| ApiError::store(e, ns))?;
    st.metrics.publishes.inc();
    tracing::info!(
        namespace = ns,
        version = v,
        token,
        author,
        changes = changes.len(),
        "published"
    );
    refresh(st, ns).await;
    Ok(v)
}

/// `POST /v1/admin/namespaces/{ns}/publish`.
pub async fn publish(
    State(st): State<Arc<AppState>>,
    Admin(Caller { ns, token: who }): Admin,
    JsonBody(req): JsonBody<PublishIn>,
) -> Result<Response, ApiError> {
    check_text(&req.author, "author", 128)?;
    check_text(&req.comment, "comment", 4096)?;
    if req.changes.is_empty() {
        return Err(ApiError::bad(
            "changes",
            "changes is empty: nothing to publish",
        ));
    }
    let mut seen = HashSet::new();
    let mut changes = Vec::with_capacity(req.changes.len());
    for (i, c) in req.changes.into_iter().enumerate() {
        let field = format!("changes[{i}].key");
        check_key(&c.key, &field)?;
        if !seen.insert(c.key.clone()) {
            return Err(ApiError::bad(
                &field,
                format!("key {:?} appears twice in one publish", c.key),
            ));
        }
        let value = match (c.op, c.value) {
            (Op::Upsert, None) => {
                return Err(ApiError::bad(
                    &format!("changes[{i}].value"),
                    "an upsert needs a value",
                ))
            }
            (Op::Delete, Some(_)) => {
                return Err(ApiError::bad(
                    &format!("changes[{i}].value"),
                    "a delete takes no value",
                ))
            }
            (Op::Upsert, Some(v)) => {
                let text = v.to_string();
                if text.len() > st.cfg.max_value_bytes {
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "value_too_large",
                        Some(format!("changes[{i}].value")),
                        format!(
                            "value of {:?} is {} bytes; the limit is {}",
                            c.key,
                            text.len(),
                            st.cfg.max_value_bytes
                        ),
                    ));
                }
                Some(text)
            }
            (Op::Delete, None) => None,
        };
        changes.push(Change {
            op: c.op,
            key: c.key,
            value,
        });
    }
    let author = req.author.unwrap_or_else(|| who.clone());
    let v = do_publish(
        &st,
        &ns,
        req.expected_version,
        &who,
        &author,
        req.comment.as_deref().unwrap_or(""),
        changes,
    )
    .await?;
    Ok(Json(json!({"namespace": ns, "version": v})).into_response())
}

/// `GET /v1/admin/namespaces/{ns}/items`: the current items (snapshot shape).
pub async fn items(
    State(st): State<Arc<AppState>>,
    Reader(Caller { ns, .. }): Reader,
) -> Result<Response, ApiError> {
    let state = st
        .cache
        .get(&ns)
        .await
        .map_err(|e| ApiError::store(e, &ns))?;
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
    let v = do_publish(
        &st,
        &ns,
        Some(row.version),
        &who,
        &author,
        &comment,
        changes,
    )
    .await?;
    Ok(
        Json(json!({"namespace": ns, "version": v, "rolled_back_to": req.to_version}))
            .into_response(),
    )
}
