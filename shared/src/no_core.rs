//! Core dumps off: the agent holds a Vault token, a secret_id and database
//! passwords in memory, the worker a password. A crash must not write them
//! to a core file (on the node's disk, outside the in-memory shared dir),
//! and no other process of the same user may read them through
//! `ptrace`/`/proc/<pid>/mem`.
//!
//! [`disable_core_dumps`] sets `RLIMIT_CORE` to 0 (soft and hard, so it
//! cannot be raised again) and `PR_SET_DUMPABLE` to 0 (which also covers a
//! `core_pattern` pipe, which ignores the rlimit). Both binaries call it
//! first thing at `run`.

use nix::sys::prctl;
use nix::sys::resource::{setrlimit, Resource};

/// Why core dumps could not be turned off (the binaries refuse to start:
/// exit 1).
#[derive(Debug, thiserror::Error)]
pub enum NoCoreError {
    #[error("cannot set RLIMIT_CORE to 0: {0}")]
    Rlimit(nix::Error),
    #[error("cannot clear PR_SET_DUMPABLE: {0}")]
    Dumpable(nix::Error),
}

/// Turns core dumps off for this process; see the module docs.
pub fn disable_core_dumps() -> Result<(), NoCoreError> {
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(NoCoreError::Rlimit)?;
    prctl::set_dumpable(false).map_err(NoCoreError::Dumpable)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::resource::getrlimit;

    #[test]
    fn no_core_file_and_not_dumpable() {
        disable_core_dumps().unwrap();
        assert_eq!(getrlimit(Resource::RLIMIT_CORE).unwrap(), (0, 0));
        assert!(!prctl::get_dumpable().unwrap());
        // Idempotent.
        disable_core_dumps().unwrap();
    }
}
