//! `riskfeat-worker`: serves risk features over HTTP from the PostgreSQL
//! replica, with the credential and feature parameters the agent publishes
//! in the shared directory.
//!
//! Thin entry point: flags, then [`riskfeat_worker::run::run`] or the health
//! probe; everything else lives in the library (`src/lib.rs`). Exit
//! codes (docs/worker.md): 0 ok, 1 runtime failure, 64 bad flags/config,
//! 66 shared dir missing, 78 shared dir not tmpfs/ramfs without `allow_disk`.

use clap::{Parser, Subcommand};
use riskfeat_shared::exit::Fatal;
use riskfeat_shared::health::ProbeKind;
use riskfeat_shared::telemetry::LogFormat;
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
    /// Override `shared_dir`.
    #[arg(long, global = true, env = "RISKFEAT_SHARED_DIR")]
    shared_dir: Option<PathBuf>,
    /// Override `listen` (HTTP address, e.g. 127.0.0.1:8080).
    #[arg(long, global = true, env = "RISKFEAT_WORKER_LISTEN")]
    listen: Option<String>,
    /// Override `log_format` (text or json).
    #[arg(long, global = true, env = "RISKFEAT_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// Override `log_level` (e.g. info, debug, riskfeat_worker=debug).
    #[arg(long, global = true, env = "RISKFEAT_LOG")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker (the default).
    Run,
    /// Ask a running worker over its health socket; exit 0 when healthy.
    Probe {
        /// live, ready or status.
        kind: ProbeKind,
        /// Health socket; default `<shared_dir>/worker.sock`.
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Validate the config file and exit (0 valid, 64 invalid); with
    /// `--database`, also check `[source]` against the database with the
    /// shared dir's credential (65 mismatch, 66 no credential, 69 database
    /// unreachable).
    CheckConfig {
        #[arg(long)]
        database: bool,
    },
}

/// The config; a config that cannot be used or read exits 64.
fn load(cli: &Cli) -> Result<config::Config, Fatal> {
    let overrides = config::Overrides {
        shared_dir: cli.shared_dir.clone(),
        listen: cli.listen.clone(),
        log_format: cli.log_format,
        log_level: cli.log_level.clone(),
    };
    match &cli.config {
        Some(p) => config::Config::load(p, &overrides),
        None if !Path::new(DEFAULT_CONFIG).exists() => {
            config::Config::parse("(defaults)", "", &overrides)
        }
        None => config::Config::load(Path::new(DEFAULT_CONFIG), &overrides),
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
