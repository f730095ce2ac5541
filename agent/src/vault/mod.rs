//! Talking to Vault (or OpenBao): a small typed client over the HTTP API.
//!
//! Endpoints used: AppRole and JWT/Kubernetes login, response-unwrapping of
//! a wrapped secret_id, token lookup-self/renew-self/revoke-self,
//! `<mount>/creds/<role>` (the full response: lease_id, lease_duration and
//! renewable sit at the top level), and `sys/leases/{renew,revoke,lookup}`.
//!
//! Errors are typed ([`VaultError`]) and tell transient faults (connect
//! error, timeout, 5xx, sealed, 429) from permanent answers (400/403/404):
//! the lifecycle retries the former with backoff and turns the latter into
//! one clear line naming the path and the cause.
//!
//! Why not `vaultrs`: vaultrs 0.8 builds on reqwest 0.13 while the workspace
//! uses reqwest 0.12 (a second HTTP/TLS stack in a sidecar whose RSS budget
//! is 15 MB, and minutes of build time on 2 cores), its database `creds`
//! call drops the lease fields we need, and it has no `sys/leases`
//! endpoints. The dozen calls here are plain JSON over the documented API;
//! every request carries `X-Vault-Namespace` when `vault.namespace` is set.

mod client;
mod error;
pub mod secs;

pub use client::{TokenGrant, VaultClient};
pub use error::VaultError;
