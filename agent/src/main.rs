//! `riskfeat-agent`: the pod sidecar that logs in to Vault, keeps a dynamic
//! PostgreSQL credential alive and rotated for the worker, and syncs config
//! from riskfeat-configd, all through the shared in-memory directory.
//!
//! Thin entry point: flags, then [`run::run`], [`riskfeat_shared::health`]'s
//! probe, or a config check. Exit codes are documented in docs/agent.md.

mod config;
mod config_identity;
mod config_sync;
mod fatal;
mod inputs;
mod lifecycle;
mod metrics;
mod outputs;
mod replica;
mod run;
mod state;
mod status;
mod vault;

use clap::Parser;
use riskfeat_shared::cli::Command;
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
    #[command(flatten)]
    overrides: config::Overrides,
    #[command(subcommand)]
    command: Option<Command>,
}

fn main() -> ExitCode {
    let cli: Cli = match riskfeat_shared::exit::parse_args() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let load = || {
        config::Config::load(&cli.config, &cli.overrides).map_err(|e| e.fatal(fatal::Fatal::Config))
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Probe { kind, socket } => {
            let socket = socket.unwrap_or_else(|| match &cli.overrides.shared_dir {
                Some(d) => d.join("agent.sock"),
                None => load().map(|c| c.socket_path()).unwrap_or_else(|_| {
                    PathBuf::from(riskfeat_shared::layout::DEFAULT_SHARED_DIR).join("agent.sock")
                }),
            });
            riskfeat_shared::health::probe_command(&socket, kind)
        }
        Command::CheckConfig { database: true } => {
            fatal::Fatal::Config("check-config --database is a riskfeat-worker option".into())
                .exit("riskfeat-agent: ")
        }
        Command::CheckConfig { database: false } => match load() {
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own checks of the flags (unique names and groups...), which
    /// otherwise run only when the binary parses its command line.
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
