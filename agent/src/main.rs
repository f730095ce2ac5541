//! `riskfeat-agent`: the pod sidecar that logs in to Vault, keeps a dynamic
//! PostgreSQL credential alive and rotated for the worker, and syncs config
//! from riskfeat-configd, all through the shared in-memory directory.
//!
//! Thin entry point: flags, then [`run::run`], [`riskfeat_shared::health`]'s
//! probe, or a config check. Exit codes are documented in docs/agent.md.

mod config;
mod config_sync;
mod fatal;
mod inputs;
mod lifecycle;
mod metrics;
mod replica;
mod run;
mod state;
mod status;
mod vault;

use clap::{Parser, Subcommand};
use riskfeat_shared::health::ProbeKind;
use riskfeat_shared::telemetry::LogFormat;
use std::path::PathBuf;
use std::process::ExitCode;

/// The default config file.
const DEFAULT_CONFIG: &str = "/etc/riskfeat/agent.toml";

#[derive(Parser)]
#[command(
    name = "riskfeat-agent",
    version,
    about = "riskfeat credential and config sidecar"
)]
struct Cli {
    /// Config file (TOML).
    #[arg(long, global = true, env = "RISKFEAT_AGENT_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Override `shared_dir`.
    #[arg(long, global = true, env = "RISKFEAT_SHARED_DIR")]
    shared_dir: Option<PathBuf>,
    /// Override `log_format` (text or json).
    #[arg(long, global = true, env = "RISKFEAT_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// Override `log_level` (e.g. info, debug, riskfeat_agent=debug).
    #[arg(long, global = true, env = "RISKFEAT_LOG")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Ask a running agent over its health socket; exit 0 when healthy.
    Probe {
        /// live, ready or status.
        kind: ProbeKind,
        /// Health socket; default `<shared_dir>/agent.sock`.
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Validate the config file and exit (0 valid, 64 invalid).
    CheckConfig,
}

fn main() -> ExitCode {
    let cli: Cli = match riskfeat_shared::exit::parse_args() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let overrides = config::Overrides {
        shared_dir: cli.shared_dir.clone(),
        log_format: cli.log_format,
        log_level: cli.log_level.clone(),
    };
    let load =
        || config::Config::load(&cli.config, &overrides).map_err(|e| e.fatal(fatal::Fatal::Config));
    match cli.command.unwrap_or(Command::Run) {
        Command::Probe { kind, socket } => {
            let socket = socket.unwrap_or_else(|| match &cli.shared_dir {
                Some(d) => d.join("agent.sock"),
                None => load().map(|c| c.socket_path()).unwrap_or_else(|_| {
                    PathBuf::from(riskfeat_shared::layout::DEFAULT_SHARED_DIR).join("agent.sock")
                }),
            });
            riskfeat_shared::health::probe_command(&socket, kind)
        }
        Command::CheckConfig => match load() {
            Ok(_) => {
                println!("{}: ok", cli.config.display());
                ExitCode::SUCCESS
            }
            Err(e) => e.exit("riskfeat-agent: "),
        },
        Command::Run => {
            let cfg = match load() {
                Ok(c) => c,
                Err(e) => return e.exit("riskfeat-agent: "),
            };
            riskfeat_shared::telemetry::init(cfg.log_format, &cfg.log_level);
            match run::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => e.exit("riskfeat-agent: error: "),
            }
        }
    }
}
