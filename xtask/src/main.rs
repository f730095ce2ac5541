//! `cargo xtask`: the project's developer commands. Thin dispatch; each
//! command lives in the module named after it.

mod bench;
mod demo;
mod seed;
mod soak;
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
    /// The whole pod under load with faults at seeded random moments;
    /// reports failures, leaked leases and roles, secrets in logs.
    Soak(soak::Args),
    /// Load deterministic transactions into a database.
    SeedData(seed::Args),
    /// Benchmarks; results go to docs/benchmarks.md.
    #[command(subcommand)]
    Bench(bench::Which),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo(a) => demo::run(a),
        Command::Test(a) => test::run(a),
        Command::Soak(a) => soak::run(a),
        Command::SeedData(a) => seed::run(a),
        Command::Bench(which) => bench::run(which),
    }
}

/// The workspace root (the parent of xtask/).
pub(crate) fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}
