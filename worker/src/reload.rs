//! One code path for start-up and every reload: read `db.json` and
//! `config/<namespace>.json`, and apply what changed.
//!
//! Credential: a new generation gets new pools, filled and validated against
//! the replica before they are swapped in; the old pools drain (requests
//! hold them by `Arc`) and are closed. A file that cannot be read or parsed,
//! or a credential that cannot log in, never replaces working pools: the
//! error is kept for `/status`, counted, and the credential is retried with
//! backoff (the role may not have reached the replica yet). A generation
//! lower than the one in use is refused (logged, counted as
//! `credential_failures_total{reason="older_generation"}`). After a swap,
//! `worker.json` tells the agent which generation is in use.
//!
//! Config: a valid file replaces the parameters for the next request; an
//! invalid one is logged once, counted, and the last good stays.
//!
//! CA: when `database_ca_file` changes (a CA rotation through a ConfigMap)
//! and parses, the current credential's pools are rebuilt with it, through
//! the same build-validate-swap path; a CA that does not verify the server
//! leaves the working pools in place. An unusable file keeps the CA in use.

use crate::app::{App, LastError};
use crate::params::FeatureParams;
use crate::pool::DbPools;
use crate::watch::DirWatch;
use riskfeat_shared::ack::WorkerAck;
use riskfeat_shared::atomic::{write_json_atomic, WriteOptions};
use riskfeat_shared::ca_file::CaFile;
use riskfeat_shared::config_file::ConfigSnapshot;
use riskfeat_shared::creds::DbCredential;
use riskfeat_shared::pg_tls::PgTls;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// State of the reload loop between turns.
#[derive(Default)]
struct Seen {
    db_bytes: Option<Vec<u8>>,
    config_bytes: Option<Vec<u8>>,
    /// A credential that failed to log in: retry it at this instant.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// `database_ca_file`, read again every turn.
    ca: Option<CaFile<PgTls>>,
    /// The pools must be rebuilt although the credential did not change
    /// (a new CA): cleared by the next successful swap.
    rebuild: bool,
}

