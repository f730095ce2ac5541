//! Config sync with riskfeat-configd: long-polls the configured namespaces
//! (`POST /v1/watch`), fetches what changed (`GET /changes?from=V`: the
//! operations after V, or a full snapshot when V is 0 or compacted away),
//! applies it to a local copy and publishes `config/<namespace>.json`
//! atomically (0640) only when something changed.
//!
//! The last known config of every namespace is also kept in
//! `config-cache/<namespace>.json` (0600, agent-private): on start it is
//! published before configd is even asked, so a restart while configd is
//! down still gives the worker its config. Errors back off exponentially
//! with jitter; versions and errors go to `/status` and metrics. Every
//! request carries the client id and labels, and every watch a report of
//! what was applied ([`crate::config_identity`]).

use crate::config::ConfigdSettings as Settings;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use rand::Rng;
use riskfeat_shared::atomic::{write_json_atomic, WriteOptions};
use riskfeat_shared::ca_file::CaFile;
use riskfeat_shared::config_file::ConfigSnapshot;
use riskfeat_shared::layout::SharedDir;
use riskfeat_shared::Secret;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the sync loop reports to `/status` and metrics.
#[derive(Debug, Default)]
pub struct SyncStatus {
    inner: Mutex<SyncState>,
}

#[derive(Debug, Default, Clone, Serialize)]
struct SyncState {
    /// Published version per namespace.
    versions: BTreeMap<String, u64>,
    /// Where each namespace's published config came from: `configd` or
    /// `cache` (last known, configd not reached yet).
    sources: BTreeMap<String, String>,
    /// Last error per namespace (cleared on success).
    errors: BTreeMap<String, String>,
    /// Last error of the sync loop as a whole (cleared on success).
    last_error: Option<String>,
    /// Whether the last request to configd succeeded.
    connected: bool,
    /// Why a changed `configd.ca_file` was not loaded (cleared when a
    /// version of the file loads); the CA in use stays.
    ca_error: Option<String>,
}

impl SyncStatus {
    /// An empty status.
    pub fn new() -> Self {
        Self::default()
    }

    /// The status as JSON for `/status` (never a token).
    pub fn to_json(&self) -> serde_json::Value {
        let state = self.inner.lock().expect("sync status lock").clone();
        serde_json::to_value(state).unwrap_or(serde_json::Value::Null)
    }

    fn update(&self, f: impl FnOnce(&mut SyncState)) {
        f(&mut self.inner.lock().expect("sync status lock"));
    }
}

struct Metrics {
    version: IntGaugeVec,
    updates: IntCounterVec,
    errors: IntCounterVec,
    bytes: IntCounterVec,
}

impl Metrics {
    fn new(registry: &prometheus::Registry) -> Metrics {
        fn reg<T: prometheus::core::Collector + Clone + 'static>(
            r: &prometheus::Registry,
            c: T,
        ) -> T {
            let _ = r.register(Box::new(c.clone()));
            c
        }
        Metrics {
            version: reg(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "riskfeat_agent_config_version",
                        "configd version published per namespace",
                    ),
                    &["config_namespace"],
                )
                .expect("metric"),
            ),
            updates: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "riskfeat_agent_config_updates_total",
                        "config/<ns>.json publishes by kind (snapshot, incremental, cache)",
                    ),
                    &["config_namespace", "kind"],
                )
                .expect("metric"),
            ),
            errors: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "riskfeat_agent_config_sync_errors_total",
                        "Failed configd requests by kind",
                    ),
                    &["kind"],
                )
                .expect("metric"),
            ),
            bytes: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "riskfeat_agent_config_downloaded_bytes_total",
                        "Bytes downloaded from configd (on the wire) by kind",
                    ),
                    &["kind"],
                )
                .expect("metric"),
            ),
        }
    }
}

