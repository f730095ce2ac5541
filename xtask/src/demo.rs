//! `cargo xtask demo`: the whole stack on loopback, with demo data, as a
//! newcomer would first see it.
//!
//! Starts (through the test harness, so the demo runs exactly what the tests
//! run) PostgreSQL 15 primary + streaming replica and OpenBao bootstrapped
//! from `k8s/bootstrap/`, loads deterministic transactions, starts
//! riskfeat-configd with a `features` namespace, riskfeat-agent (which logs in
//! with AppRole and publishes a credential) and riskfeat-worker, prints the
//! URLs and one real response, then runs until Ctrl-C (or for
//! `--exit-after-s`). Then it sends SIGTERM to worker, agent and configd
//! (the agent revokes its leases), checks that each exited 0 and that no
//! lease or role is left, and the harness removes every process and temp
//! dir. It builds the debug binaries first, unless `RISKFEAT_NO_BUILD=1`
//! (the test suite, `xtask/tests/demo.rs`, which built them already).

use anyhow::{bail, Context};
use riskfeat_tests::process::write_private;
use riskfeat_tests::{
    binary, data, free_port, wait_until, Agent, AgentToml, Configd, ConfigdToken, Stack,
    StackOptions, Worker,
};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// Users in the demo dataset.
    #[arg(long, default_value_t = 1000)]
    users: u64,
    /// Transactions per user.
    #[arg(long, default_value_t = 50)]
    per_user: u64,
    /// Credential default TTL in seconds (short, so rotations show up).
    #[arg(long, default_value_t = 60)]
    default_ttl_s: u64,
    /// Credential max TTL in seconds: the agent rotates before it.
    #[arg(long, default_value_t = 300)]
    max_ttl_s: u64,
    /// Stop by itself after this many seconds instead of waiting for Ctrl-C
    /// (0 = wait for Ctrl-C).
    #[arg(long, default_value_t = 0)]
    exit_after_s: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    build_binaries()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(demo(args))
}

/// Builds the three binaries once (from the workspace root, which becomes
/// the current dir) and tells the harness not to build them again
/// (`RISKFEAT_NO_BUILD`); the demo and the soak start with it.
pub(crate) fn build_binaries() -> anyhow::Result<()> {
    let root = crate::workspace_root();
    std::env::set_current_dir(&root)?;
    // RISKFEAT_NO_BUILD=1 (the test suite, which built them): the binaries
    // are used as they are, like the harness does.
    if std::env::var("RISKFEAT_NO_BUILD").as_deref() != Ok("1") {
        eprintln!("==> building riskfeat-agent, riskfeat-worker, riskfeat-configd");
        let status = std::process::Command::new("cargo")
            .args([
                "build",
                "--bins",
                "-p",
                "riskfeat-agent",
                "-p",
                "riskfeat-worker",
                "-p",
                "riskfeat-configd",
            ])
            .status()?;
        if !status.success() {
            bail!("cargo build failed");
        }
        // The binaries are fresh: the harness must not rebuild them.
        std::env::set_var("RISKFEAT_NO_BUILD", "1");
    }
    Ok(())
}

/// A random token for configd's demo tokens file (never printed, except the
/// admin one, which the user needs to publish).
fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

