//! Operating a namespace: schema-checked publishes, gray release to a
//! selector with promote and abort, the declarative replace, the rollout
//! view. Every answer is checked against docs/openapi/configd.yaml.

use crate::support::{get, http, post, req, upsert, with_features, ADMIN, READER};
use reqwest::{Method, StatusCode};
use riskfeat_tests::Configd;
use serde_json::{json, Value};

fn ns_url(c: &Configd, rest: &str) -> String {
    c.url(&format!("/v1/admin/namespaces/features{rest}"))
}

async fn put(url: String, body: Value) -> (StatusCode, Value) {
    req(Method::PUT, url, Some(ADMIN), Some(body)).await
}

/// A request the schema refuses (asserting a 400 `schema_violation`): its
/// error.
async fn refused(method: Method, url: String, body: Value) -> Value {
    let (s, b) = req(method, url, Some(ADMIN), Some(body)).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("schema_violation")),
        "{b}"
    );
    b["error"].clone()
}

/// `changes?from=` as a client with `id` and `labels`: the body.
async fn changes_as(c: &Configd, from: u64, id: &str, labels: &str) -> Value {
    let url = c.url(&format!("/v1/namespaces/features/changes?from={from}"));
    let resp = http()
        .get(&url)
        .bearer_auth(READER)
        .header("riskfeat-client-id", id)
        .header("riskfeat-client-labels", labels)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let b: Value = resp.json().await.unwrap();
    crate::support::conforms(&Method::GET, &url, StatusCode::OK, &b);
    b
}

/// The value of `key` a client at `from` ends with (applying ops to
/// `base`, or taking the snapshot).
async fn value_as(
    c: &Configd,
    from: u64,
    base: &Value,
    id: &str,
    labels: &str,
    key: &str,
) -> Value {
    let b = changes_as(c, from, id, labels).await;
    if b["snapshot"] == true {
        return b["items"][key].clone();
    }
    let mut v = base.clone();
    for op in b["ops"].as_array().unwrap() {
        if op["key"] == key {
            v = op.get("value").cloned().unwrap_or(Value::Null);
        }
    }
    v
}

/// A schema is versioned; a publish, rollback or replace that breaks it
/// is a 400 `schema_violation` naming the key and the rule, and nothing is
/// published; a schema the current items break is refused too.
///
/// Checked, one removal at a time: with the schema check in
/// `http/publish.rs::checked` skipped for kind `publish`, `rollback`,
/// `replace` or `gray_start`, or the items check in `http/schema.rs`'s
/// `put_schema` skipped, this test fails at that very request: `refused`
/// gets `(200, None)`, not `(400, Some("schema_violation"))` (the
/// publish answering `{"namespace":"features","version":3}`, the rollback
/// `"rolled_back_to":1`, the replace `"published":true`, the schema PUT
/// its version 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_that_breaks_the_schema_is_refused_naming_the_key() {
    let (_pg, c) = with_features("").await;
    let (s, b) = get(ns_url(&c, "/schema"), READER).await;
    assert_eq!(
        (s, b["version"].clone(), b["schema"].clone()),
        (StatusCode::OK, json!(0), Value::Null)
    );
    assert_eq!(upsert(&c, "features", "lookback", json!(5000)).await, 1);
    let schema = json!({"type": "object", "properties": {"lookback": {"type": "integer", "minimum": 1, "maximum": 1000}}});
    // The current items break it: refused.
    let e = refused(
        Method::PUT,
        ns_url(&c, "/schema"),
        json!({"schema": schema}),
    )
    .await;
    assert_eq!(e["field"], "items.lookback", "{e}");
    assert_eq!(upsert(&c, "features", "lookback", json!(50)).await, 2);
    let (s, b) = put(
        ns_url(&c, "/schema"),
        json!({"schema": {"type": "nonsense"}}),
    )
    .await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("schema")),
        "{b}"
    );
    let (s, b) = put(ns_url(&c, "/schema"), json!({"schema": schema})).await;
    assert_eq!((s, b["version"].clone()), (StatusCode::OK, json!(1)), "{b}");
    let (s, b) = put(
        ns_url(&c, "/schema"),
        json!({"schema": schema, "expected_version": 0}),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("version_conflict")),
        "{b}"
    );

    // Publish: the second change breaks it.
    let two = json!({"changes": [{"op": "upsert", "key": "other", "value": 1},
                                 {"op": "upsert", "key": "lookback", "value": 5000}]});
    let e = refused(Method::POST, ns_url(&c, "/publish"), two).await;
    assert_eq!(e["field"], "changes[1].value", "{e}");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("\"lookback\"") && msg.contains("maximum") && msg.contains("1000"),
        "{msg}"
    );
    assert_eq!(e["violations"][0]["rule"], "maximum", "{e}");
    // Rollback to version 1 (lookback 5000): refused.
    let e = refused(
        Method::POST,
        ns_url(&c, "/rollback"),
        json!({"to_version": 1}),
    )
    .await;
    assert_eq!(e["field"], "to_version", "{e}");
    // Replace with a string: refused naming the key.
    let text = json!({"items": {"lookback": "50"}});
    let e = refused(Method::PUT, ns_url(&c, "/items"), text).await;
    assert_eq!(
        (e["field"].as_str(), e["violations"][0]["rule"].as_str()),
        (Some("items.lookback"), Some("type")),
        "{e}"
    );
    // Gray start with a bad value: refused.
    let gray = json!({"selector": {"labels": {"canary": "true"}}, "changes": [{"op": "upsert", "key": "lookback", "value": 0}]});
    let e = refused(Method::POST, ns_url(&c, "/gray"), gray).await;
    assert_eq!(e["field"], "changes[0].value", "{e}");
    // Nothing was published.
    let (_, items) = get(ns_url(&c, "/items"), READER).await;
    assert_eq!(
        (items["to"].clone(), items["items"]["lookback"].clone()),
        (json!(2), json!(50))
    );
    // A good replace: the change set is shown (dry run), then published.
    let body = json!({"items": {"lookback": 60, "ma_window": 5}, "dry_run": true});
    let (s, b) = put(ns_url(&c, "/items"), body).await;
    assert_eq!(
        (s, b["published"].clone(), b["version"].clone()),
        (StatusCode::OK, json!(false), json!(2)),
        "{b}"
    );
    assert_eq!(b["changes"].as_array().unwrap().len(), 2, "{b}");
    let (s, b) = put(
        ns_url(&c, "/items"),
        json!({"items": {"lookback": 60}, "expected_version": 2}),
    )
    .await;
    assert_eq!((s, b["version"].clone()), (StatusCode::OK, json!(3)), "{b}");
    let (_, h) = get(ns_url(&c, "/history"), READER).await;
    assert_eq!(h["history"][0]["kind"], "replace", "{h}");
}

