//! Memory per held long-poll (issue 17.4): 2,000 idle watchers, each on
//! its own TCP connection, cost configd at most [`PER_WATCHER_KB`] of
//! resident memory each (VmRSS from /proc/<pid>/status, above the resident
//! set with none). Release figures at 1k/10k/~20k watchers: `cargo xtask
//! bench configd --watchers-only` (docs/benchmarks.md, "configd: 10,000
//! watchers held, against etcd").

use crate::support::{create, metric, start, upsert, READER};
use riskfeat_tests::{wait_until, Configd, PgCluster};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Watchers held (a few seconds on the debug build).
const WATCHERS: usize = 2_000;
/// The bound, KB of VmRSS per watcher: the goal's share, 10,000 watchers
/// under 150 MB with configd's ~11 MB base is 14 KB each. The debug build
/// this test runs measured 12.3-12.4 KB in six runs (2026-12-01, load 5),
/// the release build 12.2 KB at 1k, 10k and 19.7k watchers: RSS is no
/// timing, so the margin is small on purpose (a looser bound, e.g. twice
/// the measure, would pass the design before issue 17.4 too).
const PER_WATCHER_KB: f64 = 14.0;

fn vm_rss_kb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

async fn watchers(c: &Configd) -> f64 {
    metric(c, "riskfeat_configd_watchers").await
}

/// Checked (debug build, 2026-12-01, two runs each): with the connection
/// futures of `shared/src/http_server.rs` awaited inline instead of boxed,
/// configd measures 14.7-14.8 KB per idle watcher, over the bound, and this
/// test fails; with glibc malloc instead of jemalloc (`#[global_allocator]`
/// in configd/src/main.rs removed) 16.3 KB; with a 4 KB buffer written per
/// held watch (in `wait_any`) it fails with "16.7 KB of resident memory
/// per idle watcher (bound 14 KB)".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_watchers_cost_little_resident_memory_each() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    assert!(
        hard as usize > WATCHERS + 500,
        "RLIMIT_NOFILE hard limit {hard} is too low for {WATCHERS} connections"
    );
    let pg = PgCluster::start(false).await.unwrap();
    // configd inherits the raised limit.
    let c = start(&pg.primary, "max_watchers_per_token = 100000").await;
    create(&c, "watched").await;
    let version = upsert(&c, "watched", "k", serde_json::json!(1)).await;
    // A few rounds of requests first, so that what the allocator and the
    // runtime set up once is in the base.
    for _ in 0..3 {
        let _ = watchers(&c).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = vm_rss_kb(c.pid());
    let port = c.http().port();
    let req = format!(
        "GET /v1/namespaces/watched/watch?version={version}&timeout_s=120 HTTP/1.1\r\n\
         Host: 127.0.0.1\r\nAuthorization: Bearer {READER}\r\n\r\n"
    );
    let mut held = Vec::with_capacity(WATCHERS);
    for _ in 0..WATCHERS {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        held.push(s);
    }
    wait_until(Duration::from_secs(60), "every watcher held", || async {
        watchers(&c).await as usize == WATCHERS
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = vm_rss_kb(c.pid());
    let per = (rss - base) / WATCHERS as f64;
    eprintln!("VmRSS {base} kB with none, {rss} kB with {WATCHERS} watchers: {per:.1} KB each");
    assert!(
        per < PER_WATCHER_KB,
        "{per:.1} KB of resident memory per idle watcher (bound {PER_WATCHER_KB} KB): \
         VmRSS {base} kB -> {rss} kB for {WATCHERS}"
    );
    drop(held);
}
