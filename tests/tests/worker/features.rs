//! Features against an independent reference (plain loops, no shared code
//! with the worker: empty, single-transaction, zero-std and long histories),
//! the batch endpoint, and the feature parameters reloaded hot from
//! `config/features.json` (an invalid version rejected, the last good kept).

use crate::support::{
    ack, get, insert_rows, post_batch, publish_config, rotate, spawn_worker, start_stack,
    wait_config_version, Txn, READY_TIMEOUT, SECS,
};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use riskfeat_tests::wait_until;
use serde_json::{json, Value};

/// What the worker should answer for one user.
pub struct Reference {
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
    since_latest: Option<f64>,
    insufficient: bool,
    /// The newest row is in the future, so the gaps hang on `now`.
    clamped: bool,
}

/// Plain loops over ALL the user's rows, no shared code with the worker
/// (which aggregates the windows in SQL): the newest `lookback` rows with a
/// finite amount for the statistics, every row with a finite amount for the
/// windows (`now - time < window`), a future time counted as `now`, z-score
/// 0 below the default `std_epsilon` (1e-6), `min_history` 1.
pub fn reference(rows: &[(f64, DateTime<Utc>)], lookback: usize, ma_window: usize) -> Reference {
    reference_at(rows, lookback, ma_window, Utc::now())
}

/// [`reference`] at a given `now`.
pub fn reference_at(
    rows: &[(f64, DateTime<Utc>)],
    lookback: usize,
    ma_window: usize,
    now: DateTime<Utc>,
) -> Reference {
    let mut all: Vec<(f64, DateTime<Utc>)> = rows.to_vec();
    all.sort_by_key(|r| std::cmp::Reverse(r.1));
    let mut sorted = all.clone();
    sorted.truncate(lookback);
    sorted.retain(|r| r.0.is_finite());
    let n = sorted.len();
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
        (Some(l), Some(m)) if std >= 1e-6 => (l - m) / std,
        _ => 0.0,
    };
    let w = ma_window.min(n);
    let ma = (n > 0).then(|| amounts[..w].iter().sum::<f64>() / w as f64);
    let within = |h: i64| -> (u64, f64) {
        let mut c = 0;
        let mut s = 0.0;
        for (a, ts) in &all {
            if a.is_finite() && now - *ts < ChronoDuration::hours(h) {
                c += 1;
                s += a;
            }
        }
        (c, s)
    };
    let (count_1h, amount_1h) = within(1);
    let (count_24h, amount_24h) = within(24);
    let at = |i: usize| sorted[i].1.min(now);
    let secs = |d: ChronoDuration| d.num_microseconds().unwrap() as f64 / 1e6;
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
        since_prev: (n > 1).then(|| secs(at(0) - at(1))),
        since_latest: (n > 0).then(|| secs(now - at(0))),
        insufficient: n < 1,
        clamped: n > 0 && sorted[0].1 > now,
    }
}

pub fn close(got: &Value, want: Option<f64>, what: &str, user: i64) {
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

pub fn check_features(user: i64, f: &Value, r: &Reference) {
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
    if r.clamped {
        // Clamped to the worker's `now`, which is not the reference's.
        let g = f["seconds_since_prev"].as_f64();
        let w = r.since_prev;
        assert!(
            g.zip(w)
                .is_some_and(|(g, w)| g >= 0.0 && (g - w).abs() < 5.0),
            "user {user} seconds_since_prev: got {g:?}, want ~{w:?}"
        );
    } else {
        close(
            &f["seconds_since_prev"],
            r.since_prev,
            "seconds_since_prev",
            user,
        );
    }
    // The worker's clock and the reference's differ by the request's time.
    match (f["seconds_since_latest"].as_f64(), r.since_latest) {
        (None, None) => {}
        (Some(g), Some(w)) => assert!(
            g >= 0.0 && (g - w).abs() < 5.0,
            "user {user} seconds_since_latest: got {g}, want ~{w}"
        ),
        (g, w) => panic!("user {user} seconds_since_latest: got {g:?}, want {w:?}"),
    }
    assert_eq!(
        f["insufficient_history"].as_bool(),
        Some(r.insufficient),
        "user {user} insufficient_history"
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
    w.wait_generation(1, READY_TIMEOUT).await.unwrap();
    let client = reqwest::Client::new();

    // Defaults (no config file yet): lookback 50, ma_window 10.
    for (u, rows) in &users {
        let (code, body) = get(&client, &w.url(&format!("/v1/features/{u}")))
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
    let body = post_batch(&client, &w.url("/v1/features/batch"), &ids).await;
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
    let url = w.url("/v1/features/104");
    wait_config_version(&client, &url, 1).await;
    for (u, rows) in &users {
        let (_, body) = get(&client, &w.url(&format!("/v1/features/{u}")))
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
        w.metrics()
            .await
            .unwrap()
            .contains("riskfeat_worker_config_reloads_total{result=\"rejected\"} 1")
    })
    .await
    .unwrap();
    let (_, body) = get(&client, &url).await.unwrap();
    assert_eq!(body["config_version"], 1);
    assert_eq!(body["features"]["count"], 5);
    let m = w.metrics().await.unwrap();
    assert!(m.contains("riskfeat_worker_config_version 1"), "{m}");
    assert!(
        m.contains("riskfeat_worker_config_reloads_total{result=\"ok\"} 1"),
        "{m}"
    );
    let st = w.status().await.unwrap();
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
    wait_config_version(&client, &url, 3).await;
    let (_, body) = get(&client, &url).await.unwrap();
    assert_eq!(body["features"]["count"], 50);
    let m = w.metrics().await.unwrap();
    assert!(m.contains("riskfeat_worker_config_version 3"), "{m}");
}