/// A gray release to `canary=true` reaches only the labelled client (as a
/// gray snapshot), the other stays; promote reaches both; an abort brings
/// the gray client back to the main items; each is a version in history;
/// a percentage picks by a stable hash of the client id.
///
/// Checked: with the selector match in `http/client.rs::changes` always
/// false (every client served the main view) this test fails at the
/// canary's first answer (`snapshot: false, gray: null`, not a gray
/// snapshot of version 2); always true (every client served the gray
/// view), at pod-b's value (2.5, not 3.0); with `GrayMarks::may_be_gray`
/// always false, after the abort (the canary keeps the gray value 9, not
/// 2.5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gray_release_reaches_only_selected_clients_until_promoted_or_aborted() {
    let (_pg, c) = with_features("").await;
    assert_eq!(upsert(&c, "features", "zscore_above", json!(3.0)).await, 1);
    let gray = json!({"selector": {"labels": {"canary": "true"}},
                      "changes": [{"op": "upsert", "key": "zscore_above", "value": 2.5}], "comment": "try 2.5"});
    let (s, b) = post(ns_url(&c, "/gray"), ADMIN, gray.clone()).await;
    assert_eq!((s, b["version"].clone()), (StatusCode::OK, json!(2)), "{b}");
    let (s, b) = post(ns_url(&c, "/gray"), ADMIN, gray.clone()).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("gray_in_progress")),
        "{b}"
    );
    let (_, g) = get(ns_url(&c, "/gray"), READER).await;
    assert_eq!(g["gray"]["selector"]["labels"]["canary"], "true", "{g}");
    let main = json!(3.0);
    let canary = changes_as(&c, 1, "pod-a", "canary=true,app=w").await;
    assert_eq!(
        (canary["snapshot"].clone(), canary["gray"].clone()),
        (json!(true), json!(2)),
        "{canary}"
    );
    assert_eq!(canary["items"]["zscore_above"], 2.5);
    assert_eq!(
        value_as(&c, 1, &main, "pod-b", "canary=false", "zscore_above").await,
        3.0
    );
    assert_eq!(
        value_as(&c, 1, &main, "pod-c", "", "zscore_above").await,
        3.0
    );
    // A main publish during the gray: both see it, the canary still gray.
    assert_eq!(upsert(&c, "features", "lookback", json!(40)).await, 3);
    let canary = changes_as(&c, 2, "pod-a", "canary=true").await;
    assert_eq!(
        (
            canary["items"]["zscore_above"].clone(),
            canary["items"]["lookback"].clone()
        ),
        (json!(2.5), json!(40))
    );
    // Promote: a new main version with the gray value, for everyone.
    let (s, b) = post(ns_url(&c, "/gray/promote"), ADMIN, json!({})).await;
    assert_eq!((s, b["version"].clone()), (StatusCode::OK, json!(4)), "{b}");
    assert_eq!(
        value_as(&c, 3, &main, "pod-b", "", "zscore_above").await,
        2.5
    );
    assert_eq!(
        value_as(&c, 3, &json!(2.5), "pod-a", "canary=true", "zscore_above").await,
        2.5
    );
    // Abort: the canary's copy (gray, version 5) goes back to main.
    let gray2 = json!({"selector": {"labels": {"canary": "true"}},
                       "changes": [{"op": "upsert", "key": "zscore_above", "value": 9}]});
    assert_eq!(
        post(ns_url(&c, "/gray"), ADMIN, gray2).await.1["version"],
        5
    );
    assert_eq!(
        changes_as(&c, 4, "pod-a", "canary=true").await["items"]["zscore_above"],
        9
    );
    let (s, _) = post(ns_url(&c, "/gray/abort"), ADMIN, json!({})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        value_as(&c, 5, &json!(9), "pod-a", "canary=true", "zscore_above").await,
        2.5
    );
    let (s, b) = post(ns_url(&c, "/gray/abort"), ADMIN, json!({})).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("no_gray_release")),
        "{b}"
    );
    let (_, h) = get(ns_url(&c, "/history"), READER).await;
    let kinds: Vec<&str> = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "gray_abort",
            "gray_start",
            "gray_promote",
            "publish",
            "gray_start",
            "publish"
        ]
    );
    // Percentages: about a tenth of 400 ids, always the same ones.
    let tenth = json!({"selector": {"percent": 10}, "changes": [{"op": "upsert", "key": "zscore_above", "value": 1}]});
    assert_eq!(
        post(ns_url(&c, "/gray"), ADMIN, tenth).await.0,
        StatusCode::OK
    );
    let mut picked = Vec::new();
    for i in 0..400 {
        if changes_as(&c, 7, &format!("pod-{i}"), "").await["gray"] == 7 {
            picked.push(i);
        }
    }
    assert!((15..=70).contains(&picked.len()), "{} of 400", picked.len());
    for i in &picked[..5] {
        assert_eq!(
            changes_as(&c, 7, &format!("pod-{i}"), "").await["items"]["zscore_above"],
            1
        );
    }
    let (s, b) = post(
        ns_url(&c, "/gray"),
        ADMIN,
        json!({"selector": {}, "changes": [{"op": "delete", "key": "x"}]}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
}

/// Clients' reports (with their watches) show per version in the rollout
/// view and the namespaces list, with the stale and rejected ones, and as
/// counts in /metrics without client ids.
///
/// Checked: with `note_report` not called from `watch_many` this test
/// fails at the first view (`"versions": []`, no clients); with the
/// rollout view not counting a `behind` client as stale, at its `stale`
/// (0, not 1); with the namespaces list not counting it, at the list's
/// entry (`"stale": 0`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollout_view_counts_clients_per_version() {
    let (_pg, c) = with_features("").await;
    upsert(&c, "features", "a", json!(1)).await;
    upsert(&c, "features", "a", json!(2)).await;
    let watch = |id: &'static str, applied: u64, rejected: Value| {
        let url = c.url("/v1/watch");
        async move {
            let resp = http()
                .post(&url)
                .bearer_auth(READER)
                .header("riskfeat-client-id", id)
                .header("riskfeat-client-labels", "app=w")
                .json(&json!({"namespaces": {"features": applied}, "timeout_s": 0,
                              "report": {"features": {"applied": applied, "in_force": applied, "rejected": rejected}}}))
                .send()
                .await
                .unwrap();
            assert!(resp.status().is_success() || resp.status() == StatusCode::NOT_MODIFIED);
        }
    };
    watch("pod-1", 2, Value::Null).await;
    watch("pod-2", 2, Value::Null).await;
    watch(
        "pod-3",
        1,
        json!({"version": 2, "reason": "lookback = 0: expected 1..=1000"}),
    )
    .await;
    watch("pod-4", 1, Value::Null).await;
    let (s, r) = get(ns_url(&c, "/rollout"), READER).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        r["versions"],
        json!([{"version": 2, "clients": 2, "gray": 0}, {"version": 1, "clients": 2, "gray": 0}]),
        "{r}"
    );
    let status: Vec<(&str, &str)> = r["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["client_id"].as_str().unwrap(),
                c["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        status,
        [
            ("pod-1", "current"),
            ("pod-2", "current"),
            ("pod-3", "rejected"),
            ("pod-4", "behind")
        ]
    );
    assert!(
        r["clients"][2]["rejected"]["reason"]
            .as_str()
            .unwrap()
            .contains("lookback"),
        "{r}"
    );
    assert_eq!(r["stale"], 1);
    let (_, l) = get(c.url("/v1/admin/namespaces"), READER).await;
    assert_eq!(
        l["namespaces"][0],
        json!({"namespace": "features", "version": 2, "compacted_to": 0, "gray": null, "clients": 4, "stale": 1}),
        "{l}"
    );
    let text = riskfeat_tests::wait_until(
        std::time::Duration::from_secs(30),
        "client gauges",
        || async {
            c.metrics().await.is_ok_and(|m| {
                m.contains(
                    "riskfeat_configd_clients{config_namespace=\"features\",version=\"2\"} 2",
                )
            })
        },
    )
    .await;
    text.unwrap();
    let m = c.metrics().await.unwrap();
    assert!(
        m.contains("riskfeat_configd_clients_rejected{config_namespace=\"features\"} 1"),
        "{m}"
    );
    assert!(!m.contains("pod-1"), "no client ids in metrics");
}
