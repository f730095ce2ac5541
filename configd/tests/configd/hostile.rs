//! Hostile clients: an unauthenticated body is answered from the request
//! head and never buffered; stalled request heads are closed; long-polls
//! are capped per token and end on SIGTERM.

use crate::support::{create, get, http, req, start, with_features, ADMIN, OPS, READER, SCOPED};
use reqwest::StatusCode;
use riskfeat_tests::hostile::{head_only_post, peak_rss, push_body, stalled_heads_closed_while};
use riskfeat_tests::{wait_until, PgCluster};
use std::time::Duration;

const PUBLISH: &str = "/v1/admin/namespaces/features/publish";
const BIG: usize = 60 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_bodies_get_401_unread_and_cost_no_memory() {
    let (_pg, c) = with_features("").await;
    let port = c.http().port();
    // The answer comes from the head alone: not one body byte was sent.
    let head = |extra: String, path: &'static str| {
        tokio::task::spawn_blocking(move || {
            head_only_post(port, path, &extra, BIG as u64, Duration::from_secs(10)).unwrap()
        })
    };
    let bearer = |t: &str| format!("Authorization: Bearer {t}\r\n");
    for (extra, path, want) in [
        (String::new(), PUBLISH, "HTTP/1.1 401"),
        (bearer("wrong-token-0123"), PUBLISH, "HTTP/1.1 401"),
        (String::new(), "/v1/watch", "HTTP/1.1 401"),
        (
            String::new(),
            "/v1/admin/namespaces/features/rollback",
            "HTTP/1.1 401",
        ),
        // Authenticated, but over max_body_bytes (1 MiB by default): 413
        // from the head too.
        (bearer(ADMIN), PUBLISH, "HTTP/1.1 413"),
    ] {
        let status = head(extra, path).await.unwrap();
        assert!(status.starts_with(want), "{path}: {status:?}");
    }

    // 16 clients pushing 60 MB each: none gets far, memory stays flat.
    let before = peak_rss(c.pid()).unwrap();
    let pushers: Vec<_> = (0..16)
        .map(|_| tokio::task::spawn_blocking(move || push_body(port, PUBLISH, BIG).unwrap()))
        .collect();
    for p in pushers {
        let sent = p.await.unwrap();
        assert!(
            sent < BIG,
            "configd read a whole unauthenticated 60 MB body"
        );
    }
    let grown = peak_rss(c.pid()).unwrap().saturating_sub(before);
    assert!(
        grown < 64 * 1024 * 1024,
        "peak RSS grew {} MiB under 16 unauthenticated 60 MB bodies",
        grown / (1024 * 1024)
    );
    // And configd still answers.
    let (s, _) = get(c.url("/v1/admin/namespaces/features/items"), ADMIN).await;
    assert_eq!(s, StatusCode::OK);
}

