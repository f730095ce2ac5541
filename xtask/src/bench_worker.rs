//! `cargo xtask bench worker`: the worker over HTTP against pgbench running
//! the worker's own SQL (the ceiling), and a rotation scenario.
//!
//! 1. Starts the harness (PostgreSQL primary + streaming replica, OpenBao),
//!    loads `users x per_user` transactions (default 40k x 50 = 2M) with
//!    `riskfeat_tests::data`, waits for the replica.
//! 2. Issues a dynamic credential through the AppRole and publishes it in
//!    `db.json`, builds and starts the release worker.
//! 3. For each concurrency (1 and 16): a Rust load generator (one
//!    keep-alive HTTP/1.1 connection per client, random users) for
//!    `--duration` seconds, then pgbench with the worker's single-user query
//!    (`-M prepared`, same concurrency, same credential, same replica).
//! 4. Rotation: `--rotation-duration` seconds of load at concurrency 16
//!    while a fresh credential is published every `--rotate-every` seconds
//!    (the old lease revoked once the worker acknowledged the new one, as
//!    the agent does); counts non-2xx answers and transport errors.
//!
//! Beside rates and latencies it records where the CPU went during each
//! HTTP measurement (from /proc): the worker's and the load generator's CPU
//! time per request, and how busy the whole machine was, so a ratio below
//! the aim can be told apart from a slow worker (a CPU-bound machine shared
//! by PostgreSQL, the worker and the load generator).
//!
//! Prints a markdown section and appends it to docs/benchmarks.md.

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use riskfeat_shared::atomic::{write_json_atomic, WriteOptions};
use riskfeat_shared::creds::DbCredential;
use riskfeat_tests::{wait_until, ChildProc, IssuedCreds, Stack, StackOptions};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Users to load.
    #[arg(long, default_value_t = 40_000)]
    users: u64,
    /// Transactions per user.
    #[arg(long, default_value_t = 50)]
    per_user: u64,
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 15)]
    duration: u64,
    /// Concurrencies to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    concurrency: Vec<usize>,
    /// Seconds of the rotation scenario (0 skips it).
    #[arg(long, default_value_t = 60)]
    rotation_duration: u64,
    /// Seconds between rotations.
    #[arg(long, default_value_t = 5)]
    rotate_every: u64,
    /// Who rotates in the rotation scenario: `agent` (the real
    /// riskfeat-agent, release build, on a second stack with max_ttl 10 s so
    /// that it rotates every ~5 s) or `bench` (the bench publishes a fresh
    /// credential every `--rotate-every` s and revokes the old lease after
    /// the worker's ack).
    #[arg(long, default_value = "agent", value_parser = ["agent", "bench"])]
    rotation_by: String,
    /// Worker pool size.
    #[arg(long, default_value_t = 8)]
    pool_size: usize,
    /// The worker's `worker_threads` (0 = one per CPU).
    #[arg(long, default_value_t = 0)]
    worker_threads: usize,
    /// Do not append to docs/benchmarks.md.
    #[arg(long)]
    no_record: bool,
}

/// The worker's `SQL_ONE` (worker/src/pool.rs) with `$1` = a random user
/// and `$2` = the default lookback of 50.
const PGBENCH_SQL: &str = "\\set uid random(1, :users)\n\
SELECT array_agg(s.a ORDER BY s.t DESC), array_agg(s.t ORDER BY s.t DESC) \
FROM (SELECT amount::float8 AS a, (extract(epoch FROM ts) * 1000000)::int8 AS t \
FROM transactions WHERE user_id = :uid ORDER BY ts DESC LIMIT 50) s;\n";

pub fn run(args: Args) -> anyhow::Result<()> {
    let root = crate::workspace_root();
    eprintln!("bench worker: building the release worker and agent");
    let status = std::process::Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "riskfeat-worker",
            "-p",
            "riskfeat-agent",
        ])
        .current_dir(&root)
        .status()
        .context("run cargo build --release")?;
    if !status.success() {
        bail!("cargo build --release -p riskfeat-worker -p riskfeat-agent failed");
    }
    let worker_bin = root.join("target/release/riskfeat-worker");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(bench(&args, &worker_bin))?;
    println!("{report}");
    if !args.no_record {
        let path = root.join("docs/benchmarks.md");
        let mut text = std::fs::read_to_string(&path).unwrap_or_default();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push('\n');
        text.push_str(&report);
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        eprintln!("bench worker: appended to {}", path.display());
    }
    Ok(())
}

