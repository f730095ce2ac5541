//! riskfeat-worker end to end: the built binary against a real PostgreSQL
//! primary + streaming replica and a real OpenBao started by the harness.
//! The test plays the agent: it issues credentials through the AppRole
//! (`Stack::issue_creds`) and publishes `db.json` / `config/features.json`
//! itself with `riskfeat_shared::atomic`, then revokes an old lease only
//! after the worker acknowledged the new generation in `worker.json`.
//!
//! Covers issue 5's acceptance: zero failed requests across credential
//! swaps (new role in pg_stat_activity, old pool closed), broken db.json
//! never replacing a working pool, config hot reload and rejection (visible
//! in /metrics), features against an independent reference (empty and
//! single-transaction users included), the replica lag policy with replay
//! paused, and the API's errors, probes and SIGTERM drain.

use anyhow::Context;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use nix::sys::signal::Signal;
use riskfeat_shared::ack::WorkerAck;
use riskfeat_shared::atomic::{write_atomic, write_json_atomic, WriteOptions};
use riskfeat_shared::config_file::ConfigSnapshot;
use riskfeat_shared::creds::DbCredential;
use riskfeat_shared::health::{request, ProbeKind};
use riskfeat_shared::Secret;
use riskfeat_tests::openapi::{axum_routes, OpenApi};
use riskfeat_tests::{binary, wait_until, AgentToml, ChildProc, IssuedCreds, Stack, StackOptions};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// (amount, ts) of one inserted transaction.
type Txn = (f64, DateTime<Utc>);

