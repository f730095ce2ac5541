//! The worker's bounds under partial failures: retries never open
//! connections outside the pool (sessions killed on the replica under
//! load), a lag measurement that fails makes answers stale (or read from
//! the primary), and two workers on the static fallback login fit its
//! `CONNECTION LIMIT` with their `fallback_pool_size` pools.

use crate::support::{
    credential, get, insert_rows, publish, rotate, sessions_of, spawn_worker, start_stack,
    wait_for_answer, Load, READY_TIMEOUT, SECS,
};
use chrono::{Duration as ChronoDuration, Utc};
use riskfeat_shared::atomic::{write_json_atomic, WriteOptions};
use riskfeat_shared::creds::DbCredential;
use riskfeat_shared::Secret;
use riskfeat_tests::fixtures::sample;
use riskfeat_tests::pg::terminate_backends;
use riskfeat_tests::{IssuedCreds, Stack, TcpProxy, Worker};
use std::path::Path;
use std::time::Duration;

/// A stack with one transaction of `user` (a minute old) on the replica
/// and a worker with `config` serving generation 1: the stack, that
/// credential as published and as issued, the worker.
async fn worker_serving(user: i64, config: &str) -> (Stack, DbCredential, IssuedCreds, Worker) {
    let stack = start_stack().await;
    insert_rows(
        &stack,
        user,
        &[(5.0, Utc::now() - ChronoDuration::minutes(1))],
    )
    .await;
    stack.pg.wait_replica_caught_up().await.unwrap();
    let (cred, issued) = rotate(&stack, 1).await;
    let w = spawn_worker(&stack, config);
    w.wait_generation(1, READY_TIMEOUT).await.unwrap();
    (stack, cred, issued, w)
}

/// Publishes `cred` as `db.json` in `dir` (a second worker's shared dir).
fn publish_in(dir: &Path, cred: &DbCredential) {
    write_json_atomic(&dir.join("db.json"), cred, WriteOptions::SHARED).unwrap();
}

/// Under 16 concurrent requests on a pool of 2, the test kills every
/// worker session on the replica (`pg_terminate_backend`, SQLSTATE 57P01)
/// twenty times: the failed queries are retried (the retry counter grows),
/// yet every connection the worker opened (counted by a TCP proxy in front
/// of the replica) replaced a killed one, so no retry opened one of its
/// own, and it serves again afterwards.
///
/// Not "at most 2 at once" at the proxy: it carries a connection until the
/// server closes it, and a terminated backend closes its socket only at
/// the end of its exit, after its client was told and connected again.
/// Sampled every few ms, the proxy carried 3 or 4 while
/// `pg_stat_activity` showed at most 2 of the worker's backends (often 0)
/// and the pool at most 2 open, and it opened 34 connections for 35
/// killed sessions (32 retries): the count was wrong, not the pool. The
/// bound allows one pool's size (2) over the kills.
///
/// Checked: with the old retry path (a fresh connection outside the pool
/// per retry) this test fails with "73 connections opened for 41 killed
/// (pool_size 2; the proxy carried 7 at once ...)".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_after_connection_errors_stay_inside_the_pool() {
    let stack = start_stack().await;
    insert_rows(&stack, 1, &[(5.0, Utc::now() - ChronoDuration::minutes(1))]).await;
    stack.pg.wait_replica_caught_up().await.unwrap();
    let replica = stack.pg.replica().endpoint();
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", replica.port).parse().unwrap())
        .await
        .unwrap();
    let issued = stack.issue_creds().await.unwrap();
    let mut cred = credential(&stack, 1, &issued);
    cred.replica.host = "127.0.0.1".into();
    cred.replica.port = proxy.addr.port();
    publish(&stack, &cred);
    let w = spawn_worker(&stack, "pool_size = 2\npool_wait_timeout_ms = 5000");
    w.wait_generation(1, READY_TIMEOUT).await.unwrap();
    let before = retries(&w).await;
    let load = Load::start(w.http().base(), 16, vec![1, 2, 3]);
    let su = stack.pg.replica().connect_superuser().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.reset_peak();
    let opened_before = proxy.opened();
    let mut killed = 0;
    for _ in 0..20 {
        killed += terminate_backends(&su, "riskfeat-worker").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, _failures) = load.finish().await;
    assert!(ok > 0);
    let opened = proxy.opened() - opened_before;
    // Slack of one pool's size: a connection being opened when a kill
    // lands can be opened again without a kill of its own.
    assert!(
        opened <= killed + 2,
        "{opened} connections opened for {killed} killed (pool_size 2; the proxy carried {} \
         at once, dying sessions included)\n{}",
        proxy.peak(),
        w.logs()
    );
    assert!(retries(&w).await > before, "the kills caused retries");
    let client = reqwest::Client::new();
    let (code, body) = get(&client, &w.url("/v1/features/1")).await.unwrap();
    assert_eq!(code, 200, "{body}");
}

