//! The one publish path behind publish, rollback, replace and the gray
//! release endpoints: change sets parsed and bounded, the result checked
//! against the namespace's schema (main items, and the gray view while a
//! gray release is in progress), then one store transaction that refuses
//! it if the namespace or its schema moved on in between (checked again).

use super::{ApiError, AppState};
use crate::gray::Client;
use crate::store::{Change, GrayEffect, Op, Publish, StoreError};
use crate::validate::{object_after, Schema, Violation};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashSet;

/// One change as a client sends it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeIn {
    pub op: Op,
    pub key: String,
    pub value: Option<serde_json::Value>,
}

/// Validates a key.
pub fn check_key(key: &str, field: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > 256 || key.chars().any(|c| c.is_control()) {
        return Err(ApiError::bad(
            field,
            format!("invalid key {key:?}: 1-256 bytes, no control characters"),
        ));
    }
    Ok(())
}

/// A bounded text field.
pub fn check_text(v: &Option<String>, field: &str, max: usize) -> Result<(), ApiError> {
    if v.as_ref().is_some_and(|s| s.len() > max) {
        return Err(ApiError::bad(
            field,
            format!("{field} is longer than {max} bytes"),
        ));
    }
    Ok(())
}

/// A value as JSON text, at most `max_value_bytes` (413 naming `field`).
pub fn value_text(
    st: &AppState,
    key: &str,
    v: &serde_json::Value,
    field: String,
) -> Result<String, ApiError> {
    let text = v.to_string();
    if text.len() > st.cfg.max_value_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            Some(field),
            format!(
                "value of {key:?} is {} bytes; the limit is {}",
                text.len(),
                st.cfg.max_value_bytes
            ),
        ));
    }
    Ok(text)
}

/// Checks a non-empty change set (keys, no key twice, values) under
/// `field` (`changes`).
pub fn parse_changes(
    st: &AppState,
    input: Vec<ChangeIn>,
    field: &str,
) -> Result<Vec<Change>, ApiError> {
    if input.is_empty() {
        return Err(ApiError::bad(
            field,
            format!("{field} is empty: nothing to publish"),
        ));
    }
    let mut seen = HashSet::new();
    let mut changes = Vec::with_capacity(input.len());
    for (i, c) in input.into_iter().enumerate() {
        let key_field = format!("{field}[{i}].key");
        let value_field = format!("{field}[{i}].value");
        check_key(&c.key, &key_field)?;
        if !seen.insert(c.key.clone()) {
            return Err(ApiError::bad(
                &key_field,
                format!("key {:?} appears twice in one publish", c.key),
            ));
        }
        let value = match (c.op, c.value) {
            (Op::Upsert, None) => {
                return Err(ApiError::bad(&value_field, "an upsert needs a value"))
            }
            (Op::Delete, Some(_)) => {
                return Err(ApiError::bad(&value_field, "a delete takes no value"))
            }
            (Op::Upsert, Some(v)) => Some(value_text(st, &c.key, &v, value_field)?),
            (Op::Delete, None) => None,
        };
        changes.push(Change {
            op: c.op,
            key: c.key,
            value,
        });
    }
    Ok(changes)
}

/// A 400 `schema_violation` for `violations`; `field_of` names the input
/// that holds each key (`changes[2].value`, `items.lookback`).
pub fn violation_error(
    violations: &[Violation],
    what: &str,
    field_of: &dyn Fn(&str) -> String,
) -> ApiError {
    let first = &violations[0];
    let describe = |v: &Violation| match &v.key {
        Some(k) => format!("key {k:?}: {} (rule {:?})", v.message, v.rule),
        None => format!("{} (rule {:?})", v.message, v.rule),
    };
    let mut message = format!("{what}: {}", describe(first));
    if violations.len() > 1 {
        let rest: Vec<String> = violations[1..].iter().map(describe).collect();
        message.push_str(&format!("; also {}", rest.join("; ")));
    }
    let mut e = ApiError::new(
        StatusCode::BAD_REQUEST,
        "schema_violation",
        Some(
            first
                .key
                .as_deref()
                .map_or_else(|| "items".to_string(), field_of),
        ),
        message,
    );
    e.violations = Some(json!(violations));
    e
}

/// One publish to check and write.
pub struct Request<'a> {
    pub ns: &'a str,
    pub expected: Option<u64>,
    pub token: &'a str,
    pub author: &'a str,
    pub comment: &'a str,
    pub kind: &'a str,
    /// Main changes (may be empty for gray start and abort).
    pub changes: Vec<Change>,
    pub gray: GrayEffect<'a>,
    /// Names the input that holds a key (for violations).
    pub field_of: &'a (dyn Fn(&str) -> String + Sync),
}

/// Checks `req` against the schema and publishes it; the new version.
pub async fn checked(st: &AppState, req: Request<'_>) -> Result<u64, ApiError> {
    let ns = req.ns;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let schema = st.cache.track(st.cache.store().schema(ns).await);
        let schema = schema.map_err(|e| ApiError::store(e, ns))?;
        let mut checked_at = None;
        if let Some(doc) = &schema.schema {
            let compiled = Schema::compile(doc).map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    Some("schema".to_string()),
                    format!(
                        "the stored schema version {} does not compile: {e}",
                        schema.version
                    ),
                )
            })?;
            let state = st.cache.get(ns).await.map_err(|e| ApiError::store(e, ns))?;
            let main = object_after(&state.items, &req.changes);
            let mut violations = compiled.check(&main);
            // What the gray clients will see: over the new main, unless
            // this ends the gray release.
            let gray_changes = match (req.gray, &state.gray) {
                (GrayEffect::Start(_, changes), _) => Some(changes.to_vec()),
                (GrayEffect::Keep, Some(g)) => Some(g.changes.clone()),
                _ => None,
            };
            if let (true, Some(gc)) = (violations.is_empty(), gray_changes) {
                let mut main_items = crate::cache::Items::new();
                for (k, v) in main.as_object().into_iter().flatten() {
                    main_items.insert(k.as_str().into(), v.to_string().into());
                }
                violations = compiled.check(&object_after(&main_items, &gc));
            }
            if !violations.is_empty() {
                let what = format!("{} refused by schema version {}", req.kind, schema.version);
                return Err(violation_error(&violations, &what, req.field_of));
            }
            checked_at = Some(state.version);
        }
        let p = Publish {
            ns,
            expected: req.expected,
            checked_at,
            schema_version: schema.version,
            token: req.token,
            author: req.author,
            comment: req.comment,
            kind: req.kind,
            changes: &req.changes,
            gray: req.gray,
        };
        match st.cache.track(st.cache.store().publish(&p).await) {
            Err(StoreError::Stale) if attempts < 5 => {
                // Another publish (maybe on another instance) or a schema
                // change came first: catch up and check again.
                let _ = st.cache.refresh(ns).await;
            }
            Err(e) => return Err(ApiError::store(e, ns)),
            Ok(v) => {
                st.metrics.publishes.inc();
                tracing::info!(
                    namespace = ns,
                    version = v,
                    token = req.token,
                    author = req.author,
                    kind = req.kind,
                    changes = req.changes.len(),
                    "published"
                );
                if let Err(e) = st.cache.refresh(ns).await {
                    tracing::warn!(namespace = ns, error = %e, "refresh after publish failed");
                }
                return Ok(v);
            }
        }
    }
}

/// The client identity of a request, or a 400 naming the header.
pub fn client_of(headers: &axum::http::HeaderMap) -> Result<Client, ApiError> {
    Client::from_headers(headers).map_err(|(field, m)| ApiError::bad(field, m))
}