/// Runs until `shutdown` fires. The first turn runs at once.
/// `ca` is `database_ca_file` as run.rs loaded it at start.
pub async fn run(
    app: Arc<App>,
    ca: Option<CaFile<PgTls>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let (tx, mut rx) = mpsc::channel(1);
    let mut watch = DirWatch::new(
        app.cfg.shared_dir.clone(),
        app.layout.config_dir(),
        tx.clone(),
    );
    let mut seen = Seen {
        backoff: Duration::from_millis(app.cfg.retry_initial_ms),
        ca,
        ..Default::default()
    };
    let recheck = Duration::from_millis(app.cfg.recheck_interval_ms);
    loop {
        app.beat();
        watch.ensure();
        reconcile(&app, &mut seen).await;
        let mut wait = recheck;
        if let Some(at) = seen.retry_at {
            wait = wait.min(at.saturating_duration_since(Instant::now()));
        }
        tokio::select! {
            _ = rx.recv() => {
                // Let a burst of events (temp file, rename) settle.
                tokio::time::sleep(Duration::from_millis(5)).await;
                while rx.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One turn: CA, credential, then config.
async fn reconcile(app: &Arc<App>, seen: &mut Seen) {
    reconcile_ca(app, seen);
    reconcile_credential(app, seen).await;
    reconcile_config(app, seen);
}

/// Loads `database_ca_file` again when its bytes changed (see [`CaFile`]);
/// a usable one replaces the TLS of new pools and asks for a rebuild, an
/// unusable one keeps the CA in use and is named in `/status`.
fn reconcile_ca(app: &App, seen: &mut Seen) {
    let Some(file) = &mut seen.ca else {
        return;
    };
    let refreshed = file.refresh(|path, bytes| {
        PgTls::from_pem("database_ca_file", path, bytes).map_err(|e| e.to_string())
    });
    match refreshed {
        Some(Ok(())) => {
            app.pg_tls.store(Arc::new(file.value().clone()));
            seen.rebuild = true;
            seen.retry_at = None;
            tracing::info!("database_ca_file changed; rebuilding the pools with it");
        }
        Some(Err(why)) => {
            App::set_error(&app.credential_error, Some(LastError::now(why, None)));
        }
        None => {}
    }
}

async fn reconcile_credential(app: &Arc<App>, seen: &mut Seen) {
    let path = app.layout.db_json();
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            if app.pools.load().is_none() {
                let msg = if e.kind() == std::io::ErrorKind::NotFound {
                    format!("waiting for {} (not published yet)", path.display())
                } else {
                    format!("{}: cannot read: {e}", path.display())
                };
                App::set_error(&app.credential_error, Some(LastError::now(msg, None)));
            }
            return;
        }
    };
    app.db_json_seen.store(true, Ordering::Relaxed);
    let retry_due = seen.retry_at.is_some_and(|t| Instant::now() >= t);
    if seen.db_bytes.as_deref() == Some(&bytes[..]) && !retry_due && !seen.rebuild {
        return;
    }
    let new_bytes = seen.db_bytes.as_deref() != Some(&bytes[..]);
    if new_bytes {
        // A new file: a new credential gets a fresh backoff.
        seen.backoff = Duration::from_millis(app.cfg.retry_initial_ms);
    }
    seen.db_bytes = Some(bytes.clone());
    let cred = match DbCredential::from_slice(&path.display().to_string(), &bytes) {
        Ok(c) => c,
        Err(e) => {
            // Same bytes will not parse better later: wait for a new file.
            seen.retry_at = None;
            let reason = match e {
                riskfeat_shared::creds::CredentialError::Parse { .. } => "parse",
                _ => "invalid",
            };
            app.metrics
                .credential_failures
                .with_label_values(&[reason])
                .inc();
            tracing::error!(error = %e, "rejected db.json; keeping the pool in use");
            App::set_error(
                &app.credential_error,
                Some(LastError::now(e.to_string(), None)),
            );
            return;
        }
    };
    if let Some(cur) = app.pools.load().as_ref() {
        if cred.generation < cur.generation {
            // Generations only grow: a lower one is an older credential
            // (an agent that came back with an older state, or a stray
            // copy), whose lease may already be revoked.
            seen.retry_at = None;
            app.metrics
                .credential_failures
                .with_label_values(&["older_generation"])
                .inc();
            let msg = format!(
                "{}: generation {} is older than generation {} in use; refused",
                path.display(),
                cred.generation,
                cur.generation
            );
            tracing::error!(error = %msg, "rejected db.json; keeping the pool in use");
            App::set_error(
                &app.credential_error,
                Some(LastError::now(msg, Some(cred.generation))),
            );
            return;
        }
    }
    if let Some(cur) = app.pools.load().as_ref().filter(|_| !seen.rebuild) {
        if cur.generation == cred.generation
            && cur.username == cred.username
            && cur.replica_endpoint == cred.replica
            && cur.fallback == cred.fallback
        {
            // A renewal (new expiry) or a rewrite: nothing to rebuild.
            app.fallback.store(cred.fallback, Ordering::Relaxed);
            app.metrics.credential_fallback.set(cred.fallback as i64);
            seen.retry_at = None;
            if new_bytes {
                App::set_error(&app.credential_error, None);
            }
            return;
        }
    }
    let started = Instant::now();
    let pools = build_and_validate(app, &cred).await;
    let pools = match pools {
        Ok(p) => p,
        Err((reason, msg)) => {
            app.metrics
                .credential_failures
                .with_label_values(&[reason])
                .inc();
            if reason == "source" {
                tracing::error!(
                    generation = cred.generation,
                    error = %msg,
                    "the [source] mapping does not match what this credential sees"
                );
                App::set_error(
                    &app.source_error,
                    Some(LastError::now(msg.clone(), Some(cred.generation))),
                );
            }
            let keeping = app
                .pools
                .load()
                .as_ref()
                .map(|p| format!("keeping generation {}", p.generation))
                .unwrap_or_else(|| "no pool yet".into());
            tracing::warn!(
                generation = cred.generation,
                error = %msg,
                retry_in_ms = seen.backoff.as_millis() as u64,
                "new credential does not work on the replica; {keeping}"
            );
            App::set_error(
                &app.credential_error,
                Some(LastError::now(
                    format!("generation {}: {msg}", cred.generation),
                    Some(cred.generation),
                )),
            );
            seen.retry_at = Some(Instant::now() + seen.backoff);
            seen.backoff = (seen.backoff * 2).min(Duration::from_millis(app.cfg.retry_max_ms));
            return;
        }
    };
    seen.retry_at = None;
    seen.backoff = Duration::from_millis(app.cfg.retry_initial_ms);
    seen.rebuild = false;
    let generation = cred.generation;
    app.metrics.pool_max_size.set(pools.max_size() as i64);
    let old = app.pools.swap(Some(Arc::new(pools)));
    app.fallback.store(cred.fallback, Ordering::Relaxed);
    app.metrics.credential_fallback.set(cred.fallback as i64);
    app.metrics.credential_generation.set(generation as i64);
    app.metrics.credential_swaps.inc();
    App::set_error(&app.credential_error, None);
    App::set_error(&app.source_error, None);
    tracing::info!(
        generation,
        old_generation = old.as_ref().map(|o| o.generation),
        fallback = cred.fallback,
        took_ms = started.elapsed().as_millis() as u64,
        "swapped in the pool of a new credential"
    );
    if let Some(old) = old {
        spawn_drain(app.clone(), old);
    }
    write_ack(app);
}

/// Builds the pools of `cred` and proves they work (every replica
/// connection of the pool open, the `[source]` mapping, a bounded wait)
/// before anything is swapped; on
/// failure nothing is kept. The error comes with its metric reason
/// (`connect`, or `source` for a mapping that does not fit).
async fn build_and_validate(
    app: &Arc<App>,
    cred: &DbCredential,
) -> Result<DbPools, (&'static str, String)> {
    let tls = app.pg_tls.load_full();
    let pools =
        DbPools::new(cred, &app.pool_settings, &tls).map_err(|e| ("connect", e.to_string()))?;
    let warm = pools.max_size();
    let validated = tokio::time::timeout(
        app.pool_settings.validate_budget(warm),
        pools.validate(warm),
    )
    .await;
    let err = match validated {
        Ok(Ok(())) => return Ok(pools),
        Ok(Err(e @ crate::pool::DbError::Source(_))) => ("source", e.to_string()),
        Ok(Err(e)) => ("connect", e.to_string()),
        Err(_) => ("connect", "validation timed out".to_string()),
    };
    pools.close();
    Err(err)
}

/// Waits for requests still using `old` to finish (bounded by
/// `drain_timeout_s`), then closes its connections.
fn spawn_drain(app: Arc<App>, old: Arc<DbPools>) {
    app.metrics.pools_draining.inc();
    tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(app.cfg.drain_timeout_s);
        while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        old.close();
        let generation = old.generation;
        let forced = Arc::strong_count(&old) > 1;
        drop(old);
        app.metrics.pools_draining.dec();
        tracing::info!(generation, forced, "closed the pool of an old credential");
    });
}

