//! `cargo xtask seed-data`: loads deterministic transactions
//! (`riskfeat_tests::data::generate`) into `transactions` with one COPY and
//! prints the rate. The same `--users/--per-user/--seed` always give the
//! same rows.

use anyhow::{bail, Context};
use riskfeat_tests::data;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Number of users (ids 1..=N).
    #[arg(long, default_value_t = 1000)]
    users: u64,
    /// Transactions per user.
    #[arg(long, default_value_t = 100)]
    per_user: u64,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// libpq DSN of the PRIMARY, e.g.
    /// "host=127.0.0.1 port=5432 dbname=riskfeat user=postgres password=...".
    /// The schema (k8s/bootstrap/postgres/01-schema.sql) must exist.
    #[arg(long, env = "RISKFEAT_SEED_DSN")]
    dsn: Option<String>,
    /// Empty `transactions` first.
    #[arg(long)]
    truncate: bool,
    /// Instead of --dsn: start a throw-away PostgreSQL (test harness), load
    /// into it, report, and remove it (measures the loader).
    #[arg(long, conflicts_with = "dsn")]
    ephemeral: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.dsn.is_none() && !args.ephemeral {
        bail!(
            "--dsn is required: the libpq DSN of the primary to load into \
             (or RISKFEAT_SEED_DSN), e.g. --dsn \"host=127.0.0.1 port=5432 dbname=riskfeat \
             user=postgres password=...\"; or --ephemeral to load into a throw-away server"
        );
    }
    tokio::runtime::Runtime::new()?.block_on(seed(args))
}

async fn seed(args: Args) -> anyhow::Result<()> {
    // Keeps the throw-away cluster alive until the end.
    let mut _cluster = None;
    let client = match &args.dsn {
        Some(dsn) => {
            let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
                .await
                .context("connecting with --dsn")?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    eprintln!("seed-data: connection error: {e}");
                }
            });
            client
        }
        None => {
            let cluster = riskfeat_tests::PgCluster::start(false).await?;
            let client = cluster.primary.connect_superuser().await?;
            eprintln!(
                "seed-data: throw-away PostgreSQL at 127.0.0.1:{}",
                cluster.primary.port
            );
            _cluster = Some(cluster);
            client
        }
    };
    let has_table: bool = client
        .query_one("SELECT to_regclass('transactions') IS NOT NULL", &[])
        .await?
        .get(0);
    if !has_table {
        bail!(
            "table `transactions` does not exist in the target database: apply \
             k8s/bootstrap/postgres/00-roles.sql and 01-schema.sql first"
        );
    }
    if args.truncate {
        client.batch_execute("TRUNCATE transactions").await?;
    }
    let total = args.users * args.per_user;
    eprintln!(
        "seed-data: loading {total} rows ({} users x {} per user, seed {})",
        args.users, args.per_user, args.seed
    );
    let start = Instant::now();
    let rows = data::load(
        &client,
        data::generate(args.users, args.per_user, args.seed),
    )
    .await
    .context("COPY into transactions")?;
    let copied = start.elapsed();
    client.batch_execute("ANALYZE transactions").await?;
    println!(
        "seed-data: {rows} rows in {:.2} s ({:.0} rows/s), ANALYZE done after {:.2} s",
        copied.as_secs_f64(),
        rows as f64 / copied.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
