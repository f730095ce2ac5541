//! PostgreSQL over TLS (`sslmode = "verify-full"`), end to end: a replica
//! with a certificate from a private CA that refuses `feature_reader`
//! members without TLS, the real agent checking its new credential over TLS
//! before publishing, and the real worker's pools over TLS. A worker with
//! no CA file or the wrong CA keeps the credential unused and says why.

use riskfeat_shared::creds::DbCredential;
use riskfeat_shared::pg_tls::SslMode;
use riskfeat_tests::{data, wait_until, Agent, AgentToml, Stack, StackOptions, TestCa, Worker};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn agent_config(stack: &Stack, dir: &Path, ca_file: &Path, sections: &str) -> PathBuf {
    stack
        .write_agent_toml(
            dir,
            AgentToml {
                replica_sslmode: Some("verify-full"),
                database: &format!("ca_file = \"{}\"", ca_file.display()),
                sections,
                ..Default::default()
            },
        )
        .unwrap()
}

/// A worker on `stack`'s shared dir with quick retries and `extra` lines.
fn spawn_worker(stack: &Stack, extra: &str) -> Worker {
    Worker::spawn(
        stack.shared_dir.path(),
        &format!("retry_initial_ms = 100\nretry_max_ms = 1000\n{extra}"),
    )
    .expect("spawn riskfeat-worker")
}