/// A running worker and how to reach it.
struct Worker {
    proc: ChildProc,
    base: String,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_worker(stack: &Stack, extra_config: &str) -> Worker {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text = format!(
        "shared_dir = \"{}\"\nlisten = \"127.0.0.1:{port}\"\nrecheck_interval_ms = 1000\n\
         retry_initial_ms = 100\nretry_max_ms = 1000\nlag_check_interval_ms = 200\n\
         log_level = \"info,riskfeat_worker=debug\"\n{extra_config}\n",
        stack.shared_dir.path().display()
    );
    let cfg = dir.path().join("worker.toml");
    std::fs::write(&cfg, text).unwrap();
    let bin = binary("riskfeat-worker");
    let proc = ChildProc::spawn(&bin, &["run", "--config", cfg.to_str().unwrap()], &[])
        .expect("spawn riskfeat-worker");
    Worker {
        proc,
        base: format!("http://127.0.0.1:{port}"),
        socket: stack.shared_dir.path().join("worker.sock"),
        _dir: dir,
    }
}

fn credential(stack: &Stack, generation: u64, c: &IssuedCreds) -> DbCredential {
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

fn publish(stack: &Stack, cred: &DbCredential) {
    write_json_atomic(
        &stack.shared_dir.path().join("db.json"),
        cred,
        WriteOptions::SHARED,
    )
    .unwrap();
}

fn publish_config(stack: &Stack, version: u64, items: Value) {
    let dir = stack.shared_dir.path().join("config");
    std::fs::create_dir_all(&dir).unwrap();
    let snap = ConfigSnapshot {
        namespace: "features".into(),
        version,
        items: serde_json::from_value(items).unwrap(),
    };
    write_json_atomic(&dir.join("features.json"), &snap, WriteOptions::SHARED).unwrap();
}

fn ack(stack: &Stack) -> Option<WorkerAck> {
    WorkerAck::load(&stack.shared_dir.path().join("worker.json"))
}

async fn status(w: &Worker) -> Value {
    let (_, body) = request(&w.socket, ProbeKind::Status, SECS(5))
        .await
        .unwrap();
    serde_json::from_str(&body).unwrap()
}

async fn get(client: &reqwest::Client, url: &str) -> anyhow::Result<(u16, Value)> {
    let resp = client.get(url).send().await?;
    let code = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    Ok((code, body))
}

/// Waits until `GET url` answers with a status and body for which `pred`
/// holds (transport errors count as not yet).
async fn wait_for_answer(
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

async fn metrics(client: &reqwest::Client, w: &Worker) -> String {
    client
        .get(format!("{}/metrics", w.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Issues a credential and publishes it as `generation`; returns it.
async fn rotate(stack: &Stack, generation: u64) -> (DbCredential, IssuedCreds) {
    let issued = stack.issue_creds().await.unwrap();
    let cred = credential(stack, generation, &issued);
    publish(stack, &cred);
    (cred, issued)
}

async fn wait_ready_with(w: &Worker, generation: u64) {
    let socket = w.socket.clone();
    wait_until(
        SECS(60),
        &format!("worker ready on generation {generation}"),
        || {
            let socket = socket.clone();
            async move {
                match request(&socket, ProbeKind::Status, SECS(2)).await {
                    Ok((200, body)) => {
                        serde_json::from_str::<Value>(&body)
                            .ok()
                            .and_then(|v| v["credential"]["generation"].as_u64())
                            == Some(generation)
                    }
                    _ => false,
                }
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\nworker logs:\n{}", w.proc.logs()));
}

/// Worker connections on the replica, by role.
async fn worker_roles(stack: &Stack) -> Vec<String> {
    let su = stack.pg.replica().connect_superuser().await.unwrap();
    su.query(
        "SELECT usename::text FROM pg_stat_activity WHERE application_name = 'riskfeat-worker' \
         AND backend_type = 'client backend'",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get::<_, String>(0))
    .collect()
}

/// Inserts rows for `user` on the primary (as the superuser).
async fn insert_rows(stack: &Stack, user: i64, rows: &[(f64, DateTime<Utc>)]) {
    let su = stack.pg.primary.connect_superuser().await.unwrap();
    for (amount, ts) in rows {
        let text_ts = ts.to_rfc3339();
        su.execute(
            "INSERT INTO transactions (user_id, amount, ts, merchant, category) \
             VALUES ($1, $2::text::numeric, $3::text::timestamptz, 'm', 'c')",
            &[&user, &format!("{amount:.2}"), &text_ts],
        )
        .await
        .unwrap();
    }
}

/// Continuous concurrent requests until stopped; counts answers and failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(base: &str, concurrency: usize, users: Vec<i64>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(concurrency)
            .build()
            .unwrap();
        let tasks = (0..concurrency)
            .map(|i| {
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                let client = client.clone();
                let base = base.to_string();
                let users = users.clone();
                tokio::spawn(async move {
                    let mut n = i;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let user = users[n % users.len()];
                        let result = if n % 5 == 0 {
                            client
                                .post(format!("{base}/v1/features/batch"))
                                .json(&json!({"user_ids": users}))
                                .send()
                                .await
                        } else {
                            client
                                .get(format!("{base}/v1/features/{user}"))
                                .send()
                                .await
                        };
                        match result {
                            Ok(r) if r.status().is_success() => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => {
                                let code = r.status();
                                let body = r.text().await.unwrap_or_default();
                                failures.lock().unwrap().push(format!("{code}: {body}"));
                            }
                            Err(e) => failures.lock().unwrap().push(format!("transport: {e}")),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

async fn start_stack() -> Stack {
    Stack::start(StackOptions::default())
        .await
        .expect("harness stack")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credential_swaps_under_load_fail_no_request() {
    let stack = start_stack().await;
    insert_rows(&stack, 1, &[(10.0, Utc::now()), (20.0, Utc::now())]).await;
    let (first, issued) = rotate(&stack, 1).await;
    let w = spawn_worker(&stack, "pool_size = 4");
    wait_ready_with(&w, 1).await;
    let load = Load::start(&w.base, 8, vec![1, 2, 3]);
    let mut previous = (first, issued);
    for generation in 2..=4u64 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let (cred, issued) = rotate(&stack, generation).await;
        wait_ready_with(&w, generation).await;
        // The ack names the new generation.
        let a = ack(&stack).expect("worker.json written");
        assert_eq!(a.generation, generation);
        // Every worker connection on the replica now uses the new role: the
        // old pool drained and closed.
        let user = cred.username.clone();
        let stack_ref = &stack;
        wait_until(SECS(20), "only the new role in pg_stat_activity", || {
            let user = user.clone();
            async move {
                let roles = worker_roles(stack_ref).await;
                !roles.is_empty() && roles.iter().all(|r| *r == user)
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\nlogs:\n{}", w.proc.logs()));
        // Like the agent: revoke the old lease only after the ack.
        stack
            .bao
            .api(
                reqwest::Method::PUT,
                "sys/leases/revoke",
                Some(json!({"lease_id": previous.1.lease_id})),
            )
            .await
            .context("revoke old lease")
            .unwrap();
        previous = (cred, issued);
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Connections killed under requests (SQLSTATE 57P01): retried once on a
    // fresh connection, no request fails. Kill until one was caught mid-query.
    let su = stack.pg.replica().connect_superuser().await.unwrap();
    let client = reqwest::Client::new();
    let mut retries = 0.0;
    for _ in 0..30 {
        su.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'riskfeat-worker' AND backend_type = 'client backend'",
            &[],
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        retries = metrics(&client, &w)
            .await
            .lines()
            .find_map(|l| l.strip_prefix("riskfeat_worker_db_retries_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if retries >= 1.0 {
            break;
        }
    }
    assert!(retries >= 1.0, "a killed connection was retried");
    let (ok, failures) = load.finish().await;
    assert!(ok > 50, "the load made progress ({ok} answers)");
    assert!(
        failures.is_empty(),
        "{} failed requests of {}: {:?}\nlogs:\n{}",
        failures.len(),
        ok + failures.len() as u64,
        &failures[..failures.len().min(10)],
        w.proc.logs()
    );
    let m = metrics(&client, &w).await;
    assert!(m.contains("riskfeat_worker_credential_generation 4"), "{m}");
    assert!(
        m.contains("riskfeat_worker_credential_swaps_total 4"),
        "{m}"
    );
    assert!(m.contains("riskfeat_worker_pools_draining 0"), "{m}");
    let _ = previous;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broken_db_json_never_replaces_a_working_pool() {
    let stack = start_stack().await;
    let (good, _) = rotate(&stack, 1).await;
    let w = spawn_worker(&stack, "pool_size = 2");
    wait_ready_with(&w, 1).await;
    let client = reqwest::Client::new();
    let db_json = stack.shared_dir.path().join("db.json");

    // 1. Truncated file.
    let bytes = serde_json::to_vec(&good).unwrap();
    write_atomic(&db_json, &bytes[..bytes.len() / 2], WriteOptions::SHARED).unwrap();
    let socket = w.socket.clone();
    wait_until(SECS(15), "status names the parse error", || {
        let socket = socket.clone();
        async move {
            let (_, body) = request(&socket, ProbeKind::Status, SECS(2)).await.unwrap();
            body.contains("not a valid credential file")
        }
    })
    .await
    .unwrap();
    // 2. Wrong password, new generation.
    let mut wrong = good.clone();
    wrong.generation = 2;
    wrong.password = Secret::new("definitely-not-the-password");
    publish(&stack, &wrong);
    wait_until(SECS(15), "status names the failed login", || {
        let socket = socket.clone();
        async move {
            let (_, body) = request(&socket, ProbeKind::Status, SECS(2)).await.unwrap();
            body.contains("generation 2") && body.contains("password authentication failed")
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", w.proc.logs()));
    let st = status(&w).await;
    assert!(
        !st.to_string().contains("definitely-not-the-password"),
        "no secret in status"
    );
    // 3. Unknown host, newer generation.
    let mut nowhere = good.clone();
    nowhere.generation = 3;
    nowhere.replica.host = "no-such-host.invalid".into();
    publish(&stack, &nowhere);
    wait_until(SECS(20), "status names the unknown host", || {
        let socket = socket.clone();
        async move {
            let (_, body) = request(&socket, ProbeKind::Status, SECS(2)).await.unwrap();
            body.contains("generation 3") && body.contains("no-such-host.invalid")
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", w.proc.logs()));

    // Through all of it: ready, serving with generation 1.
    assert_eq!(
        request(&w.socket, ProbeKind::Ready, SECS(2))
            .await
            .unwrap()
            .0,
        200
    );
    let (code, body) = get(&client, &format!("{}/v1/features/1", w.base))
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["credential_generation"], 1);
    let st = status(&w).await;
    assert_eq!(st["credential"]["generation"], 1);
    let m = metrics(&client, &w).await;
    assert!(
        m.contains("riskfeat_worker_credential_failures_total{reason=\"parse\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("riskfeat_worker_credential_failures_total{reason=\"connect\"}"),
        "{m}"
    );

    // A good credential then swaps in and clears the error.
    rotate(&stack, 4).await;
    wait_ready_with(&w, 4).await;
    let st = status(&w).await;
    assert!(st["credential_error"].is_null(), "{st}");
}

// --- features against an independent reference --------------------------

struct Reference {
    count: usize,
    sum: f64,
    mean: Option<f64>,
    std: f64,
    min: Option<f64>,
    max: Option<f64>,
    latest: Option<f64>,
    ma: Option<f64>,
    z: f64,
    count_1h: u64,
    amount_1h: f64,
    count_24h: u64,
    amount_24h: f64,
    since_prev: Option<f64>,
}

/// Plain loops, no shared code with the worker.
fn reference(rows: &[(f64, DateTime<Utc>)], lookback: usize, ma_window: usize) -> Reference {
    let mut sorted: Vec<(f64, DateTime<Utc>)> = rows.to_vec();
    sorted.sort_by_key(|r| std::cmp::Reverse(r.1));
    sorted.truncate(lookback);
    let n = sorted.len();
    let now = Utc::now();
    let amounts: Vec<f64> = sorted.iter().map(|r| r.0).collect();
    let sum: f64 = amounts.iter().sum();
    let mean = (n > 0).then(|| sum / n as f64);
    let std = match mean {
        Some(m) if n > 1 => {
            (amounts.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / n as f64).sqrt()
        }
        _ => 0.0,
    };
    let latest = amounts.first().copied();
    let z = match (latest, mean) {
        (Some(l), Some(m)) if std > 0.0 => (l - m) / std,
        _ => 0.0,
    };
    let w = ma_window.min(n);
    let ma = (n > 0).then(|| amounts[..w].iter().sum::<f64>() / w as f64);
    let within = |h: i64| -> (u64, f64) {
        let mut c = 0;
        let mut s = 0.0;
        for (a, ts) in &sorted {
            if now - *ts < ChronoDuration::hours(h) {
                c += 1;
                s += a;
            }
        }
        (c, s)
    };
    let (count_1h, amount_1h) = within(1);
    let (count_24h, amount_24h) = within(24);
    Reference {
        count: n,
        sum,
        mean,
        std,
        min: amounts.iter().cloned().reduce(f64::min),
        max: amounts.iter().cloned().reduce(f64::max),
        latest,
        ma,
        z,
        count_1h,
        amount_1h,
        count_24h,
        amount_24h,
        since_prev: (n > 1)
            .then(|| (sorted[0].1 - sorted[1].1).num_microseconds().unwrap() as f64 / 1e6),
    }
}

fn close(got: &Value, want: Option<f64>, what: &str, user: i64) {
    match want {
        None => assert!(got.is_null(), "user {user} {what}: got {got}, want null"),
        Some(w) => {
            let g = got
                .as_f64()
                .unwrap_or_else(|| panic!("user {user} {what}: got {got}, want {w}"));
            assert!(
                (g - w).abs() <= 1e-6 * (1.0 + w.abs()),
                "user {user} {what}: got {g}, want {w}"
            );
        }
    }
}

fn check_features(user: i64, f: &Value, r: &Reference) {
    assert_eq!(
        f["count"].as_u64(),
        Some(r.count as u64),
        "user {user} count"
    );
    close(&f["sum"], Some(r.sum), "sum", user);
    close(&f["mean"], r.mean, "mean", user);
    close(&f["std"], Some(r.std), "std", user);
    close(&f["min"], r.min, "min", user);
    close(&f["max"], r.max, "max", user);
    close(&f["latest_amount"], r.latest, "latest_amount", user);
    close(&f["moving_average"], r.ma, "moving_average", user);
    close(&f["zscore"], Some(r.z), "zscore", user);
    assert_eq!(
        f["count_1h"].as_u64(),
        Some(r.count_1h),
        "user {user} count_1h"
    );
    close(&f["amount_1h"], Some(r.amount_1h), "amount_1h", user);
    assert_eq!(
        f["count_24h"].as_u64(),
        Some(r.count_24h),
        "user {user} count_24h"
    );
    close(&f["amount_24h"], Some(r.amount_24h), "amount_24h", user);
    close(
        &f["seconds_since_prev"],
        r.since_prev,
        "seconds_since_prev",
        user,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn features_match_a_reference_and_config_reloads_hot() {
    let stack = start_stack().await;
    let now = Utc::now();
    let mins = |m: i64| now - ChronoDuration::minutes(m);
    let mut users: Vec<(i64, Vec<Txn>)> = vec![
        (100, vec![]),                                               // empty
        (101, vec![(42.17, mins(3))]),                               // single transaction
        (102, vec![(5.0, mins(2)), (5.0, mins(4)), (5.0, mins(6))]), // zero std
        (
            103,
            vec![
                (900.5, mins(1)),
                (12.25, mins(20)),
                (40.0, mins(180)),
                (7.75, mins(600)),
                (3000.0, mins(1800)),
                (1.0, mins(4320)),
            ],
        ),
    ];
    // 60 transactions, more than the lookback, spread over days.
    users.push((
        104,
        (0..60)
            .map(|i| (((i * 37) % 101) as f64 + 0.5, mins(5 + i * 97)))
            .collect(),
    ));
    for (u, rows) in &users {
        insert_rows(&stack, *u, rows).await;
    }
    stack.pg.wait_replica_caught_up().await.unwrap();
    rotate(&stack, 1).await;
    let w = spawn_worker(&stack, "");
    wait_ready_with(&w, 1).await;
    let client = reqwest::Client::new();

    // Defaults (no config file yet): lookback 50, ma_window 10.
    for (u, rows) in &users {
        let (code, body) = get(&client, &format!("{}/v1/features/{u}", w.base))
            .await
            .unwrap();
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["config_version"], 0);
        assert_eq!(body["user_id"], *u);
        assert!(!body.to_string().to_lowercase().contains("nan"), "{body}");
        check_features(*u, &body["features"], &reference(rows, 50, 10));
    }
    // The batch gives the same answers, in request order, duplicates kept.
    let ids: Vec<i64> = vec![104, 100, 103, 101, 102, 104];
    let resp = client
        .post(format!("{}/v1/features/batch", w.base))
        .json(&json!({"user_ids": ids}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), ids.len());
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(results[i]["user_id"], *id);
        let rows = &users.iter().find(|(u, _)| u == id).unwrap().1;
        check_features(*id, &results[i]["features"], &reference(rows, 50, 10));
    }

    // Hot reload: the next request uses the new parameters.
    publish_config(
        &stack,
        1,
        json!({"lookback": 5, "ma_window": 2, "zscore_above": 0.5, "someone_else": true}),
    );
    let url = format!("{}/v1/features/104", w.base);
    wait_for_answer(
        &client,
        &url,
        SECS(15),
        "config version 1 in force",
        |_, b| b["config_version"] == 1,
    )
    .await
    .unwrap();
    for (u, rows) in &users {
        let (_, body) = get(&client, &format!("{}/v1/features/{u}", w.base))
            .await
            .unwrap();
        assert_eq!(body["config_version"], 1);
        let r = reference(rows, 5, 2);
        check_features(*u, &body["features"], &r);
        assert_eq!(
            body["features"]["flags"]["zscore_high"],
            r.z.abs() > 0.5,
            "user {u}"
        );
    }
    // An invalid config is rejected; version 1 stays.
    publish_config(&stack, 2, json!({"lookback": 5, "ma_window": 20}));
    wait_until(SECS(15), "rejection counted in /metrics", || async {
        metrics(&client, &w)
            .await
            .contains("riskfeat_worker_config_reloads_total{result=\"rejected\"} 1")
    })
    .await
    .unwrap();
    let (_, body) = get(&client, &url).await.unwrap();
    assert_eq!(body["config_version"], 1);
    assert_eq!(body["features"]["count"], 5);
    let m = metrics(&client, &w).await;
    assert!(m.contains("riskfeat_worker_config_version 1"), "{m}");
    assert!(
        m.contains("riskfeat_worker_config_reloads_total{result=\"ok\"} 1"),
        "{m}"
    );
    let st = status(&w).await;
    let err = st["config"]["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        err.contains("ma_window = 20 is larger than lookback = 5"),
        "{st}"
    );
    assert_eq!(ack(&stack).unwrap().config_versions["features"], 1);
    // A valid version 3 then applies.
    publish_config(&stack, 3, json!({"lookback": 50, "ma_window": 10}));
    wait_for_answer(
        &client,
        &url,
        SECS(15),
        "config version 3 in force",
        |_, b| b["config_version"] == 3,
    )
    .await
    .unwrap();
    let (_, body) = get(&client, &url).await.unwrap();
    assert_eq!(body["features"]["count"], 50);
    let m = metrics(&client, &w).await;
    assert!(m.contains("riskfeat_worker_config_version 3"), "{m}");
}

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
    wait_ready_with(&stale, 1).await;
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
    let port = free_port();
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("worker.toml");
    std::fs::write(
        &cfg,
        format!(
            "shared_dir = \"{}\"\nlisten = \"127.0.0.1:{port}\"\nmax_replica_lag_ms = 500\n\
             lag_policy = \"primary\"\nlag_check_interval_ms = 200\n",
            primary_dir.path().display()
        ),
    )
    .unwrap();
    let primary_worker = ChildProc::spawn(
        &binary("riskfeat-worker"),
        &["run", "--config", cfg.to_str().unwrap()],
        &[],
    )
    .unwrap();
    let primary_base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let primary_url = format!("{primary_base}/v1/features/7");
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
    let (_, body) = get(&client, &format!("{}/v1/features/7", stale.base))
        .await
        .unwrap();
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
                    "INSERT INTO transactions (user_id, amount, ts, merchant, category) \
                     VALUES (8, 2.0, now(), 'm', 'c')",
                    &[],
                )
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        i
    });
    let url = format!("{}/v1/features/7", stale.base);
    wait_for_answer(&client, &url, SECS(30), "responses marked stale", |_, b| {
        b["stale"] == true
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", stale.proc.logs()));
    let (code, body) = get(&client, &url).await.unwrap();
    assert_eq!(code, 200);
    assert!(body["replica_lag_ms"].as_u64().unwrap() > 500, "{body}");
    assert_eq!(body["source"], "replica");
    let m = metrics(&client, &stale).await;
    assert!(m.contains("riskfeat_worker_replica_stale 1"), "{m}");
    let st = status(&stale).await;
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
    let (_, body) = get(&client, &format!("{primary_base}/v1/features/8"))
        .await
        .unwrap();
    assert_eq!(body["source"], "primary", "{body}");
    assert_eq!(body["stale"], false);
    assert!(body["features"]["count"].as_u64().unwrap() >= 1, "{body}");
    let (_, on_replica) = get(&client, &format!("{}/v1/features/8", stale.base))
        .await
        .unwrap();
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

/// docs/openapi/worker.yaml is a valid OpenAPI 3.1 document and lists
/// exactly the routes of the worker's router, no more and no fewer.
#[test]
fn the_openapi_document_is_valid_and_lists_exactly_the_routes() {
    let api = OpenApi::load("worker").unwrap();
    api.validate_document().unwrap();
    let router = riskfeat_tests::process::workspace_root().join("worker/src/http.rs");
    let routes = axum_routes(&std::fs::read_to_string(router).unwrap());
    assert!(routes.len() >= 3, "routes read from the router: {routes:?}");
    assert_eq!(api.operations(), routes, "document vs router");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_errors_probes_and_sigterm_drain() {
    // Every JSON answer below is also checked against docs/openapi/worker.yaml.
    let api = OpenApi::load("worker").unwrap();
    let one = "/v1/features/{user_id}";
    let batch = "/v1/features/batch";
    let stack = start_stack().await;
    let mut w = spawn_worker(&stack, "");
    let client = reqwest::Client::new();
    // Before any credential: live, not ready, 503 with a stable code.
    let socket = w.socket.clone();
    wait_until(SECS(20), "health socket up", || {
        let socket = socket.clone();
        async move {
            request(&socket, ProbeKind::Live, SECS(1))
                .await
                .map(|r| r.0 == 200)
                .unwrap_or(false)
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", w.proc.logs()));
    let (code, body) = request(&w.socket, ProbeKind::Ready, SECS(2)).await.unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("db.json"), "{body}");
    let (code, body) = get(&client, &format!("{}/v1/features/1", w.base))
        .await
        .unwrap();
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (503, Some("no_credential"))
    );
    api.check("GET", one, code, &body).unwrap();

    // The probe subcommand.
    let probe = std::process::Command::new(binary("riskfeat-worker"))
        .args(["probe", "ready", "--socket", w.socket.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(probe.status.code(), Some(1));
    rotate(&stack, 1).await;
    wait_ready_with(&w, 1).await;
    let probe = std::process::Command::new(binary("riskfeat-worker"))
        .args(["probe", "ready", "--socket", w.socket.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(probe.status.code(), Some(0));

    // Bad input: 400 with stable codes; unknown user: 200, count 0.
    for (url, want) in [
        ("/v1/features/abc", "bad_user_id"),
        ("/v1/features/-5", "bad_user_id"),
    ] {
        let (code, body) = get(&client, &format!("{}{url}", w.base)).await.unwrap();
        assert_eq!(
            (code, body["error"]["code"].as_str()),
            (400, Some(want)),
            "{url}"
        );
        api.check("GET", one, code, &body).unwrap();
    }
    let (code, body) = get(&client, &format!("{}/v2/nope", w.base)).await.unwrap();
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    api.check_component("NotFound", &body).unwrap();
    let post = |body: String| {
        let c = client.clone();
        let url = format!("{}/v1/features/batch", w.base);
        async move {
            let r = c.post(url).body(body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    for (req, want) in [
        ("{not json".to_string(), "bad_body"),
        (json!({"ids": [1]}).to_string(), "bad_body"),
        (json!({"user_ids": [1, -2]}).to_string(), "bad_user_id"),
        (
            json!({"user_ids": (0..1001).collect::<Vec<i64>>()}).to_string(),
            "batch_too_large",
        ),
    ] {
        let (code, body) = post(req).await;
        assert_eq!((code, body["error"]["code"].as_str()), (400, Some(want)));
        api.check("POST", batch, code, &body).unwrap();
    }
    let thousand: Vec<i64> = (1_000_000..1_001_000).collect();
    let (code, body) = post(json!({"user_ids": thousand}).to_string()).await;
    assert_eq!(code, 200);
    assert_eq!(body["results"].as_array().unwrap().len(), 1000);
    api.check("POST", batch, code, &body).unwrap();
    let (code, body) = get(&client, &format!("{}/v1/features/987654321", w.base))
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(body["features"]["count"], 0);
    assert_eq!(body["degraded"], false);
    api.check("GET", one, code, &body).unwrap();
    // Users with one and with several transactions: every field non-null
    // where the document says it can be.
    let now = Utc::now();
    insert_rows(&stack, 41, &[(12.5, now)]).await;
    let rows: Vec<Txn> = (0..5)
        .map(|i| {
            (
                10.0 * f64::from(i + 1),
                now - ChronoDuration::minutes(i.into()),
            )
        })
        .collect();
    insert_rows(&stack, 42, &rows).await;
    let url = format!("{}/v1/features/42", w.base);
    wait_for_answer(
        &client,
        &url,
        SECS(15),
        "user 42 replayed on the replica",
        |_, b| b["features"]["count"] == 5,
    )
    .await
    .unwrap();
    for user in [41, 42] {
        let (code, body) = get(&client, &format!("{}/v1/features/{user}", w.base))
            .await
            .unwrap();
        assert_eq!(code, 200);
        api.check("GET", one, code, &body).unwrap();
    }
    let (code, body) = post(json!({"user_ids": [42, 41, 0, 42]}).to_string()).await;
    assert_eq!(code, 200);
    assert_eq!(body["results"][1]["features"]["count"], 1);
    api.check("POST", batch, code, &body).unwrap();
    let m = metrics(&client, &w).await;
    assert!(
        m.contains("riskfeat_worker_http_request_duration_seconds_count{route=\"/v1/features/{user_id}\",status=\"400\"} 2"),
        "{m}"
    );

    // degraded: a fallback credential marks responses.
    let mut fb = DbCredential::load(&stack.shared_dir.path().join("db.json")).unwrap();
    fb.fallback = true;
    publish(&stack, &fb);
    let url = format!("{}/v1/features/1", w.base);
    wait_for_answer(&client, &url, SECS(15), "degraded: true", |_, b| {
        b["degraded"] == true
    })
    .await
    .unwrap();
    let (code, body) = get(&client, &url).await.unwrap();
    assert_eq!(body["degraded"], true);
    api.check("GET", one, code, &body).unwrap();
    assert!(metrics(&client, &w)
        .await
        .contains("riskfeat_worker_credential_fallback 1"));

    // SIGTERM: in-flight requests are answered, then exit 0.
    let load = Load::start(&w.base, 4, vec![1, 2]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.proc.signal(Signal::SIGTERM);
    let status = w
        .proc
        .wait_exit(SECS(30))
        .expect("worker exits after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", w.proc.logs());
    let (ok, failures) = load.finish().await;
    assert!(ok > 0);
    // After the listener closed, new connections are refused (transport
    // errors); no request got a 5xx answer.
    assert!(
        failures.iter().all(|f| f.starts_with("transport")),
        "{failures:?}"
    );
    assert!(w.proc.logs().contains("draining in-flight requests"));
    assert!(!w.socket.exists(), "health socket removed");
}

#[test]
fn exit_codes_for_bad_config_and_shared_dir() {
    let bin = binary("riskfeat-worker");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&bin)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let dir = tempfile::tempdir().unwrap();
    // Bad config: every problem listed, exit 64.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "pool_sise = 3\nlag_policy = \"fastest\"\n").unwrap();
    let (code, err) = run(&["run", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("pool_sise") && err.contains("lag_policy"),
        "{err}"
    );
    let (code, _) = run(&["--bogus-flag"]);
    assert_eq!(code, Some(64));
    // Missing shared dir: 66.
    let ok = dir.path().join("ok.toml");
    std::fs::write(&ok, "listen = \"127.0.0.1:0\"\n").unwrap();
    let missing = dir.path().join("nope");
    let (code, err) = run(&[
        "run",
        "--config",
        ok.to_str().unwrap(),
        "--shared-dir",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(66), "{err}");
    // A disk directory without allow_disk: 78 (when the temp dir is on disk).
    let disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    if !riskfeat_shared::fs_check::fs_kind(disk.path())
        .unwrap()
        .is_memory()
    {
        let (code, err) = run(&[
            "run",
            "--config",
            ok.to_str().unwrap(),
            "--shared-dir",
            disk.path().to_str().unwrap(),
        ]);
        assert_eq!(code, Some(78), "{err}");
        assert!(err.contains("allow_disk"), "{err}");
    }
    // An absent database_ca_file: 66; one holding no certificate: 64. Both
    // name the setting and the file.
    let shared = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    for (ca, want) in [(dir.path().join("absent.pem"), 66), (junk, 64)] {
        let cfg = dir.path().join("ca.toml");
        std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:0\"\nallow_disk = true\nshared_dir = \"{}\"\n\
                 database_ca_file = \"{}\"\n",
                shared.path().display(),
                ca.display()
            ),
        )
        .unwrap();
        let (code, err) = run(&["run", "--config", cfg.to_str().unwrap()]);
        assert_eq!(code, Some(want), "{err}");
        assert!(
            err.contains("database_ca_file") && err.contains(ca.to_str().unwrap()),
            "{err}"
        );
    }
}

/// An agent config for `stack` (the real riskfeat-agent rotates).
fn write_agent_config(stack: &Stack, dir: &std::path::Path, lifecycle: &str) -> PathBuf {
    let text = stack.agent_toml(AgentToml {
        sections: &format!(
            "[lifecycle]\nbackoff_initial_s = 0.2\nbackoff_max_s = 2.0\n{lifecycle}"
        ),
        ..Default::default()
    });
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_agent_rotations_under_load_fail_no_request() {
    let stack = Stack::start(StackOptions {
        default_ttl: SECS(5),
        max_ttl: SECS(20),
        ..Default::default()
    })
    .await
    .unwrap();
    insert_rows(&stack, 1, &[(10.0, Utc::now()), (20.0, Utc::now())]).await;
    stack.pg.wait_replica_caught_up().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_agent_config(
        &stack,
        dir.path(),
        "rotate_lead_s = 8\nack_grace_s = 120\nmax_issuances_per_minute = 20\nmax_ttl_hint_s = 20",
    );
    let agent = ChildProc::spawn(
        &binary("riskfeat-agent"),
        &["run", "--config", cfg.to_str().unwrap()],
        &[],
    )
    .expect("spawn riskfeat-agent");
    let w = spawn_worker(&stack, "pool_size = 4");
    let socket = w.socket.clone();
    wait_until(SECS(60), "worker ready with the agent's credential", || {
        let socket = socket.clone();
        async move {
            request(&socket, ProbeKind::Ready, SECS(2))
                .await
                .map(|r| r.0 == 200)
                .unwrap_or(false)
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nagent:\n{}\nworker:\n{}", agent.logs(), w.proc.logs()));
    let first = status(&w).await["credential"]["generation"]
        .as_u64()
        .unwrap();
    let load = Load::start(&w.base, 8, vec![1, 2, 3]);
    for generation in first + 1..=first + 3 {
        wait_ready_with(&w, generation).await;
        let cred = DbCredential::load(&stack.shared_dir.path().join("db.json")).unwrap();
        if cred.generation == generation {
            let user = cred.username.clone();
            let stack_ref = &stack;
            wait_until(SECS(20), "only the new role in pg_stat_activity", || {
                let user = user.clone();
                async move {
                    let roles = worker_roles(stack_ref).await;
                    !roles.is_empty() && roles.iter().all(|r| *r == user)
                }
            })
            .await
            .unwrap_or_else(|e| panic!("{e}\nworker:\n{}", w.proc.logs()));
        }
    }
    // Let the agent revoke the last replaced lease under load too.
    tokio::time::sleep(SECS(2)).await;
    let (ok, failures) = load.finish().await;
    assert!(ok > 50, "the load made progress ({ok} answers)");
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}\nworker:\n{}\nagent:\n{}",
        failures.len(),
        &failures[..failures.len().min(10)],
        w.proc.logs(),
        agent.logs()
    );
}
