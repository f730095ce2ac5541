//! The command line the agent and the worker share: the global flags that
//! override the config file's `shared_dir`, `log_format` and `log_level`
//! (each also from its environment variable), and the three subcommands.
//! Each binary flattens [`CommonOverrides`] into its own clap `Cli` beside its
//! `--config` and whatever flags only it has.

use crate::config_loader::set;
use crate::health::ProbeKind;
use crate::telemetry::LogFormat;
use std::path::PathBuf;

/// Flag/env values that win over the file's keys of the same name.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CommonOverrides {
    /// Override `shared_dir`.
    #[arg(long, global = true, env = "RISKFEAT_SHARED_DIR")]
    pub shared_dir: Option<PathBuf>,
    /// Override `log_format` (text or json).
    #[arg(long, global = true, env = "RISKFEAT_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Override `log_level` (a tracing filter, e.g. info or debug).
    #[arg(long, global = true, env = "RISKFEAT_LOG")]
    pub log_level: Option<String>,
}

impl CommonOverrides {
    /// Overwrites the config's values of the flags given.
    pub fn apply_to(
        &self,
        shared_dir: &mut PathBuf,
        log_format: &mut LogFormat,
        log_level: &mut String,
    ) {
        set(shared_dir, &self.shared_dir);
        set(log_format, &self.log_format);
        set(log_level, &self.log_level);
    }
}

/// What the binary is asked to do; none means [`Command::Run`].
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Run (the default).
    Run,
    /// Ask the running process over its health socket; exit 0 when healthy.
    Probe {
        /// live, ready or status.
        kind: ProbeKind,
        /// Health socket; default: the binary's socket in `shared_dir`.
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Validate the config file and exit (0 valid, 64 invalid).
    CheckConfig {
        /// riskfeat-worker only: also check `[source]` against the database
        /// with the shared dir's credential (65 mismatch, 66 no credential,
        /// 69 database unreachable).
        #[arg(long)]
        database: bool,
    },
}
