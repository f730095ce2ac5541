//! `cargo xtask bench configd`: riskfeat-configd (release build) on a real
//! PostgreSQL 15 from the test harness, clients in this process (a
//! different process from the server; both raise RLIMIT_NOFILE to the hard
//! limit).
//!
//! 0. Memory: configd freshly started, idle long-poll watchers held at each
//!    of `--memory-steps` (default 1,000 / 10,000 / 20,000, capped by
//!    RLIMIT_NOFILE): its resident set (VmRSS) at each step, and per
//!    watcher above the resident set with none.
//! 1. Watchers: N long-poll watchers (default 10,000, each on its own TCP
//!    connection), one publish of one item; time from the publish request
//!    until 50/99/100% of watchers got the new version. In each of
//!    `--rounds` rounds the same against etcd 3.4 (Debian `etcd-server`,
//!    installed when missing; JSON gateway watch, one connection per
//!    watcher, `bench::etcd`), the order alternating, both fresh
//!    processes, with the 1-min load average beside each (unless
//!    `--no-etcd`).
//! 2. Bytes for one changed item in a namespace of `--items` items of
//!    `--value-bytes`: incremental `/changes?from=V` against the full
//!    snapshot (plain and gzip).
//! 3. Issue 8's start-up storm: `--namespaces` x `--items` x `--value-bytes`,
//!    configd restarted with a cold cache, `--clients` clients starting at
//!    once, each fetching one namespace's full snapshot (gzip, round robin
//!    over namespaces): time until all have it, server peak RSS (VmHWM),
//!    database snapshot queries, bytes on the wire.
//!
//! Prints a markdown section and appends it to docs/benchmarks.md.

use super::{fanout, machine, quantile, vm_kb};
use anyhow::bail;
use riskfeat_tests::{Configd, ConfigdToken, PgCluster};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(clap::Args)]
pub struct Args {
    /// Long-poll watchers in scenario 1.
    #[arg(long, default_value_t = 10_000)]
    watchers: usize,
    /// Items per namespace in scenarios 2 and 3.
    #[arg(long, default_value_t = 100_000)]
    items: usize,
    /// Approximate size of one item's JSON value, bytes.
    #[arg(long, default_value_t = 2048)]
    value_bytes: usize,
    /// Namespaces in scenario 3.
    #[arg(long, default_value_t = 3)]
    namespaces: usize,
    /// Clients starting at once in scenario 3.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Idle watchers held for the memory table (scenario 0), ascending.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000, 10_000, 20_000])]
    memory_steps: Vec<usize>,
    /// Scenarios 0 and 1 only (memory and publish to watchers).
    #[arg(long)]
    watchers_only: bool,
    /// Rounds of scenario 1 (configd and etcd each once per round).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Scenario 1 without etcd.
    #[arg(long)]
    no_etcd: bool,
    /// Do not append to docs/benchmarks.md.
    #[arg(long)]
    no_record: bool,
}

const ADMIN: &str = "bench-admin-token-0123456789";
pub(super) const READER: &str = "bench-reader-token-0123456789";

pub fn run(args: Args) -> anyhow::Result<()> {
    super::run_bench(
        "configd",
        &["riskfeat-configd"],
        args.no_record,
        |release| async move { bench(&args, &release.join("riskfeat-configd")).await },
    )
}

/// Raises RLIMIT_NOFILE (configd and etcd inherit it): to [`WANT_FDS`]
/// when allowed (root may raise the hard limit), else to the hard limit;
/// the limit now in force.
fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if hard >= WANT_FDS || setrlimit(Resource::RLIMIT_NOFILE, WANT_FDS, WANT_FDS).is_err() {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
    getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft)
}

/// File descriptors the bench asks for: 20,000 watchers and the spare.
const WANT_FDS: u64 = 65_536;

/// File descriptors each process keeps for everything but the watchers
/// (PostgreSQL connections, the harness, the listener).
const SPARE_FDS: u64 = 300;

