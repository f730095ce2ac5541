//! `cargo xtask`: the project's developer commands. Thin dispatch; each
//! command lives in the module named after it.

mod bench_configd;
mod bench_worker;
mod demo;
mod seed;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "riskfeat developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bring up PostgreSQL primary + replica, OpenBao, configd, agent and
    /// worker on loopback with demo data; runs until Ctrl-C.
    Demo(demo::Args),
    /// fmt, clippy and every test (installs what the tests need).
    Test(test::Args),
    /// Load deterministic transactions into a database.
    SeedData(seed::Args),
    /// Benchmarks; results go to docs/benchmarks.md.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Worker over HTTP against pgbench running the worker's own SQL.
    Worker(bench_worker::Args),
    /// configd: 10,000 long-poll watchers, incremental vs snapshot bytes.
    Configd(bench_configd::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo(a) => demo::run(a),
        Command::Test(a) => test::run(a),
        Command::SeedData(a) => seed::run(a),
        Command::Bench { which } => match which {
            Bench::Worker(a) => bench_worker::run(a),
            Bench::Configd(a) => bench_configd::run(a),
        },
    }
}

/// The workspace root (the parent of xtask/).
pub(crate) fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}
