//! The agent's configuration: a TOML file (`--config`), a few flag/env
//! overrides, and validation that reports every problem at once.
//!
//! Every key has a default except what identifies the environment: the Vault
//! address, the AppRole role_id and secret_id sources, and the database
//! endpoints. Unknown keys are rejected. See docs/agent.md for the reference.

use crate::config_sync;
use riskfeat_shared::creds::Endpoint;
use riskfeat_shared::telemetry::LogFormat;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why the configuration could not be used (exit 64).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config file: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: invalid config: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: invalid config:\n  - {}", problems.join("\n  - "))]
    Invalid { path: String, problems: Vec<String> },
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The shared directory (an in-memory volume).
    #[serde(default = "default_shared_dir")]
    pub shared_dir: PathBuf,
    /// Allow a shared dir on a disk filesystem (credentials would reach a disk).
    #[serde(default)]
    pub allow_disk: bool,
    /// Group id given to `db.json` (and config files): the pod's fsGroup.
    #[serde(default)]
    pub file_group: Option<u32>,
    /// Health socket; default `<shared_dir>/agent.sock`.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Prometheus `/metrics` listen address.
    #[serde(default = "default_metrics_addr")]
    pub metrics_addr: String,
    /// Log level (an `EnvFilter` directive); `RUST_LOG` wins when set.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// `text` or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
    pub vault: VaultSettings,
    pub database: DatabaseSettings,
    #[serde(default)]
    pub lifecycle: LifecycleSettings,
    #[serde(default)]
    pub fallback: Option<FallbackSettings>,
    #[serde(default)]
    pub configd: Option<config_sync::Settings>,
}

/// `[vault]`: where Vault is and how to log in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultSettings {
    /// e.g. `http://127.0.0.1:8200`.
    pub addr: String,
    /// PEM file of the CA(s) Vault's TLS certificate must chain to. When
    /// set, only these are trusted (not the built-in public roots); read
    /// once at start. Requires an `https://` addr.
    #[serde(default)]
    pub ca_cert_file: Option<PathBuf>,
    /// Per-request timeout, seconds.
    #[serde(default = "default_request_timeout_s")]
    pub request_timeout_s: f64,
    /// AppRole auth mount.
    #[serde(default = "default_approle_mount")]
    pub approle_mount: String,
    /// File holding the role_id (else env `RISKFEAT_AGENT_ROLE_ID`).
    #[serde(default)]
    pub role_id_file: Option<PathBuf>,
    /// File holding the secret_id (or a response-wrapping token, see
    /// `secret_id_wrapped`).
    #[serde(default)]
    pub secret_id_file: Option<PathBuf>,
    /// The secret_id file holds a response-wrapping token to unwrap.
    #[serde(default)]
    pub secret_id_wrapped: bool,
    /// Delete the secret_id file once read.
    #[serde(default)]
    pub delete_secret_id_after_read: bool,
    /// Renew the token at this fraction of its TTL.
    #[serde(default = "default_renew_fraction")]
    pub token_renew_fraction: f64,
}