/// How long configd may take to become ready (a cold start loads nothing,
/// but the machine is shared).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The release configd ([`Configd`] fixture) and the bench's requests to it.
pub(super) struct Server {
    configd: Configd,
}

impl Server {
    fn new(pg: &PgCluster, bin: &Path) -> anyhow::Result<Server> {
        let tokens = [
            ConfigdToken::admin("admin", ADMIN),
            ConfigdToken::read("reader", READER, &["*"]),
        ];
        let configd = Configd::new(&pg.primary.superuser_dsn(), &tokens)?
            .with_binary(bin)
            .with_env("RISKFEAT_LOG", "warn");
        Ok(Server { configd })
    }

    /// (Re)starts configd with `warm_up` and waits until it is ready.
    pub(super) async fn start(&mut self, warm_up: bool) -> anyhow::Result<()> {
        self.configd.spawn(&format!(
            "max_value_bytes = 16384\nmax_body_bytes = 134217728\nwarm_up = {warm_up}\n\
             max_poll_timeout_s = 600\nmax_watchers_per_token = 100000\n\
             [http]\nmax_connections = 100000"
        ))?;
        self.configd.wait_ready(READY_TIMEOUT).await
    }

    pub(super) fn port(&self) -> u16 {
        self.configd.http().port()
    }

    pub(super) fn pid(&self) -> u32 {
        self.configd.pid()
    }

    /// One sample of `/metrics` (0 when absent or unreachable).
    pub(super) async fn metric(&self, name: &str) -> f64 {
        self.configd
            .http()
            .metric(name)
            .await
            .ok()
            .flatten()
            .unwrap_or(0.0)
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut r = reqwest::Client::new()
            .request(method, self.configd.url(path))
            .bearer_auth(ADMIN)
            .timeout(Duration::from_secs(300));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await?;
        let s = resp.status();
        let v: serde_json::Value = resp.json().await.unwrap_or_default();
        if !s.is_success() {
            bail!("{path}: {s} {v}");
        }
        Ok(v)
    }

    /// Publishes `changes` to `ns` (by the bench); the new version.
    pub(super) async fn publish(
        &self,
        ns: &str,
        changes: serde_json::Value,
    ) -> anyhow::Result<u64> {
        let path = format!("/v1/admin/namespaces/{ns}/publish");
        let body = json!({"author": "bench", "changes": changes});
        let v = self.admin(reqwest::Method::POST, &path, Some(body)).await?;
        Ok(v["version"].as_u64().unwrap_or(0))
    }
}

/// A raw HTTP/1.1 GET on its own connection: status and body bytes as
/// received (compressed when the server compressed).
async fn raw_get(port: u16, path: &str, gzip: bool) -> anyhow::Result<(u16, usize)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {READER}\r\n{}Connection: close\r\n\r\n",
        if gzip { "Accept-Encoding: gzip\r\n" } else { "" }
    );
    s.write_all(req.as_bytes()).await?;
    read_response(&mut s).await
}

async fn read_response(s: &mut TcpStream) -> anyhow::Result<(u16, usize)> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut head = Vec::new();
    let (status, len, mut have) = loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            bail!("connection closed before the response head");
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&head[..end]).to_string();
            let status: u16 = text
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let len = text
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            break (status, len, head.len() - end - 4);
        }
    };
    while have < len {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            bail!("connection closed after {have} of {len} bytes");
        }
        have += n;
    }
    Ok((status, have))
}

