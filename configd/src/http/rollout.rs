//! The rollout view: `GET /v1/admin/namespaces` (every namespace the token
//! may read, with its version, gray release and client counts) and `GET
//! /v1/admin/namespaces/{ns}/rollout` (clients per version, each client
//! with its status: `current`, `behind`, `rejected` or `gone`).

use super::auth::{AnyReader, Caller, Reader};
use super::{authorize, stale_after_s, ApiError, AppState};
use crate::config::Role;
use crate::rollout::{is_gray, status, FORGET_AFTER_S};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

/// `GET /v1/admin/namespaces/{ns}/rollout`.
pub async fn rollout(
    State(st): State<Arc<AppState>>,
    Reader(Caller { ns, .. }): Reader,
) -> Result<Response, ApiError> {
    let state = st.ns_state(&ns).await?;
    // This instance's newest reports first.
    let _ = st.rollout.flush(st.store()).await;
    let rows = st.stored(&ns, st.store().clients(Some(&ns), FORGET_AFTER_S).await)?;
    let stale_after = stale_after_s(&st.cfg);
    let selector = state.gray.as_ref().map(|g| &g.selector);
    let mut versions: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut stale = 0;
    let clients: Vec<_> = rows
        .iter()
        .map(|r| {
            let s = status(r, state.version, stale_after);
            let gray = is_gray(selector, r);
            if s != "gone" {
                let e = versions.entry(r.version).or_default();
                e.0 += 1;
                e.1 += u64::from(gray);
            }
            if matches!(s, "behind" | "gone") {
                stale += 1;
            }
            json!({
                "client_id": r.client_id, "labels": r.labels, "version": r.version,
                "in_force": r.in_force, "rejected": r.rejected, "last_seen": r.last_seen,
                "gray": gray, "status": s,
            })
        })
        .collect();
    let versions: Vec<_> = versions
        .iter()
        .rev()
        .map(|(v, (n, g))| json!({"version": v, "clients": n, "gray": g}))
        .collect();
    let gray = state
        .gray
        .as_ref()
        .map(|g| json!({"version": g.version, "selector": g.selector}));
    Ok(Json(json!({
        "namespace": ns, "version": state.version, "gray": gray,
        "versions": versions, "stale": stale, "clients": clients,
    }))
    .into_response())
}

/// `GET /v1/admin/namespaces`: the namespaces the token may read.
pub async fn list(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    AnyReader(_): AnyReader,
) -> Result<Response, ApiError> {
    let token = authorize(&st.cfg, &headers, Role::Read, &[])?;
    let rows = st.stored("", st.store().list_namespaces().await)?;
    let _ = st.rollout.flush(st.store()).await;
    let clients = st.stored("", st.store().clients(None, FORGET_AFTER_S).await)?;
    let stale_after = stale_after_s(&st.cfg);
    let mut out = Vec::new();
    for r in rows.iter().filter(|r| token.allows(&r.name)) {
        let gray = st
            .cache
            .peek(&r.name)
            .and_then(|s| s.gray.as_ref().map(|g| g.version));
        let mine: Vec<_> = clients.iter().filter(|c| c.namespace == r.name).collect();
        let live = mine.iter().filter(|c| c.age_s <= stale_after).count();
        let stale = mine
            .iter()
            .filter(|c| matches!(status(c, r.version, stale_after), "behind" | "gone"))
            .count();
        out.push(json!({
            "namespace": r.name, "version": r.version, "compacted_to": r.compacted_to,
            "gray": gray, "clients": live, "stale": stale,
        }));
    }
    let role = match token.role {
        Role::Admin => "admin",
        Role::Read => "read",
    };
    Ok(Json(json!({
        "token": {"name": token.name, "role": role},
        "namespaces": out,
    }))
    .into_response())
}