/// `[database]`: the secrets engine role and the endpoints to publish.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Database secrets engine mount.
    #[serde(default = "default_db_mount")]
    pub mount: String,
    /// Role under `<mount>/creds/`.
    #[serde(default = "default_db_role")]
    pub role: String,
    pub primary: Endpoint,
    pub replica: Endpoint,
    /// PEM CA(s) PostgreSQL's certificates must chain to; required when an
    /// endpoint has `sslmode = "verify-full"`. Read once at start.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// `[lifecycle]`: timing of renewals, rotations and revocations.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleSettings {
    /// Renew a lease at this fraction of its duration.
    #[serde(default = "default_renew_fraction")]
    pub renew_fraction: f64,
    /// Relative jitter applied to every schedule (0.1 = +-10%).
    #[serde(default = "default_jitter")]
    pub jitter: f64,
    /// Issue the next credential this long before the current one's hard end
    /// (lease max_ttl or the creating token's end); clamped to half the
    /// credential's lifetime.
    #[serde(default = "default_rotate_lead_s")]
    pub rotate_lead_s: u64,
    /// The credential max_ttl when known (0 = learn it from the first
    /// capped renewal).
    #[serde(default)]
    pub max_ttl_hint_s: u64,
    /// How long to retry logging in with a new credential on the replica.
    #[serde(default = "default_replica_wait_s")]
    pub replica_wait_s: u64,
    /// After publishing a new credential, wait at most this long for the
    /// worker's ack before revoking the old lease (also bounded by the old
    /// lease's end).
    #[serde(default = "default_ack_grace_s")]
    pub ack_grace_s: u64,
    /// Hard cap on new credentials per minute.
    #[serde(default = "default_max_issuances_per_minute")]
    pub max_issuances_per_minute: u32,
    /// Readiness turns false when the published credential has less left.
    #[serde(default = "default_ready_min_remaining_s")]
    pub ready_min_remaining_s: u64,
    /// Revoke leases on SIGTERM.
    #[serde(default = "default_true")]
    pub revoke_on_shutdown: bool,
    /// Upper bound on the shutdown revocations.
    #[serde(default = "default_shutdown_timeout_s")]
    pub shutdown_timeout_s: u64,
    /// Retry backoff: first delay and cap, seconds.
    #[serde(default = "default_backoff_initial_s")]
    pub backoff_initial_s: f64,
    #[serde(default = "default_backoff_max_s")]
    pub backoff_max_s: f64,
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        toml::from_str("").expect("all lifecycle keys have defaults")
    }
}

/// `[fallback]`: the optional static credential (issue 8).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackSettings {
    /// TOML or JSON file with `username` and `password_file`.
    pub file: PathBuf,
}

fn default_shared_dir() -> PathBuf {
    PathBuf::from(riskfeat_shared::layout::DEFAULT_SHARED_DIR)
}
fn default_metrics_addr() -> String {
    "127.0.0.1:9102".into()
}
fn default_log_level() -> String {
    "info".into()
}
fn default_request_timeout_s() -> f64 {
    10.0
}
fn default_approle_mount() -> String {
    "approle".into()
}
fn default_renew_fraction() -> f64 {
    2.0 / 3.0
}
fn default_db_mount() -> String {
    "database".into()
}
fn default_db_role() -> String {
    "feature-reader".into()
}
fn default_jitter() -> f64 {
    0.1
}
fn default_rotate_lead_s() -> u64 {
    600
}
fn default_replica_wait_s() -> u64 {
    30
}
fn default_ack_grace_s() -> u64 {
    120
}
fn default_max_issuances_per_minute() -> u32 {
    6
}
fn default_ready_min_remaining_s() -> u64 {
    10
}
fn default_true() -> bool {
    true
}
fn default_shutdown_timeout_s() -> u64 {
    10
}
fn default_backoff_initial_s() -> f64 {
    0.5
}
fn default_backoff_max_s() -> f64 {
    30.0
}

/// Flag/env values that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub shared_dir: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
}