/// Deterministic, config-like JSON value of about `size` bytes.
fn value(ns: usize, i: usize, size: usize) -> serde_json::Value {
    let mut x = (ns as u64 * 1_000_003 + i as u64)
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    const FIELDS: [&str; 8] = [
        "amount",
        "count_1h",
        "amount_24h",
        "zscore",
        "merchant_risk",
        "velocity",
        "country",
        "device_age_d",
    ];
    const OPS: [&str; 4] = [">", "<", ">=", "=="];
    let mut conditions = Vec::new();
    let mut approx = 160;
    while approx < size {
        let r = next();
        conditions.push(json!({"field": FIELDS[(r % 8) as usize], "op": OPS[((r >> 8) % 4) as usize], "value": (r >> 16) % 100_000}));
        approx += 52;
    }
    json!({"rule": format!("rule-{ns}-{i}"), "enabled": next() % 7 != 0, "priority": next() % 100, "action": "review", "window_s": 3600, "conditions": conditions})
}

pub(super) fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn mb(bytes: f64) -> String {
    format!("{:.1} MB", bytes / 1e6)
}

async fn load_namespace(
    server: &Server,
    ns: &str,
    idx: usize,
    items: usize,
    size: usize,
) -> anyhow::Result<u64> {
    server
        .admin(
            reqwest::Method::PUT,
            &format!("/v1/admin/namespaces/{ns}"),
            None,
        )
        .await?;
    let mut version = 0;
    let chunk = 10_000;
    for start in (0..items).step_by(chunk) {
        let changes: Vec<_> = (start..(start + chunk).min(items))
            .map(|i| json!({"op": "upsert", "key": format!("rule-{i:06}"), "value": value(idx, i, size)}))
            .collect();
        version = server.publish(ns, json!(changes)).await?;
    }
    Ok(version)
}