async fn demo(args: Args) -> anyhow::Result<()> {
    eprintln!("==> starting PostgreSQL primary + replica and OpenBao");
    let stack = Stack::start(StackOptions {
        default_ttl: Duration::from_secs(args.default_ttl_s),
        max_ttl: Duration::from_secs(args.max_ttl_s),
        ..StackOptions::default()
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let result = run_stack(&args, &stack, dir.path()).await;
    eprintln!("==> stopping PostgreSQL and OpenBao, removing temp dirs");
    drop(stack);
    result
}

async fn run_stack(args: &Args, stack: &Stack, dir: &Path) -> anyhow::Result<()> {
    eprintln!(
        "==> loading {} users x {} transactions",
        args.users, args.per_user
    );
    let db = stack.pg.primary.connect_superuser().await?;
    let rows = data::load_recent(&db, args.users, args.per_user, 42).await?;
    stack.pg.wait_replica_caught_up().await?;

    // configd, on the primary's database.
    let admin_token = random_token()?;
    let reader_token = random_token()?;
    let mut configd = Configd::new(
        &stack.pg.primary.superuser_dsn(),
        &[
            ConfigdToken::admin("admin", &admin_token),
            ConfigdToken::read("agent", &reader_token, &["features"]),
        ],
    )?;
    write_private(&dir.join("configd.token"), &reader_token)?;
    let admin_token_file = dir.join("admin.token");
    write_private(&admin_token_file, &admin_token)?;
    eprintln!(
        "==> starting riskfeat-configd on 127.0.0.1:{}",
        configd.http().port()
    );
    configd.start("").await.context("configd did not start")?;
    let base = configd.http().base().to_string();
    // The bootstrap: the namespace and its schema (from the worker's rules).
    configd
        .bootstrap_features(&admin_token)
        .await
        .context("bootstrapping the features namespace")?;
    configd
        .publish_seed_features(&admin_token, &[("zscore_above", json!(3.0))])
        .await
        .context("publishing the demo config")?;
    let http = reqwest::Client::new();

    // The agent.
    let shared = stack.shared_dir.path();
    let mport = free_port()?;
    let metrics_addr = format!("127.0.0.1:{mport}");
    let sections = format!(
        "[lifecycle]\nmax_ttl_hint_s = {}\n\n[configd]\naddr = \"{base}\"\ntoken_file = \"{}\"\n\
         namespaces = [\"features\"]\n",
        args.max_ttl_s,
        dir.join("configd.token").display()
    );
    let agent_config = stack.write_agent_toml(
        dir,
        AgentToml {
            metrics_addr: Some(&metrics_addr),
            sections: &sections,
            ..Default::default()
        },
    )?;
    eprintln!("==> starting riskfeat-agent (metrics on 127.0.0.1:{mport})");
    let mut agent = Agent::spawn(&agent_config, shared, &[])?;

    // The worker.
    let mut worker = Worker::spawn(shared, "")?;
    let wport = worker.http().port();
    eprintln!("==> starting riskfeat-worker on 127.0.0.1:{wport}");
    let url = worker.url("/v1/features/1");
    let first = || {
        let req = http.get(&url);
        async move {
            let r = req.send().await.ok()?;
            if r.status() != 200 {
                return None;
            }
            r.json::<Value>().await.ok()
        }
    };
    wait_until(Duration::from_secs(60), "the worker answers", || async {
        first()
            .await
            .is_some_and(|v| v["config_version"] != Value::Null)
    })
    .await
    .with_context(|| {
        format!(
            "the stack did not come up.\nagent log:\n{}\nworker log:\n{}",
            agent.logs(),
            worker.logs()
        )
    })?;
    let answer = first().await.context("the worker stopped answering")?;
    let configd_log = configd.log_path().context("configd stopped")?.to_path_buf();
    let agent_bin = binary("riskfeat-agent");
    let worker_bin = binary("riskfeat-worker");
    println!(
        "\nriskfeat is up ({rows} transactions of {} users loaded).\n\n\
         GET http://127.0.0.1:{wport}/v1/features/1 answered:\n{}\n\n\
         Try:\n  \
         curl -s http://127.0.0.1:{wport}/v1/features/42\n  \
         curl -s -XPOST http://127.0.0.1:{wport}/v1/features/batch -d '{{\"user_ids\":[1,2,3]}}' -H 'content-type: application/json'\n  \
         curl -s http://127.0.0.1:{wport}/metrics          # worker metrics\n  \
         curl -s http://127.0.0.1:{mport}/metrics          # agent metrics\n  \
         {} probe status --socket {}/agent.sock\n  \
         {} probe ready --socket {}/worker.sock\n  \
         curl -s -XPOST {base}/v1/admin/namespaces/features/publish -H \"authorization: Bearer $(cat {})\" \\\n       \
         -d '{{\"changes\":[{{\"op\":\"upsert\",\"key\":\"ma_window\",\"value\":5}}]}}'   # hot config change\n\n\
         Web console: {base}/ui  (sign in with the admin token in {})\n\n\
         Shared dir: {}   Logs: {}, {}, {}\n\
         The agent renews the credential and rotates it before its {}s max TTL; watch credential_generation grow.\n",
        args.users,
        serde_json::to_string_pretty(&answer)?,
        agent_bin.display(),
        shared.display(),
        worker_bin.display(),
        shared.display(),
        admin_token_file.display(),
        admin_token_file.display(),
        shared.display(),
        agent.log_path().display(),
        worker.log_path().display(),
        configd_log.display(),
        args.max_ttl_s,
    );
    if args.exit_after_s > 0 {
        println!("Stopping by itself in {} s.", args.exit_after_s);
        tokio::time::sleep(Duration::from_secs(args.exit_after_s)).await;
    } else {
        println!("Press Ctrl-C to stop everything.");
        tokio::signal::ctrl_c().await?;
    }

    eprintln!("\n==> SIGTERM to worker, agent (revokes its leases) and configd");
    let w = worker.stop(Duration::from_secs(30));
    let a = agent.stop(Duration::from_secs(30));
    let c = configd.stop(Duration::from_secs(30));
    eprintln!("    worker: {w:?}, agent: {a:?}, configd: {c:?}");
    let leases = stack.outstanding_leases().await?;
    let roles = db
        .query("SELECT 1 FROM pg_roles WHERE rolname LIKE 'v-%'", &[])
        .await?
        .len();
    eprintln!("    outstanding leases: {leases}, dynamic roles left in PostgreSQL: {roles}");
    if leases != 0 || roles != 0 {
        bail!(
            "the agent left {leases} lease(s) and {roles} role(s) behind; its log:\n{}",
            agent.logs()
        );
    }
    for (name, status) in [("worker", w), ("agent", a), ("configd", c)] {
        if !status.is_some_and(|s| s.success()) {
            bail!("riskfeat-{name} did not exit cleanly on SIGTERM: {status:?}");
        }
    }
    Ok(())
}
