//! The soak's pod on the harness [`Stack`]: riskfeat-configd with a
//! `features` namespace, riskfeat-agent (short credentials, quick retries,
//! debug log) and riskfeat-worker, started as the demo starts them; the
//! faults of [`super::faults`] injected into it and its stack; and the log
//! of every process that ran, kept across restarts (a restarted fixture
//! drops its log with its temp dir, so it is copied first).

use super::checks::LogText;
use super::faults::{FaultKind, FaultRecord, Step};
use crate::fixtures::{Agent, Configd, ConfigdToken, Worker};
use crate::process::{random_token, wait_until, write_private};
use crate::{AgentToml, Stack};
use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use riskfeat_shared::layout::SharedDir;
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The credential the soak asks Vault for: short, so it is renewed every
/// ~16 s and rotated every ~45 s ([`LIFECYCLE`]).
pub const DEFAULT_TTL: Duration = Duration::from_secs(24);
pub const MAX_TTL: Duration = Duration::from_secs(60);

/// The agent's `[lifecycle]`: rotate 15 s before max_ttl, retry Vault at
/// least every second (a Vault outage of the soak is at most 4 s, well
/// inside the 6+ s a lease has left at its renewal).
const LIFECYCLE: &str = "max_ttl_hint_s = 60\nrotate_lead_s = 15\nbackoff_max_s = 1.0\n\
    ready_min_remaining_s = 2\nshutdown_timeout_s = 10\n";

/// The worker's config: quick rechecks and retries, debug log.
const WORKER_CONFIG: &str = "recheck_interval_ms = 1000\nretry_initial_ms = 100\n\
    retry_max_ms = 1000\nlag_check_interval_ms = 500\n\
    log_level = \"info,riskfeat_worker=debug\"";

/// How long a component may take to come back after a fault.
const BACK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the shutdown of one process may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// configd, the agent and the worker on one stack.
pub struct Pod {
    pub configd: Configd,
    /// `None` only while an agent restart has it down.
    pub agent: Option<Agent>,
    pub worker: Worker,
    /// The configd tokens (admin, agent's reader): secrets of the run.
    pub tokens: Vec<String>,
    agent_config: PathBuf,
    shared: PathBuf,
    logs: Vec<LogText>,
    agents_started: usize,
    configds_started: usize,
    _dir: tempfile::TempDir,
}

impl Pod {
    /// Starts configd (publishing the `features` namespace), the agent and
    /// the worker; returns once the worker answers a request with 200.
    pub async fn start(stack: &Stack) -> anyhow::Result<Pod> {
        let dir = tempfile::Builder::new()
            .prefix("riskfeat-soak-")
            .tempdir()?;
        let (admin, reader) = (random_token(32), random_token(32));
        let mut configd = Configd::new(
            &stack.pg.primary.superuser_dsn(),
            &[
                ConfigdToken::admin("admin", &admin),
                ConfigdToken::read("agent", &reader, &["features"]),
            ],
        )?;
        configd.start("").await.context("configd did not start")?;
        configd.publish_seed_features(&admin, &[]).await?;
        let token_file = dir.path().join("configd.token");
        write_private(&token_file, &reader)?;
        let sections = format!(
            "[lifecycle]\n{LIFECYCLE}\n[configd]\naddr = \"{}\"\ntoken_file = \"{}\"\n\
             namespaces = [\"features\"]\nbackoff_max_s = 1.0\n",
            configd.http().base(),
            token_file.display()
        );
        let agent_config = stack.write_agent_toml(
            dir.path(),
            AgentToml {
                top: "log_level = \"info,riskfeat_agent=debug\"",
                sections: &sections,
                ..Default::default()
            },
        )?;
        let shared = stack.shared_dir.path().to_path_buf();
        let agent = Agent::spawn(&agent_config, &shared, &[])?;
        let worker = Worker::spawn(&shared, WORKER_CONFIG)?;
        let pod = Pod {
            configd,
            agent: Some(agent),
            worker,
            tokens: vec![admin, reader],
            agent_config,
            shared,
            logs: Vec::new(),
            agents_started: 1,
            configds_started: 1,
            _dir: dir,
        };
        pod.wait_answering().await.with_context(|| {
            format!(
                "the pod did not come up.\nagent log:\n{}\nworker log:\n{}",
                pod.agent.as_ref().map(|a| a.logs()).unwrap_or_default(),
                pod.worker.logs()
            )
        })?;
        Ok(pod)
    }