fn credential(stack: &Stack, generation: u64, c: &IssuedCreds) -> DbCredential {
    let now = chrono::Utc::now();
    DbCredential {
        generation,
        username: c.username.clone(),
        password: riskfeat_shared::Secret::new(c.password.clone()),
        lease_id: c.lease_id.clone(),
        lease_duration_s: c.lease_duration,
        renewable: c.renewable,
        issued_at: now,
        expires_at: now + chrono::Duration::seconds(c.lease_duration as i64),
        fallback: false,
        primary: stack.pg.primary.endpoint(),
        replica: stack.pg.replica().endpoint(),
    }
}

async fn worker_generation(shared: &Path) -> Option<u64> {
    riskfeat_shared::ack::WorkerAck::load(&shared.join("worker.json")).map(|a| a.generation)
}

async fn bench(args: &Args, worker_bin: &Path) -> anyhow::Result<String> {
    eprintln!("bench worker: starting PostgreSQL primary + replica and OpenBao");
    let stack = Stack::start(StackOptions::default()).await?;
    let su = stack.pg.primary.connect_superuser().await?;
    let t = Instant::now();
    let n = riskfeat_tests::data::load(
        &su,
        riskfeat_tests::data::generate(args.users, args.per_user, 42),
    )
    .await?;
    su.batch_execute("ANALYZE transactions").await?;
    eprintln!(
        "bench worker: loaded {n} transactions in {:.1?}",
        t.elapsed()
    );
    stack.pg.wait_replica_caught_up().await?;
    let shared = stack.shared_dir.path().to_path_buf();
    let issued = stack.issue_creds().await?;
    let mut generation = 1u64;
    write_json_atomic(
        &shared.join("db.json"),
        &credential(&stack, generation, &issued),
        WriteOptions::SHARED,
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let cfg_dir = tempfile::tempdir()?;
    let cfg = cfg_dir.path().join("worker.toml");
    std::fs::write(
        &cfg,
        format!(
            "shared_dir = \"{}\"\nlisten = \"127.0.0.1:{port}\"\npool_size = {}\n\
             worker_threads = {}\nlog_level = \"warn\"\n",
            shared.display(),
            args.pool_size,
            args.worker_threads
        ),
    )?;
    let worker = ChildProc::spawn(worker_bin, &["run", "--config", cfg.to_str().unwrap()], &[])?;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let shared2 = shared.clone();
    wait_until(
        Duration::from_secs(60),
        "worker acknowledged generation 1",
        || {
            let s = shared2.clone();
            async move { worker_generation(&s).await == Some(1) }
        },
    )
    .await
    .with_context(|| worker.logs())?;

    let replica = stack.pg.replica();
    let mut rows = Vec::new();
    for &c in &args.concurrency {
        // Warm-up, then measure.
        let _ = load(addr, c, args.users, Duration::from_secs(2)).await?;
        let before = CpuSample::take(worker.pid());
        let mut http = load(addr, c, args.users, Duration::from_secs(args.duration)).await?;
        http.cpu = CpuSample::between(&before, CpuSample::take(worker.pid()), http.count);
        eprintln!("bench worker: HTTP c={c}: {:.0} req/s", http.rate);
        let before = CpuSample::take(worker.pid());
        let mut pg = pgbench(replica, &issued, c, args.users, args.duration)?;
        pg.cpu = CpuSample::between(&before, CpuSample::take(worker.pid()), pg.count);
        eprintln!("bench worker: pgbench c={c}: {:.0} tps", pg.rate);
        rows.push((c, http, pg));
    }

    let mut rotation = None;
    if args.rotation_duration > 0 && args.rotation_by == "agent" {
        drop(worker);
        drop(stack);
        let agent_bin = worker_bin.with_file_name("riskfeat-agent");
        return Ok(render(
            args,
            &rows,
            Some(agent_rotation(args, worker_bin, &agent_bin).await?),
        ));
    }
    if args.rotation_duration > 0 {
        let c = 16;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let tasks: Vec<_> = (0..c)
            .map(|i| {
                tokio::spawn(client_loop(
                    addr,
                    args.users,
                    i as u64,
                    stop.clone(),
                    counters.clone(),
                    None,
                ))
            })
            .collect();
        let start = Instant::now();
        let mut previous = issued.clone();
        let mut rotations = 0u64;
        while start.elapsed() < Duration::from_secs(args.rotation_duration) {
            tokio::time::sleep(Duration::from_secs(args.rotate_every)).await;
            let fresh = stack.issue_creds().await?;
            generation += 1;
            write_json_atomic(
                &shared.join("db.json"),
                &credential(&stack, generation, &fresh),
                WriteOptions::SHARED,
            )?;
            let s = shared.clone();
            let g = generation;
            wait_until(
                Duration::from_secs(30),
                "worker acknowledged the new generation",
                || {
                    let s = s.clone();
                    async move { worker_generation(&s).await == Some(g) }
                },
            )
            .await
            .with_context(|| worker.logs())?;
            // Give the old pool time to drain, then revoke like the agent.
            tokio::time::sleep(Duration::from_millis(500)).await;
            stack
                .bao
                .api(
                    reqwest::Method::PUT,
                    "sys/leases/revoke",
                    Some(serde_json::json!({"lease_id": previous.lease_id})),
                )
                .await?;
            previous = fresh;
            rotations += 1;
        }
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await??;
        }
        rotation = Some((
            format!(
                "a fresh credential published by the bench every {} s (old lease revoked after \
                 the worker's ack, as the agent does)",
                args.rotate_every
            ),
            rotations,
            start.elapsed(),
            counters.ok.load(Ordering::Relaxed),
            counters.non_2xx.load(Ordering::Relaxed),
            counters.transport.load(Ordering::Relaxed),
            String::new(),
        ));
    }
    drop(worker);
    Ok(render(args, &rows, rotation))
}

