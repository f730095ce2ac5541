//! riskfeat-configd: a configuration center on PostgreSQL.
//!
//! Versioned publishes ([`store`]), an in-memory cache with pre-serialized,
//! shared snapshots and single-flight misses ([`cache`]), change detection by
//! LISTEN/NOTIFY plus a periodic scan ([`notify`]), paced wake-ups of
//! long-poll watchers ([`watch`]) and the HTTP API ([`http`]).
//! `main.rs` only parses flags and maps errors to exit codes; [`run`] is
//! the whole server.

pub mod cache;
pub mod config;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod store;
pub mod tls;
pub mod watch;

use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Why the server stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Store(#[from] store::StoreError),
    #[error("HTTP server: {0}")]
    Serve(std::io::Error),
}

/// Runs configd until `shutdown` completes.
pub async fn run(
    cfg: config::Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let cfg = Arc::new(cfg);
    let metrics = metrics::Metrics::new();
    let store = store::Store::new(cfg.database_url.expose(), cfg.pool_size)?;
    let hubs = watch::Hubs::new(cfg.wake_batch, cfg.wake_interval, metrics.clone());
    let cache = cache::Cache::new(store.clone(), metrics.clone(), hubs, cfg.retention_versions);
    let state = Arc::new(http::AppState {
        cache: cache.clone(),
        metrics: metrics.clone(),
        cfg: cfg.clone(),
        started: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(RunError::Serve)?;
    let app = http::router(state.clone());
    let server = match &cfg.tls {
        None => {
            tracing::info!(listen = %local, "riskfeat-configd listening (HTTP)");
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
            })
        }
        Some(loaded) => {
            let served = axum_server::tls_rustls::RustlsConfig::from_config(loaded.config.clone());
            tokio::spawn(tls::keep_current(served.clone(), loaded.clone()));
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                // Like axum::serve's: stop accepting, let requests finish.
                stopper.graceful_shutdown(None);
            });
            let std_listener = listener.into_std().map_err(RunError::Serve)?;
            tracing::info!(listen = %local, cert = %loaded.files.cert.display(), "riskfeat-configd listening (HTTPS)");
            let server = axum_server::from_tcp_rustls(std_listener, served)
                .map_err(RunError::Serve)?
                .handle(handle);
            tokio::spawn(async move { server.serve(app.into_make_service()).await })
        }
    };
    // Migrations (retried until PostgreSQL answers), then warm-up.
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        match cache.track(store.migrate().await) {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "migrations failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
    if cfg.warm_up {
        match cache.warm_up().await {
            Ok(n) => tracing::info!(namespaces = n, "cache warmed up"),
            Err(e) => tracing::warn!(error = %e, "warm-up failed; namespaces load on first use"),
        }
    }
    state.started.store(true, Ordering::Relaxed);
    tokio::spawn(notify::listen(
        cache.clone(),
        metrics.clone(),
        cfg.scan_interval,
    ));
    tokio::spawn(notify::compactor(
        cache.clone(),
        metrics.clone(),
        cfg.retention_versions,
        cfg.compact_interval,
    ));
    server
        .await
        .map_err(|e| RunError::Serve(std::io::Error::other(e)))?
        .map_err(RunError::Serve)
}
