//! `riskfeat-configd --config configd.toml`: flags, logging, exit codes.
//! Exit codes: 0 ok, 1 runtime failure, 64 bad flags/config, 66 unreadable
//! input file (config, database_url_file, tokens_file).

use clap::Parser;
use riskfeat_configd::config::{Config, Overrides};
use riskfeat_shared::exit::Fatal;
use riskfeat_shared::telemetry::{self, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;

/// jemalloc: memory of a buffer that was allocated but never written stays
/// unresident, which with 10,000 held long-polls (hyper's 8 KB read and
/// write buffers per connection) is a quarter of configd's memory.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "riskfeat-configd",
    about = "riskfeat configuration center on PostgreSQL"
)]
struct Cli {
    /// Config file (TOML).
    #[arg(long, env = "RISKFEAT_CONFIGD_CONFIG")]
    config: PathBuf,
    /// Overrides `listen`.
    #[arg(long, env = "RISKFEAT_CONFIGD_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// text or json.
    #[arg(long, env = "RISKFEAT_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// tracing filter, e.g. info or riskfeat_configd=debug.
    #[arg(long, env = "RISKFEAT_LOG", default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let cli: Cli = match riskfeat_shared::exit::parse_args() {
        Ok(c) => c,
        Err(code) => return code,
    };
    telemetry::init(cli.log_format, &cli.log_level);
    let overrides = Overrides { listen: cli.listen };
    let cfg = match Config::load(&cli.config, &overrides) {
        Ok(c) => c,
        Err(e) => return e.fatal(Fatal::Input).exit("riskfeat-configd: "),
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return Fatal::Runtime(format!("tokio runtime: {e}")).exit("riskfeat-configd: "),
    };
    let result = rt.block_on(riskfeat_configd::run(cfg, async {
        let signal = riskfeat_shared::signal::shutdown_signal().await;
        tracing::info!("{signal}: shutting down");
    }));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "riskfeat-configd failed");
            Fatal::Runtime(e.to_string()).exit("riskfeat-configd: ")
        }
    }
}
