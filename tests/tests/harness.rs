//! Acceptance tests of the harness itself (issue 3): the stack starts and
//! issues credentials that log in on the replica.

use riskfeat_tests::{Stack, StackOptions};
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stack_starts_and_issues_a_credential_usable_on_the_replica() {
    let t = Instant::now();
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    eprintln!("Stack::start took {:?}", t.elapsed());
    let creds = stack.issue_creds().await.unwrap();
    assert!(creds.renewable);
    assert_eq!(creds.lease_duration, 3600);
    stack.pg.wait_replica_caught_up().await.unwrap();
    let client = stack
        .pg
        .replica()
        .connect_as(&creds.username, &creds.password)
        .await
        .unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM transactions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}
