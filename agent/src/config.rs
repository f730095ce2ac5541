//! The agent's configuration: a TOML file (`--config`), a few flag/env
//! overrides, and validation that reports every problem at once, loaded
//! through [`riskfeat_shared::config_loader`] like the worker's and configd's.
//!
//! Every key has a default except what identifies the environment: the Vault
//! address, the login material (AppRole's role_id and secret_id sources, or
//! the role and token file of a `[vault.auth]` JWT/Kubernetes login), the
//! database endpoints, and configd's address and token file when
//! `[configd]` is there. Unknown keys are rejected. See docs/agent.md for
//! the reference.

use riskfeat_shared::config_loader::{self, ConfigError, Validate};
use riskfeat_shared::creds::Endpoint;
use riskfeat_shared::telemetry::LogFormat;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod auth;
mod output;
pub use auth::{AuthMethod, AuthSettings};
pub use output::{DsnFormat, EndpointChoice, OutputKind, OutputSettings};

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
    pub file_group: Option<u32>,
    /// Health socket; default `<shared_dir>/agent.sock`.
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
    pub fallback: Option<FallbackSettings>,
    pub configd: Option<ConfigdSettings>,
    /// `[[output]]`: the credential again, in formats for programs other
    /// than riskfeat-worker ([`crate::outputs`]).
    #[serde(default, deserialize_with = "output::deserialize_blocks")]
    pub output: Vec<OutputSettings>,
    /// Directories outside `shared_dir` an `[[output]]` may be written in.
    #[serde(default)]
    pub output_allowed_dirs: Vec<PathBuf>,
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
    pub ca_cert_file: Option<PathBuf>,
    /// Per-request timeout, seconds.
    #[serde(default = "default_request_timeout_s")]
    pub request_timeout_s: f64,
    /// AppRole auth mount.
    #[serde(default = "default_approle_mount")]
    pub approle_mount: String,
    /// File holding the role_id (else env `RISKFEAT_AGENT_ROLE_ID`).
    pub role_id_file: Option<PathBuf>,
    /// File holding the secret_id (or a response-wrapping token, see
    /// `secret_id_wrapped`).
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
    /// Vault Enterprise / OpenBao namespace, sent as `X-Vault-Namespace`
    /// on every request (login included); `None`: the root namespace.
    pub namespace: Option<String>,
    /// `[vault.auth]`: the login method (AppRole when absent).
    #[serde(default)]
    pub auth: AuthSettings,
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
    pub ca_file: Option<PathBuf>,
}

/// `[lifecycle]`: timing of renewals, rotations and revocations. Every key
/// has a default ([`Default`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleSettings {
    /// Renew a lease at this fraction of its duration.
    pub renew_fraction: f64,
    /// Relative jitter on renewal times (0.1: up to 10% earlier than
    /// `renew_fraction`, never later).
    pub jitter: f64,
    /// Issue the next credential this long before the current one's hard end
    /// (lease max_ttl or the creating token's end); clamped to half the
    /// credential's lifetime.
    pub rotate_lead_s: u64,
    /// The credential max_ttl when known (0 = learn it from the first
    /// capped renewal).
    pub max_ttl_hint_s: u64,
    /// How long to retry logging in with a new credential on the replica.
    pub replica_wait_s: u64,
    /// After publishing a new credential, wait at most this long for the
    /// worker's ack before revoking the old lease (also bounded by the old
    /// lease's end).
    pub ack_grace_s: u64,
    /// Hard cap on new credentials per minute.
    pub max_issuances_per_minute: u32,
    /// Readiness turns false when the published credential has less left.
    pub ready_min_remaining_s: u64,
    /// Revoke leases on SIGTERM.
    pub revoke_on_shutdown: bool,
    /// Upper bound on the shutdown revocations.
    pub shutdown_timeout_s: u64,
    /// Retry backoff: first delay and cap, seconds.
    pub backoff_initial_s: f64,
    pub backoff_max_s: f64,
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        Self {
            renew_fraction: default_renew_fraction(),
            jitter: 0.1,
            rotate_lead_s: 600,
            max_ttl_hint_s: 0,
            replica_wait_s: 30,
            ack_grace_s: 120,
            max_issuances_per_minute: 6,
            ready_min_remaining_s: 10,
            revoke_on_shutdown: true,
            shutdown_timeout_s: 10,
            backoff_initial_s: default_backoff_initial_s(),
            backoff_max_s: default_backoff_max_s(),
        }
    }
}