/// (how, rotations, duration, 2xx, non-2xx, transport errors, notes).
type Rotation = (String, u64, Duration, u64, u64, u64, String);

/// The rotation scenario with the real agent on its own stack (default_ttl
/// 5 s, max_ttl 10 s, rotate_lead_s 5: a new credential every ~5 s).
async fn agent_rotation(
    args: &Args,
    worker_bin: &Path,
    agent_bin: &Path,
) -> anyhow::Result<Rotation> {
    eprintln!("bench worker: rotation scenario with the real agent (second stack)");
    let stack = Stack::start(StackOptions {
        default_ttl: Duration::from_secs(5),
        max_ttl: Duration::from_secs(10),
        ..Default::default()
    })
    .await?;
    let su = stack.pg.primary.connect_superuser().await?;
    riskfeat_tests::data::load(
        &su,
        riskfeat_tests::data::generate(args.users, args.per_user, 42),
    )
    .await?;
    su.batch_execute("ANALYZE transactions").await?;
    stack.pg.wait_replica_caught_up().await?;
    let shared = stack.shared_dir.path().to_path_buf();
    let primary = stack.pg.primary.endpoint();
    let replica = stack.pg.replica().endpoint();
    let dir = tempfile::tempdir()?;
    let agent_cfg = dir.path().join("agent.toml");
    std::fs::write(
        &agent_cfg,
        format!(
            "shared_dir = \"{}\"\nmetrics_addr = \"127.0.0.1:0\"\nlog_level = \"warn\"\n\
             [vault]\naddr = \"{}\"\nrole_id_file = \"{}\"\nsecret_id_file = \"{}\"\n\
             [database]\nprimary = {{ host = \"{}\", port = {}, dbname = \"{}\" }}\n\
             replica = {{ host = \"{}\", port = {}, dbname = \"{}\" }}\n\
             [lifecycle]\nrotate_lead_s = 5\nmax_ttl_hint_s = 10\nack_grace_s = 60\n\
             max_issuances_per_minute = 60\nbackoff_initial_s = 0.2\nbackoff_max_s = 2.0\n",
            shared.display(),
            stack.vault_addr(),
            stack.approle.role_id_file.display(),
            stack.approle.secret_id_file.display(),
            primary.host,
            primary.port,
            primary.dbname,
            replica.host,
            replica.port,
            replica.dbname
        ),
    )?;
    let agent = ChildProc::spawn(
        agent_bin,
        &["run", "--config", agent_cfg.to_str().unwrap()],
        &[],
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let cfg = dir.path().join("worker.toml");
    std::fs::write(
        &cfg,
        format!(
            "shared_dir = \"{}\"\nlisten = \"127.0.0.1:{port}\"\npool_size = {}\n\
             worker_threads = {}\nlog_level = \"warn\"\n",
            shared.display(),
            args.pool_size,
            args.worker_threads
        ),
    )?;
    let worker = ChildProc::spawn(worker_bin, &["run", "--config", cfg.to_str().unwrap()], &[])?;
    let s = shared.clone();
    wait_until(
        Duration::from_secs(60),
        "worker acknowledged a credential",
        || {
            let s = s.clone();
            async move { worker_generation(&s).await.is_some() }
        },
    )
    .await
    .with_context(|| format!("agent:\n{}\nworker:\n{}", agent.logs(), worker.logs()))?;
    let first = worker_generation(&shared).await.unwrap_or(0);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            tokio::spawn(client_loop(
                addr,
                args.users,
                i as u64,
                stop.clone(),
                counters.clone(),
                None,
            ))
        })
        .collect();
    let start = Instant::now();
    let agent_cpu_before = proc_cpu_s(&format!("/proc/{}/stat", agent.pid()), 11);
    tokio::time::sleep(Duration::from_secs(args.rotation_duration)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    let last = worker_generation(&shared).await.unwrap_or(0);
    let agent_cpu = proc_cpu_s(&format!("/proc/{}/stat", agent.pid()), 11)
        .zip(agent_cpu_before)
        .map(|(b, a)| b - a);
    let notes = format!(
        "Release riskfeat-agent after these rotations: {}; CPU {} over the {:.0} s. \
         Release riskfeat-worker: {}.",
        memory(agent.pid()),
        agent_cpu.map_or("unknown".into(), |c| format!("{c:.2} s")),
        start.elapsed().as_secs_f64(),
        memory(worker.pid()),
    );
    drop(worker);
    drop(agent);
    Ok((
        "the real riskfeat-agent rotating (default_ttl 5 s, max_ttl 10 s, rotate_lead_s 5; \
         it revokes each old lease after the worker's ack)"
            .to_string(),
        last.saturating_sub(first),
        start.elapsed(),
        counters.ok.load(Ordering::Relaxed),
        counters.non_2xx.load(Ordering::Relaxed),
        counters.transport.load(Ordering::Relaxed),
        notes,
    ))
}

