//! Bounded inputs of the agent's config sync, against real configd
//! processes on the harness's PostgreSQL: a namespace over
//! `max_namespace_bytes` is refused and the last good one kept (also from
//! the private cache), a large answer and a gzip bomb are read no further
//! than `max_response_bytes` (the agent's peak RSS stays under the 64Mi
//! sidecar limit), a configd replica behind the agent never moves its
//! version backwards, and a namespace configd refuses is retried with
//! backoff.

use crate::support::{spawn_agent, SECS};
use riskfeat_shared::config_file::ConfigSnapshot;
use riskfeat_tests::fixtures::sample;
use riskfeat_tests::{wait_until, Agent, Configd, ConfigdToken, Stack, TcpProxy};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const ADMIN: &str = "admin-token-0123456789";
const READER: &str = "reader-token-0123456789";

/// configd on `dsn` (not started): an admin token and the agent's read
/// token for every namespace.
fn configd(dsn: &str) -> Configd {
    Configd::new(
        dsn,
        &[
            ConfigdToken::admin("admin", ADMIN),
            ConfigdToken::read("agent", READER, &["*"]),
        ],
    )
    .unwrap()
}

/// An agent config following configd at `addr` for `namespaces`, with
/// quick backoffs (0.2 s to 1 s) and `extra` `[configd]` lines.
fn agent_config(stack: &Stack, dir: &Path, addr: &str, namespaces: &str, extra: &str) -> PathBuf {
    let lines = format!("addr = \"{addr}\"\nnamespaces = {namespaces}\n{extra}");
    stack.write_configd_agent_toml(dir, READER, &lines).unwrap()
}

/// An admin request to `configd`: the HTTP status.
async fn admin(configd: &Configd, method: reqwest::Method, path: &str, body: Option<Value>) -> u16 {
    let mut r = reqwest::Client::new()
        .request(method, configd.url(path))
        .bearer_auth(ADMIN);
    if let Some(b) = body {
        r = r.json(&b);
    }
    r.send().await.unwrap().status().as_u16()
}

async fn create(configd: &Configd, ns: &str) {
    let path = format!("/v1/admin/namespaces/{ns}");
    assert_eq!(admin(configd, reqwest::Method::PUT, &path, None).await, 201);
}

async fn publish(configd: &Configd, ns: &str, changes: Value) {
    let path = format!("/v1/admin/namespaces/{ns}/publish");
    let body = Some(json!({ "changes": changes }));
    assert_eq!(
        admin(configd, reqwest::Method::POST, &path, body).await,
        200
    );
}

fn upsert(key: &str, value: Value) -> Value {
    json!([{"op": "upsert", "key": key, "value": value}])
}

fn published(stack: &Stack, ns: &str) -> Option<ConfigSnapshot> {
    ConfigSnapshot::load(&stack.shared_dir.path().join(format!("config/{ns}.json"))).ok()
}

async fn wait_version(stack: &Stack, agent: &Agent, ns: &str, version: u64) {
    wait_until(SECS(30), &format!("{ns} at version {version}"), || async {
        published(stack, ns).is_some_and(|s| s.version == version)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));
}

/// Waits until `/status` names an error of `ns` containing `text`.
async fn wait_ns_error(agent: &Agent, ns: &str, text: &str) -> Value {
    let what = format!("config error of {ns} naming {text:?}");
    agent
        .wait_status(SECS(30), &what, |s| {
            s["config"]["errors"][ns]
                .as_str()
                .is_some_and(|e| e.contains(text))
        })
        .await;
    agent.status().await.unwrap()
}

/// `riskfeat_configd_http_requests_total` of `route` with `status`.
async fn requests(configd: &Configd, route: &str, status: u16) -> f64 {
    let m = configd.metrics().await.unwrap();
    let series =
        format!("riskfeat_configd_http_requests_total{{route=\"{route}\",status=\"{status}\"}}");
    sample(&m, &series).unwrap_or(0.0)
}

/// The agent's peak resident memory (VmHWM), in MiB.
fn peak_rss_mib(agent: &Agent) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024.0
}

