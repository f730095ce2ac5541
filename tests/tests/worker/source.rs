//! The team's own table (`[source]`) and exact windows (issue 16): the
//! worker on a database that has only the seed's `transactions(user_id,
//! transaction_amount, transaction_time)`, with no `[source]` in its config;
//! a renamed mapping in another schema with NULL and non-finite amounts;
//! a mapping that does not fit, named column by column, at start, in
//! `check-config --database`, and on a new credential while the pool in use
//! keeps serving. Every answer is compared with [`reference`], plain loops
//! over all of the user's rows read back from the primary (the worker
//! aggregates the windows in SQL).

use crate::features::{check_features, reference, Reference};
use crate::support::{
    credential, get, post_batch, publish, rotate, spawn_worker, start_stack, wait_for_answer,
    READY_TIMEOUT, SECS,
};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use riskfeat_shared::atomic::{write_json_atomic, WriteOptions};
use riskfeat_tests::{wait_until, Stack};

/// The seed's table and nothing else: integer user id, unconstrained
/// numeric amount, `timestamp without time zone` time.
const SEED_TABLE: &str = "DROP TABLE transactions; \
    CREATE TABLE transactions (user_id integer, transaction_amount numeric, \
    transaction_time timestamp); \
    CREATE INDEX ON transactions (user_id, transaction_time DESC); \
    GRANT SELECT ON transactions TO feature_reader;";

/// A team's own table under other names, amounts that may be NULL or not
/// finite, a quoted mixed-case name in its own schema.
const RENAMED_TABLE: &str = "CREATE SCHEMA risk; \
    CREATE TABLE risk.\"CardTxns\" (uid bigint, amt double precision, at timestamptz, note text); \
    CREATE INDEX ON risk.\"CardTxns\" (uid, at DESC); \
    GRANT USAGE ON SCHEMA risk TO feature_reader; \
    GRANT SELECT ON risk.\"CardTxns\" TO feature_reader;";

const RENAMED_SOURCE: &str = "[source]\ntable = \"risk.CardTxns\"\nuser_column = \"uid\"\n\
    amount_column = \"amt\"\ntime_column = \"at\"";

