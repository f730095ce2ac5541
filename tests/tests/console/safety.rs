//! What the console must never do: run a key, value or comment as HTML,
//! be framed or load foreign script (the Content-Security-Policy), or offer
//! a read token a write control (and the server refuses it anyway).

use super::{configd, screenshot, seed, sign_in, texts, ADMIN, READER};
use riskfeat_tests::browser::Browser;
use riskfeat_tests::PgCluster;
use serde_json::json;

const KEY: &str = "<img src=x onerror=alert(1)>";
const VALUE: &str = "<script>alert(2)</script><img src=y onerror=alert(3)>";
const COMMENT: &str = "<b>bold</b><img src=z onerror=alert(4)>";

/// Checked: with `el()` in configd/ui/app.js appending strings as HTML
/// (`insertAdjacentHTML`) instead of text nodes, this test fails at the
/// first check that the key is shown literally (the browser rendered an
/// image instead). The CSP header is asserted directly below; it is what
/// would still stop an inline handler if a string ever reached the DOM as
/// HTML.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_values_and_comments_are_text_under_a_strict_csp() {
    let pg = PgCluster::start(false).await.unwrap();
    let configd = configd(&pg.primary).await;
    seed(
        &configd,
        "xss",
        &[json!([{"op": "upsert", "key": KEY, "value": VALUE}])],
    )
    .await;
    let body = json!({"changes": [{"op": "upsert", "key": "plain", "value": 1}],
                      "comment": COMMENT, "author": COMMENT});
    let publish = configd.url("/v1/admin/namespaces/xss/publish");
    let r = reqwest::Client::new()
        .post(publish)
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Every /ui answer carries the policy and its companions.
    for path in ["/ui", "/ui/app.js", "/ui/app.css", "/ui/nope"] {
        let r = reqwest::get(configd.url(path)).await.unwrap();
        let h = r.headers();
        let csp = h
            .get("content-security-policy")
            .map(|v| v.to_str().unwrap().to_string());
        let csp = csp.unwrap_or_else(|| panic!("{path}: no Content-Security-Policy"));
        for want in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ] {
            assert!(csp.contains(want), "{path}: {csp:?} lacks {want:?}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp:?}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
    }

    let b = Browser::start().await.unwrap();
    sign_in(&b, &configd, ADMIN, None).await;
    b.goto(&configd.url("/ui#/ns/xss")).await.unwrap();
    b.wait_text("#items td.key", KEY).await.unwrap();
    assert_eq!(
        texts(&b, "#items td.key").await,
        [KEY, "plain"],
        "the key shown literally"
    );
    assert_eq!(
        texts(&b, "#items td.value").await[0],
        serde_json::to_string(VALUE).unwrap(),
        "the value shown literally"
    );
    screenshot(&b, "xss").await;
    b.goto(&configd.url("/ui#/ns/xss/history")).await.unwrap();
    b.wait_text("#history td.comment", COMMENT).await.unwrap();
    assert_eq!(texts(&b, "#history td.who").await[0], COMMENT);
    let injected = b
        .script(
            "return document.querySelectorAll('#view img, #view script, #view b').length;",
            json!([]),
        )
        .await
        .unwrap();
    assert_eq!(injected, 0, "no element from the data");
    // The history page is the last one loaded; an `onerror` would have run
    // by the time the images failed, and the items page went before it.
    assert_eq!(b.alert_text().await, None, "no alert");
}

/// Checked: with `isAdmin()` in configd/ui/app.js made always true, this
/// test fails at "no create control".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_token_sees_a_read_only_console() {
    let pg = PgCluster::start(false).await.unwrap();
    let configd = configd(&pg.primary).await;
    seed(
        &configd,
        "rules",
        &[
            json!([{"op": "upsert", "key": "a", "value": 1}]),
            json!([{"op": "upsert", "key": "a", "value": 2}]),
        ],
    )
    .await;
    let b = Browser::start().await.unwrap();
    sign_in(&b, &configd, READER, None).await;
    assert_eq!(texts(&b, "#who-name").await, ["analyst"]);
    assert_eq!(texts(&b, "#who-role").await, ["read-only"]);
    assert_eq!(
        b.find_all("#create-ns").await.unwrap().len(),
        0,
        "no create control"
    );
    b.goto(&configd.url("/ui#/ns/rules")).await.unwrap();
    b.wait_text("#items td.key", "a").await.unwrap();
    assert_eq!(
        b.find_all("#edit").await.unwrap().len(),
        0,
        "no edit control"
    );
    screenshot(&b, "read-only").await;
    b.goto(&configd.url("/ui#/ns/rules/history")).await.unwrap();
    b.wait_text("#history td.comment", "v1").await.unwrap();
    assert_eq!(
        b.find_all(".rollback").await.unwrap().len(),
        0,
        "no rollback control"
    );
    // The diff is a read: allowed.
    b.find("#show-diff").await.unwrap().click().await.unwrap();
    b.wait_text("#diff-box h3", "From v1 to v2: 1 change")
        .await
        .unwrap();
    // And the server refuses a write with this token whatever the page shows.
    let status = b
        .script(
            "return fetch('/v1/admin/namespaces/rules/rollback', {method: 'POST', \
             headers: {'Authorization': 'Bearer ' + sessionStorage.getItem('riskfeat-configd-token'), \
             'Content-Type': 'application/json'}, body: '{\"to_version\": 1}'}).then(r => r.status);",
            json!([]),
        )
        .await
        .unwrap();
    assert_eq!(status, 403);
}
