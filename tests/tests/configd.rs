//! riskfeat-configd with the agent's config client, end to end: the real
//! agent (real OpenBao + PostgreSQL via the harness) and the real configd.

use riskfeat_shared::config_file::ConfigSnapshot;
use riskfeat_tests::fixtures::sample;
use riskfeat_tests::tls::ServerCert;
use riskfeat_tests::{
    wait_until, Agent, Configd, ConfigdToken, Stack, StackOptions, TestCa, Worker,
};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

const ADMIN: &str = "admin-token-0123456789";
const READER: &str = "reader-token-0123456789";

/// configd on the stack's primary (not started): an admin token and the
/// agent's read token for `features`.
fn configd(stack: &Stack) -> Configd {
    Configd::new(
        &stack.pg.primary.superuser_dsn(),
        &[
            ConfigdToken::admin("admin", ADMIN),
            ConfigdToken::read("agent", READER, &["features"]),
        ],
    )
    .unwrap()
}

/// The agent's config, following configd at `configd_base`.
fn agent_config(stack: &Stack, dir: &Path, configd_base: &str) -> PathBuf {
    agent_config_with(stack, dir, &format!("addr = \"{configd_base}\""))
}

/// The agent's config with `[configd]` lines `addr_lines` (addr, ca_file),
/// following `features`.
fn agent_config_with(stack: &Stack, dir: &Path, addr_lines: &str) -> PathBuf {
    let lines = format!("{addr_lines}\nnamespaces = [\"features\"]");
    stack.write_configd_agent_toml(dir, READER, &lines).unwrap()
}

