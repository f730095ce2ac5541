//! The HTTP surface (axum): the client and admin APIs under `/v1`, bearer
//! token authentication with namespace scopes, the web console at `/ui`,
//! `/healthz`, `/readyz`, `/metrics`. Every invalid request gets a 4xx JSON error
//! `{"error":{"code","message","field"}}` naming the offending field.

mod admin;
mod auth;
mod client;
mod gray;
mod publish;
mod replace;
mod rollout;
mod schema;
pub mod ui;

use crate::cache::Cache;
use crate::config::{Config, Role, TokenEntry};
use crate::metrics::Metrics;
use crate::store::StoreError;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Shared state of every handler.
pub struct AppState {
    pub cache: Arc<Cache>,
    pub metrics: Metrics,
    pub cfg: Arc<Config>,
    /// Set once migrations ran.
    pub started: AtomicBool,
    /// Set on SIGTERM: held long-polls answer 304 at once.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// Long-polls held per token name (capped by `max_watchers_per_token`).
    pub watchers: std::sync::Mutex<HashMap<String, usize>>,
    /// Client reports not yet written.
    pub rollout: Arc<crate::rollout::Rollout>,
}

impl AppState {
    /// The namespace's current state from the cache (loaded on first use);
    /// a store error is the answer for `ns`.
    pub async fn ns_state(&self, ns: &str) -> Result<Arc<crate::cache::NsState>, ApiError> {
        self.cache.get(ns).await.map_err(|e| ApiError::store(e, ns))
    }

    /// The store (through the cache, which tracks whether it answers).
    pub fn store(&self) -> &crate::store::Store {
        self.cache.store()
    }

    /// A store answer: noted for `/readyz` ([`Cache::track`]); an error is
    /// the answer for `ns`.
    pub fn stored<T>(&self, ns: &str, r: Result<T, StoreError>) -> Result<T, ApiError> {
        self.cache.track(r).map_err(|e| ApiError::store(e, ns))
    }
}

/// A client not seen for this long is `gone` (stale): twice the longest
/// long-poll plus a minute.
pub fn stale_after_s(cfg: &Config) -> f64 {
    2.0 * cfg.max_poll_timeout.as_secs_f64() + 60.0
}

/// The long-poll routes: exempt from `http.request_timeout_ms`, bounded by
/// `max_poll_timeout_s` (plus that margin) instead.
pub fn is_long_poll(path: &str) -> bool {
    path == "/v1/watch" || (path.starts_with("/v1/namespaces/") && path.ends_with("/watch"))
}

/// An API error: status, code, message, field.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Seconds, sent as `Retry-After` (429).
    pub retry_after: Option<u32>,
    /// `schema_violation`: every broken rule (`[{key, rule, message}]`).
    pub violations: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        field: impl Into<Option<String>>,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: field.into(),
            retry_after: None,
            violations: None,
        }
    }
    pub fn bad(field: &str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some(field.to_string()),
            message,
        )
    }
    /// Maps a storage error for namespace `ns`.
    pub fn store(e: StoreError, ns: &str) -> Self {
        match e {
            StoreError::NotFound(_) => Self::new(
                StatusCode::NOT_FOUND,
                "namespace_not_found",
                Some("namespace".to_string()),
                format!("namespace {ns:?} does not exist"),
            ),
            StoreError::Exists(_) => Self::new(
                StatusCode::CONFLICT,
                "namespace_exists",
                Some("namespace".to_string()),
                format!("namespace {ns:?} already exists"),
            ),
            StoreError::Conflict { .. } => Self::new(
                StatusCode::CONFLICT,
                "version_conflict",
                Some("expected_version".to_string()),
                e.to_string(),
            ),
            StoreError::VersionRange { .. } => Self::bad("version", e.to_string()),
            StoreError::Stale => Self::new(
                StatusCode::CONFLICT,
                "version_conflict",
                Some("expected_version".to_string()),
                "the namespace kept changing while the request was checked; try again",
            ),
            StoreError::GrayActive(_) => Self::new(
                StatusCode::CONFLICT,
                "gray_in_progress",
                Some("namespace".to_string()),
                e.to_string(),
            ),
            StoreError::NoGray => Self::new(
                StatusCode::CONFLICT,
                "no_gray_release",
                Some("namespace".to_string()),
                e.to_string(),
            ),
            e if e.is_unavailable() => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                None,
                "the database is unavailable and this namespace is not cached".to_string(),
            ),
            e => {
                tracing::error!(error = %e, "database error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    None,
                    "database error",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body =
            json!({"error": {"code": self.code, "message": self.message, "field": self.field}});
        if let Some(v) = self.violations {
            body["error"]["violations"] = v;
        }
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        resp
    }
}

/// Checks the bearer token: it must exist, have `role` (admin may also
/// read) and cover every namespace in `namespaces`.
pub fn authorize<'a>(
    cfg: &'a Config,
    headers: &HeaderMap,
    role: Role,
    namespaces: &[(&str, String)],
) -> Result<&'a TokenEntry, ApiError> {
    let unauth = |m: &str| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            Some("Authorization".to_string()),
            m,
        )
    };
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| unauth("missing Authorization: Bearer <token> header"))?
        .to_str()
        .map_err(|_| unauth("Authorization header is not text"))?;
    let given = value
        .strip_prefix("Bearer ")
        .ok_or_else(|| unauth("Authorization header must be 'Bearer <token>'"))?
        .trim();
    let token = cfg
        .tokens
        .iter()
        .find(|t| constant_time_eq(t.token.expose().as_bytes(), given.as_bytes()))
        .ok_or_else(|| unauth("unknown token"))?;
    if role == Role::Admin && token.role != Role::Admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            Some("Authorization".to_string()),
            format!("token {:?} has the read role; this needs admin", token.name),
        ));
    }
    for (ns, field) in namespaces {
        if !token.allows(ns) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                Some(field.clone()),
                format!("token {:?} may not access namespace {ns:?}", token.name),
            ));
        }
    }
    Ok(token)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Validates a namespace name from the path or a body.
