//! Vault over HTTPS with a private CA: the agent trusts exactly
//! `vault.ca_cert_file`, and a CA file fixed in place applies without a
//! restart.

use crate::support::{
    can_login_on_replica, db_json, opts, spawn_agent, wait_published, write_ack, write_agent_toml,
    SECS,
};
use riskfeat_tests::{Agent, Stack, StackOptions};
use std::path::{Path, PathBuf};

/// `write_config` with `vault.ca_cert_file` set (or not).
fn write_config_with_ca(stack: &Stack, dir: &Path, ca: Option<&Path>) -> PathBuf {
    let vault = ca
        .map(|ca| format!("ca_cert_file = \"{}\"", ca.display()))
        .unwrap_or_default();
    write_agent_toml(stack, dir, &vault, "", "")
}

/// Production talks to Vault over HTTPS with a private CA. The agent
/// trusts exactly `vault.ca_cert_file`: without it, or with a file that
/// is not the signing CA, it stays unready and `/status` names the TLS
/// failure and the fix; a file that is no certificate is refused at start
/// naming the file; with the right CA it publishes a working credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_over_tls_trusts_exactly_the_configured_ca() {
    let stack = Stack::start(StackOptions {
        vault_tls: true,
        vault_proxy: true,
        ..opts(3600, 7200)
    })
    .await
    .unwrap();
    assert!(
        stack.vault_addr().starts_with("https://"),
        "{}",
        stack.vault_addr()
    );
    let ca = stack.bao.ca_cert.clone().expect("the dev server's CA");
    let dir = tempfile::tempdir().unwrap();

    // 1. No CA file: the built-in public roots do not know this CA.
    // 2. The server's own certificate is not the CA that signed it.
    let leaf = ca.with_file_name("vault-cert.pem");
    for (ca_file, hint) in [
        (None, "set vault.ca_cert_file"),
        (Some(leaf.as_path()), "does not hold the CA"),
    ] {
        let cfg = write_config_with_ca(&stack, dir.path(), ca_file);
        let agent = spawn_agent(&stack, &cfg, &[]);
        agent
            .wait_status(SECS(30), "the TLS failure in /status", |s| {
                s["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("certificate") && e.contains(hint))
            })
            .await;
        assert!(!agent.is_ready().await);
        assert!(db_json(&stack).is_none(), "nothing published");
        drop(agent);
    }

    // 3. A file that holds no certificate: exit 64 at start, naming it.
    let junk = dir.path().join("not-a-ca.pem");
    std::fs::write(&junk, "hello\n").unwrap();
    let (code, logs) = Agent::run_to_exit(
        &write_config_with_ca(&stack, dir.path(), Some(&junk)),
        SECS(30),
    )
    .unwrap();
    assert_eq!(code, Some(64), "{logs}");
    assert!(
        logs.contains("vault.ca_cert_file") && logs.contains("not-a-ca.pem"),
        "{logs}"
    );
    // A missing one: 66.
    let missing = dir.path().join("no-such-ca.pem");
    let (code, logs) = Agent::run_to_exit(
        &write_config_with_ca(&stack, dir.path(), Some(&missing)),
        SECS(30),
    )
    .unwrap();
    assert_eq!(code, Some(66), "{logs}");
    assert!(logs.contains("no-such-ca.pem"), "{logs}");

    // 4. A CA file fixed in place (a ConfigMap update): the running agent
    // uses it at its next request, no restart; a credential that logs in.
    let live = dir.path().join("vault-ca.pem");
    std::fs::copy(&leaf, &live).unwrap();
    let cfg = write_config_with_ca(&stack, dir.path(), Some(&live));
    let agent = spawn_agent(&stack, &cfg, &[]);
    agent
        .wait_status(SECS(30), "the wrong CA in /status", |s| {
            s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("does not hold the CA"))
        })
        .await;
    let tmp = dir.path().join("vault-ca.pem.new");
    std::fs::copy(&ca, &tmp).unwrap();
    std::fs::rename(&tmp, &live).unwrap();
    let c = wait_published(&stack, 1, SECS(60)).await;
    assert!(!c.fallback);
    assert!(
        agent
            .logs()
            .contains("vault.ca_cert_file changed; using it"),
        "{}",
        agent.logs()
    );
    can_login_on_replica(&stack, &c).await.unwrap();
    write_ack(&stack, c.generation);
    agent.wait_ready(SECS(20)).await.unwrap();
}