impl Config {
    /// Reads, parses, applies overrides and validates; every problem at once.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&shown, &text, overrides)
    }

    /// Parses text; `path` only names the file in errors.
    pub fn parse(path: &str, text: &str, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut cfg = Self::deserialize_all(path, text)?;
        if let Some(d) = &overrides.shared_dir {
            cfg.shared_dir = d.clone();
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
            Err(ConfigError::Invalid {
                path: path.to_string(),
                problems,
            })
        }
    }

    /// Deserializes section by section so that type errors and unknown
    /// keys in different sections are all reported at once.
    fn deserialize_all(path: &str, text: &str) -> Result<Config, ConfigError> {
        use serde::de::DeserializeOwned;
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: path.to_string(),
                message: e.to_string().trim_end().replace('\n', " "),
            })?;
        fn check<T: DeserializeOwned>(name: &str, v: &toml::Value, out: &mut Vec<String>) {
            let toml::Value::Table(table) = v else {
                if let Err(e) = T::deserialize(v.clone()) {
                    out.push(format!("[{name}]: {}", e.message().trim_end()));
                }
                return;
            };
            // Serde stops at the first error of a table: drop the offending
            // key and try again, so every bad key of the section is named.
            // Re-parsing the section's own text gives errors that quote the
            // offending line.
            let mut table = table.clone();
            let mut removed: Vec<String> = Vec::new();
            for _ in 0..32 {
                let text = toml::to_string(&table).unwrap_or_default();
                let Err(e) = toml::from_str::<T>(&text) else {
                    return;
                };
                let full = e.to_string();
                let msg = describe_toml_error(&full);
                if removed
                    .iter()
                    .any(|k| msg.contains(&format!("missing field `{k}`")))
                {
                    return;
                }
                out.push(format!("[{name}]: {msg}"));
                let key = offending_key(&full);
                match key.filter(|k| table.remove(k).is_some()) {
                    Some(k) => removed.push(k),
                    None => return,
                }
            }
        }
        let mut problems = Vec::new();
        let mut top = toml::Table::new();
        for (key, value) in &table {
            match key.as_str() {
                "vault" => check::<VaultSettings>(key, value, &mut problems),
                "database" => check::<DatabaseSettings>(key, value, &mut problems),
                "lifecycle" => check::<LifecycleSettings>(key, value, &mut problems),
                "fallback" => check::<FallbackSettings>(key, value, &mut problems),
                "configd" => check::<config_sync::Settings>(key, value, &mut problems),
                _ => {
                    top.insert(key.clone(), value.clone());
                }
            }
        }
        for required in ["vault", "database"] {
            if !table.contains_key(required) {
                problems.push(format!("missing section [{required}]"));
            }
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct TopLevel {
            #[serde(default)]
            shared_dir: Option<PathBuf>,
            #[serde(default)]
            allow_disk: Option<bool>,
            #[serde(default)]
            file_group: Option<u32>,
            #[serde(default)]
            socket: Option<PathBuf>,
            #[serde(default)]
            metrics_addr: Option<String>,
            #[serde(default)]
            log_level: Option<String>,
            #[serde(default)]
            log_format: Option<LogFormat>,
        }
        check::<TopLevel>("top level", &toml::Value::Table(top), &mut problems);
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_string(),
                problems,
            });
        }
        Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse {
            path: path.to_string(),
            message: e.message().trim_end().replace('\n', " "),
        })
    }

    /// Every semantic problem (empty when valid).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.shared_dir.as_os_str().is_empty() {
            out.push("shared_dir is empty".into());
        }
        if self.metrics_addr.parse::<SocketAddr>().is_err() {
            out.push(format!(
                "metrics_addr: {:?} is not an IP:port address",
                self.metrics_addr
            ));
        }
        if tracing_filter_invalid(&self.log_level) {
            out.push(format!(
                "log_level: {:?} is not a valid level",
                self.log_level
            ));
        }
        let v = &self.vault;
        if !(v.addr.starts_with("http://") || v.addr.starts_with("https://")) {
            out.push(format!(
                "vault.addr: {:?} must start with http:// or https://",
                v.addr
            ));
        }
        if v.ca_cert_file.is_some() && !v.addr.starts_with("https://") {
            out.push(format!(
                "vault.ca_cert_file is set but vault.addr {:?} is not https://",
                v.addr
            ));
        }
        if !(v.request_timeout_s > 0.0 && v.request_timeout_s <= 300.0) {
            out.push("vault.request_timeout_s must be in (0, 300]".into());
        }
        if v.approle_mount.is_empty() {
            out.push("vault.approle_mount is empty".into());
        }
        if v.secret_id_file.is_none() {
            out.push("vault.secret_id_file is required".into());
        }
        fraction(
            "vault.token_renew_fraction",
            v.token_renew_fraction,
            &mut out,
        );
        let d = &self.database;
        if d.mount.is_empty() {
            out.push("database.mount is empty".into());
        }
        if d.role.is_empty() || d.role.contains('/') {
            out.push(format!("database.role: invalid role name {:?}", d.role));
        }
        for (name, ep) in [
            ("database.primary", &d.primary),
            ("database.replica", &d.replica),
        ] {
            if ep.host.is_empty() {
                out.push(format!("{name}.host is empty"));
            }
            if ep.port == 0 {
                out.push(format!("{name}.port is 0"));
            }
            if ep.dbname.is_empty() {
                out.push(format!("{name}.dbname is empty"));
            }
            if !ep.sslmode.is_disable() && d.ca_file.is_none() {
                out.push(format!(
                    "{name}.sslmode = \"{}\" needs database.ca_file",
                    ep.sslmode.as_str()
                ));
            }
        }
        let l = &self.lifecycle;
        fraction("lifecycle.renew_fraction", l.renew_fraction, &mut out);
        if !(0.0..=0.5).contains(&l.jitter) {
            out.push("lifecycle.jitter must be in [0, 0.5]".into());
        }
        if l.max_issuances_per_minute == 0 {
            out.push("lifecycle.max_issuances_per_minute must be at least 1".into());
        }
        if l.replica_wait_s == 0 {
            out.push("lifecycle.replica_wait_s must be at least 1".into());
        }
        if !(l.backoff_initial_s > 0.0 && l.backoff_max_s >= l.backoff_initial_s) {
            out.push("lifecycle.backoff_initial_s must be > 0 and <= backoff_max_s".into());
        }
        if let Some(c) = &self.configd {
            out.extend(c.problems());
        }
        out
    }

    /// The health socket path.
    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| self.shared_dir.join("agent.sock"))
    }

    /// The Vault request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.vault.request_timeout_s)
    }
}