pub fn check_ns(ns: &str, field: &str) -> Result<(), ApiError> {
    if riskfeat_shared::layout::valid_namespace(ns) {
        Ok(())
    } else {
        Err(ApiError::bad(
            field,
            format!(
                "invalid namespace name {ns:?}: 1-128 of [A-Za-z0-9._-], not starting with '.'"
            ),
        ))
    }
}

/// Query parameters with only `allowed` names.
pub fn query(
    q: Result<
        axum::extract::Query<HashMap<String, String>>,
        axum::extract::rejection::QueryRejection,
    >,
    allowed: &[&str],
) -> Result<HashMap<String, String>, ApiError> {
    let q = q.map_err(|e| ApiError::bad("query", e.body_text()))?.0;
    for k in q.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::bad(
                k,
                format!(
                    "unknown query parameter {k:?} (allowed: {})",
                    allowed.join(", ")
                ),
            ));
        }
    }
    Ok(q)
}

/// An unsigned integer query parameter.
pub fn param_u64(
    q: &HashMap<String, String>,
    name: &str,
    default: Option<u64>,
) -> Result<u64, ApiError> {
    match q.get(name) {
        Some(v) => v.parse().map_err(|_| {
            ApiError::bad(name, format!("{name}={v:?} is not a non-negative integer"))
        }),
        None => default
            .ok_or_else(|| ApiError::bad(name, format!("query parameter {name} is required"))),
    }
}

/// Parses a JSON body, naming the field when serde can.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        let field = ["unknown field `", "missing field `"]
            .iter()
            .find_map(|p| {
                msg.split_once(p)
                    .and_then(|(_, rest)| rest.split_once('`'))
                    .map(|(f, _)| f.to_string())
            })
            .unwrap_or_else(|| "body".to_string());
        ApiError::bad(&field, format!("invalid JSON body: {msg}"))
    })
}

async fn count(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = riskfeat_shared::http_server::route_label(&req);
    let resp = next.run(req).await;
    st.metrics
        .requests
        .with_label_values(&[&route, resp.status().as_str()])
        .inc();
    resp
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    let started = st.started.load(Ordering::Relaxed);
    let pg = st.cache.pg_up();
    let loaded = st.cache.loaded().len();
    let status = match (started, pg) {
        (false, _) => "starting",
        (true, true) => "ready",
        (true, false) => "degraded",
    };
    let code = if started {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({"status": status, "postgres": if pg {"up"} else {"down"}, "namespaces_cached": loaded}))).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_such_route",
        Some("path".to_string()),
        "no such endpoint",
    )
}

/// The whole router.
pub fn router(st: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/namespaces/{ns}/watch", get(client::watch_one))
        .route("/v1/watch", post(client::watch_many))
        .route("/v1/namespaces/{ns}/changes", get(client::changes))
        .route("/v1/admin/namespaces", get(rollout::list))
        .route(
            "/v1/admin/namespaces/{ns}",
            put(admin::create).delete(admin::delete),
        )
        .route("/v1/admin/namespaces/{ns}/publish", post(admin::publish))
        .route(
            "/v1/admin/namespaces/{ns}/items",
            get(admin::items).put(replace::replace),
        )
        .route("/v1/admin/namespaces/{ns}/history", get(admin::history))
        .route("/v1/admin/namespaces/{ns}/diff", get(admin::diff))
        .route("/v1/admin/namespaces/{ns}/rollback", post(admin::rollback))
        .route(
            "/v1/admin/namespaces/{ns}/schema",
            get(schema::get_schema).put(schema::put_schema),
        )
        .route(
            "/v1/admin/namespaces/{ns}/gray",
            get(gray::get_gray).post(gray::start),
        )
        .route(
            "/v1/admin/namespaces/{ns}/gray/promote",
            post(gray::end::<true>),
        )
        .route(
            "/v1/admin/namespaces/{ns}/gray/abort",
            post(gray::end::<false>),
        )
        .route("/v1/admin/namespaces/{ns}/rollout", get(rollout::rollout))
        .route("/ui", get(ui::index))
        .route("/ui/{file}", get(ui::file))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(st.clone(), count))
        .with_state(st.clone());
    api.merge(riskfeat_shared::metrics::router(
        st.metrics.registry.clone(),
    ))
}