/// A failed exchange with configd.
#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error("token file {path}: {message}")]
    Token { path: String, message: String },
    /// With the whole cause chain: "error sending request" alone does not
    /// say that the certificate was refused or the connection reset.
    #[error("configd unreachable: {}", riskfeat_shared::telemetry::error_chain(.0))]
    Http(#[from] reqwest::Error),
    #[error("configd answered {status}: {message}")]
    Status {
        status: u16,
        field: Option<String>,
        message: String,
    },
    #[error("configd sent an invalid body: {0}")]
    Body(String),
    /// A changed `configd.ca_file` that does not load (the CA in use stays).
    #[error("{0}")]
    Ca(String),
    #[error("{0}")]
    Write(#[from] riskfeat_shared::atomic::AtomicWriteError),
}

impl SyncError {
    fn kind(&self) -> &'static str {
        match self {
            SyncError::Token { .. } => "token",
            SyncError::Http(_) => "http",
            SyncError::Status { .. } => "status",
            SyncError::Body(_) => "body",
            SyncError::Ca(_) => "ca",
            SyncError::Write(_) => "write",
        }
    }
}

/// The local copy of one namespace.
#[derive(Debug, Clone, Default, PartialEq)]
struct Local {
    version: u64,
    items: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct ChangesBody {
    to: u64,
    snapshot: bool,
    #[serde(default)]
    items: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    ops: Option<Vec<OpBody>>,
}

#[derive(Deserialize)]
struct OpBody {
    op: String,
    key: String,
    #[serde(default)]
    value: serde_json::Value,
}

struct Syncer {
    settings: Settings,
    shared: SharedDir,
    status: Arc<SyncStatus>,
    metrics: Metrics,
    http: reqwest::Client,
    /// `configd.ca_file`, read again before every round.
    ca: Option<CaFile<reqwest::Client>>,
    locals: BTreeMap<String, Local>,
}

/// The HTTP client, trusting only `ca` when it is not empty.
fn http_client(
    settings: &Settings,
    ca: &[reqwest::Certificate],
) -> Result<reqwest::Client, reqwest::Error> {
    let builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(settings.poll_timeout_s + 60));
    crate::inputs::trust_only(builder, ca).build()
}

async fn error_of(resp: reqwest::Response) -> SyncError {
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    SyncError::Status {
        status,
        field: body["error"]["field"].as_str().map(str::to_string),
        message: body["error"]["message"]
            .as_str()
            .unwrap_or("(no message)")
            .to_string(),
    }
}