async fn bench(args: &Args, bin: &Path) -> anyhow::Result<String> {
    let nofile = raise_nofile();
    let total = Instant::now();
    eprintln!("bench configd: starting PostgreSQL");
    let pg = PgCluster::start(false).await?;
    let mut server = Server::new(&pg, bin)?;
    server.start(true).await?;
    let mut out = String::new();
    out.push_str(&format!(
        "## configd ({})\n\nCommand: `cargo xtask bench configd --watchers {} --items {} --value-bytes {} --namespaces {} --clients {} \
         --memory-steps {} --rounds {}{}{}`. \
         Machine: {}. riskfeat-configd release build, defaults (wake 500 watchers per 5 ms); PostgreSQL 15 from the test harness; \
         clients in the xtask process, one TCP connection each; RLIMIT_NOFILE {nofile}.\n\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        args.watchers, args.items, args.value_bytes, args.namespaces, args.clients,
        args.memory_steps.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(","),
        args.rounds,
        if args.no_etcd { " --no-etcd" } else { "" },
        if args.watchers_only { " --watchers-only" } else { "" },
        machine()
    ));

    server
        .admin(reqwest::Method::PUT, "/v1/admin/namespaces/watched", None)
        .await?;
    let mut version = server
        .publish("watched", json!([{"op": "upsert", "key": "k", "value": 0}]))
        .await?;

    // 0. Memory per idle watcher, on a fresh process.
    server.start(true).await?;
    out.push_str(&memory(&server, &args.memory_steps, nofile).await?);

    // 1. Publish to all watchers, configd and etcd alternating.
    out.push_str(
        &fanout::publish_to_all(
            &mut server,
            args.watchers,
            args.rounds,
            !args.no_etcd,
            &mut version,
        )
        .await?,
    );
    let port = server.port();

    if args.watchers_only {
        return Ok(out);
    }

    // 2 + 3. Big namespaces.
    let names: Vec<String> = (0..args.namespaces.max(1))
        .map(|i| format!("big{i}"))
        .collect();
    let load_start = Instant::now();
    let mut versions = Vec::new();
    for (i, ns) in names.iter().enumerate() {
        eprintln!("bench configd: loading {ns} ({} items)", args.items);
        versions.push(load_namespace(&server, ns, i, args.items, args.value_bytes).await?);
    }
    let load_time = load_start.elapsed();
    let v = versions[0];
    let change =
        json!([{"op": "upsert", "key": "rule-000007", "value": value(9, 9, args.value_bytes)}]);
    server.publish("big0", change).await?;
    let (_, inc) = raw_get(
        port,
        &format!("/v1/namespaces/big0/changes?from={v}"),
        false,
    )
    .await?;
    let (_, inc_gz) = raw_get(port, &format!("/v1/namespaces/big0/changes?from={v}"), true).await?;
    let (_, full) = raw_get(port, "/v1/namespaces/big0/changes?from=0", false).await?;
    let (_, full_gz) = raw_get(port, "/v1/namespaces/big0/changes?from=0", true).await?;
    out.push_str(&format!(
        "### One changed item in a {}-item namespace ({} B values)\n\n| what the client downloads | bytes |\n|---|---|\n\
         | incremental `/changes?from=V` (1 op) | {} |\n| incremental, Accept-Encoding: gzip (ops are not compressed) | {} |\n\
         | full snapshot | {} ({}) |\n| full snapshot, gzip | {} ({}) |\n\nRatio full/incremental: {:.0}x.\n\n",
        args.items, args.value_bytes, inc, inc_gz, full, mb(full as f64), full_gz, mb(full_gz as f64),
        full as f64 / inc.max(1) as f64
    ));

    // 3. Cold restart, clients at once.
    eprintln!("bench configd: restart cold, {} clients", args.clients);
    server.start(false).await?;
    let q0 = server
        .metric("riskfeat_configd_db_snapshot_queries_total")
        .await;
    let (mut done, wire, failed) = storm(port, &names, args.clients).await?;
    done.sort();
    let all = quantile(&done, 1.0);
    let hwm = vm_kb(server.pid(), "VmHWM:");
    let queries = server
        .metric("riskfeat_configd_db_snapshot_queries_total")
        .await
        - q0;
    let builds = server
        .metric("riskfeat_configd_snapshot_builds_total")
        .await;
    // The same storm again on a warm cache, with the peak reset: what it
    // adds to the resident set is what 1,000 clients cost (connections,
    // buffers in flight), the shared snapshots being built already.
    let rss_before = vm_kb(server.pid(), "VmRSS:");
    let reset = std::fs::write(format!("/proc/{}/clear_refs", server.pid()), "5").is_ok();
    let (_, _, warm_failed) = storm(port, &names, args.clients).await?;
    let warm_peak = vm_kb(server.pid(), "VmHWM:");
    let per_client = if reset {
        format!(
            "{:.0} MB before, peak {:.0} MB: {:.0} KB per client ({} failed)",
            rss_before as f64 / 1024.0,
            warm_peak as f64 / 1024.0,
            warm_peak.saturating_sub(rss_before) as f64 / args.clients.max(1) as f64,
            warm_failed
        )
    } else {
        "not measured (cannot reset VmHWM through /proc/<pid>/clear_refs here)".to_string()
    };
    let config_bytes =
        (args.namespaces * args.items) as f64 * full as f64 / args.items.max(1) as f64;
    out.push_str(&format!(
        "### Start-up storm: {} namespaces x {} items x ~{} B, {} clients at once (cold cache)\n\n\
         | measure | value |\n|---|---|\n| config size (JSON) | {} |\n| time until every client has its full namespace (gzip) | {} (p50 {}) |\n\
         | failed clients | {} |\n| database snapshot queries | {} (one per namespace: single-flight) |\n| snapshot buffers built | {} |\n\
         | bytes on the wire | {} ({} per client) |\n| configd peak RSS (VmHWM) | {:.0} MB ({:.1}x the config) |\n\
         | the same storm again, warm (RSS before, peak) | {} |\n\n\
         Loading the namespaces through the admin API (chunks of 10,000 items) took {:.0} s. Bench total {:.0} s.\n",
        args.namespaces, args.items, args.value_bytes, args.clients, mb(config_bytes), ms(all), ms(quantile(&done, 0.5)), failed,
        queries, builds, mb(wire as f64), mb(wire as f64 / args.clients.max(1) as f64),
        hwm as f64 / 1024.0, hwm as f64 * 1024.0 / config_bytes.max(1.0), per_client, load_time.as_secs_f64(), total.elapsed().as_secs_f64()
    ));
    drop(server);
    drop(pg);
    Ok(out)
}

