//! The worker's own configuration: a TOML file (`--config`, env
//! `RISKFEAT_WORKER_CONFIG`) with a default for every key, unknown keys
//! rejected, and every problem reported at once (exit 64 at the edge).
//!
//! Feature parameters are NOT here: they come hot-reloaded from
//! `config/<namespace>.json` (see [`crate::params`]).

use riskfeat_shared::telemetry::LogFormat;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What to do when the replica is further behind than `max_replica_lag_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LagPolicy {
    /// Keep reading the replica; answers carry `"stale": true`.
    MarkStale,
    /// Read from the primary with the same credential (the dynamic role
    /// exists there first: Vault creates it on the primary).
    Primary,
}

/// The parsed config; see docs/worker.md for every key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_shared_dir")]
    pub shared_dir: PathBuf,
    /// Accept a shared dir that is not tmpfs/ramfs.
    #[serde(default)]
    pub allow_disk: bool,
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    #[serde(default = "default_pool_wait_timeout_ms")]
    pub pool_wait_timeout_ms: u64,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    #[serde(default = "default_max_replica_lag_ms")]
    pub max_replica_lag_ms: u64,
    #[serde(default = "default_lag_policy")]
    pub lag_policy: LagPolicy,
    #[serde(default = "default_lag_check_interval_ms")]
    pub lag_check_interval_ms: u64,
    #[serde(default = "default_recheck_interval_ms")]
    pub recheck_interval_ms: u64,
    #[serde(default = "default_retry_initial_ms")]
    pub retry_initial_ms: u64,
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    #[serde(default = "default_drain_timeout_s")]
    pub drain_timeout_s: u64,
    #[serde(default = "default_shutdown_timeout_s")]
    pub shutdown_timeout_s: u64,
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// PEM CA(s) PostgreSQL's certificates must chain to; needed when
    /// db.json's endpoints say `sslmode = "verify-full"`. Read at start.
    #[serde(default)]
    pub database_ca_file: Option<PathBuf>,
    /// Runtime threads serving requests; 0 = one per CPU the process may
    /// use (cgroup quota included).
    #[serde(default)]
    pub worker_threads: usize,
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// `[source]`: the transactions table and its columns.
    #[serde(default)]
    pub source: crate::source::Source,
}

fn default_shared_dir() -> PathBuf {
    PathBuf::from(riskfeat_shared::layout::DEFAULT_SHARED_DIR)
}
fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_namespace() -> String {
    "features".into()
}
fn default_pool_size() -> usize {
    8
}
fn default_pool_wait_timeout_ms() -> u64 {
    2000
}
fn default_connect_timeout_ms() -> u64 {
    3000
}
fn default_statement_timeout_ms() -> u64 {
    2000
}
fn default_max_replica_lag_ms() -> u64 {
    5000
}
fn default_lag_policy() -> LagPolicy {
    LagPolicy::MarkStale
}
fn default_lag_check_interval_ms() -> u64 {
    500
}
fn default_recheck_interval_ms() -> u64 {
    2000
}
fn default_retry_initial_ms() -> u64 {
    200
}
fn default_retry_max_ms() -> u64 {
    5000
}
fn default_drain_timeout_s() -> u64 {
    30
}
fn default_shutdown_timeout_s() -> u64 {
    25
}
fn default_max_batch() -> usize {
    1000
}
fn default_log_level() -> String {
    "info".into()
}

/// Flags/env that win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub shared_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
}

/// A rejected config file; the message lists every problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: invalid config:\n  - {}", problems.join("\n  - "))]
    Invalid { path: String, problems: Vec<String> },
}

impl Config {
    /// Reads the file; a missing file at the default location is an error
    /// too (pass `--config /dev/null` to run on defaults).
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&path.display().to_string(), &text, overrides)
    }

    /// Parses TOML text, applies overrides, validates; every problem at once.
    pub fn parse(path: &str, text: &str, overrides: &Overrides) -> Result<Self, ConfigError> {
        let invalid = |problems| ConfigError::Invalid {
            path: path.to_string(),
            problems,
        };
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            invalid(vec![e.message().to_string() + &span_line(text, e.span())])
        })?;
        let mut problems = Vec::new();
        for (key, value) in &table {
            if let Err(p) = check_key(key, value) {
                problems.push(p);
            }
        }
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        let mut cfg = Config::deserialize(toml::Value::Table(table))
            .map_err(|e| invalid(vec![e.message().to_string()]))?;
        if let Some(d) = &overrides.shared_dir {
            cfg.shared_dir = d.clone();
        }
        if let Some(l) = &overrides.listen {
            cfg.listen = l.clone();
        }
        if let Some(f) = overrides.log_format {
            cfg.log_format = f;
        }
        if let Some(l) = &overrides.log_level {
            cfg.log_level = l.clone();
        }
        let problems = cfg.problems();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(invalid(problems))
        }
    }

    /// Range and format problems, all at once.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.listen.parse::<SocketAddr>().is_err() {
            out.push(format!(
                "listen = {:?}: expected an address like 127.0.0.1:8080",
                self.listen
            ));
        }
        if !riskfeat_shared::layout::valid_namespace(&self.namespace) {
            out.push(format!(
                "namespace = {:?}: expected 1-128 of [A-Za-z0-9._-], not starting with '.'",
                self.namespace
            ));
        }
        if !(1..=1024).contains(&self.pool_size) {
            out.push(format!("pool_size = {}: expected 1..=1024", self.pool_size));
        }
        if !(1..=10_000).contains(&self.max_batch) {
            out.push(format!(
                "max_batch = {}: expected 1..=10000",
                self.max_batch
            ));
        }
        if self.worker_threads > 256 {
            out.push(format!(
                "worker_threads = {}: expected 0 (one per CPU) to 256",
                self.worker_threads
            ));
        }
        for (name, v) in [
            ("pool_wait_timeout_ms", self.pool_wait_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("statement_timeout_ms", self.statement_timeout_ms),
            ("lag_check_interval_ms", self.lag_check_interval_ms),
            ("recheck_interval_ms", self.recheck_interval_ms),
            ("retry_initial_ms", self.retry_initial_ms),
            ("retry_max_ms", self.retry_max_ms),
        ] {
            if v == 0 {
                out.push(format!("{name} = 0: expected a positive number"));
            }
        }
        if self.retry_max_ms < self.retry_initial_ms {
            out.push(format!(
                "retry_max_ms = {} is below retry_initial_ms = {}",
                self.retry_max_ms, self.retry_initial_ms
            ));
        }
        if self.shared_dir.as_os_str().is_empty() {
            out.push("shared_dir is empty".into());
        }
        out.extend(self.source.problems());
        if tracing_subscriber_filter_invalid(&self.log_level) {
            out.push(format!(
                "log_level = {:?}: not a valid filter",
                self.log_level
            ));
        }
        out
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen.parse().expect("validated")
    }
    pub fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }
    pub fn socket_path(&self) -> PathBuf {
        riskfeat_shared::layout::SharedDir::new(&self.shared_dir).worker_socket()
    }
}

/// Checks one top-level key: known, and of the right type.
fn check_key(key: &str, value: &toml::Value) -> Result<(), String> {
    fn ty<T: DeserializeOwned>(key: &str, v: &toml::Value, what: &str) -> Result<(), String> {
        T::deserialize(v.clone())
            .map(|_| ())
            .map_err(|_| format!("{key} = {v}: expected {what}"))
    }
    match key {
        "shared_dir" | "listen" | "namespace" | "log_level" | "database_ca_file" => {
            ty::<String>(key, value, "a string")
        }
        "allow_disk" => ty::<bool>(key, value, "true or false"),
        "pool_size" | "max_batch" | "worker_threads" => {
            ty::<usize>(key, value, "a non-negative integer")
        }
        "pool_wait_timeout_ms" | "connect_timeout_ms" | "statement_timeout_ms"
        | "max_replica_lag_ms" | "lag_check_interval_ms" | "recheck_interval_ms"
        | "retry_initial_ms" | "retry_max_ms" | "drain_timeout_s" | "shutdown_timeout_s" => {
            ty::<u64>(key, value, "a non-negative integer")
        }
        "lag_policy" => ty::<LagPolicy>(key, value, "\"mark_stale\" or \"primary\""),
        "log_format" => ty::<LogFormat>(key, value, "\"text\" or \"json\""),
        "source" => crate::source::Source::deserialize(value.clone())
            .map(|_| ())
            .map_err(|e| format!("[source]: {}", e.message())),
        other => Err(format!(
            "unknown key {other:?} (known: shared_dir, allow_disk, listen, namespace, pool_size, \
             pool_wait_timeout_ms, connect_timeout_ms, statement_timeout_ms, max_replica_lag_ms, \
             lag_policy, lag_check_interval_ms, recheck_interval_ms, retry_initial_ms, retry_max_ms, \
             drain_timeout_s, shutdown_timeout_s, max_batch, database_ca_file, worker_threads, log_format, \
             log_level, [source])"
        )),
    }
}

fn span_line(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(r) => format!(
            " (line {})",
            text[..r.start.min(text.len())].lines().count().max(1)
        ),
        None => String::new(),
    }
}

fn tracing_subscriber_filter_invalid(level: &str) -> bool {
    level.trim().is_empty() || level.contains(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gets_defaults() {
        let c = Config::parse("w.toml", "", &Overrides::default()).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert_eq!(c.namespace, "features");
        assert_eq!(c.lag_policy, LagPolicy::MarkStale);
        assert_eq!(c.pool_size, 8);
        assert_eq!(c.max_batch, 1000);
    }

    #[test]
    fn overrides_win() {
        let o = Overrides {
            shared_dir: Some("/tmp/x".into()),
            listen: Some("127.0.0.1:1".into()),
            ..Default::default()
        };
        let c = Config::parse("w.toml", "shared_dir = \"/a\"", &o).unwrap();
        assert_eq!(c.shared_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.listen, "127.0.0.1:1");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
pool_sise = 3
lag_policy = "fastest"
pool_size = "many"
max_batch = 1000
"#;
        let err = Config::parse("w.toml", text, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("w.toml: invalid config"), "{err}");
        assert!(err.contains("pool_sise"), "{err}");
        assert!(err.contains("lag_policy"), "{err}");
        assert!(err.contains("pool_size = \"many\""), "{err}");
    }

    #[test]
    fn ranges_are_checked_together() {
        let text = "pool_size = 0\nlisten = \"nowhere\"\nnamespace = \"../x\"\n";
        let err = Config::parse("w.toml", text, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("pool_size = 0"), "{err}");
        assert!(err.contains("listen"), "{err}");
        assert!(err.contains("namespace"), "{err}");
    }

    #[test]
    fn primary_policy_parses() {
        let c = Config::parse("w.toml", "lag_policy = \"primary\"", &Overrides::default()).unwrap();
        assert_eq!(c.lag_policy, LagPolicy::Primary);
    }
}