    /// `<shared>/db.json` and `<shared>/agent-state.json`: the files that
    /// name the run's credentials and tokens.
    pub fn secret_files(&self) -> Vec<PathBuf> {
        let dir = SharedDir::new(&self.shared);
        vec![dir.db_json(), dir.agent_state()]
    }

    /// The generation `db.json` names now (0 when none).
    pub fn generation(&self) -> u64 {
        super::checks::read_json(&SharedDir::new(&self.shared).db_json())
            .and_then(|v| v["generation"].as_u64())
            .unwrap_or(0)
    }

    /// The agent's state file, parsed (`Null` when missing).
    pub fn agent_state(&self) -> Value {
        super::checks::read_json(&SharedDir::new(&self.shared).agent_state()).unwrap_or(Value::Null)
    }

    /// Waits until the worker answers `GET /v1/features/1` with 200.
    pub async fn wait_answering(&self) -> anyhow::Result<()> {
        let url = self.worker.url("/v1/features/1");
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()?;
        wait_until(BACK_TIMEOUT, "the worker answers 200", || async {
            client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
        })
        .await
    }

    /// Injects `step` (its gap already waited) and returns what happened;
    /// times are since `t0`. A component that does not come back is
    /// recorded in [`FaultRecord::error`]; `Err` only when the harness
    /// itself fails.
    pub async fn inject(
        &mut self,
        stack: &mut Stack,
        step: Step,
        t0: Instant,
    ) -> anyhow::Result<FaultRecord> {
        let start = t0.elapsed();
        let secs = step.down.as_secs_f64();
        let (how, back) = match step.kind {
            FaultKind::Vault => {
                let how = self.vault_down(stack, step).await?;
                (how, self.wait_agent(|s| s["vault"]["up"] == true).await)
            }
            FaultKind::Configd => {
                self.keep_configd_log();
                self.configd.kill();
                tokio::time::sleep(step.down).await;
                self.configds_started += 1;
                let back = self.configd.restart().await;
                (format!("SIGKILL, down {secs:.1} s, restarted"), back)
            }
            FaultKind::Replica => {
                let replica = stack.pg.replica_mut();
                tokio::task::block_in_place(|| replica.stop())?;
                tokio::time::sleep(step.down).await;
                tokio::task::block_in_place(|| replica.start())?;
                let how = format!("fast shutdown, down {secs:.1} s more, started");
                (how, self.wait_answering().await)
            }
            FaultKind::Agent => self.restart_agent(step.down).await,
        };
        Ok(FaultRecord {
            kind: step.kind,
            how,
            start,
            end: t0.elapsed(),
            error: back.err().map(|e| format!("{e:#}")),
        })
    }

    /// Takes Vault away for `step.down`: restarted (SIGTERM, down, started
    /// and unsealed), cut at the proxy, or frozen with SIGSTOP.
    async fn vault_down(&self, stack: &mut Stack, step: Step) -> anyhow::Result<String> {
        let secs = step.down.as_secs_f64();
        match step.variant % 3 {
            0 => {
                // Starting and unsealing take a second or two more.
                let down = step.down / 2;
                stack.bao.restart(down).await?;
                let secs = down.as_secs_f64();
                Ok(format!(
                    "SIGTERM, down {secs:.1} s, started again and unsealed"
                ))
            }
            1 => {
                let proxy = stack
                    .vault_proxy
                    .as_ref()
                    .context("the soak needs a Vault proxy")?;
                proxy.cut();
                tokio::time::sleep(step.down).await;
                proxy.restore();
                Ok(format!("cut at the proxy for {secs:.1} s"))
            }
            _ => {
                let pid = Pid::from_raw(stack.bao.pid() as i32);
                kill(pid, Signal::SIGSTOP).context("SIGSTOP to bao")?;
                tokio::time::sleep(step.down).await;
                kill(pid, Signal::SIGCONT).context("SIGCONT to bao")?;
                Ok(format!("process stopped (SIGSTOP) for {secs:.1} s"))
            }
        }
    }

