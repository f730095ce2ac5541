//! Acceptance tests of the harness itself (issue 3, and issue 7's "the
//! bootstrap files are the ones the harness applies"):
//! - the stack starts and its credentials log in on the replica, 3,000 of
//!   them (membership in `feature_reader`, never per-role grants);
//! - nothing of a stack remains after it is dropped, also after a panic;
//! - the TCP proxy cuts, refuses, restores and delays;
//! - Vault and PostgreSQL hold exactly the files of `k8s/bootstrap/`, and
//!   `k8s/bootstrap/vault/bootstrap.sh` sets up the same thing;
//! - a server stops and starts on the same port with its data; the data
//!   generator is deterministic and COPY loads it.

use futures::{StreamExt, TryStreamExt};
use reqwest::Method;
use riskfeat_tests::bootstrap::{self, FILES};
use riskfeat_tests::{
    data, wait_until, Bao, IssuedCreds, PgCluster, PgServer, Stack, StackOptions, TcpProxy,
};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::types::{FromSql, ToSql};

/// The fields of `/proc/<pid>/stat` after the command name (state first).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    Some(after_comm.split_whitespace().map(str::to_string).collect())
}

/// `(pid, start time)` of a process, from `/proc/<pid>/stat`: a pid alone
/// could be reused by the time we check.
fn proc_identity(pid: u32) -> Option<(u32, u64)> {
    let fields = stat_fields(pid)?;
    // Field 3 is state; a zombie is gone for our purpose.
    if fields.first().is_some_and(|s| s == "Z") {
        return None;
    }
    Some((pid, fields.get(19)?.parse().ok()?))
}

fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// `roots` and all their descendants, with start times.
fn process_tree(roots: &[u32]) -> Vec<(u32, u64)> {
    let all: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let mut tree: Vec<u32> = roots.to_vec();
    let mut grew = true;
    while grew {
        grew = false;
        for &pid in &all {
            if !tree.contains(&pid) && parent_of(pid).is_some_and(|pp| tree.contains(&pp)) {
                tree.push(pid);
                grew = true;
            }
        }
    }
    tree.into_iter().filter_map(proc_identity).collect()
}

fn still_alive(procs: &[(u32, u64)]) -> Vec<(u32, u64)> {
    procs
        .iter()
        .filter(|(pid, start)| proc_identity(*pid).is_some_and(|(_, s)| s == *start))
        .copied()
        .collect()
}

/// What a stack left behind: live processes and existing dirs.
fn leftovers(procs: &[(u32, u64)], dirs: &[PathBuf]) -> (Vec<(u32, u64)>, Vec<PathBuf>) {
    (
        still_alive(procs),
        dirs.iter().filter(|d| d.exists()).cloned().collect(),
    )
}

/// `creds` logged in on `server`.
async fn login(server: &PgServer, creds: &IssuedCreds) -> tokio_postgres::Client {
    server
        .connect_as(&creds.username, &creds.password)
        .await
        .unwrap()
}

