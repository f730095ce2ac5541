//! The whole test stack: PostgreSQL primary + replica ([`crate::pg`]),
//! OpenBao ([`crate::bao`]) bootstrapped like production from
//! `k8s/bootstrap/vault/` (AppRole `riskfeat-agent` with the agent's policy,
//! the database secrets engine on the PRIMARY, role `feature-reader`; in a
//! Vault namespace of its own when asked), the
//! AppRole's role_id/secret_id in 0600 files, a shared dir on tmpfs, and an
//! optional [`TcpProxy`] in front of Vault.

use crate::bao::Bao;
use crate::bootstrap::{self, APPROLE_MOUNT, APPROLE_ROLE, DB_CONNECTION, DB_MOUNT, DB_ROLE};
use crate::pg::PgCluster;
use crate::proxy::TcpProxy;
use anyhow::Context;
use reqwest::Method;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a test can choose about its stack.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// `default_ttl` of the database role.
    pub default_ttl: Duration,
    /// `max_ttl` of the database role.
    pub max_ttl: Duration,
    /// `token_ttl` of the AppRole role.
    pub token_ttl: Duration,
    pub token_max_ttl: Option<Duration>,
    /// Periodic tokens when set.
    pub token_period: Option<Duration>,
    /// Start a streaming replica.
    pub replica: bool,
    /// Put a [`TcpProxy`] in front of Vault ([`Stack::vault_addr`] uses it).
    pub vault_proxy: bool,
    /// Vault serves HTTPS with a private CA ([`Bao::ca_cert`]).
    pub vault_tls: bool,
    /// A non-dev OpenBao on integrated storage, which [`Bao::restart`] can stop
    /// and start again (not with `vault_tls`).
    pub vault_persistent: bool,
    /// Bootstrap Vault inside this namespace (created first), not the root
    /// one; the [`Stack`] helpers then address it too.
    pub vault_namespace: Option<String>,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            default_ttl: Duration::from_secs(3600),
            max_ttl: Duration::from_secs(24 * 3600),
            token_ttl: Duration::from_secs(3600),
            token_max_ttl: None,
            token_period: None,
            replica: true,
            vault_proxy: false,
            vault_tls: false,
            vault_persistent: false,
            vault_namespace: None,
        }
    }
}

impl StackOptions {
    /// The defaults, with the database role's `default_ttl` and `max_ttl`
    /// (in seconds): how soon credentials need renewing and replacing.
    pub fn with_ttls(default_ttl_s: u64, max_ttl_s: u64) -> StackOptions {
        StackOptions {
            default_ttl: Duration::from_secs(default_ttl_s),
            max_ttl: Duration::from_secs(max_ttl_s),
            ..Default::default()
        }
    }
}

/// What a test adds to [`Stack::agent_toml`]; every field is TOML text.
#[derive(Debug, Default, Clone, Copy)]
pub struct AgentToml<'a> {
    /// `shared_dir` (default the stack's), e.g. for a second agent.
    pub shared_dir: Option<&'a Path>,
    /// `metrics_addr` (default `127.0.0.1:0`).
    pub metrics_addr: Option<&'a str>,
    /// More top-level keys (e.g. `log_level = "debug"`).
    pub top: &'a str,
    /// More `[vault]` keys (e.g. `ca_cert_file`).
    pub vault: &'a str,
    /// More `[database]` keys (e.g. `ca_file`).
    pub database: &'a str,
    /// The replica endpoint's `sslmode`, when not the default.
    pub replica_sslmode: Option<&'a str>,
    /// Further sections: `[lifecycle]`, `[configd]`, `[fallback]`...
    pub sections: &'a str,
}

/// The AppRole the agent logs in with.
pub struct AppRole {
    pub role_name: String,
    pub role_id: String,
    pub secret_id: String,
    /// 0600 files in a temp dir of their own (removed on drop).
    pub role_id_file: PathBuf,
    pub secret_id_file: PathBuf,
    pub approle_mount: String,
    pub db_mount: String,
    pub db_role: String,
    dir: tempfile::TempDir,
}

