//! The HTTP load generator of `cargo xtask bench worker`: `wrk` (Debian's
//! package, installed when missing) with a Lua script that asks for a random
//! user per request and prints the client-side latency percentiles, the
//! request count and the errors in a line this module parses.

use anyhow::Context;
use std::path::Path;
use std::time::Duration;

/// The script: `GET /v1/features/<random user in 1..=users>`, each wrk
/// thread seeded apart; `done()` prints one `RESULT` line (latencies in µs).
const LUA: &str = r#"
local users = tonumber(os.getenv("BENCH_USERS") or "1000")
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end
function init(args)
  math.randomseed(os.time() * 1000 + (id or 0) * 7919)
end
function request()
  return wrk.format("GET", "/v1/features/" .. math.random(1, users))
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d non2xx=%d socket_errors=%d p50=%d p99=%d p999=%d max=%d\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
"#;

/// One wrk run, as its `done()` reported it.
#[derive(Debug, Clone, Copy, Default)]
pub struct WrkResult {
    pub requests: u64,
    pub seconds: f64,
    /// Answers with a status other than 2xx/3xx.
    pub non_2xx: u64,
    /// Connect, read, write errors and timeouts.
    pub socket_errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl WrkResult {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds.max(1e-9)
    }

    fn parse(stdout: &str) -> Option<WrkResult> {
        let line = stdout.lines().find(|l| l.starts_with("RESULT "))?;
        let field = |name: &str| -> Option<u64> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse::<f64>().ok())
                .map(|v| v as u64)
        };
        Some(WrkResult {
            requests: field("requests")?,
            seconds: field("duration_us")? as f64 / 1e6,
            non_2xx: field("non2xx")?,
            socket_errors: field("socket_errors")?,
            p50_us: field("p50")?,
            p99_us: field("p99")?,
            p999_us: field("p999")?,
            max_us: field("max")?,
        })
    }
}

/// Makes sure `wrk` is on PATH: installs Debian's `wrk` when it is missing
/// (as root; otherwise says how).
pub fn ensure_installed() -> anyhow::Result<()> {
    if crate::test::have("wrk") {
        return Ok(());
    }
    crate::test::apt_install(&["wrk"])
}

/// The load: `connections` keep-alive connections (wrk threads: up to 2,
/// the machine's cores) for `duration` against `base` (`http://host:port`),
/// random users in `1..=users`. A request may take up to 30 s before wrk
/// counts it as a timeout, so stalls show in the latencies.
pub async fn run(
    base: &str,
    users: u64,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<WrkResult> {
    let (_dir, script) = super::script_in_temp_dir("features.lua", LUA)?;
    let stdout =
        super::client_output(command(&script, base, users, connections, duration), "wrk").await?;
    WrkResult::parse(&stdout).with_context(|| format!("no RESULT line in wrk's output: {stdout}"))
}

fn command(
    script: &Path,
    base: &str,
    users: u64,
    connections: usize,
    duration: Duration,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("wrk");
    cmd.args(["-t", &connections.clamp(1, 2).to_string()])
        .args(["-c", &connections.to_string()])
        .args(["-d", &format!("{}s", duration.as_secs().max(1))])
        .args(["--timeout", "30s", "-s"])
        .arg(script)
        .arg(format!("{base}/v1/features/1"))
        .env("BENCH_USERS", users.to_string());
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_done_line() {
        let out = "Running 5s test\nRESULT requests=1200 duration_us=5000000 non2xx=3 \
                   socket_errors=1 p50=250 p99=1200 p999=5000 max=9000\n";
        let r = WrkResult::parse(out).unwrap();
        assert_eq!((r.requests, r.non_2xx, r.socket_errors), (1200, 3, 1));
        assert_eq!(
            (r.p50_us, r.p99_us, r.p999_us, r.max_us),
            (250, 1200, 5000, 9000)
        );
        assert!((r.rate() - 240.0).abs() < 1e-9);
        assert!(WrkResult::parse("no result").is_none());
    }
}
