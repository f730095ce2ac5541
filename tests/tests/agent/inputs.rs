//! Bad input at start: a missing or empty secret_id, a wrong role_id, a
//! policy without the creds path, an invalid config, a shared dir on disk
//! (each one clear message and exit code); and a response-wrapped secret_id
//! unwrapped once, its file deleted, a restart still working.

use crate::support::{db_json, opts, spawn_agent, wait_published, write_config, SECS};
use nix::sys::signal::Signal;
use riskfeat_tests::{Agent, Stack};
use std::fmt::Display;
use std::path::{Path, PathBuf};

/// Replaces `from` with `to` in the config file `cfg` (to point the agent
/// at another input).
fn edit_config(cfg: &Path, from: impl Display, to: impl Display) {
    let text = std::fs::read_to_string(cfg).unwrap();
    std::fs::write(cfg, text.replace(&from.to_string(), &to.to_string())).unwrap();
}

/// Runs riskfeat-agent on `cfg` until it exits, which must be with `code`
/// and a log naming `needle`; returns the log.
fn assert_exits(cfg: &Path, code: i32, needle: &str) -> String {
    let (got, logs) = Agent::run_to_exit(cfg, SECS(30)).unwrap();
    assert_eq!(got, Some(code), "{logs}");
    assert!(logs.contains(needle), "{logs}");
    logs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_vault_input_gives_one_clear_message_and_exit_code() {
    let stack = Stack::start(opts(60, 600)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();

    // Missing secret_id file: 66, naming the file.
    let missing = dir.path().join("no-such-secret-id");
    let cfg = write_config(&stack, dir.path(), "", "");
    edit_config(
        &cfg,
        stack.approle.secret_id_file.display(),
        missing.display(),
    );
    assert_exits(&cfg, 66, "no-such-secret-id");

    // Empty secret_id file: 66.
    std::fs::write(&missing, "\n").unwrap();
    assert_exits(&cfg, 66, "is empty");

    // Wrong role_id: 77, naming the login path.
    let role_id = dir.path().join("wrong-role-id");
    std::fs::write(&role_id, "00000000-0000-0000-0000-000000000000\n").unwrap();
    let cfg = write_config(&stack, dir.path(), "", "");
    edit_config(
        &cfg,
        stack.approle.role_id_file.display(),
        role_id.display(),
    );
    let logs = assert_exits(&cfg, 77, "auth/approle/login");
    let error_lines: Vec<_> = logs.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(error_lines.len(), 1, "one clear error line: {logs}");

    // A policy that denies the creds path: 77, naming the path.
    stack
        .bao
        .api(
            reqwest::Method::PUT,
            "sys/policies/acl/no-creds",
            Some(serde_json::json!({"policy": "path \"sys/leases/*\" { capabilities = [\"update\"] }"})),
        )
        .await
        .unwrap();
    stack
        .bao
        .api(
            reqwest::Method::POST,
            "auth/approle/role/no-creds",
            Some(serde_json::json!({"token_policies": ["no-creds"], "token_ttl": "1h"})),
        )
        .await
        .unwrap();
    let rid = stack.bao.role_id("no-creds").await.unwrap();
    let sid = stack.bao.new_secret_id("no-creds").await.unwrap();
    std::fs::write(&role_id, &rid).unwrap();
    let sid_file = dir.path().join("no-creds-secret-id");
    std::fs::write(&sid_file, &sid).unwrap();
    edit_config(
        &cfg,
        stack.approle.secret_id_file.display(),
        sid_file.display(),
    );
    let logs = assert_exits(&cfg, 77, "permission denied");
    let creds_path = format!("{}/creds/{}", stack.approle.db_mount, stack.approle.db_role);
    assert!(logs.contains(&creds_path), "{logs}");
    assert!(!logs.contains(&sid), "secret_id leaked: {logs}");
    assert!(db_json(&stack).is_none());
}

#[tokio::test]
async fn bad_config_and_disk_shared_dir_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = Agent::MINIMAL_TOML;
    let cfg = dir.path().join("agent.toml");
    let run = |text: &str| {
        std::fs::write(&cfg, text).unwrap();
        Agent::run_to_exit(&cfg, SECS(30)).unwrap()
    };

    let (code, logs) = run("[vault\naddr = 1");
    assert_eq!(code, Some(64), "{logs}");
    assert!(
        logs.contains("agent.toml") && logs.contains("invalid config"),
        "{logs}"
    );

    let (code, logs) = run(&format!(
        "{base}\n[lifecycle]\nrenew_fracton = 0.5\ncolour = 1\n"
    ));
    assert_eq!(code, Some(64), "{logs}");
    assert!(
        logs.contains("renew_fracton") && logs.contains("colour"),
        "{logs}"
    );

    // A shared dir on a disk filesystem: 78 (unless allow_disk).
    let disk = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("agent-disk-{}", std::process::id()));
    std::fs::create_dir_all(&disk).unwrap();
    if riskfeat_shared::fs_check::fs_kind(&disk)
        .unwrap()
        .is_memory()
    {
        eprintln!("target dir is memory-backed here; the disk case cannot be shown");
        return;
    }
    let (code, logs) = run(&format!("shared_dir = \"{}\"\n{base}", disk.display()));
    assert_eq!(code, Some(78), "{logs}");
    assert!(
        logs.contains("allow_disk") && logs.contains(&disk.display().to_string()),
        "{logs}"
    );
    assert!(!disk.join("db.json").exists());
    // With allow_disk it goes on to read its inputs (and fails on the
    // missing role_id file: 66).
    let (code, logs) = run(&format!(
        "shared_dir = \"{}\"\nallow_disk = true\n{base}",
        disk.display()
    ));
    assert_eq!(code, Some(66), "{logs}");
    assert!(logs.contains("/nonexistent/role_id"), "{logs}");
    let _ = std::fs::remove_dir_all(&disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrapped_secret_id_is_unwrapped_once_and_its_file_deleted() {
    let stack = Stack::start(opts(60, 600)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A response-wrapped secret_id, as a CI/CD system would hand it over.
    let wrapping_token = stack.new_wrapped_secret_id("120s").await.unwrap();
    let file = dir.path().join("wrapped-secret-id");
    std::fs::write(&file, &wrapping_token).unwrap();
    let cfg = write_config(&stack, dir.path(), "", "");
    edit_config(
        &cfg,
        format!(
            "secret_id_file = \"{}\"",
            stack.approle.secret_id_file.display()
        ),
        format!(
            "secret_id_file = \"{}\"\nsecret_id_wrapped = true\ndelete_secret_id_after_read = true",
            file.display()
        ),
    );
    let mut agent = spawn_agent(&stack, &cfg, &[]);
    let first = wait_published(&stack, 1, SECS(60)).await;
    assert!(!file.exists(), "secret_id file deleted after reading");
    assert!(agent
        .logs()
        .contains("unwrapped the response-wrapped secret_id"));
    assert!(!agent.logs().contains(&wrapping_token));
    // The wrapping token is spent and the file gone: a restart still works.
    agent.signal(Signal::SIGKILL);
    agent.wait_exit(SECS(10)).unwrap();
    let agent2 = spawn_agent(&stack, &cfg, &[]);
    agent2.wait_ready(SECS(30)).await.unwrap();
    assert_eq!(db_json(&stack).unwrap().lease_id, first.lease_id);
}
