//! `riskfeat-shared`: everything riskfeat-agent and riskfeat-worker both need.
//!
//! The agent writes, the worker reads, and this crate owns the contract in
//! between: the layout of the shared directory ([`layout`]), the file formats
//! ([`creds`], [`config_file`], [`ack`]), how a file is published without a
//! reader ever seeing half of it ([`atomic`]), the check that the directory is
//! memory-backed ([`fs_check`]), and the operational surface both binaries
//! expose the same way: the hardened HTTP server ([`http_server`]), health
//! over a unix socket ([`health`]), Prometheus
//! metrics ([`metrics`]) and logging ([`telemetry`]); and how both reach
//! PostgreSQL over TLS ([`pg_tls`]) and pick up a rotated CA file
//! ([`ca_file`]); and the command line both take ([`cli`]). All three binaries (configd too) load their config file
//! ([`config_loader`]), exit ([`exit`]) and learn of SIGTERM ([`signal`])
//! the same way. [`testing`] holds the assertions their tests share.
//!
//! This crate depends on none of agent, worker or configd.

pub mod ack;
pub mod atomic;
pub mod ca_file;
pub mod cli;
pub mod config_file;
pub mod config_loader;
pub mod creds;
pub mod exit;
pub mod fs_check;
pub mod health;
pub mod http_server;
pub mod layout;
pub mod metrics;
pub mod no_core;
pub mod pg_tls;
pub mod secret;
pub mod signal;
pub mod telemetry;
pub mod testing;

pub use secret::Secret;

/// Reads `path` whole, for a loader that names the file in its errors: the
/// path as shown, and the bytes; a read error becomes `read_error(shown,
/// source)`.
pub(crate) fn read_named<E>(
    path: &std::path::Path,
    read_error: impl FnOnce(String, std::io::Error) -> E,
) -> Result<(String, Vec<u8>), E> {
    let shown = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => Ok((shown, bytes)),
        Err(source) => Err(read_error(shown, source)),
    }
}