    /// SIGTERM to the agent, `down` without it, started again; back when
    /// it is ready.
    async fn restart_agent(&mut self, down: Duration) -> (String, anyhow::Result<()>) {
        let before = self.generation();
        let status = self.stop_agent();
        tokio::time::sleep(down).await;
        let started = Agent::spawn(&self.agent_config, &self.shared, &[]);
        self.agents_started += 1;
        let back = match started {
            Ok(agent) => {
                let ready = agent.wait_ready(BACK_TIMEOUT).await;
                self.agent = Some(agent);
                ready
            }
            Err(e) => Err(e),
        };
        let how = format!(
            "SIGTERM ({status}), down {:.1} s, started again; generation {before} -> {}",
            down.as_secs_f64(),
            self.generation()
        );
        (how, back)
    }

    /// SIGTERM to the agent and its exit, its log kept; how it exited.
    fn stop_agent(&mut self) -> String {
        let Some(mut agent) = self.agent.take() else {
            return "not running".into();
        };
        let status = tokio::task::block_in_place(|| agent.stop(STOP_TIMEOUT));
        self.logs.push(LogText {
            name: format!("agent #{}", self.agents_started),
            text: agent.logs(),
        });
        match status {
            Some(s) => s.to_string(),
            None => "still running after 30 s, killed".into(),
        }
    }

    fn keep_configd_log(&mut self) {
        self.logs.push(LogText {
            name: format!("configd #{}", self.configds_started),
            text: self.configd.logs(),
        });
    }

    /// Waits until the agent's `/status` satisfies `pred`.
    async fn wait_agent(&self, pred: impl Fn(&Value) -> bool) -> anyhow::Result<()> {
        let agent = self.agent.as_ref().context("no agent running")?;
        wait_until(BACK_TIMEOUT, "the agent's /status", || async {
            agent.status().await.is_ok_and(|s| pred(&s))
        })
        .await
    }

    /// Shuts the pod down as Kubernetes does when the pod goes: SIGTERM to
    /// the worker, then to the agent (which, the worker gone, revokes its
    /// leases), then to configd. Returns how each exited.
    pub fn stop(&mut self) -> String {
        let worker = tokio::task::block_in_place(|| self.worker.stop(STOP_TIMEOUT));
        let agent = self.stop_agent();
        let configd = tokio::task::block_in_place(|| self.configd.stop(STOP_TIMEOUT));
        format!("worker: {worker:?}, agent: {agent}, configd: {configd:?}")
    }

    /// Every log of the run: each agent and configd that ran, the worker,
    /// OpenBao and both PostgreSQL servers.
    pub fn all_logs(&mut self, stack: &Stack) -> Vec<LogText> {
        if let Some(agent) = &self.agent {
            self.logs.push(LogText {
                name: format!("agent #{}", self.agents_started),
                text: agent.logs(),
            });
        }
        self.keep_configd_log();
        let mut logs = std::mem::take(&mut self.logs);
        let more = [
            ("worker", self.worker.logs()),
            ("openbao", stack.bao.logs()),
            ("postgres primary", stack.pg.primary.logs()),
            ("postgres replica", stack.pg.replica().logs()),
        ];
        logs.extend(more.into_iter().map(|(name, text)| LogText {
            name: name.into(),
            text,
        }));
        logs
    }
}
