//! Who is calling, settled before a single body byte is read.
//!
//! Every handler takes one of the caller extractors ([`Admin`], [`Reader`],
//! [`AnyReader`]): they validate the path's namespace and check the bearer
//! token against it from the request head alone. A body, when the handler
//! has one, comes last as [`JsonBody`], which axum runs only after every
//! head extractor succeeded; it refuses a `Content-Length` over
//! `max_body_bytes` unread and stops reading at that limit otherwise. So an
//! unauthenticated request is answered from its head and its body is never
//! buffered.

use super::{authorize, check_ns, parse_body, ApiError, AppState};
use crate::config::Role;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// The namespace of the path and the name of the token allowed on it.
#[derive(Debug)]
pub struct Caller {
    pub ns: String,
    pub token: String,
}

/// An admin token allowed on the path's `{ns}`.
pub struct Admin(pub Caller);

/// A read (or admin) token allowed on the path's `{ns}`.
pub struct Reader(pub Caller);

/// A read (or admin) token, by name; the namespaces come in the body and
/// the handler checks them with [`authorize`] once it has parsed it.
pub struct AnyReader(pub String);

async fn caller(parts: &mut Parts, st: &Arc<AppState>, role: Role) -> Result<Caller, ApiError> {
    let Path(ns) = Path::<String>::from_request_parts(parts, st)
        .await
        .map_err(|e| ApiError::bad("namespace", e.body_text()))?;
    check_ns(&ns, "namespace")?;
    let token = authorize(&st.cfg, &parts.headers, role, &[(&ns, "namespace".into())])?
        .name
        .clone();
    Ok(Caller { ns, token })
}

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, st: &Arc<AppState>) -> Result<Self, ApiError> {
        caller(parts, st, Role::Admin).await.map(Admin)
    }
}

impl FromRequestParts<Arc<AppState>> for Reader {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, st: &Arc<AppState>) -> Result<Self, ApiError> {
        caller(parts, st, Role::Read).await.map(Reader)
    }
}

impl FromRequestParts<Arc<AppState>> for AnyReader {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, st: &Arc<AppState>) -> Result<Self, ApiError> {
        let token = authorize(&st.cfg, &parts.headers, Role::Read, &[])?;
        Ok(AnyReader(token.name.clone()))
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        Some("body".to_string()),
        format!("the request body is larger than max_body_bytes = {limit}"),
    )
}

/// A JSON body of at most `max_body_bytes`, parsed into `T`; must be the
/// handler's last argument, after its caller extractor.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, st: &Arc<AppState>) -> Result<Self, ApiError> {
        let limit = st.cfg.max_body_bytes;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large(limit));
        }
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|e| {
                let source = std::error::Error::source(&e);
                if source.is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
                    too_large(limit)
                } else {
                    ApiError::bad("body", format!("cannot read the request body: {e}"))
                }
            })?;
        parse_body(&bytes).map(JsonBody)
    }
}
