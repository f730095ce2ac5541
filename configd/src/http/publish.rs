//! The one publish path behind publish, rollback, replace and the gray
//! release endpoints: change sets parsed and bounded, the result checked
//! against the namespace's schema (main items, and the gray view while a
//! gray release is in progress), then one store transaction that refuses
//! it if the namespace or its schema moved on in between (checked again).

use super::auth::Caller;
use super::{ApiError, AppState};
use crate::gray::{Client, Selector};
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

/// Who publishes and why: the caller's namespace and token name, the
/// body's `author` (at most 128 bytes; default: the token's name) and
/// `comment` (at most 4096 bytes), checked.
pub struct Signed<'a> {
    ns: &'a str,
    token: &'a str,
    author: String,
    comment: Option<String>,
}

impl<'a> Signed<'a> {
    /// Checks the body's `author` and `comment` (a 400 naming the one too long).
    pub fn new(
        caller: &'a Caller,
        author: Option<String>,
        comment: Option<String>,
    ) -> Result<Self, ApiError> {
        check_text(&author, "author", 128)?;
        check_text(&comment, "comment", 4096)?;
        Ok(Signed {
            ns: &caller.ns,
            token: &caller.token,
            author: author.unwrap_or_else(|| caller.token.clone()),
            comment,
        })
    }
}

/// What a publish does, each kind in the history (`kind`).
pub enum What<'a> {
    /// `publish`: main changes; keys named `changes[i].value`.
    Publish(&'a [Change]),
    /// `rollback` to `to`: the changes back to it; keys named `to_version`.
    Rollback { changes: &'a [Change], to: u64 },
    /// `replace`: the change set to the whole namespace; keys named `items.<key>`.
    Replace(&'a [Change]),
    /// `gray_start`: a gray release of these changes to the selector.
    GrayStart(&'a Selector, &'a [Change]),
    /// `gray_promote` (`changes`: the gray changes that differ from the
    /// main items) or `gray_abort` (none) of the gray release `version`,
    /// whose changes are `gray` (keys named `gray.changes[i].value`).
    GrayEnd {
        promote: bool,
        version: u64,
        changes: &'a [Change],
        gray: &'a [Change],
    },
}

/// Names the change that holds `key` (`<prefix>[i].value`), else `items.<key>`.
fn change_field(changes: &[Change], prefix: &str, key: &str) -> String {
    match changes.iter().position(|c| c.key == key) {
        Some(i) => format!("{prefix}[{i}].value"),
        None => format!("items.{key}"),
    }
}

impl What<'_> {
    /// The history kind.
    fn kind(&self) -> &'static str {
        match self {
            What::Publish(_) => "publish",
            What::Rollback { .. } => "rollback",
            What::Replace(_) => "replace",
            What::GrayStart(..) => "gray_start",
            What::GrayEnd { promote: true, .. } => "gray_promote",
            What::GrayEnd { .. } => "gray_abort",
        }
    }

    /// The comment when the body gives none.
    fn default_comment(&self) -> String {
        match self {
            What::Rollback { to, .. } => format!("rollback to version {to}"),
            What::GrayEnd {
                promote, version, ..
            } => {
                let verb = if *promote { "promote" } else { "abort" };
                format!("{verb} the gray release of version {version}")
            }
            _ => String::new(),
        }
    }

    /// The main changes.
    fn changes(&self) -> &[Change] {
        match self {
            What::Publish(c) | What::Replace(c) => c,
            What::Rollback { changes, .. } | What::GrayEnd { changes, .. } => changes,
            What::GrayStart(..) => &[],
        }
    }

    fn gray(&self) -> GrayEffect<'_> {
        match self {
            What::GrayStart(selector, changes) => GrayEffect::Start(selector, changes),
            What::GrayEnd { .. } => GrayEffect::End,
            _ => GrayEffect::Keep,
        }
    }

    /// The input that holds `key`, for a violation.
    fn field_of(&self, key: &str) -> String {
        match self {
            What::Publish(c) | What::GrayStart(_, c) => change_field(c, "changes", key),
            What::GrayEnd { gray, .. } => change_field(gray, "gray.changes", key),
            What::Rollback { .. } => "to_version".to_string(),
            What::Replace(_) => format!("items.{key}"),
        }
    }
}

/// Checks `what` against the schema and publishes it on `by`'s namespace
/// (only at version `expected`, when given); the new version.
pub async fn apply(
    st: &AppState,
    by: Signed<'_>,
    expected: Option<u64>,
    what: What<'_>,
) -> Result<u64, ApiError> {
    let comment = by.comment.clone().unwrap_or_else(|| what.default_comment());
    let req = Request {
        ns: by.ns,
        expected,
        token: by.token,
        author: &by.author,
        comment: &comment,
        kind: what.kind(),
        changes: what.changes(),
        gray: what.gray(),
        field_of: &|k| what.field_of(k),
    };
    checked(st, req).await
}

/// One publish to check and write.
struct Request<'a> {
    ns: &'a str,
    expected: Option<u64>,
    token: &'a str,
    author: &'a str,
    comment: &'a str,
    kind: &'a str,
    /// Main changes (empty for gray start and abort).
    changes: &'a [Change],
    gray: GrayEffect<'a>,
    /// Names the input that holds a key (for violations).
    field_of: &'a (dyn Fn(&str) -> String + Sync),
}

/// Checks `req` against the schema and publishes it; the new version.
async fn checked(st: &AppState, req: Request<'_>) -> Result<u64, ApiError> {
    let ns = req.ns;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let schema = st.stored(ns, st.store().schema(ns).await)?;
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
            let state = st.ns_state(ns).await?;
            let main = object_after(&state.items, req.changes);
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
            changes: req.changes,
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
