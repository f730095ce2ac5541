//! riskfeat-configd with the agent's config client, end to end: the real
//! agent (real OpenBao + PostgreSQL via the harness) and the real configd.

use riskfeat_shared::config_file::ConfigSnapshot;
use riskfeat_tests::tls::ServerCert;
use riskfeat_tests::{binary, wait_until, AgentToml, ChildProc, Stack, StackOptions, TestCa};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

const ADMIN: &str = "admin-token-0123456789";
const READER: &str = "reader-token-0123456789";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn agent_config(stack: &Stack, dir: &Path, configd_port: u16) -> PathBuf {
    agent_config_with(
        stack,
        dir,
        &format!("addr = \"http://127.0.0.1:{configd_port}\""),
    )
}

/// The agent's config with `[configd]` lines `addr_lines` (addr, ca_file).
fn agent_config_with(stack: &Stack, dir: &Path, addr_lines: &str) -> PathBuf {
    std::fs::write(dir.join("configd.token"), READER).unwrap();
    let text = stack.agent_toml(AgentToml {
        top: "log_level = \"info,riskfeat_agent=debug\"",
        sections: &format!(
            "[configd]\n{addr_lines}\ntoken_file = \"{}\"\n\
             namespaces = [\"features\"]\npoll_timeout_s = 5\nbackoff_initial_s = 0.2\n\
             backoff_max_s = 1.0\n",
            dir.join("configd.token").display()
        ),
        ..Default::default()
    });
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn start_configd(stack: &Stack, dir: &Path, port: u16) -> ChildProc {
    start_configd_with(stack, dir, port, "")
}

/// configd with `extra` lines in its config (TLS files).
fn start_configd_with(stack: &Stack, dir: &Path, port: u16, extra: &str) -> ChildProc {
    std::fs::write(dir.join("db.dsn"), stack.pg.primary.superuser_dsn()).unwrap();
    std::fs::write(
        dir.join("tokens.toml"),
        format!(
            "[[tokens]]\nname='admin'\ntoken='{ADMIN}'\nrole='admin'\nnamespaces=['*']\n\
             [[tokens]]\nname='agent'\ntoken='{READER}'\nrole='read'\nnamespaces=['features']\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("configd.toml"),
        format!(
            "listen='127.0.0.1:{port}'\ndatabase_url_file='db.dsn'\ntokens_file='tokens.toml'\n{extra}\n"
        ),
    )
    .unwrap();
    let cfg = dir.join("configd.toml");
    ChildProc::spawn(
        &binary("riskfeat-configd"),
        &["--config", cfg.to_str().unwrap()],
        &[],
    )
    .unwrap()
}

async fn admin(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    admin_with(&reqwest::Client::new(), method, url, body).await
}

/// An admin request through `client` (0 = no answer, e.g. TLS refused).
async fn admin_with(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = client.request(method, url).bearer_auth(ADMIN);
    if let Some(b) = body {
        r = r.json(&b);
    }
    match r.send().await {
        Ok(resp) => {
            let s = resp.status().as_u16();
            (s, resp.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

fn published(stack: &Stack) -> Option<ConfigSnapshot> {
    ConfigSnapshot::load(&stack.shared_dir.path().join("config/features.json")).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_publishes_last_known_config_with_configd_down_then_converges() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // A last known config from a previous run.
    let cache_dir = stack.shared_dir.path().join("config-cache");
    std::fs::create_dir_all(&cache_dir).unwrap();
    let cached = ConfigSnapshot {
        namespace: "features".into(),
        version: 1,
        items: [("lookback".to_string(), json!(40))].into_iter().collect(),
    };
    riskfeat_shared::atomic::write_json_atomic(
        &cache_dir.join("features.json"),
        &cached,
        riskfeat_shared::atomic::WriteOptions::PRIVATE,
    )
    .unwrap();
    let cfg = agent_config(&stack, dir.path(), port);
    let agent = ChildProc::spawn(
        &binary("riskfeat-agent"),
        &["run", "--config", cfg.to_str().unwrap()],
        &[],
    )
    .unwrap();
    // configd is down: the cached config is published anyway.
    wait_until(
        Duration::from_secs(30),
        "cached config published",
        || async { published(&stack).is_some_and(|s| s == cached) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));
    let mode = std::fs::metadata(stack.shared_dir.path().join("config/features.json")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o640
    );

    // configd comes up with versions 1 (the same item) and 2.
    let configd = start_configd(&stack, dir.path(), port);
    let base = format!("http://127.0.0.1:{port}");
    wait_until(Duration::from_secs(30), "configd up", || {
        let url = format!("{base}/v1/admin/namespaces/features");
        async move { admin(reqwest::Method::PUT, url, None).await.0 == 201 }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", configd.logs()));
    let publish = |changes: Value| {
        admin(
            reqwest::Method::POST,
            format!("{base}/v1/admin/namespaces/features/publish"),
            Some(json!({"changes": changes})),
        )
    };
    assert_eq!(
        publish(json!([{"op": "upsert", "key": "lookback", "value": 40}]))
            .await
            .0,
        200
    );
    assert_eq!(
        publish(json!([{"op": "upsert", "key": "ma_window", "value": 5}]))
            .await
            .0,
        200
    );
    wait_until(
        Duration::from_secs(30),
        "agent converged to version 2",
        || async {
            published(&stack)
                .is_some_and(|s| s.version == 2 && s.items.get("ma_window") == Some(&json!(5)))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));
    // A later publish arrives incrementally, a delete included.
    assert_eq!(
        publish(json!([{"op": "delete", "key": "lookback"}]))
            .await
            .0,
        200
    );
    wait_until(Duration::from_secs(30), "agent at version 3", || async {
        published(&stack).is_some_and(|s| s.version == 3 && !s.items.contains_key("lookback"))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));
    // The private cache follows, and /status reports the version.
    let cache = ConfigSnapshot::load(&cache_dir.join("features.json")).unwrap();
    assert_eq!(cache.version, 3);
    let st = agent_status(&stack).await;
    assert_eq!(st["config"]["versions"]["features"], 3, "{st}");
    assert_eq!(st["config"]["sources"]["features"], "configd", "{st}");
    assert!(!st.to_string().contains(READER), "no token in /status");
}

/// A client that trusts only `ca`.
fn client_trusting(ca: &TestCa) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).unwrap())
        .build()
        .unwrap()
}

/// Writes a server certificate and key the way a Secret volume updates:
/// each file replaced whole.
fn install_cert(dir: &Path, cert: &ServerCert) {
    for (name, pem) in [("tls.crt", &cert.cert_pem), ("tls.key", &cert.key_pem)] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

/// The certificate configd presents to a new connection of a client that
/// trusts `ca` (None: no TLS session).
async fn served_cert(ca: &TestCa, base: &str) -> Option<Vec<u8>> {
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).unwrap())
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let resp = client.get(format!("{base}/healthz")).send().await.ok()?;
    let info = resp.extensions().get::<reqwest::tls::TlsInfo>()?;
    info.peer_certificate().map(<[u8]>::to_vec)
}

async fn agent_status(stack: &Stack) -> Value {
    let (_, body) = riskfeat_shared::health::request(
        &stack.shared_dir.path().join("agent.sock"),
        riskfeat_shared::health::ProbeKind::Status,
        Duration::from_secs(3),
    )
    .await
    .unwrap_or_default();
    serde_json::from_str(&body).unwrap_or(Value::Null)
}

/// configd over HTTPS: the agent trusts exactly `configd.ca_file` (a wrong
/// CA is named in its status and nothing is published; the file fixed in
/// place applies without a restart), plain HTTP is refused, a renewed certificate is served to new connections without a
/// restart while the agent keeps syncing, and a renewed pair that does not
/// load keeps the one in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configd_over_tls_trusts_the_configured_ca_and_renews_without_a_restart() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let ca = TestCa::new("riskfeat test configd CA").unwrap();
    let first = ca.issue_server(&["127.0.0.1"]).unwrap();
    install_cert(dir.path(), &first);
    let configd = start_configd_with(
        &stack,
        dir.path(),
        port,
        "tls_cert_file='tls.crt'\ntls_key_file='tls.key'",
    );
    let base = format!("https://127.0.0.1:{port}");
    let trusted = client_trusting(&ca);
    wait_until(Duration::from_secs(30), "configd up over https", || {
        let (c, url) = (
            trusted.clone(),
            format!("{base}/v1/admin/namespaces/features"),
        );
        async move { admin_with(&c, reqwest::Method::PUT, url, None).await.0 == 201 }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", configd.logs()));
    assert_eq!(served_cert(&ca, &base).await, Some(first.cert_der.clone()));
    // No plaintext on the TLS port, and the system roots do not vouch for it.
    let plain = format!("http://127.0.0.1:{port}/healthz");
    let plain_ok = reqwest::get(&plain)
        .await
        .is_ok_and(|r| r.status().is_success());
    assert!(!plain_ok, "plain HTTP is not answered on the TLS port");
    let (code, _) = admin(reqwest::Method::GET, format!("{base}/healthz"), None).await;
    assert_eq!(code, 0, "a client without the CA is refused");

    let publish = |changes: Value| {
        let (client, url) = (
            trusted.clone(),
            format!("{base}/v1/admin/namespaces/features/publish"),
        );
        async move {
            let body = Some(json!({"changes": changes}));
            admin_with(&client, reqwest::Method::POST, url, body).await
        }
    };
    let set = |v: i64| json!([{"op": "upsert", "key": "lookback", "value": v}]);
    assert_eq!(publish(set(41)).await.0, 200);

    // An agent whose ca_file holds another CA: a clear error, nothing published.
    let other_ca = TestCa::new("not configd's CA").unwrap();
    let ca_file = dir.path().join("configd-ca.pem");
    other_ca.write_cert(&ca_file).unwrap();
    let cfg = agent_config_with(
        &stack,
        dir.path(),
        &format!("addr = \"{base}\"\nca_file = \"{}\"", ca_file.display()),
    );
    let run = ["run", "--config", cfg.to_str().unwrap()];
    let agent = ChildProc::spawn(&binary("riskfeat-agent"), &run, &[]).unwrap();
    wait_until(
        Duration::from_secs(30),
        "the agent names the TLS failure",
        || async {
            agent_status(&stack).await["config"]["last_error"]
                .as_str()
                .is_some_and(|e| e.to_lowercase().contains("certificate"))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));
    assert!(
        published(&stack).is_none(),
        "nothing published from an untrusted server"
    );
    // The CA file fixed in place (a ConfigMap update): no restart needed.
    // A file that is not a CA first: reported, the CA in use stays.
    std::fs::write(&ca_file, "not a certificate").unwrap();
    wait_until(
        Duration::from_secs(30),
        "the bad CA file is named",
        || async {
            agent_status(&stack).await["config"]["ca_error"]
                .as_str()
                .is_some_and(|e| {
                    e.contains("configd.ca_file") && e.contains("keeping the CA in use")
                })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));
    ca.write_cert(&ca_file).unwrap();
    wait_until(Duration::from_secs(30), "config over https", || async {
        published(&stack).is_some_and(|s| s.version == 1)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));
    assert!(agent.logs().contains("configd.ca_file changed; using it"));
    assert!(agent_status(&stack).await["config"]["ca_error"].is_null());

    // Renewal (same CA, new key): new connections get the new certificate,
    // from the same process, and the agent keeps following.
    let second = ca.issue_server(&["127.0.0.1"]).unwrap();
    install_cert(dir.path(), &second);
    wait_until(
        Duration::from_secs(30),
        "renewed certificate served",
        || {
            let (ca, base, want) = (&ca, base.clone(), second.cert_der.clone());
            async move { served_cert(ca, &base).await == Some(want) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", configd.logs()));
    assert!(configd.logs().contains("TLS certificate reloaded"));
    let pid = configd.pid();
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "same process, no restart"
    );
    assert_eq!(publish(set(42)).await.0, 200);
    wait_until(Duration::from_secs(30), "agent at version 2", || async {
        published(&stack).is_some_and(|s| s.version == 2)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));

    // A renewal that does not load (the key of another certificate) is
    // refused and named; the certificate in use stays.
    let third = ca.issue_server(&["127.0.0.1"]).unwrap();
    std::fs::write(dir.path().join("tls.key"), &third.key_pem).unwrap();
    wait_until(Duration::from_secs(30), "bad renewal logged", || async {
        configd.logs().contains("renewed TLS files do not load")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", configd.logs()));
    assert!(
        configd.logs().contains("tls_key_file"),
        "the log names the file"
    );
    assert_eq!(served_cert(&ca, &base).await, Some(second.cert_der.clone()));
}

/// Issue 6's end-to-end acceptance: a publish through configd's admin API
/// changes the features the worker returns, with no restart of anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_publish_changes_the_features_the_worker_returns() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    // Steady amounts then a spike: a large z-score for user 7.
    let db = stack.pg.primary.connect_superuser().await.unwrap();
    let now = chrono::Utc::now();
    for i in 0..20i64 {
        let amount = if i == 0 {
            "5000.00"
        } else if i % 2 == 0 {
            "10.00"
        } else {
            "12.00"
        };
        let ts = (now - chrono::Duration::minutes(10 + i * 90)).to_rfc3339();
        db.execute(
            "INSERT INTO transactions (user_id, amount, ts, merchant, category) VALUES (7, $1::text::numeric, $2::text::timestamptz, 'm', 'c')",
            &[&amount, &ts],
        )
        .await
        .unwrap();
    }
    stack.pg.wait_replica_caught_up().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let configd = start_configd(&stack, dir.path(), port);
    let base = format!("http://127.0.0.1:{port}");
    wait_until(Duration::from_secs(30), "configd up", || {
        let url = format!("{base}/v1/admin/namespaces/features");
        async move { admin(reqwest::Method::PUT, url, None).await.0 == 201 }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", configd.logs()));
    let publish = |changes: Value| {
        admin(
            reqwest::Method::POST,
            format!("{base}/v1/admin/namespaces/features/publish"),
            Some(json!({"changes": changes})),
        )
    };
    assert_eq!(
        publish(json!([{"op": "upsert", "key": "zscore_above", "value": 3.0}]))
            .await
            .0,
        200
    );
    let cfg = agent_config(&stack, dir.path(), port);
    let agent = ChildProc::spawn(
        &binary("riskfeat-agent"),
        &["run", "--config", cfg.to_str().unwrap()],
        &[],
    )
    .unwrap();
    let wport = free_port();
    let wcfg = dir.path().join("worker.toml");
    std::fs::write(
        &wcfg,
        format!(
            "shared_dir = \"{}\"\nlisten = \"127.0.0.1:{wport}\"\nrecheck_interval_ms = 1000\n",
            stack.shared_dir.path().display()
        ),
    )
    .unwrap();
    let worker = ChildProc::spawn(
        &binary("riskfeat-worker"),
        &["run", "--config", wcfg.to_str().unwrap()],
        &[],
    )
    .unwrap();
    let url = format!("http://127.0.0.1:{wport}/v1/features/7");
    let features = || async {
        let r = reqwest::get(&url).await.ok()?;
        if r.status() != 200 {
            return None;
        }
        r.json::<Value>().await.ok()
    };
    wait_until(
        Duration::from_secs(60),
        "worker serves config version 1",
        || async { features().await.is_some_and(|b| b["config_version"] == 1) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\nagent:\n{}\nworker:\n{}", agent.logs(), worker.logs()));
    let before = features().await.unwrap();
    assert_eq!(before["features"]["flags"]["zscore_high"], true, "{before}");
    let worker_pid = worker.pid();
    // Publish a higher threshold: the flag drops, same processes.
    assert_eq!(
        publish(json!([{"op": "upsert", "key": "zscore_above", "value": 1000.0}]))
            .await
            .0,
        200
    );
    wait_until(
        Duration::from_secs(30),
        "worker serves config version 2",
        || async { features().await.is_some_and(|b| b["config_version"] == 2) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\nagent:\n{}\nworker:\n{}", agent.logs(), worker.logs()));
    let after = features().await.unwrap();
    assert_eq!(after["features"]["flags"]["zscore_high"], false, "{after}");
    assert_eq!(
        after["features"]["zscore"], before["features"]["zscore"],
        "same data, new threshold"
    );
    assert_eq!(worker.pid(), worker_pid);
    // The real /metrics pages of worker and configd, after real traffic,
    // pass Prometheus's own lint (the agent's is linted in tests/agent.rs).
    for page in [
        format!("http://127.0.0.1:{wport}/metrics"),
        format!("{base}/metrics"),
    ] {
        let text = reqwest::Client::new()
            .get(&page)
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.contains("riskfeat_"), "{page}: {text}");
        riskfeat_tests::promtool::check_metrics(&text).unwrap_or_else(|e| panic!("{page}: {e}"));
    }
}
