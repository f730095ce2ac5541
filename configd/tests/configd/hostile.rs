//! Hostile clients: an unauthenticated body is answered from the request
//! head and never buffered.

use crate::support::{create, start, ADMIN};
use riskfeat_tests::hostile::{head_only_post, peak_rss, push_body};
use riskfeat_tests::PgCluster;
use std::time::Duration;

const PUBLISH: &str = "/v1/admin/namespaces/features/publish";
const BIG: usize = 60 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_bodies_get_401_unread_and_cost_no_memory() {
    let pg = PgCluster::start(false).await.unwrap();
    let c = start(&pg.primary, "").await;
    create(&c, "features").await;
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
        (String::new(), "/v1/admin/namespaces/features/rollback", "HTTP/1.1 401"),
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
        assert!(sent < BIG, "configd read a whole unauthenticated 60 MB body");
    }
    let grown = peak_rss(c.pid()).unwrap().saturating_sub(before);
    assert!(
        grown < 64 * 1024 * 1024,
        "peak RSS grew {} MiB under 16 unauthenticated 60 MB bodies",
        grown / (1024 * 1024)
    );
    // And configd still answers.
    let (s, _) = crate::support::req(
        reqwest::Method::GET,
        c.url("/v1/admin/namespaces/features/items"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(s, reqwest::StatusCode::OK);
}
