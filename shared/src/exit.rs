//! How every riskfeat binary ends on an error: one [`Fatal`] type whose
//! variant is the documented exit code (sysexits): 64 bad flags or config
//! (EX_USAGE), 65 data that does not fit (EX_DATAERR: a table that does not
//! match the worker's `[source]`), 66 missing or unreadable input file
//! (EX_NOINPUT), 69 a service that cannot be reached (EX_UNAVAILABLE), 75
//! a write refused by a version conflict (EX_TEMPFAIL: look again), 77
//! permission denied (EX_NOPERM), 78 shared dir on disk (EX_CONFIG), 1
//! anything else; and [`parse_args`], the same flag parsing (bad flags exit
//! 64, `--help`/`--version` exit 0) for all three.

use std::process::ExitCode;

/// A reason to exit; the display is the message printed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fatal {
    /// Bad flags or config: exit 64.
    #[error("{0}")]
    Config(String),
    /// Data that does not fit what the config says: exit 65.
    #[error("{0}")]
    Data(String),
    /// A missing, unreadable or empty input file: exit 66.
    #[error("{0}")]
    Input(String),
    /// A service (a database) that cannot be reached or used: exit 69.
    #[error("{0}")]
    Unavailable(String),
    /// A write refused because the data moved on (configd's version
    /// conflict; retry after looking again): exit 75 (EX_TEMPFAIL).
    #[error("{0}")]
    Conflict(String),
    /// Permission denied (by Vault): exit 77.
    #[error("{0}")]
    Permission(String),
    /// The shared dir is not memory-backed: exit 78.
    #[error("{0}")]
    SharedDir(String),
    /// Any other failure: exit 1.
    #[error("{0}")]
    Runtime(String),
}

impl Fatal {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            Fatal::Config(_) => 64,
            Fatal::Data(_) => 65,
            Fatal::Input(_) => 66,
            Fatal::Unavailable(_) => 69,
            Fatal::Conflict(_) => 75,
            Fatal::Permission(_) => 77,
            Fatal::SharedDir(_) => 78,
            Fatal::Runtime(_) => 1,
        }
    }

    /// Prints `<prefix><message>` on stderr and gives the exit code.
    pub fn exit(&self, prefix: &str) -> ExitCode {
        eprintln!("{prefix}{self}");
        ExitCode::from(self.exit_code())
    }
}

/// Parses the command line; on bad flags prints clap's message and gives
/// exit 64, on `--help`/`--version` prints them and gives exit 0.
pub fn parse_args<T: clap::Parser>() -> Result<T, ExitCode> {
    T::try_parse().map_err(|e| {
        let code = if e.use_stderr() { 64 } else { 0 };
        let _ = e.print();
        ExitCode::from(code)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_documented_code() {
        for (f, code) in [
            (Fatal::Config("c".into()), 64),
            (Fatal::Data("d".into()), 65),
            (Fatal::Input("i".into()), 66),
            (Fatal::Unavailable("u".into()), 69),
            (Fatal::Conflict("c".into()), 75),
            (Fatal::Permission("p".into()), 77),
            (Fatal::SharedDir("s".into()), 78),
            (Fatal::Runtime("r".into()), 1),
        ] {
            assert_eq!(f.exit_code(), code, "{f:?}");
        }
        assert_eq!(
            Fatal::Input("no such file".into()).to_string(),
            "no such file"
        );
    }
}
