//! What the agent tests share: the agent's test config, playing the
//! worker (reading `db.json`, logging in on the replica, writing the ack),
//! and looking at Vault and PostgreSQL from outside.

use riskfeat_shared::ack::WorkerAck;
use riskfeat_shared::creds::DbCredential;
use riskfeat_tests::fixtures::sample;
use riskfeat_tests::{wait_until, Agent, AgentToml, Stack, StackOptions};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const SECS: fn(u64) -> Duration = Duration::from_secs;

/// Writes an agent config for `stack` into `dir`; `lifecycle` is appended
/// to `[lifecycle]`, and `tail` after it (it may open further sections).
pub fn write_config(stack: &Stack, dir: &Path, lifecycle: &str, tail: &str) -> PathBuf {
    write_agent_toml(stack, dir, "", lifecycle, tail)
}

/// An agent config for `stack` into `dir`: `vault` more `[vault]` lines,
/// then `[lifecycle]` with quick backoffs and `lifecycle`, then `tail`.
pub fn write_agent_toml(
    stack: &Stack,
    dir: &Path,
    vault: &str,
    lifecycle: &str,
    tail: &str,
) -> PathBuf {
    stack
        .write_agent_toml(
            dir,
            AgentToml {
                top: "log_level = \"info,riskfeat_agent=debug\"",
                vault,
                sections: &format!(
                    "[lifecycle]\nbackoff_initial_s = 0.2\nbackoff_max_s = 2.0\n{lifecycle}\n{tail}"
                ),
                ..Default::default()
            },
        )
        .unwrap()
}

/// riskfeat-agent with `config` on `stack`'s shared dir, `args` after it.
pub fn spawn_agent(stack: &Stack, config: &Path, args: &[&str]) -> Agent {
    Agent::spawn(config, stack.shared_dir.path(), args).expect("spawn riskfeat-agent")
}

/// riskfeat-agent with `args` on a config (written into `dir`, its path
/// returned to restart it) with `lifecycle` lines; returns once its first
/// credential is published.
pub async fn published_agent(
    stack: &Stack,
    dir: &Path,
    lifecycle: &str,
    args: &[&str],
) -> (PathBuf, Agent, DbCredential) {
    let cfg = write_config(stack, dir, lifecycle, "");
    let agent = spawn_agent(stack, &cfg, args);
    let first = wait_published(stack, 1, SECS(60)).await;
    (cfg, agent, first)
}

/// [`published_agent`] whose first credential the worker has acked.
pub async fn acked_agent(
    stack: &Stack,
    dir: &Path,
    lifecycle: &str,
    args: &[&str],
) -> (Agent, DbCredential) {
    let (_, agent, first) = published_agent(stack, dir, lifecycle, args).await;
    write_ack(stack, first.generation);
    (agent, first)
}

/// The published credential, which must log in on the replica now (a
/// panic says the generation, `fault` and the agent's log otherwise).
pub async fn published_and_usable(stack: &Stack, agent: &Agent, fault: &str) -> DbCredential {
    let now = db_json(stack).expect("db.json stays published");
    if let Err(e) = can_login_on_replica(stack, &now).await {
        panic!(
            "published generation {} {fault}: {e}\n{}",
            now.generation,
            agent.logs()
        );
    }
    now
}

/// The published `db.json`, if any.
pub fn db_json(stack: &Stack) -> Option<DbCredential> {
    DbCredential::load(&stack.shared_dir.path().join("db.json")).ok()
}

/// Acks `generation` in `worker.json`, as the worker would.
pub fn write_ack(stack: &Stack, generation: u64) {
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

/// Dynamic roles currently in pg_roles (on the primary).
pub async fn dynamic_roles(stack: &Stack) -> anyhow::Result<BTreeSet<String>> {
    let c = stack.pg.primary.connect_superuser().await?;
    let rows = c
        .query("SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%'", &[])
        .await?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

/// After an outage: the published credential logs in on the replica,
/// Vault is up again, and no more than `cap` credentials were issued (none
/// outstanding beyond it): no failure mode floods the database.
pub async fn assert_recovered_within_cap(stack: &Stack, agent: &Agent, cap: u32) {
    let now = db_json(stack).unwrap();
    can_login_on_replica(stack, &now).await.unwrap();
    let m = agent.metrics().await.unwrap();
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
    assert!(stack.outstanding_leases().await.unwrap() <= cap as usize);
}

/// Logs in on the replica with `c` and reads the transactions table.
pub async fn can_login_on_replica(stack: &Stack, c: &DbCredential) -> Result<(), String> {
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

/// Waits until `db.json` holds `min_generation` or later; returns it.
pub async fn wait_published(stack: &Stack, min_generation: u64, timeout: Duration) -> DbCredential {
    wait_until(timeout, "db.json published", || async {
        db_json(stack).is_some_and(|c| c.generation >= min_generation)
    })
    .await
    .unwrap();
    db_json(stack).unwrap()
}

/// Stack options with the database role's `default_ttl` and `max_ttl` (s).
pub fn opts(default_ttl: u64, max_ttl: u64) -> StackOptions {
    StackOptions::with_ttls(default_ttl, max_ttl)
}