/// The first column of the one row `sql` returns.
async fn scalar<T: for<'a> FromSql<'a>>(
    c: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> T {
    c.query_one(sql, params).await.unwrap().get(0)
}

/// Rows in `transactions`.
async fn count_transactions(c: &tokio_postgres::Client) -> i64 {
    scalar(c, "SELECT count(*) FROM transactions", &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stack_starts_and_issues_a_credential_usable_on_the_replica() {
    let t = Instant::now();
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    eprintln!("Stack::start took {:?}", t.elapsed());
    let creds = stack.issue_creds().await.unwrap();
    assert!(creds.renewable);
    assert_eq!(creds.lease_duration, 3600);
    assert!(creds.lease_id.starts_with("database/creds/feature-reader/"));
    stack.pg.wait_replica_caught_up().await.unwrap();
    let client = login(stack.pg.replica(), &creds).await;
    assert_eq!(count_transactions(&client).await, 0);
    // The replica is read-only; the credential cannot write on the primary.
    let primary = login(&stack.pg.primary, &creds).await;
    let err = primary
        .batch_execute(
            "INSERT INTO transactions (user_id, transaction_amount, transaction_time, merchant, category) \
             VALUES (1, 1, now(), 'm', 'c')",
        )
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("permission denied"), "{err:?}");
    // Shared dir on tmpfs, 0750; AppRole files 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert!(stack.shared_dir.path().starts_with("/dev/shm"));
    assert_eq!(mode(stack.shared_dir.path()), 0o750);
    assert_eq!(mode(&stack.approle.role_id_file), 0o600);
    assert_eq!(mode(&stack.approle.secret_id_file), 0o600);
    assert_eq!(
        std::fs::read_to_string(&stack.approle.secret_id_file).unwrap(),
        stack.approle.secret_id
    );
}

/// The seed's design failed after ~2,440 outstanding leases (`row is too
/// big`, per-role grants). With membership in `feature_reader`, 3,000
/// outstanding credentials all work, on the replica, and the table's ACL
/// does not grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_credentials_all_log_in_on_the_replica() {
    const N: usize = 3000;
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    let t = Instant::now();
    let creds: Vec<_> = futures::stream::iter(0..N)
        .map(|_| stack.issue_creds())
        .buffer_unordered(8)
        .try_collect()
        .await
        .unwrap();
    let issued = t.elapsed();
    assert_eq!(creds.len(), N);
    let names: std::collections::BTreeSet<_> = creds.iter().map(|c| &c.username).collect();
    assert_eq!(names.len(), N, "every credential is a distinct role");

    stack.pg.wait_replica_caught_up().await.unwrap();
    let t = Instant::now();
    let replica = stack.pg.replica();
    let failures: Vec<String> = futures::stream::iter(creds.iter())
        .map(|c| async move {
            let client = replica
                .connect_as(&c.username, &c.password)
                .await
                .map_err(|e| format!("{}: {e:?}", c.username))?;
            client
                .query_one("SELECT count(*) FROM transactions", &[])
                .await
                .map_err(|e| format!("{}: {e:?}", c.username))?;
            Ok::<(), String>(())
        })
        .buffer_unordered(8)
        .filter_map(|r| async move { r.err() })
        .collect()
        .await;
    let logged_in = t.elapsed();
    assert!(
        failures.is_empty(),
        "{} logins failed, first: {}",
        failures.len(),
        failures[0]
    );
    eprintln!(
        "{N} credentials: issued in {issued:?} ({:.0}/s), all logged in on the replica in {logged_in:?}",
        N as f64 / issued.as_secs_f64()
    );

    let su = stack.pg.primary.connect_superuser().await.unwrap();
    let acl: Vec<String> = scalar(
        &su,
        "SELECT array(SELECT unnest(relacl)::text) FROM pg_class WHERE relname = 'transactions'",
        &[],
    )
    .await;
    assert!(acl.len() <= 2, "transactions ACL grew: {acl:?}");
    assert!(
        acl.iter().any(|a| a.starts_with("feature_reader=r/")),
        "{acl:?}"
    );
    let dynamic: i64 = scalar(
        &su,
        "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v-%'",
        &[],
    )
    .await;
    assert_eq!(dynamic, N as i64);
}

#[test]
fn teardown_leaves_no_process_or_temp_dir_after_drop_and_after_panic() {
    let record = |stack: &Stack| (process_tree(&stack.pids()), stack.temp_dirs());

    // 1. Normal drop.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (procs, dirs) = rt.block_on(async {
        let stack = Stack::start(StackOptions::default()).await.unwrap();
        // A live client session, so postgres has a backend to end too.
        let creds = stack.issue_creds().await.unwrap();
        let _session = login(&stack.pg.primary, &creds).await;
        let seen = record(&stack);
        drop(stack);
        seen
    });
    drop(rt);
    assert!(
        procs.len() >= 4,
        "expected postmasters, backends and bao: {procs:?}"
    );
    assert_eq!(dirs.len(), 6);
    assert_eq!(
        leftovers(&procs, &dirs),
        (vec![], vec![]),
        "left behind after drop"
    );

    // 2. A test body that panics while holding a stack.
    let (tx, rx) = std::sync::mpsc::channel();
    let body = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let stack = Stack::start(StackOptions::default()).await.unwrap();
            tx.send(record(&stack)).unwrap();
            panic!("test body fails while holding the stack");
        })
    });
    assert!(body.join().is_err(), "the body panicked");
    let (procs, dirs) = rx.recv().unwrap();
    assert!(procs.len() >= 3, "{procs:?}");
    assert_eq!(
        leftovers(&procs, &dirs),
        (vec![], vec![]),
        "left behind after a panic"
    );
}

