//! Bounded inputs of the agent's config sync, against real configd
//! processes on the harness's PostgreSQL: a namespace over
//! `max_namespace_bytes` is refused and the last good one kept (also from
//! the private cache), a large answer and a gzip bomb are read no further
//! than `max_response_bytes` (the agent's peak RSS stays under the 64Mi
//! sidecar limit), a configd replica behind the agent never moves its
//! version backwards, and a namespace configd refuses is retried with
//! backoff.
//!
//! Backoff is checked by counting, never by timing: with a backoff longer
//! than the test ([`NO_RETRY`]), a refused namespace is asked exactly once
//! while the agent goes on with its other namespaces for many rounds
//! (configd's `riskfeat_configd_http_requests_total` counts both).

use crate::support::{spawn_agent, SECS};
use riskfeat_shared::config_file::ConfigSnapshot;
use riskfeat_tests::fixtures::{json_answer, sample};
use riskfeat_tests::{wait_until, Agent, Configd, ConfigdToken, Stack, TcpProxy};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const ADMIN: &str = "admin-token-0123456789";
const READER: &str = "reader-token-0123456789";
/// `[configd]` backoffs longer than any test: a refused namespace (or a
/// failed round) is not asked again while the test runs.
const NO_RETRY: &str = "backoff_initial_s = 3600\nbackoff_max_s = 3600";
/// configd's route label of the changes request.
const CHANGES: &str = "/v1/namespaces/{ns}/changes";

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

