//! riskfeat-agent end to end: the real binary against real OpenBao and
//! PostgreSQL (primary + streaming replica) started by the harness. The test
//! plays the worker: it reads `db.json`, logs in on the replica, and writes
//! `worker.json` (the ack) itself.
//!
//! Covers issue 4's acceptance list (rotation with ack, token shorter than
//! the credential, Vault outage, sealed Vault and a failing database engine,
//! kill -9 resume, SIGTERM revocation, bad input, no secret in a debug log),
//! issue 8's fallback credential, and Vault over HTTPS with a private CA.

use anyhow::Context;
use nix::sys::signal::Signal;
use riskfeat_shared::ack::WorkerAck;
use riskfeat_shared::creds::DbCredential;
use riskfeat_shared::health::{request, ProbeKind};
use riskfeat_tests::{binary, wait_until, AgentToml, ChildProc, Stack, StackOptions};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// Writes an agent config for `stack` into `dir`; `lifecycle` is appended
/// to `[lifecycle]`, and `tail` after it (it may open further sections).
fn write_config(stack: &Stack, dir: &Path, lifecycle: &str, tail: &str) -> PathBuf {
    write_agent_toml(stack, dir, "", lifecycle, tail)
}

fn write_agent_toml(
    stack: &Stack,
    dir: &Path,
    vault: &str,
    lifecycle: &str,
    tail: &str,
) -> PathBuf {
    let text = stack.agent_toml(AgentToml {
        top: "log_level = \"info,riskfeat_agent=debug\"",
        vault,
        sections: &format!(
            "[lifecycle]\nbackoff_initial_s = 0.2\nbackoff_max_s = 2.0\n{lifecycle}\n{tail}"
        ),
        ..Default::default()
    });
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn spawn_agent(config: &Path, extra: &[&str]) -> ChildProc {
    let bin = binary("riskfeat-agent");
    let cfg = config.display().to_string();
    let mut args = vec!["run", "--config", cfg.as_str()];
    args.extend_from_slice(extra);
    ChildProc::spawn(&bin, &args, &[]).expect("spawn riskfeat-agent")
}

fn db_json(stack: &Stack) -> Option<DbCredential> {
    DbCredential::load(&stack.shared_dir.path().join("db.json")).ok()
}

fn write_ack(stack: &Stack, generation: u64) {
    let ack = WorkerAck {
        generation,
        pid: std::process::id(),
        updated_at: chrono::Utc::now(),
        config_versions: Default::default(),
    };
    riskfeat_shared::atomic::write_json_atomic(
        &stack.shared_dir.path().join("worker.json"),
        &ack,
        riskfeat_shared::atomic::WriteOptions::SHARED,
    )
    .unwrap();
}

fn socket(stack: &Stack) -> PathBuf {
    stack.shared_dir.path().join("agent.sock")
}

async fn status(stack: &Stack) -> anyhow::Result<Value> {
    let (_, body) = request(&socket(stack), ProbeKind::Status, SECS(3)).await?;
    Ok(serde_json::from_str(&body)?)
}

async fn ready(stack: &Stack) -> bool {
    matches!(
        request(&socket(stack), ProbeKind::Ready, SECS(3)).await,
        Ok((200, _))
    )
}

async fn metrics(stack: &Stack) -> anyhow::Result<String> {
    let st = status(stack).await?;
    let addr = st["metrics_addr"]
        .as_str()
        .context("metrics_addr in /status")?;
    Ok(reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .text()
        .await?)
}

/// The value of a sample line `name{labels} value` (or `name value`).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Dynamic roles currently in pg_roles (on the primary).
async fn dynamic_roles(stack: &Stack) -> anyhow::Result<BTreeSet<String>> {
    let c = stack.pg.primary.connect_superuser().await?;
    let rows = c
        .query("SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%'", &[])
        .await?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

/// Leases Vault holds under the creds path.
async fn outstanding_leases(stack: &Stack) -> anyhow::Result<usize> {
    let path = format!(
        "sys/leases/lookup/{}/creds/{}/",
        stack.approle.db_mount, stack.approle.db_role
    );
    let list = reqwest::Method::from_bytes(b"LIST").unwrap();
    let (code, v) = stack
        .bao
        .request_raw(Some(&stack.bao.root_token), list, &path, None)
        .await?;
    match code.as_u16() {
        200 => Ok(v["data"]["keys"].as_array().map(|a| a.len()).unwrap_or(0)),
        // No lease at all.
        404 => Ok(0),
        other => anyhow::bail!("LIST {path}: HTTP {other}: {v}"),
    }
}

/// After an outage: the published credential logs in on the replica,
/// Vault is up again, and no more than `cap` credentials were issued (none
/// outstanding beyond it): no failure mode floods the database.
async fn assert_recovered_within_cap(stack: &Stack, cap: u32) {
    let now = db_json(stack).unwrap();
    can_login_on_replica(stack, &now).await.unwrap();
    let m = metrics(stack).await.unwrap();
    assert_eq!(sample(&m, "riskfeat_agent_vault_up"), Some(1.0));
    let issued = sample(
        &m,
        "riskfeat_agent_credential_issuances_total{result=\"ok\"}",
    )
    .unwrap();
    assert!(
        issued >= 1.0 && issued <= f64::from(cap),
        "issued {issued} > cap {cap}"
    );
    assert!(outstanding_leases(stack).await.unwrap() <= cap as usize);
}

async fn can_login_on_replica(stack: &Stack, c: &DbCredential) -> Result<(), String> {
    let client = stack
        .pg
        .replica()
        .connect_as(&c.username, c.password.expose())
        .await
        .map_err(|e| e.to_string())?;
    client
        .simple_query("SELECT count(*) FROM transactions")
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn wait_published(stack: &Stack, min_generation: u64, timeout: Duration) -> DbCredential {
    wait_until(timeout, "db.json published", || async {
        db_json(stack).is_some_and(|c| c.generation >= min_generation)
    })
    .await
    .unwrap();
    db_json(stack).unwrap()
}

fn opts(default_ttl: u64, max_ttl: u64) -> StackOptions {
    StackOptions {
        default_ttl: SECS(default_ttl),
        max_ttl: SECS(max_ttl),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotates_three_times_without_dropping_a_connection() {
    let stack = Stack::start(opts(5, 20)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &stack,
        dir.path(),
        "rotate_lead_s = 8\nack_grace_s = 120\nmax_issuances_per_minute = 20",
        "",
    );
    let agent = spawn_agent(&cfg, &[]);
    let first = wait_published(&stack, 1, SECS(60)).await;
    write_ack(&stack, first.generation);

    // The connection opened with each generation, kept until after its ack.
    let mut held = stack
        .pg
        .replica()
        .connect_as(&first.username, first.password.expose())
        .await
        .unwrap();
    let mut seen = first.clone();
    let mut replaced: Vec<String> = Vec::new();
    let mut strays = Vec::new();
    let mut checks = 0u64;
    let deadline = tokio::time::Instant::now() + SECS(150);
    while seen.generation < first.generation + 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "3 rotations did not happen; logs:\n{}",
            agent.logs()
        );
        let now = db_json(&stack).expect("db.json stays published");
        // Whatever is published logs in on the replica, at every moment.
        if let Err(e) = can_login_on_replica(&stack, &now).await {
            panic!(
                "published generation {} cannot log in on the replica: {e}\n{}",
                now.generation,
                agent.logs()
            );
        }
        checks += 1;
        if now.generation != seen.generation {
            assert_eq!(
                now.generation,
                seen.generation + 1,
                "generations grow by one"
            );
            assert!(!now.fallback);
            // Generation N still works until the worker says it switched.
            held.simple_query("SELECT 1")
                .await
                .expect("connection of the previous generation works until the ack");
            stack
                .pg
                .replica()
                .connect_as(&seen.username, seen.password.expose())
                .await
                .expect("previous generation can still log in before the ack");
            assert!(dynamic_roles(&stack)
                .await
                .unwrap()
                .contains(&seen.username));
            replaced.push(seen.username.clone());
            // Sessions the worker would not have closed (a stray client):
            // revocation must end them (vault #10681).
            for server in [&stack.pg.primary, stack.pg.replica()] {
                strays.push((
                    seen.username.clone(),
                    server.port,
                    server
                        .connect_as(&seen.username, seen.password.expose())
                        .await
                        .unwrap(),
                ));
            }
            held = stack
                .pg
                .replica()
                .connect_as(&now.username, now.password.expose())
                .await
                .unwrap();
            write_ack(&stack, now.generation);
            seen = now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(checks > 10);
    // After the ack the old roles disappear.
    wait_until(SECS(30), "replaced roles dropped", || async {
        let roles = dynamic_roles(&stack).await.unwrap();
        replaced.iter().all(|r| !roles.contains(r))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));
    // Their stray sessions can no longer read: on the primary the
    // revocation statements terminated them; on the replica (a standby
    // cannot be reached by them) the replayed DROP ROLE takes the
    // feature_reader membership away (vault #10681).
    let primary_port = stack.pg.primary.port;
    for (user, port, client) in &strays {
        let e = client
            .simple_query("SELECT count(*) FROM transactions")
            .await
            .expect_err(&format!(
                "a session of revoked {user} on port {port} still reads"
            ));
        if *port == primary_port {
            assert!(e.is_closed(), "primary session of {user} terminated: {e:?}");
        } else {
            assert_eq!(
                e.code(),
                Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
                "replica session of {user}: {e:?}"
            );
        }
    }
    // Exactly one lease outstanding: the published one.
    wait_until(SECS(30), "exactly one lease", || async {
        outstanding_leases(&stack).await.unwrap() == 1
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));
    let roles = dynamic_roles(&stack).await.unwrap();
    let current = db_json(&stack).unwrap();
    assert!(roles.contains(&current.username));
    let st = status(&stack).await.unwrap();
    assert_eq!(st["ready"], true, "{st}");
    assert!(
        st["counts"]["revocations_ok"].as_u64().unwrap() >= 3,
        "{st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_never_takes_live_credentials_with_it() {
    // Token lives 4 s, at most 12 s; the credential could live 60 s.
    let stack = Stack::start(StackOptions {
        default_ttl: SECS(10),
        max_ttl: SECS(60),
        token_ttl: SECS(4),
        token_max_ttl: Some(SECS(12)),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &stack,
        dir.path(),
        "rotate_lead_s = 8\nack_grace_s = 120\nmax_issuances_per_minute = 30",
        "",
    );
    let agent = spawn_agent(&cfg, &[]);
    let first = wait_published(&stack, 1, SECS(60)).await;
    write_ack(&stack, first.generation);
    let mut seen = first.generation;
    let end = tokio::time::Instant::now() + SECS(40);
    let mut checks = 0;
    while tokio::time::Instant::now() < end {
        let now = db_json(&stack).expect("db.json stays published");
        if let Err(e) = can_login_on_replica(&stack, &now).await {
            panic!(
                "published generation {} was revoked: {e}\n{}",
                now.generation,
                agent.logs()
            );
        }
        checks += 1;
        if now.generation != seen {
            write_ack(&stack, now.generation);
            seen = now.generation;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(checks > 50);
    let st = status(&stack).await.unwrap();
    // Three token lifetimes passed: the agent logged in again, and the
    // credential followed each new token.
    assert!(st["counts"]["logins_ok"].as_u64().unwrap() >= 3, "{st}");
    assert!(seen >= first.generation + 2, "{st}");
    assert_eq!(st["ready"], true, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_outage_keeps_the_credential_and_recovers() {
    let stack = Stack::start(StackOptions {
        default_ttl: SECS(30),
        max_ttl: SECS(300),
        vault_proxy: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cap = 3;
    let cfg = write_config(
        &stack,
        dir.path(),
        &format!("max_issuances_per_minute = {cap}\nready_min_remaining_s = 2"),
        "",
    );
    let agent = spawn_agent(&cfg, &[]);
    let first = wait_published(&stack, 1, SECS(60)).await;
    write_ack(&stack, first.generation);
    wait_until(SECS(20), "ready", || ready(&stack))
        .await
        .unwrap();
    let proxy = stack.vault_proxy.as_ref().expect("vault proxy");

    proxy.cut();
    let cut_at = tokio::time::Instant::now();
    // Longer than one renewal interval (2/3 of 30 s, +-10%).
    wait_until(SECS(40), "outage reported", || async {
        status(&stack)
            .await
            .is_ok_and(|s| s["vault"]["up"] == false && s["vault"]["outage_since"].is_string())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));
    let m = metrics(&stack).await.unwrap();
    assert_eq!(sample(&m, "riskfeat_agent_vault_up"), Some(0.0), "{m}");
    wait_until(SECS(40), "a renewal failed during the outage", || async {
        status(&stack)
            .await
            .is_ok_and(|s| s["counts"]["lease_renewals_failed"].as_u64() > Some(0))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));
    // Stay cut past one full renewal interval.
    tokio::time::sleep_until(cut_at + SECS(23)).await;
    let m = metrics(&stack).await.unwrap();
    assert!(sample(&m, "riskfeat_agent_lease_renewals_total{result=\"error\"}").unwrap() >= 1.0);
    // The credential stays published and usable.
    let during = db_json(&stack).unwrap();
    assert_eq!(during.generation, first.generation);
    can_login_on_replica(&stack, &during).await.unwrap();
    let st = status(&stack).await.unwrap();
    assert!(
        st["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot reach Vault")
            || st["last_error"].as_str().unwrap().contains("no answer"),
        "{st}"
    );

    proxy.restore();
    wait_until(SECS(60), "recovered", || async {
        status(&stack).await.is_ok_and(|s| {
            s["vault"]["up"] == true && s["ready"] == true && s["phase"] != "vault-outage"
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));
    let renewed_before = status(&stack).await.unwrap()["counts"]["lease_renewals_ok"]
        .as_u64()
        .unwrap();
    wait_until(SECS(40), "renewing again", || async {
        status(&stack)
            .await
            .is_ok_and(|s| s["counts"]["lease_renewals_ok"].as_u64() > Some(renewed_before))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));
    assert_recovered_within_cap(&stack, cap).await;
}

async fn renewals_failed_above(stack: &Stack, n: u64) -> bool {
    status(stack)
        .await
        .is_ok_and(|s| s["counts"]["lease_renewals_failed"].as_u64() > Some(n))
}

/// Vault up, ready, and more than `n` lease renewals succeeded.
async fn renewing_above(stack: &Stack, n: u64) -> bool {
    status(stack).await.is_ok_and(|s| {
        s["vault"]["up"] == true
            && s["counts"]["lease_renewals_ok"].as_u64() > Some(n)
            && s["ready"] == true
    })
}

/// Vault answers, but cannot serve: first sealed (every call 503 "Vault is
/// sealed"), then with the database engine failing because the PRIMARY it
/// renews roles on is down (OpenBao passes the engine's connection error
/// on as a 400). Each time the agent keeps
/// the credential published and usable on the replica, says what is wrong in
/// `/status` and metrics, and recovers by itself when the fault goes, within
/// the issuance cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_vault_and_failing_database_engine_keep_the_credential() {
    let mut stack = Stack::start(opts(30, 600)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cap = 3;
    let cfg = write_config(
        &stack,
        dir.path(),
        &format!("max_issuances_per_minute = {cap}\nready_min_remaining_s = 2"),
        "",
    );
    let agent = spawn_agent(&cfg, &[]);
    let first = wait_published(&stack, 1, SECS(60)).await;
    write_ack(&stack, first.generation);
    wait_until(SECS(20), "ready", || ready(&stack))
        .await
        .unwrap();

    // 1. Sealed. The next lease renewal (~2/3 of 30 s) gets a 503.
    stack.bao.seal().await.unwrap();
    wait_until(SECS(40), "a renewal failed while sealed", || {
        renewals_failed_above(&stack, 0)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));
    let st = status(&stack).await.unwrap();
    let err = st["last_error"].as_str().unwrap_or_default();
    assert!(err.contains("sealed"), "last_error names the seal: {st}");
    let m = metrics(&stack).await.unwrap();
    assert_eq!(sample(&m, "riskfeat_agent_vault_up"), Some(0.0), "{m}");
    assert!(sample(&m, "riskfeat_agent_lease_renewals_total{result=\"error\"}").unwrap() >= 1.0);
    let during = db_json(&stack).unwrap();
    assert_eq!(
        during.generation, first.generation,
        "nothing new while sealed"
    );
    can_login_on_replica(&stack, &during).await.unwrap();

    stack.bao.unseal().await.unwrap();
    let ok_before = st["counts"]["lease_renewals_ok"].as_u64().unwrap();
    wait_until(SECS(30), "renewing again after unseal", || {
        renewing_above(&stack, ok_before)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));
    let after_seal = db_json(&stack).unwrap();
    assert_eq!(
        after_seal.generation, first.generation,
        "the same lease was renewed: no new credential after the seal"
    );
    can_login_on_replica(&stack, &after_seal).await.unwrap();

    // 2. The primary (where Vault's engine renews roles) goes down; the
    //    replica the worker reads from stays up.
    let st = status(&stack).await.unwrap();
    let failed_before = st["counts"]["lease_renewals_failed"].as_u64().unwrap();
    let ok_before = st["counts"]["lease_renewals_ok"].as_u64().unwrap();
    stack.pg.primary.stop().unwrap();
    wait_until(SECS(40), "a renewal failed with the primary down", || {
        renewals_failed_above(&stack, failed_before)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));
    let st = status(&stack).await.unwrap();
    let err = st["last_error"].as_str().unwrap_or_default().to_string();
    // OpenBao answers 400 with the engine's connection error (not a 5xx);
    // the agent looks the lease up, finds it alive, and retries with backoff
    // instead of giving the credential up.
    assert!(
        err.contains("sys/leases/renew") && err.contains("connection refused"),
        "last_error names the path and the engine's cause: {st}"
    );
    assert_eq!(st["ready"], true, "{st}");
    let during = db_json(&stack).unwrap();
    assert_eq!(during.generation, first.generation);
    can_login_on_replica(&stack, &during).await.unwrap();

    stack.pg.primary.start().unwrap();
    wait_until(SECS(30), "renewing again with the primary back", || {
        renewing_above(&stack, ok_before)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));
    assert_recovered_within_cap(&stack, cap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_resumes_the_same_lease() {
    let stack = Stack::start(opts(60, 600)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&stack, dir.path(), "", "");
    let mut agent = spawn_agent(&cfg, &[]);
    let first = wait_published(&stack, 1, SECS(60)).await;
    wait_until(SECS(20), "ready", || ready(&stack))
        .await
        .unwrap();
    let state = stack.shared_dir.path().join("agent-state.json");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&state).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "agent-state.json is private");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(stack.shared_dir.path().join("db.json"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o640);

    agent.signal(Signal::SIGKILL);
    agent.wait_exit(SECS(10)).expect("killed");
    let agent2 = spawn_agent(&cfg, &[]);
    wait_until(SECS(30), "restarted agent ready", || ready(&stack))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent2.logs()));
    let st = status(&stack).await.unwrap();
    assert_eq!(st["counts"]["issuances_ok"], 0, "no new credential: {st}");
    assert_eq!(st["counts"]["logins_ok"], 0, "the token was resumed: {st}");
    let after = db_json(&stack).unwrap();
    assert_eq!(after.lease_id, first.lease_id);
    assert_eq!(after.generation, first.generation);
    assert_eq!(outstanding_leases(&stack).await.unwrap(), 1);
    assert!(
        agent2.logs().contains("resumed lease is alive"),
        "{}",
        agent2.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_revokes_the_leases() {
    let stack = Stack::start(opts(60, 600)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&stack, dir.path(), "shutdown_timeout_s = 10", "");
    let mut agent = spawn_agent(&cfg, &[]);
    let cred = wait_published(&stack, 1, SECS(60)).await;
    assert!(dynamic_roles(&stack)
        .await
        .unwrap()
        .contains(&cred.username));
    agent.signal(Signal::SIGTERM);
    let code = agent.wait_exit(SECS(15)).expect("exits within the timeout");
    assert_eq!(code.code(), Some(0), "{}", agent.logs());
    assert!(
        !dynamic_roles(&stack)
            .await
            .unwrap()
            .contains(&cred.username),
        "role still in pg_roles after SIGTERM\n{}",
        agent.logs()
    );
    assert!(!socket(&stack).exists(), "socket removed");
    assert!(
        db_json(&stack).is_none(),
        "revoked credential is not left published"
    );
    assert_eq!(outstanding_leases(&stack).await.unwrap(), 0);
}

/// Runs the agent to its exit; returns (code, logs).
fn run_to_exit(config: &Path) -> (Option<i32>, String) {
    let mut agent = spawn_agent(config, &[]);
    let status = agent.wait_exit(SECS(30)).expect("agent exits");
    (status.code(), agent.logs())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_vault_input_gives_one_clear_message_and_exit_code() {
    let stack = Stack::start(opts(60, 600)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();

    // Missing secret_id file: 66, naming the file.
    let missing = dir.path().join("no-such-secret-id");
    let cfg = write_config(&stack, dir.path(), "", "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &stack.approle.secret_id_file.display().to_string(),
        &missing.display().to_string(),
    );
    std::fs::write(&cfg, text).unwrap();
    let (code, logs) = run_to_exit(&cfg);
    assert_eq!(code, Some(66), "{logs}");
    assert!(logs.contains("no-such-secret-id"), "{logs}");

    // Empty secret_id file: 66.
    std::fs::write(&missing, "\n").unwrap();
    let (code, logs) = run_to_exit(&cfg);
    assert_eq!(code, Some(66), "{logs}");
    assert!(logs.contains("is empty"), "{logs}");

    // Wrong role_id: 77, naming the login path.
    let role_id = dir.path().join("wrong-role-id");
    std::fs::write(&role_id, "00000000-0000-0000-0000-000000000000\n").unwrap();
    let cfg = write_config(&stack, dir.path(), "", "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &stack.approle.role_id_file.display().to_string(),
        &role_id.display().to_string(),
    );
    std::fs::write(&cfg, text).unwrap();
    let (code, logs) = run_to_exit(&cfg);
    assert_eq!(code, Some(77), "{logs}");
    assert!(logs.contains("auth/approle/login"), "{logs}");
    let error_lines: Vec<_> = logs.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(error_lines.len(), 1, "one clear error line: {logs}");

    // A policy that denies the creds path: 77, naming the path.
    stack
        .bao
        .api(
            reqwest::Method::PUT,
            "sys/policies/acl/no-creds",
            Some(serde_json::json!({"policy": "path \"sys/leases/*\" { capabilities = [\"update\"] }"})),
        )
        .await
        .unwrap();
    stack
        .bao
        .api(
            reqwest::Method::POST,
            "auth/approle/role/no-creds",
            Some(serde_json::json!({"token_policies": ["no-creds"], "token_ttl": "1h"})),
        )
        .await
        .unwrap();
    let rid = stack
        .bao
        .api(
            reqwest::Method::GET,
            "auth/approle/role/no-creds/role-id",
            None,
        )
        .await
        .unwrap()["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_string();
    let sid = stack
        .bao
        .api(
            reqwest::Method::POST,
            "auth/approle/role/no-creds/secret-id",
            None,
        )
        .await
        .unwrap()["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(&role_id, &rid).unwrap();
    let sid_file = dir.path().join("no-creds-secret-id");
    std::fs::write(&sid_file, &sid).unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &stack.approle.secret_id_file.display().to_string(),
        &sid_file.display().to_string(),
    );
    std::fs::write(&cfg, text).unwrap();
    let (code, logs) = run_to_exit(&cfg);
    assert_eq!(code, Some(77), "{logs}");
    assert!(
        logs.contains(&format!(
            "{}/creds/{}",
            stack.approle.db_mount, stack.approle.db_role
        )) && logs.contains("permission denied"),
        "{logs}"
    );
    assert!(!logs.contains(&sid), "secret_id leaked: {logs}");
    assert!(db_json(&stack).is_none());
}

#[tokio::test]
async fn bad_config_and_disk_shared_dir_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = r#"
[vault]
addr = "http://127.0.0.1:1"
role_id_file = "/nonexistent/role_id"
secret_id_file = "/nonexistent/secret_id"
[database]
primary = { host = "127.0.0.1", port = 1, dbname = "riskfeat" }
replica = { host = "127.0.0.1", port = 1, dbname = "riskfeat" }
"#;
    let cfg = dir.path().join("agent.toml");
    let run = |text: &str| {
        std::fs::write(&cfg, text).unwrap();
        run_to_exit(&cfg)
    };

    let (code, logs) = run("[vault\naddr = 1");
    assert_eq!(code, Some(64), "{logs}");
    assert!(
        logs.contains("agent.toml") && logs.contains("invalid config"),
        "{logs}"
    );

    let (code, logs) = run(&format!(
        "{base}\n[lifecycle]\nrenew_fracton = 0.5\ncolour = 1\n"
    ));
    assert_eq!(code, Some(64), "{logs}");
    assert!(
        logs.contains("renew_fracton") && logs.contains("colour"),
        "{logs}"
    );

    // A shared dir on a disk filesystem: 78 (unless allow_disk).
    let disk = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("agent-disk-{}", std::process::id()));
    std::fs::create_dir_all(&disk).unwrap();
    if riskfeat_shared::fs_check::fs_kind(&disk)
        .unwrap()
        .is_memory()
    {
        eprintln!("target dir is memory-backed here; the disk case cannot be shown");
        return;
    }
    let (code, logs) = run(&format!("shared_dir = \"{}\"\n{base}", disk.display()));
    assert_eq!(code, Some(78), "{logs}");
    assert!(
        logs.contains("allow_disk") && logs.contains(&disk.display().to_string()),
        "{logs}"
    );
    assert!(!disk.join("db.json").exists());
    // With allow_disk it goes on to read its inputs (and fails on the
    // missing role_id file: 66).
    let (code, logs) = run(&format!(
        "shared_dir = \"{}\"\nallow_disk = true\n{base}",
        disk.display()
    ));
    assert_eq!(code, Some(66), "{logs}");
    assert!(logs.contains("/nonexistent/role_id"), "{logs}");
    let _ = std::fs::remove_dir_all(&disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_log_status_and_metrics_never_show_a_secret() {
    let stack = Stack::start(opts(4, 14)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &stack,
        dir.path(),
        "rotate_lead_s = 6\nack_grace_s = 2\nmax_issuances_per_minute = 20",
        "",
    );
    let mut agent = spawn_agent(&cfg, &["--log-level", "debug"]);
    let mut passwords = BTreeSet::new();
    let mut tokens = BTreeSet::new();
    let mut pages = String::new();
    let first = wait_published(&stack, 1, SECS(60)).await;
    let end = tokio::time::Instant::now() + SECS(120);
    loop {
        if let Some(c) = db_json(&stack) {
            passwords.insert(c.password.expose().to_string());
            write_ack(&stack, c.generation);
            if c.generation >= first.generation + 2 {
                break;
            }
        }
        if let Ok(bytes) = std::fs::read(stack.shared_dir.path().join("agent-state.json")) {
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            if let Some(t) = v["token"]["token"].as_str() {
                tokens.insert(t.to_string());
            }
        }
        assert!(
            tokio::time::Instant::now() < end,
            "no rotation\n{}",
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pages.push_str(&status(&stack).await.unwrap().to_string());
    pages.push_str(&metrics(&stack).await.unwrap());
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait_exit(SECS(15)).and_then(|s| s.code()), Some(0));
    let logs = agent.logs();
    assert!(logs.contains("DEBUG"), "ran at debug level");
    assert!(
        logs.contains("renewed lease") && logs.contains("revoked"),
        "{logs}"
    );
    let secret_id = std::fs::read_to_string(&stack.approle.secret_id_file).unwrap();
    let mut secrets: Vec<(&str, String)> = vec![("secret_id", secret_id.trim().to_string())];
    secrets.extend(passwords.into_iter().map(|p| ("password", p)));
    secrets.extend(tokens.into_iter().map(|t| ("token", t)));
    assert!(secrets.len() >= 4, "collected the secrets to look for");
    for (what, s) in &secrets {
        assert!(s.len() >= 8, "{what} too short to search for");
        assert!(!logs.contains(s.as_str()), "{what} in the log");
        assert!(!pages.contains(s.as_str()), "{what} in /status or /metrics");
    }
    assert!(
        !pages.contains("lease_id") && !pages.contains("database/creds/"),
        "{pages}"
    );
}

/// Creates the static limited-privilege fallback role with the deployed
/// `k8s/bootstrap/postgres/02-fallback.sql`, sets its password as the
/// operator would, and writes the agent's fallback file.
async fn fallback_file(stack: &Stack, dir: &Path) -> PathBuf {
    let c = stack.pg.primary.connect_superuser().await.unwrap();
    c.batch_execute(riskfeat_tests::bootstrap::FALLBACK_SQL)
        .await
        .unwrap();
    c.batch_execute("ALTER ROLE riskfeat_fallback PASSWORD 'fallback-pw-123456'")
        .await
        .unwrap();
    stack.pg.wait_replica_caught_up().await.unwrap();
    std::fs::write(dir.join("fallback-password"), "fallback-pw-123456\n").unwrap();
    let f = dir.join("fallback.toml");
    std::fs::write(
        &f,
        "username = \"riskfeat_fallback\"\npassword_file = \"fallback-password\"\n",
    )
    .unwrap();
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_is_published_only_while_vault_cannot_issue() {
    let stack = Stack::start(StackOptions {
        default_ttl: SECS(30),
        max_ttl: SECS(300),
        vault_proxy: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fb = fallback_file(&stack, dir.path()).await;
    let cfg = write_config(
        &stack,
        dir.path(),
        "",
        &format!("[fallback]\nfile = \"{}\"\n", fb.display()),
    );
    let proxy = stack.vault_proxy.as_ref().unwrap();
    proxy.cut();
    let agent = spawn_agent(&cfg, &[]);
    let c = wait_published(&stack, 1, SECS(60)).await;
    assert!(c.fallback, "fallback published while Vault is unreachable");
    assert!(c.lease_id.is_empty());
    can_login_on_replica(&stack, &c).await.unwrap();
    let st = status(&stack).await.unwrap();
    assert_eq!(st["phase"], "fallback", "{st}");
    assert_eq!(st["ready"], true, "{st}");
    let m = metrics(&stack).await.unwrap();
    assert_eq!(sample(&m, "riskfeat_agent_fallback_active"), Some(1.0));
    write_ack(&stack, c.generation);

    proxy.restore();
    let d = wait_published(&stack, c.generation + 1, SECS(60)).await;
    assert!(
        !d.fallback,
        "back to a dynamic credential: {}",
        agent.logs()
    );
    can_login_on_replica(&stack, &d).await.unwrap();
    write_ack(&stack, d.generation);
    // Never used again while Vault works.
    tokio::time::sleep(SECS(5)).await;
    let e = db_json(&stack).unwrap();
    assert!(!e.fallback && e.generation == d.generation);
    let st = status(&stack).await.unwrap();
    assert_eq!(st["counts"]["fallback_publications"], 1, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fallback_an_outage_at_start_keeps_the_agent_unready() {
    let stack = Stack::start(StackOptions {
        vault_proxy: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&stack, dir.path(), "", "");
    stack.vault_proxy.as_ref().unwrap().cut();
    let agent = spawn_agent(&cfg, &[]);
    wait_until(SECS(30), "outage reported", || async {
        status(&stack).await.is_ok_and(|s| {
            s["vault"]["consecutive_failures"].as_u64() >= Some(2)
                && s["not_ready_reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("no credential") && r.contains("Vault"))
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));
    assert!(!ready(&stack).await);
    assert!(db_json(&stack).is_none(), "nothing published");
    assert!(!stack.shared_dir.path().join("db.json").exists());
    // Comes up by itself when Vault is back.
    stack.vault_proxy.as_ref().unwrap().restore();
    let c = wait_published(&stack, 1, SECS(60)).await;
    assert!(!c.fallback);
    wait_until(SECS(20), "ready", || ready(&stack))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrapped_secret_id_is_unwrapped_once_and_its_file_deleted() {
    let stack = Stack::start(opts(60, 600)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A response-wrapped secret_id, as a CI/CD system would hand it over.
    let url = format!(
        "{}/v1/auth/{}/role/{}/secret-id",
        stack.bao.addr, stack.approle.approle_mount, stack.approle.role_name
    );
    let wrapped: Value = reqwest::Client::new()
        .post(&url)
        .header("X-Vault-Token", &stack.bao.root_token)
        .header("X-Vault-Wrap-TTL", "120s")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let wrapping_token = wrapped["wrap_info"]["token"].as_str().unwrap().to_string();
    let file = dir.path().join("wrapped-secret-id");
    std::fs::write(&file, &wrapping_token).unwrap();
    let cfg = write_config(&stack, dir.path(), "", "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!(
            "secret_id_file = \"{}\"",
            stack.approle.secret_id_file.display()
        ),
        &format!(
            "secret_id_file = \"{}\"\nsecret_id_wrapped = true\ndelete_secret_id_after_read = true",
            file.display()
        ),
    );
    std::fs::write(&cfg, text).unwrap();
    let mut agent = spawn_agent(&cfg, &[]);
    let first = wait_published(&stack, 1, SECS(60)).await;
    assert!(!file.exists(), "secret_id file deleted after reading");
    assert!(agent
        .logs()
        .contains("unwrapped the response-wrapped secret_id"));
    assert!(!agent.logs().contains(&wrapping_token));
    // The wrapping token is spent and the file gone: a restart still works.
    agent.signal(Signal::SIGKILL);
    agent.wait_exit(SECS(10)).unwrap();
    let agent2 = spawn_agent(&cfg, &[]);
    wait_until(SECS(30), "restarted agent ready", || ready(&stack))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent2.logs()));
    assert_eq!(db_json(&stack).unwrap().lease_id, first.lease_id);
}

/// `write_config` with `vault.ca_cert_file` set (or not).
fn write_config_with_ca(stack: &Stack, dir: &Path, ca: Option<&Path>) -> PathBuf {
    let vault = ca
        .map(|ca| format!("ca_cert_file = \"{}\"", ca.display()))
        .unwrap_or_default();
    write_agent_toml(stack, dir, &vault, "", "")
}

/// Production talks to Vault over HTTPS with a private CA. The agent
/// trusts exactly `vault.ca_cert_file`: without it, or with a file that
/// is not the signing CA, it stays unready and `/status` names the TLS
/// failure and the fix; a file that is no certificate is refused at start
/// naming the file; with the right CA it publishes a working credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_over_tls_trusts_exactly_the_configured_ca() {
    let stack = Stack::start(StackOptions {
        vault_tls: true,
        vault_proxy: true,
        ..opts(3600, 7200)
    })
    .await
    .unwrap();
    assert!(
        stack.vault_addr().starts_with("https://"),
        "{}",
        stack.vault_addr()
    );
    let ca = stack.bao.ca_cert.clone().expect("the dev server's CA");
    let dir = tempfile::tempdir().unwrap();

    // 1. No CA file: the built-in public roots do not know this CA.
    // 2. The server's own certificate is not the CA that signed it.
    let leaf = ca.with_file_name("vault-cert.pem");
    for (ca_file, hint) in [
        (None, "set vault.ca_cert_file"),
        (Some(leaf.as_path()), "does not hold the CA"),
    ] {
        let cfg = write_config_with_ca(&stack, dir.path(), ca_file);
        let agent = spawn_agent(&cfg, &[]);
        wait_until(SECS(30), "the TLS failure in /status", || async {
            status(&stack).await.is_ok_and(|s| {
                s["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("certificate") && e.contains(hint))
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));
        assert!(!ready(&stack).await);
        assert!(db_json(&stack).is_none(), "nothing published");
        drop(agent);
    }

    // 3. A file that holds no certificate: exit 64 at start, naming it.
    let junk = dir.path().join("not-a-ca.pem");
    std::fs::write(&junk, "hello\n").unwrap();
    let (code, logs) = run_to_exit(&write_config_with_ca(&stack, dir.path(), Some(&junk)));
    assert_eq!(code, Some(64), "{logs}");
    assert!(
        logs.contains("vault.ca_cert_file") && logs.contains("not-a-ca.pem"),
        "{logs}"
    );
    // A missing one: 66.
    let missing = dir.path().join("no-such-ca.pem");
    let (code, logs) = run_to_exit(&write_config_with_ca(&stack, dir.path(), Some(&missing)));
    assert_eq!(code, Some(66), "{logs}");
    assert!(logs.contains("no-such-ca.pem"), "{logs}");

    // 4. A CA file fixed in place (a ConfigMap update): the running agent
    // uses it at its next request, no restart; a credential that logs in.
    let live = dir.path().join("vault-ca.pem");
    std::fs::copy(&leaf, &live).unwrap();
    let cfg = write_config_with_ca(&stack, dir.path(), Some(&live));
    let agent = spawn_agent(&cfg, &[]);
    wait_until(SECS(30), "the wrong CA in /status", || async {
        status(&stack).await.is_ok_and(|s| {
            s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("does not hold the CA"))
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));
    let tmp = dir.path().join("vault-ca.pem.new");
    std::fs::copy(&ca, &tmp).unwrap();
    std::fs::rename(&tmp, &live).unwrap();
    let c = wait_published(&stack, 1, SECS(60)).await;
    assert!(!c.fallback);
    assert!(
        agent
            .logs()
            .contains("vault.ca_cert_file changed; using it"),
        "{}",
        agent.logs()
    );
    can_login_on_replica(&stack, &c).await.unwrap();
    write_ack(&stack, c.generation);
    wait_until(SECS(20), "ready", || ready(&stack))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool() {
    let Ok(out) = std::process::Command::new("promtool")
        .arg("--version")
        .output()
    else {
        eprintln!("promtool not installed (Debian package prometheus); skipping the lint");
        return;
    };
    assert!(out.status.success());
    let stack = Stack::start(opts(60, 600)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&stack, dir.path(), "", "");
    let _agent = spawn_agent(&cfg, &[]);
    wait_published(&stack, 1, SECS(60)).await;
    wait_until(SECS(20), "ready", || ready(&stack))
        .await
        .unwrap();
    let page = metrics(&stack).await.unwrap();
    for family in [
        "riskfeat_agent_vault_logins_total",
        "riskfeat_agent_token_renewals_total",
        "riskfeat_agent_lease_renewals_total",
        "riskfeat_agent_credential_issuances_total",
        "riskfeat_agent_lease_revocations_total",
        "riskfeat_agent_vault_request_duration_seconds",
        "riskfeat_agent_credential_expiry_timestamp_seconds",
        "riskfeat_agent_published_generation",
    ] {
        assert!(
            page.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{page}"
        );
    }
    assert_eq!(
        sample(&page, "riskfeat_agent_published_generation"),
        Some(1.0)
    );
    let expiry = sample(&page, "riskfeat_agent_credential_expiry_timestamp_seconds").unwrap();
    assert!(expiry > chrono::Utc::now().timestamp() as f64);
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
