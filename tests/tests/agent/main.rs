//! riskfeat-agent end to end: the real binary against real OpenBao and
//! PostgreSQL (primary + streaming replica) started by the harness. The test
//! plays the worker: it reads `db.json`, logs in on the replica, and writes
//! `worker.json` (the ack) itself.
//!
//! Covers issue 4's acceptance list (rotation with ack, token shorter than
//! the credential, Vault outage, sealed Vault and a failing database engine,
//! kill -9 resume, SIGTERM revocation, bad input, no secret in a debug log),
//! issue 8's fallback credential, and Vault over HTTPS with a private CA.
//!
//! - [`rotation`]: rotation with the ack, token expiry, kill -9, SIGTERM;
//! - [`guards`]: the replica check with replay paused, the issuance cap
//!   under a re-issue flood;
//! - [`outage`]: Vault cut off or sealed, the database engine failing, the
//!   fallback credential;
//! - [`inputs`]: bad input and exit codes, a response-wrapped secret_id;
//! - [`login`]: JWT login with a rotating token file, a Vault namespace;
//! - [`tls`]: Vault over HTTPS with a private CA;
//! - [`outputs`]: `[[output]]` files (pgpass, DSN, env, JDBC), the Python
//!   example reader acking through `notify_pid_file`, the JSON Schemas;
//! - [`policy`]: the agent's token cannot renew or revoke another role's lease;
//! - [`restart`]: issue 19's partial failures, with the real worker: a
//!   container restart under load, crash windows, the state file;
//! - [`telemetry`]: no secret in logs, `/status` or `/metrics`; promtool;
//! - [`soak`]: a 2-minute soak of the whole pod, and its checks shown to fail;
//! - [`bounds`]: the config sync's bounded inputs (namespace and answer
//!   sizes, a gzip bomb, a configd replica behind the agent, backoff);
//! - [`support`]: what they share.

mod bounds;
mod guards;
mod inputs;
mod login;
mod outage;
mod outputs;
mod policy;
mod restart;
mod rotation;
mod soak;
mod support;
mod telemetry;
mod tls;
