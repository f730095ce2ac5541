//! Wiring: core dumps off (`riskfeat_shared::no_core`), shared-dir check, HTTP listener (served by
//! [`riskfeat_shared::http_server`] with the `[http]` timeouts and
//! connection cap), health socket, the reload and lag loops, the runtime
//! stall watch, and the SIGTERM drain (stop accepting, finish in-flight
//! requests, close pools, exit).

use crate::app::App;
use crate::config::Config;
use crate::health::Health;
use riskfeat_shared::ca_file::CaFile;
use riskfeat_shared::exit::Fatal;
use riskfeat_shared::http_server::{self, Serve};
use riskfeat_shared::pg_tls::{PgTls, PgTlsError};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Checks the shared dir: present (66), memory-backed unless `allow_disk` (78).
pub fn check_shared_dir(cfg: &Config) -> Result<(), Fatal> {
    let dir = &cfg.shared_dir;
    if !dir.is_dir() {
        return Err(Fatal::Input(format!(
            "shared_dir {} does not exist or is not a directory",
            dir.display()
        )));
    }
    match riskfeat_shared::fs_check::fs_kind(dir) {
        Ok(kind) if kind.is_memory() || cfg.allow_disk => Ok(()),
        Ok(kind) => Err(Fatal::SharedDir(format!(
            "shared_dir {} is on {kind}, not tmpfs/ramfs: credentials would reach a disk \
             (set allow_disk = true to accept)",
            dir.display()
        ))),
        Err(e) => Err(Fatal::Input(format!(
            "cannot stat shared_dir {}: {e}",
            dir.display()
        ))),
    }
}

/// `database_ca_file` as the pools use it, read once (later changes load
/// through [`CaFile`]): missing file 66, no certificate in it 64.
pub fn load_ca(cfg: &Config) -> Result<(PgTls, Option<CaFile<PgTls>>), Fatal> {
    let Some(path) = cfg.database_ca_file.as_deref() else {
        let tls = PgTls::new("database_ca_file", None).map_err(|e| Fatal::Config(e.to_string()))?;
        return Ok((tls, None));
    };
    let bytes = std::fs::read(path).map_err(|source| {
        let e = PgTlsError::Read {
            setting: "database_ca_file",
            path: path.display().to_string(),
            source,
        };
        Fatal::Input(e.to_string())
    })?;
    let tls = PgTls::from_pem("database_ca_file", path, &bytes)
        .map_err(|e| Fatal::Config(e.to_string()))?;
    let file = CaFile::new("database_ca_file", path, bytes, tls.clone());
    Ok((tls, Some(file)))
}

/// Runs the worker until SIGTERM/SIGINT.
pub async fn run(cfg: Config) -> Result<(), Fatal> {
    riskfeat_shared::no_core::disable_core_dumps().map_err(|e| Fatal::Runtime(e.to_string()))?;
    check_shared_dir(&cfg)?;
    let addr = cfg.listen_addr();
    let shutdown_timeout = Duration::from_secs(cfg.shutdown_timeout_s);
    let (tls, ca_file) = load_ca(&cfg)?;
    let app = Arc::new(App::new(cfg, tls));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Fatal::Runtime(format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr().unwrap_or(addr);
    let socket = app.cfg.socket_path();
    let health_listener = riskfeat_shared::health::bind(&socket)
        .map_err(|e| Fatal::Runtime(format!("cannot bind {}: {e}", socket.display())))?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let health = tokio::spawn(riskfeat_shared::health::serve(
        health_listener,
        socket.clone(),
        Arc::new(Health(app.clone())),
        wait_stop(stop_rx.clone()),
    ));
    let reload = tokio::spawn(crate::reload::run(app.clone(), ca_file, stop_rx.clone()));
    let lag = tokio::spawn(crate::lag::run(app.clone(), stop_rx.clone()));
    crate::stall::start(
        app.metrics.runtime_stall.clone(),
        app.metrics.runtime_blocked.clone(),
    );

    tracing::info!(%local, socket = %socket.display(), namespace = %app.cfg.namespace, "riskfeat-worker listening");
    let (http_stop_tx, http_stop_rx) = tokio::sync::watch::channel(false);
    let serve = Serve {
        app: crate::http::router(app.clone()),
        limits: app.cfg.http.clone(),
        long_poll: None,
        tls: None,
    };
    let server = http_server::serve(listener, serve, wait_stop(http_stop_rx));
    let mut server = tokio::spawn(server);

    tokio::select! {
        s = riskfeat_shared::signal::shutdown_signal() => {
            tracing::info!(signal = s.name(), "draining in-flight requests, then exiting")
        }
        r = &mut server => {
            let _ = stop_tx.send(true);
            return Err(Fatal::Runtime(format!("HTTP server stopped: {r:?}")));
        }
    }
    app.shutting_down.store(true, Ordering::Relaxed);
    let _ = http_stop_tx.send(true);
    match tokio::time::timeout(shutdown_timeout, &mut server).await {
        Ok(_) => tracing::info!("all in-flight requests answered"),
        Err(_) => tracing::warn!(
            ?shutdown_timeout,
            "in-flight requests still running at the shutdown timeout"
        ),
    }
    let _ = stop_tx.send(true);
    let _ = reload.await;
    let _ = lag.await;
    let _ = health.await;
    if let Some(p) = app.pools.swap(None) {
        p.close();
    }
    Ok(())
}