/// "VmHWM x MB, VmRSS y MB" of a process, from /proc/<pid>/status.
fn memory(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or("?".to_string(), |kb| format!("{:.1} MB", kb / 1024.0))
    };
    format!(
        "peak RSS (VmHWM) {}, RSS {}",
        field("VmHWM:"),
        field("VmRSS:")
    )
}

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    non_2xx: AtomicU64,
    transport: AtomicU64,
}

/// Results of one measurement.
struct Measured {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    count: u64,
    errors: u64,
    /// Where the CPU went (HTTP measurements only).
    cpu: Option<CpuUse>,
}

/// CPU counters at one moment, from /proc (Linux).
struct CpuSample {
    /// The worker's utime + stime, seconds.
    worker_s: f64,
    /// This process's (the load generator's) utime + stime, seconds.
    loadgen_s: f64,
    /// Its waited-for children's (pgbench's) cutime + cstime, seconds.
    children_s: f64,
    /// Machine-wide (busy, total) jiffies from /proc/stat.
    machine: (u64, u64),
}

/// CPU use over a measurement.
#[derive(Clone, Copy)]
struct CpuUse {
    worker_us_per_req: f64,
    loadgen_us_per_req: f64,
    /// pgbench's (a waited-for child's) CPU per transaction.
    children_us_per_req: f64,
    /// Busy share of all cores, 0..=1.
    machine_busy: f64,
}

impl CpuSample {
    fn take(worker_pid: u32) -> Option<CpuSample> {
        Some(CpuSample {
            worker_s: proc_cpu_s(&format!("/proc/{worker_pid}/stat"), 11)?,
            loadgen_s: proc_cpu_s("/proc/self/stat", 11)?,
            children_s: proc_cpu_s("/proc/self/stat", 13)?,
            machine: machine_jiffies()?,
        })
    }

