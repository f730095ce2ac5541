//! [`Load`]: continuous concurrent requests on a worker's feature API
//! (single and batch lookups) until stopped, counting answers and
//! failures: what "no request failed" in a test is measured with.

use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A request without an answer by then counts as a failure (`timeout: ...`):
/// far above any answer of a healthy worker, even on a loaded machine.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Continuous concurrent requests until stopped; counts answers and failures.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `concurrency` tasks looping on `base` (the worker's base URL):
    /// `GET /v1/features/<user>` over `users`, every fifth a batch of all.
    pub fn start(base: &str, concurrency: usize, users: Vec<i64>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(concurrency)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .unwrap();
        let tasks = (0..concurrency)
            .map(|i| {
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                let client = client.clone();
                let base = base.to_string();
                let users = users.clone();
                tokio::spawn(async move {
                    let mut n = i;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let user = users[n % users.len()];
                        let result = if n % 5 == 0 {
                            client
                                .post(format!("{base}/v1/features/batch"))
                                .json(&json!({"user_ids": users}))
                                .send()
                                .await
                        } else {
                            client
                                .get(format!("{base}/v1/features/{user}"))
                                .send()
                                .await
                        };
                        match result {
                            Ok(r) if r.status().is_success() => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => {
                                let code = r.status();
                                let body = r.text().await.unwrap_or_default();
                                failures.lock().unwrap().push(format!("{code}: {body}"));
                            }
                            Err(e) if e.is_timeout() => {
                                failures.lock().unwrap().push(format!("timeout: {e}"))
                            }
                            Err(e) => failures.lock().unwrap().push(format!("transport: {e}")),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    /// Stops the tasks: the answers that succeeded and every failure
    /// (non-2xx with its body, or the transport error: a timeout is one).
    pub async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }

    /// [`finish`](Load::finish) for a load under which no request may fail:
    /// panics unless more than `min_ok` requests succeeded and none failed
    /// (naming the first ten failures, then `logs`); returns the successes.
    pub async fn finish_without_failures(self, min_ok: u64, logs: &str) -> u64 {
        let (ok, failures) = self.finish().await;
        assert!(ok > min_ok, "the load made progress ({ok} answers)\n{logs}");
        assert!(
            failures.is_empty(),
            "{} failed requests of {}: {:?}\n{logs}",
            failures.len(),
            ok + failures.len() as u64,
            &failures[..failures.len().min(10)],
        );
        ok
    }
}
