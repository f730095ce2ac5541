//! Hostile clients: 300 connections stalled inside their request head are
//! closed by the worker's `[http]` defaults while feature requests keep
//! being answered.

use crate::support::{get, rotate, spawn_worker, start_stack, READY_TIMEOUT};
use riskfeat_tests::hostile::stalled_heads_closed_while;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_heads_are_closed_while_requests_are_served() {
    let stack = start_stack().await;
    let w = spawn_worker(&stack, "");
    rotate(&stack, 1).await;
    w.wait_ready(READY_TIMEOUT).await.unwrap();
    let client = reqwest::Client::new();
    let url = w.url("/v1/features/1");
    let (took, served) =
        stalled_heads_closed_while(w.http().port(), 300, Duration::from_secs(30), || async {
            let (code, body) = get(&client, &url).await?;
            anyhow::ensure!(code == 200, "{code}: {body}");
            Ok(())
        })
        .await
        .unwrap();
    assert!(served > 0);
    eprintln!("300 stalled heads closed in {took:?}; {served} requests served meanwhile");
}
