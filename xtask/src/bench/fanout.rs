//! Publish-to-all, as `cargo xtask bench configd` measures it for both
//! servers: `n` watchers, each on its own TCP connection to the server's
//! port, each sending one HTTP/1.1 request and reading the answer until a
//! marker says the change arrived. The same code holds riskfeat-configd's
//! long-polls and etcd's JSON-gateway watches, so the two latencies differ
//! by the server only. [`publish_to_all`] is the bench's scenario 1.

use super::configd::{ms, Server, READER};
use super::{etcd, quantile, vm_kb};
use anyhow::bail;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};

/// Between the last watcher held and the publish (either server), so
/// that setting the watches up is over.
const SETTLE: Duration = Duration::from_secs(2);

/// Connections opened at once (the rest wait for a permit).
const OPENING_AT_ONCE: usize = 200;

/// What one watcher sends and waits for.
pub struct Spec {
    pub port: u16,
    /// The whole request (head and body).
    pub request: String,
    /// Text the server sends once the watch is in place (etcd's
    /// `"created":true`); `None` when the caller counts them another way
    /// (configd's `riskfeat_configd_watchers`).
    pub created: Option<&'static str>,
    /// Text that says the change arrived.
    pub changed: &'static str,
}

/// `n` watchers being opened or held.
pub struct Watchers {
    n: usize,
    /// How many saw [`Spec::created`].
    created: Arc<AtomicUsize>,
    /// How many failed (connection refused or closed, not a 200).
    failed: Arc<AtomicUsize>,
    done: mpsc::UnboundedReceiver<anyhow::Result<Instant>>,
}

/// Publish-to-all latencies (from the publish request sent to each
/// watcher's change read), sorted.
pub struct Latencies {
    pub sorted: Vec<Duration>,
    /// Watchers that failed or did not get the change in time.
    pub errors: usize,
}

impl Latencies {
    pub fn p(&self, q: f64) -> Duration {
        quantile(&self.sorted, q)
    }
}

/// One publish-to-all measurement of one server.
struct Fanout {
    lat: Latencies,
    /// From the publish request sent to its answer.
    publish_rtt: Duration,
    /// The server's VmRSS holding the watchers, kB.
    rss_kb: u64,
    /// The 1-min load average at the publish.
    load: String,
}

impl Fanout {
    fn row(&self, round: usize, server: &str) -> String {
        format!(
            "| {round} | {server} | {} | {} | {} | {} | {} | {:.0} MB | {} |\n",
            ms(self.lat.p(0.5)),
            ms(self.lat.p(0.99)),
            ms(self.lat.p(1.0)),
            self.lat.errors,
            ms(self.publish_rtt),
            self.rss_kb as f64 / 1024.0,
            self.load
        )
    }
}

