//! Gray release endpoints: `GET|POST /v1/admin/namespaces/{ns}/gray`
//! (the one in progress; start one for a selector), `POST .../gray/promote`
//! (its changes become a main version) and `POST .../gray/abort` (dropped).
//! Start, promote and abort are each a version in the history (kinds
//! `gray_start`, `gray_promote`, `gray_abort`), checked against the schema.

use super::auth::{Admin, Caller, JsonBody, Reader};
use super::publish::{apply, parse_changes, ChangeIn, Signed, What};
use super::{ApiError, AppState};
use crate::gray::Selector;
use crate::store::{Change, Op, StoreError};
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

/// `POST /v1/admin/namespaces/{ns}/gray`: starts a gray release.
pub async fn start(
    State(st): State<Arc<AppState>>,
    Admin(caller): Admin,
    JsonBody(req): JsonBody<StartIn>,
) -> Result<Response, ApiError> {
    let by = Signed::new(&caller, req.author, req.comment)?;
    req.selector
        .check()
        .map_err(|(field, m)| ApiError::bad(field, m))?;
    let changes = parse_changes(&st, req.changes, "changes")?;
    let what = What::GrayStart(&req.selector, &changes);
    let v = apply(&st, by, req.expected_version, what).await?;
    Ok(Json(json!({"namespace": caller.ns, "version": v})).into_response())
}

/// `POST /v1/admin/namespaces/{ns}/gray/promote` (`PROMOTE`: the gray
/// changes become the main version) and `POST .../gray/abort` (the gray
/// release is dropped; its clients go back to the main items).
pub async fn end<const PROMOTE: bool>(
    State(st): State<Arc<AppState>>,
    Admin(caller): Admin,
    JsonBody(req): JsonBody<EndIn>,
) -> Result<Response, ApiError> {
    let state = st.ns_state(&caller.ns).await?;
    let by = Signed::new(&caller, req.author, req.comment)?;
    let Some(gray) = state.gray.clone() else {
        return Err(ApiError::store(StoreError::NoGray, &caller.ns));
    };
    // Promote: only what differs from the main items now.
    let changes: Vec<Change> = if PROMOTE {
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
    let what = What::GrayEnd {
        promote: PROMOTE,
        version: gray.version,
        changes: &changes,
        gray: &gray.changes,
    };
    let v = apply(&st, by, req.expected_version, what).await?;
    Ok(Json(json!({"namespace": caller.ns, "version": v})).into_response())
}

/// The body of `POST .../gray`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartIn {
    selector: Selector,
    changes: Vec<ChangeIn>,
    expected_version: Option<u64>,
    author: Option<String>,
    comment: Option<String>,
}

/// The body of `POST .../gray/promote` and `.../gray/abort`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndIn {
    expected_version: Option<u64>,
    author: Option<String>,
    comment: Option<String>,
}
