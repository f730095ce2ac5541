//! Errors that end the agent, each with its documented exit code
//! (docs/agent.md): the one type all riskfeat binaries share,
//! [`riskfeat_shared::exit::Fatal`] (64 bad flags/config, 66 missing or empty
//! input file, 77 permission denied by Vault, 78 shared dir on disk, 1
//! anything else).

pub use riskfeat_shared::exit::Fatal;
