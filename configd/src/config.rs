//! The configd config file (TOML, `deny_unknown_fields`) and the tokens file.
//!
//! Every problem is collected and reported at once; the file is loaded
//! through [`riskfeat_shared::config_loader`] like the agent's and worker's,
//! and [`FileConfig`]'s validation reads the files it names. The database
//! DSN and the tokens are secrets: they are read from files and kept in
//! [`riskfeat_shared::Secret`].

use riskfeat_shared::config_loader::{self, Rejected};
use riskfeat_shared::http_server::HttpLimits;
use riskfeat_shared::pg_tls::{ReloadingPgTls, SslMode};
use riskfeat_shared::Secret;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use riskfeat_shared::config_loader::ConfigError;

/// The raw file. Every key but the two files has a default ([`Default`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// HTTP listen address (API, `/healthz`, `/readyz`, `/metrics`).
    pub listen: String,
    /// File holding the PostgreSQL DSN (libpq `key=value` or URL); required.
    pub database_url_file: Option<PathBuf>,
    /// Tokens file (TOML or JSON): `[[tokens]] name, token, role, namespaces`;
    /// required.
    pub tokens_file: Option<PathBuf>,
    /// Largest JSON value of one item, bytes.
    pub max_value_bytes: usize,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Versions of change log kept per namespace (older are compacted).
    pub retention_versions: u64,
    /// Seconds between compaction runs.
    pub compact_interval_s: u64,
    /// Watchers woken per wake tick.
    pub wake_batch: usize,
    /// Milliseconds between wake ticks.
    pub wake_interval_ms: u64,
    /// Seconds between fallback scans of the namespaces table.
    pub scan_interval_s: u64,
    /// Largest long-poll timeout a client may ask for, seconds.
    pub max_poll_timeout_s: u64,
    /// Database pool size.
    pub pool_size: usize,
    /// Load every namespace into the cache at start (under an advisory lock).
    pub warm_up: bool,
    /// PEM certificate chain: with `tls_key_file`, the listener speaks HTTPS
    /// only (both or neither).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Long-polls one token may hold at once; more get 429.
    pub max_watchers_per_token: usize,
    /// Seconds from SIGTERM until configd exits even with requests in
    /// flight (held long-polls are answered 304 at once).
    pub shutdown_timeout_s: u64,
    /// `[http]`: header-read, request and idle timeouts, connection cap.
    pub http: HttpLimits,
    /// `disable` (plain TCP) or `verify-full` (TLS, the server's
    /// certificate must chain to `database_ca_file` and name the host).
    pub database_sslmode: SslMode,
    /// PEM CA(s) for `verify-full`; read again before each new connection.
    pub database_ca_file: Option<PathBuf>,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8070".into(),
            database_url_file: None,
            tokens_file: None,
            max_value_bytes: 64 * 1024,
            max_body_bytes: 1024 * 1024,
            retention_versions: 1000,
            compact_interval_s: 60,
            wake_batch: 500,
            wake_interval_ms: 5,
            scan_interval_s: 5,
            max_poll_timeout_s: 120,
            pool_size: 8,
            warm_up: true,
            tls_cert_file: None,
            tls_key_file: None,
            max_watchers_per_token: 10_000,
            shutdown_timeout_s: 20,
            http: HttpLimits::default(),
            database_sslmode: SslMode::Disable,
            database_ca_file: None,
        }
    }
}

/// Flags/env that win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
}

impl config_loader::Overrides<FileConfig> for Overrides {
    fn apply(&self, cfg: &mut FileConfig) {
        if let Some(l) = self.listen {
            cfg.listen = l.to_string();
        }
    }
}

/// A bearer token's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Read,
}

/// One token from the tokens file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    pub token: Secret,
    pub role: Role,
    pub namespaces: Vec<String>,
}

