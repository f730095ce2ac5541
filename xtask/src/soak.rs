//! `cargo xtask soak --minutes N [--seed S] [--faults ...]`: the whole pod
//! on the harness stack under steady load, with Vault outages, configd
//! kills, replica restarts and agent restarts at seeded random moments;
//! prints the report and exits non-zero when it found a failure outside the
//! documented degraded answers, a leaked lease or role, or a secret in a
//! log. The soak itself is `riskfeat_tests::soak` (the agent tests run it
//! for 2 minutes); docs/testing.md says what it checks.

use anyhow::bail;
use riskfeat_tests::soak::{self, FaultKind, SoakOptions};
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// How long the load and the faults last.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Seeds the fault plan (same seed, same faults in the same order).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The fault kinds to inject, comma-separated, from vault, configd,
    /// replica, agent; `none` for load alone. Default: every kind the
    /// soak enables by default (docs/testing.md).
    #[arg(long, value_delimiter = ',')]
    faults: Option<Vec<String>>,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let faults = match &args.faults {
        None => soak::default_faults(),
        Some(names) => names
            .iter()
            .filter(|f| f.as_str() != "none")
            .map(|f| f.parse::<FaultKind>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)?,
    };
    if !args.minutes.is_finite() || args.minutes <= 0.0 {
        bail!(
            "--minutes must be a number more than 0, not {}",
            args.minutes
        );
    }
    crate::demo::build_binaries()?;
    let opts = SoakOptions {
        duration: Duration::from_secs_f64(args.minutes * 60.0),
        seed: args.seed,
        faults,
        clients: args.clients.max(1),
        ..SoakOptions::default()
    };
    eprintln!(
        "==> soak: {:.1} min, seed {}, faults {:?}",
        args.minutes, opts.seed, opts.faults
    );
    let report = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(soak::run(&opts))?;
    println!("{report}");
    if !report.is_clean() {
        bail!("the soak found problems (seed {})", opts.seed);
    }
    Ok(())
}