/// Not a test on its own: the child process of
/// `processes_end_when_the_test_process_is_killed`. Starts a stack, writes
/// its pids to `$RISKFEAT_HELPER_OUT`, and waits to be killed.
#[test]
#[ignore = "helper, run by processes_end_when_the_test_process_is_killed"]
fn helper_hold_a_stack_until_killed() {
    let Some(out) = std::env::var_os("RISKFEAT_HELPER_OUT") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let stack = Stack::start(StackOptions::default()).await.unwrap();
        let pids: Vec<String> = stack.pids().iter().map(u32::to_string).collect();
        let dirs: Vec<String> = stack
            .temp_dirs()
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        let tmp = PathBuf::from(&out).with_extension("tmp");
        std::fs::write(&tmp, format!("{}\n{}\n", pids.join(" "), dirs.join(" "))).unwrap();
        std::fs::rename(&tmp, &out).unwrap();
        tokio::time::sleep(Duration::from_secs(120)).await;
        drop(stack);
    });
}

/// SIGKILL (or Ctrl-C) of a test process runs no `Drop`: the servers are
/// tied to the process (`PR_SET_PDEATHSIG`) and end anyway. The servers'
/// temp dirs are removed by the next process that uses the harness; the
/// small ones (bao home, AppRole files, shared dir) are removed here.
#[test]
fn processes_end_when_the_test_process_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("helper.out");
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "helper_hold_a_stack_until_killed",
            "--nocapture",
        ])
        .env("RISKFEAT_HELPER_OUT", &out)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !out.exists() {
        assert!(helper.try_wait().unwrap().is_none(), "helper exited early");
        assert!(
            Instant::now() < deadline,
            "helper did not start a stack in 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&out).unwrap();
    let mut lines = text.lines().map(|l| l.split(' '));
    let roots: Vec<u32> = lines.next().unwrap().map(|p| p.parse().unwrap()).collect();
    let dirs: Vec<PathBuf> = lines.next().unwrap().map(PathBuf::from).collect();
    let procs = process_tree(&roots);
    assert!(procs.len() >= 4, "{procs:?}");

    helper.kill().unwrap();
    helper.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !still_alive(&procs).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        still_alive(&procs),
        vec![],
        "processes outlived the killed test process"
    );
    // The next harness user removes the dead process's server dirs.
    let pg_dirs: Vec<&PathBuf> = dirs
        .iter()
        .filter(|d| {
            d.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("riskfeat-pg-")
        })
        .collect();
    assert_eq!(pg_dirs.len(), 2, "{dirs:?}");
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "generated_data_is_deterministic_and_loads_with_copy",
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    for d in &pg_dirs {
        assert!(!d.exists(), "{} was not swept", d.display());
    }
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

async fn echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn echo(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(msg).await?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).await?;
    Ok(got)
}

