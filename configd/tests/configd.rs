//! riskfeat-configd against a real PostgreSQL 15 (harness `PgCluster`),
//! running the real binary: publish/watch/changes under concurrent
//! publishers and across two instances, restart while clients watch,
//! compaction, PostgreSQL outage, bad input, single-flight cache misses.

use reqwest::StatusCode;
use riskfeat_tests::openapi::{axum_routes, OpenApi};
use riskfeat_tests::{binary, wait_until, ChildProc, PgCluster, PgServer};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

const ADMIN: &str = "admin-token-0123456789";
const READER: &str = "reader-token-0123456789";
const SCOPED: &str = "scoped-token-0123456789";

struct Configd {
    proc: Option<ChildProc>,
    base: String,
    port: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Configd {
    async fn start(pg: &PgServer, extra: &str) -> Configd {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db.dsn"), pg.superuser_dsn()).unwrap();
        std::fs::write(
            dir.path().join("tokens.toml"),
            format!(
                "[[tokens]]\nname='admin'\ntoken='{ADMIN}'\nrole='admin'\nnamespaces=['*']\n\
                 [[tokens]]\nname='reader'\ntoken='{READER}'\nrole='read'\nnamespaces=['*']\n\
                 [[tokens]]\nname='scoped'\ntoken='{SCOPED}'\nrole='read'\nnamespaces=['features']\n"
            ),
        )
        .unwrap();
        let mut c = Configd {
            proc: None,
            base: String::new(),
            port: free_port(),
            dir,
        };
        c.write_config(extra);
        c.spawn().await;
        c
    }

    fn write_config(&self, extra: &str) {
        std::fs::write(
            self.dir.path().join("configd.toml"),
            format!(
                "listen='127.0.0.1:{}'\ndatabase_url_file='db.dsn'\ntokens_file='tokens.toml'\nscan_interval_s=1\nmax_value_bytes=1024\n{extra}\n",
                self.port
            ),
        )
        .unwrap();
    }

    async fn spawn(&mut self) {
        let cfg = self.dir.path().join("configd.toml");
        let p = ChildProc::spawn(
            &binary("riskfeat-configd"),
            &["--config", cfg.to_str().unwrap()],
            &[("RISKFEAT_LOG", "info,riskfeat_configd=debug")],
        )
        .unwrap();
        self.base = format!("http://127.0.0.1:{}", self.port);
        self.proc = Some(p);
        let url = format!("{}/readyz", self.base);
        wait_until(Duration::from_secs(30), "configd ready", || {
            let url = url.clone();
            async move {
                match reqwest::get(&url).await {
                    Ok(r) => r.status() == StatusCode::OK,
                    Err(_) => false,
                }
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
    }

    fn stop(&mut self) {
        self.proc = None;
    }

    fn logs(&self) -> String {
        self.proc.as_ref().map(|p| p.logs()).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

/// docs/openapi/configd.yaml: every JSON answer these tests get through
/// `req`, `Local` and the publish helper is checked against it.
fn api() -> &'static OpenApi {
    static API: OnceLock<OpenApi> = OnceLock::new();
    API.get_or_init(|| OpenApi::load("configd").unwrap())
}

/// Panics when an answer does not match the document (304 has no body).
fn conforms(method: &reqwest::Method, url: &str, status: StatusCode, body: &Value) {
    if status == StatusCode::NOT_MODIFIED {
        return;
    }
    let path = reqwest::Url::parse(url).unwrap().path().to_string();
    api()
        .check_path(method.as_str(), &path, status.as_u16(), body, "Error")
        .unwrap_or_else(|e| panic!("{e:#}"));
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

async fn req(
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut r = http().request(method.clone(), &url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    conforms(&method, &url, status, &body);
    (status, body)
}

async fn create(c: &Configd, ns: &str) {
    let (s, b) = req(
        reqwest::Method::PUT,
        c.url(&format!("/v1/admin/namespaces/{ns}")),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
}

async fn publish(c: &Configd, ns: &str, changes: Value) -> u64 {
    let (s, b) = req(
        reqwest::Method::POST,
        c.url(&format!("/v1/admin/namespaces/{ns}/publish")),
        Some(ADMIN),
        Some(json!({"author": "test", "comment": "t", "changes": changes})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["version"].as_u64().unwrap()
}

/// A client's local copy, kept like the agent keeps it.
#[derive(Debug, Default, Clone, PartialEq)]
struct Local {
    version: u64,
    items: BTreeMap<String, Value>,
    snapshots: u32,
}

impl Local {
    /// One `changes?from=` round; returns whether it was a snapshot.
    async fn sync(&mut self, c: &Configd, ns: &str) -> anyhow::Result<bool> {
        let url = c.url(&format!(
            "/v1/namespaces/{ns}/changes?from={}",
            self.version
        ));
        let resp = http().get(&url).bearer_auth(READER).send().await?;
        anyhow::ensure!(
            resp.status() == StatusCode::OK,
            "changes: {}",
            resp.status()
        );
        let b: Value = resp.json().await?;
        conforms(&reqwest::Method::GET, &url, StatusCode::OK, &b);
        let snapshot = b["snapshot"].as_bool().unwrap();
        if snapshot {
            self.snapshots += 1;
            self.items = serde_json::from_value(b["items"].clone())?;
        } else {
            let mut last = self.version;
            for op in b["ops"].as_array().unwrap() {
                let v = op["version"].as_u64().unwrap();
                assert!(
                    v > self.version && v >= last,
                    "op out of order: {op} after {last}"
                );
                last = v;
                let key = op["key"].as_str().unwrap().to_string();
                match op["op"].as_str().unwrap() {
                    "upsert" => {
                        self.items.insert(key, op["value"].clone());
                    }
                    _ => {
                        self.items.remove(&key);
                    }
                }
            }
        }
        self.version = b["to"].as_u64().unwrap();
        Ok(snapshot)
    }

    /// Long-polls until the namespace reaches `target`, tolerating errors
    /// (restarts) along the way.
    async fn follow_until(&mut self, c: &Configd, ns: &str, target: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.version < target {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never reached {target}: at {}",
                self.version
            );
            let w = http()
                .get(c.url(&format!(
                    "/v1/namespaces/{ns}/watch?version={}&timeout_s=5",
                    self.version
                )))
                .bearer_auth(READER)
                .send()
                .await;
            match w {
                Ok(r) if r.status() == StatusCode::OK => {
                    let _ = self.sync(c, ns).await;
                }
                Ok(r) if r.status() == StatusCode::NOT_MODIFIED => {}
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

async fn server_items(c: &Configd, ns: &str) -> (u64, BTreeMap<String, Value>) {
    let (s, b) = req(
        reqwest::Method::GET,
        c.url(&format!("/v1/admin/namespaces/{ns}/items")),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    (
        b["to"].as_u64().unwrap(),
        serde_json::from_value(b["items"].clone()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_on_two_instances_lose_and_duplicate_nothing() {
    let pg = PgCluster::start(false).await.unwrap();
    let a = Configd::start(&pg.primary, "").await;
    let b = Configd::start(&pg.primary, "").await;
    create(&a, "features").await;
    // A watcher on B, from version 0.
    let watch_url = b.url("/v1/namespaces/features/watch?version=0&timeout_s=30");
    let watcher =
        tokio::spawn(async move { req(reqwest::Method::GET, watch_url, Some(READER), None).await });
    let mut follower = Local::default();
    let mut tasks = Vec::new();
    for p in 0..8 {
        let (aurl, burl) = (a.url(""), b.url(""));
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..10 {
                let base = if (p + i) % 2 == 0 { &aurl } else { &burl };
                let (s, body) = req(
                    reqwest::Method::POST,
                    format!("{base}/v1/admin/namespaces/features/publish"),
                    Some(ADMIN),
                    Some(json!({"changes": [{"op": "upsert", "key": format!("p{p}-{i}"), "value": {"p": p, "i": i}}]})),
                )
                .await;
                assert_eq!(s, StatusCode::OK, "{body}");
                got.push(body["version"].as_u64().unwrap());
            }
            got
        }));
    }
    let mut versions: Vec<u64> = Vec::new();
    for t in tasks {
        versions.extend(t.await.unwrap());
    }
    versions.sort();
    assert_eq!(
        versions,
        (1..=80).collect::<Vec<_>>(),
        "every publish got its own version"
    );
    let (s, w) = watcher.await.unwrap();
    assert_eq!(s, StatusCode::OK);
    assert!(w["version"].as_u64().unwrap() >= 1);
    // Both instances converge to 80 (B via NOTIFY), and a client following
    // B incrementally ends with exactly A's items.
    follower.follow_until(&b, "features", 80).await;
    let (va, items_a) = server_items(&a, "features").await;
    let (vb, items_b) = server_items(&b, "features").await;
    assert_eq!((va, vb), (80, 80));
    assert_eq!(items_a.len(), 80);
    assert_eq!(items_a, items_b);
    assert_eq!(follower.items, items_a);
    // The incremental log from 40 holds versions 41..=80 exactly once.
    let (s, ch) = req(
        reqwest::Method::GET,
        b.url("/v1/namespaces/features/changes?from=40"),
        Some(READER),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ch["snapshot"], false);
    let vs: Vec<u64> = ch["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["version"].as_u64().unwrap())
        .collect();
    assert_eq!(vs, (41..=80).collect::<Vec<_>>());
    // History has every version with its author.
    let (_, h) = req(
        reqwest::Method::GET,
        a.url("/v1/admin/namespaces/features/history?limit=1000"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(h["history"].as_array().unwrap().len(), 80);
    // Optimistic concurrency: a stale expected_version is a 409 and changes nothing.
    let (s, e) = req(
        reqwest::Method::POST,
        a.url("/v1/admin/namespaces/features/publish"),
        Some(ADMIN),
        Some(json!({"expected_version": 3, "changes": [{"op": "delete", "key": "p0-0"}]})),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert_eq!(e["error"]["field"], "expected_version");
    assert_eq!(server_items(&a, "features").await.0, 80);
    // Multi-namespace watch answers for the namespace that changed.
    create(&a, "other").await;
    let url = b.url("/v1/watch");
    let multi = tokio::spawn(async move {
        req(
            reqwest::Method::POST,
            url,
            Some(READER),
            Some(json!({"namespaces": {"features": 80, "other": 0}, "timeout_s": 30})),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(
        &a,
        "other",
        json!([{"op": "upsert", "key": "k", "value": 1}]),
    )
    .await;
    let (s, m) = multi.await.unwrap();
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(m["changed"], json!({"other": 1}));
    // And a watch with nothing new times out with 304.
    let (s, _) = req(
        reqwest::Method::GET,
        b.url("/v1/namespaces/other/watch?version=1&timeout_s=1"),
        Some(READER),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_MODIFIED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_keep_following_across_a_configd_restart() {
    let pg = PgCluster::start(false).await.unwrap();
    let mut a = Configd::start(&pg.primary, "").await;
    create(&a, "features").await;
    publish(
        &a,
        "features",
        json!([{"op": "upsert", "key": "a", "value": 1}]),
    )
    .await;
    let mut local = Local::default();
    local.follow_until(&a, "features", 1).await;
    // A watch is held when configd goes away.
    let url = a.url("/v1/namespaces/features/watch?version=1&timeout_s=30");
    let held = tokio::spawn(async move {
        http()
            .get(url)
            .bearer_auth(READER)
            .send()
            .await
            .map(|r| r.status())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.stop();
    let r = held.await.unwrap();
    assert!(
        r.is_err(),
        "the held watch ends with a connection error: {r:?}"
    );
    a.spawn().await;
    publish(
        &a,
        "features",
        json!([{"op": "upsert", "key": "b", "value": 2}, {"op": "delete", "key": "a"}]),
    )
    .await;
    local.follow_until(&a, "features", 2).await;
    assert_eq!(local.items, BTreeMap::from([("b".to_string(), json!(2))]));
    assert_eq!(
        local.snapshots, 1,
        "after the restart the client continued incrementally"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_compaction_a_client_falls_back_to_a_snapshot_with_the_same_items() {
    let pg = PgCluster::start(false).await.unwrap();
    let mut a = Configd::start(&pg.primary, "retention_versions=3\ncompact_interval_s=1").await;
    create(&a, "features").await;
    let mut early = Local::default();
    publish(&a, "features", json!([{"op": "upsert", "key": "keep", "value": "v1"}, {"op": "upsert", "key": "gone", "value": 0}])).await;
    early.follow_until(&a, "features", 1).await;
    for i in 2..=10 {
        let mut ch = vec![json!({"op": "upsert", "key": format!("k{}", i % 4), "value": i})];
        if i == 5 {
            ch.push(json!({"op": "delete", "key": "gone"}));
        }
        publish(&a, "features", json!(ch)).await;
    }
    // Compaction ran in the database.
    let db = pg.primary.connect_superuser().await.unwrap();
    wait_until(Duration::from_secs(20), "compaction", || {
        let db = &db;
        async move {
            db.query_one(
                "SELECT compacted_to FROM configd_namespaces WHERE name = 'features'",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0) == 7)
            .unwrap_or(false)
        }
    })
    .await
    .unwrap();
    // Restart so the cache reloads from the compacted database.
    a.stop();
    a.spawn().await;
    let snaps = early.snapshots;
    early.follow_until(&a, "features", 10).await;
    assert_eq!(
        early.snapshots,
        snaps + 1,
        "version 1 is compacted: the client got a snapshot"
    );
    let (v, items) = server_items(&a, "features").await;
    assert_eq!(v, 10);
    assert_eq!(early.items, items);
    assert!(!items.contains_key("gone"));
    // A client inside the retained window still goes incrementally.
    let (_, ch) = req(
        reqwest::Method::GET,
        a.url("/v1/namespaces/features/changes?from=8"),
        Some(READER),
        None,
    )
    .await;
    assert_eq!(ch["snapshot"], false, "{ch}");
    // Diff and rollback work inside the retained range, and refuse outside it.
    let (s, d) = req(
        reqwest::Method::GET,
        a.url("/v1/admin/namespaces/features/diff?from=8&to=10"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(d["changes"].as_array().unwrap().len(), 2, "{d}");
    let (s, e) = req(
        reqwest::Method::POST,
        a.url("/v1/admin/namespaces/features/rollback"),
        Some(ADMIN),
        Some(json!({"to_version": 2})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["error"]["field"], "to_version");
    let (s, r) = req(
        reqwest::Method::POST,
        a.url("/v1/admin/namespaces/features/rollback"),
        Some(ADMIN),
        Some(json!({"to_version": 8, "comment": "undo"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["version"], 11);
    let (_, items) = server_items(&a, "features").await;
    assert_eq!(items["k1"], json!(5));
    assert_eq!(items["k2"], json!(6));
    assert_eq!(items["k3"], json!(7));
    assert_eq!(items["k0"], json!(8));
    assert_eq!(items["keep"], json!("v1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_cache_serves_degraded_then_catches_up() {
    let mut pg = PgCluster::start(false).await.unwrap();
    let a = Configd::start(&pg.primary, "").await;
    create(&a, "features").await;
    publish(
        &a,
        "features",
        json!([{"op": "upsert", "key": "x", "value": 1}]),
    )
    .await;
    let (_, before) = server_items(&a, "features").await;
    pg.primary.stop().unwrap();
    wait_until(Duration::from_secs(20), "degraded", || async {
        let (_, r) = req(reqwest::Method::GET, a.url("/readyz"), None, None).await;
        r["status"] == "degraded"
    })
    .await
    .unwrap();
    assert_eq!(a.metric("riskfeat_configd_pg_up").await, 0.0);
    // Watches and changes still answer from the cache.
    let (s, w) = req(
        reqwest::Method::GET,
        a.url("/v1/namespaces/features/watch?version=0&timeout_s=1"),
        Some(READER),
        None,
    )
    .await;
    assert_eq!((s, w["version"].as_u64()), (StatusCode::OK, Some(1)));
    let (s, _) = req(
        reqwest::Method::GET,
        a.url("/v1/namespaces/features/watch?version=1&timeout_s=1"),
        Some(READER),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_MODIFIED);
    let mut local = Local::default();
    local.sync(&a, "features").await.unwrap();
    assert_eq!(local.items, before);
    // A publish cannot succeed and says why.
    let (s, e) = req(
        reqwest::Method::POST,
        a.url("/v1/admin/namespaces/features/publish"),
        Some(ADMIN),
        Some(json!({"changes": [{"op": "upsert", "key": "y", "value": 2}]})),
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{e}");
    // A watcher held through the outage sees a publish made elsewhere once PG is back.
    let url = a.url("/v1/namespaces/features/watch?version=1&timeout_s=60");
    let held =
        tokio::spawn(async move { req(reqwest::Method::GET, url, Some(READER), None).await });
    pg.primary.start().unwrap();
    let b = Configd::start(&pg.primary, "").await;
    publish(
        &b,
        "features",
        json!([{"op": "upsert", "key": "y", "value": 2}]),
    )
    .await;
    let (s, w) = held.await.unwrap();
    assert_eq!(
        (s, w["version"].as_u64()),
        (StatusCode::OK, Some(2)),
        "{}",
        a.logs()
    );
    wait_until(Duration::from_secs(20), "ready again", || async {
        let (_, r) = req(reqwest::Method::GET, a.url("/readyz"), None, None).await;
        r["status"] == "ready"
    })
    .await
    .unwrap();
    local.follow_until(&a, "features", 2).await;
    assert_eq!(local.items["y"], json!(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let pg = PgCluster::start(false).await.unwrap();
    let a = Configd::start(&pg.primary, "").await;
    create(&a, "features").await;
    create(&a, "secret-ns").await;
    publish(
        &a,
        "features",
        json!([{"op": "upsert", "key": "x", "value": 1}]),
    )
    .await;
    let before = server_items(&a, "features").await;
    let publish_url = a.url("/v1/admin/namespaces/features/publish");
    let raw = |body: &'static str, token: Option<&'static str>| {
        let url = publish_url.clone();
        let url_for_check = url.clone();
        async move {
            let mut r = http()
                .post(url)
                .header("content-type", "application/json")
                .body(body);
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            let resp = r.send().await.unwrap();
            let s = resp.status();
            let b = resp.json::<Value>().await.unwrap_or(Value::Null);
            conforms(&reqwest::Method::POST, &url_for_check, s, &b);
            (s, b)
        }
    };
    let big = "x".repeat(2000);
    let cases: Vec<(&str, StatusCode, &str, (StatusCode, Value))> = vec![
        ("invalid JSON", StatusCode::BAD_REQUEST, "body", raw("{\"changes\": [", Some(ADMIN)).await),
        ("unknown field", StatusCode::BAD_REQUEST, "chnages", raw("{\"chnages\": []}", Some(ADMIN)).await),
        ("empty change set", StatusCode::BAD_REQUEST, "changes", raw("{\"changes\": []}", Some(ADMIN)).await),
        (
            "upsert without value",
            StatusCode::BAD_REQUEST,
            "changes[0].value",
            raw("{\"changes\": [{\"op\":\"upsert\",\"key\":\"k\"}]}", Some(ADMIN)).await,
        ),
        (
            "oversized value",
            StatusCode::PAYLOAD_TOO_LARGE,
            "changes[1].value",
            req(
                reqwest::Method::POST,
                publish_url.clone(),
                Some(ADMIN),
                Some(json!({"changes": [{"op": "upsert", "key": "ok", "value": 1}, {"op": "upsert", "key": "big", "value": big}]})),
            )
            .await,
        ),
        ("missing token", StatusCode::UNAUTHORIZED, "Authorization", raw("{\"changes\": []}", None).await),
        ("wrong token", StatusCode::UNAUTHORIZED, "Authorization", raw("{\"changes\": []}", Some("not-a-token-at-all")).await),
        (
            "read token publishing",
            StatusCode::FORBIDDEN,
            "Authorization",
            raw("{\"changes\": [{\"op\":\"delete\",\"key\":\"x\"}]}", Some(READER)).await,
        ),
        (
            "unknown namespace",
            StatusCode::NOT_FOUND,
            "namespace",
            req(reqwest::Method::GET, a.url("/v1/namespaces/nope/changes?from=0"), Some(READER), None).await,
        ),
        (
            "unknown namespace watch",
            StatusCode::NOT_FOUND,
            "version",
            req(reqwest::Method::GET, a.url("/v1/namespaces/nope/watch?version=0&timeout_s=1"), Some(READER), None).await,
        ),
        (
            "version from the future",
            StatusCode::BAD_REQUEST,
            "version",
            req(reqwest::Method::GET, a.url("/v1/namespaces/features/watch?version=99&timeout_s=1"), Some(READER), None).await,
        ),
        (
            "changes from the future",
            StatusCode::BAD_REQUEST,
            "from",
            req(reqwest::Method::GET, a.url("/v1/namespaces/features/changes?from=99"), Some(READER), None).await,
        ),
        (
            "bad version number",
            StatusCode::BAD_REQUEST,
            "version",
            req(reqwest::Method::GET, a.url("/v1/namespaces/features/watch?version=-1"), Some(READER), None).await,
        ),
        (
            "token for another namespace",
            StatusCode::FORBIDDEN,
            "namespace",
            req(reqwest::Method::GET, a.url("/v1/namespaces/secret-ns/changes?from=0"), Some(SCOPED), None).await,
        ),
        (
            "multi-watch with a namespace out of scope",
            StatusCode::FORBIDDEN,
            "namespaces.secret-ns",
            req(reqwest::Method::POST, a.url("/v1/watch"), Some(SCOPED), Some(json!({"namespaces": {"features": 0, "secret-ns": 0}}))).await,
        ),
        (
            "invalid namespace name",
            StatusCode::BAD_REQUEST,
            "namespace",
            req(reqwest::Method::PUT, a.url("/v1/admin/namespaces/..bad"), Some(ADMIN), None).await,
        ),
        (
            "duplicate key",
            StatusCode::BAD_REQUEST,
            "changes[1].key",
            raw(
                "{\"changes\": [{\"op\":\"delete\",\"key\":\"x\"},{\"op\":\"upsert\",\"key\":\"x\",\"value\":2}]}",
                Some(ADMIN),
            )
            .await,
        ),
    ];
    for (what, status, field, (got, body)) in cases {
        assert_eq!(got, status, "{what}: {body}");
        assert_eq!(body["error"]["field"], field, "{what}: {body}");
        assert!(
            !body["error"]["message"].as_str().unwrap_or("").is_empty(),
            "{what}: {body}"
        );
    }
    // The scoped token may read its own namespace.
    let (s, _) = req(
        reqwest::Method::GET,
        a.url("/v1/namespaces/features/changes?from=0"),
        Some(SCOPED),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        server_items(&a, "features").await,
        before,
        "nothing changed"
    );
    let db = pg.primary.connect_superuser().await.unwrap();
    let n: i64 = db
        .query_one("SELECT count(*) FROM configd_changes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "no change was logged by a rejected request");

    // The rest of the surface, each answer checked against the document by
    // `req`: an unknown route, the operations endpoints, history, a delete.
    let (s, b) = req(reqwest::Method::GET, a.url("/v1/nope"), Some(READER), None).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("no_such_route"))
    );
    let (s, _) = req(reqwest::Method::GET, a.url("/healthz"), None, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = req(reqwest::Method::GET, a.url("/readyz"), None, None).await;
    assert_eq!((s, b["status"].as_str()), (StatusCode::OK, Some("ready")));
    let history = a.url("/v1/admin/namespaces/features/history?limit=5");
    let (s, b) = req(reqwest::Method::GET, history, Some(ADMIN), None).await;
    assert_eq!(
        (s, b["history"][0]["version"].as_u64()),
        (StatusCode::OK, Some(1))
    );
    let secret_ns = a.url("/v1/admin/namespaces/secret-ns");
    let (s, b) = req(
        reqwest::Method::DELETE,
        secret_ns.clone(),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!((s, b["deleted"].as_bool()), (StatusCode::OK, Some(true)));
    let (s, b) = req(reqwest::Method::DELETE, secret_ns, Some(ADMIN), None).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("namespace_not_found"))
    );
}

/// docs/openapi/configd.yaml is a valid OpenAPI 3.1 document and lists
/// exactly the routes of configd's router.
#[test]
fn the_openapi_document_is_valid_and_lists_exactly_the_routes() {
    api().validate_document().unwrap();
    // configd's router merges the shared `/metrics` router.
    let root = riskfeat_tests::process::workspace_root();
    let mut routes =
        axum_routes(&std::fs::read_to_string(root.join("configd/src/http/mod.rs")).unwrap());
    routes.extend(axum_routes(
        &std::fs::read_to_string(root.join("shared/src/metrics.rs")).unwrap(),
    ));
    assert!(
        routes.len() >= 12,
        "routes read from the router: {routes:?}"
    );
    assert_eq!(api().operations(), routes, "document vs router");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_cold_misses_make_one_snapshot_query() {
    let pg = PgCluster::start(false).await.unwrap();
    let a = Configd::start(&pg.primary, "").await;
    create(&a, "features").await;
    let changes: Vec<Value> = (0..2000).map(|i| json!({"op": "upsert", "key": format!("k{i}"), "value": {"i": i, "pad": "p".repeat(200)}})).collect();
    publish(&a, "features", json!(changes)).await;
    let cold = Configd::start(&pg.primary, "warm_up=false").await;
    assert_eq!(
        cold.metric("riskfeat_configd_db_snapshot_queries_total")
            .await,
        0.0
    );
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let url = cold.url("/v1/namespaces/features/changes?from=0");
        tasks.push(tokio::spawn(async move {
            let r = http().get(url).bearer_auth(READER).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.bytes().await.unwrap()
        }));
    }
    let mut bodies = Vec::new();
    for t in tasks {
        bodies.push(t.await.unwrap());
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every client got the same snapshot"
    );
    let v: Value = serde_json::from_slice(&bodies[0]).unwrap();
    assert_eq!(v["items"].as_object().unwrap().len(), 2000);
    assert_eq!(
        cold.metric("riskfeat_configd_db_snapshot_queries_total")
            .await,
        1.0,
        "{}",
        cold.logs()
    );
    assert_eq!(
        cold.metric("riskfeat_configd_snapshot_builds_total").await,
        1.0
    );
}

/// A full load holds each current value once: the log entry that wrote it
/// shares the item's allocation (the memory bound of the start-up storm
/// rests on this), while overwritten and deleted values stay their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loaded_log_shares_the_current_values_with_the_items() {
    use riskfeat_configd::store::{Change, Op, Store};
    use std::sync::Arc;
    let pg = PgCluster::start(false).await.unwrap();
    let store = Store::new(&pg.primary.superuser_dsn(), 2).unwrap();
    store.migrate().await.unwrap();
    store.create_namespace("shared").await.unwrap();
    let up = |k: &str, v: &str| Change {
        op: Op::Upsert,
        key: k.into(),
        value: Some(v.into()),
    };
    let changes = [up("a", "{\"x\":1}"), up("b", "2"), up("c", "3")];
    store
        .publish("shared", Some(0), "t", "", &changes)
        .await
        .unwrap();
    let del = Change {
        op: Op::Delete,
        key: "c".into(),
        value: None,
    };
    let changes = [up("a", "{\"x\":9}"), del];
    store
        .publish("shared", Some(1), "t", "", &changes)
        .await
        .unwrap();

    let loaded = store.load("shared", 1000).await.unwrap();
    assert_eq!(loaded.version, 2);
    let items: Vec<(&str, &str)> = loaded.items.iter().map(|(k, v)| (&**k, &**v)).collect();
    assert_eq!(items, [("a", "{\"x\": 9}"), ("b", "2")]);
    let entry = |version: u64, key: &str| {
        loaded
            .log
            .iter()
            .find(|c| c.version == version && &*c.key == key)
            .unwrap_or_else(|| panic!("log entry {version}/{key} in {:?}", loaded.log))
    };
    let shared = |c: &riskfeat_configd::store::LoggedChange| {
        let (k, v) = loaded.items.get_key_value(&c.key).unwrap();
        Arc::ptr_eq(k, &c.key) && c.value.as_ref().is_some_and(|cv| Arc::ptr_eq(v, cv))
    };
    assert!(shared(entry(2, "a")), "the latest write of a is the item");
    assert!(shared(entry(1, "b")), "b was written once");
    let old_a = entry(1, "a");
    assert_eq!(old_a.value.as_deref(), Some("{\"x\": 1}"));
    assert!(!shared(old_a), "an overwritten value is its own copy");
    let gone = entry(2, "c");
    assert!(gone.value.is_none() && !loaded.items.contains_key(&gone.key));
    assert_eq!(entry(1, "c").value.as_deref(), Some("3"));
}
