//! `riskfeat-agent run`: start-up checks (core dumps off, the shared dir,
//! temp files of interrupted writes removed, the state loaded or set
//! aside), the servers (health socket, metrics), config sync, the
//! credential lifecycle, and shutdown on SIGTERM.

use crate::config::{AuthMethod, Config};
use crate::config_sync::{self, SyncStatus};
use crate::fatal::Fatal;
use crate::inputs::{self, InputError, LoginInputs};
use crate::lifecycle::{Inputs, Lifecycle};
use crate::metrics::AgentMetrics;
use crate::state::AgentState;
use crate::status::StatusBoard;
use crate::vault::VaultClient;
use riskfeat_shared::atomic;
use riskfeat_shared::ca_file::CaFile;
use riskfeat_shared::fs_check;
use riskfeat_shared::layout::SharedDir;
use riskfeat_shared::pg_tls::PgTls;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;
use tokio::sync::watch;

/// Runs the agent on a current-thread runtime until SIGTERM/SIGINT.
pub fn run(cfg: Config) -> Result<(), Fatal> {
    // Before any secret is read: no core file, no ptrace of its memory.
    riskfeat_shared::no_core::disable_core_dumps().map_err(|e| Fatal::Runtime(e.to_string()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Fatal::Runtime(format!("cannot start the runtime: {e}")))?;
    rt.block_on(run_async(cfg))
}

fn input_fatal(e: InputError) -> Fatal {
    match e {
        InputError::Invalid { .. } => Fatal::Config(e.to_string()),
        _ => Fatal::Input(e.to_string()),
    }
}

/// Checks that the shared dir exists (creating it 0750 when missing) and is
/// memory-backed unless `allow_disk`.
pub fn check_shared_dir(cfg: &Config) -> Result<(), Fatal> {
    let dir = &cfg.shared_dir;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(|e| {
                Fatal::SharedDir(format!("shared dir {}: cannot create: {e}", dir.display()))
            })?;
    }
    let kind = fs_check::fs_kind(dir).map_err(|e| {
        Fatal::SharedDir(format!("shared dir {}: statfs failed: {e}", dir.display()))
    })?;
    if !kind.is_memory() {
        if cfg.allow_disk {
            tracing::warn!(dir = %dir.display(), fs = %kind, "shared dir is not memory-backed; credentials will reach a disk (allow_disk = true)");
        } else {
            return Err(Fatal::SharedDir(format!(
                "shared dir {} is on {kind}: refusing to write credentials to disk (mount a tmpfs/ramfs there, or set allow_disk = true)",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Removes what a killed agent's atomic writes left behind (a
/// `.db.json.tmp.*` holds a password): temp files of the files only the
/// agent writes (`db.json`, `agent-state.json`, `config/`,
/// `config-cache/`), never the worker's (`worker.json`).
fn remove_stale_temp_files(shared: &SharedDir) {
    let mine = |name: &str| matches!(name, "db.json" | "agent-state.json");
    let removed = [
        atomic::remove_temp_files(shared.root(), mine),
        atomic::remove_temp_files(&shared.config_dir(), |_| true),
        atomic::remove_temp_files(&shared.config_cache_dir(), |_| true),
    ];
    for path in removed.iter().flatten() {
        tracing::info!(path = %path.display(), "removed a temp file left by an interrupted write");
    }
}

/// AppRole's role_id and (unless the state file holds it) secret_id.
fn approle_inputs(cfg: &Config, state: &AgentState) -> Result<LoginInputs, Fatal> {
    let role_id = inputs::role_id(cfg.vault.role_id_file.as_deref()).map_err(input_fatal)?;
    let secret = if state.secret_id.is_some() {
        None
    } else {
        let path = cfg
            .vault
            .secret_id_file
            .as_deref()
            .ok_or_else(|| Fatal::Config("vault.secret_id_file is required".into()))?;
        Some(
            inputs::secret_id(
                path,
                cfg.vault.secret_id_wrapped,
                cfg.vault.delete_secret_id_after_read,
            )
            .map_err(input_fatal)?,
        )
    };
    Ok(LoginInputs::AppRole { role_id, secret })
}

async fn run_async(cfg: Config) -> Result<(), Fatal> {
    check_shared_dir(&cfg)?;
    crate::outputs::prepare(&cfg)?;
    let shared = SharedDir::new(cfg.shared_dir.clone());
    remove_stale_temp_files(&shared);
    let (state, state_problem) = AgentState::load_or_set_aside(&shared.agent_state());
    if let Some(problem) = &state_problem {
        tracing::error!(error = %problem, "starting without the previous agent state");
    }
    let login = match cfg.vault.auth.method {
        AuthMethod::AppRole => approle_inputs(&cfg, &state)?,
        // Read on every login: a projected token rotates.
        AuthMethod::Jwt | AuthMethod::Kubernetes => LoginInputs::ServiceAccountToken,
    };
    let fallback = match &cfg.fallback {
        Some(f) => Some(inputs::fallback(&f.file).map_err(input_fatal)?),
        None => None,
    };

    // Each CA file is read once here; later changes load through CaFile.
    let (pg_tls, pg_ca) = match cfg.database.ca_file.as_deref() {
        None => (
            PgTls::new("database.ca_file", None).map_err(|e| Fatal::Config(e.to_string()))?,
            None,
        ),
        Some(path) => {
            let bytes = inputs::read_ca("database.ca_file", path).map_err(input_fatal)?;
            let tls = PgTls::from_pem("database.ca_file", path, &bytes)
                .map_err(|e| Fatal::Config(e.to_string()))?;
            let file = CaFile::new("database.ca_file", path, bytes, tls.clone());
            (tls, Some(file))
        }
    };
    let vault_ca = match &cfg.vault.ca_cert_file {
        Some(path) => Some(inputs::load_ca(inputs::VAULT_CA, path).map_err(input_fatal)?),
        None => None,
    };
    let configd_ca = match cfg.configd.as_ref().and_then(|c| c.ca_file.as_deref()) {
        Some(path) => Some(inputs::load_ca("configd.ca_file", path).map_err(input_fatal)?),
        None => None,
    };

    let metrics = AgentMetrics::new();
    let vault = VaultClient::new(
        &cfg.vault.addr,
        cfg.request_timeout(),
        Some(metrics.vault_request_duration.clone()),
        vault_ca.as_ref().map_or(&[][..], |ca| &ca.certs[..]),
    )
    .map_err(|e| Fatal::Runtime(e.to_string()))?
    .with_namespace(cfg.vault.namespace.clone());
    let vault = match vault_ca {
        Some(ca) => vault.reload_ca_from(&ca.path, ca.bytes),
        None => vault,
    };
    let sync_status = cfg.configd.as_ref().map(|_| Arc::new(SyncStatus::new()));
    let board = Arc::new(StatusBoard::new(
        cfg.lifecycle.ready_min_remaining_s,
        sync_status.clone(),
    ));

    // `stop` ends the lifecycle (signal); `servers_stop` ends the servers
    // once the lifecycle has finished revoking.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (servers_tx, servers_rx) = watch::channel(false);
    let wait = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let socket = cfg.socket_path();
    let listener = riskfeat_shared::health::bind(&socket).map_err(|e| {
        Fatal::Runtime(format!(
            "health socket {}: cannot bind: {e}",
            socket.display()
        ))
    })?;
    let health = tokio::spawn(riskfeat_shared::health::serve(
        listener,
        socket.clone(),
        board.clone(),
        wait(servers_rx.clone()),
    ));
    let addr: SocketAddr = cfg
        .metrics_addr
        .parse()
        .map_err(|_| Fatal::Config(format!("metrics_addr {:?} is invalid", cfg.metrics_addr)))?;
    let (bound, metrics_task) =
        riskfeat_shared::metrics::serve(addr, metrics.registry.clone(), wait(servers_rx.clone()))
            .await
            .map_err(|e| Fatal::Runtime(format!("metrics listener {addr}: cannot bind: {e}")))?;
    board.set_metrics_addr(bound.to_string());
    tracing::info!(socket = %socket.display(), metrics = %bound, shared_dir = %cfg.shared_dir.display(), "riskfeat-agent started");

    let sync_task = match (&cfg.configd, &sync_status) {
        (Some(settings), Some(status)) => Some(tokio::spawn(config_sync::run(
            settings.clone(),
            shared.clone(),
            status.clone(),
            metrics.registry.clone(),
            configd_ca,
            stop_rx.clone(),
        ))),
        _ => None,
    };

    tokio::spawn(async move {
        let signal = riskfeat_shared::signal::shutdown_signal().await;
        tracing::info!("{signal}: shutting down");
        let _ = stop_tx.send(true);
    });

    let cfg = Arc::new(cfg);
    let lifecycle = Lifecycle::new(
        cfg.clone(),
        vault,
        metrics,
        board,
        Inputs {
            login,
            fallback,
            state,
            pg_tls,
            pg_ca,
            state_problem,
        },
        stop_rx,
    );
    let result = lifecycle.run().await;
    if let Some(t) = sync_task {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), t).await;
    }
    let _ = servers_tx.send(true);
    let _ = health.await;
    let _ = metrics_task.await;
    let _ = std::fs::remove_file(&socket);
    if result.is_ok() {
        tracing::info!("riskfeat-agent stopped");
    }
    result
}