/// Reads until EOF or error: true when the peer closed or reset.
async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn proxy_cuts_refuses_restores_and_delays() {
    let upstream = echo_server().await;
    let proxy = TcpProxy::start(upstream).await.unwrap();

    let mut live = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(echo(&mut live, b"hello").await.unwrap(), b"hello");

    proxy.cut();
    assert!(proxy.is_cut());
    assert!(
        closed(&mut live).await,
        "a live connection is dropped by cut()"
    );
    let mut refused = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(
        closed(&mut refused).await,
        "a new connection is accepted and closed"
    );

    proxy.restore();
    let mut again = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(echo(&mut again, b"back").await.unwrap(), b"back");

    proxy.set_delay(Duration::from_millis(150));
    let t = Instant::now();
    assert_eq!(echo(&mut again, b"slow").await.unwrap(), b"slow");
    // Two forwarded chunks (there and back), each slept at least 150 ms.
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    proxy.set_delay(Duration::ZERO);
    assert_eq!(echo(&mut again, b"fast").await.unwrap(), b"fast");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_proxy_of_the_stack_cuts_vault_off() {
    let stack = Stack::start(StackOptions {
        vault_proxy: true,
        replica: false,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let proxy = stack.vault_proxy.as_ref().unwrap();
    assert_ne!(stack.vault_addr(), stack.bao.addr);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let health = format!("{}/v1/sys/health", stack.vault_addr());
    let healthy = || async {
        http.get(&health)
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    };
    assert!(healthy().await);
    proxy.cut();
    assert!(http.get(&health).send().await.is_err());
    // The harness itself still reaches Vault directly.
    stack.issue_creds().await.unwrap();
    proxy.restore();
    assert!(healthy().await);
}

/// `GET <path>` with the root token: the JSON body.
async fn vault_get(bao: &Bao, path: &str) -> Value {
    bao.api(Method::GET, path, None).await.unwrap()
}

/// Vault's database role `feature-reader` holds the statements of
/// `k8s/bootstrap/vault/` and the policy `riskfeat-agent` is its
/// `agent-policy.hcl`; returns the role (for its TTLs).
async fn assert_bootstrapped_role_and_policy(bao: &Bao) -> Value {
    let role = vault_get(bao, "database/roles/feature-reader").await;
    // Vault stores statements with surrounding whitespace trimmed.
    assert_eq!(
        role["data"]["creation_statements"],
        json!([bootstrap::CREATION_SQL.trim()])
    );
    assert_eq!(
        role["data"]["revocation_statements"],
        json!([bootstrap::REVOCATION_SQL.trim()])
    );
    let policy = vault_get(bao, "sys/policies/acl/riskfeat-agent").await;
    assert_eq!(policy["data"]["policy"], bootstrap::AGENT_POLICY_HCL);
    role
}

/// The files compiled into the harness are the files in k8s/bootstrap, and
/// what Vault and PostgreSQL hold after `Stack::start` is those files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_applies_exactly_the_k8s_bootstrap_files() {
    for (rel, compiled) in FILES {
        let on_disk = std::fs::read_to_string(bootstrap::dir().join(rel)).unwrap();
        assert_eq!(
            &on_disk, compiled,
            "k8s/bootstrap/{rel} differs from what the harness applies"
        );
    }

    let opts = StackOptions {
        default_ttl: Duration::from_secs(120),
        max_ttl: Duration::from_secs(600),
        token_ttl: Duration::from_secs(300),
        token_period: Some(Duration::from_secs(300)),
        replica: false,
        ..StackOptions::default()
    };
    let stack = Stack::start(opts).await.unwrap();
    let bao = &stack.bao;

    // The files on disk are the compiled ones (checked above).
    let role = assert_bootstrapped_role_and_policy(bao).await;
    assert_eq!(role["data"]["db_name"], "riskfeat");
    assert_eq!(role["data"]["default_ttl"], 120);
    assert_eq!(role["data"]["max_ttl"], 600);

    let approle = vault_get(bao, "auth/approle/role/riskfeat-agent").await;
    assert_eq!(approle["data"]["token_policies"], json!(["riskfeat-agent"]));
    assert_eq!(approle["data"]["token_no_default_policy"], json!(true));
    assert_eq!(approle["data"]["token_ttl"], 300);
    assert_eq!(approle["data"]["token_period"], 300);

    let config = vault_get(bao, "database/config/riskfeat").await;
    let url = config["data"]["connection_details"]["connection_url"]
        .as_str()
        .unwrap();
    assert!(
        url.contains(&format!("127.0.0.1:{}/", stack.pg.primary.port)),
        "{url}"
    );
    assert_eq!(config["data"]["allowed_roles"], json!(["feature-reader"]));
    assert_eq!(
        config["data"]["connection_details"]["username"],
        "vault_admin"
    );

    // PostgreSQL: the roles of 00-roles.sql, the schema of 01-schema.sql.
    let su = stack.pg.primary.connect_superuser().await.unwrap();
    let row = su
        .query_one(
            "SELECT (SELECT rolcanlogin FROM pg_roles WHERE rolname = 'feature_reader'),
                    (SELECT rolcreaterole AND rolcanlogin AND NOT rolsuper FROM pg_roles WHERE rolname = 'vault_admin'),
                    pg_has_role('vault_admin', 'pg_signal_backend', 'MEMBER'),
                    (SELECT admin_option FROM pg_auth_members
                      WHERE roleid = 'feature_reader'::regrole AND member = 'vault_admin'::regrole),
                    has_table_privilege('feature_reader', 'transactions', 'SELECT'),
                    has_table_privilege('feature_reader', 'transactions', 'INSERT'),
                    (SELECT indexdef FROM pg_indexes WHERE indexname = 'transactions_user_id_time_idx')",
            &[],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0), "feature_reader is NOLOGIN");
    assert!(
        row.get::<_, bool>(1),
        "vault_admin: LOGIN CREATEROLE, not superuser"
    );
    assert!(row.get::<_, bool>(2), "vault_admin in pg_signal_backend");
    assert!(
        row.get::<_, bool>(3),
        "vault_admin has ADMIN OPTION on feature_reader"
    );
    assert!(row.get::<_, bool>(4));
    assert!(!row.get::<_, bool>(5));
    assert!(row
        .get::<_, String>(6)
        .contains("(user_id, transaction_time DESC)"));

    // The policy: the agent's token issues credentials and nothing else.
    let token = stack.approle_login().await.unwrap();
    for (method, path) in [
        (Method::GET, "database/config/riskfeat"),
        (Method::GET, "database/roles/feature-reader"),
        (Method::GET, "sys/mounts"),
        (Method::POST, "auth/approle/role/riskfeat-agent/secret-id"),
    ] {
        let (status, _) = bao
            .request_raw(Some(&token), method.clone(), path, None)
            .await
            .unwrap();
        assert_eq!(status, 403, "{method} {path} must be denied to the agent");
    }

    // revocation.sql: a revoked lease ends the role's sessions and drops it.
    let creds = stack.issue_creds().await.unwrap();
    let session = login(&stack.pg.primary, &creds).await;
    session.simple_query("SELECT 1").await.unwrap();
    // The URL form, the one the policy grants (the agent's own call).
    let revoke = format!("sys/leases/revoke/{}", creds.lease_id);
    bao.request(Some(&token), Method::PUT, &revoke, None)
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the revoked role's session to end",
        || async { session.simple_query("SELECT 1").await.is_err() },
    )
    .await
    .unwrap();
    let exists: bool = scalar(
        &su,
        "SELECT exists(SELECT FROM pg_roles WHERE rolname = $1)",
        &[&creds.username],
    )
    .await;
    assert!(!exists, "revocation drops the role");
}