/// Stalled heads are closed while requests are served; long-polls are
/// capped per token; on SIGTERM the held long-polls answer 304 at once and
/// configd exits 0 having drained, inside its `shutdown_timeout_s`.
///
/// Checked: with `stopping.send(true)` removed from `riskfeat_configd::run`
/// (held long-polls not ended at SIGTERM), this test fails: the held
/// watches get no 304 but `IncompleteMessage` (their connections are cut).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_heads_are_closed_and_long_polls_end_on_sigterm() {
    let pg = PgCluster::start(false).await.unwrap();
    // The [http] defaults; only the watcher cap is lowered.
    let mut c = start(
        &pg.primary,
        "max_watchers_per_token=2\nshutdown_timeout_s=20\n",
    )
    .await;
    create(&c, "features").await;
    let port = c.http().port();
    // Requests keep being served meanwhile.
    let changes = c.url("/v1/namespaces/features/changes?from=0");
    let (took, served) = stalled_heads_closed_while(port, 300, Duration::from_secs(30), || {
        let url = changes.clone();
        async move {
            let (s, b) = req(reqwest::Method::GET, url, Some(READER), None).await;
            anyhow::ensure!(s == StatusCode::OK, "{s}: {b}");
            Ok(())
        }
    })
    .await
    .unwrap();
    assert!(served > 0);
    eprintln!("300 stalled heads closed in {took:?}; {served} requests served meanwhile");

    // Two long-polls of one token are held; a third gets 429, another
    // token is not affected.
    let watch = |token: &'static str, timeout_s: u64| {
        let url = c.url(&format!(
            "/v1/namespaces/features/watch?version=0&timeout_s={timeout_s}"
        ));
        async move { http().get(url).bearer_auth(token).send().await.unwrap() }
    };
    let held: Vec<_> = (0..2).map(|_| tokio::spawn(watch(SCOPED, 120))).collect();
    wait_until(Duration::from_secs(10), "two watchers held", || async {
        let m = c.metrics().await.unwrap_or_default();
        m.lines()
            .any(|l| l.starts_with("riskfeat_configd_watchers ") && l.ends_with(" 2"))
    })
    .await
    .unwrap();
    let third = watch(SCOPED, 120).await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(third.headers()["retry-after"], "5");
    let body: serde_json::Value = third.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_watchers", "{body}");
    assert_eq!(watch(READER, 1).await.status(), StatusCode::NOT_MODIFIED);

    // SIGTERM: the held long-polls answer 304 at once and configd exits
    // well inside its shutdown budget (20 s), with nothing left in flight.
    let t0 = std::time::Instant::now();
    let exited = tokio::task::block_in_place(|| c.stop(Duration::from_secs(15)));
    for h in held {
        assert_eq!(h.await.unwrap().status(), StatusCode::NOT_MODIFIED);
    }
    assert_eq!(exited.and_then(|s| s.code()), Some(0), "{}", c.logs());
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    let logs = c.logs();
    assert!(logs.contains("SIGTERM: shutting down"), "{logs}");
    assert!(
        !logs.contains("requests still in flight"),
        "configd drained instead of giving up at the bound: {logs}"
    );
}

/// Each version records the name of the token that published it (`token`)
/// and `who`, the author the client gave (default: the token's name), in
/// the history API and in `configd_audits` itself; never the token's
/// value. Two admin tokens, so the name is the caller's, not a constant.
///
/// Checked: with `who` recorded as the fixed "admin" instead of the
/// body's author or the token's name (`Signed::new` in
/// `http/publish.rs`), this test fails: versions 4, 3 and 1 are `who`
/// "admin", not "alice", "ops" and "someone-else".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_records_the_publishing_token_name() {
    let (pg, c) = with_features("").await;
    let changes = serde_json::json!([{"op": "upsert", "key": "k", "value": 1}]);
    let send = |token: &'static str, path: &str, body: serde_json::Value| {
        req(
            reqwest::Method::POST,
            c.url(&format!("/v1/admin/namespaces/features/{path}")),
            Some(token),
            Some(body),
        )
    };
    let (s, b) = send(
        ADMIN,
        "publish",
        serde_json::json!({"author": "someone-else", "changes": changes}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = send(ADMIN, "rollback", serde_json::json!({"to_version": 0})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = send(OPS, "publish", serde_json::json!({"changes": changes})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = send(
        OPS,
        "rollback",
        serde_json::json!({"to_version": 2, "author": "alice"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = get(c.url("/v1/admin/namespaces/features/history"), ADMIN).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let h: Vec<(u64, &str, &str)> = b["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let field = |k: &str| e[k].as_str().unwrap_or("<none>");
            (e["version"].as_u64().unwrap(), field("who"), field("token"))
        })
        .collect();
    // Newest first.
    let want = [
        (4, "alice", "ops"),
        (3, "ops", "ops"),
        (2, "admin", "admin"),
        (1, "someone-else", "admin"),
    ];
    assert_eq!(h, want, "{b}");
    // The table itself says the same, and holds no token value.
    let db = pg.primary.connect_superuser().await.unwrap();
    let rows = db
        .query(
            "SELECT version, who, token, row_to_json(a)::text FROM configd_audits a \
             WHERE namespace = 'features' ORDER BY version DESC",
            &[],
        )
        .await
        .unwrap();
    let table: Vec<(u64, String, String)> = rows
        .iter()
        .map(|r| (r.get::<_, i64>(0) as u64, r.get(1), r.get(2)))
        .collect();
    let want: Vec<(u64, String, String)> = want
        .iter()
        .map(|(v, w, t)| (*v, w.to_string(), t.to_string()))
        .collect();
    assert_eq!(table, want);
    for r in &rows {
        let row: String = r.get(3);
        assert!(!row.contains(ADMIN) && !row.contains(OPS), "{row}");
    }
}
