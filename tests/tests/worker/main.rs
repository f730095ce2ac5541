//! riskfeat-worker end to end: the built binary against a real PostgreSQL
//! primary + streaming replica and a real OpenBao started by the harness.
//! The test plays the agent: it issues credentials through the AppRole
//! (`Stack::issue_creds`) and publishes `db.json` / `config/features.json`
//! itself with `riskfeat_shared::atomic`, then revokes an old lease only
//! after the worker acknowledged the new generation in `worker.json`.
//!
//! Covers issue 5's acceptance: zero failed requests across credential
//! swaps (new role in pg_stat_activity, old pool closed), broken db.json
//! never replacing a working pool, config hot reload and rejection (visible
//! in /metrics), features against an independent reference (empty and
//! single-transaction users included), the replica lag policy with replay
//! paused, and the API's errors, probes and SIGTERM drain.
//!
//! - [`rotation`]: credential swaps under load (by the test and by the real
//!   agent), a broken `db.json`;
//! - [`features`]: features against a reference, config hot reload;
//! - [`lag`]: the replica lag policy;
//! - [`source`]: the team's own table (`[source]`), exact windows, edge
//!   cases against the reference, a mapping that does not fit;
//! - [`api`]: the API's errors, probes, SIGTERM drain, exit codes, OpenAPI;
//! - [`hostile`]: stalled request heads closed while requests are served;
//! - [`bounds`]: retries inside the pool, a failing lag measurement, two
//!   workers on the fallback login's connection limit;
//! - [`runtime`]: no runtime thread blocks inside a task under load;
//! - [`support`]: what they share (the worker's test config, publishing
//!   credentials and config, a request load).

mod api;
mod bounds;
mod features;
mod hostile;
mod lag;
mod rotation;
mod runtime;
mod source;
mod support;
