//! The worker's own configuration: a TOML file (`--config`, env
//! `RISKFEAT_WORKER_CONFIG`) with a default for every key, unknown keys
//! rejected, and every problem reported at once (exit 64 at the edge), loaded
//! through [`riskfeat_shared::config_loader`] like the agent's and configd's.
//!
//! Feature parameters are NOT here: they come hot-reloaded from
//! `config/<namespace>.json` (see [`crate::params`]).

use riskfeat_shared::config_loader::{self, set, ConfigError, Validate};
use riskfeat_shared::http_server::HttpLimits;
use riskfeat_shared::telemetry::LogFormat;
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

/// The parsed config; see docs/worker.md for every key. Every key has a
/// default ([`Default`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub shared_dir: PathBuf,
    /// Accept a shared dir that is not tmpfs/ramfs.
    pub allow_disk: bool,
    pub listen: String,
    pub namespace: String,
    pub pool_size: usize,
    /// Pool size while the credential in use is the static fallback: every
    /// pod then shares that one login and its `CONNECTION LIMIT`
    /// (k8s/bootstrap/postgres/02-fallback.sql, docs/operations.md).
    pub fallback_pool_size: usize,
    pub pool_wait_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub statement_timeout_ms: u64,
    pub max_replica_lag_ms: u64,
    pub lag_policy: LagPolicy,
    pub lag_check_interval_ms: u64,
    pub recheck_interval_ms: u64,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    pub drain_timeout_s: u64,
    pub shutdown_timeout_s: u64,
    pub max_batch: usize,
    /// PEM CA(s) PostgreSQL's certificates must chain to; needed when
    /// db.json's endpoints say `sslmode = "verify-full"`. Read at start.
    pub database_ca_file: Option<PathBuf>,
    /// Runtime threads serving requests; 0 = one per CPU the process may
    /// use (cgroup quota included).
    pub worker_threads: usize,
    pub log_format: LogFormat,
    pub log_level: String,
    /// `[source]`: the transactions table and its columns.
    pub source: crate::source::Source,
    /// `[http]`: header-read, request and idle timeouts, connection cap.
    pub http: HttpLimits,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            shared_dir: PathBuf::from(riskfeat_shared::layout::DEFAULT_SHARED_DIR),
            allow_disk: false,
            listen: "127.0.0.1:8080".into(),
            namespace: "features".into(),
            pool_size: 8,
            fallback_pool_size: 4,
            pool_wait_timeout_ms: 2000,
            connect_timeout_ms: 3000,
            statement_timeout_ms: 2000,
            max_replica_lag_ms: 5000,
            lag_policy: LagPolicy::MarkStale,
            lag_check_interval_ms: 500,
            recheck_interval_ms: 2000,
            retry_initial_ms: 200,
            retry_max_ms: 5000,
            drain_timeout_s: 30,
            shutdown_timeout_s: 25,
            max_batch: 1000,
            database_ca_file: None,
            worker_threads: 0,
            log_format: LogFormat::Text,
            log_level: "info".into(),
            source: crate::source::Source::default(),
            http: HttpLimits::default(),
        }
    }
}

/// Flags/env that win over the file: the shared ones and `--listen`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    #[command(flatten)]
    pub common: riskfeat_shared::cli::CommonOverrides,
    /// Override `listen` (HTTP address, e.g. 127.0.0.1:8080).
    #[arg(long, global = true, env = "RISKFEAT_WORKER_LISTEN")]
    pub listen: Option<String>,
}

impl config_loader::Overrides<Config> for Overrides {
    fn apply(&self, cfg: &mut Config) {
        self.common
            .apply_to(&mut cfg.shared_dir, &mut cfg.log_format, &mut cfg.log_level);
        set(&mut cfg.listen, &self.listen);
    }
}

impl Validate for Config {
    fn problems(&self) -> Vec<String> {
        Config::problems(self)
    }
}

impl Config {
    /// Reads the file; a missing file at the default location is an error
    /// too (pass `--config /dev/null` to run on defaults).
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Self, ConfigError> {
        config_loader::load(path, overrides)
    }

    /// Parses TOML text, applies overrides, validates; every problem at once.
    pub fn parse(path: &str, text: &str, overrides: &Overrides) -> Result<Self, ConfigError> {
        config_loader::parse(path, text, Path::new("."), overrides)
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
        if !(1..=1024).contains(&self.fallback_pool_size) {
            out.push(format!(
                "fallback_pool_size = {}: expected 1..=1024",
                self.fallback_pool_size
            ));
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
        out.extend(self.http.problems());
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

fn tracing_subscriber_filter_invalid(level: &str) -> bool {
    level.trim().is_empty() || level.contains(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use riskfeat_shared::testing::assert_contains_all;

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
            common: riskfeat_shared::cli::CommonOverrides {
                shared_dir: Some("/tmp/x".into()),
                ..Default::default()
            },
            listen: Some("127.0.0.1:1".into()),
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
        let err = parse_error(text);
        assert!(err.starts_with("w.toml: invalid config"), "{err}");
        assert_contains_all(
            &err,
            &[
                "\n  - pool_size: invalid type: string \"many\", expected usize",
                "\n  - pool_sise: unknown key, expected one of `shared_dir`, ",
                "\n  - lag_policy: unknown variant `fastest`, expected `mark_stale` or `primary`",
            ],
        );
    }

    #[test]
    fn ranges_are_checked_together() {
        let text = "pool_size = 0\nlisten = \"nowhere\"\nnamespace = \"../x\"\n";
        assert_contains_all(
            &parse_error(text),
            &["pool_size = 0", "listen", "namespace"],
        );
    }

    /// The message of the error parsing `text` (no overrides) gives.
    fn parse_error(text: &str) -> String {
        Config::parse("w.toml", text, &Overrides::default())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn primary_policy_parses() {
        let c = Config::parse("w.toml", "lag_policy = \"primary\"", &Overrides::default()).unwrap();
        assert_eq!(c.lag_policy, LagPolicy::Primary);
    }
}
