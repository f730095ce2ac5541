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
//! with jitter, per namespace too (a namespace configd refuses is retried
//! later, not at every round); versions and errors go to `/status` and
//! metrics. Every request carries the client id and labels, and every
//! watch a report of what was applied ([`crate::config_identity`]).
//!
//! Bounded inputs: answers are read with a cap ([`body`]), a namespace
//! larger than `max_namespace_bytes` is neither published nor cached (nor
//! re-published from an older, larger cache), and the version of a
//! namespace never goes backwards: a configd replica behind the agent
//! (its cache has not seen the latest publish yet) is skipped with backoff.
//! Each refusal keeps the last good config and is reported in `/status`,
//! the log and `riskfeat_agent_config_rejected_total`.

mod body;
mod metrics;

use crate::config::ConfigdSettings as Settings;
use crate::lifecycle::retry::{backoff_delay, Retry};
use metrics::Metrics;
use riskfeat_shared::atomic::{json_bytes, write_atomic, WriteOptions};
use riskfeat_shared::ca_file::CaFile;
use riskfeat_shared::config_file::ConfigSnapshot;
use riskfeat_shared::layout::SharedDir;
use riskfeat_shared::Secret;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
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
    /// Consecutive failures per namespace, each followed by a backoff
    /// before that namespace is asked again (cleared on success).
    failures: BTreeMap<String, u32>,
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
    /// Over `configd.<key>`: not read further, not published.
    #[error("{what} is larger than configd.{key} = {limit} bytes; keeping the last good config")]
    TooLarge {
        what: String,
        key: &'static str,
        limit: u64,
    },
    /// The configd that answered is behind the agent's version.
    #[error(
        "configd is behind this agent's version {ours} ({seen}); skipped, keeping version {ours}"
    )]
    Behind { ours: u64, seen: String },
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
            SyncError::TooLarge { .. } => "too_large",
            SyncError::Behind { .. } => "behind",
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
    /// When each namespace that failed may be asked again.
    retry: BTreeMap<String, Retry>,
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

/// Largest error body read (configd's are a few hundred bytes).
const ERROR_BODY_LIMIT: u64 = 64 * 1024;

