//! etcd 3.4 (Debian's `etcd-server`, installed when missing) for
//! `cargo xtask bench configd`: a one-member cluster on loopback ports with
//! its data in a temp dir on tmpfs, watched through its JSON gateway
//! (`POST /v3/watch`, one HTTP/1.1 connection per watcher) and written
//! through `POST /v3/kv/put`, so its publish-to-all is measured by the
//! same client code as configd's (`fanout`).

use super::fanout::Spec;
use anyhow::{bail, Context};
use riskfeat_tests::{free_port, wait_until, ChildProc};
use std::time::Duration;

/// The key every watcher watches.
const KEY: &str = "watched";

/// A running etcd; killed when dropped.
pub struct Etcd {
    proc: ChildProc,
    port: u16,
    _dir: tempfile::TempDir,
}

/// Installs Debian's `etcd-server` when `etcd` is not on PATH (as root;
/// otherwise says how).
pub fn ensure_installed() -> anyhow::Result<()> {
    if crate::test::have("etcd") {
        return Ok(());
    }
    crate::test::apt_install(&["etcd-server"])
}

/// "etcd 3.4.23" (`etcd --version`'s first line, `etcd Version: 3.4.23`).
pub fn version() -> String {
    std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.replace("Version: ", ""))
        })
        .unwrap_or_else(|| "etcd (version unknown)".into())
}

impl Etcd {
    /// Starts etcd (inheriting this process's RLIMIT_NOFILE) and waits
    /// until `/health` says it is healthy.
    pub async fn start() -> anyhow::Result<Etcd> {
        // The data on tmpfs: etcd 3.4 has no `--unsafe-no-fsync`, and the
        // harness PostgreSQL it is compared with runs with `fsync = off`.
        let shm = std::path::Path::new("/dev/shm");
        let mut dir = tempfile::Builder::new();
        dir.prefix("riskfeat-etcd-");
        let dir = if shm.is_dir() {
            dir.tempdir_in(shm)?
        } else {
            dir.tempdir()?
        };
        let (port, peer) = (free_port()?, free_port()?);
        let client = format!("http://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{peer}");
        let data = dir.path().join("data");
        let args = vec![
            "--name".to_string(),
            "bench".into(),
            "--data-dir".into(),
            data.to_str().context("temp dir is not UTF-8")?.into(),
            "--listen-client-urls".into(),
            client.clone(),
            "--advertise-client-urls".into(),
            client,
            "--listen-peer-urls".into(),
            peer.clone(),
            "--initial-advertise-peer-urls".into(),
            peer.clone(),
            "--initial-cluster".into(),
            format!("bench={peer}"),
            "--logger".into(),
            "zap".into(),
            "--log-level".into(),
            "warn".into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let proc = ChildProc::spawn(std::path::Path::new("etcd"), &args, &[])?;
        let etcd = Etcd {
            proc,
            port,
            _dir: dir,
        };
        let url = etcd.url("/health");
        let http = reqwest::Client::new();
        let ready = wait_until(Duration::from_secs(60), "etcd healthy", || async {
            match http.get(&url).send().await {
                Ok(r) => r.text().await.is_ok_and(|t| t.contains("\"true\"")),
                Err(_) => false,
            }
        })
        .await;
        if let Err(e) = ready {
            bail!("{e}: {}", etcd.proc.logs());
        }
        Ok(etcd)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// One watcher's request: a watch of [`KEY`] through the JSON gateway;
    /// etcd answers `"created":true` when it is in place, then an
    /// `"events"` message for the put.
    pub fn watcher(&self) -> Spec {
        let body = format!(r#"{{"create_request":{{"key":"{}"}}}}"#, base64(KEY));
        Spec {
            port: self.port,
            request: format!(
                "POST /v3/watch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            ),
            created: Some("\"created\":true"),
            changed: "\"events\"",
        }
    }

    /// Puts `value` under [`KEY`].
    pub async fn put(&self, value: &str) -> anyhow::Result<()> {
        let body = serde_json::json!({"key": base64(KEY), "value": base64(value)});
        let resp = reqwest::Client::new()
            .post(self.url("/v3/kv/put"))
            .json(&body)
            .timeout(Duration::from_secs(60))
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("etcd put: {} {}", resp.status(), resp.text().await?);
        }
        Ok(())
    }
}

/// Standard base64 with padding (the gateway's encoding of bytes fields).
fn base64(text: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(super::base64("k"), "aw==");
        assert_eq!(super::base64("ab"), "YWI=");
        assert_eq!(super::base64("watched"), "d2F0Y2hlZA==");
        assert_eq!(super::base64("1"), "MQ==");
    }
}