/// The key an error is about: an unknown field's name, else the key of the
/// quoted source line (`key = value`).
fn offending_key(full: &str) -> Option<String> {
    if let Some(rest) = full.split("unknown field `").nth(1) {
        return rest.split('`').next().map(str::to_string);
    }
    full.lines().find_map(|l| {
        let (num, rest) = l.trim().split_once('|')?;
        if num.trim().is_empty() || !num.trim().chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let key = rest.split('=').next()?.trim();
        (!key.is_empty() && !key.starts_with('[')).then(|| key.trim_matches('"').to_string())
    })
}

/// `at `line`: message` from toml's multi-line error with a source snippet.
fn describe_toml_error(full: &str) -> String {
    let lines: Vec<&str> = full.lines().map(str::trim).collect();
    let snippet = lines.iter().find_map(|l| {
        let (num, rest) = l.split_once('|')?;
        (!num.trim().is_empty() && num.trim().chars().all(|c| c.is_ascii_digit()))
            .then(|| rest.trim())
    });
    let message = lines
        .iter()
        .rev()
        .find(|l| !l.is_empty() && !l.starts_with('|') && !l.starts_with("TOML parse error"))
        .copied()
        .unwrap_or(full);
    match snippet {
        Some(s) => format!("at `{s}`: {message}"),
        None => message.to_string(),
    }
}

fn fraction(name: &str, v: f64, out: &mut Vec<String>) {
    if !(v > 0.05 && v < 0.95) {
        out.push(format!("{name} must be between 0.05 and 0.95 (got {v})"));
    }
}

