//! `riskfeat-configd --config configd.toml`: flags, logging, exit codes.
//! Exit codes: 0 ok, 1 runtime failure, 64 bad flags/config, 66 unreadable
//! input file (config, database_url_file, tokens_file).

use clap::Parser;
use riskfeat_configd::config::{Config, ConfigError};
use riskfeat_shared::telemetry::{self, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;

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
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 64 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    telemetry::init(cli.log_format, &cli.log_level);
    let mut cfg = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("riskfeat-configd: {e}");
            return ExitCode::from(match e {
                ConfigError::Input(_) => 66,
                ConfigError::Invalid(_) => 64,
            });
        }
    };
    if let Some(l) = cli.listen {
        cfg.listen = l;
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("riskfeat-configd: tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(riskfeat_configd::run(cfg, async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    }));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "riskfeat-configd failed");
            eprintln!("riskfeat-configd: {e}");
            ExitCode::from(1)
        }
    }
}
