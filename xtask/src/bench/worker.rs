//! `cargo xtask bench worker`: the worker over HTTP against pgbench running
//! the worker's own SQL (the ceiling), and a rotation scenario.
//!
//! 1. Starts the harness (PostgreSQL primary + streaming replica, OpenBao),
//!    loads `users x per_user` transactions (default 40k x 50 = 2M) with
//!    `riskfeat_tests::data`, waits for the replica.
//! 2. Issues a dynamic credential through the AppRole, publishes it in
//!    `db.json` and starts the RELEASE worker ([`Worker::spawn_bin`]).
//! 3. For `--rounds` rounds, at each concurrency C (default 1, 8, 16, 64):
//!    `wrk` with C keep-alive connections and a random user per request
//!    ([`super::wrk`]), and pgbench on the worker's single-user statement
//!    with C clients ([`super::pgbench`]: `-M prepared`, same credential,
//!    same replica), `--seconds` each; odd rounds run the worker first,
//!    even rounds pgbench first. Client-side p50/p99/p99.9/max of both,
//!    throughput, non-2xx answers and the ratio worker/pgbench.
//! 4. Rotation: `--rotation-duration` seconds of wrk at C=16 while the real
//!    agent ([`Agent::spawn_bin`], on a second stack with short leases)
//!    rotates the credential every ~5 s, or while the bench publishes one
//!    every `--rotate-every` s (`--rotation-by bench`); counts non-2xx
//!    answers and socket errors.
//!
//! Beside rates and latencies it records where the CPU went during each
//! measurement (from /proc): the worker's and the client's (wrk's or
//! pgbench's) CPU time per request, and how busy the whole machine was, so a
//! ratio below the aim can be told apart from a slow worker (a CPU-bound
//! machine shared by PostgreSQL, the worker and the load generator).
//!
//! Prints a markdown section and appends it to docs/benchmarks.md.

use super::cpus::{Placement, Split};
use super::pgbench::{self, PgbenchResult};
use super::wrk::{self, WrkResult};
use super::{cpu_s, machine, memory, CpuOf, CpuSample, CpuUse, TcpCounters};
use anyhow::Context;
use riskfeat_shared::atomic::{write_json_atomic, WriteOptions};
use riskfeat_shared::creds::DbCredential;
use riskfeat_tests::{Agent, AgentToml, IssuedCreds, Stack, StackOptions, Worker};
use std::path::Path;
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
    seconds: u64,
    /// Rounds over all concurrencies (worker and pgbench alternating).
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// Concurrencies to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8,16,64")]
    concurrency: Vec<usize>,
    /// Seconds of the rotation scenario (0 skips it).
    #[arg(long, default_value_t = 60)]
    rotation_duration: u64,
    /// Seconds between rotations (`--rotation-by bench`).
    #[arg(long, default_value_t = 5)]
    rotate_every: u64,
    /// Who rotates in the rotation scenario: `agent` (the real
    /// riskfeat-agent, release build, on a second stack with max_ttl 10 s so
    /// that it rotates every ~5 s) or `bench` (the bench publishes a fresh
    /// credential every `--rotate-every` s and revokes the old lease after
    /// the worker's ack).
    #[arg(long, default_value = "agent", value_parser = ["agent", "bench"])]
    rotation_by: String,
    /// Worker pool size (16, the prod overlay's: a pool smaller than the
    /// concurrency keeps its backends always runnable, and on a saturated
    /// box they then wait for a CPU for hundreds of ms; docs/benchmarks.md
    /// "Where the C=16 stall is").
    #[arg(long, default_value_t = 16)]
    pool_size: usize,
    /// The worker's `worker_threads` (0 = one per CPU).
    #[arg(long, default_value_t = 0)]
    worker_threads: usize,
    /// Where the processes run: `split` (PostgreSQL on CPUs of its own,
    /// the worker, the agent, OpenBao and the load generators on the others,
    /// as when the replica is another machine) or `shared` (the scheduler
    /// places everything anywhere; see docs/benchmarks.md for what that does
    /// to PostgreSQL's backends on two CPUs).
    #[arg(long, value_enum, default_value_t = Placement::Split)]
    cpus: Placement,
    /// Do not append to docs/benchmarks.md.
    #[arg(long)]
    no_record: bool,
}

