//! Rotation with the worker's ack (generation N usable until the ack, old
//! roles and stray sessions gone after it, exactly one lease left), a token
//! shorter than the credential, kill -9 resuming the same lease, and SIGTERM
//! revoking the leases.

use crate::support::{
    acked_agent, db_json, dynamic_roles, opts, published_agent, published_and_usable, spawn_agent,
    write_ack, SECS,
};
use nix::sys::signal::Signal;
use riskfeat_tests::{wait_until, Stack, StackOptions};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotates_three_times_without_dropping_a_connection() {
    let stack = Stack::start(opts(5, 20)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lifecycle = "rotate_lead_s = 8\nack_grace_s = 120\nmax_issuances_per_minute = 20";
    let (agent, first) = acked_agent(&stack, dir.path(), lifecycle, &[]).await;

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
        // Whatever is published logs in on the replica, at every moment.
        let now = published_and_usable(&stack, &agent, "cannot log in on the replica").await;
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
        stack.outstanding_leases().await.unwrap() == 1
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));
    let roles = dynamic_roles(&stack).await.unwrap();
    let current = db_json(&stack).unwrap();
    assert!(roles.contains(&current.username));
    let st = agent.status().await.unwrap();
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
    let lifecycle = "rotate_lead_s = 8\nack_grace_s = 120\nmax_issuances_per_minute = 30";
    let (agent, first) = acked_agent(&stack, dir.path(), lifecycle, &[]).await;
    let mut seen = first.generation;
    let end = tokio::time::Instant::now() + SECS(40);
    let mut checks = 0;
    while tokio::time::Instant::now() < end {
        let now = published_and_usable(&stack, &agent, "was revoked").await;
        checks += 1;
        if now.generation != seen {
            write_ack(&stack, now.generation);
            seen = now.generation;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(checks > 50);
    let st = agent.status().await.unwrap();
    // Three token lifetimes passed: the agent logged in again, and the
    // credential followed each new token.
    assert!(st["counts"]["logins_ok"].as_u64().unwrap() >= 3, "{st}");
    assert!(seen >= first.generation + 2, "{st}");
    assert_eq!(st["ready"], true, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_resumes_the_same_lease() {
    let stack = Stack::start(opts(60, 600)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cfg, mut agent, first) = published_agent(&stack, dir.path(), "", &[]).await;
    agent.wait_ready(SECS(20)).await.unwrap();
    let mode = |name: &str| {
        let meta = std::fs::metadata(stack.shared_dir.path().join(name)).unwrap();
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777
    };
    assert_eq!(
        mode("agent-state.json"),
        0o600,
        "agent-state.json is private"
    );
    assert_eq!(mode("db.json"), 0o640);

    agent.signal(Signal::SIGKILL);
    agent.wait_exit(SECS(10)).expect("killed");
    let agent2 = spawn_agent(&stack, &cfg, &[]);
    agent2.wait_ready(SECS(30)).await.unwrap();
    let st = agent2.status().await.unwrap();
    assert_eq!(st["counts"]["issuances_ok"], 0, "no new credential: {st}");
    assert_eq!(st["counts"]["logins_ok"], 0, "the token was resumed: {st}");
    let after = db_json(&stack).unwrap();
    assert_eq!(after.lease_id, first.lease_id);
    assert_eq!(after.generation, first.generation);
    assert_eq!(stack.outstanding_leases().await.unwrap(), 1);
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
    let (_, mut agent, cred) =
        published_agent(&stack, dir.path(), "shutdown_timeout_s = 10", &[]).await;
    assert!(dynamic_roles(&stack)
        .await
        .unwrap()
        .contains(&cred.username));
    let code = agent.stop(SECS(15)).expect("exits within the timeout");
    assert_eq!(code.code(), Some(0), "{}", agent.logs());
    assert!(
        !dynamic_roles(&stack)
            .await
            .unwrap()
            .contains(&cred.username),
        "role still in pg_roles after SIGTERM\n{}",
        agent.logs()
    );
    assert!(!agent.health().path().exists(), "socket removed");
    assert!(
        db_json(&stack).is_none(),
        "revoked credential is not left published"
    );
    assert_eq!(stack.outstanding_leases().await.unwrap(), 0);
}