/// A table of the tests: the SQL that makes it, its name and its user,
/// amount and time columns, and whether its time is a naive UTC timestamp.
struct Table {
    create: &'static str,
    name: &'static str,
    cols: [&'static str; 3],
    naive_utc: bool,
}

const SEED: Table = Table {
    create: SEED_TABLE,
    name: "transactions",
    cols: ["user_id", "transaction_amount", "transaction_time"],
    naive_utc: true,
};

const RENAMED: Table = Table {
    create: RENAMED_TABLE,
    name: "risk.\"CardTxns\"",
    cols: ["uid", "amt", "at"],
    naive_utc: false,
};

/// A stack whose primary holds `table` filled with [`users`] (with the
/// amounts that are not finite, or without), caught up on the replica;
/// with the superuser's connection to the primary.
async fn stack_with(
    table: &Table,
    non_finite: bool,
) -> (Stack, tokio_postgres::Client, Vec<(i64, Rows)>) {
    let stack = start_stack().await;
    let su = stack.pg.primary.connect_superuser().await.unwrap();
    su.batch_execute(table.create).await.unwrap();
    let users = users(Utc::now(), non_finite);
    for (u, rows) in &users {
        insert(&su, table.name, table.cols, table.naive_utc, *u, rows).await;
    }
    stack.pg.wait_replica_caught_up().await.unwrap();
    (stack, su, users)
}

/// One user's rows; `None` amounts are inserted as NULL.
type Rows = Vec<(Option<f64>, DateTime<Utc>)>;

/// The generated users: `(user id, rows)`. Ages are chosen so that the few
/// seconds between insert and request cannot move a row across a window:
/// the rows "on the edge" are exactly `window` old at insert (so outside,
/// `now - time < window` is strict) or a minute inside.
fn users(now: DateTime<Utc>, non_finite: bool) -> Vec<(i64, Rows)> {
    let ago = |s: f64| now - ChronoDuration::microseconds((s * 1e6) as i64);
    let amount = |i: i64| Some(((i * 7919) % 100_000) as f64 / 100.0 + 0.01);
    let mut users: Vec<(i64, Rows)> = vec![
        (200, vec![]),
        (201, vec![(Some(42.17), ago(30.0))]),
        (
            202,
            (0..5).map(|i| (Some(7.5), ago(60.0 * i as f64))).collect(),
        ),
        // 300 in the last hour, lookback 50: the windows must count all.
        (
            203,
            (0..300)
                .map(|i| (amount(i), ago(10.0 * i as f64)))
                .collect(),
        ),
        // 5,000 in the last hour.
        (
            204,
            (0..5000)
                .map(|i| (amount(i), ago(0.6 * i as f64)))
                .collect(),
        ),
        // On the window edges.
        (
            205,
            vec![
                (Some(1.0), ago(3540.0)),
                (Some(2.0), ago(3600.0)),
                (Some(4.0), ago(3600.001)),
                (Some(8.0), ago(86_340.0)),
                (Some(16.0), ago(86_400.0)),
                (Some(32.0), ago(90_000.0)),
            ],
        ),
        // In the future (clock skew): counted as now.
        (
            206,
            vec![
                (Some(3.0), ago(-600.0)),
                (Some(5.0), ago(-7200.0)),
                (Some(9.0), ago(-172_800.0)),
                (Some(11.0), ago(120.0)),
            ],
        ),
        // Huge and negative amounts.
        (
            207,
            vec![
                (Some(9.99e12), ago(5.0)),
                (Some(-250.5), ago(50.0)),
                (Some(1e12), ago(500.0)),
            ],
        ),
    ];
    // And random users: 0-400 rows each, from two days ago to an hour
    // ahead, amounts over six orders of magnitude (a fixed seed: a failure
    // reproduces).
    let mut state: u64 = 0x5eed_2026;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as f64 / u64::MAX as f64
    };
    for u in 300..320 {
        let n = (next() * 400.0) as usize;
        let rows = (0..n)
            .map(|_| {
                let amount = (10f64.powf(next() * 6.0 - 2.0) * 100.0).round() / 100.0;
                (Some(amount), ago(next() * 176_400.0 - 3_600.0))
            })
            .collect();
        users.push((u, rows));
    }
    if non_finite {
        users.push((
            208,
            vec![
                (None, ago(1.0)),
                (Some(f64::NAN), ago(2.0)),
                (Some(12.5), ago(3.0)),
                (Some(f64::INFINITY), ago(4.0)),
                (Some(f64::NEG_INFINITY), ago(5.0)),
                (Some(2.5), ago(7200.0)),
            ],
        ));
        // A full page in the window, one amount in six not finite: the
        // window aggregate skips them too.
        users.push((
            209,
            (0..90)
                .map(|i| {
                    let a = match i % 6 {
                        0 => None,
                        3 => Some(f64::NAN),
                        _ => amount(i),
                    };
                    (a, ago(30.0 * i as f64))
                })
                .collect(),
        ));
    }
    users
}

/// Inserts `rows` of `user` into `table` with the given column names, in one
/// statement; `naive_utc` stores the time as a UTC `timestamp`.
async fn insert(
    su: &tokio_postgres::Client,
    table: &str,
    cols: [&str; 3],
    naive_utc: bool,
    user: i64,
    rows: &Rows,
) {
    let amounts: Vec<Option<f64>> = rows.iter().map(|r| r.0).collect();
    let times: Vec<String> = rows.iter().map(|r| r.1.to_rfc3339()).collect();
    let time = if naive_utc {
        "x.t::timestamptz AT TIME ZONE 'UTC'"
    } else {
        "x.t::timestamptz"
    };
    let [u, a, t] = cols;
    su.execute(
        &format!(
            "INSERT INTO {table} ({u}, {a}, {t}) SELECT $1::int8, x.a, {time} \
             FROM unnest($2::float8[], $3::text[]) AS x(a, t)"
        ),
        &[&user, &amounts, &times],
    )
    .await
    .unwrap();
}

/// The reference of `rows` (a NULL amount as NaN: skipped like one).
fn reference_of(rows: &Rows) -> Reference {
    let plain: Vec<(f64, DateTime<Utc>)> = rows
        .iter()
        .map(|(a, t)| (a.unwrap_or(f64::NAN), *t))
        .collect();
    reference(&plain, 50, 10)
}

