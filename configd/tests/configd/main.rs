//! riskfeat-configd against a real PostgreSQL 15 (harness `PgCluster`),
//! running the real binary: publish/watch/changes under concurrent
//! publishers and across two instances, restart while clients watch,
//! compaction, PostgreSQL outage, bad input, single-flight cache misses.
//!
//! - [`sync`]: publish, watch and changes, restarts, compaction;
//! - [`cache`]: PostgreSQL down, cold misses, the loaded log;
//! - [`api`]: bad input, the OpenAPI document;
//! - [`hostile`]: unauthenticated bodies, stalled connections, audit;
//! - [`memory`]: resident memory per held long-poll;
//! - [`pg_tls`]: configd to PostgreSQL over verify-full TLS;
//! - [`support`]: the tokens, starting configd, checked requests, a
//!   client's local copy.

mod api;
mod cache;
mod hostile;
mod memory;
mod pg_tls;
mod support;
mod sync;
