//! `riskfeat-tests`: the test harness. Real components on ephemeral loopback
//! ports in temp dirs, torn down on drop (also when a test panics):
//!
//! - [`pg`]: PostgreSQL 15 primary + streaming replica, scram-sha-256,
//!   roles and schema from `k8s/bootstrap/postgres/`;
//! - [`bao`]: OpenBao `server -dev` (installed into a cache dir if needed),
//!   or a restartable server on integrated storage;
//! - [`stack`]: both, bootstrapped like production from `k8s/bootstrap/vault/`
//!   (see [`bootstrap`]), plus the AppRole files and a tmpfs shared dir;
//! - [`proxy`]: a TCP proxy to cut or slow a link;
//! - [`process`]: the binaries under test as child processes;
//! - [`fixtures`]: worker, agent and configd started, probed and stopped;
//! - [`data`]: deterministic transactions and a COPY loader;
//! - [`load`]: concurrent requests on a worker, counting failures;
//! - [`tls`]: a private CA and server certificates (PostgreSQL TLS);
//! - [`hostile`]: stalled request heads, unread bodies, peak memory;
//! - [`openapi`]: real answers checked against `docs/openapi/`;
//! - [`schemas`]: shared-dir files checked against `docs/schemas/`;
//! - [`pytools`]: Python tools installed on first use;
//! - [`soak`]: the soak (the pod under load and faults, and its report);
//! - [`browser`]: headless Chromium through chromedriver (the console tests).

pub mod bao;
pub mod bootstrap;
pub mod browser;
pub mod data;
pub mod fixtures;
pub mod hostile;
pub mod load;
pub mod openapi;
pub mod pg;
pub mod process;
pub mod promtool;
pub mod proxy;
pub mod pytools;
pub mod schemas;
pub mod soak;
pub mod stack;
pub mod tls;

pub use bao::Bao;
pub use fixtures::{Agent, Configd, ConfigdToken, HealthSocket, Worker};
pub use pg::{PgCluster, PgServer};
pub use process::{binary, free_port, wait_until, ChildProc};
pub use proxy::TcpProxy;
pub use stack::{AgentToml, AppRole, IssuedCreds, Stack, StackOptions};
pub use tls::TestCa;
