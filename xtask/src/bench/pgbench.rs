//! The ceiling of `cargo xtask bench worker`: pgbench running the worker's
//! own single-user statement (`-M prepared`, a random user per transaction,
//! the per-transaction log `-l`), its latencies computed from that log.
//!
//! The script is generated from the statement the worker prepares, never a
//! copy: each `$n` becomes a pgbench variable set by the script.

use super::quantile;
use anyhow::{bail, Context};
use riskfeat_tests::{IssuedCreds, PgServer};
use std::path::Path;
use std::time::Duration;

/// A pgbench script running `sql` with `params[n - 1]` = `(variable,
/// \set expression)` for each `$n`. Fails when `sql` has a `$n` that
/// `params` does not cover, or `params` one that `sql` does not use.
pub fn script(sql: &str, params: &[(&str, String)]) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut body = sql.trim().trim_end_matches(';').to_string();
    // Highest first, so `$1` does not eat the start of `$10`.
    for (i, (name, _)) in params.iter().enumerate().rev() {
        let placeholder = format!("${}", i + 1);
        if !body.contains(&placeholder) {
            bail!("the statement has no {placeholder} (for :{name})");
        }
        body = body.replace(&placeholder, &format!(":{name}"));
    }
    if let Some(at) = body.find('$') {
        bail!(
            "the statement has a parameter the script does not set: {}",
            &body[at..]
        );
    }
    for (name, expr) in params {
        out.push_str(&format!("\\set {name} {expr}\n"));
    }
    out.push_str(&body);
    out.push_str(";\n");
    Ok(out)
}

/// One pgbench run.
#[derive(Debug, Clone, Default)]
pub struct PgbenchResult {
    /// pgbench's own figure (without the initial connection time).
    pub tps: f64,
    pub transactions: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// p99 and p99.9 of the log as it is, without [`wrk_corrected`].
    pub raw_p99_us: u64,
    pub raw_p999_us: u64,
}

fn pgbench_bin() -> String {
    let p = "/usr/lib/postgresql/15/bin/pgbench";
    if Path::new(p).exists() {
        p.into()
    } else {
        "pgbench".into()
    }
}

/// `pgbench -n -M prepared -c clients -j min(2, clients) -T duration -l` of
/// `script` against `server` as `creds`.
pub async fn run(
    server: &PgServer,
    creds: &IssuedCreds,
    script: &str,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<PgbenchResult> {
    let (dir, file) = super::script_in_temp_dir("features.sql", script)?;
    let prefix = dir.path().join("pgb");
    let mut cmd = tokio::process::Command::new(pgbench_bin());
    cmd.args(["-n", "-M", "prepared", "-l"])
        .args(["-c", &clients.to_string()])
        .args(["-j", &clients.clamp(1, 2).to_string()])
        .args(["-T", &duration.as_secs().max(1).to_string()])
        .arg("-f")
        .arg(&file)
        .arg("--log-prefix")
        .arg(&prefix)
        .args(["-h", &server.host, "-p", &server.port.to_string()])
        .args(["-U", &creds.username, &server.dbname])
        .env("PGPASSWORD", &creds.password);
    let stdout = super::client_output(cmd, "pgbench").await?;
    let tps = stdout
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("tps = ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .context("no tps in pgbench output")?;
    let mut lat = Vec::new();
    for entry in std::fs::read_dir(dir.path())? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("pgb"))
        {
            lat.extend(log_latencies(&std::fs::read_to_string(&path)?));
        }
    }
    lat.sort_unstable();
    let runtime_us = duration.as_micros() as u64;
    let corrected = wrk_corrected(&lat, runtime_us, clients);
    Ok(PgbenchResult {
        tps,
        transactions: lat.len() as u64,
        p50_us: weighted_quantile(&corrected, 0.50),
        p99_us: weighted_quantile(&corrected, 0.99),
        p999_us: weighted_quantile(&corrected, 0.999),
        max_us: lat.last().copied().unwrap_or(0),
        raw_p99_us: quantile(&lat, 0.99),
        raw_p999_us: quantile(&lat, 0.999),
    })
}