/// Scenario 1 of the bench: `rounds` rounds of one publish to `watchers`
/// watchers, configd and etcd (unless not `with_etcd`) each on a fresh process, the order alternating; a
/// markdown section.
pub async fn publish_to_all(
    server: &mut Server,
    watchers: usize,
    rounds: usize,
    with_etcd: bool,
    version: &mut u64,
) -> anyhow::Result<String> {
    if with_etcd {
        etcd::ensure_installed()?;
    }
    let etcd_name = if with_etcd {
        etcd::version()
    } else {
        String::new()
    };
    let mut rows = String::new();
    let mut ratios = Vec::new();
    for round in 1..=rounds.max(1) {
        let etcd_first = round % 2 == 0;
        let (mut c, mut e) = (None, None);
        for etcd_turn in [etcd_first, !etcd_first] {
            if !etcd_turn {
                c = Some(fanout_configd(server, watchers, version).await?);
            } else if with_etcd {
                e = Some(fanout_etcd(watchers, round).await?);
            }
        }
        let (c, e) = (c.expect("configd measured"), e);
        rows.push_str(&c.row(round, "riskfeat-configd"));
        if let Some(e) = &e {
            rows.push_str(&e.row(round, &etcd_name));
            ratios.push(format!(
                "{:.2}",
                c.lat.p(0.99).as_secs_f64() / e.lat.p(0.99).as_secs_f64().max(1e-9)
            ));
        }
    }
    let ratio = if ratios.is_empty() {
        String::new()
    } else {
        format!(
            "configd p99 / etcd p99 per round: {} (the goal: at most 0.5).\n\n",
            ratios.join(", ")
        )
    };
    Ok(format!(
        "### Publish to {n} watchers: riskfeat-configd and etcd in the same run\n\n\
         Each round a fresh riskfeat-configd and a fresh {etcd_name} (one member on loopback, \
         its data on tmpfs as the harness PostgreSQL runs with `fsync = off`), the order alternating; \
         {n} watchers each on its own TCP connection from the xtask process (configd: \
         `GET /v1/namespaces/watched/watch` long-poll; etcd: `POST /v3/watch` through its \
         JSON gateway), then one publish of one item (configd: the admin publish; etcd: \
         `POST /v3/kv/put`). Latency: publish request sent (2 s after the last watch was in place) -> the watcher read the change. \
         The load average is the machine's at the publish: other work on the 2 cores skews \
         the latencies; compare within a round.\n\n\
         | round | server | p50 | p99 | 100% | errors | publish round trip | server VmRSS holding them | 1-min load |\n\
         |---|---|---|---|---|---|---|---|---|\n{rows}\n{ratio}",
        n = watchers
    ))
}

/// configd restarted, `n` long-polls on `version` held, one publish.
async fn fanout_configd(
    server: &mut Server,
    n: usize,
    version: &mut u64,
) -> anyhow::Result<Fanout> {
    server.start(true).await?;
    eprintln!("bench configd: {n} configd watchers");
    let w = open(
        Spec {
            port: server.port(),
            request: format!(
                "GET /v1/namespaces/watched/watch?version={version}&timeout_s=300 HTTP/1.1\r\n\
                 Host: 127.0.0.1\r\nAuthorization: Bearer {READER}\r\n\r\n"
            ),
            created: None,
            changed: "\"version\"",
        },
        n,
    );
    let s = &*server;
    w.wait_held(Duration::from_secs(120), || async move {
        s.metric("riskfeat_configd_watchers").await as usize
    })
    .await?;
    let change = json!([{"op": "upsert", "key": "k", "value": *version + 1}]);
    measure(w, "configd", s.pid(), || async {
        *version = s.publish("watched", change).await?;
        Ok(())
    })
    .await
}

/// A fresh etcd, `n` gateway watches held, one put.
async fn fanout_etcd(n: usize, round: usize) -> anyhow::Result<Fanout> {
    let etcd = etcd::Etcd::start().await?;
    eprintln!("bench configd: {n} etcd watchers");
    let w = open(etcd.watcher(), n);
    w.wait_held(Duration::from_secs(300), || async { w.created() })
        .await?;
    let value = format!("round {round}");
    measure(w, "etcd", etcd.pid(), || etcd.put(&value)).await
}

/// After [`SETTLE`]: `pid`'s VmRSS holding the watchers `w`, then
/// `publish` and every watcher's latency from its start.
async fn measure<F, Fut>(w: Watchers, name: &str, pid: u32, publish: F) -> anyhow::Result<Fanout>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    tokio::time::sleep(SETTLE).await;
    let rss_kb = vm_kb(pid, "VmRSS:");
    let load = load1();
    let t0 = Instant::now();
    publish().await?;
    let publish_rtt = t0.elapsed();
    let lat = w.latencies(t0, Duration::from_secs(120)).await;
    eprintln!(
        "bench configd: {name} p50 {} p99 {} max {} errors {}",
        ms(lat.p(0.5)),
        ms(lat.p(0.99)),
        ms(lat.p(1.0)),
        lat.errors
    );
    Ok(Fanout {
        lat,
        publish_rtt,
        rss_kb,
        load,
    })
}

