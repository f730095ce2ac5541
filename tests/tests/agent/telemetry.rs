//! What the agent shows: a debug log, `/status` and `/metrics` that never
//! hold a secret (secret_id, passwords, tokens), and a metrics page that
//! passes `promtool check metrics`.

use crate::support::{db_json, opts, spawn_agent, wait_published, write_ack, write_config, SECS};
use riskfeat_tests::fixtures::sample;
use riskfeat_tests::Stack;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_log_status_and_metrics_never_show_a_secret() {
    let stack = Stack::start(opts(4, 14)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &stack,
        dir.path(),
        "rotate_lead_s = 6\nack_grace_s = 2\nmax_issuances_per_minute = 20",
        "",
    );
    let mut agent = spawn_agent(&stack, &cfg, &["--log-level", "debug"]);
    let mut passwords = BTreeSet::new();
    let mut tokens = BTreeSet::new();
    let mut pages = String::new();
    let first = wait_published(&stack, 1, SECS(60)).await;
    let end = tokio::time::Instant::now() + SECS(120);
    loop {
        if let Some(c) = db_json(&stack) {
            passwords.insert(c.password.expose().to_string());
            write_ack(&stack, c.generation);
            if c.generation >= first.generation + 2 {
                break;
            }
        }
        if let Ok(bytes) = std::fs::read(stack.shared_dir.path().join("agent-state.json")) {
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            if let Some(t) = v["token"]["token"].as_str() {
                tokens.insert(t.to_string());
            }
        }
        assert!(
            tokio::time::Instant::now() < end,
            "no rotation\n{}",
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pages.push_str(&agent.status().await.unwrap().to_string());
    pages.push_str(&agent.metrics().await.unwrap());
    assert_eq!(agent.stop(SECS(15)).and_then(|s| s.code()), Some(0));
    let logs = agent.logs();
    assert!(logs.contains("DEBUG"), "ran at debug level");
    assert!(
        logs.contains("renewed lease") && logs.contains("revoked"),
        "{logs}"
    );
    let secret_id = std::fs::read_to_string(&stack.approle.secret_id_file).unwrap();
    let mut secrets: Vec<(&str, String)> = vec![("secret_id", secret_id.trim().to_string())];
    secrets.extend(passwords.into_iter().map(|p| ("password", p)));
    secrets.extend(tokens.into_iter().map(|t| ("token", t)));
    assert!(secrets.len() >= 4, "collected the secrets to look for");
    for (what, s) in &secrets {
        assert!(s.len() >= 8, "{what} too short to search for");
        assert!(!logs.contains(s.as_str()), "{what} in the log");
        assert!(!pages.contains(s.as_str()), "{what} in /status or /metrics");
    }
    assert!(
        !pages.contains("lease_id") && !pages.contains("database/creds/"),
        "{pages}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool() {
    let Ok(out) = std::process::Command::new("promtool")
        .arg("--version")
        .output()
    else {
        eprintln!("promtool not installed (Debian package prometheus); skipping the lint");
        return;
    };
    assert!(out.status.success());
    let stack = Stack::start(opts(60, 600)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&stack, dir.path(), "", "");
    let agent = spawn_agent(&stack, &cfg, &[]);
    wait_published(&stack, 1, SECS(60)).await;
    agent.wait_ready(SECS(20)).await.unwrap();
    let page = agent.metrics().await.unwrap();
    for family in [
        "riskfeat_agent_vault_logins_total",
        "riskfeat_agent_token_renewals_total",
        "riskfeat_agent_lease_renewals_total",
        "riskfeat_agent_credential_issuances_total",
        "riskfeat_agent_lease_revocations_total",
        "riskfeat_agent_vault_request_duration_seconds",
        "riskfeat_agent_credential_expiry_timestamp_seconds",
        "riskfeat_agent_published_generation",
    ] {
        assert!(
            page.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{page}"
        );
    }
    assert_eq!(
        sample(&page, "riskfeat_agent_published_generation"),
        Some(1.0)
    );
    let expiry = sample(&page, "riskfeat_agent_credential_expiry_timestamp_seconds").unwrap();
    assert!(expiry > chrono::Utc::now().timestamp() as f64);
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