/// The lease of the credential the worker uses is revoked under it (Vault
/// runs `revocation.sql`: the role's sessions end on the primary, the role
/// is dropped, and the drop replays to the replica, where the worker's
/// sessions live on without the role's rights). Callers get 503
/// `database_unavailable` (retryable), never a 500: first from those
/// sessions (SQLSTATE 42501), then, the sessions killed, from the logins
/// PostgreSQL refuses. A new credential serves again.
///
/// Checked: with 42501 classed as a query error again (no
/// `DbError::Refused`), this test fails with "left: (500,
/// Some(\"database_error\"))", the worker logging "permission denied for
/// table transactions (SQLSTATE 42501)".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_credential_revoked_under_the_worker_is_unavailable_not_an_error() {
    let (stack, _, issued, w) = worker_serving(1, "pool_size = 2").await;
    let client = reqwest::Client::new();
    let url = w.url("/v1/features/1");
    let (code, body) = get(&client, &url).await.unwrap();
    assert_eq!(code, 200, "{body}");

    stack.revoke_lease(&issued.lease_id).await.unwrap();
    stack.pg.wait_replica_caught_up().await.unwrap();
    let unavailable = |code: u16, body: &serde_json::Value| {
        assert_eq!(
            (code, body["error"]["code"].as_str()),
            (503, Some("database_unavailable")),
            "{body}\n{}",
            w.logs()
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("retry later")),
            "{body}"
        );
    };
    for _ in 0..5 {
        let (code, body) = get(&client, &url).await.unwrap();
        unavailable(code, &body);
    }
    let su = stack.pg.replica().connect_superuser().await.unwrap();
    terminate_backends(&su, "riskfeat-worker").await.unwrap();
    for _ in 0..5 {
        let (code, body) = get(&client, &url).await.unwrap();
        unavailable(code, &body);
    }

    rotate(&stack, 2).await;
    w.wait_generation(2, READY_TIMEOUT).await.unwrap();
    wait_for_answer(&client, &url, SECS(30), "answers again", |c, _| c == 200)
        .await
        .unwrap();
}

async fn retries(w: &Worker) -> f64 {
    let m = w.metrics().await.unwrap();
    sample(&m, "riskfeat_worker_db_retries_total").unwrap_or(0.0)
}