impl AppRole {
    /// The temp dir holding the role_id and secret_id files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A credential issued by [`Stack::issue_creds`].
#[derive(Debug, Clone)]
pub struct IssuedCreds {
    pub username: String,
    pub password: String,
    pub lease_id: String,
    pub lease_duration: u64,
    pub renewable: bool,
}

/// PostgreSQL + OpenBao + AppRole + shared dir; everything stops and every
/// temp dir goes when it is dropped (also while a test panics).
pub struct Stack {
    pub pg: PgCluster,
    pub bao: Bao,
    pub approle: AppRole,
    /// Under `/dev/shm` (tmpfs) when it exists, mode 0750.
    pub shared_dir: tempfile::TempDir,
    pub vault_proxy: Option<TcpProxy>,
    opts: StackOptions,
    agent_token: tokio::sync::Mutex<Option<String>>,
}

impl Stack {
    /// Starts and bootstraps everything (PostgreSQL and OpenBao in
    /// parallel).
    pub async fn start(opts: StackOptions) -> anyhow::Result<Stack> {
        anyhow::ensure!(
            !(opts.vault_tls && opts.vault_persistent),
            "a persistent OpenBao serves plain HTTP only"
        );
        let bao = async {
            if opts.vault_tls {
                Bao::start_tls().await
            } else if opts.vault_persistent {
                Bao::start_persistent().await
            } else {
                Bao::start().await
            }
        };
        let (pg, bao) = tokio::try_join!(PgCluster::start(opts.replica), bao)?;
        let approle = bootstrap_vault(&bao, &pg, &opts).await?;
        let shared_dir = shared_dir()?;
        let vault_proxy = if opts.vault_proxy {
            let upstream = bao
                .addr
                .split_once("://")
                .map_or(bao.addr.as_str(), |(_, hostport)| hostport)
                .parse()
                .context("parsing Vault's address")?;
            Some(TcpProxy::start(upstream).await?)
        } else {
            None
        };
        Ok(Stack {
            pg,
            bao,
            approle,
            shared_dir,
            vault_proxy,
            opts,
            agent_token: tokio::sync::Mutex::new(None),
        })
    }

    /// An agent config (TOML) for this stack: `shared_dir`, `[vault]`
    /// (address, AppRole files, a 2 s request timeout) and `[database]`
    /// (primary and replica), plus what `t` adds. One writer for every
    /// test and the demo, so a new required key is added once.
    pub fn agent_toml(&self, t: AgentToml<'_>) -> String {
        let ep = |e: &riskfeat_shared::creds::Endpoint, sslmode: Option<&str>| {
            let tls = sslmode
                .map(|m| format!(", sslmode = \"{m}\""))
                .unwrap_or_default();
            format!(
                "{{ host = \"{}\", port = {}, dbname = \"{}\"{tls} }}",
                e.host, e.port, e.dbname
            )
        };
        format!(
            "shared_dir = \"{shared}\"\nmetrics_addr = \"{metrics}\"\n{top}\n\n\
             [vault]\naddr = \"{vault}\"\nrole_id_file = \"{role_id}\"\n\
             secret_id_file = \"{secret_id}\"\nrequest_timeout_s = 2.0\n{vault_extra}\n\n\
             [database]\nprimary = {primary}\nreplica = {replica}\n{database}\n\n{sections}\n",
            shared = t.shared_dir.unwrap_or(self.shared_dir.path()).display(),
            metrics = t.metrics_addr.unwrap_or("127.0.0.1:0"),
            top = t.top,
            vault = self.vault_addr(),
            role_id = self.approle.role_id_file.display(),
            secret_id = self.approle.secret_id_file.display(),
            vault_extra = t.vault,
            primary = ep(&self.pg.primary.endpoint(), None),
            replica = ep(&self.pg.replica().endpoint(), t.replica_sslmode),
            database = t.database,
            sections = t.sections,
        )
    }

