//! The console's main path, end to end: an admin signs in, edits the
//! `features` namespace in the JSON editor (an invalid edit is refused on
//! the spot), previews the diff against the current version, meets a
//! concurrent publish as a conflict, publishes, and the worker's answer
//! changes through the agent.

use super::{
    admin, admin_get, configd, follow_features, rows, screenshot, sign_in, texts, type_draft,
};
use riskfeat_tests::browser::Browser;
use riskfeat_tests::{wait_until, Agent, Worker};
use serde_json::{json, Value};
use std::time::Duration;

/// The worker's answer for user 7 once it serves config `version`.
async fn features_at(worker: &Worker, agent: &Agent, version: u64) -> Value {
    let url = worker.url("/v1/features/7");
    let features = || async {
        let r = reqwest::get(&url).await.ok()?;
        (r.status() == 200).then_some(())?;
        r.json::<Value>().await.ok()
    };
    let what = format!("worker on config v{version}");
    wait_until(Duration::from_secs(60), &what, || async {
        features()
            .await
            .is_some_and(|b| b["config_version"] == version)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nagent:\n{}\nworker:\n{}", agent.logs(), worker.logs()));
    features().await.unwrap()
}

/// Checked: with `expected_version` left out of the console's publish
/// body (configd/ui/app.js), the concurrent publish is overwritten and this
/// test fails at "a concurrent publish is a conflict".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admin_edits_previews_and_publishes_and_the_worker_answers_with_it() {
    let stack = riskfeat_tests::data::stack_with_spike(7).await.unwrap();
    let configd = configd(&stack.pg.primary).await;
    super::seed(
        &configd,
        "features",
        &[json!([{"op": "upsert", "key": "zscore_above", "value": 3.0}])],
    )
    .await;

    // The agent follows `features` with the read token; the worker serves.
    let dir = tempfile::tempdir().unwrap();
    let agent = follow_features(&stack, &configd, dir.path(), stack.shared_dir.path(), "");
    let worker = Worker::spawn(stack.shared_dir.path(), "recheck_interval_ms = 1000").unwrap();
    assert_eq!(
        features_at(&worker, &agent, 1).await["features"]["flags"]["zscore_high"],
        true
    );
    // The agent's long-poll is the namespace's client.
    wait_until(
        Duration::from_secs(30),
        "the agent counted as a client",
        || async {
            let (_, b) = admin_get(&configd, "/v1/admin/namespaces").await;
            b["namespaces"][0]["clients"] == 1
        },
    )
    .await
    .unwrap();

    let b = Browser::start().await.unwrap();
    sign_in(&b, &configd, super::ADMIN, Some("signin")).await;
    let row = "#namespaces tr[data-ns='features']";
    assert_eq!(
        b.wait_text(&format!("{row} td.version"), "1")
            .await
            .unwrap(),
        "1"
    );
    assert_eq!(texts(&b, "#who-role").await, ["admin"]);
    screenshot(&b, "namespaces").await;
    b.click(&format!("{row} a.ns-link")).await.unwrap();
    b.wait_text("#items td.key", "zscore_above").await.unwrap();
    screenshot(&b, "items").await;

    // The editor names invalid JSON and will not preview it.
    b.click("#edit").await.unwrap();
    type_draft(&b, "{\"zscore_above\": }").await;
    b.wait_text("#editor-status.error", "Not valid JSON")
        .await
        .unwrap();
    assert!(
        !b.find("#preview").await.unwrap().enabled().await.unwrap(),
        "invalid JSON is named and not previewed"
    );
    type_draft(&b, "{\"zscore_above\": 1000}").await;
    b.wait_text("#editor-status.ok", "Valid JSON")
        .await
        .unwrap();
    b.click("#preview").await.unwrap();
    b.find("#change-set").await.unwrap();
    assert_eq!(
        rows(&b, "#change-set tbody tr").await,
        ["changed | zscore_above | 3 | 1000"],
        "the preview shows the one change against version 1"
    );
    b.type_into("#comment", "less sensitive").await.unwrap();
    screenshot(&b, "preview").await;

    // Someone else publishes meanwhile: the console's publish is refused.
    let other = json!({"changes": [{"op": "upsert", "key": "lookback", "value": 40}]});
    let (s, _) = admin(
        &configd,
        reqwest::Method::POST,
        "/v1/admin/namespaces/features/publish",
        Some(other),
    )
    .await;
    assert_eq!(s, 200);
    b.click("#publish").await.unwrap();
    b.wait_text("#conflict", "Conflict: nothing was published")
        .await
        .expect("a concurrent publish is a conflict");
    screenshot(&b, "conflict").await;
    let (_, items) = admin_get(&configd, "/v1/admin/namespaces/features/items").await;
    assert_eq!(items["to"], 2, "the conflict published nothing: {items}");

    // Reload keeps the edit; the preview now compares against version 2.
    b.click("#reload-draft").await.unwrap();
    b.wait_text("#banner", "Loaded version 2").await.unwrap();
    b.click("#preview").await.unwrap();
    b.find("#change-set").await.unwrap();
    assert_eq!(
        rows(&b, "#change-set tbody tr").await,
        [
            "removed | lookback | 40 | \u{2014}",
            "changed | zscore_above | 3 | 1000"
        ],
        "the kept edit previewed against version 2"
    );
    type_draft(&b, "{\"lookback\": 40, \"zscore_above\": 1000}").await;
    b.click("#preview").await.unwrap();
    b.find("#change-set").await.unwrap();
    assert_eq!(
        rows(&b, "#change-set tbody tr").await,
        ["changed | zscore_above | 3 | 1000"]
    );
    b.type_into("#comment", "less sensitive").await.unwrap();
    b.click("#publish").await.unwrap();
    b.wait_text("#banner.ok", "Published version 3 of features")
        .await
        .unwrap();
    b.wait_text("#items td.value", "1000").await.unwrap();

    // The worker answers with it, through the agent, same processes.
    assert_eq!(
        features_at(&worker, &agent, 3).await["features"]["flags"]["zscore_high"],
        false
    );
    let (_, h) = admin_get(&configd, "/v1/admin/namespaces/features/history?limit=1").await;
    let top = &h["history"][0];
    assert_eq!(
        (&top["version"], &top["token"], &top["who"], &top["comment"]),
        (
            &json!(3),
            &json!("admin"),
            &json!("admin"),
            &json!("less sensitive")
        ),
        "{h}"
    );
}
