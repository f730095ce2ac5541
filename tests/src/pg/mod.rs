//! PostgreSQL 15 for tests: a primary with scram-sha-256 password auth and an
//! optional streaming replica of it (`pg_basebackup -R`), each on an
//! ephemeral loopback port in its own temp dir, with the production roles and
//! schema from `k8s/bootstrap/postgres/` applied.
//!
//! When the tests run as root, the server binaries run as the `postgres`
//! user and the data dirs belong to it. A data dir made by `initdb` is cached
//! once (under a file lock) in [`crate::process::cache_dir`] and copied for
//! each server ([`files`]: the server user, its temp dirs, the template).
//! Dropping a [`PgServer`] stops it (immediate shutdown, then
//! SIGKILL of its process group) and removes its directory; if the test
//! process dies without dropping it, the postmaster gets SIGQUIT, and the
//! next test process removes the directory.

mod files;

pub use files::pg_bin;

use crate::bootstrap;
use crate::process::{free_port, log_tail, random_token};
use anyhow::{bail, Context};
use files::{copy_dir, give_to_server, pg_command, run, server_temp_dir, template};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use riskfeat_shared::creds::Endpoint;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

/// Database name on both servers.
pub const DBNAME: &str = "riskfeat";
/// Superuser created by initdb.
pub const SUPERUSER: &str = "postgres";