async fn error_of(resp: reqwest::Response) -> SyncError {
    let status = resp.status().as_u16();
    let body: serde_json::Value = match body::read(resp, ERROR_BODY_LIMIT, "an error answer").await
    {
        Ok((bytes, _)) => serde_json::from_slice(&bytes).unwrap_or_default(),
        Err(e) => return e,
    };
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

    /// Publishes `local` for `ns` (config file, then private cache), unless
    /// the file would be larger than `max_namespace_bytes`.
    fn publish(&mut self, ns: &str, local: Local, kind: &str) -> Result<(), SyncError> {
        let snap = ConfigSnapshot {
            namespace: ns.to_string(),
            version: local.version,
            items: local.items.clone(),
        };
        let bytes = json_bytes(&snap).map_err(|e| SyncError::Body(e.to_string()))?;
        drop(snap);
        let limit = self.settings.max_namespace_bytes;
        if bytes.len() as u64 > limit {
            return Err(SyncError::TooLarge {
                what: format!(
                    "namespace {ns:?} at version {} ({} bytes)",
                    local.version,
                    bytes.len()
                ),
                key: "max_namespace_bytes",
                limit,
            });
        }
        let outcome = write_atomic(&self.shared.config_json(ns), &bytes, WriteOptions::SHARED)?;
        write_atomic(&self.cache_path(ns), &bytes, WriteOptions::PRIVATE)?;
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
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let limit = self.settings.max_namespace_bytes;
            if meta.len() > limit {
                // Never re-publish what the limit refuses (e.g. cached under
                // a higher limit): the worker keeps what it has.
                self.reject(
                    &ns,
                    &SyncError::TooLarge {
                        what: format!(
                            "the cached config {} ({} bytes)",
                            path.display(),
                            meta.len()
                        ),
                        key: "max_namespace_bytes",
                        limit,
                    },
                );
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

    /// A request to configd's `path` (`/v1/...`) with the token and the
    /// client identity headers every call carries.
    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &Secret,
    ) -> reqwest::RequestBuilder {
        let url = format!("{}{path}", self.settings.addr.trim_end_matches('/'));
        self.http
            .request(method, url)
            .bearer_auth(token.expose())
            .headers(crate::config_identity::headers(&self.settings))
    }

    /// Fetches and applies the changes of `ns` after the local version; an
    /// answer behind that version is refused ([`SyncError::Behind`]).
    async fn fetch(&mut self, ns: &str, token: &Secret) -> Result<(), SyncError> {
        let local = self.locals.get(ns).cloned().unwrap_or_default();
        let from = local.version;
        let resp = self
            .request(
                reqwest::Method::GET,
                &format!("/v1/namespaces/{ns}/changes?from={from}"),
                token,
            )
            .header(reqwest::header::ACCEPT_ENCODING, "gzip")
            .send()
            .await?;
        if !resp.status().is_success() {
            let e = error_of(resp).await;
            return Err(match e {
                // "version V is from the future": this replica has not seen
                // the latest publish yet (or its database was restored).
                SyncError::Status {
                    status: 400,
                    field: Some(f),
                    message,
                } if f == "from" && from > 0 => SyncError::Behind {
                    ours: from,
                    seen: message,
                },
                e => e,
            });
        }
        let limit = self.settings.max_response_bytes;
        let (body, wire) = body::read(resp, limit, &format!("the changes of {ns:?}")).await?;
        let parsed: ChangesBody =
            serde_json::from_slice(&body).map_err(|e| SyncError::Body(e.to_string()))?;
        drop(body);
        if parsed.to < from {
            return Err(SyncError::Behind {
                ours: from,
                seen: format!("it answered version {}", parsed.to),
            });
        }
        let mut next = local.clone();
        let kind = if parsed.snapshot {
            next.items = parsed
                .items
                .ok_or_else(|| SyncError::Body("snapshot without items".into()))?;
            self.metrics
                .bytes
                .with_label_values(&["snapshot"])
                .inc_by(wire as u64);
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
                .inc_by(wire as u64);
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

    /// One round: fetch what is missing (each failed namespace once its
    /// backoff is over), then one long-poll.
    async fn round(&mut self, synced: &mut BTreeSet<String>) -> Result<(), SyncError> {
        let token = self.token()?;
        let mut first_error = None;
        for ns in self.settings.namespaces.clone() {
            let ready = self
                .retry
                .get(&ns)
                .is_none_or(|r| r.ready(chrono::Utc::now()));
            if synced.contains(&ns) || !ready {
                continue;
            }
            match self.fetch(&ns, &token).await {
                Ok(()) => {
                    synced.insert(ns.clone());
                    self.retry.remove(&ns);
                    self.status.update(|s| {
                        s.failures.remove(&ns);
                    });
                }
                Err(e) => {
                    if matches!(e, SyncError::Http(_)) {
                        self.note_error(Some(&ns), &e);
                        return Err(e);
                    }
                    self.reject(&ns, &e);
                    first_error.get_or_insert(e);
                }
            }
        }
        self.status.update(|s| s.connected = true);
        let next_retry = self.next_retry_s();
        if synced.is_empty() {
            if let Some(e) = first_error {
                return Err(e);
            }
            // Every namespace waits for its backoff.
            tokio::time::sleep(Duration::from_secs_f64(next_retry.unwrap_or(1.0))).await;
            return Ok(());
        }
        // Namespaces that failed (e.g. not created yet) are asked again
        // when their backoff ends.
        let timeout = match next_retry {
            Some(s) => self.settings.poll_timeout_s.min(s.ceil().max(1.0) as u64),
            None => self.settings.poll_timeout_s,
        };
        let watch: BTreeMap<&str, u64> = synced
            .iter()
            .map(|ns| (ns.as_str(), self.locals.get(ns).map_or(0, |l| l.version)))
            .collect();
        let applied = watch.iter().map(|(ns, v)| (ns.to_string(), *v)).collect();
        let report = crate::config_identity::report(&self.shared, &applied).await;
        let resp = self
            .request(reqwest::Method::POST, "/v1/watch", &token)
            .timeout(Duration::from_secs(timeout + 15))
            .json(&serde_json::json!({"namespaces": watch, "timeout_s": timeout, "report": report}))
            .send()
            .await?;
        match resp.status().as_u16() {
            304 => {}
            200 => {
                let limit = self.settings.max_response_bytes;
                let (bytes, _) = body::read(resp, limit, "the answer to /v1/watch").await?;
                let body: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|e| SyncError::Body(e.to_string()))?;
                if let Some(changed) = body["changed"].as_object() {
                    for ns in changed.keys() {
                        synced.remove(ns);
                    }
                }
            }
            _ => {
                let e = error_of(resp).await;
                if let SyncError::Status {
                    status,
                    field: Some(f),
                    message,
                } = &e
                {
                    if let Some(ns) = f.strip_prefix("namespaces.").map(str::to_string) {
                        // That namespace is gone (404), or this configd is
                        // behind our version of it (400): ask again after a
                        // backoff, perhaps another replica.
                        let e = match (*status, self.locals.get(&ns)) {
                            (400, Some(l)) if l.version > 0 => SyncError::Behind {
                                ours: l.version,
                                seen: message.clone(),
                            },
                            _ => e,
                        };
                        synced.remove(&ns);
                        self.reject(&ns, &e);
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

    /// Seconds until the earliest namespace backoff ends (None: none waits).
    fn next_retry_s(&self) -> Option<f64> {
        let now = chrono::Utc::now();
        self.retry
            .values()
            .filter_map(|r| r.not_before)
            .map(|t| ((t - now).num_milliseconds().max(0) as f64) / 1000.0)
            .reduce(f64::min)
    }

    /// `ns` failed with `e` (not a transport error): reported, counted
    /// when it is a refusal, and not asked again before its backoff ends.
    fn reject(&mut self, ns: &str, e: &SyncError) {
        self.note_error(Some(ns), e);
        if matches!(e, SyncError::TooLarge { .. } | SyncError::Behind { .. }) {
            self.metrics
                .rejected
                .with_label_values(&[ns, e.kind()])
                .inc();
        }
        let (initial, max) = (self.settings.backoff_initial_s, self.settings.backoff_max_s);
        let gate = self.retry.entry(ns.to_string()).or_default();
        let at = gate.fail(chrono::Utc::now(), initial, max);
        let failures = gate.failures;
        self.status.update(|s| {
            s.failures.insert(ns.to_string(), failures);
        });
        let retry_in_ms = (at - chrono::Utc::now()).num_milliseconds().max(0);
        tracing::warn!(namespace = ns, error = %e, failures, retry_in_ms, "config sync of a namespace failed");
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
        retry: BTreeMap::new(),
    };
    s.restore_cache();
    let (initial, max) = (s.settings.backoff_initial_s, s.settings.backoff_max_s);
    let mut failures = 0;
    let mut synced = BTreeSet::new();
    let mut last_logged: Option<(String, std::time::Instant)> = None;
    loop {
        s.reload_ca();
        let result = tokio::select! {
            r = s.round(&mut synced) => r,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        match result {
            Ok(()) => failures = 0,
            Err(e) => {
                s.note_error(None, &e);
                let wait = backoff_delay(failures, initial, max)
                    .to_std()
                    .unwrap_or_default();
                failures = failures.saturating_add(1);
                let text = e.to_string();
                // Log a repeated error at most every 30 s.
                let quiet = last_logged
                    .as_ref()
                    .is_some_and(|(t, at)| *t == text && at.elapsed() < Duration::from_secs(30));
                if !quiet {
                    tracing::warn!(error = %text, retry_in_ms = wait.as_millis() as u64, "config sync failed");
                    last_logged = Some((text, std::time::Instant::now()));
                }
                synced.clear();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
