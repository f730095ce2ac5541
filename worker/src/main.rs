//! `riskfeat-worker`: serves risk features over HTTP from the PostgreSQL
//! replica, with the credential and feature parameters the agent publishes
//! in the shared directory.
//!
//! Thin entry point: flags, then [`riskfeat_worker::run::run`] or the health
//! probe; everything else lives in the library (`src/lib.rs`). Exit
//! codes (docs/worker.md): 0 ok, 1 runtime failure, 64 bad flags/config,
//! 66 shared dir missing, 78 shared dir not tmpfs/ramfs without `allow_disk`.

use clap::Parser;
use riskfeat_shared::cli::Command;
use riskfeat_shared::exit::Fatal;
use riskfeat_worker::{config, run, source};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The default config file; when absent (and not given explicitly) every
/// key takes its default.
const DEFAULT_CONFIG: &str = "/etc/riskfeat/worker.toml";

#[derive(Parser)]
#[command(name = "riskfeat-worker", version, about = "riskfeat feature server")]
struct Cli {
    /// Config file (TOML).
    #[arg(long, global = true, env = "RISKFEAT_WORKER_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: config::Overrides,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The config; a config that cannot be used or read exits 64.
fn load(cli: &Cli) -> Result<config::Config, Fatal> {
    let overrides = &cli.overrides;
    match &cli.config {
        Some(p) => config::Config::load(p, overrides),
        None if !Path::new(DEFAULT_CONFIG).exists() => {
            config::Config::parse("(defaults)", "", overrides)
        }
        None => config::Config::load(Path::new(DEFAULT_CONFIG), overrides),
    }
    .map_err(|e| e.fatal(Fatal::Config))
}

fn main() -> ExitCode {
    let cli: Cli = match riskfeat_shared::exit::parse_args() {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cli.command {
        Some(Command::Probe { kind, ref socket }) => {
            let socket = socket.clone().unwrap_or_else(|| match load(&cli) {
                Ok(c) => c.socket_path(),
                Err(_) => cli
                    .overrides
                    .common
                    .shared_dir
                    .clone()
                    .unwrap_or_else(|| riskfeat_shared::layout::DEFAULT_SHARED_DIR.into())
                    .join("worker.sock"),
            });
            riskfeat_shared::health::probe_command(&socket, kind)
        }
        Some(Command::CheckConfig { database }) => {
            let cfg = match load(&cli) {
                Ok(c) => c,
                Err(e) => return e.exit("riskfeat-worker: "),
            };
            println!("config ok");
            if !database {
                return ExitCode::SUCCESS;
            }
            let checked = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Fatal::Runtime(format!("cannot start the runtime: {e}")))
                .and_then(|rt| rt.block_on(source::check_database(&cfg)));
            match checked {
                Ok(msg) => {
                    println!("{msg}");
                    ExitCode::SUCCESS
                }
                Err(e) => e.exit("riskfeat-worker: "),
            }
        }
        None | Some(Command::Run) => {
            let cfg = match load(&cli) {
                Ok(c) => c,
                Err(e) => return e.exit("riskfeat-worker: "),
            };
            riskfeat_shared::telemetry::init(cfg.log_format, &cfg.log_level);
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if cfg.worker_threads > 0 {
                builder.worker_threads(cfg.worker_threads);
            }
            riskfeat_worker::stall::install(&mut builder);
            let rt = match builder.enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    return Fatal::Runtime(format!("cannot start the runtime: {e}"))
                        .exit("riskfeat-worker: ")
                }
            };
            match rt.block_on(run::run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, code = e.exit_code(), "riskfeat-worker stopped");
                    e.exit("riskfeat-worker: ")
                }
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
