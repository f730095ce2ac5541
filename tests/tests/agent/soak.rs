//! The soak (issue 19 item 6) in the suite: two minutes of the whole pod
//! under load with Vault outages, configd kills, replica restarts and
//! agent container restarts,
//! asserting a clean report; and the soak's checks on a real stack, shown
//! to find what they look for, so a clean report cannot be vacuous.

use riskfeat_tests::soak::checks::{scan, LogText, SecretSampler, Secrets};
use riskfeat_tests::soak::{self, left_behind, unknown_to_agent, SoakOptions};
use riskfeat_tests::{Stack, StackOptions};
use serde_json::json;
use std::time::Duration;

/// `riskfeat_tests::soak::run` for 2 minutes with the default faults, or
/// those `RISKFEAT_SOAK_FAULTS` lists (every kind enabled is injected at
/// least once: the plan goes round the kinds), 4 clients: 0 answers outside the documented degraded
/// ones, 0 leases or roles the agent does not know, 0 left after the
/// shutdown, 0 secrets in any log; at least one credential rotation.
///
/// Checked: with agent restarts on the agent from before issue 19 item 1,
/// which revoked its lease on SIGTERM, the soak fails:
/// `cargo xtask soak --minutes 2 --seed 5 --faults agent,vault` reported
/// 2,350 `500 database_error` answers during the five agent faults and
/// exited 1. The checks themselves are shown to fail in
/// `the_soak_checks_find_a_planted_lease_role_and_secret` and in the unit
/// tests of `soak::checks` and `soak::report`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_minute_soak_reports_no_failure_leak_or_secret() {
    // RISKFEAT_SOAK_FAULTS=vault,agent (say) chooses other fault kinds.
    let faults = match std::env::var("RISKFEAT_SOAK_FAULTS") {
        Ok(list) => list.split(',').map(|k| k.trim().parse().unwrap()).collect(),
        Err(_) => soak::default_faults(),
    };
    let opts = SoakOptions {
        duration: Duration::from_secs(120),
        seed: 19,
        faults,
        ..SoakOptions::default()
    };
    let report = soak::run(&opts).await.expect("the soak's stack");
    eprintln!("{report}");
    assert!(report.is_clean(), "{report}");
    assert!(report.answers_2xx > 1000, "{report}");
}

/// A lease issued behind the agent's back (the harness's own AppRole
/// login) is reported as unknown to the agent and as left behind, and so is
/// its role; once revoked, nothing is. Its password, planted in a log, is
/// found by the scan once the sampler has read it from a file like
/// `db.json`; the scan names the log and the line, not the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soak_checks_find_a_planted_lease_role_and_secret() {
    let stack = Stack::start(StackOptions {
        replica: false,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let db = stack.pg.primary.connect_superuser().await.unwrap();
    assert_eq!(left_behind(&stack, &db).await, (vec![], vec![]));

    let planted = stack.issue_creds().await.unwrap();
    let state = json!({"current": null, "retiring": []});
    let (leases, roles) = unknown_to_agent(&stack, &db, &state).await;
    assert_eq!(leases, std::slice::from_ref(&planted.lease_id));
    assert_eq!(roles, std::slice::from_ref(&planted.username));
    assert_eq!(left_behind(&stack, &db).await, (leases, roles));
    // Known to the agent: not reported.
    let state = json!({"current": {"lease_id": planted.lease_id, "username": planted.username}});
    assert_eq!(
        unknown_to_agent(&stack, &db, &state).await,
        (vec![], vec![])
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("db.json");
    std::fs::write(&file, json!({"password": planted.password}).to_string()).unwrap();
    let secrets = SecretSampler::start(vec![file], Secrets::default())
        .finish()
        .await;
    assert_eq!(secrets.len(), 1);
    let logs = [
        LogText {
            name: "agent #1".into(),
            text: "ready\n".into(),
        },
        LogText {
            name: "worker".into(),
            text: format!(
                "connecting\nlogin failed with password={}\n",
                planted.password
            ),
        },
    ];
    let found = scan(&logs, &secrets);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].to_string(), "worker log, line 2: a password");

    stack.revoke_lease(&planted.lease_id).await.unwrap();
    assert_eq!(left_behind(&stack, &db).await, (vec![], vec![]));
}
