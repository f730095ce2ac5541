//! How a publish reaches the watchers, each path isolated so that its test
//! fails without it: LISTEN/NOTIFY alone between two instances (the scan
//! set to an hour), the pacer waking `wake_batch` at a time, and two
//! instances warming up together taking turns under the advisory lock.

use crate::support::{
    config, create, get, http, metric, prepared, start, upsert, with_features, READER,
};
use reqwest::StatusCode;
use riskfeat_tests::{wait_until, Configd, PgCluster};
use serde_json::json;
use std::time::Duration;

/// Waits until `c` holds exactly `n` long-polls.
async fn wait_watchers(c: &Configd, n: u64) {
    wait_until(Duration::from_secs(20), "watchers held", || async {
        metric(c, "riskfeat_configd_watchers").await == n as f64
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
}

/// A watch of `features` on `c` from `version`, held up to `timeout_s`.
fn watch(c: &Configd, version: u64, timeout_s: u64) -> tokio::task::JoinHandle<StatusCode> {
    let url = c.url(&format!(
        "/v1/namespaces/features/watch?version={version}&timeout_s={timeout_s}"
    ));
    tokio::spawn(async move { get(url, READER).await.0 })
}

/// Two instances that scan the namespaces table only once an hour: a
/// watcher held on B sees a publish made on A within 5 s (a generous bound,
/// far below the scan), and B's only scan is the catch-up one at start, so
/// the news came by NOTIFY.
///
/// Checked: with `LISTEN {CHANNEL}` in `notify::listen` replaced by
/// `SELECT 1` (B never hears the NOTIFY), this test fails: "B did not see
/// A's publish within 5 s".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_alone_carries_a_publish_to_another_instance() {
    let pg = PgCluster::start(false).await.unwrap();
    let hourly = config(3600, "");
    let mut a = prepared(&pg.primary);
    a.start(&hourly).await.unwrap();
    let mut b = prepared(&pg.primary);
    b.start(&hourly).await.unwrap();
    // Ready is not yet listening: wait for B's LISTEN and its catch-up
    // scan, or that scan may be what brings B the publish.
    wait_until(Duration::from_secs(20), "B listening", || async {
        b.logs().contains("listening for namespace changes")
            && metric(&b, "riskfeat_configd_scans_total").await == 1.0
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", b.logs()));
    create(&a, "features").await;
    upsert(&a, "features", "k", json!(1)).await;
    // B loads version 1 on its first request, then holds a watch on it.
    let (s, w) = get(
        b.url("/v1/namespaces/features/watch?version=0&timeout_s=1"),
        READER,
    )
    .await;
    assert_eq!((s, w["version"].as_u64()), (StatusCode::OK, Some(1)), "{w}");
    let held = watch(&b, 1, 60);
    wait_watchers(&b, 1).await;

    assert_eq!(upsert(&a, "features", "k", json!(2)).await, 2);
    let status = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .unwrap_or_else(|_| panic!("B did not see A's publish within 5 s\n{}", b.logs()))
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    // B serves the new value from its own cache.
    let (s, ch) = get(b.url("/v1/namespaces/features/changes?from=1"), READER).await;
    assert_eq!(s, StatusCode::OK, "{ch}");
    assert_eq!(ch["ops"][0]["value"], json!(2), "{ch}");
    let notes = metric(&b, "riskfeat_configd_notifications_total").await;
    assert!(notes >= 1.0, "{notes} notifications\n{}", b.logs());
    assert_eq!(
        metric(&b, "riskfeat_configd_scans_total").await,
        1.0,
        "only the catch-up scan at start ran on B"
    );
}

/// The pacer, end to end: with `wake_batch = 2` and an hour between wake
/// ticks, a publish answers exactly two of six held watchers; the other
/// four stay held (and get 304 on SIGTERM). The whole sequence of batches
/// is `watch::tests::a_publish_wakes_every_waiter_in_paced_batches`.
///
/// Checked: with the pacer waking everyone at once (`chunks(usize::MAX)`
/// in `Hubs::with_pause`), this test fails: `wakeups_total` is 6, not 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_wakes_the_watchers_wake_batch_at_a_time() {
    let (_pg, mut c) = with_features("wake_batch=2\nwake_interval_ms=3600000").await;
    upsert(&c, "features", "k", json!(1)).await;
    let held: Vec<_> = (0..6).map(|_| watch(&c, 1, 120)).collect();
    wait_watchers(&c, 6).await;

    upsert(&c, "features", "k", json!(2)).await;
    wait_until(Duration::from_secs(20), "the first batch answered", || {
        let n = held.iter().filter(|h| h.is_finished()).count();
        async move { n >= 2 }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert_eq!(metric(&c, "riskfeat_configd_wakeups_total").await, 2.0);
    assert_eq!(metric(&c, "riskfeat_configd_watchers").await, 4.0);
    let stop = tokio::task::block_in_place(|| c.stop(Duration::from_secs(30)));
    assert!(stop.is_some_and(|s| s.success()), "{stop:?}");
    let mut answers = Vec::new();
    for h in held {
        answers.push(h.await.unwrap());
    }
    answers.sort();
    assert_eq!(
        answers,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::NOT_MODIFIED,
            StatusCode::NOT_MODIFIED,
            StatusCode::NOT_MODIFIED,
            StatusCode::NOT_MODIFIED
        ],
        "two woken by the publish, four by SIGTERM"
    );
}

/// The advisory lock `key` as PostgreSQL shows it: (pid, granted) of every
/// session holding or awaiting it.
const ADVISORY: &str = "SELECT pid, granted FROM pg_locks WHERE locktype = 'advisory' \
     AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = $1";
/// Sessions waiting for a lock on `configd_items`.
const ITEMS_WAITERS: &str = "SELECT pid FROM pg_locks WHERE NOT granted \
     AND relation = 'configd_items'::regclass";

/// Two instances starting together warm up one at a time: a test
/// transaction holding `configd_items` stops the first warm-up half way;
/// PostgreSQL then shows one session holding the warm-up lock, one waiting
/// for it, and one load waiting for the table (the second instance is not
/// loading).
/// Once the table is free both finish and become ready.
///
/// Checked: with the mutual exclusion taken out of `Cache::warm_up` (each
/// instance locking a key of its own, `WARMUP_LOCK + pid`), this test
/// fails: "0 session(s) on the warm-up lock, 2 loading".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_warming_up_together_take_turns() {
    let pg = PgCluster::start(false).await.unwrap();
    // The schema and a namespace with items, from a first instance.
    let first = start(&pg.primary, "").await;
    create(&first, "features").await;
    upsert(&first, "features", "k", json!(1)).await;
    drop(first);

    let db = pg.primary.connect_superuser().await.unwrap();
    db.batch_execute("BEGIN; LOCK TABLE configd_items IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut b = prepared(&pg.primary);
    let mut c = prepared(&pg.primary);
    b.spawn(&config(1, "")).unwrap();
    c.spawn(&config(1, "")).unwrap();
    let observer = pg.primary.connect_superuser().await.unwrap();
    let key = riskfeat_configd::store::schema::WARMUP_LOCK;
    let turns = wait_until(Duration::from_secs(30), "one warms up, one waits", || {
        let observer = &observer;
        async move {
            let lock = observer.query(ADVISORY, &[&key]).await.unwrap();
            let holding = lock.iter().filter(|r| r.get::<_, bool>(1)).count();
            let waiting = lock.len() - holding;
            let loading = observer.query(ITEMS_WAITERS, &[]).await.unwrap().len();
            holding == 1 && waiting == 1 && loading == 1
        }
    })
    .await;
    let locks = observer.query(ADVISORY, &[&key]).await.unwrap().len();
    let loading = observer.query(ITEMS_WAITERS, &[]).await.unwrap().len();
    turns.unwrap_or_else(|e| {
        panic!(
            "{e}: {locks} session(s) on the warm-up lock, {loading} loading\nB:\n{}\nC:\n{}",
            b.logs(),
            c.logs()
        )
    });
    for x in [&b, &c] {
        let r = http().get(x.url("/readyz")).send().await.unwrap();
        assert_ne!(r.status(), StatusCode::OK, "ready before its warm-up");
    }

    db.batch_execute("COMMIT").await.unwrap();
    for x in [&b, &c] {
        x.wait_ready(Duration::from_secs(30)).await.unwrap();
        assert!(x.logs().contains("cache warmed up"), "{}", x.logs());
    }
    assert_eq!(observer.query(ADVISORY, &[&key]).await.unwrap().len(), 0);
}