impl TokenEntry {
    /// True when this token may touch `ns`.
    pub fn allows(&self, ns: &str) -> bool {
        self.namespaces.iter().any(|n| n == "*" || n == ns)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<TokenEntry>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database_url: Secret,
    pub tokens: Vec<TokenEntry>,
    pub max_value_bytes: usize,
    pub max_body_bytes: usize,
    pub retention_versions: u64,
    pub compact_interval: Duration,
    pub wake_batch: usize,
    pub wake_interval: Duration,
    pub scan_interval: Duration,
    pub max_poll_timeout: Duration,
    pub pool_size: usize,
    pub warm_up: bool,
    /// HTTPS when set: the pair as loaded while checking the config.
    pub tls: Option<crate::tls::LoadedTls>,
    pub max_watchers_per_token: usize,
    pub shutdown_timeout: Duration,
    pub http: HttpLimits,
    pub database_sslmode: SslMode,
    /// The connector for every PostgreSQL connection (its CA file, when
    /// set, is read again before each).
    pub database_tls: ReloadingPgTls,
}

/// The trimmed content of a secret file, or why it cannot be had (exit 66
/// when nothing else is wrong).
fn read_secret_file(path: &Path, what: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{what} {}: cannot read: {e}", path.display()))?;
    let text = text.trim().to_string();
    if text.is_empty() {
        return Err(format!("{what} {}: empty", path.display()));
    }
    Ok(text)
}

/// 1-based line and column of byte `offset` of `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// A parser's message without any text of the file: every `"quoted"`
/// value (a token, when it sits in the wrong place) becomes `"***"`, and
/// the value of an unknown variant too. Keys and expectations stay.
fn redact(msg: &str) -> String {
    let mut out = String::new();
    for (i, part) in msg.split('"').enumerate() {
        out.push_str(if i % 2 == 1 { "***" } else { part });
        out.push('"');
    }
    out.pop();
    if let Some((head, rest)) = out.split_once("unknown variant `") {
        if let Some((_, tail)) = rest.split_once('`') {
            return format!("{head}unknown variant `***`{tail}");
        }
    }
    out
}

/// Parses a tokens file (TOML, or JSON when it starts with `{`). A syntax
/// or type error names the file, line and column, never the text there
/// (the line holds a token).
pub fn parse_tokens(text: &str, path: &Path) -> Result<Vec<TokenEntry>, Vec<String>> {
    let parsed: Result<TokensFile, String> = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| {
            let full = e.to_string();
            let msg = full
                .rsplit_once(" at line ")
                .map_or(full.as_str(), |(m, _)| m);
            format!(
                "{}:{}:{}: {}",
                path.display(),
                e.line(),
                e.column(),
                redact(msg)
            )
        })
    } else {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let (line, col) = e.span().map_or((0, 0), |s| line_col(text, s.start));
            let msg = e.message().trim();
            format!("{}:{line}:{col}: {}", path.display(), redact(msg))
        })
    };
    let file = parsed.map_err(|e| vec![format!("tokens_file {e}")])?;
    let mut problems = Vec::new();
    for (i, t) in file.tokens.iter().enumerate() {
        if t.token.expose().len() < 8 {
            problems.push(format!(
                "tokens[{i}] ({}): token shorter than 8 characters",
                t.name
            ));
        }
        if t.namespaces.is_empty() {
            problems.push(format!("tokens[{i}] ({}): namespaces is empty", t.name));
        }
        for ns in &t.namespaces {
            if ns != "*" && !riskfeat_shared::layout::valid_namespace(ns) {
                problems.push(format!(
                    "tokens[{i}] ({}): invalid namespace {ns:?}",
                    t.name
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(file.tokens)
    } else {
        Err(problems)
    }
}

impl config_loader::ConfigFile for FileConfig {
    type Valid = Config;

    /// Checks every value and reads the files named (relative to `base`):
    /// every problem at once, or [`Rejected::Input`] when an unreadable file
    /// is the only one.
    fn validate(self, base: &Path) -> Result<Config, Rejected> {
        let raw = self;
        let mut problems = Vec::new();
        let listen = raw.listen.parse::<SocketAddr>().map_err(|_| {
            problems.push(format!("listen: {:?} is not an address:port", raw.listen));
        });
        let check = |ok: bool, msg: &str, problems: &mut Vec<String>| {
            if !ok {
                problems.push(msg.to_string());
            }
        };
        check(
            raw.max_value_bytes >= 16,
            "max_value_bytes: must be at least 16",
            &mut problems,
        );
        check(
            raw.max_body_bytes >= raw.max_value_bytes,
            "max_body_bytes: must be at least max_value_bytes",
            &mut problems,
        );
        check(
            raw.retention_versions >= 1,
            "retention_versions: must be at least 1",
            &mut problems,
        );
        check(
            raw.wake_batch >= 1,
            "wake_batch: must be at least 1",
            &mut problems,
        );
        check(
            raw.scan_interval_s >= 1,
            "scan_interval_s: must be at least 1",
            &mut problems,
        );
        check(
            raw.compact_interval_s >= 1,
            "compact_interval_s: must be at least 1",
            &mut problems,
        );
        check(
            (1..=3600).contains(&raw.max_poll_timeout_s),
            "max_poll_timeout_s: must be 1..=3600",
            &mut problems,
        );
        check(
            (1..=256).contains(&raw.pool_size),
            "pool_size: must be 1..=256",
            &mut problems,
        );
        check(
            raw.max_watchers_per_token >= 1,
            "max_watchers_per_token: must be at least 1",
            &mut problems,
        );
        check(
            (1..=600).contains(&raw.shutdown_timeout_s),
            "shutdown_timeout_s: must be 1..=600",
            &mut problems,
        );
        problems.extend(raw.http.problems());
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let tls = match (&raw.tls_cert_file, &raw.tls_key_file) {
            (Some(cert), Some(key)) => {
                let files = crate::tls::TlsFiles {
                    cert: resolve(cert),
                    key: resolve(key),
                };
                crate::tls::load(&files)
                    .map_err(|e| problems.push(e.to_string()))
                    .ok()
            }
            (None, None) => None,
            _ => {
                problems.push(
                    "tls_cert_file and tls_key_file: set both (HTTPS) or neither (HTTP)".into(),
                );
                None
            }
        };
        let ca_file = raw.database_ca_file.as_deref().map(resolve);
        if raw.database_sslmode == SslMode::VerifyFull && ca_file.is_none() {
            problems.push(
                "database_sslmode = \"verify-full\" needs database_ca_file (the CA PostgreSQL's certificate chains to)".into(),
            );
        }
        let database_tls = ReloadingPgTls::new("database_ca_file", ca_file.as_deref())
            .map_err(|e| problems.push(e.to_string()))
            .ok();
        let (Some(db_file), Some(tokens_file)) = (&raw.database_url_file, &raw.tokens_file) else {
            for (key, v) in [
                ("database_url_file", &raw.database_url_file),
                ("tokens_file", &raw.tokens_file),
            ] {
                if v.is_none() {
                    problems.push(format!("{key}: required key is missing"));
                }
            }
            return Err(Rejected::Problems(problems));
        };
        let db_path = resolve(db_file);
        let tok_path = resolve(tokens_file);
        let database_url = match read_secret_file(&db_path, "database_url_file") {
            Ok(s) => {
                if let Err(e) = s.parse::<tokio_postgres::Config>() {
                    problems.push(format!(
                        "database_url_file {}: not a valid DSN: {e}",
                        db_path.display()
                    ));
                }
                Some(Secret::new(s))
            }
            Err(m) if problems.is_empty() => return Err(Rejected::Input(m)),
            Err(m) => {
                problems.push(m);
                None
            }
        };
        let tokens = match read_secret_file(&tok_path, "tokens_file") {
            Ok(text) => match parse_tokens(&text, &tok_path) {
                Ok(t) => t,
                Err(p) => {
                    problems.extend(p);
                    Vec::new()
                }
            },
            Err(m) if problems.is_empty() => return Err(Rejected::Input(m)),
            Err(m) => {
                problems.push(m);
                Vec::new()
            }
        };
        if !problems.is_empty() {
            return Err(Rejected::Problems(problems));
        }
        Ok(Config {
            listen: listen.expect("checked"),
            database_url: database_url.expect("checked"),
            tokens,
            max_value_bytes: raw.max_value_bytes,
            max_body_bytes: raw.max_body_bytes,
            retention_versions: raw.retention_versions,
            compact_interval: Duration::from_secs(raw.compact_interval_s),
            wake_batch: raw.wake_batch,
            wake_interval: Duration::from_millis(raw.wake_interval_ms),
            scan_interval: Duration::from_secs(raw.scan_interval_s),
            max_poll_timeout: Duration::from_secs(raw.max_poll_timeout_s),
            pool_size: raw.pool_size,
            warm_up: raw.warm_up,
            tls,
            max_watchers_per_token: raw.max_watchers_per_token,
            shutdown_timeout: Duration::from_secs(raw.shutdown_timeout_s),
            http: raw.http,
            database_sslmode: raw.database_sslmode,
            database_tls: database_tls.expect("checked"),
        })
    }
}

impl Config {
    /// Parses and validates the TOML text; `base` resolves relative paths.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        config_loader::parse::<FileConfig>("(config text)", text, base, &())
    }

    /// Reads `path`, applies `overrides`, validates (relative paths against
    /// its directory).
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        config_loader::load::<FileConfig>(path, overrides)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use riskfeat_shared::testing::assert_contains_all;

    fn setup(tokens: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("db"),
            "host=127.0.0.1 port=5432 user=x dbname=y\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("tokens.toml"), tokens).unwrap();
        dir
    }

    /// The two files [`setup`] writes, relative to its dir.
    const FILES: &str = "database_url_file='db'\ntokens_file='tokens.toml'\n";

    const TOKENS: &str =
        "[[tokens]]\nname='a'\ntoken='0123456789'\nrole='admin'\nnamespaces=['*']\n";

    /// The message of the error parsing `text` (files in `dir`) gives.
    fn rejected(text: &str, dir: &std::path::Path) -> String {
        Config::parse(text, dir).unwrap_err().to_string()
    }

    #[test]
    fn defaults_and_relative_paths() {
        let dir = setup(TOKENS);
        let cfg = Config::parse(FILES, dir.path()).unwrap();
        assert_eq!(cfg.listen.port(), 8070);
        assert_eq!(cfg.tokens.len(), 1);
        assert!(cfg.tokens[0].allows("anything"));
    }

    #[test]
    fn every_problem_at_once() {
        let dir = setup("[[tokens]]\nname='a'\ntoken='short'\nrole='read'\nnamespaces=[]\n");
        let text = rejected(&format!("listen='nope'\n{FILES}wake_batch=0\n"), dir.path());
        assert_contains_all(
            &text,
            &[
                "listen",
                "wake_batch",
                "shorter than 8",
                "namespaces is empty",
            ],
        );
    }

    #[test]
    fn unknown_keys_rejected() {
        let dir = setup(TOKENS);
        let err = rejected(&format!("{FILES}bogus=1\n"), dir.path());
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn type_errors_and_missing_files_are_listed_with_their_keys() {
        let dir = setup(TOKENS);
        assert_contains_all(
            &rejected("wake_batch = 'x'\nbogus = 1\n", dir.path()),
            &[
                "(config text): invalid config:\n",
                "\n  - wake_batch: invalid type: string \"x\", expected usize",
                "\n  - bogus: unknown key, expected one of `listen`, ",
            ],
        );
        assert_contains_all(
            &rejected("pool_size = 0\n", dir.path()),
            &[
                "\n  - pool_size: must be 1..=256",
                "\n  - database_url_file: required key is missing",
                "\n  - tokens_file: required key is missing",
            ],
        );
        // An unreadable file with nothing else wrong: exit 66.
        let err = Config::parse(
            "database_url_file='absent'\ntokens_file='tokens.toml'\n",
            dir.path(),
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::Input { .. }), "{err:?}");
        assert!(err.to_string().contains("database_url_file"), "{err}");
        let fatal = err.fatal(riskfeat_shared::exit::Fatal::Input);
        assert_eq!(fatal.exit_code(), 66);
    }

    #[test]
    fn tls_files_are_both_or_neither_and_must_load() {
        let dir = setup(TOKENS);
        let base = FILES;
        let half = Config::parse(&format!("{base}tls_cert_file='c.pem'\n"), dir.path());
        assert!(half.unwrap_err().to_string().contains("set both"));
        let ca = riskfeat_tests::TestCa::new("unit").unwrap();
        let a = ca.issue_server(&["127.0.0.1"]).unwrap();
        let b = ca.issue_server(&["127.0.0.1"]).unwrap();
        std::fs::write(dir.path().join("c.pem"), &a.cert_pem).unwrap();
        std::fs::write(dir.path().join("k.pem"), &a.key_pem).unwrap();
        std::fs::write(dir.path().join("other.pem"), &b.key_pem).unwrap();
        std::fs::write(dir.path().join("junk.pem"), "not pem").unwrap();
        let both = format!("{base}tls_cert_file='c.pem'\ntls_key_file='k.pem'\n");
        let cfg = Config::parse(&both, dir.path()).unwrap();
        assert_eq!(cfg.tls.unwrap().files.key, dir.path().join("k.pem"));
        for (cert, key, needle) in [
            ("c.pem", "other.pem", "tls_key_file"),
            ("junk.pem", "k.pem", "tls_cert_file"),
            ("c.pem", "junk.pem", "tls_key_file"),
            ("missing.pem", "k.pem", "cannot read"),
        ] {
            let text = format!("{base}tls_cert_file='{cert}'\ntls_key_file='{key}'\n");
            let e = Config::parse(&text, dir.path()).unwrap_err().to_string();
            assert!(e.contains(needle), "{cert}/{key}: {e}");
        }
    }

    #[test]
    fn tokens_file_errors_name_file_line_and_column_never_the_text() {
        let secret = "supersecret-token-value-42";
        let path = Path::new("/etc/riskfeat/tokens.toml");
        for (text, at) in [
            // Unterminated string: the offending line is the token's.
            (
                format!("[[tokens]]\nname = 'a'\ntoken = \"{secret}\nrole = 'admin'\nnamespaces = ['*']\n"),
                ":3:",
            ),
            // A token where a list belongs.
            (
                format!("[[tokens]]\nname = 'a'\ntoken = 'x12345678'\nrole = 'admin'\nnamespaces = \"{secret}\"\n"),
                ":5:",
            ),
            // A token as the role.
            (
                format!("[[tokens]]\nname = 'a'\ntoken = 'x12345678'\nrole = '{secret}'\nnamespaces = ['*']\n"),
                ":4:",
            ),
            (
                format!("{{\"tokens\": [{{\"name\": \"a\", \"token\": \"x12345678\", \"role\": \"read\", \"namespaces\": \"{secret}\"}}]}}"),
                ":1:",
            ),
        ] {
            let err = parse_tokens(&text, path).unwrap_err().join("\n");
            assert!(
                err.starts_with("tokens_file /etc/riskfeat/tokens.toml:") && err.contains(at),
                "{at}: {err}"
            );
            assert!(!err.contains(secret), "the token leaked: {err}");
            assert!(!err.contains("supersecret"), "the token leaked: {err}");
        }
    }

    #[test]
    fn database_verify_full_needs_a_usable_ca_file() {
        let dir = setup(TOKENS);
        let base =
            "database_url_file='db'\ntokens_file='tokens.toml'\ndatabase_sslmode='verify-full'\n";
        let e = Config::parse(base, dir.path()).unwrap_err().to_string();
        assert!(e.contains("needs database_ca_file"), "{e}");
        std::fs::write(dir.path().join("junk.pem"), "not pem").unwrap();
        let e = Config::parse(&format!("{base}database_ca_file='junk.pem'\n"), dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("database_ca_file"), "{e}");
        let ca = riskfeat_tests::TestCa::new("unit").unwrap();
        ca.write_cert(&dir.path().join("ca.pem")).unwrap();
        let cfg = Config::parse(&format!("{base}database_ca_file='ca.pem'\n"), dir.path()).unwrap();
        assert_eq!(cfg.database_sslmode, SslMode::VerifyFull);
    }

    #[test]
    fn json_tokens_file() {
        let t = parse_tokens(
            r#"{"tokens":[{"name":"r","token":"abcdefghij","role":"read","namespaces":["features"]}]}"#,
            Path::new("t.json"),
        )
        .unwrap();
        assert!(t[0].allows("features") && !t[0].allows("other"));
        assert_eq!(t[0].role, Role::Read);
    }
}
