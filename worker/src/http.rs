//! The HTTP API (documented in docs/api.md): features of one user, of a
//! batch of users in one database round trip, and `/metrics`. Errors are
//! JSON `{"error":{"code":"...","message":"..."}}` with a stable `code`.

use crate::app::{App, QueryFailure, ReadContext};
use crate::features::{compute, Features, Row, Windows};
use crate::params::FeatureParams;
use crate::pool::DbError;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// The routes, with the request-duration middleware.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/features/{user_id}", get(one))
        .route("/v1/features/batch", post(batch))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

async fn observe(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = riskfeat_shared::http_server::route_label(&req);
    let resp = next.run(req).await;
    app.metrics
        .request_duration
        .with_label_values(&[route.as_str(), resp.status().as_str()])
        .observe(start.elapsed().as_secs_f64());
    resp
}

/// A JSON error with a stable code.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

/// What a caller is told of a failed query: a stable code and a message
/// that helps it (retry, or not) without the database's host, the dynamic
/// username or PostgreSQL's own text, which go to the log instead.
impl From<QueryFailure> for ApiError {
    fn from(f: QueryFailure) -> Self {
        let unavailable = StatusCode::SERVICE_UNAVAILABLE;
        let (status, code, message) = match &f {
            QueryFailure::NoCredential => (
                unavailable,
                "no_credential",
                "no usable database credential yet; retry later",
            ),
            QueryFailure::Db(DbError::PoolTimeout(_)) => (
                unavailable,
                "pool_exhausted",
                "no free database connection in time; retry later",
            ),
            QueryFailure::Db(
                DbError::Connect { .. } | DbError::Closed | DbError::Tls(_) | DbError::Source(_),
            ) => (
                unavailable,
                "database_unavailable",
                "the database cannot be reached; retry later",
            ),
            // A credential that lost its rights (revoked under the worker)
            // is no more usable than one that no longer logs in.
            QueryFailure::Db(DbError::Refused(_)) => (
                unavailable,
                "database_unavailable",
                "the database refused the credential in use; retry later",
            ),
            QueryFailure::Db(DbError::Query(_)) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "database_error",
                "the feature query failed",
            ),
        };
        if let QueryFailure::Db(e) = &f {
            tracing::warn!(code, error = %e, "feature query failed");
        }
        ApiError::new(status, code, message)
    }
}

/// What every successful answer carries besides the features.
#[derive(Serialize)]
struct Meta {
    config_version: u64,
    credential_generation: u64,
    replica_lag_ms: Option<u64>,
    stale: bool,
    degraded: bool,
    source: &'static str,
}

fn meta(app: &App, ctx: ReadContext, generation: u64, config_version: u64) -> Meta {
    Meta {
        config_version,
        credential_generation: generation,
        replica_lag_ms: ctx.lag_ms,
        stale: ctx.stale,
        degraded: app.fallback.load(Ordering::Relaxed),
        source: if ctx.use_primary {
            "primary"
        } else {
            "replica"
        },
    }
}

#[derive(Serialize)]
struct OneResponse {
    user_id: i64,
    features: Features,
    #[serde(flatten)]
    meta: Meta,
}

#[derive(Serialize)]
struct UserFeatures {
    user_id: i64,
    features: Features,
}

#[derive(Serialize)]
struct BatchResponse {
    results: Vec<UserFeatures>,
    #[serde(flatten)]
    meta: Meta,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    user_ids: Vec<i64>,
}

fn parse_user_id(raw: &str) -> Result<i64, ApiError> {
    match raw.parse::<i64>() {
        Ok(id) if id >= 0 => Ok(id),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_user_id",
            format!("user id {raw:?} is not a non-negative 64-bit integer"),
        )),
    }
}

/// One user's part of a feature query's answer, from column `at` on: the
/// newest rows (amounts, times; NULL arrays = no rows) and, when the query
/// had to aggregate them, the windows. Non-finite amounts (NULL, NaN,
/// infinite in the table) are skipped and counted.
fn decode_user(app: &App, r: &tokio_postgres::Row, at: usize, c: &Clock) -> (Vec<Row>, Windows) {
    let amounts: Option<Vec<Option<f64>>> = r.get(at);
    let ts: Option<Vec<i64>> = r.get(at + 1);
    let aggregated: Option<Vec<f64>> = r.get(at + 2);
    let mut skipped = 0u64;
    let rows: Vec<Row> = match (amounts, ts) {
        (Some(a), Some(t)) => a
            .into_iter()
            .zip(t)
            .filter_map(|(amount, ts_us)| match amount {
                Some(amount) if amount.is_finite() => Some(Row { amount, ts_us }),
                _ => {
                    skipped += 1;
                    None
                }
            })
            .collect(),
        _ => Vec::new(),
    };
    let (windows, skipped_in_windows) = match aggregated.as_deref() {
        Some(&[count_short, amount_short, count_long, amount_long, skipped]) => {
            let count = |v: f64| if v.is_finite() { v.max(0.0) as u64 } else { 0 };
            let amount = |v: f64| if v.is_finite() { v } else { 0.0 };
            let w = Windows {
                count_short: count(count_short),
                amount_short: amount(amount_short),
                count_long: count(count_long),
                amount_long: amount(amount_long),
            };
            (w, count(skipped))
        }
        // Every row of the windows is among the newest rows.
        _ => (Windows::from_rows(&rows, c.short_start, c.long_start), 0),
    };
    app.metrics.skipped_amounts(skipped, skipped_in_windows);
    (rows, windows)
}

