//! The replica lag policy with replay paused on the replica: lag measured
//! and growing, responses marked stale (`mark_stale`), or read from the
//! primary (`primary`), and back to normal once replay resumes.

use crate::support::{
    get, insert_rows, rotate, spawn_worker, start_stack, wait_for_answer, READY_TIMEOUT, SECS,
};
use chrono::{Duration as ChronoDuration, Utc};
use riskfeat_shared::atomic::{write_json_atomic, WriteOptions};
use riskfeat_shared::creds::DbCredential;
use riskfeat_tests::Worker;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_lag_is_measured_and_the_policy_applied() {
    let stack = start_stack().await;
    insert_rows(&stack, 7, &[(1.0, Utc::now() - ChronoDuration::minutes(1))]).await;
    stack.pg.wait_replica_caught_up().await.unwrap();
    rotate(&stack, 1).await;
    let stale = spawn_worker(
        &stack,
        "max_replica_lag_ms = 500\nlag_policy = \"mark_stale\"",
    );
    stale.wait_generation(1, READY_TIMEOUT).await.unwrap();
    // A second worker, with the primary policy, in its own shared dir (its
    // own socket and ack) holding the same credential.
    let primary_dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let cred = DbCredential::load(&stack.shared_dir.path().join("db.json")).unwrap();
    write_json_atomic(
        &primary_dir.path().join("db.json"),
        &cred,
        WriteOptions::SHARED,
    )
    .unwrap();
    let primary_worker = Worker::spawn(
        primary_dir.path(),
        "max_replica_lag_ms = 500\nlag_policy = \"primary\"\nlag_check_interval_ms = 200",
    )
    .unwrap();
    let client = reqwest::Client::new();
    let primary_url = primary_worker.url("/v1/features/7");
    wait_for_answer(
        &client,
        &primary_url,
        SECS(30),
        "primary-policy worker serving",
        |s, _| s == 200,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", primary_worker.logs()));

    // In sync: lag 0, not stale, both read the replica.
    let (_, body) = get(&client, &stale.url("/v1/features/7")).await.unwrap();
    assert_eq!(body["stale"], false);
    assert_eq!(body["source"], "replica");

    // Pause replay and keep writing on the primary: lag grows.
    let replica_su = stack.pg.replica().connect_superuser().await.unwrap();
    replica_su
        .execute("SELECT pg_wal_replay_pause()", &[])
        .await
        .unwrap();
    let writes_stop = Arc::new(AtomicBool::new(false));
    let ws = writes_stop.clone();
    let primary_su = stack.pg.primary.connect_superuser().await.unwrap();
    let writer = tokio::spawn(async move {
        let mut i = 0i64;
        while !ws.load(Ordering::Relaxed) {
            i += 1;
            primary_su
                .execute(
                    "INSERT INTO transactions (user_id, transaction_amount, transaction_time, merchant, category) \
                     VALUES (8, 2.0, now(), 'm', 'c')",
                    &[],
                )
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        i
    });
    let url = stale.url("/v1/features/7");
    wait_for_answer(&client, &url, SECS(30), "responses marked stale", |_, b| {
        b["stale"] == true
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", stale.logs()));
    let (code, body) = get(&client, &url).await.unwrap();
    assert_eq!(code, 200);
    assert!(body["replica_lag_ms"].as_u64().unwrap() > 500, "{body}");
    assert_eq!(body["source"], "replica");
    let m = stale.metrics().await.unwrap();
    assert!(m.contains("riskfeat_worker_replica_stale 1"), "{m}");
    let st = stale.status().await.unwrap();
    assert_eq!(st["replica_lag"]["stale"], true, "{st}");
    let lag1 = body["replica_lag_ms"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (_, body) = get(&client, &url).await.unwrap();
    assert!(
        body["replica_lag_ms"].as_u64().unwrap() > lag1,
        "lag grows: {lag1} then {body}"
    );

    // The primary-policy worker reads the primary: it sees user 8's rows
    // that the paused replica does not have.
    let (_, body) = get(&client, &primary_worker.url("/v1/features/8"))
        .await
        .unwrap();
    assert_eq!(body["source"], "primary", "{body}");
    assert_eq!(body["stale"], false);
    assert!(body["features"]["count"].as_u64().unwrap() >= 1, "{body}");
    let (_, on_replica) = get(&client, &stale.url("/v1/features/8")).await.unwrap();
    assert!(
        on_replica["features"]["count"].as_u64().unwrap()
            < body["features"]["count"].as_u64().unwrap(),
        "the paused replica is behind: {on_replica} vs {body}"
    );

    // Resume: lag back to 0, not stale.
    writes_stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    replica_su
        .execute("SELECT pg_wal_replay_resume()", &[])
        .await
        .unwrap();
    wait_for_answer(
        &client,
        &url,
        SECS(30),
        "lag back under the limit",
        |_, b| b["stale"] == false,
    )
    .await
    .unwrap();
    drop(primary_worker);
}