/// `sorted` latencies (µs) as wrk reports its own: corrected for
/// coordinated omission like wrk's `stats_correct` (which runs before the
/// script's `done()`). With `i` = runtime / (requests per connection), each
/// latency `L >= 2i` adds samples `L - i`, `L - 2i`, ... down to above `i`:
/// the requests a client sending at a steady pace would have seen waiting
/// behind the stall. So a few stalls weigh on the percentiles in proportion
/// to their length. Returns `(value, count)` in ascending order.
pub fn wrk_corrected(sorted: &[u64], runtime_us: u64, clients: usize) -> Vec<(u64, u64)> {
    let mut hist = std::collections::BTreeMap::<u64, u64>::new();
    for &v in sorted {
        *hist.entry(v).or_default() += 1;
    }
    let per_connection = sorted.len() as u64 / clients.max(1) as u64;
    if let Some(interval) = runtime_us.checked_div(per_connection) {
        let interval = interval.max(1);
        let originals: Vec<(u64, u64)> = hist
            .range(interval.saturating_mul(2)..)
            .map(|(v, n)| (*v, *n))
            .collect();
        for (v, n) in originals {
            let mut m = v - interval;
            while m > interval {
                *hist.entry(m).or_default() += n;
                m -= interval;
            }
        }
    }
    hist.into_iter().collect()
}

/// The `p` quantile of a `(value, count)` histogram in ascending order.
fn weighted_quantile(hist: &[(u64, u64)], p: f64) -> u64 {
    let total: u64 = hist.iter().map(|(_, n)| n).sum();
    let rank = ((total as f64 * p).ceil() as u64).max(1);
    let mut seen = 0;
    for &(v, n) in hist {
        seen += n;
        if seen >= rank {
            return v;
        }
    }
    0
}

/// The latencies (µs) of a `-l` log: `client_id transaction_no time
/// script_no time_epoch time_us ...`, `time` being the latency.
fn log_latencies(log: &str) -> impl Iterator<Item = u64> + '_ {
    log.lines()
        .filter_map(|line| line.split_whitespace().nth(2)?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parameter_becomes_a_variable() {
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
        let params: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (*n, (i + 1).to_string()))
            .collect();
        let list: Vec<_> = (1..=10).map(|i| format!("${i}")).collect();
        let sql = format!("SELECT {} FROM t WHERE a = $1", list.join(", "));
        let s = script(&sql, &params).unwrap();
        assert!(s.starts_with("\\set a 1\n\\set b 2\n"), "{s}");
        assert!(
            s.ends_with("SELECT :a, :b, :c, :d, :e, :f, :g, :h, :i, :j FROM t WHERE a = :a;\n"),
            "{s}"
        );
    }

    #[test]
    fn an_unset_or_unused_parameter_is_refused() {
        assert!(script("SELECT $1, $2", &[("a", "1".into())]).is_err());
        assert!(script("SELECT $1", &[("a", "1".into()), ("b", "2".into())]).is_err());
    }

    #[test]
    fn the_worker_statement_makes_a_complete_script() {
        let s = super::super::worker::pgbench_script(1000, 7_200_000_000).unwrap();
        assert!(!s.contains('$'), "{s}");
        assert!(s.contains("\\set uid random(1, 1000)\n"), "{s}");
        assert!(s.contains("\\set short_start 3600000000\n"), "{s}");
        assert!(s.contains("\\set long_start -79200000000\n"), "{s}");
        assert!(s.contains(":long_start"), "{s}");
    }

    #[test]
    fn one_stall_weighs_like_wrk_weighs_it() {
        // 1,000 requests of 1 ms on one connection in 1.1 s, and one of 100 ms.
        let mut lat = vec![1_000u64; 1000];
        lat.push(100_000);
        let runtime_us = 1_100_000;
        let raw_p99 = quantile(&lat, 0.99);
        let hist = wrk_corrected(&lat, runtime_us, 1);
        // interval = 1.1 s / 1001 ~ 1,098 µs: 100 ms adds 90 samples below it.
        let total: u64 = hist.iter().map(|(_, n)| n).sum();
        assert_eq!(total, 1001 + 90);
        assert_eq!(raw_p99, 1_000);
        assert!(weighted_quantile(&hist, 0.99) > 80_000);
        assert_eq!(weighted_quantile(&hist, 0.5), 1_000);
    }

    #[test]
    fn latencies_come_from_the_third_field() {
        let log = "0 1 250 0 1700000000 123\n1 1 900 0 1700000000 456\n";
        assert_eq!(log_latencies(log).collect::<Vec<_>>(), vec![250, 900]);
    }
}
