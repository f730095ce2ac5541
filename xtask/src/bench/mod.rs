//! `cargo xtask bench ...`: the benchmarks. This module holds what every
//! bench shares: building the release binaries, running a bench on a tokio
//! runtime and recording its markdown report in docs/benchmarks.md, and
//! reading `/proc` (CPU time, resident memory, how busy the machine was).
//! Each bench is a submodule: [`worker`] (the worker over HTTP against
//! pgbench on its own SQL, and credential rotations under load) and
//! [`configd`] (memory per held watcher, publish to all watchers against
//! etcd with [`fanout`]'s clients and [`etcd`]'s server, incremental bytes,
//! start-up storm).

mod configd;
mod cpus;
mod etcd;
mod fanout;
mod pgbench;
mod worker;
mod wrk;

use anyhow::{bail, Context};
use std::future::Future;
use std::path::{Path, PathBuf};

/// `cargo xtask bench <which>`.
#[derive(clap::Subcommand)]
pub enum Which {
    /// Worker over HTTP (wrk) against pgbench running the worker's own SQL.
    Worker(worker::Args),
    /// configd: 10,000 long-poll watchers, incremental vs snapshot bytes.
    Configd(configd::Args),
}

pub fn run(which: Which) -> anyhow::Result<()> {
    match which {
        Which::Worker(a) => worker::run(a),
        Which::Configd(a) => configd::run(a),
    }
}

/// What a bench's `run` shares: builds the release binaries of `packages`,
/// runs `bench` (given `target/release`) on a multi-threaded runtime,
/// prints its report and appends it to docs/benchmarks.md unless
/// `no_record`.
fn run_bench<F, Fut>(name: &str, packages: &[&str], no_record: bool, bench: F) -> anyhow::Result<()>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: Future<Output = anyhow::Result<String>>,
{
    let root = crate::workspace_root();
    eprintln!("bench {name}: building the release {}", packages.join(", "));
    let mut cmd = std::process::Command::new(env!("CARGO"));
    cmd.args(["build", "--release", "--bins"])
        .current_dir(&root);
    for p in packages {
        cmd.args(["-p", p]);
    }
    let status = cmd.status().context("run cargo build --release")?;
    if !status.success() {
        bail!("cargo build --release of {packages:?} failed");
    }
    let release = release_dir(&root);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(bench(release))?;
    println!("{report}");
    if !no_record {
        let path = root.join("docs/benchmarks.md");
        let mut text = std::fs::read_to_string(&path).unwrap_or_default();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push('\n');
        text.push_str(&report);
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        eprintln!("bench {name}: appended to {}", path.display());
    }
    Ok(())
}

/// Runs a load generator (wrk, pgbench) to its end: its stdout, or an error
/// with its exit status and both outputs.
async fn client_output(mut cmd: tokio::process::Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("run {what}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!("{what} failed ({}): {stdout}\n{stderr}", out.status);
    }
    Ok(stdout)
}

/// A temp dir holding one file `name` with `text` (a load generator's
/// script; its log files may go beside it): the dir (removed on drop) and
/// the file's path.
fn script_in_temp_dir(name: &str, text: &str) -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join(name);
    std::fs::write(&file, text).with_context(|| format!("write {}", file.display()))?;
    Ok((dir, file))
}

/// `$CARGO_TARGET_DIR/release`, or `<root>/target/release`.
fn release_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_relative() { root.join(t) } else { t })
        .unwrap_or_else(|| root.join("target"))
        .join("release")
}

/// The `p` quantile (0..=1) of sorted values (nearest rank); 0 when empty.
fn quantile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// "N CPUs, model; 1-min load average L when the report was written" (the
/// machine's CPUs from /proc/cpuinfo, not this process's affinity, which
/// `bench worker --cpus split` narrows).
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or_else(|| "unknown CPU".into(), |m| m.trim().to_string());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    format!(
        "{cpus} CPUs, {model}; 1-min load average {load} when the report was written \
         (other work on the machine skews the figures)"
    )
}

/// A `VmHWM:`-style field of `/proc/<pid>/status`, in kB (0 when unknown).
fn vm_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// "peak RSS (VmHWM) x MB, RSS y MB" of a process.
fn memory(pid: u32) -> String {
    let mb = |field| match vm_kb(pid, field) {
        0 => "?".to_string(),
        kb => format!("{:.1} MB", kb as f64 / 1024.0),
    };
    format!("peak RSS (VmHWM) {}, RSS {}", mb("VmHWM:"), mb("VmRSS:"))
}

/// Which CPU time of a `/proc/<pid>/stat` to read.
#[derive(Clone, Copy)]
enum CpuOf {
    /// utime + stime: the process itself.
    Own,
    /// cutime + cstime: its children that it has waited for.
    WaitedChildren,
}

/// CPU seconds of `pid` (`None` for this process), from `/proc`.
fn cpu_s(pid: Option<u32>, of: CpuOf) -> Option<f64> {
    let path = pid.map_or("/proc/self/stat".to_string(), |p| format!("/proc/{p}/stat"));
    let text = std::fs::read_to_string(path).ok()?;
    // The fields after the command name (which may hold spaces) in
    // parentheses, counted from 0 = state: utime 11, stime 12, cutime 13,
    // cstime 14.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let at = match of {
        CpuOf::Own => 11,
        CpuOf::WaitedChildren => 13,
    };
    let ticks: u64 = f.get(at)?.parse::<u64>().ok()? + f.get(at + 1)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// Sum over the threads of `pid` of the time they waited on a run queue
