//! `riskfeatctl`: flags and exit codes; the commands are `riskfeat_configd::ctl`.

use clap::{Parser, Subcommand};
use riskfeat_configd::ctl::{self, Command, Target};
use riskfeat_shared::exit::Fatal;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "riskfeatctl",
    about = "riskfeat-configd from a shell: namespaces, publish, gray release, schemas"
)]
struct Cli {
    /// configd's base URL.
    #[arg(
        long,
        env = "RISKFEAT_CONFIGD_ADDR",
        default_value = "http://127.0.0.1:8070"
    )]
    addr: String,
    /// File holding the bearer token (RISKFEAT_CONFIGD_TOKEN wins when set).
    #[arg(long, env = "RISKFEAT_CONFIGD_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The namespaces, with versions and client counts.
    List,
    /// The items of a namespace, or one key's value.
    Get { ns: String, key: Option<String> },
    /// What differs between two versions.
    Diff { ns: String, from: u64, to: u64 },
    /// Who published what, newest first.
    History {
        ns: String,
        #[arg(long, default_value_t = 20)]
        limit: u64,
    },
    /// Makes the namespace equal FILE (a JSON object of key to value):
    /// shows the change set, asks (or --yes), publishes at that version.
    Publish {
        ns: String,
        file: PathBuf,
        #[arg(long)]
        expected_version: Option<u64>,
        #[arg(long)]
        yes: bool,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Publishes the way back to a version.
    Rollback {
        ns: String,
        to_version: u64,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Gray release: start, show, promote, abort.
    Gray {
        #[command(subcommand)]
        cmd: GrayCmd,
    },
    /// The namespace's JSON Schema.
    Schema {
        #[command(subcommand)]
        cmd: SchemaCmd,
    },
    /// Which clients run which version.
    Rollout { ns: String },
}

#[derive(Subcommand)]
enum GrayCmd {
    /// Upserts FILE's items (JSON object) for the clients selected.
    Start {
        ns: String,
        file: PathBuf,
        /// key=value, repeatable: every one must match.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        #[arg(long)]
        percent: Option<u8>,
        #[arg(long)]
        comment: Option<String>,
    },
    Show {
        ns: String,
    },
    Promote {
        ns: String,
    },
    Abort {
        ns: String,
    },
}

#[derive(Subcommand)]
enum SchemaCmd {
    Get {
        ns: String,
    },
    /// Sets FILE (a JSON Schema) as the namespace's new schema version.
    Set {
        ns: String,
        file: PathBuf,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: expected key=value"))
}

fn command(cmd: Cmd) -> Command {
    match cmd {
        Cmd::List => Command::List,
        Cmd::Get { ns, key } => Command::Get { ns, key },
        Cmd::Diff { ns, from, to } => Command::Diff { ns, from, to },
        Cmd::History { ns, limit } => Command::History { ns, limit },
        Cmd::Publish {
            ns,
            file,
            expected_version,
            yes,
            comment,
        } => Command::Publish {
            ns,
            file,
            expected_version,
            yes,
            comment,
        },
        Cmd::Rollback {
            ns,
            to_version,
            comment,
        } => Command::Rollback {
            ns,
            to_version,
            comment,
        },
        Cmd::Gray { cmd } => match cmd {
            GrayCmd::Start {
                ns,
                file,
                labels,
                percent,
                comment,
            } => Command::GrayStart {
                ns,
                file,
                labels,
                percent,
                comment,
            },
            GrayCmd::Show { ns } => Command::GrayShow { ns },
            GrayCmd::Promote { ns } => Command::GrayPromote { ns },
            GrayCmd::Abort { ns } => Command::GrayAbort { ns },
        },
        Cmd::Schema { cmd } => match cmd {
            SchemaCmd::Get { ns } => Command::SchemaGet { ns },
            SchemaCmd::Set { ns, file } => Command::SchemaSet { ns, file },
        },
        Cmd::Rollout { ns } => Command::Rollout { ns },
    }
}

fn main() -> ExitCode {
    let cli: Cli = match riskfeat_shared::exit::parse_args() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Fatal::Runtime(format!("tokio runtime: {e}")).exit("riskfeatctl: "),
    };
    let result = rt.block_on(async {
        let target = Target::new(cli.addr, cli.token_file.as_deref())?;
        ctl::run(&target, command(cli.cmd)).await
    });
    match result {
        Ok(out) => {
            print!("{out}");
            if !out.ends_with('\n') {
                println!();
            }
            ExitCode::SUCCESS
        }
        Err(e) => e.exit("riskfeatctl: "),
    }
}