/// `POST /v1/admin/namespaces/<path>` with `body`, which must answer 200:
/// the version it made.
async fn admin_post_version(
    client: &reqwest::Client,
    configd: &Configd,
    path: &str,
    body: Value,
) -> u64 {
    let url = configd.url(&format!("/v1/admin/namespaces/{path}"));
    let (s, r) = admin_with(client, reqwest::Method::POST, url, Some(body)).await;
    assert_eq!(s, 200, "{r}");
    r["version"].as_u64().unwrap()
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

/// Creates the namespace `features` through `client`; the HTTP status.
async fn create_features(client: &reqwest::Client, configd: &Configd) -> u16 {
    let url = configd.url("/v1/admin/namespaces/features");
    admin_with(client, reqwest::Method::PUT, url, None).await.0
}

/// Publishes `changes` to `features` through `client`; the HTTP status.
async fn publish(client: &reqwest::Client, configd: &Configd, changes: Value) -> u16 {
    let url = configd.url("/v1/admin/namespaces/features/publish");
    let body = Some(json!({"changes": changes}));
    admin_with(client, reqwest::Method::POST, url, body).await.0
}

fn published(stack: &Stack) -> Option<ConfigSnapshot> {
    ConfigSnapshot::load(&stack.shared_dir.path().join("config/features.json")).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_publishes_last_known_config_with_configd_down_then_converges() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut configd = configd(&stack);
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
    let cfg = agent_config(&stack, dir.path(), configd.http().base());
    let agent = Agent::spawn(&cfg, stack.shared_dir.path(), &[]).unwrap();
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
    configd.start("").await.unwrap();
    let http = reqwest::Client::new();
    assert_eq!(create_features(&http, &configd).await, 201);
    let upsert = |key: &str, value: i64| json!([{"op": "upsert", "key": key, "value": value}]);
    assert_eq!(publish(&http, &configd, upsert("lookback", 40)).await, 200);
    assert_eq!(publish(&http, &configd, upsert("ma_window", 5)).await, 200);
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
    let delete = json!([{"op": "delete", "key": "lookback"}]);
    assert_eq!(publish(&http, &configd, delete).await, 200);
    wait_until(Duration::from_secs(30), "agent at version 3", || async {
        published(&stack).is_some_and(|s| s.version == 3 && !s.items.contains_key("lookback"))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));
    // The private cache follows, and /status reports the version.
    let cache = ConfigSnapshot::load(&cache_dir.join("features.json")).unwrap();
    assert_eq!(cache.version, 3);
    let st = agent.status().await.unwrap();
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

/// Waits until the agent's `/status` has a `config.<field>` text that `ok`
/// accepts.
async fn wait_config_text(agent: &Agent, field: &str, what: &str, ok: impl Fn(&str) -> bool) {
    wait_until(Duration::from_secs(30), what, || async {
        agent.status().await.unwrap_or_default()["config"][field]
            .as_str()
            .is_some_and(&ok)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));
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
    let ca = TestCa::new("riskfeat test configd CA").unwrap();
    let trusted = client_trusting(&ca);
    let mut configd = configd(&stack).with_tls(trusted.clone());
    let first = ca.issue_server(&["127.0.0.1"]).unwrap();
    install_cert(configd.dir(), &first);
    configd
        .spawn("tls_cert_file='tls.crt'\ntls_key_file='tls.key'")
        .unwrap();
    configd.wait_ready(Duration::from_secs(30)).await.unwrap();
    assert_eq!(create_features(&trusted, &configd).await, 201);
    let base = configd.http().base().to_string();
    let port = configd.http().port();
    assert_eq!(served_cert(&ca, &base).await, Some(first.cert_der.clone()));
    // No plaintext on the TLS port, and the system roots do not vouch for it.
    let plain = format!("http://127.0.0.1:{port}/healthz");
    let plain_ok = reqwest::get(&plain)
        .await
        .is_ok_and(|r| r.status().is_success());
    assert!(!plain_ok, "plain HTTP is not answered on the TLS port");
    let system_roots = reqwest::Client::new();
    let (code, _) = admin_with(
        &system_roots,
        reqwest::Method::GET,
        format!("{base}/healthz"),
        None,
    )
    .await;
    assert_eq!(code, 0, "a client without the CA is refused");

    let set = |v: i64| json!([{"op": "upsert", "key": "lookback", "value": v}]);
    assert_eq!(publish(&trusted, &configd, set(41)).await, 200);

    // An agent whose ca_file holds another CA: a clear error, nothing published.
    let other_ca = TestCa::new("not configd's CA").unwrap();
    let ca_file = dir.path().join("configd-ca.pem");
    other_ca.write_cert(&ca_file).unwrap();
    let cfg = agent_config_with(
        &stack,
        dir.path(),
        &format!("addr = \"{base}\"\nca_file = \"{}\"", ca_file.display()),
    );
    let agent = Agent::spawn(&cfg, stack.shared_dir.path(), &[]).unwrap();
    wait_config_text(
        &agent,
        "last_error",
        "the agent names the TLS failure",
        |e| e.to_lowercase().contains("certificate"),
    )
    .await;
    assert!(
        published(&stack).is_none(),
        "nothing published from an untrusted server"
    );
    // The CA file fixed in place (a ConfigMap update): no restart needed.
    // A file that is not a CA first: reported, the CA in use stays.
    std::fs::write(&ca_file, "not a certificate").unwrap();
    wait_config_text(&agent, "ca_error", "the bad CA file is named", |e| {
        e.contains("configd.ca_file") && e.contains("keeping the CA in use")
    })
    .await;
    ca.write_cert(&ca_file).unwrap();
    wait_until(Duration::from_secs(30), "config over https", || async {
        published(&stack).is_some_and(|s| s.version == 1)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));
    assert!(agent.logs().contains("configd.ca_file changed; using it"));
    assert!(agent.status().await.unwrap_or_default()["config"]["ca_error"].is_null());

    // Renewal (same CA, new key): new connections get the new certificate,
    // from the same process, and the agent keeps following.
    let second = ca.issue_server(&["127.0.0.1"]).unwrap();
    install_cert(configd.dir(), &second);
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
    assert_eq!(publish(&trusted, &configd, set(42)).await, 200);
    wait_until(Duration::from_secs(30), "agent at version 2", || async {
        published(&stack).is_some_and(|s| s.version == 2)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));

    // A renewal that does not load (the key of another certificate) is
    // refused and named; the certificate in use stays.
    let third = ca.issue_server(&["127.0.0.1"]).unwrap();
    std::fs::write(configd.dir().join("tls.key"), &third.key_pem).unwrap();
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
    // Steady amounts then a spike: a large z-score for user 7.
    let stack = riskfeat_tests::data::stack_with_spike(7).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut configd = configd(&stack);
    configd.start("").await.unwrap();
    let http = reqwest::Client::new();
    assert_eq!(create_features(&http, &configd).await, 201);
    let threshold = |v: f64| json!([{"op": "upsert", "key": "zscore_above", "value": v}]);
    assert_eq!(publish(&http, &configd, threshold(3.0)).await, 200);
    let cfg = agent_config(&stack, dir.path(), configd.http().base());
    let agent = Agent::spawn(&cfg, stack.shared_dir.path(), &[]).unwrap();
    let worker = Worker::spawn(stack.shared_dir.path(), "recheck_interval_ms = 1000").unwrap();
    let url = worker.url("/v1/features/7");
    let features = || async {
        let r = reqwest::get(&url).await.ok()?;
        if r.status() != 200 {
            return None;
        }
        r.json::<Value>().await.ok()
    };
    // The features once the worker serves config `version`.
    let served = |version: u64| {
        let what = format!("worker serves config version {version}");
        let (features, agent, worker) = (&features, &agent, &worker);
        async move {
            wait_until(Duration::from_secs(60), &what, || async {
                features()
                    .await
                    .is_some_and(|b| b["config_version"] == version)
            })
            .await
            .unwrap_or_else(|e| {
                panic!("{e}\nagent:\n{}\nworker:\n{}", agent.logs(), worker.logs())
            });
            features().await.unwrap()
        }
    };
    let before = served(1).await;
    assert_eq!(before["features"]["flags"]["zscore_high"], true, "{before}");
    let worker_pid = worker.pid();
    // Publish a higher threshold: the flag drops, same processes.
    assert_eq!(publish(&http, &configd, threshold(1000.0)).await, 200);
    let after = served(2).await;
    assert_eq!(after["features"]["flags"]["zscore_high"], false, "{after}");
    assert_eq!(
        after["features"]["zscore"], before["features"]["zscore"],
        "same data, new threshold"
    );
    assert_eq!(worker.pid(), worker_pid);
    // The files the agent (db.json, config/features.json) and the worker
    // (worker.json) wrote match docs/schemas/.
    let checked = riskfeat_tests::schemas::check_shared_dir(stack.shared_dir.path())
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(checked, ["db", "worker", "config"]);
    // The real /metrics pages of worker and configd, after real traffic,
    // pass Prometheus's own lint (the agent's is linted in tests/agent/).
    for page in [worker.url("/metrics"), configd.url("/metrics")] {
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

/// The published config of `shared` (None: not yet).
fn published_in(shared: &Path) -> Option<ConfigSnapshot> {
    ConfigSnapshot::load(&shared.join("config/features.json")).ok()
}

/// Waits until the agent of `shared` has published `zscore_above = want`.
async fn wait_zscore(shared: &Path, want: f64, what: &str, agent: &Agent) {
    wait_until(Duration::from_secs(30), what, || async {
        published_in(shared).is_some_and(|s| s.items.get("zscore_above") == Some(&json!(want)))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));
}

/// Waits until `worker` has config `version` in force, failing at once
/// when it rejects a config file instead (its error and log).
async fn wait_worker_at(worker: &Worker, version: u64) {
    let config = || async { worker.status().await.unwrap_or_default()["config"].clone() };
    let what = format!("the worker at config version {version}, or rejecting one");
    wait_until(Duration::from_secs(30), &what, || async {
        let c = config().await;
        c["version"] == version || !c["error"].is_null()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", worker.logs()));
    let c = config().await;
    assert!(
        c["version"] == version && c["error"].is_null(),
        "the worker rejected a config: {c}\n{}",
        worker.logs()
    );
}

/// Two agents on the bootstrapped `features` namespace (its schema
/// installed from k8s/bootstrap/configd/, as production does), one
/// labelled `canary=true` through a downward-API labels file: a gray
/// release to `canary=true` reaches only that agent's config file, the
/// other stays; promote reaches both; a publish the schema refuses is a
/// 400 naming the key and never reaches either agent nor the canary's
/// worker (configd -> agent -> worker: the worker applies the gray and the
/// promoted versions and rejects nothing); the rollout view lists both
/// agents by client id with the version they applied.
///
/// Checked: with the selector match in configd's `/changes` always true
/// the plain agent gets the gray value and this test fails at "the plain
/// agent stays" (2.5, not 3.0); without the agent's identity headers the
/// canary never gets it ("gray reaches the canary" times out); with the
/// schema check at publish skipped, at the 400 (`(200, None)`); with every
/// schema check skipped and that 400 assertion taken out, the worker
/// fails it: "the worker rejected a config: ... config version 4
/// rejected: lookback = 0: expected 1..=1000".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gray_release_reaches_only_the_canary_agent_then_promote_reaches_both() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    let mut configd = configd(&stack);
    configd.start("").await.unwrap();
    configd.bootstrap_features(ADMIN).await.unwrap();
    let http = reqwest::Client::new();
    let upsert = |key: &str, value: Value| json!([{"op": "upsert", "key": key, "value": value}]);
    assert_eq!(
        publish(&http, &configd, upsert("zscore_above", json!(3.0))).await,
        200
    );

    // The canary: the stack's shared dir, labels from a downward API file.
    let dir_a = tempfile::tempdir().unwrap();
    std::fs::write(
        dir_a.path().join("labels"),
        "app=\"riskfeat\"\ncanary=\"true\"\n",
    )
    .unwrap();
    let lines = format!(
        "addr = \"{}\"\nclient_id = \"pod-canary\"\nlabels_file = \"{}\"",
        configd.http().base(),
        dir_a.path().join("labels").display()
    );
    let cfg_a = agent_config_with(&stack, dir_a.path(), &lines);
    let agent_a = Agent::spawn(&cfg_a, stack.shared_dir.path(), &[]).unwrap();
    // The canary's worker: it reads what agent A publishes.
    let worker = Worker::spawn(stack.shared_dir.path(), "recheck_interval_ms = 1000").unwrap();
    // The plain agent: a shared dir of its own.
    let dir_b = tempfile::tempdir().unwrap();
    let shared_b = riskfeat_tests::stack::shared_dir().unwrap();
    let lines = format!(
        "addr = \"{}\"\nclient_id = \"pod-plain\"\nlabels = {{ app = \"riskfeat\" }}",
        configd.http().base()
    );
    let cfg_b = agent_config_with(&stack, dir_b.path(), &lines);
    let text = std::fs::read_to_string(&cfg_b).unwrap().replace(
        &format!("shared_dir = \"{}\"", stack.shared_dir.path().display()),
        &format!("shared_dir = \"{}\"", shared_b.path().display()),
    );
    std::fs::write(&cfg_b, text).unwrap();
    let agent_b = Agent::spawn(&cfg_b, shared_b.path(), &[]).unwrap();
    let (a, b) = (stack.shared_dir.path(), shared_b.path());
    wait_zscore(a, 3.0, "canary at 3.0", &agent_a).await;
    wait_zscore(b, 3.0, "plain at 3.0", &agent_b).await;

    // Gray to canary=true.
    let body = json!({"selector": {"labels": {"canary": "true"}},
                      "changes": [{"op": "upsert", "key": "zscore_above", "value": 2.5}]});
    let gray_version = admin_post_version(&http, &configd, "features/gray", body).await;
    wait_zscore(a, 2.5, "gray reaches the canary", &agent_a).await;
    wait_worker_at(&worker, gray_version).await;
    // The plain agent has seen the gray start's version, with its items.
    wait_until(
        Duration::from_secs(30),
        "plain agent at the gray version",
        || async { published_in(b).is_some_and(|s| s.version == gray_version) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent_b.logs()));
    assert_eq!(
        published_in(b).unwrap().items["zscore_above"],
        json!(3.0),
        "the plain agent stays"
    );

    // A value the schema refuses: 400 naming the key; neither agent nor
    // the worker ever sees it.
    let url = configd.url("/v1/admin/namespaces/features/publish");
    let bad = json!({"changes": [{"op": "upsert", "key": "lookback", "value": 0}]});
    let (s, r) = admin_with(&http, reqwest::Method::POST, url, Some(bad)).await;
    assert_eq!(
        (s, r["error"]["field"].as_str()),
        (400, Some("changes[0].value")),
        "{r}"
    );
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"lookback\""),
        "{r}"
    );

    // Promote: both agents.
    let promoted = admin_post_version(&http, &configd, "features/gray/promote", json!({})).await;
    wait_zscore(b, 2.5, "promote reaches the plain agent", &agent_b).await;
    wait_until(
        Duration::from_secs(30),
        "both at the promoted version",
        || async {
            published_in(a).is_some_and(|s| s.version == promoted)
                && published_in(b).is_some_and(|s| s.version == promoted)
        },
    )
    .await
    .unwrap();
    // The worker applied every version it was given (the gray view, then
    // the promoted one) and rejected none: it never saw the refused value.
    wait_worker_at(&worker, promoted).await;
    let m = worker.metrics().await.unwrap();
    let rejected = "riskfeat_worker_config_reloads_total{result=\"rejected\"}";
    assert_eq!(sample(&m, rejected).unwrap_or(0.0), 0.0, "{m}");
    for s in [published_in(a).unwrap(), published_in(b).unwrap()] {
        assert!(
            !s.items.contains_key("lookback"),
            "the refused value never arrived: {s:?}"
        );
    }
    // The rollout view knows both agents.
    let url = configd.url("/v1/admin/namespaces/features/rollout");
    wait_until(
        Duration::from_secs(60),
        "both agents in the rollout view",
        || async {
            let (_, r) = admin_with(&http, reqwest::Method::GET, url.clone(), None).await;
            let ids: Vec<(&str, u64)> = r["clients"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    (
                        c["client_id"].as_str().unwrap_or(""),
                        c["version"].as_u64().unwrap_or(0),
                    )
                })
                .collect();
            ids.contains(&("pod-canary", promoted)) && ids.contains(&("pod-plain", promoted))
        },
    )
    .await
    .unwrap();
}