/// `clients` clients at once, each fetching the full snapshot of one of
/// `names` (round robin, gzip); returns when each finished, the bytes on
/// the wire, and how many failed.
async fn storm(
    port: u16,
    names: &[String],
    clients: usize,
) -> anyhow::Result<(Vec<Duration>, usize, usize)> {
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let ns = names[c % names.len()].clone();
        tasks.push(tokio::spawn(async move {
            raw_get(port, &format!("/v1/namespaces/{ns}/changes?from=0"), true)
                .await
                .map(|(s, n)| (s, n, t0.elapsed()))
        }));
    }
    let mut wire = 0usize;
    let mut done = Vec::new();
    let mut failed = 0;
    for t in tasks {
        match t.await? {
            Ok((200, n, at)) => {
                wire += n;
                done.push(at);
            }
            _ => failed += 1,
        }
    }
    Ok((done, wire, failed))
}

/// Scenario 0: idle watchers held at each of `steps` (at most what
/// RLIMIT_NOFILE `nofile` leaves), configd's VmRSS at each; a markdown
/// section.
async fn memory(server: &Server, steps: &[usize], nofile: u64) -> anyhow::Result<String> {
    let cap = nofile.saturating_sub(SPARE_FDS) as usize;
    let port = server.port();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = vm_kb(server.pid(), "VmRSS:");
    let mut held: Vec<TcpStream> = Vec::new();
    let mut rows = String::new();
    let mut last = (0usize, base);
    for &want in steps {
        let step = want.min(cap);
        if step <= held.len() {
            continue;
        }
        eprintln!("bench configd: memory, {step} idle watchers");
        let mut opening = tokio::task::JoinSet::new();
        let sem = Arc::new(tokio::sync::Semaphore::new(200));
        for _ in held.len()..step {
            let sem = sem.clone();
            opening.spawn(async move {
                let _permit = sem.acquire_owned().await?;
                let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
                let req = format!(
                    "GET /v1/namespaces/watched/watch?version=1&timeout_s=600 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {READER}\r\n\r\n"
                );
                s.write_all(req.as_bytes()).await?;
                anyhow::Ok(s)
            });
        }
        while let Some(s) = opening.join_next().await {
            held.push(s??);
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while (server.metric("riskfeat_configd_watchers").await as usize) < step {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {step} watchers registered",
                    server.metric("riskfeat_configd_watchers").await
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = vm_kb(server.pid(), "VmRSS:");
        let hwm = vm_kb(server.pid(), "VmHWM:");
        let per = |kb: u64, n: usize| kb as f64 / n.max(1) as f64;
        rows.push_str(&format!(
            "| {} | {:.1} MB | {:.1} MB | {:.1} KB | {:.1} KB |\n",
            step,
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0,
            per(rss.saturating_sub(base), step),
            per(rss.saturating_sub(last.1), step - last.0),
        ));
        last = (step, rss);
    }
    let capped = if steps.iter().any(|&s| s > cap) {
        format!(" (steps above {cap} capped: RLIMIT_NOFILE {nofile} less {SPARE_FDS} spare)")
    } else {
        String::new()
    };
    drop(held);
    Ok(format!(
        "### configd memory per idle long-poll watcher\n\n\
         Fresh configd (namespace `watched` only), watchers each on its own TCP connection, \
         held until configd's `riskfeat_configd_watchers` counts them all, then 1 s; \
         VmRSS and VmHWM (the peak so far) from /proc/<pid>/status; per watcher from VmRSS. \
         RSS with no watcher: {:.1} MB{capped}.\n\n\
         | idle watchers | configd VmRSS | configd VmHWM | per watcher (above none) | per watcher (above the previous step) |\n\
         |---|---|---|---|---|\n{rows}\n",
        base as f64 / 1024.0
    ))
}