/// One PostgreSQL server process with its own data dir.
pub struct PgServer {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub superuser: String,
    pub superuser_password: String,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl PgServer {
    /// A server from a fresh copy of the template (not started).
    fn from_template(kind: &str) -> anyhow::Result<PgServer> {
        let (template, password) = template()?;
        let dir = server_temp_dir(&format!("riskfeat-pg-{kind}-"))?;
        let data_dir = dir.path().join("data");
        copy_dir(&template, &data_dir)?;
        Self::in_dir(dir, data_dir, password)
    }

    fn in_dir(
        dir: tempfile::TempDir,
        data_dir: PathBuf,
        superuser_password: String,
    ) -> anyhow::Result<PgServer> {
        let sock = dir.path().join("sock");
        fs::create_dir(&sock)?;
        give_to_server(&sock)?;
        let log_path = dir.path().join("postgres.log");
        File::create(&log_path)?;
        give_to_server(&log_path)?;
        Ok(PgServer {
            host: "127.0.0.1".to_string(),
            port: 0,
            dbname: DBNAME.to_string(),
            superuser: SUPERUSER.to_string(),
            superuser_password,
            data_dir,
            log_path,
            child: None,
            dir,
        })
    }

    /// Picks a port and starts; retries with another port if it was taken.
    fn first_start(&mut self) -> anyhow::Result<()> {
        let mut last = None;
        for _ in 0..5 {
            self.port = free_port()?;
            let mut conf = File::options()
                .append(true)
                .open(self.data_dir.join("postgresql.conf"))?;
            writeln!(
                conf,
                "port = {}\nunix_socket_directories = '{}'",
                self.port,
                self.dir.path().join("sock").display()
            )?;
            match self.start() {
                Ok(()) => return Ok(()),
                Err(e) if log_tail(&self.log_path, 20).contains("could not bind") => {
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// Starts the server on its port and data (again, after [`stop`]);
    /// returns once it accepts connections.
    ///
    /// [`stop`]: PgServer::stop
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let log = File::options().append(true).open(&self.log_path)?;
        let mut cmd = pg_command("postgres", self.dir.path())?;
        cmd.arg("-D")
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        // Immediate shutdown if the test process dies without dropping us.
        let child =
            crate::process::spawn_tied(cmd, Signal::SIGQUIT).context("starting postgres")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!(
                    "postgres on port {} exited during start-up ({status}):\n{}",
                    self.port,
                    log_tail(&self.log_path, 20)
                );
            }
            if self.accepting() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill_now();
                bail!(
                    "postgres on port {} did not start in 60 s:\n{}",
                    self.port,
                    log_tail(&self.log_path, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `postmaster.pid` says ready (or standby) and the port answers.
    fn accepting(&self) -> bool {
        let Ok(pid_file) = fs::read_to_string(self.data_dir.join("postmaster.pid")) else {
            return false;
        };
        let status = pid_file.lines().nth(7).unwrap_or("").trim();
        (status == "ready" || status == "standby")
            && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }

    fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => matches!(c.try_wait(), Ok(None)),
        }
    }

    /// Stops the server (fast shutdown: sessions are ended, data kept).
    /// [`start`](PgServer::start) brings it back on the same port.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = Pid::from_raw(child.id() as i32);
        for (sig, wait) in [(Signal::SIGINT, 20), (Signal::SIGQUIT, 5)] {
            let _ = kill(pid, sig);
            let deadline = Instant::now() + Duration::from_secs(wait);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    let _ = killpg(pid, Signal::SIGKILL);
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = child.wait();
        bail!(
            "postgres on port {} ignored SIGINT and SIGQUIT; killed",
            self.port
        )
    }

    /// Immediate shutdown (SIGQUIT), then SIGKILL of the process group.
    fn kill_now(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGQUIT);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = kill(pid, Signal::SIGKILL);
        let _ = child.wait();
    }

    /// The postmaster's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The server's temp dir (data dir, socket dir, log); removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server log so far.
    pub fn logs(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            host: self.host.clone(),
            port: self.port,
            dbname: self.dbname.clone(),
            sslmode: Default::default(),
        }
    }

    /// A libpq-style DSN for `user` (password included).
    pub fn dsn(&self, user: &str, password: &str) -> String {
        format!(
            "host={} port={} dbname={} user={} password={}",
            self.host, self.port, self.dbname, user, password
        )
    }

    /// The superuser's DSN (for `cargo xtask seed-data --dsn`, psql...).
    pub fn superuser_dsn(&self) -> String {
        self.dsn(&self.superuser, &self.superuser_password)
    }

    /// Superuser connection to `riskfeat`.
    pub async fn connect_superuser(&self) -> anyhow::Result<tokio_postgres::Client> {
        self.connect_db(&self.dbname)
            .await
            .with_context(|| format!("connecting as superuser to 127.0.0.1:{}", self.port))
    }

    async fn connect_db(&self, db: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        connect(self, db, &self.superuser, &self.superuser_password).await
    }

    /// Turns TLS on with `cert` (written into the data dir, the key 0600
    /// and owned by the server user) and reloads; with `reject_plain_for`,
    /// members of that role are refused without TLS (`hostnossl ... reject`
    /// first in pg_hba.conf), so a client that silently skipped TLS fails.
    /// Returns once `SHOW ssl` says on.
    pub async fn enable_tls(
        &self,
        cert: &crate::tls::ServerCert,
        reject_plain_for: Option<&str>,
    ) -> anyhow::Result<()> {
        for (name, pem, mode) in [
            ("server.crt", &cert.cert_pem, 0o644),
            ("server.key", &cert.key_pem, 0o600),
        ] {
            let path = self.data_dir.join(name);
            fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
            give_to_server(&path)?;
        }
        let mut conf = File::options()
            .append(true)
            .open(self.data_dir.join("postgresql.conf"))?;
        writeln!(
            conf,
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'"
        )?;
        if let Some(role) = reject_plain_for {
            let hba = self.data_dir.join("pg_hba.conf");
            let old =
                fs::read_to_string(&hba).with_context(|| format!("reading {}", hba.display()))?;
            fs::write(
                &hba,
                format!("hostnossl all +{role} 127.0.0.1/32 reject\n{old}"),
            )?;
        }
        let db = self.connect_superuser().await?;
        db.batch_execute("SELECT pg_reload_conf()").await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let on: String = db.query_one("SHOW ssl", &[]).await?.get(0);
            if on == "on" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "postgres on port {} did not turn ssl on:\n{}",
                    self.port,
                    log_tail(&self.log_path, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Connects to `riskfeat` as `user`; the driver's error as is (tests
    /// check e.g. that a revoked role is refused).
    pub async fn connect_as(
        &self,
        user: &str,
        password: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        connect(self, &self.dbname, user, password).await
    }
}

/// Connects to database `db` of `server` as `user` (plain TCP, 10 s
/// connect timeout); the connection runs on a spawned task.
async fn connect(
    server: &PgServer,
    db: &str,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&server.host)
        .port(server.port)
        .dbname(db)
        .user(user)
        .password(password)
        .connect_timeout(Duration::from_secs(10));
    let (client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// A primary and, optionally, its streaming replica.
pub struct PgCluster {
    pub primary: PgServer,
    pub replica: Option<PgServer>,
    /// Password of `vault_admin` (set by the harness after
    /// `00-roles.sql`, which holds none).
    pub vault_admin_password: String,
}

impl PgCluster {
    /// Starts the primary, creates database `riskfeat`, applies
    /// `k8s/bootstrap/postgres/*.sql`, and (with `with_replica`) clones a
    /// streaming replica from it.
    pub async fn start(with_replica: bool) -> anyhow::Result<PgCluster> {
        let mut primary = tokio::task::spawn_blocking(|| -> anyhow::Result<PgServer> {
            let mut server = PgServer::from_template("primary")?;
            server.first_start()?;
            Ok(server)
        })
        .await??;

        // A fresh superuser password per cluster (the template's is shared).
        let admin = primary
            .connect_db("postgres")
            .await
            .context("connecting to the new primary")?;
        let password = random_token(24);
        admin
            .batch_execute(&format!("ALTER ROLE {SUPERUSER} PASSWORD '{password}'"))
            .await
            .context("setting the superuser's password")?;
        admin
            .batch_execute(&format!("CREATE DATABASE {DBNAME}"))
            .await
            .context("creating database riskfeat")?;
        primary.superuser_password = password;
        drop(admin);

        let vault_admin_password = random_token(24);
        let db = primary.connect_superuser().await?;
        db.batch_execute(bootstrap::ROLES_SQL)
            .await
            .context("applying k8s/bootstrap/postgres/00-roles.sql")?;
        db.batch_execute(&format!(
            "ALTER ROLE vault_admin PASSWORD '{vault_admin_password}'"
        ))
        .await
        .context("setting vault_admin's password")?;
        db.batch_execute(bootstrap::SCHEMA_SQL)
            .await
            .context("applying k8s/bootstrap/postgres/01-schema.sql")?;
        drop(db);

        let mut cluster = PgCluster {
            primary,
            replica: None,
            vault_admin_password,
        };
        if with_replica {
            let (port, password) = (
                cluster.primary.port,
                cluster.primary.superuser_password.clone(),
            );
            let replica =
                tokio::task::spawn_blocking(move || clone_replica(port, password)).await??;
            cluster.replica = Some(replica);
            cluster.wait_replica_caught_up().await?;
        }
        Ok(cluster)
    }

    /// The replica; panics when the cluster has none.
    pub fn replica(&self) -> &PgServer {
        self.replica
            .as_ref()
            .expect("this PgCluster was started without a replica")
    }

    /// The replica, mutably (to stop and start it); panics without one.
    pub fn replica_mut(&mut self) -> &mut PgServer {
        self.replica
            .as_mut()
            .expect("this PgCluster was started without a replica")
    }

    /// Waits (30 s at most) until the replica replayed everything the
    /// primary had written when this was called.
    pub async fn wait_replica_caught_up(&self) -> anyhow::Result<()> {
        let primary = self.primary.connect_superuser().await?;
        let lsn: String = primary
            .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
            .await?
            .get(0);
        let replica = self.replica().connect_superuser().await?;
        let sql = format!("SELECT coalesce(pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn, false)");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let done: bool = replica.query_one(&sql, &[]).await?.get(0);
            if done {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("replica did not replay up to {lsn} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// `pg_basebackup -R` from the primary on `primary_port`, then start.
fn clone_replica(primary_port: u16, password: String) -> anyhow::Result<PgServer> {
    let dir = server_temp_dir("riskfeat-pg-replica-")?;
    let data_dir = dir.path().join("data");
    let slot = format!("riskfeat_replica_{}", random_token(8).to_lowercase());
    let mut cmd = pg_command("pg_basebackup", dir.path())?;
    cmd.arg("-D")
        .arg(&data_dir)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &primary_port.to_string(),
            "-U",
            SUPERUSER,
        ])
        .args([
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
            "-C",
            "-S",
            &slot,
        ])
        .env("PGPASSWORD", &password);
    run(cmd, "pg_basebackup")?;
    // Spell out the connection (pg_basebackup -R may leave the password out).
    let mut auto = File::options()
        .append(true)
        .open(data_dir.join("postgresql.auto.conf"))?;
    writeln!(
        auto,
        "primary_conninfo = 'host=127.0.0.1 port={primary_port} user={SUPERUSER} password={password} application_name=riskfeat_replica'\nprimary_slot_name = '{slot}'"
    )?;
    drop(auto);
    let mut server = PgServer::in_dir(dir, data_dir, password)?;
    server.first_start()?;
    Ok(server)
}

/// Terminates (`pg_terminate_backend`) every client backend named
/// `application_name` on the server `su` is a superuser session of, as a
/// failover or an operator would: their clients get SQLSTATE 57P01.
/// Returns how many were signalled.
pub async fn terminate_backends(
    su: &tokio_postgres::Client,
    application_name: &str,
) -> anyhow::Result<u64> {
    let killed: i64 = su
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = $1 AND backend_type = 'client backend'",
            &[&application_name],
        )
        .await?
        .get(0);
    Ok(killed as u64)
}