/// Waits until the worker reports a credential error containing `needle`;
/// asserts it is not ready and that it then stops cleanly.
async fn expect_credential_error(stack: &Stack, extra: &str, needle: &str) {
    let mut w = spawn_worker(stack, extra);
    let deadline = std::time::Instant::now() + SECS(30);
    let last = loop {
        let st = w.status().await.unwrap_or(Value::Null);
        let found = st["credential_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(needle));
        if found {
            break st;
        }
        if std::time::Instant::now() >= deadline {
            panic!(
                "no credential error naming {needle:?} in 30 s\nlast status: {st:#}\nworker:\n{}",
                w.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(last["ready"], false, "{last:#}");
    assert!(last["credential"].is_null(), "no pool in use: {last:#}");
    assert!(w.stop(SECS(10)).is_some(), "{}", w.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_and_worker_reach_the_replica_over_verified_tls() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    let su = stack.pg.primary.connect_superuser().await.unwrap();
    data::load(&su, data::generate(3, 20, 7)).await.unwrap();
    stack.pg.wait_replica_caught_up().await.unwrap();

    let ca = TestCa::new("riskfeat test CA").unwrap();
    let server = ca.issue_server(&["127.0.0.1", "localhost"]).unwrap();
    stack
        .pg
        .replica()
        .enable_tls(&server, Some("feature_reader"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("pg-ca.pem");
    ca.write_cert(&ca_file).unwrap();
    let other_ca_file = dir.path().join("other-ca.pem");
    TestCa::new("some other CA")
        .unwrap()
        .write_cert(&other_ca_file)
        .unwrap();

    // The agent publishes only after its check login, which must use TLS:
    // the replica refuses feature_reader members without it.
    let cfg = agent_config(&stack, dir.path(), &ca_file, "");
    let agent = Agent::spawn(&cfg, stack.shared_dir.path(), &[]).expect("spawn riskfeat-agent");
    let db_json = stack.shared_dir.path().join("db.json");
    wait_until(SECS(60), "db.json from the agent", || {
        let exists = db_json.exists();
        async move { exists }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nagent:\n{}", agent.logs()));
    let cred = DbCredential::load(&db_json).unwrap();
    assert_eq!(cred.replica.sslmode, SslMode::VerifyFull);
    let raw = std::fs::read_to_string(&db_json).unwrap();
    assert!(
        raw.contains("\"sslmode\": \"verify-full\"") || raw.contains("\"sslmode\":\"verify-full\"")
    );

    // Without a CA file the worker cannot honour verify-full: it says so.
    expect_credential_error(&stack, "", "database_ca_file is not set").await;
    // With the wrong CA the server's certificate is rejected.
    expect_credential_error(
        &stack,
        &format!("database_ca_file = \"{}\"", other_ca_file.display()),
        "certificate",
    )
    .await;

    // With the right CA: ready, answers, and every worker connection is TLS.
    let w = spawn_worker(
        &stack,
        &format!("database_ca_file = \"{}\"", ca_file.display()),
    );
    w.wait_ready(SECS(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\nagent:\n{}", agent.logs()));
    let resp = reqwest::get(w.url("/v1/features/1")).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    assert!(body["features"].is_object(), "{body:#}");
    let st = w.status().await.unwrap();
    assert_eq!(st["credential"]["sslmode"], "verify-full", "{st:#}");

    let replica = stack.pg.replica().connect_superuser().await.unwrap();
    let rows = replica
        .query(
            "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name = 'riskfeat-worker'",
            &[],
        )
        .await
        .unwrap();
    let ssl: Vec<bool> = rows.iter().map(|r| r.get(0)).collect();
    assert!(!ssl.is_empty(), "the worker holds replica connections");
    assert!(
        ssl.iter().all(|s| *s),
        "every worker connection is TLS: {ssl:?}"
    );
}

/// Replaces `path` the way a ConfigMap update does: a new file renamed over.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn features_status(w: &Worker) -> u16 {
    match reqwest::get(w.url("/v1/features/1")).await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// A CA rotation as operators do it, with no restart: CA file = old + new,
/// switch the server's certificate, CA file = new only. The worker rebuilds
/// its pools at each change and never stops answering; the agent's next
/// credential is checked with the new CA only; a broken CA file changes
/// nothing and is named in /status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rotation_applies_without_a_restart() {
    let stack = Stack::start(StackOptions::with_ttls(10, 30)).await.unwrap();
    let su = stack.pg.primary.connect_superuser().await.unwrap();
    data::load(&su, data::generate(3, 20, 7)).await.unwrap();
    stack.pg.wait_replica_caught_up().await.unwrap();
    let old = TestCa::new("riskfeat CA 2026").unwrap();
    let new = TestCa::new("riskfeat CA 2027").unwrap();
    let replica = stack.pg.replica();
    replica
        .enable_tls(
            &old.issue_server(&["127.0.0.1"]).unwrap(),
            Some("feature_reader"),
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.crt");
    replace_file(&ca_file, &old.cert_pem());
    let cfg = agent_config(
        &stack,
        dir.path(),
        &ca_file,
        "[lifecycle]\nrotate_lead_s = 10\nmax_issuances_per_minute = 20\nbackoff_initial_s = 0.2",
    );
    let agent = Agent::spawn(&cfg, stack.shared_dir.path(), &[]).expect("spawn riskfeat-agent");
    let w = spawn_worker(
        &stack,
        &format!(
            "database_ca_file = \"{}\"\nrecheck_interval_ms = 200",
            ca_file.display()
        ),
    );
    wait_until(SECS(60), "worker serving over TLS", || {
        features_status_is(&w, 200)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nworker:\n{}\nagent:\n{}", w.logs(), agent.logs()));

    // Requests all along; none may fail.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, url) = (stop.clone(), w.url("/v1/features/2"));
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let (mut ok, mut bad) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => ok += 1,
                    Ok(r) => bad.push(format!(
                        "{} {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    )),
                    Err(e) => bad.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (ok, bad)
        })
    };
    let reloads = |w: &Worker| {
        w.logs()
            .matches("database_ca_file changed; rebuilding the pools with it")
            .count()
    };
    let worker = &w;
    let rebuilt = |n: usize| {
        let done = reloads(worker) >= n;
        async move {
            done && worker
                .status()
                .await
                .is_ok_and(|st| st["ready"] == true && st["credential_error"].is_null())
        }
    };

    // 1. Bundle old + new: the worker rebuilds with it.
    replace_file(&ca_file, &format!("{}{}", old.cert_pem(), new.cert_pem()));
    wait_until(SECS(30), "pools rebuilt with the bundle", || rebuilt(1))
        .await
        .unwrap_or_else(|e| panic!("{e}\nworker:\n{}", w.logs()));
    // 2. The server switches to a certificate of the new CA.
    replica
        .enable_tls(&new.issue_server(&["127.0.0.1"]).unwrap(), None)
        .await
        .unwrap();
    // 3. New CA only: rebuilt again, and new connections verify with it.
    replace_file(&ca_file, &new.cert_pem());
    wait_until(SECS(30), "pools rebuilt with the new CA only", || {
        rebuilt(2)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nworker:\n{}", w.logs()));
    let db = replica.connect_superuser().await.unwrap();
    riskfeat_tests::pg::terminate_backends(&db, "riskfeat-worker")
        .await
        .unwrap();
    assert_eq!(features_status(&w).await, 200, "reconnects with the new CA");

    // The agent checks its next credential with the new CA only.
    let published = |min: u64| {
        let path = stack.shared_dir.path().join("db.json");
        async move { DbCredential::load(&path).is_ok_and(|c| c.generation >= min) }
    };
    let now = DbCredential::load(&stack.shared_dir.path().join("db.json"))
        .unwrap()
        .generation;
    wait_until(SECS(60), "a credential published after the switch", || {
        published(now + 1)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nagent:\n{}", agent.logs()));
    assert!(
        agent.logs().contains("database.ca_file changed; using it"),
        "{}",
        agent.logs()
    );

    // A broken CA file: nothing changes, and /status says why.
    replace_file(&ca_file, "-----BEGIN CERTIFICATE-----\nnot base64\n");
    wait_until(SECS(30), "the broken CA file named in /status", || async {
        w.status()
            .await
            .ok()
            .and_then(|st| st["credential_error"]["message"].as_str().map(String::from))
            .is_some_and(|m| m.contains("database_ca_file") && m.contains("keeping the CA in use"))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nworker:\n{}", w.logs()));
    assert_eq!(features_status(&w).await, 200);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, bad) = load.await.unwrap();
    assert!(ok > 20, "the load made progress ({ok})");
    assert!(
        bad.is_empty(),
        "{} failed requests: {:?}\nworker:\n{}",
        bad.len(),
        &bad[..bad.len().min(5)],
        w.logs()
    );
}

async fn features_status_is(w: &Worker, code: u16) -> bool {
    features_status(w).await == code
}
