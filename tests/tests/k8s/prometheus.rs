//! A real Prometheus server (Debian `prometheus`, the package promtool
//! comes from) scraping a real agent, worker and configd from the harness
//! with the shipped rules loaded ([`RULES`]), checked through its HTTP API:
//! every target up, every rule evaluated and healthy, `process_*` and
//! `*_build_info` scraped from each, and Vault cut off (the stack's proxy)
//! raising `RiskfeatVaultUnreachable`, configd killed raising
//! `RiskfeatConfigdDown`.
//!
//! The rules are loaded with every `for:` shortened by [`shorten_for`] (a
//! test-only transform, tested itself), so the fault fires in seconds.
//! Prometheus listens on 127.0.0.1 on a free port, keeps its TSDB in a temp
//! dir and is killed with the test (a [`ChildProc`]).

use crate::support::*;
use riskfeat_tests::fixtures::{json_answer, sample};
use riskfeat_tests::{
    free_port, wait_until, AgentToml, ChildProc, Configd, ConfigdToken, Stack, StackOptions, Worker,
};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const SECS: fn(u64) -> Duration = Duration::from_secs;
/// What every `for:` becomes in the test.
const SHORT_FOR: &str = "2s";
/// Labels the PodMonitor's targets carry in a cluster, set statically here
/// (the rules group by namespace and pod and select by container).
const NAMESPACE: &str = "riskfeat-test";

/// `rules` (a rule file's YAML) with the `for:` of every rule that has one
/// set to `to`; nothing else changes. Test-only: it lets an alert whose
/// production `for:` is minutes fire within a test.
pub fn shorten_for(rules: &str, to: &str) -> String {
    let mut doc: Value = serde_norway::from_str(rules).expect("rules parse");
    for group in doc["groups"].as_array_mut().expect("groups") {
        for rule in group["rules"].as_array_mut().expect("rules") {
            if let Some(f) = rule.get_mut("for") {
                *f = Value::String(to.into());
            }
        }
    }
    serde_norway::to_string(&doc).expect("serialize rules")
}

#[test]
fn shorten_for_changes_only_the_for_durations() {
    let text = std::fs::read_to_string(repo_root().join(RULES)).unwrap();
    let before: Value = serde_norway::from_str(&text).unwrap();
    let short = shorten_for(&text, SHORT_FOR);
    let after: Value = serde_norway::from_str(&short).unwrap();
    let (g0, g1) = (arr(&before["groups"]), arr(&after["groups"]));
    assert_eq!(g0.len(), g1.len());
    let mut shortened = 0;
    for (a, b) in g0.iter().zip(g1) {
        assert_eq!(a["name"], b["name"]);
        let (r0, r1) = (arr(&a["rules"]), arr(&b["rules"]));
        assert_eq!(r0.len(), r1.len());
        for (x, y) in r0.iter().zip(r1) {
            let mut x = x.clone();
            if x.get("for").is_some() {
                assert_eq!(y["for"], SHORT_FOR, "{}", x["alert"]);
                x["for"] = SHORT_FOR.into();
                shortened += 1;
            } else {
                assert!(y.get("for").is_none(), "{}", x["alert"]);
            }
            assert_eq!(&x, y, "only `for` may change");
        }
    }
    assert!(shortened >= 10, "only {shortened} rules have a `for`");
    // Still a valid rule file.
    let Some(promtool) = promtool() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("short.yaml");
    std::fs::write(&file, &short).unwrap();
    let (ok, out) = run(Command::new(promtool).args(["check", "rules"]).arg(&file));
    assert!(ok && out.contains("SUCCESS"), "{out}");
}