/// `[fallback]`: the optional static credential (issue 8).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackSettings {
    /// TOML or JSON file with `username` and `password_file`.
    pub file: PathBuf,
}

/// `[configd]`: where riskfeat-configd is and what to sync from it
/// ([`crate::config_sync`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigdSettings {
    /// Base URL of riskfeat-configd, e.g. `http://127.0.0.1:8070`.
    pub addr: String,
    /// File holding the bearer token (read role).
    pub token_file: PathBuf,
    /// Namespaces to watch and publish.
    #[serde(default = "default_namespaces")]
    pub namespaces: Vec<String>,
    /// Long-poll timeout asked of configd, seconds.
    #[serde(default = "default_poll_timeout_s")]
    pub poll_timeout_s: u64,
    /// First retry delay after an error, seconds.
    #[serde(default = "default_backoff_initial_s")]
    pub backoff_initial_s: f64,
    /// Longest retry delay, seconds.
    #[serde(default = "default_backoff_max_s")]
    pub backoff_max_s: f64,
    /// PEM CA bundle trusted for an `https://` addr instead of the system
    /// roots (configd's certificate from a private CA).
    pub ca_file: Option<PathBuf>,
    /// This agent's id for configd (gray percentages, rollout view);
    /// default `$POD_NAME`, else the host name.
    pub client_id: Option<String>,
    /// Labels sent to configd (gray release selectors), e.g. `canary = "true"`.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// A downward API labels file (`key="value"` lines, the pod's labels),
    /// read again before every request; its labels win over `labels`.
    pub labels_file: Option<PathBuf>,
    /// Largest namespace published, in bytes of `config/<ns>.json` (the
    /// file lives in the memory-backed shared dir, charged to the agent).
    /// A bigger one is rejected and the last good one kept.
    #[serde(default = "default_max_namespace_bytes")]
    pub max_namespace_bytes: u64,
    /// Largest answer read from configd, in bytes on the wire and again
    /// after gzip decompression; read no further than that.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
}

impl ConfigdSettings {
    /// Every problem with the settings, all at once (empty when valid).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        url(
            ("configd.addr", &self.addr),
            ("configd.ca_file", self.ca_file.is_some()),
            &mut out,
        );
        if self.namespaces.is_empty() {
            out.push("configd.namespaces is empty".to_string());
        }
        for ns in &self.namespaces {
            if !riskfeat_shared::layout::valid_namespace(ns) {
                out.push(format!("configd.namespaces: invalid namespace name {ns:?}"));
            }
        }
        if !(1..=600).contains(&self.poll_timeout_s) {
            out.push("configd.poll_timeout_s must be 1..=600".to_string());
        }
        // configd refuses other label text (riskfeat-client-labels).
        let label_ok = |s: &str| {
            s.len() <= 253
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
        };
        for (k, v) in &self.labels {
            if k.is_empty() || !label_ok(k) || !label_ok(v) {
                out.push(format!(
                    "configd.labels: {k:?} = {v:?}: keys and values are [A-Za-z0-9._/-], at most 253 bytes"
                ));
            }
        }
        if !(self.backoff_initial_s > 0.0 && self.backoff_max_s >= self.backoff_initial_s) {
            out.push("configd.backoff_initial_s must be > 0 and <= backoff_max_s".to_string());
        }
        if self.max_namespace_bytes < 1024 {
            out.push("configd.max_namespace_bytes must be at least 1024".to_string());
        }
        if self.max_response_bytes < self.max_namespace_bytes {
            out.push(format!(
                "configd.max_response_bytes = {} is below max_namespace_bytes = {} \
                 (a snapshot of a namespace within the limit would not fit)",
                self.max_response_bytes, self.max_namespace_bytes
            ));
        }
        out
    }
}