    /// [`Stack::agent_toml`] written to `<dir>/agent.toml`; returns the path
    /// (for [`crate::Agent::spawn`]).
    pub fn write_agent_toml(&self, dir: &Path, t: AgentToml<'_>) -> anyhow::Result<PathBuf> {
        let path = dir.join("agent.toml");
        std::fs::write(&path, self.agent_toml(t))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// An agent config following configd, written to `<dir>/agent.toml`
    /// (path returned): read token `token` in `<dir>/configd.token`, and a
    /// `[configd]` section of `lines` (`addr`, `namespaces`, any other key)
    /// and the test defaults for what `lines` does not set: a 5 s long-poll
    /// and backoffs from 0.2 s to 1 s. Debug logs of the agent.
    pub fn write_configd_agent_toml(
        &self,
        dir: &Path,
        token: &str,
        lines: &str,
    ) -> anyhow::Result<PathBuf> {
        let token_file = dir.join("configd.token");
        std::fs::write(&token_file, token)
            .with_context(|| format!("writing {}", token_file.display()))?;
        let sets = |key: &str| {
            lines
                .lines()
                .any(|l| l.split('=').next().is_some_and(|k| k.trim() == key))
        };
        let defaults: String = [
            ("poll_timeout_s", "5"),
            ("backoff_initial_s", "0.2"),
            ("backoff_max_s", "1.0"),
        ]
        .iter()
        .filter(|(key, _)| !sets(key))
        .map(|(key, value)| format!("{key} = {value}\n"))
        .collect();
        let sections = format!(
            "[configd]\n{lines}\ntoken_file = \"{}\"\n{defaults}",
            token_file.display()
        );
        self.write_agent_toml(
            dir,
            AgentToml {
                top: "log_level = \"info,riskfeat_agent=debug\"",
                sections: &sections,
                ..Default::default()
            },
        )
    }

    /// Revokes lease `lease_id` as root, as the agent (or an operator)
    /// would: Vault runs the role's revocation statements (ends its
    /// sessions on the primary, drops the role).
    pub async fn revoke_lease(&self, lease_id: &str) -> anyhow::Result<()> {
        self.bao
            .api(
                Method::PUT,
                &self.vault_path("sys/leases/revoke"),
                Some(json!({ "lease_id": lease_id })),
            )
            .await
            .with_context(|| format!("revoking lease {lease_id}"))?;
        Ok(())
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS), through the proxy
    /// when there is one (TLS passes through it untouched).
    pub fn vault_addr(&self) -> String {
        match &self.vault_proxy {
            Some(p) if self.opts.vault_tls => format!("https://{}", p.addr),
            Some(p) => p.http_url(),
            None => self.bao.addr.clone(),
        }
    }

    /// `path` inside [`StackOptions::vault_namespace`] (path-prefix form,
    /// `<namespace>/<path>`), or `path` itself in the root namespace.
    pub fn vault_path(&self, path: &str) -> String {
        ns_path(self.opts.vault_namespace.as_deref(), path)
    }

    /// The options the stack was started with.
    pub fn options(&self) -> &StackOptions {
        &self.opts
    }

    /// Logs in with the AppRole (role_id + secret_id) and returns the token.
    pub async fn approle_login(&self) -> anyhow::Result<String> {
        let v = self
            .bao
            .request(
                None,
                Method::POST,
                &self.vault_path(&format!("auth/{APPROLE_MOUNT}/login")),
                Some(json!({"role_id": self.approle.role_id, "secret_id": self.approle.secret_id})),
            )
            .await
            .context("AppRole login")?;
        str_at(&v, &["auth", "client_token"])
    }

    /// Issues a credential like the agent does: AppRole token (one, kept
    /// and renewed by logging in again when refused), then
    /// `GET database/creds/feature-reader`. Talks to Vault directly, not
    /// through the proxy.
    pub async fn issue_creds(&self) -> anyhow::Result<IssuedCreds> {
        let path = self.vault_path(&format!("{DB_MOUNT}/creds/{DB_ROLE}"));
        let mut guard = self.agent_token.lock().await;
        let token = match guard.as_ref() {
            Some(t) => t.clone(),
            None => {
                let t = self.approle_login().await?;
                *guard = Some(t.clone());
                t
            }
        };
        drop(guard);
        let (status, mut v) = self
            .bao
            .request_raw(Some(&token), Method::GET, &path, None)
            .await?;
        if status == reqwest::StatusCode::FORBIDDEN {
            let t = self.approle_login().await?;
            *self.agent_token.lock().await = Some(t.clone());
            v = self.bao.request(Some(&t), Method::GET, &path, None).await?;
        } else if !status.is_success() {
            anyhow::bail!(
                "Vault GET /v1/{path}: HTTP {status}: {}",
                v.get("errors").unwrap_or(&v)
            );
        }
        Ok(IssuedCreds {
            username: str_at(&v, &["data", "username"])?,
            password: str_at(&v, &["data", "password"])?,
            lease_id: str_at(&v, &["lease_id"])?,
            lease_duration: v["lease_duration"]
                .as_u64()
                .context("lease_duration missing")?,
            renewable: v["renewable"].as_bool().unwrap_or(false),
        })
    }

    /// A new secret_id of the `riskfeat-agent` AppRole (root token).
    pub async fn new_secret_id(&self) -> anyhow::Result<String> {
        let path = format!("auth/{APPROLE_MOUNT}/role/{APPROLE_ROLE}/secret-id");
        self.bao
            .api_str(Method::POST, &self.vault_path(&path), "secret_id")
            .await
    }

    /// A new secret_id of the `riskfeat-agent` AppRole, response-wrapped
    /// for `wrap_ttl` as a CI/CD system would hand it over: the wrapping
    /// token.
    pub async fn new_wrapped_secret_id(&self, wrap_ttl: &str) -> anyhow::Result<String> {
        let path = format!("auth/{APPROLE_MOUNT}/role/{APPROLE_ROLE}/secret-id");
        self.bao
            .api_wrapped(Method::POST, &self.vault_path(&path), wrap_ttl)
            .await
    }

    /// How many leases Vault holds under the creds path (root token): 0
    /// when it lists none.
    pub async fn outstanding_leases(&self) -> anyhow::Result<usize> {
        Ok(self.lease_ids().await?.len())
    }

    /// The ids of the leases Vault holds under the creds path
    /// (`LIST sys/leases/lookup/<mount>/creds/<role>/`, root token), e.g.
    /// `database/creds/feature-reader/<key>`, sorted; empty when none.
    pub async fn lease_ids(&self) -> anyhow::Result<Vec<String>> {
        let prefix = format!("{DB_MOUNT}/creds/{DB_ROLE}/");
        let path = self.vault_path(&format!("sys/leases/lookup/{prefix}"));
        let list = Method::from_bytes(b"LIST").context("the LIST method")?;
        let (code, v) = self
            .bao
            .request_raw(Some(&self.bao.root_token), list, &path, None)
            .await?;
        match code.as_u16() {
            200 => {
                let mut ids: Vec<String> = v["data"]["keys"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(|k| format!("{prefix}{k}"))
                    .collect();
                ids.sort();
                Ok(ids)
            }
            // No lease at all.
            404 => Ok(Vec::new()),
            other => anyhow::bail!("LIST {path}: HTTP {other}: {v}"),
        }
    }

    /// Every process the stack runs (postgres postmasters, bao, proxy
    /// excluded): for teardown checks.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.bao.pid()];
        pids.extend(self.pg.primary.pid());
        if let Some(r) = &self.pg.replica {
            pids.extend(r.pid());
        }
        pids
    }

    /// Every temp dir the stack made: for teardown checks.
    pub fn temp_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![
            self.pg.primary.dir().to_path_buf(),
            self.bao.home().to_path_buf(),
            self.bao
                .log_path()
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            self.approle.dir().to_path_buf(),
            self.shared_dir.path().to_path_buf(),
        ];
        if let Some(r) = &self.pg.replica {
            dirs.push(r.dir().to_path_buf());
        }
        dirs
    }
}

fn str_at(v: &Value, path: &[&str]) -> anyhow::Result<String> {
    let mut cur = v;
    for key in path {
        cur = &cur[*key];
    }
    cur.as_str()
        .map(str::to_string)
        .with_context(|| format!("Vault response has no {}", path.join(".")))
}

fn ns_path(namespace: Option<&str>, path: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{path}"),
        None => path.to_string(),
    }
}

