//! `PUT /v1/admin/namespaces/{ns}/items`: declarative publish (GitOps, the
//! CLI's `publish`): the body is the whole namespace; configd computes the
//! change set against the current version (upserts for new and changed
//! keys, deletes for missing ones), shows it (`dry_run`) or publishes it as
//! one version (kind `replace`), checked against the schema. The change
//! set is computed against version N and published only at N.

use super::auth::{Admin, JsonBody};
use super::publish::{apply, check_key, value_text, Signed, What};
use super::{ApiError, AppState};
use crate::store::{Change, Op, StoreError};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaceIn {
    items: BTreeMap<String, Value>,
    expected_version: Option<u64>,
    author: Option<String>,
    comment: Option<String>,
    /// Only compute and show the change set.
    #[serde(default)]
    dry_run: bool,
}

/// `PUT /v1/admin/namespaces/{ns}/items`.
pub async fn replace(
    State(st): State<Arc<AppState>>,
    Admin(caller): Admin,
    JsonBody(req): JsonBody<ReplaceIn>,
) -> Result<Response, ApiError> {
    let mut wanted = BTreeMap::new();
    for (k, v) in &req.items {
        let field = format!("items.{k}");
        check_key(k, &field)?;
        wanted.insert(k.as_str(), value_text(&st, k, v, field)?);
    }
    let by = Signed::new(&caller, req.author, req.comment)?;
    let ns = &caller.ns;
    let state = st.ns_state(ns).await?;
    if let Some(expected) = req.expected_version.filter(|e| *e != state.version) {
        return Err(ApiError::store(
            StoreError::Conflict {
                expected,
                current: state.version,
            },
            ns,
        ));
    }
    let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap_or(Value::Null);
    let mut changes = Vec::new();
    let mut shown = Vec::new();
    for (k, now) in state.items.iter() {
        if !wanted.contains_key(&**k) {
            shown
                .push(json!({"key": &**k, "kind": "removed", "before": parse(now), "after": null}));
            changes.push(Change {
                op: Op::Delete,
                key: k.to_string(),
                value: None,
            });
        }
    }
    for (k, v) in &wanted {
        let before = state.items.get(*k).map(|s| parse(s));
        let after = parse(v);
        if before.as_ref() == Some(&after) {
            continue;
        }
        let kind = if before.is_some() { "changed" } else { "added" };
        shown.push(json!({"key": k, "kind": kind, "before": before, "after": after}));
        changes.push(Change {
            op: Op::Upsert,
            key: k.to_string(),
            value: Some(v.clone()),
        });
    }
    shown.sort_by(|a, b| a["key"].as_str().cmp(&b["key"].as_str()));
    if req.dry_run || changes.is_empty() {
        return Ok(Json(json!({
            "namespace": ns, "version": state.version, "published": false, "changes": shown,
        }))
        .into_response());
    }
    let v = apply(&st, by, Some(state.version), What::Replace(&changes)).await?;
    Ok(
        Json(json!({"namespace": ns, "version": v, "published": true, "changes": shown}))
            .into_response(),
    )
}