/// Concurrency of the rotation scenario.
const ROTATION_CLIENTS: usize = 16;
/// How long the worker may take to come up or to take a new credential.
const WORKER_WAIT: Duration = Duration::from_secs(60);

pub fn run(args: Args) -> anyhow::Result<()> {
    wrk::ensure_installed()?;
    let packages = ["riskfeat-worker", "riskfeat-agent"];
    super::run_bench("worker", &packages, args.no_record, |release| async move {
        bench(&args, &release).await
    })
}

/// The pgbench script: the worker's own single-user statement
/// (`Source::default().sql().one`, the seed's table) with the parameters
/// the worker passes: `$1` a random user in `1..=users`, `$2` the default
/// lookback, `$3` and `$4` the starts of the default short and long windows
/// before "now" (`now_us`, fixed by the bench, µs since the epoch).
pub(super) fn pgbench_script(users: u64, now_us: i64) -> anyhow::Result<String> {
    let p = riskfeat_worker::params::FeatureParams::default();
    let start = |window_s: u64| (now_us - window_s as i64 * 1_000_000).to_string();
    pgbench::script(
        &riskfeat_worker::source::Source::default().sql().one,
        &[
            ("uid", format!("random(1, {users})")),
            ("lookback", p.lookback.to_string()),
            ("short_start", start(p.short_window_s)),
            ("long_start", start(p.long_window_s)),
        ],
    )
}

/// One measurement of either side, client-side figures.
#[derive(Debug, Clone, Copy, Default)]
struct Measured {
    rate: f64,
    count: u64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    non_2xx: u64,
    socket_errors: u64,
    cpu: Option<CpuUse>,
    /// The worker's own histogram over the measurement (HTTP only).
    own: Option<OwnHistogram>,
    /// TCP retransmissions on the machine during the measurement.
    tcp: TcpCounters,
    /// p99 and p99.9 without wrk's correction (pgbench only).
    raw_p99_p999_us: Option<(u64, u64)>,
}

impl From<WrkResult> for Measured {
    fn from(w: WrkResult) -> Measured {
        Measured {
            rate: w.rate(),
            count: w.requests,
            p50_us: w.p50_us,
            p99_us: w.p99_us,
            p999_us: w.p999_us,
            max_us: w.max_us,
            non_2xx: w.non_2xx,
            socket_errors: w.socket_errors,
            cpu: None,
            own: None,
            tcp: TcpCounters::default(),
            raw_p99_p999_us: None,
        }
    }
}

impl From<PgbenchResult> for Measured {
    fn from(p: PgbenchResult) -> Measured {
        Measured {
            rate: p.tps,
            count: p.transactions,
            p50_us: p.p50_us,
            p99_us: p.p99_us,
            p999_us: p.p999_us,
            max_us: p.max_us,
            raw_p99_p999_us: Some((p.raw_p99_us, p.raw_p999_us)),
            ..Measured::default()
        }
    }
}

/// The features route's series of the worker's request-duration histogram.
const OWN_BUCKET: &str =
    "riskfeat_worker_http_request_duration_seconds_bucket{route=\"/v1/features/{user_id}\",status=\"200\",le=\"";

/// `(le seconds, cumulative count)` of the features route from `/metrics`
/// (empty when unreachable).
async fn own_buckets(worker: &Worker) -> Vec<(f64, u64)> {
    let page = worker.metrics().await.unwrap_or_default();
    page.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(OWN_BUCKET)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse::<f64>().ok()? as u64))
        })
        .collect()
}

/// What the worker's own histogram (time inside the handler) saw during a
/// measurement: the bucket bounds its p99 and p99.9 fall under.
#[derive(Debug, Clone, Copy)]
struct OwnHistogram {
    p99_le_s: f64,
    p999_le_s: f64,
}