fn secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

/// The production set-up of `k8s/bootstrap/vault/bootstrap.sh`, through the
/// HTTP API.
/// Root: the database engine's connection `name` to the primary as
/// `vault_admin`, for `allowed_roles` (bootstrap, and tests that need a
/// second connection).
pub async fn write_db_connection(
    bao: &Bao,
    pg: &PgCluster,
    config_path: &str,
    allowed_roles: &[&str],
) -> anyhow::Result<()> {
    let p = &pg.primary;
    bao.api(
        Method::POST,
        config_path,
        Some(json!({
            "plugin_name": "postgresql-database-plugin",
            "connection_url": format!(
                "postgresql://{{{{username}}}}:{{{{password}}}}@{}:{}/{}?sslmode=disable",
                p.host, p.port, p.dbname
            ),
            "username": "vault_admin",
            "password": pg.vault_admin_password,
            "allowed_roles": allowed_roles,
            "verify_connection": true,
        })),
    )
    .await
    .map(|_| ())
}

async fn bootstrap_vault(
    bao: &Bao,
    pg: &PgCluster,
    opts: &StackOptions,
) -> anyhow::Result<AppRole> {
    let ns = opts.vault_namespace.as_deref();
    if let Some(ns) = ns {
        bao.api(Method::POST, &format!("sys/namespaces/{ns}"), None)
            .await
            .context("creating the Vault namespace")?;
    }
    let at = |path: String| ns_path(ns, &path);
    bao.api(
        Method::POST,
        &at(format!("sys/auth/{APPROLE_MOUNT}")),
        Some(json!({"type": "approle"})),
    )
    .await?;
    bao.api(
        Method::PUT,
        &at(format!("sys/policies/acl/{}", bootstrap::AGENT_POLICY)),
        Some(json!({"policy": bootstrap::AGENT_POLICY_HCL})),
    )
    .await?;
    let mut role = json!({
        "token_policies": [bootstrap::AGENT_POLICY],
        // Not Vault's `default` policy: it grants sys/leases/renew (body
        // form, any lease) to every token.
        "token_no_default_policy": true,
        "token_ttl": secs(opts.token_ttl),
    });
    if let Some(max) = opts.token_max_ttl {
        role["token_max_ttl"] = json!(secs(max));
    }
    if let Some(period) = opts.token_period {
        role["token_period"] = json!(secs(period));
    }
    bao.api(
        Method::POST,
        &at(format!("auth/{APPROLE_MOUNT}/role/{APPROLE_ROLE}")),
        Some(role),
    )
    .await?;
    let role_path = format!("auth/{APPROLE_MOUNT}/role/{APPROLE_ROLE}");
    let role_id = bao
        .api_str(Method::GET, &at(format!("{role_path}/role-id")), "role_id")
        .await?;
    let secret_id = bao
        .api_str(
            Method::POST,
            &at(format!("{role_path}/secret-id")),
            "secret_id",
        )
        .await?;

    bao.api(
        Method::POST,
        &at(format!("sys/mounts/{DB_MOUNT}")),
        Some(json!({"type": "database"})),
    )
    .await?;
    write_db_connection(
        bao,
        pg,
        &at(format!("{DB_MOUNT}/config/{DB_CONNECTION}")),
        &[DB_ROLE],
    )
    .await
    .context("configuring the database secrets engine")?;
    bao.api(
        Method::POST,
        &at(format!("{DB_MOUNT}/roles/{DB_ROLE}")),
        Some(json!({
            "db_name": DB_CONNECTION,
            "creation_statements": [bootstrap::CREATION_SQL],
            "revocation_statements": [bootstrap::REVOCATION_SQL],
            "default_ttl": secs(opts.default_ttl),
            "max_ttl": secs(opts.max_ttl),
        })),
    )
    .await?;

    let dir = tempfile::Builder::new()
        .prefix("riskfeat-approle-")
        .tempdir()?;
    let role_id_file = dir.path().join("role_id");
    let secret_id_file = dir.path().join("secret_id");
    for (path, value) in [(&role_id_file, &role_id), (&secret_id_file, &secret_id)] {
        std::fs::write(path, value).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(AppRole {
        role_name: APPROLE_ROLE.to_string(),
        role_id,
        secret_id,
        role_id_file,
        secret_id_file,
        approle_mount: APPROLE_MOUNT.to_string(),
        db_mount: DB_MOUNT.to_string(),
        db_role: DB_ROLE.to_string(),
        dir,
    })
}

/// A fresh shared dir: under `/dev/shm` (tmpfs) when it exists, mode 0750.
/// A new memory-backed shared dir (0750) under `/dev/shm` when there is
/// one, e.g. for a second agent.
pub fn shared_dir() -> anyhow::Result<tempfile::TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("riskfeat-shared-");
    let dir = if Path::new("/dev/shm").is_dir() {
        builder.tempdir_in("/dev/shm")
    } else {
        builder.tempdir()
    }
    .context("creating the shared dir")?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o750))?;
    Ok(dir)
}