impl Syncer {
    fn token(&self) -> Result<Secret, SyncError> {
        let path = &self.settings.token_file;
        let err = |message: String| SyncError::Token {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let t = text.trim();
        if t.is_empty() {
            return Err(err("empty".into()));
        }
        Ok(Secret::new(t))
    }

    fn cache_path(&self, ns: &str) -> PathBuf {
        self.shared.config_cache_dir().join(format!("{ns}.json"))
    }

    /// Publishes `local` for `ns` (config file, then private cache).
    fn publish(&mut self, ns: &str, local: Local, kind: &str) -> Result<(), SyncError> {
        let snap = ConfigSnapshot {
            namespace: ns.to_string(),
            version: local.version,
            items: local.items.clone(),
        };
        let outcome = write_json_atomic(&self.shared.config_json(ns), &snap, WriteOptions::SHARED)?;
        write_json_atomic(&self.cache_path(ns), &snap, WriteOptions::PRIVATE)?;
        if outcome == riskfeat_shared::atomic::WriteOutcome::Written {
            tracing::info!(
                namespace = ns,
                version = local.version,
                kind,
                "config published"
            );
            self.metrics.updates.with_label_values(&[ns, kind]).inc();
        }
        self.metrics
            .version
            .with_label_values(&[ns])
            .set(local.version as i64);
        let source = if kind == "cache" { "cache" } else { "configd" };
        self.status.update(|s| {
            s.versions.insert(ns.to_string(), local.version);
            s.sources.insert(ns.to_string(), source.to_string());
            if source == "configd" {
                s.errors.remove(ns);
            }
        });
        self.locals.insert(ns.to_string(), local);
        Ok(())
    }

    /// Publishes the last known config of every namespace, if any.
    fn restore_cache(&mut self) {
        for ns in self.settings.namespaces.clone() {
            let path = self.cache_path(&ns);
            if !path.exists() {
                continue;
            }
            match ConfigSnapshot::load(&path) {
                Ok(s) if s.namespace == ns => {
                    let local = Local {
                        version: s.version,
                        items: s.items,
                    };
                    if let Err(e) = self.publish(&ns, local, "cache") {
                        tracing::warn!(namespace = %ns, error = %e, "cannot publish the cached config");
                    }
                }
                Ok(_) => {
                    tracing::warn!(path = %path.display(), "cached config is for another namespace; ignored")
                }
                Err(e) => tracing::warn!(error = %e, "cached config unreadable; ignored"),
            }
        }
    }

    /// Fetches and applies the changes of `ns` after the local version.
    async fn fetch(&mut self, ns: &str, token: &Secret) -> Result<(), SyncError> {
        let local = self.locals.get(ns).cloned().unwrap_or_default();
        let mut from = local.version;
        let resp = loop {
            let resp = self
                .http
                .get(format!(
                    "{}/v1/namespaces/{ns}/changes?from={from}",
                    self.settings.addr.trim_end_matches('/')
                ))
                .bearer_auth(token.expose())
                .headers(crate::config_identity::headers(&self.settings))
                .header(reqwest::header::ACCEPT_ENCODING, "gzip")
                .send()
                .await?;
            if resp.status() == reqwest::StatusCode::BAD_REQUEST && from > 0 {
                // Our version is ahead of configd (its database was restored
                // or recreated): start over from a snapshot.
                let e = error_of(resp).await;
                tracing::warn!(namespace = ns, from, error = %e, "local version ahead of configd; taking a snapshot");
                from = 0;
                continue;
            }
            if !resp.status().is_success() {
                return Err(error_of(resp).await);
            }
            break resp;
        };
        let gz = resp
            .headers()
            .get(reqwest::header::CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
        let raw = resp.bytes().await?;
        let body = if gz {
            let mut out = Vec::with_capacity(raw.len() * 4);
            flate2::read::GzDecoder::new(&raw[..])
                .read_to_end(&mut out)
                .map_err(|e| SyncError::Body(format!("gzip: {e}")))?;
            out
        } else {
            raw.to_vec()
        };
        let parsed: ChangesBody =
            serde_json::from_slice(&body).map_err(|e| SyncError::Body(e.to_string()))?;
        let mut next = if from == local.version {
            local.clone()
        } else {
            Local::default()
        };
        let kind = if parsed.snapshot {
            next.items = parsed
                .items
                .ok_or_else(|| SyncError::Body("snapshot without items".into()))?;
            self.metrics
                .bytes
                .with_label_values(&["snapshot"])
                .inc_by(raw.len() as u64);
            "snapshot"
        } else {
            for op in parsed.ops.unwrap_or_default() {
                match op.op.as_str() {
                    "upsert" => {
                        next.items.insert(op.key, op.value);
                    }
                    "delete" => {
                        next.items.remove(&op.key);
                    }
                    other => return Err(SyncError::Body(format!("unknown op {other:?}"))),
                }
            }
            self.metrics
                .bytes
                .with_label_values(&["incremental"])
                .inc_by(raw.len() as u64);
            "incremental"
        };
        next.version = parsed.to;
        let first = self
            .status
            .inner
            .lock()
            .expect("sync status lock")
            .sources
            .get(ns)
            .is_none_or(|s| s != "configd");
        if next != local || first {
            self.publish(ns, next, kind)?;
        }
        Ok(())
    }

    /// One round: fetch what is missing, then one long-poll.
    async fn round(&mut self, synced: &mut BTreeSet<String>) -> Result<(), SyncError> {
        let token = self.token()?;
        let mut first_error = None;
        for ns in self.settings.namespaces.clone() {
            if synced.contains(&ns) {
                continue;
            }
            match self.fetch(&ns, &token).await {
                Ok(()) => {
                    synced.insert(ns.clone());
                }
                Err(e) => {
                    self.note_error(Some(&ns), &e);
                    if matches!(e, SyncError::Http(_)) {
                        return Err(e);
                    }
                    first_error.get_or_insert(e);
                }
            }
        }
        self.status.update(|s| s.connected = true);
        if synced.is_empty() {
            return Err(first_error.expect("some namespace failed"));
        }
        // Namespaces that failed (e.g. not created yet) are retried soon.
        let timeout = if synced.len() < self.settings.namespaces.len() {
            self.settings.poll_timeout_s.min(5)
        } else {
            self.settings.poll_timeout_s
        };
        let watch: BTreeMap<&str, u64> = synced
            .iter()
            .map(|ns| (ns.as_str(), self.locals.get(ns).map_or(0, |l| l.version)))
            .collect();
        let applied = watch.iter().map(|(ns, v)| (ns.to_string(), *v)).collect();
        let report = crate::config_identity::report(&self.shared, &applied).await;
        let resp = self
            .http
            .post(format!(
                "{}/v1/watch",
                self.settings.addr.trim_end_matches('/')
            ))
            .bearer_auth(token.expose())
            .headers(crate::config_identity::headers(&self.settings))
            .timeout(Duration::from_secs(timeout + 15))
            .json(&serde_json::json!({"namespaces": watch, "timeout_s": timeout, "report": report}))
            .send()
            .await?;
        match resp.status().as_u16() {
            304 => {}
            200 => {
                let body: serde_json::Value = resp
                    .json()
                    .await
                    .map_err(|e| SyncError::Body(e.to_string()))?;
                if let Some(changed) = body["changed"].as_object() {
                    for ns in changed.keys() {
                        synced.remove(ns);
                    }
                }
            }
            _ => {
                let e = error_of(resp).await;
                if let SyncError::Status { field: Some(f), .. } = &e {
                    if let Some(ns) = f.strip_prefix("namespaces.") {
                        // That namespace is gone or out of date: refetch it.
                        synced.remove(ns);
                        self.note_error(Some(ns), &e);
                        return Ok(());
                    }
                }
                return Err(e);
            }
        }
        if first_error.is_none() {
            self.status.update(|s| s.last_error = None);
        }
        Ok(())
    }

    /// Takes the client from `configd.ca_file` as it is now (a CA rotation
    /// through the mounted ConfigMap needs no restart, see [`CaFile`]). A
    /// changed file that does not load keeps the CA in use; its error is
    /// `ca_error` in `/status` until a version of the file loads.
    fn reload_ca(&mut self) {
        let Some(file) = &mut self.ca else {
            return;
        };
        let settings = &self.settings;
        self.http = file.current(|path, bytes| {
            let ca = crate::inputs::ca_bundle_pem("configd.ca_file", path, bytes)
                .map_err(|e| e.to_string())?;
            http_client(settings, &ca).map_err(|e| riskfeat_shared::telemetry::error_chain(&e))
        });
        let error = file.error().map(str::to_string);
        let mut new_error = None;
        self.status.update(|s| {
            if s.ca_error != error {
                new_error.clone_from(&error);
                s.ca_error.clone_from(&error);
            }
        });
        if let Some(e) = new_error {
            self.note_error(None, &SyncError::Ca(e));
        }
    }

    fn note_error(&self, ns: Option<&str>, e: &SyncError) {
        self.metrics.errors.with_label_values(&[e.kind()]).inc();
        let text = e.to_string();
        self.status.update(|s| {
            if let Some(ns) = ns {
                s.errors.insert(ns.to_string(), text.clone());
            }
            if matches!(e, SyncError::Http(_)) {
                s.connected = false;
            }
            s.last_error = Some(text);
        });
    }
}

/// Runs the sync loop until `shutdown` turns true.
pub async fn run(
    settings: Settings,
    shared: SharedDir,
    status: Arc<SyncStatus>,
    registry: prometheus::Registry,
    ca: Option<crate::inputs::LoadedCa>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    for dir in [shared.config_dir(), shared.config_cache_dir()] {
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::error!(dir = %dir.display(), error = %e, "cannot create config directory");
        }
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(
            shared.config_cache_dir(),
            std::fs::Permissions::from_mode(0o700),
        );
        let _ =
            std::fs::set_permissions(shared.config_dir(), std::fs::Permissions::from_mode(0o750));
    }
    let certs = ca.as_ref().map_or(&[][..], |c| &c.certs[..]);
    let http = match http_client(&settings, certs) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client; config sync disabled");
            return;
        }
    };
    // Loaded and checked at start (run.rs); later changes load in rounds.
    let ca = ca.map(|c| CaFile::new("configd.ca_file", &c.path, c.bytes, http.clone()));
    let mut s = Syncer {
        metrics: Metrics::new(&registry),
        settings,
        shared,
        status,
        http,
        ca,
        locals: BTreeMap::new(),
    };
    s.restore_cache();
    let initial = Duration::from_secs_f64(s.settings.backoff_initial_s);
    let max = Duration::from_secs_f64(s.settings.backoff_max_s);
    let mut backoff = initial;
    let mut synced = BTreeSet::new();
    let mut last_logged: Option<(String, std::time::Instant)> = None;
    loop {
        s.reload_ca();
        let result = tokio::select! {
            r = s.round(&mut synced) => r,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        match result {
            Ok(()) => backoff = initial,
            Err(e) => {
                s.note_error(None, &e);
                let text = e.to_string();
                // Log a repeated error at most every 30 s.
                let quiet = last_logged
                    .as_ref()
                    .is_some_and(|(t, at)| *t == text && at.elapsed() < Duration::from_secs(30));
                if !quiet {
                    tracing::warn!(error = %text, retry_in_ms = backoff.as_millis() as u64, "config sync failed");
                    last_logged = Some((text, std::time::Instant::now()));
                }
                synced.clear();
                let jitter = rand::rng().random_range(0.5..1.0);
                let wait = backoff.mul_f64(jitter);
                backoff = (backoff * 2).min(max);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn settings() -> Settings {
        Settings {
            addr: "http://127.0.0.1:1".into(),
            token_file: "/nonexistent".into(),
            namespaces: vec!["features".into()],
            poll_timeout_s: 30,
            backoff_initial_s: 0.5,
            backoff_max_s: 30.0,
            ca_file: None,
            client_id: None,
            labels: Default::default(),
            labels_file: None,
        }
    }

    #[tokio::test]
    async fn the_last_known_config_is_published_at_start_without_configd() {
        let dir = tempfile::tempdir().unwrap();
        let shared = SharedDir::new(dir.path());
        std::fs::create_dir_all(shared.config_cache_dir()).unwrap();
        let cached = ConfigSnapshot {
            namespace: "features".into(),
            version: 4,
            items: [("lookback".to_string(), serde_json::json!(7))].into(),
        };
        write_json_atomic(
            &shared.config_cache_dir().join("features.json"),
            &cached,
            WriteOptions::PRIVATE,
        )
        .unwrap();
        let status = Arc::new(SyncStatus::new());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let registry = prometheus::Registry::new();
        let task = tokio::spawn(run(
            settings(),
            shared.clone(),
            status.clone(),
            registry,
            None,
            stop_rx,
        ));
        let published = shared.config_json("features");
        for _ in 0..100 {
            if published.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(ConfigSnapshot::load(&published).unwrap(), cached);
        let mode = std::fs::metadata(&published).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let cache_mode = std::fs::metadata(shared.config_cache_dir())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(cache_mode, 0o700);
        // The token file is missing: the error is reported, the config stays.
        for _ in 0..100 {
            if status.to_json()["last_error"].is_string() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let st = status.to_json();
        assert_eq!(st["versions"]["features"], 4, "{st}");
        assert_eq!(st["sources"]["features"], "cache", "{st}");
        assert!(
            st["last_error"].as_str().unwrap().contains("token file"),
            "{st}"
        );
        assert_eq!(ConfigSnapshot::load(&published).unwrap(), cached);
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}
