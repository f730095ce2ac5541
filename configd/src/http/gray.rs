//! Gray release endpoints: `GET|POST /v1/admin/namespaces/{ns}/gray`
//! (the one in progress; start one for a selector), `POST .../gray/promote`
//! (its changes become a main version) and `POST .../gray/abort` (dropped).
//! Start, promote and abort are each a version in the history (kinds
//! `gray_start`, `gray_promote`, `gray_abort`), checked against the schema.

use super::admin::change_field;
use super::auth::{Admin, Caller, JsonBody, Reader};
use super::publish::{check_text, checked, parse_changes, ChangeIn, Request};
use super::{ApiError, AppState};
use crate::gray::Selector;
use crate::store::{Change, GrayEffect, Op};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// `GET /v1/admin/namespaces/{ns}/gray`: `{"namespace", "version",
/// "gray": null | {"version", "selector", "changes"}}`.
pub async fn get_gray(
    State(st): State<Arc<AppState>>,
    Reader(Caller { ns, .. }): Reader,
) -> Result<Response, ApiError> {
    let state = st.ns_state(&ns).await?;
    let gray = state.gray.as_ref().map(
        |g| json!({"version": g.version, "selector": g.selector, "changes": g.changes_json()}),
    );
    Ok(Json(json!({"namespace": ns, "version": state.version, "gray": gray})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartIn {
    selector: Selector,
    changes: Vec<ChangeIn>,
    expected_version: Option<u64>,
    author: Option<String>,
    comment: Option<String>,
}

/// `POST /v1/admin/namespaces/{ns}/gray`: starts a gray release.
pub async fn start(
    State(st): State<Arc<AppState>>,
    Admin(Caller { ns, token }): Admin,
    JsonBody(req): JsonBody<StartIn>,
) -> Result<Response, ApiError> {
    check_text(&req.author, "author", 128)?;
    check_text(&req.comment, "comment", 4096)?;
    req.selector
        .check()
        .map_err(|(field, m)| ApiError::bad(field, m))?;
    let gray_changes = parse_changes(&st, req.changes, "changes")?;
    let author = req.author.unwrap_or_else(|| token.clone());
    let field_of = change_field(&gray_changes, "changes");
    let comment = req.comment.unwrap_or_default();
    let v = checked(
        &st,
        Request {
            ns: &ns,
            expected: req.expected_version,
            token: &token,
            author: &author,
            comment: &comment,
            kind: "gray_start",
            changes: Vec::new(),
            gray: GrayEffect::Start(&req.selector, &gray_changes),
            field_of: &field_of,
        },
    )
    .await?;
    Ok(Json(json!({"namespace": ns, "version": v})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndIn {
    expected_version: Option<u64>,
    author: Option<String>,
    comment: Option<String>,
}

async fn end(
    st: &AppState,
    ns: &str,
    token: &str,
    req: EndIn,
    promote: bool,
) -> Result<Response, ApiError> {
    check_text(&req.author, "author", 128)?;
    check_text(&req.comment, "comment", 4096)?;
    let state = st.cache.get(ns).await.map_err(|e| ApiError::store(e, ns))?;
    let Some(gray) = state.gray.clone() else {
        return Err(ApiError::store(crate::store::StoreError::NoGray, ns));
    };
    // Promote: only what differs from the main items now.
    let changes: Vec<Change> = if promote {
        gray.changes
            .iter()
            .filter(|c| match c.op {
                Op::Upsert => {
                    let now = state.items.get(c.key.as_str());
                    let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).ok();
                    now.and_then(|v| parse(v)) != c.value.as_deref().and_then(parse)
                }
                Op::Delete => state.items.contains_key(c.key.as_str()),
            })
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    let (kind, default_comment) = if promote {
        (
            "gray_promote",
            format!("promote the gray release of version {}", gray.version),
        )
    } else {
        (
            "gray_abort",
            format!("abort the gray release of version {}", gray.version),
        )
    };
    let author = req.author.unwrap_or_else(|| token.to_string());
    let comment = req.comment.unwrap_or(default_comment);
    let field_of = change_field(&gray.changes, "gray.changes");
    let v = checked(
        st,
        Request {
            ns,
            expected: req.expected_version,
            token,
            author: &author,
            comment: &comment,
            kind,
            changes,
            gray: GrayEffect::End,
            field_of: &field_of,
        },
    )
    .await?;
    Ok(Json(json!({"namespace": ns, "version": v})).into_response())
}

/// `POST /v1/admin/namespaces/{ns}/gray/promote`: the gray changes become
/// the main version.
pub async fn promote(
    State(st): State<Arc<AppState>>,
    Admin(Caller { ns, token }): Admin,
    JsonBody(req): JsonBody<EndIn>,
) -> Result<Response, ApiError> {
    end(&st, &ns, &token, req, true).await
}

/// `POST /v1/admin/namespaces/{ns}/gray/abort`: drops the gray release;
/// its clients go back to the main items.
pub async fn abort(
    State(st): State<Arc<AppState>>,
    Admin(Caller { ns, token }): Admin,
    JsonBody(req): JsonBody<EndIn>,
) -> Result<Response, ApiError> {
    end(&st, &ns, &token, req, false).await
}