    /// CPU use between two samples (either may be missing off Linux).
    fn between(before: &Option<Self>, after: Option<Self>, requests: u64) -> Option<CpuUse> {
        let (a, b) = (before.as_ref()?, after?);
        let n = requests.max(1) as f64;
        let total = b.machine.1.saturating_sub(a.machine.1).max(1) as f64;
        Some(CpuUse {
            worker_us_per_req: (b.worker_s - a.worker_s) * 1e6 / n,
            loadgen_us_per_req: (b.loadgen_s - a.loadgen_s) * 1e6 / n,
            children_us_per_req: (b.children_s - a.children_s) * 1e6 / n,
            machine_busy: b.machine.0.saturating_sub(a.machine.0) as f64 / total,
        })
    }
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// Two adjacent CPU-time fields of a `/proc/<pid>/stat` file, summed, in
/// seconds: `at` = 11 for utime + stime, 13 for cutime + cstime (indices
/// counted after the `(comm)` field).
fn proc_cpu_s(path: &str, at: usize) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses:
    // state is field 3, utime 14 and stime 15.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(at)?.parse::<u64>().ok()? + f.get(at + 1)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

/// (busy, total) jiffies of all CPUs from the first line of /proc/stat.
fn machine_jiffies() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = text
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    // idle and iowait are fields 4 and 5.
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// One client: a keep-alive connection, GETs of random users until `stop`;
/// latencies (µs) pushed into `lat` when given.
async fn client_loop(
    addr: std::net::SocketAddr,
    users: u64,
    seed: u64,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    mut lat: Option<&mut Vec<u32>>,
) -> anyhow::Result<()> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut sender: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> = None;
    while !stop.load(Ordering::Relaxed) {
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    let (s, conn) =
                        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                            .await?;
                    tokio::spawn(conn);
                    sender = Some(s);
                }
                Err(_) => {
                    counters.transport.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let s = sender.as_mut().expect("connected");
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let user = (x >> 33) % users + 1;
        let req = hyper::Request::get(format!("/v1/features/{user}"))
            .header("host", "bench")
            .body(Empty::<Bytes>::new())?;
        let t = Instant::now();
        let result = async {
            s.ready().await?;
            let resp = s.send_request(req).await?;
            let status = resp.status();
            resp.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        }
        .await;
        let us = t.elapsed().as_micros().min(u32::MAX as u128) as u32;
        match result {
            Ok(st) if st.is_success() => {
                counters.ok.fetch_add(1, Ordering::Relaxed);
                if let Some(l) = lat.as_deref_mut() {
                    l.push(us);
                }
            }
            Ok(_) => {
                counters.non_2xx.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                counters.transport.fetch_add(1, Ordering::Relaxed);
                sender = None;
            }
        }
    }
    Ok(())
}

async fn load(
    addr: std::net::SocketAddr,
    c: usize,
    users: u64,
    duration: Duration,
) -> anyhow::Result<Measured> {
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let tasks: Vec<_> = (0..c)
        .map(|i| {
            let (stop, counters) = (stop.clone(), counters.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(1 << 16);
                client_loop(addr, users, i as u64 + 7, stop, counters, Some(&mut lat)).await?;
                Ok::<_, anyhow::Error>(lat)
            })
        })
        .collect();
    let start = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return 0.0;
        }
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        all[i] as f64 / 1000.0
    };
    Ok(Measured {
        rate: all.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        count: all.len() as u64,
        errors: counters.non_2xx.load(Ordering::Relaxed)
            + counters.transport.load(Ordering::Relaxed),
        cpu: None,
    })
}

fn pgbench_bin() -> String {
    let p = "/usr/lib/postgresql/15/bin/pgbench";
    if Path::new(p).exists() {
        p.into()
    } else {
        "pgbench".into()
    }
}