/// The clock the windows are measured on, and their starts (µs).
struct Clock {
    now: i64,
    short_start: i64,
    long_start: i64,
}

fn clock(p: &FeatureParams) -> Clock {
    let now = chrono::Utc::now().timestamp_micros();
    Clock {
        now,
        short_start: now - p.short_window_s as i64 * 1_000_000,
        long_start: now - p.long_window_s as i64 * 1_000_000,
    }
}

async fn one(State(app): State<Arc<App>>, Path(raw): Path<String>) -> Result<Response, ApiError> {
    let user_id = parse_user_id(&raw)?;
    let params = app.params.load_full();
    let ctx = app.read_context();
    let lookback = params.lookback as i64;
    let c = clock(&params);
    let sql = &app.pool_settings.sql.one;
    let (rows, generation) = app
        .query(
            ctx,
            sql,
            &[&user_id, &lookback, &c.short_start, &c.long_start],
        )
        .await?;
    let (rows, windows) = rows
        .first()
        .map(|r| decode_user(&app, r, 0, &c))
        .unwrap_or_default();
    let features = compute(&rows, &windows, &params, c.now);
    Ok(Json(OneResponse {
        user_id,
        features,
        meta: meta(&app, ctx, generation, params.version),
    })
    .into_response())
}

async fn batch(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, ApiError> {
    let req: BatchRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("expected {{\"user_ids\": [integers]}}: {e}"),
        )
    })?;
    if req.user_ids.len() > app.cfg.max_batch {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "batch_too_large",
            format!(
                "{} user ids; at most {} per request",
                req.user_ids.len(),
                app.cfg.max_batch
            ),
        ));
    }
    if let Some(bad) = req.user_ids.iter().find(|id| **id < 0) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_user_id",
            format!("user id {bad} is negative"),
        ));
    }
    let params = app.params.load_full();
    let ctx = app.read_context();
    let mut ids = req.user_ids.clone();
    ids.sort_unstable();
    ids.dedup();
    let lookback = params.lookback as i64;
    let c = clock(&params);
    let (generation, mut by_user) = if ids.is_empty() {
        let g = app.pools.load().as_ref().map(|p| p.generation);
        (g.ok_or(QueryFailure::NoCredential)?, HashMap::new())
    } else {
        let sql = &app.pool_settings.sql.batch;
        let (rows, generation) = app
            .query(ctx, sql, &[&ids, &lookback, &c.short_start, &c.long_start])
            .await?;
        let mut by_user: HashMap<i64, (Vec<Row>, Windows)> = HashMap::with_capacity(ids.len());
        for r in &rows {
            by_user.insert(r.get(0), decode_user(&app, r, 1, &c));
        }
        (generation, by_user)
    };
    let mut results = Vec::with_capacity(req.user_ids.len());
    for id in &req.user_ids {
        let (rows, windows) = by_user.entry(*id).or_default();
        rows.sort_unstable_by_key(|r| std::cmp::Reverse(r.ts_us));
        results.push(UserFeatures {
            user_id: *id,
            features: compute(rows, windows, &params, c.now),
        });
    }
    Ok(Json(BatchResponse {
        results,
        meta: meta(&app, ctx, generation, params.version),
    })
    .into_response())
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    app.refresh_gauges();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        riskfeat_shared::metrics::render(&app.metrics.registry),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_checked() {
        assert_eq!(parse_user_id("42").unwrap(), 42);
        assert_eq!(parse_user_id("abc").unwrap_err().code, "bad_user_id");
        assert_eq!(parse_user_id("-1").unwrap_err().code, "bad_user_id");
        assert_eq!(
            parse_user_id("99999999999999999999").unwrap_err().code,
            "bad_user_id"
        );
    }

    /// Checked to fail: with the error's own text as the message (as
    /// before), the host, the dynamic user and PostgreSQL's words are in
    /// the body.
    #[test]
    fn error_bodies_tell_callers_no_internals() {
        for (f, status, code) in [
            (
                QueryFailure::Db(DbError::Connect {
                    target: "replica.internal:5432/riskfeat".into(),
                    user: "v-approle-feature-r-XyZ".into(),
                    message: "password authentication failed for user".into(),
                }),
                503,
                "database_unavailable",
            ),
            (
                QueryFailure::Db(DbError::Query(
                    "relation \"secret_table\" does not exist (SQLSTATE 42P01)".into(),
                )),
                500,
                "database_error",
            ),
            (
                QueryFailure::Db(DbError::Refused(
                    "permission denied for table secret_table (SQLSTATE 42501)".into(),
                )),
                503,
                "database_unavailable",
            ),
        ] {
            let e = ApiError::from(f);
            assert_eq!((e.status.as_u16(), e.code), (status, code));
            for leak in [
                "replica.internal",
                "v-approle",
                "password",
                "secret_table",
                "SQLSTATE",
            ] {
                assert!(!e.message.contains(leak), "{leak} in {:?}", e.message);
            }
        }
    }
}
