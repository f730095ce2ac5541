//! The cache: PostgreSQL down (watches and changes served from the cache,
//! degraded, caught up once it is back), a hundred cold misses making one
//! snapshot query, and a loaded log sharing the current values.

use crate::support::{
    get, http, metric, post, publish, req, server_items, start, upsert, with_features, Local,
    ADMIN, READER,
};
use reqwest::StatusCode;
use riskfeat_tests::{wait_until, PgCluster};
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_cache_serves_degraded_then_catches_up() {
    let (mut pg, a) = with_features("").await;
    upsert(&a, "features", "x", json!(1)).await;
    let (_, before) = server_items(&a, "features").await;
    pg.primary.stop().unwrap();
    wait_until(Duration::from_secs(20), "degraded", || async {
        let (_, r) = req(reqwest::Method::GET, a.url("/readyz"), None, None).await;
        r["status"] == "degraded"
    })
    .await
    .unwrap();
    assert_eq!(metric(&a, "riskfeat_configd_pg_up").await, 0.0);
    // Watches and changes still answer from the cache.
    let (s, w) = get(
        a.url("/v1/namespaces/features/watch?version=0&timeout_s=1"),
        READER,
    )
    .await;
    assert_eq!((s, w["version"].as_u64()), (StatusCode::OK, Some(1)));
    let (s, _) = get(
        a.url("/v1/namespaces/features/watch?version=1&timeout_s=1"),
        READER,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_MODIFIED);
    let mut local = Local::default();
    local.sync(&a, "features").await.unwrap();
    assert_eq!(local.items, before);
    // A publish cannot succeed and says why.
    let (s, e) = post(
        a.url("/v1/admin/namespaces/features/publish"),
        ADMIN,
        json!({"changes": [{"op": "upsert", "key": "y", "value": 2}]}),
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{e}");
    // A watcher held through the outage sees a publish made elsewhere once PG is back.
    let url = a.url("/v1/namespaces/features/watch?version=1&timeout_s=60");
    let held = tokio::spawn(async move { get(url, READER).await });
    pg.primary.start().unwrap();
    let b = start(&pg.primary, "").await;
    upsert(&b, "features", "y", json!(2)).await;
    let (s, w) = held.await.unwrap();
    assert_eq!(
        (s, w["version"].as_u64()),
        (StatusCode::OK, Some(2)),
        "{}",
        a.logs()
    );
    wait_until(Duration::from_secs(20), "ready again", || async {
        let (_, r) = req(reqwest::Method::GET, a.url("/readyz"), None, None).await;
        r["status"] == "ready"
    })
    .await
    .unwrap();
    local.follow_until(&a, "features", 2).await;
    assert_eq!(local.items["y"], json!(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_cold_misses_make_one_snapshot_query() {
    let (pg, a) = with_features("").await;
    let changes: Vec<Value> = (0..2000).map(|i| json!({"op": "upsert", "key": format!("k{i}"), "value": {"i": i, "pad": "p".repeat(200)}})).collect();
    publish(&a, "features", json!(changes)).await;
    let cold = start(&pg.primary, "warm_up=false").await;
    let snapshot_queries = || metric(&cold, "riskfeat_configd_db_snapshot_queries_total");
    assert_eq!(snapshot_queries().await, 0.0);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let url = cold.url("/v1/namespaces/features/changes?from=0");
        tasks.push(tokio::spawn(async move {
            let r = http().get(url).bearer_auth(READER).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.bytes().await.unwrap()
        }));
    }
    let mut bodies = Vec::new();
    for t in tasks {
        bodies.push(t.await.unwrap());
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every client got the same snapshot"
    );
    let v: Value = serde_json::from_slice(&bodies[0]).unwrap();
    assert_eq!(v["items"].as_object().unwrap().len(), 2000);
    assert_eq!(snapshot_queries().await, 1.0, "{}", cold.logs());
    assert_eq!(
        metric(&cold, "riskfeat_configd_snapshot_builds_total").await,
        1.0
    );
}

/// A full load holds each current value once: the log entry that wrote it
/// shares the item's allocation (the memory bound of the start-up storm
/// rests on this), while overwritten and deleted values stay their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loaded_log_shares_the_current_values_with_the_items() {
    use riskfeat_configd::store::{Change, Op, Store};
    use std::sync::Arc;
    let pg = PgCluster::start(false).await.unwrap();
    let plain = riskfeat_shared::pg_tls::ReloadingPgTls::new("database_ca_file", None).unwrap();
    let store = Store::new(
        &pg.primary.superuser_dsn(),
        2,
        riskfeat_shared::pg_tls::SslMode::Disable,
        plain,
    )
    .unwrap();
    store.migrate().await.unwrap();
    store.create_namespace("shared").await.unwrap();
    let up = |k: &str, v: &str| Change {
        op: Op::Upsert,
        key: k.into(),
        value: Some(v.into()),
    };
    let changes = [up("a", "{\"x\":1}"), up("b", "2"), up("c", "3")];
    store
        .publish(&plain_publish(Some(0), &changes))
        .await
        .unwrap();
    let del = Change {
        op: Op::Delete,
        key: "c".into(),
        value: None,
    };
    let changes = [up("a", "{\"x\":9}"), del];
    store
        .publish(&plain_publish(Some(1), &changes))
        .await
        .unwrap();

    let loaded = store.load("shared", 1000).await.unwrap();
    assert_eq!(loaded.version, 2);
    let items: Vec<(&str, &str)> = loaded.items.iter().map(|(k, v)| (&**k, &**v)).collect();
    assert_eq!(items, [("a", "{\"x\": 9}"), ("b", "2")]);
    let entry = |version: u64, key: &str| {
        loaded
            .log
            .iter()
            .find(|c| c.version == version && &*c.key == key)
            .unwrap_or_else(|| panic!("log entry {version}/{key} in {:?}", loaded.log))
    };
    let shared = |c: &riskfeat_configd::store::LoggedChange| {
        let (k, v) = loaded.items.get_key_value(&c.key).unwrap();
        Arc::ptr_eq(k, &c.key) && c.value.as_ref().is_some_and(|cv| Arc::ptr_eq(v, cv))
    };
    assert!(shared(entry(2, "a")), "the latest write of a is the item");
    assert!(shared(entry(1, "b")), "b was written once");
    let old_a = entry(1, "a");
    assert_eq!(old_a.value.as_deref(), Some("{\"x\": 1}"));
    assert!(!shared(old_a), "an overwritten value is its own copy");
    let gone = entry(2, "c");
    assert!(gone.value.is_none() && !loaded.items.contains_key(&gone.key));
    assert_eq!(entry(1, "c").value.as_deref(), Some("3"));
}

/// A plain publish to `shared` (no schema, no gray release).
fn plain_publish<'a>(
    expected: Option<u64>,
    changes: &'a [riskfeat_configd::store::Change],
) -> riskfeat_configd::store::Publish<'a> {
    riskfeat_configd::store::Publish {
        ns: "shared",
        expected,
        checked_at: None,
        schema_version: 0,
        token: "t",
        author: "t",
        comment: "",
        kind: "publish",
        changes,
        gray: riskfeat_configd::store::GrayEffect::Keep,
    }
}
