//! The two guards in front of a new credential, each against the fault it
//! exists for: the replica check against a replica whose replay is paused
//! (the role exists on the primary only), and the issuance cap against a
//! forced re-issue flood (credentials due for replacement every 2 s).

use crate::support::{
    acked_agent, can_login_on_replica, db_json, dynamic_roles, opts, published_and_usable,
    spawn_agent, write_config, SECS,
};
use riskfeat_tests::fixtures::sample;
use riskfeat_tests::{Agent, Stack};
use std::time::Duration;

/// What the agent logs at each failed replica login of a new credential.
const NOT_YET: &str = "new credential not usable on the replica yet";

/// Whether `user` exists on the replica (as replayed so far).
async fn on_replica(stack: &Stack, user: &str) -> bool {
    let c = stack.pg.replica().connect_superuser().await.unwrap();
    c.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&user])
        .await
        .unwrap()
        .is_some()
}

/// Plays the worker until `done`: every 100 ms, whatever `db.json` names
/// must log in on the replica (panics otherwise).
async fn worker_logs_in_until(stack: &Stack, agent: &Agent, what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + SECS(60);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen\n{}",
            agent.logs()
        );
        published_and_usable(stack, agent, "cannot log in on the replica").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The rotation comes while the replica's replay is paused: OpenBao creates
/// the new role on the primary, the replica does not have it, and the
/// agent keeps retrying the login there without publishing; `db.json`
/// keeps naming generation 1, which the worker (played by the test) logs
/// in with on the replica throughout, never failing. Once replay resumes,
/// that same credential is published as generation 2 and logs in.
///
/// Checked: with `replica::wait_for_login` returning `Ok(0)` at once (the
/// check removed), this test fails: "published generation 1 cannot log in
/// on the replica: db error" (even before the pause, replication lag
/// alone is enough to publish a role the replica does not have yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_is_published_only_once_the_paused_replica_has_it() {
    // 40 s credentials with a 20 s lead: rotation 20 s after the first
    // issuance, 20 s before generation 1 ends.
    let stack = Stack::start(opts(40, 40)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lifecycle = "max_ttl_hint_s = 40\nrotate_lead_s = 20\nreplica_wait_s = 60\n\
                     ack_grace_s = 120\nmax_issuances_per_minute = 20";
    let (agent, first) = acked_agent(&stack, dir.path(), lifecycle, &[]).await;
    let replica = stack.pg.replica().connect_superuser().await.unwrap();
    replica
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    let retries_before = agent.logs().matches(NOT_YET).count();

    // The rotation's role appears on the primary; the worker keeps logging
    // in with generation 1 meanwhile.
    let new_role = || {
        let (stack, first) = (&stack, &first);
        async move {
            let roles = dynamic_roles(stack).await.unwrap();
            roles.into_iter().find(|r| *r != first.username)
        }
    };
    let deadline = tokio::time::Instant::now() + SECS(60);
    let role = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no rotation\n{}",
            agent.logs()
        );
        published_and_usable(&stack, &agent, "cannot log in on the replica").await;
        if let Some(r) = new_role().await {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The agent tries the replica again and again and publishes nothing.
    worker_logs_in_until(&stack, &agent, "two replica retries", || {
        agent.logs().matches(NOT_YET).count() >= retries_before + 2
    })
    .await;
    assert!(!on_replica(&stack, &role).await, "replay is paused");
    let still = db_json(&stack).unwrap();
    assert_eq!(still.generation, first.generation, "{}", agent.logs());
    assert_eq!(still.username, first.username);

    replica
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    worker_logs_in_until(&stack, &agent, "generation 2 published", || {
        db_json(&stack).is_some_and(|c| c.generation > first.generation)
    })
    .await;
    let second = published_and_usable(&stack, &agent, "cannot log in on the replica").await;
    assert_eq!(second.generation, first.generation + 1);
    assert_eq!(
        second.username, role,
        "the credential that waited is the one published"
    );
    can_login_on_replica(&stack, &second).await.unwrap();
    let m = agent.metrics().await.unwrap();
    assert_eq!(
        sample(
            &m,
            "riskfeat_agent_credential_issuances_total{result=\"ok\"}"
        ),
        Some(2.0),
        "one issuance waited out the pause: {m}"
    );
}

/// Credentials that live 4 s with a 2 s lead ask for a replacement every
/// 2 s, for as long as the test runs: a re-issue flood. With a cap of 3
/// per minute, `result="capped"` grows, and the credentials issued (by the
/// agent's count and by the generations it published) never exceed 3 per
/// started minute of the agent's life.
///
/// Checked: with the cap check removed from `ensure_credential`
/// (`cap_free_at(now).filter(|_| false)`), this test fails: "issued 4
/// (generation 4) > 3 allowed after 6.4s".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuance_cap_holds_under_a_re_issue_flood() {
    let stack = Stack::start(opts(4, 4)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cap = 3u32;
    let cfg = write_config(
        &stack,
        dir.path(),
        &format!("max_ttl_hint_s = 4\nmax_issuances_per_minute = {cap}"),
        "",
    );
    let started = tokio::time::Instant::now();
    let agent = spawn_agent(&stack, &cfg, &[]);
    let series =
        |result: &str| format!("riskfeat_agent_credential_issuances_total{{result=\"{result}\"}}");
    let mut capped_at = None;
    let deadline = started + SECS(90);
    loop {
        let now = tokio::time::Instant::now();
        assert!(now < deadline, "never capped\n{}", agent.logs());
        let Ok(m) = agent.metrics().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // Every started minute of the agent's life allows `cap` more: a
        // bound that only grows with time, so a slow run cannot fail it.
        let minutes = started.elapsed().as_secs() / 60 + 1;
        let allowed = f64::from(cap) * minutes as f64;
        let issued =
            sample(&m, &series("ok")).unwrap_or(0.0) + sample(&m, &series("error")).unwrap_or(0.0);
        let generation = db_json(&stack).map_or(0, |c| c.generation);
        assert!(
            issued <= allowed && generation as f64 <= allowed,
            "issued {issued} (generation {generation}) > {allowed} allowed after {:?}\n{}",
            started.elapsed(),
            agent.logs()
        );
        if sample(&m, &series("capped")).unwrap_or(0.0) >= 1.0 {
            // The flood goes on: watch it push against the cap a while.
            let at = *capped_at.get_or_insert(now);
            if now >= at + SECS(8) {
                assert!(issued >= f64::from(cap), "capped below the cap: {m}");
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let st = agent.status().await.unwrap();
    assert!(st["counts"]["issuances_capped"].as_u64() >= Some(1), "{st}");
    assert!(
        agent
            .logs()
            .contains("issuance cap of 3 per minute reached"),
        "{}",
        agent.logs()
    );
    assert!(stack.outstanding_leases().await.unwrap() <= cap as usize);
}
