//! Errors that end the process, each with its documented exit code
//! (sysexits): 64 bad flags/config, 66 missing or empty input file,
//! 77 permission denied by Vault, 78 shared dir on disk, 1 anything else.

/// A reason to exit; the display is the one line printed.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Permission(String),
    #[error("{0}")]
    SharedDir(String),
    #[error("{0}")]
    Runtime(String),
}

impl Fatal {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            Fatal::Config(_) => 64,
            Fatal::Input(_) => 66,
            Fatal::Permission(_) => 77,
            Fatal::SharedDir(_) => 78,
            Fatal::Runtime(_) => 1,
        }
    }
}