/// A Prometheus server on 127.0.0.1:`port` with its own storage dir.
struct Prometheus {
    proc: ChildProc,
    base: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts `bin` with `config` (prometheus.yml) and `rules` written next
    /// to it as `rules.yaml`; waits for `/-/ready`.
    async fn start(bin: &Path, config: &str, rules: &str) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("riskfeat-prometheus-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        std::fs::write(dir.path().join("rules.yaml"), rules).unwrap();
        let port = free_port().unwrap();
        let cfg = format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        );
        let data = format!("--storage.tsdb.path={}", dir.path().join("data").display());
        let listen = format!("--web.listen-address=127.0.0.1:{port}");
        let proc = ChildProc::spawn(bin, &[&cfg, &data, &listen], &[]).unwrap();
        let p = Prometheus {
            proc,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
            _dir: dir,
        };
        wait_until(SECS(60), "prometheus ready", || async {
            p.client
                .get(format!("{}/-/ready", p.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", p.proc.logs()));
        p
    }

    /// `GET /api/v1/<path>`: the `data` of a successful answer.
    async fn api(&self, path: &str) -> anyhow::Result<Value> {
        self.api_with(path, &[]).await
    }

    /// `GET /api/v1/<path>?<params>`: the `data` of a successful answer.
    async fn api_with(&self, path: &str, params: &[(&str, &str)]) -> anyhow::Result<Value> {
        let url = format!("{}/api/v1/{path}", self.base);
        let v = json_answer(self.client.get(url).query(params)).await?;
        anyhow::ensure!(v["status"] == "success", "{path}: {v}");
        Ok(v["data"].clone())
    }

    /// An instant query's result vector.
    async fn query(&self, q: &str) -> Vec<Value> {
        let data = self.api_with("query", &[("query", q)]).await.unwrap();
        arr(&data["result"]).to_vec()
    }

    /// Waits until alert `name` is firing; returns it.
    async fn wait_firing(&self, name: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let data = self.api("alerts").await.unwrap_or_default();
            if let Some(a) = arr(&data["alerts"])
                .iter()
                .find(|a| a["labels"]["alertname"] == name && a["state"] == "firing")
            {
                return a.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "alert {name} not firing after {timeout:?}; alerts now: {data}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// One scrape job with the labels a PodMonitor target would have.
fn job(component: &str, pod: &str, port: u16) -> String {
    format!(
        "  - job_name: riskfeat-{component}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n        \
         labels: {{namespace: {NAMESPACE}, pod: {pod}, container: riskfeat-{component}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_scrapes_all_three_and_alerts_on_a_vault_outage() {
    let Some(promtool) = promtool() else { return };
    let bin = promtool.with_file_name("prometheus");
    assert!(
        bin.is_file(),
        "{} missing (Debian package prometheus)",
        bin.display()
    );
    let stack = Stack::start(StackOptions {
        default_ttl: SECS(30),
        max_ttl: SECS(300),
        vault_proxy: true,
        ..Default::default()
    })
    .await
    .unwrap();

    // The three programs, as in a worker pod plus a configd replica.
    let mut configd = Configd::new(
        &stack.pg.primary.superuser_dsn(),
        &[ConfigdToken::admin("admin", "admin-token-0123456789")],
    )
    .unwrap();
    configd.start("").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent_port = free_port().unwrap();
    let metrics_addr = format!("127.0.0.1:{agent_port}");
    let cfg = stack
        .write_agent_toml(
            dir.path(),
            AgentToml {
                metrics_addr: Some(&metrics_addr),
                sections: "[lifecycle]\nbackoff_initial_s = 0.2\nbackoff_max_s = 2.0\n\
                           ready_min_remaining_s = 2\n",
                ..Default::default()
            },
        )
        .unwrap();
    let agent = riskfeat_tests::Agent::spawn(&cfg, stack.shared_dir.path(), &[]).unwrap();
    let worker = Worker::spawn(stack.shared_dir.path(), "").unwrap();
    worker.wait_generation(1, SECS(90)).await.unwrap();
    agent.wait_ready(SECS(30)).await.unwrap();

    let rules_text = std::fs::read_to_string(repo_root().join(RULES)).unwrap();
    let rules_count = rules_text.matches("\n      - alert: ").count();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         rule_files: [rules.yaml]\nscrape_configs:\n{}{}{}",
        job("agent", "worker-0", agent_port),
        job("worker", "worker-0", worker.http().port()),
        job("configd", "configd-0", configd.http().port()),
    );
    let prom = Prometheus::start(&bin, &config, &shorten_for(&rules_text, SHORT_FOR)).await;

    // Every target up.
    let r = wait_until(SECS(30), "every target up", || async {
        prom.api("targets").await.is_ok_and(|d| {
            let t = arr(&d["activeTargets"]);
            t.len() == 3 && t.iter().all(|t| t["health"] == "up")
        })
    })
    .await;
    if let Err(e) = r {
        panic!("{e}: {}", prom.api("targets").await.unwrap_or_default());
    }

    // Every rule loaded, evaluated and healthy.
    let r = wait_until(SECS(30), "every rule evaluated and healthy", || async {
        prom.api("rules").await.is_ok_and(|d| {
            let rules: Vec<&Value> = arr(&d["groups"])
                .iter()
                .flat_map(|g| arr(&g["rules"]))
                .collect();
            rules.len() == rules_count
                && rules.iter().all(|r| {
                    r["health"] == "ok"
                        && !r["lastEvaluation"]
                            .as_str()
                            .unwrap_or("0001")
                            .starts_with("0001")
                })
        })
    })
    .await;
    if let Err(e) = r {
        panic!("{e}: {}", prom.api("rules").await.unwrap_or_default());
    }

    // process_* and build_info from each of the three.
    for comp in ["agent", "worker", "configd"] {
        let job = format!("job=\"riskfeat-{comp}\"");
        let info = prom
            .query(&format!("riskfeat_{comp}_build_info{{{job}}}"))
            .await;
        assert_eq!(info.len(), 1, "{comp}: {info:?}");
        let m = &info[0]["metric"];
        assert_eq!(m["version"], env!("CARGO_PKG_VERSION"), "{comp}: {m}");
        assert!(
            m["commit"].as_str().is_some_and(|c| !c.is_empty()),
            "{comp}: {m}"
        );
        for p in ["process_cpu_seconds_total", "process_resident_memory_bytes"] {
            let v = prom.query(&format!("{p}{{{job}}}")).await;
            assert_eq!(v.len(), 1, "{comp}: no {p}");
        }
    }
    let before = prom.api("alerts").await.unwrap();
    assert!(
        !arr(&before["alerts"])
            .iter()
            .any(|a| a["labels"]["alertname"] == "RiskfeatVaultUnreachable"),
        "Vault reported unreachable before the fault: {before}"
    );

    // The fault: Vault cut off. The agent notices at its next Vault
    // request (a renewal within 2/3 of the 30 s lease).
    stack.vault_proxy.as_ref().expect("vault proxy").cut();
    let alert = prom.wait_firing("RiskfeatVaultUnreachable", SECS(90)).await;
    assert_eq!(alert["labels"]["namespace"], NAMESPACE, "{alert}");
    assert_eq!(alert["labels"]["pod"], "worker-0", "{alert}");
    assert_eq!(
        alert["annotations"]["runbook_url"],
        "docs/operations.md#riskfeatvaultunreachable"
    );
    let m = agent.metrics().await.unwrap();
    assert_eq!(sample(&m, "riskfeat_agent_vault_up"), Some(0.0));

    // A target down: configd killed.
    configd.kill();
    let alert = prom.wait_firing("RiskfeatConfigdDown", SECS(30)).await;
    assert_eq!(alert["labels"]["pod"], "configd-0", "{alert}");
    drop(prom);
}