impl OwnHistogram {
    fn between(before: &[(f64, u64)], after: &[(f64, u64)]) -> Option<OwnHistogram> {
        let delta: Vec<(f64, u64)> = after
            .iter()
            .map(|&(le, n)| {
                let was = before.iter().find(|b| b.0 == le).map_or(0, |b| b.1);
                (le, n.saturating_sub(was))
            })
            .collect();
        let total = delta.last()?.1;
        let under = |q: f64| {
            delta
                .iter()
                .find(|(_, n)| *n as f64 >= q * total as f64)
                .map_or(f64::INFINITY, |b| b.0)
        };
        (total > 0).then(|| OwnHistogram {
            p99_le_s: under(0.99),
            p999_le_s: under(0.999),
        })
    }
}

/// One concurrency in one round.
struct Row {
    round: u32,
    c: usize,
    http: Measured,
    pg: Measured,
}

/// What the rotation scenario saw.
struct Rotation {
    how: String,
    rotations: u64,
    load: WrkResult,
    notes: String,
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

/// Publishes `c` as credential `generation` in the stack's `db.json`.
fn publish(stack: &Stack, generation: u64, c: &IssuedCreds) -> anyhow::Result<()> {
    write_json_atomic(
        &stack.shared_dir.path().join("db.json"),
        &credential(stack, generation, c),
        WriteOptions::SHARED,
    )?;
    Ok(())
}

/// The split of `--cpus split`, `None` for `shared`.
fn split(args: &Args) -> anyhow::Result<Option<Split>> {
    match args.cpus {
        Placement::Split => Split::of_this_machine().map(Some),
        Placement::Shared => Ok(None),
    }
}

/// A stack with the bench's data loaded and replicated; with `--cpus
/// split`, this process (so everything it starts) on the clients' CPUs and
/// both PostgreSQL servers on the database's.
async fn stack_with_data(args: &Args, opts: StackOptions) -> anyhow::Result<Stack> {
    let split = split(args)?;
    if let Some(s) = &split {
        s.pin_this_process()?;
    }
    eprintln!("bench worker: starting PostgreSQL primary + replica and OpenBao");
    let stack = Stack::start(opts).await?;
    let su = stack.pg.primary.connect_superuser().await?;
    let t = Instant::now();
    let rows = riskfeat_tests::data::generate(args.users, args.per_user, 42);
    let n = riskfeat_tests::data::load(&su, rows).await?;
    su.batch_execute("ANALYZE transactions").await?;
    eprintln!(
        "bench worker: loaded {n} transactions in {:.1?}",
        t.elapsed()
    );
    stack.pg.wait_replica_caught_up().await?;
    if let Some(s) = &split {
        let servers = [Some(&stack.pg.primary), stack.pg.replica.as_ref()];
        for pg in servers.into_iter().flatten() {
            let postmaster = pg.pid().context("PostgreSQL is not running")?;
            let n = s.pin_postgres(postmaster)?;
            eprintln!("bench worker: {n} PostgreSQL processes of {postmaster} pinned");
        }
    }
    Ok(stack)
}

/// The release worker on the stack's shared dir.
fn spawn_worker(args: &Args, release: &Path, stack: &Stack) -> anyhow::Result<Worker> {
    Worker::spawn_bin(
        &release.join("riskfeat-worker"),
        stack.shared_dir.path(),
        &format!(
            "pool_size = {}\nworker_threads = {}\nlog_level = \"warn\"",
            args.pool_size, args.worker_threads
        ),
    )
}

/// The credential generation the worker serves with.
async fn generation(worker: &Worker) -> Option<u64> {
    worker.status().await.ok()?["credential"]["generation"].as_u64()
}

async fn bench(args: &Args, release: &Path) -> anyhow::Result<String> {
    let stack = stack_with_data(args, StackOptions::default()).await?;
    let issued = stack.issue_creds().await?;
    publish(&stack, 1, &issued)?;
    let worker = spawn_worker(args, release, &stack)?;
    worker.wait_generation(1, WORKER_WAIT).await?;
    let base = worker.http().base().to_string();
    let script = pgbench_script(args.users, chrono::Utc::now().timestamp_micros())?;
    let replica = stack.pg.replica();
    let duration = Duration::from_secs(args.seconds);

    let warm = args.concurrency.iter().copied().max().unwrap_or(16);
    wrk::run(&base, args.users, warm, Duration::from_secs(2)).await?;
    let mut rows = Vec::new();
    for round in 1..=args.rounds.max(1) {
        for &c in &args.concurrency {
            let mut row = Row {
                round,
                c,
                http: Measured::default(),
                pg: Measured::default(),
            };
            for pg_turn in [round % 2 == 0, round % 2 == 1] {
                let before = CpuSample::take(worker.pid());
                let tcp = TcpCounters::take();
                let (what, m) = if pg_turn {
                    let r = pgbench::run(replica, &issued, &script, c, duration).await?;
                    row.pg = r.into();
                    ("pgbench", &mut row.pg)
                } else {
                    let before = own_buckets(&worker).await;
                    row.http = wrk::run(&base, args.users, c, duration).await?.into();
                    let after = own_buckets(&worker).await;
                    row.http.own = OwnHistogram::between(&before, &after);
                    ("worker", &mut row.http)
                };
                m.cpu = before.and_then(|b| b.until_now(worker.pid(), m.count));
                m.tcp = tcp.until_now();
                eprintln!(
                    "bench worker: round {round} c={c} {what}: {:.0}/s, p99 {:.2} ms",
                    m.rate,
                    m.p99_us as f64 / 1000.0
                );
            }
            rows.push(row);
        }
    }

    let rotation = match args.rotation_duration {
        0 => None,
        _ if args.rotation_by == "agent" => {
            drop(worker);
            drop(stack);
            Some(agent_rotation(args, release).await?)
        }
        _ => Some(bench_rotation(args, &stack, &worker, issued).await?),
    };
    Ok(render(args, &rows, rotation))
}

/// wrk at [`ROTATION_CLIENTS`] for the rotation scenario, in the background.
fn rotation_load(
    args: &Args,
    worker: &Worker,
) -> tokio::task::JoinHandle<anyhow::Result<WrkResult>> {
    let base = worker.http().base().to_string();
    let (users, d) = (args.users, Duration::from_secs(args.rotation_duration));
    tokio::spawn(async move { wrk::run(&base, users, ROTATION_CLIENTS, d).await })
}

/// The bench publishes a fresh credential every `--rotate-every` s and
/// revokes the previous lease once the worker took the new one (as the
/// agent does), under load.
async fn bench_rotation(
    args: &Args,
    stack: &Stack,
    worker: &Worker,
    mut previous: IssuedCreds,
) -> anyhow::Result<Rotation> {
    let load = rotation_load(args, worker);
    let start = Instant::now();
    let mut rotations = 0u64;
    while start.elapsed() + Duration::from_secs(args.rotate_every)
        < Duration::from_secs(args.rotation_duration)
    {
        tokio::time::sleep(Duration::from_secs(args.rotate_every)).await;
        let fresh = stack.issue_creds().await?;
        rotations += 1;
        publish(stack, rotations + 1, &fresh)?;
        worker.wait_generation(rotations + 1, WORKER_WAIT).await?;
        // Give the old pool time to drain, then revoke like the agent.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let revoke = serde_json::json!({"lease_id": previous.lease_id});
        stack
            .bao
            .api(reqwest::Method::PUT, "sys/leases/revoke", Some(revoke))
            .await?;
        previous = fresh;
    }
    Ok(Rotation {
        how: format!(
            "a fresh credential published by the bench every {} s (old lease revoked after \
             the worker's ack, as the agent does)",
            args.rotate_every
        ),
        rotations,
        load: load.await??,
        notes: String::new(),
    })
}

/// The rotation scenario with the real agent on its own stack (default_ttl
/// 5 s, max_ttl 10 s, rotate_lead_s 5: a new credential every ~5 s).
async fn agent_rotation(args: &Args, release: &Path) -> anyhow::Result<Rotation> {
    eprintln!("bench worker: rotation scenario with the real agent (second stack)");
    let opts = StackOptions {
        default_ttl: Duration::from_secs(5),
        max_ttl: Duration::from_secs(10),
        ..Default::default()
    };
    let stack = stack_with_data(args, opts).await?;
    let dir = tempfile::tempdir()?;
    let agent_cfg = stack.write_agent_toml(
        dir.path(),
        AgentToml {
            top: "log_level = \"warn\"",
            sections: "[lifecycle]\nrotate_lead_s = 5\nmax_ttl_hint_s = 10\nack_grace_s = 60\n\
                       max_issuances_per_minute = 60\nbackoff_initial_s = 0.2\nbackoff_max_s = 2.0\n",
            ..Default::default()
        },
    )?;
    let agent_bin = release.join("riskfeat-agent");
    let agent = Agent::spawn_bin(&agent_bin, &agent_cfg, stack.shared_dir.path(), &[])?;
    let worker = spawn_worker(args, release, &stack)?;
    worker
        .wait_ready(WORKER_WAIT)
        .await
        .with_context(|| format!("agent:\n{}", agent.logs()))?;
    let first = generation(&worker).await.unwrap_or(0);
    let agent_cpu_before = cpu_s(Some(agent.pid()), CpuOf::Own);
    let start = Instant::now();
    let load = rotation_load(args, &worker).await??;
    let last = generation(&worker).await.unwrap_or(0);
    let agent_cpu = cpu_s(Some(agent.pid()), CpuOf::Own)
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
    Ok(Rotation {
        how: "the real riskfeat-agent rotating (default_ttl 5 s, max_ttl 10 s, rotate_lead_s 5; \
              it revokes each old lease after the worker's ack)"
            .to_string(),
        rotations: last.saturating_sub(first),
        load,
        notes,
    })
}

/// "p50 / p99 / p99.9 / max" in ms.
fn latencies(m: &Measured) -> String {
    let ms = |us: u64| us as f64 / 1000.0;
    format!(
        "{:.2} / {:.2} / {:.2} / {:.1}",
        ms(m.p50_us),
        ms(m.p99_us),
        ms(m.p999_us),
        ms(m.max_us)
    )
}

fn render(args: &Args, rows: &[Row], rotation: Option<Rotation>) -> String {
    // The same decision as the stack's (`split` fails before any stack is up).
    let (cpus_flag, placement) = match split(args) {
        Ok(Some(s)) => ("split", s.describe()),
        _ => (
            "shared",
            "shared: PostgreSQL, the worker and the load generators on every CPU".to_string(),
        ),
    };
    let mut s = format!(
        "## riskfeat-worker vs pgbench ({})\n\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    s.push_str(&format!(
        "Machine: {}. Command: `cargo xtask bench worker --seconds {} --rounds {} --cpus {}` \
         (users {}, per_user {}, concurrency {:?}, pool_size {}, worker_threads {}). Data: {} \
         transactions. CPUs: {}. \
         worker = release build over HTTP/1.1 keep-alive, load from `wrk` (one connection per \
         client, a random user per request, latencies measured by wrk; \"own\" = the bucket \
         bounds of the worker's p99 and p99.9 in its request-duration histogram, time inside \
         the handler, over the same requests); pgbench = the worker's \
         own single-user statement, `-M prepared`, same credential, same replica, same \
         concurrency, latencies from its per-transaction log (`-l`). wrk corrects its \
         latencies for coordinated omission before reporting them (each latency L of at least \
         twice the mean interval i adds samples L-i, L-2i, ...: what a client at a steady \
         pace would have seen behind a stall), so pgbench's percentiles get the same \
         correction; its uncorrected ones are beside them. Maxima are real samples. Worker and pgbench \
         alternate at each concurrency (odd rounds the worker first).\n\n",
        machine(),
        args.seconds,
        args.rounds,
        cpus_flag,
        args.users,
        args.per_user,
        args.concurrency,
        args.pool_size,
        args.worker_threads,
        args.users * args.per_user,
        placement,
    ));
    s.push_str(
        "| C | round | worker req/s | worker p50 / p99 / p99.9 / max ms | worker non-2xx | \
         worker's own p99 / p99.9 | pgbench tps | pgbench p50 / p99 / p99.9 / max ms | pgbench \
         uncorrected p99 / p99.9 ms | worker / pgbench |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let ratio = if r.pg.rate > 0.0 {
            format!("{:.0}%", 100.0 * r.http.rate / r.pg.rate)
        } else {
            "-".into()
        };
        let errors = match r.http.socket_errors {
            0 => r.http.non_2xx.to_string(),
            n => format!("{} (+{n} socket errors)", r.http.non_2xx),
        };
        let raw = r.pg.raw_p99_p999_us.map_or("-".into(), |(a, b)| {
            format!("{:.2} / {:.2}", a as f64 / 1000.0, b as f64 / 1000.0)
        });
        let own = r.http.own.map_or("-".into(), |o| {
            let ms = |s: f64| format!("<= {} ms", s * 1000.0);
            format!("{} / {}", ms(o.p99_le_s), ms(o.p999_le_s))
        });
        s.push_str(&format!(
            "| {} | {} | {:.0} | {} | {errors} | {own} | {:.0} | {} | {raw} | {ratio} |\n",
            r.c,
            r.round,
            r.http.rate,
            latencies(&r.http),
            r.pg.rate,
            latencies(&r.pg),
        ));
    }
    if rows
        .iter()
        .any(|r| r.http.cpu.is_some() && r.pg.cpu.is_some())
    {
        s.push_str(
            "\nWhere the CPU went (from /proc, during each measurement): CPU time per request \
             of the worker and of the client (wrk for HTTP, pgbench for SQL), and how busy all \
             cores were. PostgreSQL's share is the rest. \"Worker waits\": how long the \
             worker's threads were runnable but had no CPU, ms per second (summed over its \
             threads, `/proc/<pid>/task/*/schedstat`).\n\n\
             | C | round | worker CPU µs/req | worker waits ms/s | wrk CPU µs/req | machine busy \
             (HTTP) | pgbench CPU µs/tx | machine busy (pgbench) |\n\
             |---|---|---|---|---|---|---|---|\n",
        );
        for r in rows {
            if let (Some(h), Some(p)) = (r.http.cpu, r.pg.cpu) {
                s.push_str(&format!(
                    "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0}% | {:.0} | {:.0}% |\n",
                    r.c,
                    r.round,
                    h.server_us_per_req,
                    h.server_wait_ms_per_s,
                    h.client_us_per_req,
                    100.0 * h.machine_busy,
                    p.client_us_per_req,
                    100.0 * p.machine_busy,
                ));
            }
        }
    }
    s.push_str(
        "\nTCP on the machine during each measurement (`/proc/net/snmp`, `/proc/net/netstat`; \
         everything in this network namespace counts, other work included): segments \
         retransmitted, retransmission timeouts, tail loss probes, SYNs dropped at a full \
         accept queue.\n\n| C | round | HTTP retrans / RTO / TLP / listen drops | pgbench \
         retrans / RTO / TLP / listen drops |\n|---|---|---|---|\n",
    );
    let tcp = |t: &TcpCounters| {
        format!(
            "{} / {} / {} / {}",
            t.retrans, t.timeouts, t.loss_probes, t.listen_drops
        )
    };
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            r.c,
            r.round,
            tcp(&r.http.tcp),
            tcp(&r.pg.tcp)
        ));
    }
    if let Some(r) = rotation {
        s.push_str(&format!(
            "\nRotation: {:.0} s of wrk at concurrency {ROTATION_CLIENTS} with {}: {} rotations, \
             {} answers, **{} non-2xx**, {} socket errors; p99 {:.2} ms, max {:.1} ms.\n",
            r.load.seconds,
            r.how,
            r.rotations,
            r.load.requests,
            r.load.non_2xx,
            r.load.socket_errors,
            r.load.p99_us as f64 / 1000.0,
            r.load.max_us as f64 / 1000.0,
        ));
        if !r.notes.is_empty() {
            s.push_str(&format!("\n{}\n", r.notes));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_histogram_quantiles_come_from_the_bucket_deltas() {
        let before = [(0.001, 10), (0.01, 10), (f64::INFINITY, 10)];
        let after = [(0.001, 990), (0.01, 1008), (f64::INFINITY, 1010)];
        let h = OwnHistogram::between(&before, &after).unwrap();
        assert_eq!((h.p99_le_s, h.p999_le_s), (0.01, f64::INFINITY));
        assert!(OwnHistogram::between(&after, &after).is_none());
    }
}