fn pgbench(
    replica: &riskfeat_tests::PgServer,
    creds: &IssuedCreds,
    c: usize,
    users: u64,
    duration: u64,
) -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("features.sql");
    std::fs::write(&script, PGBENCH_SQL)?;
    let prefix = dir.path().join("pgb");
    let out = std::process::Command::new(pgbench_bin())
        .args([
            "-n",
            "-M",
            "prepared",
            "-c",
            &c.to_string(),
            "-j",
            &c.min(2).to_string(),
            "-T",
            &duration.to_string(),
            "-D",
            &format!("users={users}"),
            "-f",
            script.to_str().unwrap(),
            "-l",
            "--log-prefix",
            prefix.to_str().unwrap(),
            "-h",
            &replica.host,
            "-p",
            &replica.port.to_string(),
            "-U",
            &creds.username,
            &replica.dbname,
        ])
        .env("PGPASSWORD", &creds.password)
        .output()
        .context("run pgbench")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed: {}\n{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rate = stdout
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("tps = ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .context("no tps in pgbench output")?;
    let mut lat: Vec<u32> = Vec::new();
    for entry in std::fs::read_dir(dir.path())? {
        let path = entry?.path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("pgb")
        {
            for line in std::fs::read_to_string(&path)?.lines() {
                if let Some(us) = line.split_whitespace().nth(2).and_then(|v| v.parse().ok()) {
                    lat.push(us);
                }
            }
        }
    }
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    Ok(Measured {
        rate,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        count: lat.len() as u64,
        errors: 0,
        cpu: None,
    })
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    format!("{cpus} CPUs (nproc), {model}; 1-min load average {load} when the report was written (other work on the machine skews the figures)")
}

fn render(args: &Args, rows: &[(usize, Measured, Measured)], rotation: Option<Rotation>) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "## riskfeat-worker vs pgbench ({})\n\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    ));
    s.push_str(&format!(
        "Machine: {}. Command: `cargo xtask bench worker` (users {}, per_user {}, {} s per \
         measurement, pool_size {}, worker_threads {}). Data: {} transactions; worker = release build over \
         HTTP/1.1 keep-alive (one connection per client, random users, load generator in \
         the same machine); pgbench = the worker's single-user query, `-M prepared`, same \
         credential, same replica, same concurrency. PostgreSQL, worker and load generator \
         share the cores.\n\n",
        machine(),
        args.users,
        args.per_user,
        args.duration,
        args.pool_size,
        args.worker_threads,
        args.users * args.per_user
    ));
    s.push_str("| concurrency | worker req/s | worker p50 ms | worker p99 ms | pgbench tps | pgbench p50 ms | pgbench p99 ms | worker / pgbench | worker errors |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for (c, h, p) in rows {
        s.push_str(&format!(
            "| {c} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {:.0}% | {} |\n",
            h.rate,
            h.p50_ms,
            h.p99_ms,
            p.rate,
            p.p50_ms,
            p.p99_ms,
            if p.rate > 0.0 {
                100.0 * h.rate / p.rate
            } else {
                0.0
            },
            h.errors
        ));
        let _ = (h.count, p.count);
    }
    if rows
        .iter()
        .any(|(_, h, p)| h.cpu.is_some() && p.cpu.is_some())
    {
        s.push_str(
            "\nWhere the CPU went (from /proc, during each measurement): CPU time per \
             request of the worker, of the client (the Rust load generator for HTTP, pgbench \
             for SQL), and how busy all cores were. PostgreSQL's share is the rest.\n\n",
        );
        s.push_str("| concurrency | worker CPU µs/req | load generator CPU µs/req | machine busy (HTTP) | pgbench CPU µs/tx | machine busy (pgbench) |\n");
        s.push_str("|---|---|---|---|---|---|\n");
        for (c, h, p) in rows {
            if let (Some(hc), Some(pc)) = (h.cpu, p.cpu) {
                s.push_str(&format!(
                    "| {c} | {:.0} | {:.0} | {:.0}% | {:.0} | {:.0}% |\n",
                    hc.worker_us_per_req,
                    hc.loadgen_us_per_req,
                    100.0 * hc.machine_busy,
                    pc.children_us_per_req,
                    100.0 * pc.machine_busy,
                ));
            }
        }
    }
    if let Some((how, rotations, took, ok, non2xx, transport, notes)) = rotation {
        s.push_str(&format!(
            "\nRotation: {:.0} s of load at concurrency 16 with {how}: {rotations} rotations, \
             {ok} answers 2xx, **{non2xx} non-2xx**, {transport} transport errors.\n",
            took.as_secs_f64(),
        ));
        if !notes.is_empty() {
            s.push_str(&format!("\n{notes}\n"));
        }
    }
    s
}
