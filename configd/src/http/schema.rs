//! `GET|PUT /v1/admin/namespaces/{ns}/schema`: the namespace's JSON Schema,
//! versioned. A new schema must compile and the current items (and the
//! gray view, during a gray release) must satisfy it, else nothing changes.

use super::auth::{Admin, Caller, JsonBody, Reader};
use super::publish::violation_error;
use super::{ApiError, AppState};
use crate::store::StoreError;
use crate::validate::{object_after, Schema};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use std::sync::Arc;

/// `GET /v1/admin/namespaces/{ns}/schema`: `{namespace, version, schema,
/// token, at}` (version 0 and `schema: null` when none was ever set).
pub async fn get_schema(
    State(st): State<Arc<AppState>>,
    Reader(Caller { ns, .. }): Reader,
) -> Result<Response, ApiError> {
    let s = st.stored(&ns, st.store().schema(&ns).await)?;
    Ok(Json(s).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaIn {
    /// The new schema (`null`: remove it).
    schema: serde_json::Value,
    /// When set, a different current schema version is a 409.
    expected_version: Option<u64>,
}

/// `PUT /v1/admin/namespaces/{ns}/schema` `{"schema": {...}}`: the new
/// schema version, in the shape of the GET.
pub async fn put_schema(
    State(st): State<Arc<AppState>>,
    Admin(Caller { ns, token }): Admin,
    JsonBody(req): JsonBody<SchemaIn>,
) -> Result<Response, ApiError> {
    let schema = (!req.schema.is_null()).then_some(&req.schema);
    let compiled = schema
        .map(Schema::compile)
        .transpose()
        .map_err(|e| ApiError::bad("schema", e))?;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let state = st.ns_state(&ns).await?;
        if let Some(c) = &compiled {
            let mut violations = c.check(&object_after(&state.items, &[]));
            if let (true, Some(g)) = (violations.is_empty(), &state.gray) {
                violations = c.check(&object_after(&state.items, &g.changes));
            }
            if !violations.is_empty() {
                let field_of = |k: &str| format!("items.{k}");
                let what = "schema refused: the current items break it";
                return Err(violation_error(&violations, what, &field_of));
            }
        }
        let r = st.cache.track(
            st.cache
                .store()
                .set_schema(&ns, schema, &token, state.version, req.expected_version)
                .await,
        );
        match r {
            Err(StoreError::Stale) if attempts < 5 => {
                let _ = st.cache.refresh(&ns).await;
            }
            Err(e) => return Err(ApiError::store(e, &ns)),
            Ok(v) => {
                tracing::info!(namespace = %ns, schema_version = v, by = %token, "schema set");
                let s = st.stored(&ns, st.store().schema(&ns).await)?;
                return Ok(Json(s).into_response());
            }
        }
    }
}
