//! The latency guard of issue 17.3: under a fixed moderate load, with a
//! credential rotation (the reload path) in the middle, no runtime thread
//! of the worker blocks inside a task (`riskfeat_worker_runtime_blocked_seconds`,
//! worker/src/stall.rs). A blocking call on the runtime holds up every
//! request queued on that thread; the guard counts blocked threads, not
//! request times, so a busy machine (threads waiting for a CPU) does not
//! fail it.

use crate::support::{insert_rows, rotate, spawn_worker, start_stack, Load, READY_TIMEOUT};
use chrono::Utc;
use std::time::Duration;

/// To check (not yet done when this was committed: the run with the
/// sleep in place timed out in the shared machine's builds): with a
/// `std::thread::sleep(Duration::from_millis(300))` at the top of the
/// single-user handler (`one` in worker/src/http.rs) this test must fail
/// with stretches over 250 ms counted. A run with the sleep (12:50 UTC)
/// failed, but on the answer count (89: the sleep throttles the load),
/// which is why the blocked check now comes first. The sampler itself was checked by
/// the unit test in worker/src/stall.rs (a 1 s sleep in a task is one
/// stretch; with the parked-thread test removed, an idle runtime counts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_runtime_thread_blocks_inside_a_task_under_load() {
    let stack = start_stack().await;
    insert_rows(&stack, 1, &[(10.0, Utc::now()), (20.0, Utc::now())]).await;
    rotate(&stack, 1).await;
    let w = spawn_worker(&stack, "pool_size = 4");
    w.wait_generation(1, READY_TIMEOUT).await.unwrap();
    let metric = |series: &'static str| w.http().count(series);
    let load = Load::start(w.http().base(), 4, vec![1, 2, 3]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    rotate(&stack, 2).await;
    w.wait_generation(2, READY_TIMEOUT).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (ok, failures) = load.finish().await;
    assert!(failures.is_empty(), "{failures:?}");
    // The sampler looked at the runtime threads, and the ticker ran.
    let ticks = metric("riskfeat_worker_runtime_stall_seconds_count").await;
    assert!(ticks >= 100.0, "the ticker ran {ticks} times");
    let blocked = metric("riskfeat_worker_runtime_blocked_seconds_count").await;
    let short = metric("riskfeat_worker_runtime_blocked_seconds_bucket{le=\"0.25\"}").await;
    assert_eq!(
        blocked - short,
        0.0,
        "{} stretches over 250 ms in which a runtime thread slept inside a task \
         ({blocked} over 20 ms; {ok} answers)",
        blocked - short
    );
    assert!(
        ok >= 100,
        "only {ok} answers: not the load this guard is for"
    );
}
