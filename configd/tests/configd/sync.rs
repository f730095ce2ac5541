//! Publish, watch and changes: concurrent publishers on two instances
//! (every version once, both converge, a follower ends with the same
//! items), clients following across a restart, and compaction (a snapshot
//! for a client behind it; diff and rollback inside the retained range).

use crate::support::{
    create, get, http, post, publish, server_items, start, upsert, with_features, Local, ADMIN,
    READER,
};
use reqwest::StatusCode;
use riskfeat_tests::{wait_until, PgCluster};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_on_two_instances_lose_and_duplicate_nothing() {
    let pg = PgCluster::start(false).await.unwrap();
    let a = start(&pg.primary, "").await;
    let b = start(&pg.primary, "").await;
    create(&a, "features").await;
    // A watcher on B, from version 0.
    let watch_url = b.url("/v1/namespaces/features/watch?version=0&timeout_s=30");
    let watcher = tokio::spawn(async move { get(watch_url, READER).await });
    let mut follower = Local::default();
    let mut tasks = Vec::new();
    for p in 0..8 {
        let (aurl, burl) = (a.url(""), b.url(""));
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..10 {
                let base = if (p + i) % 2 == 0 { &aurl } else { &burl };
                let (s, body) = post(format!("{base}/v1/admin/namespaces/features/publish"), ADMIN, json!({"changes": [{"op": "upsert", "key": format!("p{p}-{i}"), "value": {"p": p, "i": i}}]}))
                .await;
                assert_eq!(s, StatusCode::OK, "{body}");
                got.push(body["version"].as_u64().unwrap());
            }
            got
        }));
    }
    let mut versions: Vec<u64> = Vec::new();
    for t in tasks {
        versions.extend(t.await.unwrap());
    }
    versions.sort();
    assert_eq!(
        versions,
        (1..=80).collect::<Vec<_>>(),
        "every publish got its own version"
    );
    let (s, w) = watcher.await.unwrap();
    assert_eq!(s, StatusCode::OK);
    assert!(w["version"].as_u64().unwrap() >= 1);
    // Both instances converge to 80 (B via NOTIFY), and a client following
    // B incrementally ends with exactly A's items.
    follower.follow_until(&b, "features", 80).await;
    let (va, items_a) = server_items(&a, "features").await;
    let (vb, items_b) = server_items(&b, "features").await;
    assert_eq!((va, vb), (80, 80));
    assert_eq!(items_a.len(), 80);
    assert_eq!(items_a, items_b);
    assert_eq!(follower.items, items_a);
    // The incremental log from 40 holds versions 41..=80 exactly once.
    let (s, ch) = get(b.url("/v1/namespaces/features/changes?from=40"), READER).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ch["snapshot"], false);
    let vs: Vec<u64> = ch["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["version"].as_u64().unwrap())
        .collect();
    assert_eq!(vs, (41..=80).collect::<Vec<_>>());
    // History has every version with its author.
    let (_, h) = get(
        a.url("/v1/admin/namespaces/features/history?limit=1000"),
        ADMIN,
    )
    .await;
    assert_eq!(h["history"].as_array().unwrap().len(), 80);
    // Optimistic concurrency: a stale expected_version is a 409 and changes nothing.
    let (s, e) = post(
        a.url("/v1/admin/namespaces/features/publish"),
        ADMIN,
        json!({"expected_version": 3, "changes": [{"op": "delete", "key": "p0-0"}]}),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert_eq!(e["error"]["field"], "expected_version");
    assert_eq!(server_items(&a, "features").await.0, 80);
    // Multi-namespace watch answers for the namespace that changed.
    create(&a, "other").await;
    let url = b.url("/v1/watch");
    let multi = tokio::spawn(async move {
        post(
            url,
            READER,
            json!({"namespaces": {"features": 80, "other": 0}, "timeout_s": 30}),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    upsert(&a, "other", "k", json!(1)).await;
    let (s, m) = multi.await.unwrap();
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(m["changed"], json!({"other": 1}));
    // And a watch with nothing new times out with 304.
    let (s, _) = get(
        b.url("/v1/namespaces/other/watch?version=1&timeout_s=1"),
        READER,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_MODIFIED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_keep_following_across_a_configd_restart() {
    let (_pg, mut a) = with_features("").await;
    upsert(&a, "features", "a", json!(1)).await;
    let mut local = Local::default();
    local.follow_until(&a, "features", 1).await;
    // A watch is held when configd goes away.
    let url = a.url("/v1/namespaces/features/watch?version=1&timeout_s=30");
    let held = tokio::spawn(async move {
        http()
            .get(url)
            .bearer_auth(READER)
            .send()
            .await
            .map(|r| r.status())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.kill();
    let r = held.await.unwrap();
    assert!(
        r.is_err(),
        "the held watch ends with a connection error: {r:?}"
    );
    a.restart().await.unwrap();
    publish(
        &a,
        "features",
        json!([{"op": "upsert", "key": "b", "value": 2}, {"op": "delete", "key": "a"}]),
    )
    .await;
    local.follow_until(&a, "features", 2).await;
    assert_eq!(local.items, BTreeMap::from([("b".to_string(), json!(2))]));
    assert_eq!(
        local.snapshots, 1,
        "after the restart the client continued incrementally"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_compaction_a_client_falls_back_to_a_snapshot_with_the_same_items() {
    let (pg, mut a) = with_features("retention_versions=3\ncompact_interval_s=1").await;
    let mut early = Local::default();
    publish(&a, "features", json!([{"op": "upsert", "key": "keep", "value": "v1"}, {"op": "upsert", "key": "gone", "value": 0}])).await;
    early.follow_until(&a, "features", 1).await;
    for i in 2..=10 {
        let mut ch = vec![json!({"op": "upsert", "key": format!("k{}", i % 4), "value": i})];
        if i == 5 {
            ch.push(json!({"op": "delete", "key": "gone"}));
        }
        publish(&a, "features", json!(ch)).await;
    }
    // Compaction ran in the database.
    let db = pg.primary.connect_superuser().await.unwrap();
    wait_until(Duration::from_secs(20), "compaction", || {
        let db = &db;
        async move {
            db.query_one(
                "SELECT compacted_to FROM configd_namespaces WHERE name = 'features'",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0) == 7)
            .unwrap_or(false)
        }
    })
    .await
    .unwrap();
    // Restart so the cache reloads from the compacted database.
    a.kill();
    a.restart().await.unwrap();
    let snaps = early.snapshots;
    early.follow_until(&a, "features", 10).await;
    assert_eq!(
        early.snapshots,
        snaps + 1,
        "version 1 is compacted: the client got a snapshot"
    );
    let (v, items) = server_items(&a, "features").await;
    assert_eq!(v, 10);
    assert_eq!(early.items, items);
    assert!(!items.contains_key("gone"));
    // A client inside the retained window still goes incrementally.
    let (_, ch) = get(a.url("/v1/namespaces/features/changes?from=8"), READER).await;
    assert_eq!(ch["snapshot"], false, "{ch}");
    // Diff and rollback work inside the retained range, and refuse outside it.
    let (s, d) = get(
        a.url("/v1/admin/namespaces/features/diff?from=8&to=10"),
        ADMIN,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(d["changes"].as_array().unwrap().len(), 2, "{d}");
    let (s, e) = post(
        a.url("/v1/admin/namespaces/features/rollback"),
        ADMIN,
        json!({"to_version": 2}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["error"]["field"], "to_version");
    let (s, r) = post(
        a.url("/v1/admin/namespaces/features/rollback"),
        ADMIN,
        json!({"to_version": 8, "comment": "undo"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["version"], 11);
    let (_, items) = server_items(&a, "features").await;
    assert_eq!(items["k1"], json!(5));
    assert_eq!(items["k2"], json!(6));
    assert_eq!(items["k3"], json!(7));
    assert_eq!(items["k0"], json!(8));
    assert_eq!(items["keep"], json!("v1"));
}
