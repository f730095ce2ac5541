//! Vault and PostgreSQL faults: Vault cut off (the credential kept, the
//! outage reported, recovery within the issuance cap), Vault sealed and the
//! database engine failing, and the fallback credential published only while
//! Vault cannot issue (without one, an outage at start keeps the agent
//! unready).

use crate::support::{
    acked_agent, assert_recovered_within_cap, can_login_on_replica, db_json, opts, spawn_agent,
    wait_published, write_ack, write_config, SECS,
};
use riskfeat_shared::creds::DbCredential;
use riskfeat_tests::fixtures::sample;
use riskfeat_tests::{Agent, Stack, StackOptions};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A stack of `base` with Vault behind a proxy (to cut it off).
async fn proxied_stack(base: StackOptions) -> Stack {
    Stack::start(StackOptions {
        vault_proxy: true,
        ..base
    })
    .await
    .unwrap()
}

/// An agent issuing at most `cap` credentials a minute, ready (with the
/// ack of its first credential, which it returns).
async fn ready_agent_with_cap(stack: &Stack, dir: &Path, cap: u32) -> (Agent, DbCredential) {
    let lifecycle = format!("max_issuances_per_minute = {cap}\nready_min_remaining_s = 2");
    let (agent, first) = acked_agent(stack, dir, &lifecycle, &[]).await;
    agent.wait_ready(SECS(20)).await.unwrap();
    (agent, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_outage_keeps_the_credential_and_recovers() {
    let stack = proxied_stack(opts(30, 300)).await;
    let dir = tempfile::tempdir().unwrap();
    let cap = 3;
    let (agent, first) = ready_agent_with_cap(&stack, dir.path(), cap).await;
    let proxy = stack.vault_proxy.as_ref().expect("vault proxy");

    proxy.cut();
    let cut_at = tokio::time::Instant::now();
    // Longer than one renewal interval (2/3 of 30 s, +-10%).
    agent
        .wait_status(SECS(40), "outage reported", |s| {
            s["vault"]["up"] == false && s["vault"]["outage_since"].is_string()
        })
        .await;
    let m = agent.metrics().await.unwrap();
    assert_eq!(sample(&m, "riskfeat_agent_vault_up"), Some(0.0), "{m}");
    agent
        .wait_status(SECS(40), "a renewal failed during the outage", |s| {
            s["counts"]["lease_renewals_failed"].as_u64() > Some(0)
        })
        .await;
    // Stay cut past one full renewal interval.
    tokio::time::sleep_until(cut_at + SECS(23)).await;
    let m = agent.metrics().await.unwrap();
    assert!(sample(&m, "riskfeat_agent_lease_renewals_total{result=\"error\"}").unwrap() >= 1.0);
    // The credential stays published and usable.
    let during = db_json(&stack).unwrap();
    assert_eq!(during.generation, first.generation);
    can_login_on_replica(&stack, &during).await.unwrap();
    let st = agent.status().await.unwrap();
    assert!(
        st["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot reach Vault")
            || st["last_error"].as_str().unwrap().contains("no answer"),
        "{st}"
    );

    proxy.restore();
    agent
        .wait_status(SECS(60), "recovered", |s| {
            s["vault"]["up"] == true && s["ready"] == true && s["phase"] != "vault-outage"
        })
        .await;
    let renewed_before = agent.status().await.unwrap()["counts"]["lease_renewals_ok"]
        .as_u64()
        .unwrap();
    agent
        .wait_status(SECS(40), "renewing again", |s| {
            s["counts"]["lease_renewals_ok"].as_u64() > Some(renewed_before)
        })
        .await;
    assert_recovered_within_cap(&stack, &agent, cap).await;
}

/// More than `n` lease renewals failed.
fn renewals_failed_above(n: u64) -> impl Fn(&Value) -> bool {
    move |s| s["counts"]["lease_renewals_failed"].as_u64() > Some(n)
}

/// Vault up, ready, and more than `n` lease renewals succeeded.
fn renewing_above(n: u64) -> impl Fn(&Value) -> bool {
    move |s| {
        s["vault"]["up"] == true
            && s["counts"]["lease_renewals_ok"].as_u64() > Some(n)
            && s["ready"] == true
    }
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
    let (agent, first) = ready_agent_with_cap(&stack, dir.path(), cap).await;

    // 1. Sealed. The next lease renewal (~2/3 of 30 s) gets a 503.
    stack.bao.seal().await.unwrap();
    agent
        .wait_status(
            SECS(40),
            "a renewal failed while sealed",
            renewals_failed_above(0),
        )
        .await;
    let st = agent.status().await.unwrap();
    let err = st["last_error"].as_str().unwrap_or_default();
    assert!(err.contains("sealed"), "last_error names the seal: {st}");
    let m = agent.metrics().await.unwrap();
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
    agent
        .wait_status(
            SECS(30),
            "renewing again after unseal",
            renewing_above(ok_before),
        )
        .await;
    let after_seal = db_json(&stack).unwrap();
    assert_eq!(
        after_seal.generation, first.generation,
        "the same lease was renewed: no new credential after the seal"
    );
    can_login_on_replica(&stack, &after_seal).await.unwrap();

    // 2. The primary (where Vault's engine renews roles) goes down; the
    //    replica the worker reads from stays up.
    let st = agent.status().await.unwrap();
    let failed_before = st["counts"]["lease_renewals_failed"].as_u64().unwrap();
    let ok_before = st["counts"]["lease_renewals_ok"].as_u64().unwrap();
    stack.pg.primary.stop().unwrap();
    agent
        .wait_status(
            SECS(40),
            "a renewal failed with the primary down",
            renewals_failed_above(failed_before),
        )
        .await;
    let st = agent.status().await.unwrap();
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
    agent
        .wait_status(
            SECS(30),
            "renewing again with the primary back",
            renewing_above(ok_before),
        )
        .await;
    assert_recovered_within_cap(&stack, &agent, cap).await;
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
    let stack = proxied_stack(opts(30, 300)).await;
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
    let agent = spawn_agent(&stack, &cfg, &[]);
    let c = wait_published(&stack, 1, SECS(60)).await;
    assert!(c.fallback, "fallback published while Vault is unreachable");
    assert!(c.lease_id.is_empty());
    can_login_on_replica(&stack, &c).await.unwrap();
    let st = agent.status().await.unwrap();
    assert_eq!(st["phase"], "fallback", "{st}");
    assert_eq!(st["ready"], true, "{st}");
    let m = agent.metrics().await.unwrap();
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
    let st = agent.status().await.unwrap();
    assert_eq!(st["counts"]["fallback_publications"], 1, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fallback_an_outage_at_start_keeps_the_agent_unready() {
    let stack = proxied_stack(StackOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&stack, dir.path(), "", "");
    stack.vault_proxy.as_ref().unwrap().cut();
    let agent = spawn_agent(&stack, &cfg, &[]);
    agent
        .wait_status(SECS(30), "outage reported", |s| {
            s["vault"]["consecutive_failures"].as_u64() >= Some(2)
                && s["not_ready_reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("no credential") && r.contains("Vault"))
        })
        .await;
    assert!(!agent.is_ready().await);
    assert!(db_json(&stack).is_none(), "nothing published");
    assert!(!stack.shared_dir.path().join("db.json").exists());
    // Comes up by itself when Vault is back.
    stack.vault_proxy.as_ref().unwrap().restore();
    let c = wait_published(&stack, 1, SECS(60)).await;
    assert!(!c.fallback);
    agent.wait_ready(SECS(20)).await.unwrap();
}
