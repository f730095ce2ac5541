//! riskfeat-configd against a real PostgreSQL 15 (harness `PgCluster`),
//! running the real binary: publish/watch/changes under concurrent
//! publishers and across two instances, restart while clients watch,
//! compaction, PostgreSQL outage, bad input, single-flight cache misses.
//!
//! - [`sync`]: publish, watch and changes, restarts, compaction;
//! - [`fanout`]: NOTIFY alone between instances, the pacer's batches,
//!   warm-ups one at a time;
//! - [`cache`]: PostgreSQL down, cold misses, the loaded log;
//! - [`api`]: bad input, the OpenAPI document;
//! - [`hostile`]: unauthenticated bodies, stalled connections, audit;
//! - [`memory`]: resident memory per held long-poll;
//! - [`pg_tls`]: configd to PostgreSQL over verify-full TLS;
//! - [`ctl`]: `riskfeatctl` and its exit codes;
//! - [`release`]: schemas, gray release, replace, the rollout view;
//! - [`support`]: the tokens, starting configd, checked requests, a
//!   client's local copy.

mod api;
mod cache;
mod ctl;
mod fanout;
mod hostile;
mod memory;
mod pg_tls;
mod release;
mod support;
mod sync;