fn tracing_filter_invalid(level: &str) -> bool {
    level.trim().is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [vault]
        addr = "http://127.0.0.1:8200"
        role_id_file = "/etc/riskfeat/role_id"
        secret_id_file = "/etc/riskfeat/secret_id"
        [database]
        primary = { host = "pg-primary", port = 5432, dbname = "riskfeat" }
        replica = { host = "pg-replica", port = 5432, dbname = "riskfeat" }
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse("agent.toml", MINIMAL, &Overrides::default()).unwrap();
        assert_eq!(c.shared_dir, PathBuf::from("/run/riskfeat"));
        assert_eq!(c.metrics_addr, "127.0.0.1:9102");
        assert!((c.lifecycle.renew_fraction - 2.0 / 3.0).abs() < 1e-9);
        assert!(c.lifecycle.revoke_on_shutdown);
        assert_eq!(c.database.role, "feature-reader");
        assert_eq!(c.socket_path(), PathBuf::from("/run/riskfeat/agent.sock"));
        assert!(c.configd.is_none() && c.fallback.is_none());
    }

    #[test]
    fn overrides_win() {
        let o = Overrides {
            shared_dir: Some("/dev/shm/x".into()),
            log_format: Some(LogFormat::Json),
            log_level: Some("debug".into()),
        };
        let c = Config::parse("agent.toml", MINIMAL, &o).unwrap();
        assert_eq!(c.shared_dir, PathBuf::from("/dev/shm/x"));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.log_level, "debug");
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let text = format!("{MINIMAL}\n[lifecycle]\nrenew_fracton = 0.5\n");
        let err = Config::parse("agent.toml", &text, &Overrides::default()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("agent.toml") && msg.contains("renew_fracton"),
            "{msg}"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
            metrics_addr = "nowhere"
            [vault]
            addr = "127.0.0.1:8200"
            ca_cert_file = "/etc/vault-ca.pem"
            [database]
            primary = { host = "", port = 0, dbname = "riskfeat" }
            replica = { host = "r", port = 5432, dbname = "", sslmode = "verify-full" }
            [lifecycle]
            renew_fraction = 1.5
            max_issuances_per_minute = 0
        "#;
        let err = Config::parse("a.toml", text, &Overrides::default()).unwrap_err();
        let msg = err.to_string();
        for want in [
            "metrics_addr",
            "vault.addr",
            "vault.ca_cert_file is set but vault.addr",
            "vault.secret_id_file is required",
            "database.primary.host is empty",
            "database.primary.port is 0",
            "database.replica.dbname is empty",
            "database.replica.sslmode = \"verify-full\" needs database.ca_file",
            "lifecycle.renew_fraction",
            "max_issuances_per_minute",
        ] {
            assert!(msg.contains(want), "missing {want:?} in {msg}");
        }
    }

    #[test]
    fn errors_in_several_sections_are_reported_together() {
        let text = r#"
            colour = "blue"
            [vault]
            addr = 5
            secret_id_file = "/s"
            [database]
            primary = { host = "p", port = 5432, dbname = "riskfeat" }
            replica = { host = "r", port = 5432, dbname = "riskfeat", extra = 1 }
            [lifecycle]
            rotate_lead_s = "soon"
        "#;
        let err = Config::parse("a.toml", text, &Overrides::default()).unwrap_err();
        let msg = err.to_string();
        for want in [
            "colour",
            "[vault]",
            "[database]",
            "extra",
            "[lifecycle]",
            "rotate_lead_s",
        ] {
            assert!(msg.contains(want), "missing {want:?} in {msg}");
        }
        let err = Config::parse("a.toml", "[vault\n", &Overrides::default()).unwrap_err();
        assert!(
            err.to_string().starts_with("a.toml: invalid config"),
            "{err}"
        );
    }

    #[test]
    fn configd_section_parses() {
        let text = format!(
            "{MINIMAL}\n[configd]\naddr = \"http://127.0.0.1:8070\"\ntoken_file = \"/t\"\nnamespaces = [\"features\"]\n"
        );
        let c = Config::parse("agent.toml", &text, &Overrides::default()).unwrap();
        assert!(c.configd.is_some());
    }
}
