//! `promtool check metrics` on a real `/metrics` page: metric names, types
//! and help texts linted by Prometheus's own tool (Debian package
//! `prometheus`, installed by `cargo xtask test`).

use anyhow::{bail, Context};
use std::io::Write;
use std::process::{Command, Stdio};

/// Lints a Prometheus text page; an error carries promtool's complaints.
/// A missing promtool is an error too: a lint that cannot run must not pass.
pub fn check_metrics(page: &str) -> anyhow::Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run promtool (apt-get install prometheus, or run `cargo xtask test`)")?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(page.as_bytes())?;
    let out = child.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || !said.trim().is_empty() {
        bail!("promtool check metrics: {}\n{said}", out.status);
    }
    Ok(())
}
