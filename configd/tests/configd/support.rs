//! What configd's tests share: the tokens, configd on a harness
//! PostgreSQL, requests checked against docs/openapi/configd.yaml, and a
//! client's local copy kept like the agent keeps it.

use reqwest::StatusCode;
use riskfeat_tests::openapi::OpenApi;
use riskfeat_tests::{Configd, ConfigdToken, PgCluster, PgServer};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

pub const ADMIN: &str = "admin-token-0123456789";
pub const READER: &str = "reader-token-0123456789";
pub const SCOPED: &str = "scoped-token-0123456789";
/// A second admin token (name `ops`): an audit entry names the token that
/// published, not a fixed string.
pub const OPS: &str = "ops-token-0123456789";

/// configd on `pg` with the tokens, a 1 s scan, 1 KiB values, debug logs
/// and `extra` config lines; ready.
pub async fn start(pg: &PgServer, extra: &str) -> Configd {
    let mut c = prepared(pg);
    c.start(&config(1, extra)).await.unwrap();
    c
}

/// What most tests begin with: a PostgreSQL cluster, configd on its
/// primary with `extra` config lines (see [`start`]) and the namespace
/// `features` created. Keep the cluster for as long as configd runs.
pub async fn with_features(extra: &str) -> (PgCluster, Configd) {
    let pg = PgCluster::start(false).await.unwrap();
    let c = start(&pg.primary, extra).await;
    create(&c, "features").await;
    (pg, c)
}

/// configd on `pg` with the four tokens and debug logs, not started (see
/// [`config`] for what [`start`] starts it with).
pub fn prepared(pg: &PgServer) -> Configd {
    let tokens = [
        ConfigdToken::admin("admin", ADMIN),
        ConfigdToken::admin("ops", OPS),
        ConfigdToken::read("reader", READER, &["*"]),
        ConfigdToken::read("scoped", SCOPED, &["features"]),
    ];
    Configd::new(&pg.superuser_dsn(), &tokens)
        .unwrap()
        .with_env("RISKFEAT_LOG", "info,riskfeat_configd=debug")
}

/// The config lines of these tests: a `scan_interval_s` scan, 1 KiB
/// values, then `extra`.
pub fn config(scan_interval_s: u64, extra: &str) -> String {
    format!("scan_interval_s={scan_interval_s}\nmax_value_bytes=1024\n{extra}")
}

/// docs/openapi/configd.yaml: every JSON answer these tests get through
/// `req`, `Local` and the publish helper is checked against it.
pub fn api() -> &'static OpenApi {
    static API: OnceLock<OpenApi> = OnceLock::new();
    API.get_or_init(|| OpenApi::load("configd").unwrap())
}

/// Panics when an answer does not match the document (304 has no body).
pub fn conforms(method: &reqwest::Method, url: &str, status: StatusCode, body: &Value) {
    if status == StatusCode::NOT_MODIFIED {
        return;
    }
    let path = reqwest::Url::parse(url).unwrap().path().to_string();
    api()
        .check_path(method.as_str(), &path, status.as_u16(), body, "Error")
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// A client with a timeout longer than any watch here.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// One request with `token`: status and JSON body (`null` when none),
/// checked against the document.
pub async fn req(
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

/// [`req`] `GET url` with `token`.
pub async fn get(url: String, token: &str) -> (StatusCode, Value) {
    req(reqwest::Method::GET, url, Some(token), None).await
}

/// [`req`] `POST url` with `token` and a JSON `body`.
pub async fn post(url: String, token: &str, body: Value) -> (StatusCode, Value) {
    req(reqwest::Method::POST, url, Some(token), Some(body)).await
}

/// The value of `series` on `c`'s `/metrics` (0 when absent).
pub async fn metric(c: &Configd, series: &str) -> f64 {
    riskfeat_tests::fixtures::sample(&c.metrics().await.unwrap(), series).unwrap_or(0.0)
}

/// Creates namespace `ns` (asserting 201).
pub async fn create(c: &Configd, ns: &str) {
    let (s, b) = req(
        reqwest::Method::PUT,
        c.url(&format!("/v1/admin/namespaces/{ns}")),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
}

/// Publishes `changes` to `ns` (asserting 200); the new version.
pub async fn publish(c: &Configd, ns: &str, changes: Value) -> u64 {
    let (s, b) = post(
        c.url(&format!("/v1/admin/namespaces/{ns}/publish")),
        ADMIN,
        json!({"author": "test", "comment": "t", "changes": changes}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["version"].as_u64().unwrap()
}

/// Publishes `key = value` to `ns` (asserting 200); the new version.
pub async fn upsert(c: &Configd, ns: &str, key: &str, value: Value) -> u64 {
    publish(c, ns, json!([{"op": "upsert", "key": key, "value": value}])).await
}

/// A client's local copy, kept like the agent keeps it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Local {
    pub version: u64,
    pub items: BTreeMap<String, Value>,
    pub snapshots: u32,
}

impl Local {
    /// One `changes?from=` round; returns whether it was a snapshot.
    pub async fn sync(&mut self, c: &Configd, ns: &str) -> anyhow::Result<bool> {
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
    pub async fn follow_until(&mut self, c: &Configd, ns: &str, target: u64) {
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

/// The version and items of `ns` as the server has them.
pub async fn server_items(c: &Configd, ns: &str) -> (u64, BTreeMap<String, Value>) {
    let (s, b) = get(c.url(&format!("/v1/admin/namespaces/{ns}/items")), ADMIN).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    (
        b["to"].as_u64().unwrap(),
        serde_json::from_value(b["items"].clone()).unwrap(),
    )
}