/// A stack, a temp dir, and one configd on its primary started with
/// `config`, `features` at version 1 (`lookback = 40`).
async fn stack_and_configd(config: &str) -> (Stack, tempfile::TempDir, Configd) {
    let stack = Stack::start(Default::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut configd = configd(&stack.pg.primary.superuser_dsn());
    configd.start(config).await.unwrap();
    publish(&configd, "features", upsert("lookback", json!(40))).await;
    (stack, dir, configd)
}

/// An agent config (in `dir/<name>/`) following configd at `addr` for
/// `namespaces` (a TOML array), with `extra` `[configd]` lines.
fn agent_config(
    stack: &Stack,
    dir: &Path,
    name: &str,
    addr: &str,
    namespaces: &str,
    extra: &str,
) -> PathBuf {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let lines = format!("addr = \"{addr}\"\nnamespaces = {namespaces}\n{extra}");
    stack
        .write_configd_agent_toml(&dir, READER, &lines)
        .unwrap()
}

/// Publishes `changes` to `ns` (created when missing).
async fn publish(configd: &Configd, ns: &str, changes: Value) {
    configd.publish(ADMIN, ns, changes).await.unwrap();
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

/// The agent's `riskfeat_agent_config_rejected_total` of `ns` for `reason`.
async fn rejected(agent: &Agent, ns: &str, reason: &str) -> f64 {
    let m = agent.metrics().await.unwrap();
    let series = format!(
        "riskfeat_agent_config_rejected_total{{config_namespace=\"{ns}\",reason=\"{reason}\"}}"
    );
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
/// only after its backoff, not at every round: with a backoff longer than
/// the test, configd sees exactly one 404 while `features` goes through 40
/// versions (a round each). With quick backoffs it is taken once created.
/// Then a namespace over `max_namespace_bytes` is refused with the last
/// good version kept in `config/` and in the cache, reported in `/status`,
/// the log and `riskfeat_agent_config_rejected_total`; a later version
/// back under the limit applies. Last, an oversized cached copy is not
/// re-published at start.
///
/// Checked: with the per-namespace backoff gate removed from
/// `Syncer::round` (every namespace asked at every round), this test fails
/// with "41 requests for the missing namespace in 41 fetches of features".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_namespaces_back_off_and_oversized_ones_keep_the_last_good() {
    let (stack, dir, mut configd) = stack_and_configd("max_value_bytes = 1048576").await;
    let base = configd.http().base().to_string();
    let namespaces = "[\"features\", \"later\"]";
    let limit = "max_namespace_bytes = 65536";
    let slow = agent_config(
        &stack,
        dir.path(),
        "slow",
        &base,
        namespaces,
        &format!("{limit}\n{NO_RETRY}"),
    );
    let mut agent = spawn_agent(&stack, &slow, &[]);
    wait_version(&stack, &agent, "features", 1).await;
    // `later` does not exist: one 404, then a backoff longer than the
    // test, while `features` moves on a round per version.
    wait_ns_error(&agent, "later", "404").await;
    for v in 2..=41 {
        publish(&configd, "features", upsert("tick", json!(v))).await;
        wait_version(&stack, &agent, "features", v).await;
    }
    let missing = requests(&configd, CHANGES, 404).await;
    let fetched = requests(&configd, CHANGES, 200).await;
    assert!(fetched >= 41.0, "{fetched} fetches of features");
    assert_eq!(
        missing,
        1.0,
        "{missing} requests for the missing namespace in {fetched} fetches of features\n{}",
        agent.logs()
    );
    let st = agent.status().await.unwrap();
    assert_eq!(st["config"]["failures"]["later"], 1, "{st}");

    // Quick backoffs: `later` is taken once it exists.
    agent.stop(SECS(20));
    let quick = agent_config(&stack, dir.path(), "quick", &base, namespaces, limit);
    agent = spawn_agent(&stack, &quick, &[]);
    wait_ns_error(&agent, "later", "404").await;
    publish(&configd, "later", upsert("a", json!(1))).await;
    wait_version(&stack, &agent, "later", 1).await;

    // Version 42 would be about 80 KiB: refused, 41 kept.
    let big = "x".repeat(80 * 1024);
    publish(&configd, "features", upsert("big", json!(big))).await;
    let st = wait_ns_error(&agent, "features", "max_namespace_bytes = 65536").await;
    assert_eq!(st["config"]["versions"]["features"], 41, "{st}");
    assert_eq!(published(&stack, "features").unwrap().version, 41);
    let cache = stack.shared_dir.path().join("config-cache/features.json");
    assert_eq!(ConfigSnapshot::load(&cache).unwrap().version, 41);
    assert!(rejected(&agent, "features", "too_large").await >= 1.0);
    assert!(agent
        .logs()
        .contains("larger than configd.max_namespace_bytes"));
    // Back under the limit: applies (incrementally from 41).
    let fix =
        json!([{"op": "delete", "key": "big"}, {"op": "upsert", "key": "ma_window", "value": 5}]);
    publish(&configd, "features", fix).await;
    wait_version(&stack, &agent, "features", 43).await;
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
    agent = spawn_agent(&stack, &quick, &[]);
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
/// Checked: with `body::read` reading every answer whole (no cap on the
/// wire nor on the gzip output), this test fails with "timed out after
/// 30s waiting for config error of features naming \"max_response_bytes =
/// 4194304\"" (the 48 MiB version is read whole, then refused only by
/// `max_namespace_bytes`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_answer_and_a_gzip_bomb_are_read_no_further_than_the_cap() {
    let (stack, dir, configd) =
        stack_and_configd("max_value_bytes = 67108864\nmax_body_bytes = 67108864").await;
    let base = configd.http().base().to_string();
    let cfg = agent_config(&stack, dir.path(), "a", &base, "[\"features\"]", "");
    let mut agent = spawn_agent(&stack, &cfg, &[]);
    wait_version(&stack, &agent, "features", 1).await;

    let bomb = json!("0".repeat(48 << 20));
    publish(&configd, "features", upsert("bomb", bomb)).await;
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
    assert!(rejected(&agent, "features", "too_large").await >= 1.0);
}

/// Two configd replicas on one database, behind one address (a TCP proxy
/// playing the Service): replica B loses its database link, so its cache
/// stays at version 1 of `features` while A publishes version 2. Moved to
/// B, the agent keeps version 2 (never 1) and reports B as behind. Started
/// again on B with a backoff longer than the test, it asks B for
/// `features` exactly once while it long-polls B for `other` round after
/// round. Once B's link is back and it has caught up, the agent follows B
/// to version 3 (a restart with quick backoffs; that a gate opens after
/// its delay is `Retry`'s unit test).
///
/// Checked: with `Syncer::fetch` no longer turning configd's "from the
/// future" 400 into `SyncError::Behind` (a plain refusal), this test fails
/// with "timed out after 30s waiting for config error of features naming
/// \"behind\""; with the per-namespace backoff gate removed from
/// `Syncer::round`, with "4 refused requests" (one per long-poll of
/// `other`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
    publish(&a, "features", upsert("lookback", json!(40))).await;
    publish(&a, "other", upsert("a", json!(1))).await;
    let addr = |c: &Configd| format!("127.0.0.1:{}", c.http().port()).parse().unwrap();
    let front = TcpProxy::start(addr(&a)).await.unwrap();
    let namespaces = "[\"features\", \"other\"]";
    let quick = agent_config(
        &stack,
        dir.path(),
        "quick",
        &front.http_url(),
        namespaces,
        "poll_timeout_s = 1",
    );
    let mut agent = spawn_agent(&stack, &quick, &[]);
    wait_version(&stack, &agent, "features", 1).await;
    wait_version(&stack, &agent, "other", 1).await;
    // B has version 1 of both in its cache, then loses its database.
    for ns in ["features", "other"] {
        let url = b.url(&format!("/v1/namespaces/{ns}/changes?from=0"));
        let got = json_answer(reqwest::Client::new().get(url).bearer_auth(READER))
            .await
            .unwrap();
        assert_eq!(got["to"], 1, "{ns}: {got}");
    }
    b_db.cut();
    publish(&a, "features", upsert("ma_window", json!(5))).await;
    wait_version(&stack, &agent, "features", 2).await;

    // The Service moves the agent to B, which is behind on `features`.
    front.set_upstream(addr(&b));
    let st = wait_ns_error(&agent, "features", "behind").await;
    assert_eq!(st["config"]["versions"]["features"], 2, "{st}");
    assert_eq!(published(&stack, "features").unwrap().version, 2);
    assert!(rejected(&agent, "features", "behind").await >= 1.0);
    assert!(agent.logs().contains("behind this agent's version 2"));

    // Started again on B with a backoff longer than the test: one refused
    // request for `features` while B answers three long-polls of `other`.
    agent.stop(SECS(20));
    let refused =
        || async { requests(&b, CHANGES, 400).await + requests(&b, "/v1/watch", 400).await };
    let refused_before = refused().await;
    let polls_before = requests(&b, "/v1/watch", 304).await;
    let slow = agent_config(
        &stack,
        dir.path(),
        "slow",
        &front.http_url(),
        namespaces,
        &format!("poll_timeout_s = 1\n{NO_RETRY}"),
    );
    agent = spawn_agent(&stack, &slow, &[]);
    wait_ns_error(&agent, "features", "behind").await;
    wait_until(SECS(30), "three long-polls of other on B", || async {
        assert_eq!(published(&stack, "features").unwrap().version, 2);
        requests(&b, "/v1/watch", 304).await >= polls_before + 3.0
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));
    let asked = refused().await - refused_before;
    assert_eq!(asked, 1.0, "{asked} refused requests\n{}", agent.logs());
    assert_eq!(
        agent.status().await.unwrap()["config"]["failures"]["features"],
        1
    );

    // B's database is back: it catches up, and the agent follows it.
    b_db.restore();
    publish(&a, "features", upsert("lookback", json!(30))).await;
    let url = b.url("/v1/namespaces/features/changes?from=0");
    wait_until(SECS(30), "B at version 3", || async {
        let got = json_answer(reqwest::Client::new().get(&url).bearer_auth(READER)).await;
        got.is_ok_and(|v| v["to"] == 3)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", b.logs()));
    agent.stop(SECS(20));
    agent = spawn_agent(&stack, &quick, &[]);
    wait_version(&stack, &agent, "features", 3).await;
    assert_eq!(
        published(&stack, "features").unwrap().items["ma_window"],
        json!(5)
    );
}
