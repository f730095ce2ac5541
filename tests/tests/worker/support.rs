//! What the worker tests share: the worker's test config, playing the
//! agent (issuing and publishing credentials and config), HTTP helpers and
//! the test data (the concurrent request load is [`Load`]).

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use riskfeat_shared::ack::WorkerAck;
use riskfeat_shared::atomic::{write_json_atomic, WriteOptions};
use riskfeat_shared::config_file::ConfigSnapshot;
use riskfeat_shared::creds::DbCredential;
use riskfeat_shared::Secret;
pub use riskfeat_tests::load::Load;
use riskfeat_tests::{wait_until, IssuedCreds, Stack, StackOptions, Worker};
use serde_json::Value;
use std::time::Duration;

pub const SECS: fn(u64) -> Duration = Duration::from_secs;

/// (amount, ts) of one inserted transaction.
pub type Txn = (f64, DateTime<Utc>);

/// What every test worker runs with besides its own lines: quick rechecks,
/// retries and lag checks, debug logs.
const TEST_CONFIG: &str = "recheck_interval_ms = 1000\nretry_initial_ms = 100\n\
    retry_max_ms = 1000\nlag_check_interval_ms = 200\n\
    log_level = \"info,riskfeat_worker=debug\"";

/// A worker on `stack`'s shared dir with [`TEST_CONFIG`] and `extra_config`.
pub fn spawn_worker(stack: &Stack, extra_config: &str) -> Worker {
    Worker::spawn(
        stack.shared_dir.path(),
        &format!("{TEST_CONFIG}\n{extra_config}"),
    )
    .expect("spawn riskfeat-worker")
}

/// How long a worker may take to swap in a published generation.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// `db.json` for credential `c` as `generation`, on `stack`'s servers.
pub fn credential(stack: &Stack, generation: u64, c: &IssuedCreds) -> DbCredential {
    let now = Utc::now();
    DbCredential {
        generation,
        username: c.username.clone(),
        password: Secret::new(c.password.clone()),
        lease_id: c.lease_id.clone(),
        lease_duration_s: c.lease_duration,
        renewable: c.renewable,
        issued_at: now,
        expires_at: now + ChronoDuration::seconds(c.lease_duration as i64),
        fallback: false,
        primary: stack.pg.primary.endpoint(),
        replica: stack.pg.replica().endpoint(),
    }
}

/// Publishes `cred` as the agent would (atomically, mode 0640).
pub fn publish(stack: &Stack, cred: &DbCredential) {
    write_json_atomic(
        &stack.shared_dir.path().join("db.json"),
        cred,
        WriteOptions::SHARED,
    )
    .unwrap();
}

/// Publishes `config/features.json` at `version` with `items`.
pub fn publish_config(stack: &Stack, version: u64, items: Value) {
    let dir = stack.shared_dir.path().join("config");
    std::fs::create_dir_all(&dir).unwrap();
    let snap = ConfigSnapshot {
        namespace: "features".into(),
        version,
        items: serde_json::from_value(items).unwrap(),
    };
    write_json_atomic(&dir.join("features.json"), &snap, WriteOptions::SHARED).unwrap();
}

/// The worker's `worker.json`, if written.
pub fn ack(stack: &Stack) -> Option<WorkerAck> {
    WorkerAck::load(&stack.shared_dir.path().join("worker.json"))
}

/// `GET url`: status and JSON body (`null` when not JSON).
pub async fn get(client: &reqwest::Client, url: &str) -> anyhow::Result<(u16, Value)> {
    let resp = client.get(url).send().await?;
    let code = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    Ok((code, body))
}

/// Waits until `GET url` answers with a status and body for which `pred`
/// holds (transport errors count as not yet).
pub async fn wait_for_answer(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(u16, &Value) -> bool,
) -> anyhow::Result<()> {
    let pred = &pred;
    wait_until(timeout, what, || async move {
        get(client, url).await.is_ok_and(|(s, b)| pred(s, &b))
    })
    .await
}

/// Waits until the features answer at `url` says `config_version`
/// `version`: the worker has that feature config in force.
pub async fn wait_config_version(client: &reqwest::Client, url: &str, version: u64) {
    let what = format!("config version {version} in force");
    wait_for_answer(client, url, SECS(15), &what, |_, b| {
        b["config_version"] == version
    })
    .await
    .unwrap();
}

/// `POST <url>` (a worker's `/v1/features/batch`) for `ids`: the body of
/// its 200 answer.
pub async fn post_batch(client: &reqwest::Client, url: &str, ids: &[i64]) -> Value {
    let resp = client
        .post(url)
        .json(&serde_json::json!({"user_ids": ids}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    resp.json().await.unwrap()
}

/// Issues a credential and publishes it as `generation`; returns it.
pub async fn rotate(stack: &Stack, generation: u64) -> (DbCredential, IssuedCreds) {
    let issued = stack.issue_creds().await.unwrap();
    let cred = credential(stack, generation, &issued);
    publish(stack, &cred);
    (cred, issued)
}

/// Waits until every connection of the worker on the replica uses role
/// `user`: the old pool drained and closed.
pub async fn wait_only_role(stack: &Stack, w: &Worker, user: &str) {
    wait_until(
        SECS(20),
        "only the new role in pg_stat_activity",
        || async {
            let roles = worker_roles(stack).await;
            !roles.is_empty() && roles.iter().all(|r| r == user)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\nworker:\n{}", w.logs()));
}

/// The worker's connections on the replica logged in as `user`.
pub async fn sessions_of(stack: &Stack, user: &str) -> usize {
    worker_roles(stack)
        .await
        .iter()
        .filter(|r| *r == user)
        .count()
}

/// Worker connections on the replica, by role (a backend still
/// authenticating has no role yet and is left out).
async fn worker_roles(stack: &Stack) -> Vec<String> {
    let su = stack.pg.replica().connect_superuser().await.unwrap();
    su.query(
        "SELECT usename::text FROM pg_stat_activity WHERE application_name = 'riskfeat-worker' \
         AND backend_type = 'client backend' AND usename IS NOT NULL",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get::<_, String>(0))
    .collect()
}

/// Inserts rows for `user` on the primary (as the superuser).
pub async fn insert_rows(stack: &Stack, user: i64, rows: &[(f64, DateTime<Utc>)]) {
    let su = stack.pg.primary.connect_superuser().await.unwrap();
    for (amount, ts) in rows {
        let text_ts = ts.to_rfc3339();
        su.execute(
            "INSERT INTO transactions (user_id, transaction_amount, transaction_time, merchant, category) \
             VALUES ($1, $2::text::numeric, $3::text::timestamptz, 'm', 'c')",
            &[&user, &format!("{amount:.2}"), &text_ts],
        )
        .await
        .unwrap();
    }
}

/// A stack with the default options.
pub async fn start_stack() -> Stack {
    Stack::start(StackOptions::default())
        .await
        .expect("harness stack")
}
