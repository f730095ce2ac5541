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
pub mod ctl;
pub mod gray;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod rollout;
pub mod store;
pub mod tls;
pub mod validate;
pub mod watch;

use riskfeat_shared::http_server::{self, Serve};
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
    let store = store::Store::new(
        cfg.database_url.expose(),
        cfg.pool_size,
        cfg.database_sslmode,
        cfg.database_tls.clone(),
    )?;
    let hubs = watch::Hubs::new(cfg.wake_batch, cfg.wake_interval, metrics.clone());
    let cache = cache::Cache::new(store.clone(), metrics.clone(), hubs, cfg.retention_versions);
    let state = Arc::new(http::AppState {
        cache: cache.clone(),
        metrics: metrics.clone(),
        cfg: cfg.clone(),
        started: Default::default(),
        stopping: tokio::sync::watch::Sender::new(false),
        watchers: Default::default(),
        rollout: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(RunError::Serve)?;
    let app = http::router(state.clone());
    let tls = cfg.tls.as_ref().map(|loaded| {
        let served = Arc::new(std::sync::RwLock::new(loaded.config.clone()));
        tokio::spawn(tls::keep_current(served.clone(), loaded.clone()));
        tracing::info!(listen = %local, cert = %loaded.files.cert.display(), "riskfeat-configd listening (HTTPS)");
        served
    });
    if tls.is_none() {
        tracing::info!(listen = %local, "riskfeat-configd listening (HTTP)");
    }
    let serve = Serve {
        app,
        limits: cfg.http.clone(),
        long_poll: Some((http::is_long_poll, cfg.max_poll_timeout)),
        tls,
    };
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let stopping = state.stopping.clone();
    let budget = cfg.shutdown_timeout;
    let server = tokio::spawn(async move {
        let stop = async move {
            shutdown.await;
            // Held long-polls answer 304 now, so agents re-poll a replica
            // that stays; then the server drains.
            let _ = stopping.send(true);
            let _ = drained_tx.send(());
        };
        let serving = http_server::serve(listener, serve, stop);
        tokio::pin!(serving);
        tokio::select! {
            r = &mut serving => r,
            _ = async {
                let _ = drained_rx.await;
                tokio::time::sleep(budget).await;
            } => {
                tracing::warn!(?budget, "requests still in flight at shutdown_timeout_s; exiting");
                Ok(())
            }
        }
    });
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
    tokio::spawn(rollout::flusher(
        state.rollout.clone(),
        cache.clone(),
        metrics.clone(),
        http::stale_after_s(&cfg),
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