/// Every user's answer, one by one and in one batch, against the reference.
async fn check_all(base: &dyn Fn(&str) -> String, users: &[(i64, Rows)]) {
    let client = reqwest::Client::new();
    for (u, rows) in users {
        let (code, body) = get(&client, &base(&format!("/v1/features/{u}")))
            .await
            .unwrap();
        assert_eq!(code, 200, "user {u}: {body}");
        assert!(!body.to_string().to_lowercase().contains("nan"), "{body}");
        check_features(*u, &body["features"], &reference_of(rows));
    }
    let ids: Vec<i64> = users.iter().map(|(u, _)| *u).collect();
    let body = post_batch(&client, &base("/v1/features/batch"), &ids).await;
    for (i, (u, rows)) in users.iter().enumerate() {
        assert_eq!(body["results"][i]["user_id"], *u);
        check_features(*u, &body["results"][i]["features"], &reference_of(rows));
    }
}

/// Headline of issue 16: with no `[source]` the worker serves the seed's
/// own table, and `count_1h`/`amount_1h`/`count_24h`/`amount_24h` count
/// every transaction in the window, not the newest `lookback` (50): a user
/// with 300 transactions in the last hour answers 300 and the SQL sum; one
/// with 5,000 answers 5,000. Every field of eight generated users (none,
/// one, identical amounts, 300 and 5,000 in an hour, rows on the window
/// edges, future rows, huge amounts) and of 20 random ones matches the
/// reference, single and batch. Checked to fail: with the windows computed over the lookback
/// slice again (features::compute counting `rows` instead of taking the
/// query's aggregates) user 203 answers `count_1h: 50`; with the worker's
/// old hard-coded `amount`/`ts` columns every answer is a 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_table_without_source_and_exact_windows() {
    let (stack, su, users) = stack_with(&SEED, false).await;
    rotate(&stack, 1).await;
    let w = spawn_worker(&stack, "");
    w.wait_generation(1, READY_TIMEOUT).await.unwrap();
    let client = reqwest::Client::new();
    let (code, body) = get(&client, &w.url("/v1/features/203")).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let f = &body["features"];
    let sql_sum: f64 = su
        .query_one(
            "SELECT sum(transaction_amount)::float8 FROM transactions WHERE user_id = 203",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(f["count"], 50, "{f}");
    assert_eq!(
        (f["count_1h"].as_u64(), f["count_24h"].as_u64()),
        (Some(300), Some(300)),
        "{f}"
    );
    let amount_1h = f["amount_1h"].as_f64().unwrap();
    assert!(
        (amount_1h - sql_sum).abs() < 1e-6 * sql_sum,
        "{amount_1h} vs SQL {sql_sum}"
    );
    let (_, body) = get(&client, &w.url("/v1/features/204")).await.unwrap();
    assert_eq!(body["features"]["count_1h"], 5000, "{body}");
    check_all(&|p| w.url(p), &users).await;
    let st = w.status().await.unwrap();
    assert_eq!(st["source"]["table"], "transactions", "{st}");
    assert!(st["source"]["error"].is_null(), "{st}");
}