/// Revoking EXECUTE on a function the lag query uses (on the primary,
/// replayed to the replica) breaks the measurement for real while the
/// feature queries keep working: once it has failed for longer than
/// `lag_check_interval_ms`, the `mark_stale` worker answers `stale: true`
/// with `replica_lag_ms: null` and says why in `/status`, and the
/// `primary` worker reads the primary; both recover when the grant is back.
///
/// Checked: with `lag_unknown ||` removed from `App::read_context` (a
/// failing measurement no longer counts as over the limit) it fails with
/// "timed out after 30s waiting for answers marked stale".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_lag_measurement_marks_answers_stale() {
    let (stack, cred, _, stale) = worker_serving(7, "lag_policy = \"mark_stale\"").await;
    let primary_dir = tempfile::tempdir_in("/dev/shm").unwrap();
    publish_in(primary_dir.path(), &cred);
    let primary = Worker::spawn(
        primary_dir.path(),
        "lag_policy = \"primary\"\nlag_check_interval_ms = 200",
    )
    .unwrap();
    primary.wait_generation(1, READY_TIMEOUT).await.unwrap();
    let client = reqwest::Client::new();
    let url = stale.url("/v1/features/7");
    // Ready comes before the first lag measurement: wait for it.
    wait_for_answer(&client, &url, SECS(30), "a measured lag", |s, b| {
        s == 200 && b["replica_lag_ms"].is_u64()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", stale.logs()));
    let (code, body) = get(&client, &url).await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(body["stale"], false, "{body}");
    assert!(body["replica_lag_ms"].is_u64(), "{body}");

    let su = stack.pg.primary.connect_superuser().await.unwrap();
    let function = "FUNCTION pg_catalog.pg_last_xact_replay_timestamp()";
    su.batch_execute(&format!("REVOKE EXECUTE ON {function} FROM PUBLIC"))
        .await
        .unwrap();
    stack.pg.wait_replica_caught_up().await.unwrap();
    wait_for_answer(&client, &url, SECS(30), "answers marked stale", |s, b| {
        s == 200 && b["stale"] == true
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", stale.logs()));
    let (_, body) = get(&client, &url).await.unwrap();
    assert!(body["replica_lag_ms"].is_null(), "{body}");
    assert_eq!(body["source"], "replica", "{body}");
    assert!(body["features"]["count"].as_u64() >= Some(1), "{body}");
    let st = stale.status().await.unwrap();
    assert_eq!(st["replica_lag"]["measurement_failing"], true, "{st}");
    assert!(
        st["replica_lag"]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("permission denied")),
        "{st}"
    );
    let m = stale.metrics().await.unwrap();
    assert_eq!(
        sample(&m, "riskfeat_worker_replica_stale"),
        Some(1.0),
        "{m}"
    );
    let primary_url = primary.url("/v1/features/7");
    wait_for_answer(
        &client,
        &primary_url,
        SECS(30),
        "read from the primary",
        |s, b| s == 200 && b["source"] == "primary" && b["stale"] == false,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", primary.logs()));

    su.batch_execute(&format!("GRANT EXECUTE ON {function} TO PUBLIC"))
        .await
        .unwrap();
    wait_for_answer(&client, &url, SECS(30), "fresh answers again", |s, b| {
        s == 200 && b["stale"] == false && b["replica_lag_ms"].is_u64()
    })
    .await
    .unwrap();
    wait_for_answer(
        &client,
        &primary_url,
        SECS(30),
        "the replica again",
        |_, b| b["source"] == "replica",
    )
    .await
    .unwrap();
}

/// The fallback login, created by the deployed
/// `k8s/bootstrap/postgres/02-fallback.sql` with its `CONNECTION LIMIT`
/// scaled down to this test's two pods: 10, below two workers'
/// `pool_size = 8` pools, above their `fallback_pool_size = 4` ones. Both
/// workers serve on it under load without a failed request and hold no more
/// than 4 connections each; a dynamic credential afterwards gets the full
/// pools back.
///
/// Checked: with `fallback_size` ignored in `DbPools::new` (a fallback
/// pool as large as a dynamic one) it fails at the first
/// `serve_with_pools_of` ("generation 1": `pool_max_connections` 8, not 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_on_the_fallback_login_fit_its_connection_limit() {
    let stack = start_stack().await;
    insert_rows(&stack, 1, &[(5.0, Utc::now() - ChronoDuration::minutes(1))]).await;
    let su = stack.pg.primary.connect_superuser().await.unwrap();
    su.batch_execute(riskfeat_tests::bootstrap::FALLBACK_SQL)
        .await
        .unwrap();
    su.batch_execute(
        "ALTER ROLE riskfeat_fallback PASSWORD 'fallback-pw-123456' CONNECTION LIMIT 10",
    )
    .await
    .unwrap();
    stack.pg.wait_replica_caught_up().await.unwrap();
    let now = Utc::now();
    let fallback = DbCredential {
        generation: 1,
        username: "riskfeat_fallback".into(),
        password: Secret::new("fallback-pw-123456"),
        lease_id: String::new(),
        lease_duration_s: 0,
        renewable: false,
        issued_at: now,
        expires_at: now + ChronoDuration::days(30),
        fallback: true,
        primary: stack.pg.primary.endpoint(),
        replica: stack.pg.replica().endpoint(),
    };
    let second_dir = tempfile::tempdir_in("/dev/shm").unwrap();
    publish(&stack, &fallback);
    publish_in(second_dir.path(), &fallback);
    let config = "pool_size = 8\npool_wait_timeout_ms = 5000";
    let first = spawn_worker(&stack, config);
    let second = Worker::spawn(second_dir.path(), config).unwrap();
    serve_with_pools_of(&[&first, &second], 1, 4).await;
    let loads = [&first, &second].map(|w| Load::start(w.http().base(), 12, vec![1, 2, 3]));
    let mut most = 0;
    for _ in 0..30 {
        most = most.max(sessions_of(&stack, "riskfeat_fallback").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for load in loads {
        load.finish_without_failures(0, &second.logs()).await;
    }
    assert!(most <= 8, "{most} fallback connections on the replica");

    // Vault is back: a dynamic credential, full pools again.
    let issued = stack.issue_creds().await.unwrap();
    let dynamic = credential(&stack, 2, &issued);
    publish(&stack, &dynamic);
    publish_in(second_dir.path(), &dynamic);
    serve_with_pools_of(&[&first, &second], 2, 8).await;
}

/// Waits until each of `workers` serves `generation`, with pools of `size`.
async fn serve_with_pools_of(workers: &[&Worker], generation: u64, size: usize) {
    for w in workers {
        w.wait_generation(generation, READY_TIMEOUT).await.unwrap();
        let m = w.metrics().await.unwrap();
        assert_eq!(
            sample(&m, "riskfeat_worker_pool_max_connections"),
            Some(size as f64),
            "generation {generation}: {m}"
        );
    }
}