/// A namespace configd answers 404 for (not created yet) is asked again
/// with backoff, not at every round: while `features` changes 20 times a
/// second (each change ends the long-poll and starts a round), configd sees
/// a handful of 404s. Then a namespace over `max_namespace_bytes` is
/// refused with the last good version kept in `config/` and in the cache,
/// reported in `/status`, the log and `riskfeat_agent_config_rejected_total`;
/// a later version back under the limit applies. Last, an oversized cached
/// copy is not re-published at start.
///
/// Not yet run, so not yet checked to fail with the feature removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "written, not yet run (w-bounds ran out of time)"]
async fn refused_namespaces_back_off_and_oversized_ones_keep_the_last_good() {
    let stack = Stack::start(Default::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut configd = configd(&stack.pg.primary.superuser_dsn());
    configd.start("max_value_bytes = 1048576").await.unwrap();
    create(&configd, "features").await;
    publish(&configd, "features", upsert("lookback", json!(40))).await;
    let cfg = agent_config(
        &stack,
        dir.path(),
        configd.http().base(),
        "[\"features\", \"later\"]",
        "max_namespace_bytes = 65536",
    );
    let mut agent = spawn_agent(&stack, &cfg, &[]);
    wait_version(&stack, &agent, "features", 1).await;

    // `later` does not exist: 404, retried with backoff while `features`
    // changes fast.
    let changes = "/v1/namespaces/{ns}/changes";
    let before = requests(&configd, changes, 404).await;
    let started = std::time::Instant::now();
    for i in 0..80 {
        publish(&configd, "features", upsert("tick", json!(i))).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    wait_version(&stack, &agent, "features", 81).await;
    let missing = requests(&configd, changes, 404).await - before;
    // The backoff reaches its 1 s cap (jitter: at least 0.5 s apart).
    let bound = 2.0 * started.elapsed().as_secs_f64() + 3.0;
    assert!(
        (1.0..=bound).contains(&missing),
        "{missing} requests for the missing namespace in 80 versions (bound {bound:.0})\n{}",
        agent.logs()
    );
    let st = agent.status().await.unwrap();
    assert!(
        st["config"]["failures"]["later"].as_u64() >= Some(2),
        "{st}"
    );
    create(&configd, "later").await;
    publish(&configd, "later", upsert("a", json!(1))).await;
    wait_version(&stack, &agent, "later", 1).await;

    // Version 82 would be about 80 KiB: refused, 81 kept.
    let big = "x".repeat(80 * 1024);
    publish(&configd, "features", upsert("big", json!(big))).await;
    let st = wait_ns_error(&agent, "features", "max_namespace_bytes = 65536").await;
    assert_eq!(st["config"]["versions"]["features"], 81, "{st}");
    assert_eq!(published(&stack, "features").unwrap().version, 81);
    let cache = stack.shared_dir.path().join("config-cache/features.json");
    assert_eq!(ConfigSnapshot::load(&cache).unwrap().version, 81);
    let m = agent.metrics().await.unwrap();
    let rejected =
        "riskfeat_agent_config_rejected_total{config_namespace=\"features\",reason=\"too_large\"}";
    assert!(sample(&m, rejected) >= Some(1.0), "{m}");
    assert!(agent
        .logs()
        .contains("larger than configd.max_namespace_bytes"));
    // Back under the limit: applies (incrementally from 81).
    let fix =
        json!([{"op": "delete", "key": "big"}, {"op": "upsert", "key": "ma_window", "value": 5}]);
    publish(&configd, "features", fix).await;
    wait_version(&stack, &agent, "features", 83).await;
    assert!(!published(&stack, "features")
        .unwrap()
        .items
        .contains_key("big"));

    // A cached copy over the limit (kept from a run with a higher limit)
    // is not published at start, configd down or not.
    agent.stop(SECS(20));
    configd.kill();
    let oversized = ConfigSnapshot {
        namespace: "features".into(),
        version: 90,
        items: [("big".to_string(), json!(big))].into_iter().collect(),
    };
    riskfeat_shared::atomic::write_json_atomic(
        &cache,
        &oversized,
        riskfeat_shared::atomic::WriteOptions::PRIVATE,
    )
    .unwrap();
    std::fs::remove_file(stack.shared_dir.path().join("config/features.json")).unwrap();
    agent = spawn_agent(&stack, &cfg, &[]);
    wait_ns_error(&agent, "features", "the cached config").await;
    wait_version(&stack, &agent, "later", 1).await;
    assert!(published(&stack, "features").is_none(), "{}", agent.logs());
}

/// configd allowed to hold a 48 MiB value (a string of zeros, about 48 KiB
/// as gzip): the agent reads the plain incremental answer and the gzip
/// snapshot no further than the default `max_response_bytes` (4 MiB),
/// keeps the last good version, reports both, and its peak RSS stays
/// under 64 MiB (the base overlay's agent limit).
///
/// Not yet run, so not yet checked to fail with the feature removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "written, not yet run (w-bounds ran out of time)"]
async fn a_large_answer_and_a_gzip_bomb_are_read_no_further_than_the_cap() {
    let stack = Stack::start(Default::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut configd = configd(&stack.pg.primary.superuser_dsn());
    configd
        .start("max_value_bytes = 67108864\nmax_body_bytes = 67108864")
        .await
        .unwrap();
    create(&configd, "features").await;
    publish(&configd, "features", upsert("lookback", json!(40))).await;
    let cfg = agent_config(
        &stack,
        dir.path(),
        configd.http().base(),
        "[\"features\"]",
        "",
    );
    let mut agent = spawn_agent(&stack, &cfg, &[]);
    wait_version(&stack, &agent, "features", 1).await;

    publish(
        &configd,
        "features",
        upsert("bomb", json!("0".repeat(48 << 20))),
    )
    .await;
    let st = wait_ns_error(&agent, "features", "max_response_bytes = 4194304").await;
    assert_eq!(st["config"]["versions"]["features"], 1, "{st}");
    assert_eq!(published(&stack, "features").unwrap().version, 1);
    let peak = peak_rss_mib(&agent);
    assert!(peak < 64.0, "peak RSS {peak:.0} MiB\n{}", agent.logs());

    // A new agent (no cache): the gzip snapshot is the bomb.
    agent.stop(SECS(20));
    std::fs::remove_dir_all(stack.shared_dir.path().join("config-cache")).unwrap();
    std::fs::remove_dir_all(stack.shared_dir.path().join("config")).unwrap();
    agent = spawn_agent(&stack, &cfg, &[]);
    wait_ns_error(&agent, "features", "more once decompressed").await;
    assert!(published(&stack, "features").is_none());
    let peak = peak_rss_mib(&agent);
    assert!(peak < 64.0, "peak RSS {peak:.0} MiB\n{}", agent.logs());
    let m = agent.metrics().await.unwrap();
    let rejected =
        "riskfeat_agent_config_rejected_total{config_namespace=\"features\",reason=\"too_large\"}";
    assert!(sample(&m, rejected) >= Some(1.0), "{m}");
}

/// Two configd replicas on one database, behind one address (a TCP proxy
/// playing the Service): replica B loses its database link, so its cache
/// stays at version 1 while A publishes version 2. Moved to B, the agent
/// keeps version 2 (never 1), reports B as behind, and asks it again only
/// with backoff; once B's link is back and it has caught up, the agent
/// follows B to version 3.
///
/// Not yet run, so not yet checked to fail with the feature removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "written, not yet run (w-bounds ran out of time)"]
async fn a_configd_replica_behind_the_agent_is_skipped_with_backoff() {
    let stack = Stack::start(Default::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pg_addr = format!("127.0.0.1:{}", stack.pg.primary.endpoint().port);
    let b_db = TcpProxy::start(pg_addr.parse().unwrap()).await.unwrap();
    let b_dsn = stack.pg.primary.superuser_dsn().replace(
        &format!(" port={} ", stack.pg.primary.endpoint().port),
        &format!(" port={} ", b_db.addr.port()),
    );
    assert_ne!(
        b_dsn,
        stack.pg.primary.superuser_dsn(),
        "B goes through its proxy"
    );
    // No periodic scan: a replica learns of a publish by NOTIFY only.
    let quiet = "scan_interval_s = 3600";
    let mut a = configd(&stack.pg.primary.superuser_dsn());
    a.start(quiet).await.unwrap();
    let mut b = configd(&b_dsn);
    b.start(quiet).await.unwrap();
    create(&a, "features").await;
    publish(&a, "features", upsert("lookback", json!(40))).await;
    let addr = |c: &Configd| format!("127.0.0.1:{}", c.http().port()).parse().unwrap();
    let front = TcpProxy::start(addr(&a)).await.unwrap();
    let cfg = agent_config(&stack, dir.path(), &front.http_url(), "[\"features\"]", "");
    let agent = spawn_agent(&stack, &cfg, &[]);
    wait_version(&stack, &agent, "features", 1).await;
    // B has version 1 in its cache, then loses its database.
    let url = b.url("/v1/namespaces/features/changes?from=0");
    let got: Value = reqwest::Client::new()
        .get(url)
        .bearer_auth(READER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["to"], 1, "{got}");
    b_db.cut();
    publish(&a, "features", upsert("ma_window", json!(5))).await;
    wait_version(&stack, &agent, "features", 2).await;

    // The Service moves the agent to B, which is behind.
    let refused_before = requests(&b, "/v1/watch", 400).await
        + requests(&b, "/v1/namespaces/{ns}/changes", 400).await;
    front.set_upstream(addr(&b));
    let started = std::time::Instant::now();
    let st = wait_ns_error(&agent, "features", "behind").await;
    assert_eq!(st["config"]["versions"]["features"], 2, "{st}");
    for _ in 0..40 {
        let now = published(&stack, "features").unwrap();
        assert_eq!(now.version, 2, "went back to version {}", now.version);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let refused = requests(&b, "/v1/watch", 400).await
        + requests(&b, "/v1/namespaces/{ns}/changes", 400).await
        - refused_before;
    // 0.2 s doubling to a 1 s cap (jitter: at least 0.5 s apart).
    let bound = 2.0 * started.elapsed().as_secs_f64() + 3.0;
    assert!(
        (1.0..=bound).contains(&refused),
        "{refused} refused requests (bound {bound:.0})\n{}",
        agent.logs()
    );
    let m = agent.metrics().await.unwrap();
    let behind =
        "riskfeat_agent_config_rejected_total{config_namespace=\"features\",reason=\"behind\"}";
    assert!(sample(&m, behind) >= Some(1.0), "{m}");

    // B's database is back: it catches up, and the agent follows it.
    b_db.restore();
    publish(&a, "features", upsert("lookback", json!(30))).await;
    wait_version(&stack, &agent, "features", 3).await;
    assert_eq!(
        published(&stack, "features").unwrap().items["ma_window"],
        json!(5)
    );
    assert!(agent.logs().contains("behind this agent's version 2"));
}
