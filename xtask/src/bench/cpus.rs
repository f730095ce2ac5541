//! Where the worker bench's processes run: `--cpus split` gives PostgreSQL
//! (both servers, every backend) CPUs of its own and everything else (this
//! bench, OpenBao, the worker, the agent, wrk, pgbench) the others, as in a
//! deployment, where the replica is another machine than the worker's pod;
//! `--cpus shared` lets the scheduler place everything on every CPU.
//!
//! Why it matters (docs/benchmarks.md, "The C=16 stall is CPU sharing"):
//! on two shared CPUs the PostgreSQL backends wait for a CPU for hundreds of
//! milliseconds behind the HTTP side's frequent wake-ups, and pgbench, whose
//! client side is light, does not show it. Affinity is inherited: the bench
//! pins all of its own threads first, so every process it starts is a
//! client, then moves each postmaster and its children to the database's
//! CPUs (backends forked later inherit the postmaster's).

use anyhow::{bail, Context};
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// The `--cpus` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Placement {
    /// PostgreSQL on the first half of the CPUs, the rest on the others.
    Split,
    /// No pinning.
    Shared,
}

/// The CPU ids of each side of a split, taken from the CPUs this process
/// was allowed (`sched_getaffinity`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub database: Vec<usize>,
    pub clients: Vec<usize>,
}

impl Split {
    /// Splits `allowed` (sorted CPU ids): the first half (rounded down) for
    /// the database, the rest for the clients; fails on fewer than two CPUs,
    /// where one side would get none.
    pub fn of(allowed: &[usize]) -> anyhow::Result<Split> {
        if allowed.len() < 2 {
            bail!(
                "--cpus split needs at least 2 CPUs, this process may use {:?}; use --cpus shared",
                allowed
            );
        }
        let n = allowed.len() / 2;
        Ok(Split {
            database: allowed[..n].to_vec(),
            clients: allowed[n..].to_vec(),
        })
    }

    /// The split of the CPUs this process was allowed when first asked
    /// (asking again after [`Split::pin_this_process`] gives the same).
    pub fn of_this_machine() -> anyhow::Result<Split> {
        static ALLOWED: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();
        let allowed = ALLOWED.get_or_init(|| {
            let set = nix::sched::sched_getaffinity(Pid::from_raw(0));
            (0..CpuSet::count())
                .filter(|&c| set.as_ref().is_ok_and(|s| s.is_set(c).unwrap_or(false)))
                .collect()
        });
        Split::of(allowed)
    }

    /// "PostgreSQL on CPU 0; ... on CPU 1", for the report.
    pub fn describe(&self) -> String {
        format!(
            "PostgreSQL (primary, replica, every backend) on CPU {}; this bench, OpenBao, the \
             worker, the agent, wrk and pgbench on CPU {}",
            list(&self.database),
            list(&self.clients)
        )
    }

    /// Pins every thread of this process to the clients' CPUs.
    pub fn pin_this_process(&self) -> anyhow::Result<()> {
        pin_process(std::process::id(), &self.clients)
    }

    /// Pins the postmaster `pid`, its threads and its child processes to
    /// the database's CPUs; returns how many processes were pinned.
    pub fn pin_postgres(&self, postmaster: u32) -> anyhow::Result<usize> {
        let mut pids = vec![postmaster];
        pids.extend(children_of(postmaster));
        for &p in &pids {
            pin_process(p, &self.database)
                .with_context(|| format!("pin PostgreSQL process {p}"))?;
        }
        Ok(pids.len())
    }
}

fn list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Sets the affinity of every thread of process `pid`.
fn pin_process(pid: u32, cpus: &[usize]) -> anyhow::Result<()> {
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c)?;
    }
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("list the threads of {pid}"))?;
    for task in tasks {
        let tid: i32 = match task?.file_name().to_str().and_then(|t| t.parse().ok()) {
            Some(t) => t,
            None => continue,
        };
        // A thread that ended since the listing is not an error.
        match sched_setaffinity(Pid::from_raw(tid), &set) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(e).with_context(|| format!("sched_setaffinity({tid})")),
        }
    }
    Ok(())
}

/// The processes whose parent is `pid` (from `/proc/<n>/stat`).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| parent_of(p) == Some(pid))
        .collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After "(comm) ": state, then ppid.
    text[text.rfind(')')? + 2..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_half_for_the_database() {
        assert_eq!(
            Split::of(&[0, 1]).unwrap(),
            Split {
                database: vec![0],
                clients: vec![1]
            }
        );
        assert_eq!(
            Split::of(&[2, 3, 5]).unwrap(),
            Split {
                database: vec![2],
                clients: vec![3, 5]
            }
        );
        let e = Split::of(&[0]).unwrap_err().to_string();
        assert!(
            e.contains("at least 2 CPUs") && e.contains("--cpus shared"),
            "{e}"
        );
    }

    #[test]
    fn finds_its_own_children_and_pins_a_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(children_of(std::process::id()).contains(&child.id()));
        let split = Split::of_this_machine();
        let allowed = split.as_ref().map(|s| s.clients[0]).unwrap_or(0);
        pin_process(child.id(), &[allowed]).unwrap();
        // Asked again, the split is the same (the second stack of the bench).
        assert_eq!(Split::of_this_machine().ok(), split.ok());
        let got = nix::sched::sched_getaffinity(Pid::from_raw(child.id() as i32)).unwrap();
        assert!(got.is_set(allowed).unwrap());
        assert_eq!(
            (0..CpuSet::count())
                .filter(|&c| got.is_set(c).unwrap())
                .count(),
            1
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