// Defaults of the keys in sections that also have required keys (a
// section where every key has one uses `#[serde(default)]` and `Default`).
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
fn default_namespaces() -> Vec<String> {
    vec!["features".to_string()]
}
fn default_poll_timeout_s() -> u64 {
    30
}
fn default_backoff_initial_s() -> f64 {
    0.5
}
fn default_backoff_max_s() -> f64 {
    30.0
}
/// 2 MiB: with the private cache and the parsed copy, fits a 64Mi agent
/// (docs/agent.md, "Bounded config").
fn default_max_namespace_bytes() -> u64 {
    2 * 1024 * 1024
}
/// A snapshot of a namespace at the limit, with room for its framing.
fn default_max_response_bytes() -> u64 {
    4 * 1024 * 1024
}

/// Flag/env values that override the file: the agent has only the
/// shared ones.
pub use riskfeat_shared::cli::CommonOverrides as Overrides;

impl config_loader::Overrides<Config> for Overrides {
    fn apply(&self, cfg: &mut Config) {
        self.apply_to(&mut cfg.shared_dir, &mut cfg.log_format, &mut cfg.log_level);
    }
}

impl Config {
    /// Reads, parses, applies overrides and validates; every problem at once.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Self, ConfigError> {
        config_loader::load(path, overrides)
    }

    /// Parses text; `path` only names the file in errors.
    #[cfg(test)]
    pub fn parse(path: &str, text: &str, overrides: &Overrides) -> Result<Self, ConfigError> {
        config_loader::parse(path, text, Path::new("."), overrides)
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

impl Validate for Config {
    /// Every semantic problem (empty when valid).
    fn problems(&self) -> Vec<String> {
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
        url(
            ("vault.addr", &v.addr),
            ("vault.ca_cert_file", v.ca_cert_file.is_some()),
            &mut out,
        );
        if !(v.request_timeout_s > 0.0 && v.request_timeout_s <= 300.0) {
            out.push("vault.request_timeout_s must be in (0, 300]".into());
        }
        AuthSettings::problems(v, &mut out);
        out.extend(v.namespace.as_deref().and_then(auth::namespace_problem));
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
            out.extend(ep.problems(name));
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
        // Durations beyond ten years are typos, and would overflow dates.
        let max = crate::vault::secs::MAX_SECS;
        for (key, v) in [
            ("rotate_lead_s", l.rotate_lead_s),
            ("max_ttl_hint_s", l.max_ttl_hint_s),
            ("replica_wait_s", l.replica_wait_s),
            ("ack_grace_s", l.ack_grace_s),
            ("ready_min_remaining_s", l.ready_min_remaining_s),
            ("shutdown_timeout_s", l.shutdown_timeout_s),
        ] {
            if v > max {
                out.push(format!("lifecycle.{key} must be at most {max} (ten years)"));
            }
        }
        if l.backoff_max_s > max as f64 {
            out.push(format!(
                "lifecycle.backoff_max_s must be at most {max} (ten years)"
            ));
        }
        if !(l.backoff_initial_s > 0.0 && l.backoff_max_s >= l.backoff_initial_s) {
            out.push("lifecycle.backoff_initial_s must be > 0 and <= backoff_max_s".into());
        }
        if let Some(c) = &self.configd {
            out.extend(c.problems());
        }
        output::problems(self, &mut out);
        out
    }
}

/// An `http://` or `https://` base URL; one with its own CA file set must be
/// `https://`.
fn url((name, addr): (&str, &str), (ca, ca_set): (&str, bool), out: &mut Vec<String>) {
    if !(addr.starts_with("http://") || addr.starts_with("https://")) {
        out.push(format!(
            "{name}: {addr:?} must start with http:// or https://"
        ));
    }
    if ca_set && !addr.starts_with("https://") {
        out.push(format!("{ca} is set but {name} {addr:?} is not https://"));
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
pub(crate) mod tests {
    use super::*;
    use riskfeat_shared::testing::assert_contains_all;

    /// The smallest valid config: Vault and the database, every other key
    /// at its default (the harness's `Agent::MINIMAL_TOML` too).
    pub(crate) const MINIMAL: &str = include_str!("../testdata/minimal.toml");

    /// The message of the error parsing `text` as file `name` gives.
    fn rejected(name: &str, text: &str) -> String {
        let err = Config::parse(name, text, &Overrides::default()).unwrap_err();
        err.to_string()
    }

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
        let msg = rejected("agent.toml", &text);
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
            ack_grace_s = 9223372036854775807
            backoff_max_s = 1e300
        "#;
        assert_contains_all(
            &rejected("a.toml", text),
            &[
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
                "lifecycle.ack_grace_s must be at most 315360000 (ten years)",
                "lifecycle.backoff_max_s must be at most",
            ],
        );
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
        let msg = rejected("a.toml", text);
        assert_contains_all(
            &msg,
            &[
                "\n  - colour: unknown key, expected one of `shared_dir`, ",
                "\n  - vault.addr: invalid type: integer `5`, expected a string",
                "\n  - database.replica.extra: unknown key, expected one of `host`, ",
                "\n  - lifecycle.rotate_lead_s: invalid type: string \"soon\", expected u64",
            ],
        );
        // The removals that let the others be found add no "missing" noise.
        assert!(!msg.contains("missing"), "{msg}");
        let err = rejected("a.toml", "[vault\n");
        assert!(
            err.starts_with("a.toml: invalid config:\n  - line 1, column 7 (`[vault`): "),
            "{err}"
        );
    }

    #[test]
    fn every_configd_settings_problem_at_once() {
        let text =
            format!("{MINIMAL}\n[configd]\naddr = \"http://127.0.0.1:1\"\ntoken_file = \"/t\"\n");
        let good = Config::parse("agent.toml", &text, &Overrides::default())
            .unwrap()
            .configd
            .unwrap();
        assert!(good.problems().is_empty());
        let bad = ConfigdSettings {
            addr: "127.0.0.1:8070".into(),
            namespaces: vec!["../x".into()],
            poll_timeout_s: 0,
            backoff_initial_s: 5.0,
            backoff_max_s: 1.0,
            ca_file: Some("/ca.pem".into()),
            max_namespace_bytes: 10,
            max_response_bytes: 5,
            ..good
        };
        assert_contains_all(
            &bad.problems().join("\n"),
            &[
                "configd.addr",
                "configd.ca_file is set but",
                "../x",
                "poll_timeout_s",
                "backoff_initial_s",
                "max_namespace_bytes must be at least 1024",
                "max_response_bytes = 5 is below max_namespace_bytes = 10",
            ],
        );
    }

    #[test]
    fn configd_section_parses() {
        let text = format!(
            "{MINIMAL}\n[configd]\naddr = \"http://127.0.0.1:8070\"\ntoken_file = \"/t\"\nnamespaces = [\"features\"]\n"
        );
        let c = Config::parse("agent.toml", &text, &Overrides::default()).unwrap();
        let configd = c.configd.unwrap();
        assert_eq!(configd.namespaces, ["features"]);
        assert_eq!(configd.poll_timeout_s, 30);
        assert_eq!(configd.max_namespace_bytes, 2 * 1024 * 1024);
        assert_eq!(configd.max_response_bytes, 4 * 1024 * 1024);
    }
}