/// `k8s/bootstrap/vault/bootstrap.sh` (the production path, bao CLI +
/// psql) against a fresh OpenBao sets up what the harness sets up, and a
/// credential issued through it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_sh_sets_up_the_same_roles_as_the_harness() {
    let pg = PgCluster::start(false).await.unwrap();
    let bao = Bao::start().await.unwrap();
    let bao_bin = riskfeat_tests::bao::bao_binary().unwrap();
    let psql_dir = riskfeat_tests::pg::pg_bin("psql")
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}:{}",
        bao_bin.parent().unwrap().display(),
        psql_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let p = &pg.primary;
    let out = tokio::process::Command::new("sh")
        .arg(bootstrap::dir().join("vault/bootstrap.sh"))
        .env("PATH", path)
        .env("HOME", std::env::temp_dir())
        .env("BAO_ADDR", &bao.addr)
        .env("BAO_TOKEN", &bao.root_token)
        .env("VAULT_ADDR", &bao.addr)
        .env("VAULT_TOKEN", &bao.root_token)
        .env(
            "PG_ADMIN_DSN",
            format!(
                "postgresql://{}:{}@127.0.0.1:{}/riskfeat",
                p.superuser, p.superuser_password, p.port
            ),
        )
        .env("PG_PRIMARY_HOST", "127.0.0.1")
        .env("PG_PRIMARY_PORT", p.port.to_string())
        .env("PG_SSLMODE", "disable")
        .env("VAULT_ADMIN_PASSWORD", &pg.vault_admin_password)
        .env("DEFAULT_TTL", "1h")
        .env("MAX_TTL", "24h")
        .env("ROLE_ID", "riskfeat-agent-test-role-id")
        .env("FALLBACK_PASSWORD", "fallback-bootstrap-pw-1")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bootstrap.sh failed:\n{stdout}\n{stderr}"
    );
    for secret in [pg.vault_admin_password.as_str(), "fallback-bootstrap-pw-1"] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret));
    }

    let role = assert_bootstrapped_role_and_policy(&bao).await;
    assert_eq!(role["data"]["default_ttl"], 3600);

    // Log in like the agent and use a credential.
    let role_id = vault_get(&bao, "auth/approle/role/riskfeat-agent/role-id").await;
    assert_eq!(
        role_id["data"]["role_id"], "riskfeat-agent-test-role-id",
        "ROLE_ID sets the overlay's role_id in Vault"
    );
    let secret = bao
        .api(
            Method::POST,
            "auth/approle/role/riskfeat-agent/secret-id",
            None,
        )
        .await
        .unwrap();
    let login = bao
        .request(
            None,
            Method::POST,
            "auth/approle/login",
            Some(json!({"role_id": role_id["data"]["role_id"], "secret_id": secret["data"]["secret_id"]})),
        )
        .await
        .unwrap();
    let token = login["auth"]["client_token"].as_str().unwrap();
    let creds = bao
        .request(
            Some(token),
            Method::GET,
            "database/creds/feature-reader",
            None,
        )
        .await
        .unwrap();
    let client = p
        .connect_as(
            creds["data"]["username"].as_str().unwrap(),
            creds["data"]["password"].as_str().unwrap(),
        )
        .await
        .unwrap();
    client
        .simple_query("SELECT count(*) FROM transactions")
        .await
        .unwrap();
    // FALLBACK_PASSWORD: the static fallback login exists, reads, is capped.
    let fallback = p
        .connect_as("riskfeat_fallback", "fallback-bootstrap-pw-1")
        .await
        .unwrap();
    fallback
        .simple_query("SELECT count(*) FROM transactions")
        .await
        .unwrap();
    let limit: i32 = scalar(
        &client,
        "SELECT rolconnlimit FROM pg_roles WHERE rolname = 'riskfeat_fallback'",
        &[],
    )
    .await;
    assert_eq!(limit, 100);
    // rotate-root: the bootstrap password no longer works for vault_admin.
    assert!(p
        .connect_as("vault_admin", &pg.vault_admin_password)
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stops_and_starts_on_the_same_port_with_its_data() {
    let mut pg = PgCluster::start(true).await.unwrap();
    let su = pg.primary.connect_superuser().await.unwrap();
    let n = data::load(&su, data::generate(3, 4, 7)).await.unwrap();
    assert_eq!(n, 12);
    pg.wait_replica_caught_up().await.unwrap();

    let port = pg.replica().port;
    pg.replica_mut().stop().unwrap();
    assert!(pg.replica().connect_superuser().await.is_err());
    pg.replica_mut().start().unwrap();
    assert_eq!(pg.replica().port, port);
    let replica = pg.replica().connect_superuser().await.unwrap();
    assert_eq!(count_transactions(&replica).await, 12);

    pg.primary.stop().unwrap();
    assert!(su.simple_query("SELECT 1").await.is_err());
    pg.primary.start().unwrap();
    let su = pg.primary.connect_superuser().await.unwrap();
    su.batch_execute("INSERT INTO transactions (user_id, transaction_amount, transaction_time, merchant, category) VALUES (9, 1.5, now(), 'm', 'c')")
        .await
        .unwrap();
    // Streaming resumes after both restarts.
    pg.wait_replica_caught_up().await.unwrap();
    assert_eq!(count_transactions(&replica).await, 13);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_data_is_deterministic_and_loads_with_copy() {
    let a: Vec<_> = data::generate(20, 60, 42).collect();
    let b: Vec<_> = data::generate(20, 60, 42).collect();
    let c: Vec<_> = data::generate(20, 60, 43).collect();
    assert_eq!(a.len(), 1200);
    assert_eq!(a, b, "same seed, same rows");
    assert_ne!(a, c, "another seed, other rows");
    for user in a.chunk_by(|x, y| x.user_id == y.user_id) {
        assert_eq!(user.len(), 60);
        assert!(
            user.windows(2).all(|w| w[0].ts < w[1].ts),
            "ascending time per user"
        );
        assert!(user
            .iter()
            .all(|t| t.amount > 0.0 && t.ts <= data::anchor()));
    }

    let pg = PgCluster::start(false).await.unwrap();
    let su = pg.primary.connect_superuser().await.unwrap();
    assert_eq!(data::load(&su, a.iter().cloned()).await.unwrap(), 1200);
    // Read back exactly (amount as float8, like the workers).
    let rows = su
        .query(
            "SELECT user_id, transaction_amount::float8, transaction_time, merchant, category FROM transactions ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1200);
    for (row, t) in rows.iter().zip(&a) {
        assert_eq!(row.get::<_, i64>(0), t.user_id);
        assert_eq!(row.get::<_, f64>(1), t.amount);
        let ts: std::time::SystemTime = row.get(2);
        assert_eq!(chrono::DateTime::<chrono::Utc>::from(ts), t.ts);
        assert_eq!(row.get::<_, String>(3), t.merchant);
        assert_eq!(row.get::<_, String>(4), t.category);
    }
}

#[test]
fn child_proc_captures_output_signals_waits_and_kills_on_drop() {
    let sh = std::path::Path::new("/bin/sh");
    let script = "echo to-stdout; echo to-stderr >&2; echo \"env=$RISKFEAT_X\"; \
                  trap 'echo got-term; exit 3' TERM; while :; do sleep 0.05; done";
    let mut child =
        riskfeat_tests::ChildProc::spawn(sh, &["-c", script], &[("RISKFEAT_X", "42")]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !child.logs().contains("env=42") {
        assert!(Instant::now() < deadline, "{}", child.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        child.wait_exit(Duration::from_millis(100)),
        None,
        "still running"
    );
    child.signal(nix::sys::signal::Signal::SIGTERM);
    let status = child
        .wait_exit(Duration::from_secs(10))
        .expect("exits on SIGTERM");
    assert_eq!(status.code(), Some(3));
    let logs = child.logs();
    for line in ["to-stdout", "to-stderr", "got-term"] {
        assert!(logs.contains(line), "{logs}");
    }

    let sleeper = riskfeat_tests::ChildProc::spawn(sh, &["-c", "exec sleep 100"], &[]).unwrap();
    let procs = process_tree(&[sleeper.pid()]);
    let log_dir = sleeper.log_path().parent().unwrap().to_path_buf();
    assert_eq!(procs.len(), 1);
    drop(sleeper);
    assert_eq!(leftovers(&procs, &[log_dir]), (vec![], vec![]));
}