fn reconcile_config(app: &Arc<App>, seen: &mut Seen) {
    let ns = &app.cfg.namespace;
    let path = app.layout.config_json(ns);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            if seen.config_bytes.is_some() {
                return;
            }
            let msg = format!("{}: cannot read: {e}", path.display());
            App::set_error(&app.config_error, Some(LastError::now(msg, None)));
            return;
        }
    };
    if seen.config_bytes.as_deref() == Some(&bytes[..]) {
        return;
    }
    seen.config_bytes = Some(bytes.clone());
    let result = serde_json::from_slice::<ConfigSnapshot>(&bytes)
        .map_err(|e| format!("{}: not a valid config file: {e}", path.display()))
        .and_then(|snap| {
            if &snap.namespace != ns {
                return Err(format!(
                    "{}: namespace is {:?}, expected {ns:?}",
                    path.display(),
                    snap.namespace
                ));
            }
            FeatureParams::from_snapshot(&snap).map_err(|e| format!("{}: {e}", path.display()))
        });
    match result {
        Ok((params, unknown)) => {
            if !unknown.is_empty() {
                tracing::warn!(namespace = %ns, keys = ?unknown, "ignoring config keys this worker does not know");
            }
            let version = params.version;
            let changed = **app.params.load() != params;
            app.params.store(Arc::new(params));
            app.metrics.config_version.set(version as i64);
            app.metrics.config_reloads.with_label_values(&["ok"]).inc();
            App::set_error(&app.config_error, None);
            if changed {
                tracing::info!(namespace = %ns, version, "feature config applied");
            }
            write_ack(app);
        }
        Err(msg) => {
            app.metrics
                .config_reloads
                .with_label_values(&["rejected"])
                .inc();
            tracing::error!(error = %msg, kept_version = app.params.load().version, "rejected feature config; keeping the last good one");
            App::set_error(&app.config_error, Some(LastError::now(msg, None)));
        }
    }
}

/// Publishes `worker.json` (only once a pool is in use).
fn write_ack(app: &App) {
    let Some(generation) = app.pools.load().as_ref().map(|p| p.generation) else {
        return;
    };
    let mut config_versions = BTreeMap::new();
    config_versions.insert(app.cfg.namespace.clone(), app.params.load().version);
    let ack = WorkerAck {
        generation,
        pid: std::process::id(),
        updated_at: chrono::Utc::now(),
        config_versions,
    };
    if let Err(e) = write_json_atomic(&app.layout.worker_ack(), &ack, WriteOptions::SHARED) {
        tracing::error!(error = %e, "cannot write worker.json");
    }
}
