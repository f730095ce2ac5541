//! Hostile clients: 300 connections stalled inside their request head are
//! closed by the worker's `[http]` defaults while feature requests keep
//! being answered.

use crate::support::{get, rotate, spawn_worker, start_stack, READY_TIMEOUT};
use riskfeat_tests::hostile::{stalled_heads, wait_closed};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_heads_are_closed_while_requests_are_served() {
    let stack = start_stack().await;
    let w = spawn_worker(&stack, "");
    rotate(&stack, 1).await;
    w.wait_ready(READY_TIMEOUT).await.unwrap();
    let port = w.http().port();
    let stalled = tokio::task::spawn_blocking(move || {
        let streams = stalled_heads(port, 300).unwrap();
        wait_closed(streams, Duration::from_secs(30))
    });
    let client = reqwest::Client::new();
    let mut served = 0;
    while !stalled.is_finished() {
        let (code, body) = get(&client, &w.url("/v1/features/1")).await.unwrap();
        assert_eq!(code, 200, "{body}");
        served += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let took = stalled
        .await
        .unwrap()
        .unwrap_or_else(|open| panic!("{open} of 300 stalled connections still open after 30 s"));
    assert!(served > 0);
    eprintln!("300 stalled heads closed in {took:?}; {served} requests served meanwhile");
}
