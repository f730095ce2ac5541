//! Client endpoints (read role): long-poll watch of one or several
//! namespaces, and changes since a version (incremental or snapshot; a
//! client a gray release selects gets the gray view's snapshot).

use super::auth::{AnyReader, Caller, JsonBody, Reader};
use super::{authorize, check_ns, param_u64, query, ApiError, AppState};
use crate::config::Role;
use crate::watch::Registered;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// One held long-poll of `token`, counted until it ends.
struct Held<'a> {
    st: &'a AppState,
    token: &'a str,
}

impl<'a> Held<'a> {
    /// Counts a long-poll of `token`, or 429 when it holds its cap.
    fn take(st: &'a AppState, token: &'a str) -> Result<Self, ApiError> {
        let cap = st.cfg.max_watchers_per_token;
        let mut held = st.watchers.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(token.to_string()).or_insert(0);
        if *n >= cap {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_watchers",
                Some("Authorization".to_string()),
                format!("token {token:?} already holds {cap} long-polls (max_watchers_per_token)"),
            );
            e.retry_after = Some(5);
            return Err(e);
        }
        *n += 1;
        st.metrics.watchers.inc();
        Ok(Held { st, token })
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.st.metrics.watchers.dec();
        let mut held = self.st.watchers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(self.token) {
            *n -= 1;
            if *n == 0 {
                held.remove(self.token);
            }
        }
    }
}

fn timeout_of(st: &AppState, q: Option<u64>) -> Duration {
    let t = Duration::from_secs(q.unwrap_or(30));
    t.min(st.cfg.max_poll_timeout)
}

/// Waits until one of `seen` changes, the timeout or shutdown (all three
/// held under `token`'s cap); `field_of` names each namespace for errors.
/// Returns the changed namespaces with their versions (none: 304).
async fn wait_any(
    st: &AppState,
    token: &str,
    seen: &BTreeMap<String, u64>,
    field_of: impl Fn(&str) -> String,
    timeout: Duration,
) -> Result<BTreeMap<String, u64>, ApiError> {
    // Load (single-flight) and validate every namespace first.
    for (ns, v) in seen {
        // Boxed: a cold load's future is large and would otherwise size
        // every held long-poll's future.
        let state = Box::pin(st.cache.get(ns)).await.map_err(|e| {
            let mut e = ApiError::store(e, ns);
            if e.status == StatusCode::NOT_FOUND {
                e.field = Some(field_of(ns));
            }
            e
        })?;
        if *v > state.version {
            return Err(ApiError::bad(
                &field_of(ns),
                format!(
                    "version {v} of namespace {ns:?} is from the future (current is {})",
                    state.version
                ),
            ));
        }
    }
    let _held = Held::take(st, token)?;
    let mut stopping = st.stopping.subscribe();
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut changed = BTreeMap::new();
        for (ns, v) in seen {
            match st.cache.hubs().register(ns, *v, &tx) {
                Registered::Changed(now) => {
                    changed.insert(ns.clone(), now);
                }
                Registered::Waiting => {}
                Registered::Unknown => {
                    return Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        "namespace_not_found",
                        Some(field_of(ns)),
                        format!("namespace {ns:?} does not exist (deleted)"),
                    ))
                }
            }
        }
        if !changed.is_empty() {
            return Ok(changed);
        }
        tokio::select! {
            _ = rx.recv() => {}
            _ = tokio::time::sleep_until(deadline) => return Ok(BTreeMap::new()),
            _ = stopping.wait_for(|s| *s) => return Ok(BTreeMap::new()),
        }
    }
}

