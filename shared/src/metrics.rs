//! Prometheus metrics: rendering a registry and serving it on `/metrics`.
//!
//! Names follow `riskfeat_<component>_<name>_<unit>`; counters end in
//! `_total`. Labels never carry a secret, a username or a lease id.

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Registry, TextEncoder};
use std::net::SocketAddr;

/// The registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .expect("encoding metrics into a Vec cannot fail");
    String::from_utf8(buf).expect("the text format is UTF-8")
}

/// A router with `GET /metrics` for `registry`.
pub fn router(registry: Registry) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                (
                    [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                    render(&registry),
                )
                    .into_response()
            }
        }),
    )
}

/// Binds `addr` (so a bad address fails at start-up) and serves `/metrics`
/// in the background until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        axum::serve(listener, router(registry))
            .with_graceful_shutdown(shutdown)
            .await
    });
    Ok((local, handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_format() {
        let r = Registry::new();
        let c = prometheus::IntCounter::new("riskfeat_test_events_total", "Events.").unwrap();
        r.register(Box::new(c.clone())).unwrap();
        c.inc();
        let text = render(&r);
        assert!(text.contains("# TYPE riskfeat_test_events_total counter"));
        assert!(text.contains("riskfeat_test_events_total 1"));
    }
}