/// Opens `n` watchers (at most [`OPENING_AT_ONCE`] connecting at a time);
/// returns at once.
pub fn open(spec: Spec, n: usize) -> Watchers {
    let spec = Arc::new(spec);
    let sem = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let created = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let (tx, done) = mpsc::unbounded_channel();
    for _ in 0..n {
        let (spec, sem, created, failed, tx) = (
            spec.clone(),
            sem.clone(),
            created.clone(),
            failed.clone(),
            tx.clone(),
        );
        tokio::spawn(async move {
            let r = watch(&spec, &sem, &created).await;
            if r.is_err() {
                failed.fetch_add(1, Ordering::SeqCst);
            }
            let _ = tx.send(r);
        });
    }
    Watchers {
        n,
        created,
        failed,
        done,
    }
}

async fn watch(spec: &Spec, sem: &Semaphore, created: &AtomicUsize) -> anyhow::Result<Instant> {
    let permit = sem.acquire().await?;
    let mut s = TcpStream::connect(("127.0.0.1", spec.port)).await?;
    s.write_all(spec.request.as_bytes()).await?;
    drop(permit);
    let mut buf = Vec::with_capacity(1024);
    let mut waiting_for_created = spec.created;
    let mut status_seen = false;
    loop {
        if s.read_buf(&mut buf).await? == 0 {
            bail!("connection closed: {:?}", String::from_utf8_lossy(&buf));
        }
        let at = Instant::now();
        if !status_seen && buf.len() >= 12 {
            if !buf.starts_with(b"HTTP/1.1 200") {
                let text = String::from_utf8_lossy(&buf);
                bail!("answer {:?}", text.lines().next().unwrap_or_default());
            }
            status_seen = true;
        }
        if let Some(marker) = waiting_for_created {
            let Some(i) = find(&buf, marker) else {
                continue;
            };
            waiting_for_created = None;
            created.fetch_add(1, Ordering::SeqCst);
            buf.drain(..i + marker.len());
        }
        if find(&buf, spec.changed).is_some() {
            return Ok(at);
        }
    }
}

fn find(haystack: &[u8], needle: &str) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
}

impl Watchers {
    /// How many saw [`Spec::created`].
    pub fn created(&self) -> usize {
        self.created.load(Ordering::SeqCst)
    }

    /// Waits until `held()` (the caller's count of watches in place)
    /// reaches `n`; an error when one failed or after `timeout`.
    pub async fn wait_held<F, Fut>(&self, timeout: Duration, held: F) -> anyhow::Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = usize>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            let (now, failed) = (held().await, self.failed.load(Ordering::SeqCst));
            if failed > 0 {
                bail!("{failed} of {} watchers failed ({now} held)", self.n);
            }
            if now >= self.n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {now} of {} watchers held after {timeout:?}", self.n);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every watcher's time from `t0` (the publish request sent) to its
    /// change; one that has none `timeout` after `t0` counts as an error.
    pub async fn latencies(mut self, t0: Instant, timeout: Duration) -> Latencies {
        let mut sorted = Vec::with_capacity(self.n);
        let mut errors = 0;
        let deadline = tokio::time::Instant::from_std(t0 + timeout);
        for _ in 0..self.n {
            match tokio::time::timeout_at(deadline, self.done.recv()).await {
                Ok(Some(Ok(at))) => sorted.push(at.saturating_duration_since(t0)),
                Ok(Some(Err(_))) => errors += 1,
                Ok(None) | Err(_) => break,
            }
        }
        errors += self.n - sorted.len() - errors;
        sorted.sort();
        Latencies { sorted, errors }
    }
}

/// The machine's 1-min load average (`/proc/loadavg`), "?" when unknown.
pub fn load1() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}