/// `GET /v1/namespaces/{ns}/watch?version=V&timeout_s=T`.
pub async fn watch_one(
    State(st): State<Arc<AppState>>,
    Reader(Caller { ns, token }): Reader,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q, &["version", "timeout_s"])?;
    let version = param_u64(&q, "version", Some(0))?;
    let timeout = timeout_of(
        &st,
        q.get("timeout_s")
            .map(|_| param_u64(&q, "timeout_s", None))
            .transpose()?,
    );
    let seen = BTreeMap::from([(ns.clone(), version)]);
    let changed = wait_any(&st, &token, &seen, |_| "version".to_string(), timeout).await?;
    Ok(match changed.get(&ns) {
        Some(v) => Json(json!({"namespace": ns, "version": v})).into_response(),
        None => StatusCode::NOT_MODIFIED.into_response(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchBody {
    namespaces: BTreeMap<String, u64>,
    timeout_s: Option<u64>,
    /// What the client applied, per watched namespace (rollout view).
    report: Option<BTreeMap<String, ReportIn>>,
}

/// One namespace of a client's report.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportIn {
    /// The version it published for its worker.
    applied: u64,
    /// The version its worker has in force, when known.
    in_force: Option<u64>,
    /// `{"version", "reason"}` of a version its worker rejected.
    rejected: Option<RejectedIn>,
}

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RejectedIn {
    version: u64,
    reason: String,
}

/// Notes the report of a watch (clients with an id only; namespaces the
/// watch covers only).
fn note_report(
    st: &AppState,
    token: &str,
    client: &crate::gray::Client,
    watched: &BTreeMap<String, u64>,
    report: BTreeMap<String, ReportIn>,
) {
    let Some(id) = &client.id else {
        return;
    };
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    for (ns, r) in report
        .into_iter()
        .filter(|(ns, _)| watched.contains_key(ns))
    {
        let rejected = r.rejected.map(|mut x| {
            x.reason = x.reason.chars().take(1024).collect();
            json!(x)
        });
        st.rollout.record(crate::store::ClientRow {
            namespace: ns,
            client_id: id.clone(),
            labels: client.labels.clone(),
            version: r.applied,
            in_force: r.in_force,
            rejected,
            token: token.to_string(),
            last_seen: now.clone(),
            age_s: 0.0,
        });
    }
}

/// `POST /v1/watch` `{"namespaces":{"a":3},"timeout_s":30}`.
pub async fn watch_many(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    AnyReader(token): AnyReader,
    JsonBody(req): JsonBody<WatchBody>,
) -> Result<Response, ApiError> {
    if req.namespaces.is_empty() {
        return Err(ApiError::bad("namespaces", "namespaces is empty"));
    }
    if req.namespaces.len() > 1000 {
        return Err(ApiError::bad(
            "namespaces",
            "at most 1000 namespaces per watch",
        ));
    }
    let mut scopes = Vec::new();
    for ns in req.namespaces.keys() {
        check_ns(ns, &format!("namespaces.{ns}"))?;
        scopes.push((ns.as_str(), format!("namespaces.{ns}")));
    }
    authorize(&st.cfg, &headers, Role::Read, &scopes)?;
    let client = super::publish::client_of(&headers)?;
    if let Some(report) = req.report {
        note_report(&st, &token, &client, &req.namespaces, report);
    }
    let timeout = timeout_of(&st, req.timeout_s);
    let changed = wait_any(
        &st,
        &token,
        &req.namespaces,
        |ns| format!("namespaces.{ns}"),
        timeout,
    )
    .await?;
    Ok(if changed.is_empty() {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Json(json!({"changed": changed})).into_response()
    })
}

/// `GET /v1/namespaces/{ns}/changes?from=V`.
pub async fn changes(
    State(st): State<Arc<AppState>>,
    Reader(Caller { ns, .. }): Reader,
    headers: HeaderMap,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q, &["from"])?;
    let from = param_u64(&q, "from", None)?;
    let state = st.ns_state(&ns).await?;
    if from > state.version {
        return Err(ApiError::bad(
            "from",
            format!(
                "version {from} is from the future (namespace {ns:?} is at {})",
                state.version
            ),
        ));
    }
    let json_ct = (header::CONTENT_TYPE, "application/json");
    let client = super::publish::client_of(&headers)?;
    if state
        .gray
        .as_ref()
        .is_some_and(|g| g.selector.matches(&ns, &client))
    {
        // A gray client always gets the whole gray view.
        let body = state.gray_snapshot(&st.metrics).await;
        st.metrics
            .response_bytes
            .with_label_values(&["snapshot"])
            .inc_by(body.len() as u64);
        return Ok((
            [json_ct, (header::VARY, "accept-encoding")],
            Body::from(body),
        )
            .into_response());
    }
    if state.incremental_from(from) {
        let body = state.changes_body(from);
        st.metrics
            .response_bytes
            .with_label_values(&["ops"])
            .inc_by(body.len() as u64);
        return Ok(([json_ct], body).into_response());
    }
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim().starts_with("gzip")));
    let bytes = state.snapshot(gzip, &st.metrics).await;
    let len = bytes.len() as u64;
    if gzip {
        st.metrics
            .response_bytes
            .with_label_values(&["snapshot_gzip"])
            .inc_by(len);
        Ok((
            [
                json_ct,
                (header::CONTENT_ENCODING, "gzip"),
                (header::VARY, "accept-encoding"),
            ],
            Body::from(bytes),
        )
            .into_response())
    } else {
        st.metrics
            .response_bytes
            .with_label_values(&["snapshot"])
            .inc_by(len);
        Ok((
            [json_ct, (header::VARY, "accept-encoding")],
            Body::from(bytes),
        )
            .into_response())
    }
}
