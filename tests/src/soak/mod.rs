//! The soak (`cargo xtask soak`, and a 2-minute run in the agent tests):
//! the whole pod on the harness stack under steady HTTP load for a while,
//! with faults injected at seeded random moments, then a report of every
//! answer that was not a 2xx, the leases and roles left behind, and the
//! secrets found in the logs (docs/testing.md).
//!
//! - [`pod`]: configd, agent and worker, the faults applied to them, their
//!   logs across restarts;
//! - [`faults`]: the fault kinds and the seeded plan;
//! - [`load`]: the HTTP clients and what they recorded;
//! - [`checks`]: secrets in logs, leases and roles unknown to the agent;
//! - [`report`]: degraded answers vs failures, and the verdict.

pub mod checks;
pub mod faults;
pub mod load;
pub mod pod;
pub mod report;

pub use faults::FaultKind;
pub use report::SoakReport;

use crate::{data, wait_until, Stack, StackOptions};
use checks::{dynamic_roles, scan, unknown, Known, SecretSampler, Secrets};
use pod::Pod;
use std::cell::RefCell;
use std::time::{Duration, Instant};

/// What a soak run does.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// How long the load and the faults last.
    pub duration: Duration,
    /// Seeds the fault plan and the clients' choice of users.
    pub seed: u64,
    /// The fault kinds injected (none: load alone).
    pub faults: Vec<FaultKind>,
    /// Concurrent HTTP clients.
    pub clients: usize,
    /// Pause of each client between two requests.
    pub pause: Duration,
    /// Users in the dataset (30 transactions each).
    pub users: u64,
}

impl Default for SoakOptions {
    fn default() -> Self {
        SoakOptions {
            duration: Duration::from_secs(120),
            seed: 1,
            faults: default_faults(),
            clients: 4,
            pause: Duration::from_millis(20),
            users: 200,
        }
    }
}

/// The fault kinds a soak injects unless told otherwise: all of them,
/// agent container restarts included (the agent keeps its lease on a
/// SIGTERM next to a live worker, issue 19 item 1).
pub fn default_faults() -> Vec<FaultKind> {
    vec![
        FaultKind::Vault,
        FaultKind::Configd,
        FaultKind::Replica,
        FaultKind::Agent,
    ]
}

/// How long the leases and roles may take to settle before they are
/// compared with the agent's state (a credential being issued is in Vault
/// before it is in the state file).
const SETTLE: Duration = Duration::from_secs(15);

/// Runs the soak; `Err` only when the harness itself fails (a stack that
/// does not start). Everything it stops and starts is gone when it returns.
pub async fn run(opts: &SoakOptions) -> anyhow::Result<SoakReport> {
    let mut stack = Stack::start(StackOptions {
        default_ttl: pod::DEFAULT_TTL,
        max_ttl: pod::MAX_TTL,
        vault_proxy: true,
        vault_persistent: true,
        ..StackOptions::default()
    })
    .await?;
    let db = stack.pg.primary.connect_superuser().await?;
    data::load_recent(&db, opts.users, 30, 42).await?;
    stack.pg.wait_replica_caught_up().await?;
    let mut pod = Pod::start(&stack).await?;

    let mut report = SoakReport {
        seed: opts.seed,
        enabled: opts.faults.clone(),
        first_generation: pod.generation(),
        ..SoakReport::default()
    };
    let mut fixed = Secrets::default();
    fixed.add("secret_id", &stack.approle.secret_id);
    fixed.add("Vault root token", &stack.bao.root_token);
    fixed.add("password", &stack.pg.primary.superuser_password);
    fixed.add("password", &stack.pg.vault_admin_password);
    for t in &pod.tokens {
        fixed.add("configd token", t);
    }
    let sampler = SecretSampler::start(pod.secret_files(), fixed);

    let t0 = Instant::now();
    let load = load::Load::start(
        pod.worker.http().base(),
        opts.clients,
        opts.users,
        opts.pause,
        opts.seed,
        t0,
    );
    let end = t0 + opts.duration;
    let mut plan = faults::Plan::new(opts.seed, &opts.faults);
    while let Some(step) = plan.next_step() {
        // A fault that would not end before the end is not started.
        if Instant::now() + step.gap + step.down + Duration::from_secs(3) > end {
            break;
        }
        tokio::time::sleep(step.gap).await;
        let record = pod.inject(&mut stack, step, t0).await?;
        let failed = record.error.is_some();
        report.faults.push(record);
        if failed {
            break;
        }
    }
    tokio::time::sleep_until(end.into()).await;
    report.ran_for = t0.elapsed();
    report.add_answers(&load.finish().await);
    report.last_generation = pod.generation();

    // Before the shutdown: what Vault and PostgreSQL hold that the agent
    // does not know, once it had time to settle.
    let last = RefCell::new((Vec::new(), Vec::new()));
    let _ = wait_until(SETTLE, "leases and roles known to the agent", || async {
        let found = unknown_to_agent(&stack, &db, &pod.agent_state()).await;
        let clean = found.0.is_empty() && found.1.is_empty();
        *last.borrow_mut() = found;
        clean
    })
    .await;
    (report.orphaned_leases, report.stray_roles) = last.into_inner();

    report.shutdown = pod.stop();
    let after = RefCell::new((Vec::new(), Vec::new()));
    let _ = wait_until(SETTLE, "no lease and no role left", || async {
        let found = left_behind(&stack, &db).await;
        let clean = found.0.is_empty() && found.1.is_empty();
        *after.borrow_mut() = found;
        clean
    })
    .await;
    (report.leases_after_shutdown, report.roles_after_shutdown) = after.into_inner();

    let secrets = sampler.finish().await;
    let logs = pod.all_logs(&stack);
    report.secrets_tracked = secrets.counts();
    report.logs_scanned = logs.len();
    report.secrets_in_logs = scan(&logs, &secrets);
    Ok(report)
}

/// The leases Vault holds and the dynamic roles in `db` (the primary) that
/// `state` (the agent's state file) does not name.
pub async fn unknown_to_agent(
    stack: &Stack,
    db: &tokio_postgres::Client,
    state: &serde_json::Value,
) -> (Vec<String>, Vec<String>) {
    let known = Known::from_state(state);
    let (leases, roles) = left_behind(stack, db).await;
    (
        unknown(&leases, &known.lease_ids),
        unknown(&roles, &known.usernames),
    )
}

/// Every lease Vault holds under the creds path and every dynamic role in
/// `db`; a list that cannot be read is one entry saying why.
pub async fn left_behind(stack: &Stack, db: &tokio_postgres::Client) -> (Vec<String>, Vec<String>) {
    (
        or_error(stack.lease_ids().await),
        or_error(dynamic_roles(db).await),
    )
}

/// The list, or one entry saying why it could not be read (so a check that
/// cannot look never passes).
fn or_error(r: anyhow::Result<Vec<String>>) -> Vec<String> {
    r.unwrap_or_else(|e| vec![format!("(cannot list: {e:#})")])
}
