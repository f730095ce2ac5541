//! The soak's steady HTTP load: a few client tasks asking the worker for
//! features (one user, now and then a batch) back to back with a short
//! pause, each answer recorded by what it was: a 2xx (and whether it was
//! marked `stale` or `degraded`), another status with its error `code`, a
//! timeout, or a transport error. 2xx answers are only counted; every other
//! answer is kept with the moment it came, so the report can tell the
//! answers a fault explains from the ones nothing does.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one request may take before it counts as a timeout. The
/// worker's own bounds (pool wait 2 s, statement timeout 2 s, one retry on
/// a fresh connection) end every request well before, also on a loaded
/// machine.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What one request got back, when it was not a 2xx.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A non-2xx status with the `error.code` of its body ("" when none).
    Status { status: u16, code: String },
    /// No answer within [`REQUEST_TIMEOUT`].
    Timeout,
    /// The connection failed or broke (refused, reset, bad response).
    Transport(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status { status, code } if code.is_empty() => write!(f, "{status}"),
            Failure::Status { status, code } => write!(f, "{status} {code}"),
            Failure::Timeout => write!(f, "timeout"),
            Failure::Transport(e) => write!(f, "transport error ({e})"),
        }
    }
}

/// A non-2xx answer and when it came (since the soak started).
#[derive(Debug, Clone)]
pub struct Answer {
    pub at: Duration,
    pub failure: Failure,
}

/// What the clients recorded.
#[derive(Debug, Default)]
pub struct Recorded {
    pub ok: u64,
    /// 2xx answers marked `stale: true` (the documented lag mark).
    pub ok_stale: u64,
    /// 2xx answers marked `degraded: true` (the fallback credential).
    pub ok_degraded: u64,
    pub failures: Vec<Answer>,
}

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    stale: AtomicU64,
    degraded: AtomicU64,
    failures: Mutex<Vec<Answer>>,
}

/// The running clients; [`Load::finish`] stops them and returns what they
/// recorded.
pub struct Load {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `clients` tasks against the worker at `base`, asking for users
    /// `1..=users` (picked by an RNG seeded from `seed`), pausing `pause`
    /// between requests; times are measured from `t0`.
    pub fn start(
        base: &str,
        clients: usize,
        users: u64,
        pause: Duration,
        seed: u64,
        t0: Instant,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(clients)
            .build()
            .expect("building a reqwest client");
        let tasks = (0..clients)
            .map(|i| {
                let client = Client {
                    http: http.clone(),
                    base: base.to_string(),
                    users: users.max(1),
                    rng: StdRng::seed_from_u64(seed.wrapping_add(i as u64)),
                };
                let (stop, counters) = (stop.clone(), counters.clone());
                tokio::spawn(client.run(stop, counters, pause, t0))
            })
            .collect();
        Load {
            stop,
            counters,
            tasks,
        }
    }

    /// Requests answered so far (2xx or not).
    pub fn answered(&self) -> u64 {
        self.counters.ok.load(Ordering::Relaxed)
            + self.counters.failures.lock().unwrap().len() as u64
    }

    /// Stops the clients (each finishes its request in flight).
    pub async fn finish(self) -> Recorded {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let c = &self.counters;
        Recorded {
            ok: c.ok.load(Ordering::Relaxed),
            ok_stale: c.stale.load(Ordering::Relaxed),
            ok_degraded: c.degraded.load(Ordering::Relaxed),
            failures: std::mem::take(&mut *c.failures.lock().unwrap()),
        }
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
    users: u64,
    rng: StdRng,
}

impl Client {
    async fn run(
        mut self,
        stop: Arc<AtomicBool>,
        counters: Arc<Counters>,
        pause: Duration,
        t0: Instant,
    ) {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let result = self.one(n.is_multiple_of(10)).await;
            match result {
                Ok(body) => {
                    counters.ok.fetch_add(1, Ordering::Relaxed);
                    if body["stale"] == Value::Bool(true) {
                        counters.stale.fetch_add(1, Ordering::Relaxed);
                    }
                    if body["degraded"] == Value::Bool(true) {
                        counters.degraded.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(failure) => counters.failures.lock().unwrap().push(Answer {
                    at: t0.elapsed(),
                    failure,
                }),
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// One request: a single user, or a batch of 20.
    async fn one(&mut self, batch: bool) -> Result<Value, Failure> {
        let req = if batch {
            let ids: Vec<u64> = (0..20)
                .map(|_| self.rng.random_range(1..=self.users))
                .collect();
            self.http
                .post(format!("{}/v1/features/batch", self.base))
                .json(&json!({ "user_ids": ids }))
        } else {
            let user = self.rng.random_range(1..=self.users);
            self.http.get(format!("{}/v1/features/{user}", self.base))
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let body: Value = match resp.bytes().await {
            Ok(b) => serde_json::from_slice(&b).unwrap_or(Value::Null),
            Err(e) => return Err(transport(e)),
        };
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let code = body["error"]["code"].as_str().unwrap_or("").to_string();
        Err(Failure::Status { status, code })
    }
}

fn transport(e: reqwest::Error) -> Failure {
    if e.is_timeout() {
        Failure::Timeout
    } else if e.is_connect() {
        Failure::Transport("connect".into())
    } else {
        Failure::Transport(e.without_url().to_string())
    }
}
