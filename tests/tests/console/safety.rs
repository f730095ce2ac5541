//! What the console must never do: run a key, value or comment as HTML,
//! be framed or load foreign script (the Content-Security-Policy), or offer
//! a read token a write control (and the server refuses it anyway).

use super::{assert_nothing_injected, screenshot, seeded, sign_in, texts, ADMIN, READER};
use riskfeat_tests::browser::Browser;
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
    let (_pg, configd) = seeded(
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
    for path in [
        "/ui",
        "/ui/app.js",
        "/ui/release.js",
        "/ui/app.css",
        "/ui/nope",
    ] {
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
    // The history page is the last one loaded; an `onerror` would have run
    // by the time the images failed, and the items page went before it.
    assert_nothing_injected(&b, "#view img, #view script, #view b").await;
}

/// Checked: with `isAdmin()` in configd/ui/app.js made always true, this
/// test fails at "no create control".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_token_sees_a_read_only_console() {
    let (_pg, configd) = seeded(
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
    b.click("#show-diff").await.unwrap();
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

/// A client chooses its own id and its worker's rejection reason: HTML in
/// either is shown literally in the rollout view, no element or alert
/// comes from it. Labels cannot carry it: configd refuses a label that is
/// not `[A-Za-z0-9._/-]` (400 naming the header), so the rendering of the
/// labels it keeps is checked with a plain one.
///
/// Checked: with the client cell of the rollout view in
/// configd/ui/release.js filled through `innerHTML` instead of a text node,
/// this test fails at "the client id shown literally" (the browser rendered
/// an image and the cell's text was empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ids_and_reasons_in_the_rollout_view_are_text() {
    const CLIENT: &str = "<img src=x onerror=alert(1)>";
    const REASON: &str = "<script>alert(2)</script><img src=y onerror=alert(3)>";
    let (_pg, configd) = seeded("xss", &[json!([{"op": "upsert", "key": "a", "value": 1}])]).await;
    let watch = |labels: &'static str| {
        let report = json!({"xss": {"applied": 1, "rejected": {"version": 1, "reason": REASON}}});
        reqwest::Client::new()
            .post(configd.url("/v1/watch"))
            .bearer_auth(READER)
            .header("riskfeat-client-id", CLIENT)
            .header("riskfeat-client-labels", labels)
            .json(&json!({"namespaces": {"xss": 0}, "timeout_s": 1, "report": report}))
            .send()
    };
    let refused = watch("zone=<b>x</b>").await.unwrap();
    assert_eq!(refused.status(), 400);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["field"], "riskfeat-client-labels", "{body}");
    let r = watch("app=risk.feat/x-1").await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    let b = Browser::start().await.unwrap();
    sign_in(&b, &configd, ADMIN, None).await;
    b.goto(&configd.url("/ui#/ns/xss/rollout")).await.unwrap();
    b.find("#rollout-clients").await.unwrap();
    assert_eq!(
        texts(&b, "#rollout-clients td.client").await,
        [CLIENT],
        "the client id shown literally"
    );
    assert_eq!(
        texts(&b, "#rollout-clients td.rejected").await,
        [format!("v1: {REASON}")],
        "the reason shown literally"
    );
    assert_eq!(
        texts(&b, "#rollout-clients td.labels").await,
        ["app=risk.feat/x-1"]
    );
    assert_eq!(texts(&b, "#rollout-clients td.status").await, ["rejected"]);
    b.wait_text("#rollout-summary", "0 stale clients; 1 rejected")
        .await
        .unwrap();
    screenshot(&b, "rollout-xss").await;
    assert_nothing_injected(&b, "#view img, #view script").await;
}