/// A renamed mapping (`risk."CardTxns"(uid, amt, at)`, double precision
/// amounts with NULL, NaN and infinities) serves the same reference, the
/// skipped amounts counted; a wrong mapping is named column by column at
/// start (`/status`, log, `check-config --database` exit 65) and never gets
/// a pool; a new credential that cannot read the table is refused while
/// the pool in use keeps answering, and is taken once it can. Checked to
/// fail: without the mapping check in `DbPools::validate` nothing names the
/// columns (the statement's prepare fails on PostgreSQL's first error only,
/// `column "amount" does not exist`) and `/status` has no `source.error`:
/// the test times out waiting for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renamed_mapping_and_a_mapping_that_does_not_fit() {
    let (stack, su, users) = stack_with(&RENAMED, true).await;
    let (gen1, _) = rotate(&stack, 1).await;
    let w = spawn_worker(&stack, RENAMED_SOURCE);
    w.wait_generation(1, READY_TIMEOUT).await.unwrap();
    check_all(&|p| w.url(p), &users).await;
    let m = w.metrics().await.unwrap();
    let skipped = |part: &str| {
        riskfeat_tests::fixtures::sample(
            &m,
            &format!("riskfeat_worker_amounts_skipped_total{{part=\"{part}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert!(skipped("latest") >= 4.0 && skipped("windows") >= 4.0, "{m}");

    // A mapping that does not fit: named at once, no pool.
    let wrong = "[source]\ntable = \"risk.CardTxns\"\nuser_column = \"uid\"\n\
        amount_column = \"amount\"\ntime_column = \"note\"";
    let other = other_shared_dir(&gen1);
    let bad = riskfeat_tests::Worker::spawn(other.path(), wrong).unwrap();
    wait_until(SECS(30), "the mismatch in /status", || async {
        bad.status()
            .await
            .is_ok_and(|s| !s["source"]["error"].is_null())
    })
    .await
    .unwrap();
    let st = bad.status().await.unwrap();
    let msg = st["source"]["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("source.amount_column = \"amount\""), "{msg}");
    assert!(
        msg.contains("has no such column (columns: uid, amt, at, note)"),
        "{msg}"
    );
    assert!(
        msg.contains("source.time_column = \"note\"")
            && msg.contains("is text, expected timestamp"),
        "{msg}"
    );
    assert_eq!(st["ready"], false, "{st}");
    assert!(bad.logs().contains("does not match"), "{}", bad.logs());
    let out = check_config(other.path(), wrong);
    assert_eq!(out.status.code(), Some(65), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("source.amount_column") && stderr.contains("source.time_column"));
    let out = check_config(other.path(), RENAMED_SOURCE);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    drop(bad);

    // A new credential that cannot read the table: refused, generation 1
    // keeps serving; readable again, it is taken.
    let issued = stack.issue_creds().await.unwrap();
    let revoke = format!("REVOKE feature_reader FROM \"{}\"", issued.username);
    su.batch_execute(&revoke).await.unwrap();
    stack.pg.wait_replica_caught_up().await.unwrap();
    publish(&stack, &credential(&stack, 2, &issued));
    wait_until(SECS(30), "generation 2 refused for its mapping", || async {
        w.status().await.is_ok_and(|s| {
            s["source"]["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("source.table = \"risk.CardTxns\""))
        })
    })
    .await
    .unwrap();
    let client = reqwest::Client::new();
    for u in [201, 203, 208] {
        let (code, body) = get(&client, &w.url(&format!("/v1/features/{u}")))
            .await
            .unwrap();
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["credential_generation"], 1, "{body}");
    }
    let m = w.metrics().await.unwrap();
    assert!(
        m.contains("riskfeat_worker_credential_failures_total{reason=\"source\"}"),
        "{m}"
    );
    let grant = format!("GRANT feature_reader TO \"{}\"", issued.username);
    su.batch_execute(&grant).await.unwrap();
    w.wait_generation(2, READY_TIMEOUT).await.unwrap();
    wait_for_answer(
        &client,
        &w.url("/v1/features/203"),
        SECS(15),
        "generation 2",
        |c, b| c == 200 && b["credential_generation"] == 2,
    )
    .await
    .unwrap();
    assert!(w.status().await.unwrap()["source"]["error"].is_null());
}

/// A second shared dir (tmpfs) holding `cred`, for a second worker.
fn other_shared_dir(cred: &riskfeat_shared::creds::DbCredential) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("riskfeat-shared-")
        .tempdir_in("/dev/shm")
        .unwrap();
    write_json_atomic(&dir.path().join("db.json"), cred, WriteOptions::SHARED).unwrap();
    dir
}

/// `riskfeat-worker check-config --database` with `config` on `shared_dir`.
fn check_config(shared_dir: &std::path::Path, config: &str) -> std::process::Output {
    let file = shared_dir.join("check.toml");
    std::fs::write(&file, config).unwrap();
    std::process::Command::new(riskfeat_tests::binary("riskfeat-worker"))
        .arg("--config")
        .arg(&file)
        .arg("--shared-dir")
        .arg(shared_dir)
        .args(["check-config", "--database"])
        .output()
        .unwrap()
}