/// (the second field of `/proc/<pid>/task/<tid>/schedstat`, ns), seconds.
/// Threads that ended before the sample do not count.
fn run_queue_wait_s(pid: u32) -> Option<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).unwrap_or_default();
        ns += stat
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(ns as f64 / 1e9)
}

/// (busy, total) jiffies of all CPUs from the first line of /proc/stat.
fn machine_jiffies() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = text
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    // idle and iowait are the 4th and 5th.
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// CPU counters at one moment: a server's, the waited-for client
/// processes' (wrk, pgbench) and the machine's.
struct CpuSample {
    server_s: f64,
    /// The server's threads' time runnable but waiting for a CPU.
    server_wait_s: f64,
    clients_s: f64,
    machine: (u64, u64),
    at: std::time::Instant,
}

/// CPU use over a measurement.
#[derive(Clone, Copy, Debug)]
struct CpuUse {
    /// The server's CPU time per request, µs.
    server_us_per_req: f64,
    /// The client's (wrk's or pgbench's) CPU time per request, µs.
    client_us_per_req: f64,
    /// Busy share of all cores, 0..=1.
    machine_busy: f64,
    /// The server's threads' run-queue wait per second of wall time, ms
    /// (from `/proc/<pid>/task/*/schedstat`): time they could have run
    /// but had no CPU.
    server_wait_ms_per_s: f64,
}

impl CpuSample {
    fn take(server_pid: u32) -> Option<CpuSample> {
        Some(CpuSample {
            server_s: cpu_s(Some(server_pid), CpuOf::Own)?,
            server_wait_s: run_queue_wait_s(server_pid).unwrap_or(0.0),
            clients_s: cpu_s(None, CpuOf::WaitedChildren)?,
            machine: machine_jiffies()?,
            at: std::time::Instant::now(),
        })
    }

    /// CPU use from `self` until now, over `requests` requests.
    fn until_now(&self, server_pid: u32, requests: u64) -> Option<CpuUse> {
        let b = CpuSample::take(server_pid)?;
        let n = requests.max(1) as f64;
        let total = b.machine.1.saturating_sub(self.machine.1).max(1) as f64;
        Some(CpuUse {
            server_us_per_req: (b.server_s - self.server_s) * 1e6 / n,
            client_us_per_req: (b.clients_s - self.clients_s) * 1e6 / n,
            machine_busy: b.machine.0.saturating_sub(self.machine.0) as f64 / total,
            server_wait_ms_per_s: (b.server_wait_s - self.server_wait_s) * 1e3
                / b.at.duration_since(self.at).as_secs_f64().max(1e-9),
        })
    }
}

/// TCP counters of this network namespace (`/proc/net/snmp` and
/// `/proc/net/netstat`): retransmissions and their causes, so a latency
/// tail can be told apart from lost segments (other work on the machine
/// counts too).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct TcpCounters {
    /// Segments retransmitted (`Tcp: RetransSegs`).
    retrans: u64,
    /// Retransmission timeouts (`TcpExt: TCPTimeouts`).
    timeouts: u64,
    /// Tail loss probes (`TcpExt: TCPLossProbes`).
    loss_probes: u64,
    /// SYNs dropped at a full accept queue (`TcpExt: ListenDrops`).
    listen_drops: u64,
}

impl TcpCounters {
    fn take() -> TcpCounters {
        let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
        let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
        TcpCounters {
            retrans: proc_net_field(&snmp, "Tcp:", "RetransSegs"),
            timeouts: proc_net_field(&netstat, "TcpExt:", "TCPTimeouts"),
            loss_probes: proc_net_field(&netstat, "TcpExt:", "TCPLossProbes"),
            listen_drops: proc_net_field(&netstat, "TcpExt:", "ListenDrops"),
        }
    }

    /// The counts from `self` until now.
    fn until_now(&self) -> TcpCounters {
        let b = TcpCounters::take();
        TcpCounters {
            retrans: b.retrans.saturating_sub(self.retrans),
            timeouts: b.timeouts.saturating_sub(self.timeouts),
            loss_probes: b.loss_probes.saturating_sub(self.loss_probes),
            listen_drops: b.listen_drops.saturating_sub(self.listen_drops),
        }
    }
}

/// `field` of the `prefix` table in a `/proc/net/snmp`-style text (a header
/// line of names, then a line of values); 0 when absent.
fn proc_net_field(text: &str, prefix: &str, field: &str) -> u64 {
    let mut rows = text.lines().filter(|l| l.starts_with(prefix));
    let (Some(names), Some(values)) = (rows.next(), rows.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .position(|n| n == field)
        .and_then(|i| values.split_whitespace().nth(i))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_fields_are_found_by_name() {
        let text = "Ip: Forwarding\nIp: 1\nTcp: RtoMin RetransSegs\nTcp: 200 42\n";
        assert_eq!(proc_net_field(text, "Tcp:", "RetransSegs"), 42);
        assert_eq!(proc_net_field(text, "Tcp:", "Nothing"), 0);
        assert_eq!(proc_net_field(text, "Udp:", "RetransSegs"), 0);
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(quantile(&v, 0.5), 500);
        assert_eq!(quantile(&v, 0.999), 999);
        assert_eq!(quantile(&v, 1.0), 1000);
        assert_eq!(quantile::<u64>(&[], 0.5), 0);
    }
}
