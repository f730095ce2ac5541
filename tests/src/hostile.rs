//! Hostile clients for the hardening tests (configd's and the worker's):
//! connections that stall inside their request head, request heads that
//! announce a large body, and a process's peak resident memory.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// `n` connections to `127.0.0.1:port`, each of which has sent half a
/// request head and then stalls.
pub fn stalled_heads(port: u16, n: usize) -> anyhow::Result<Vec<TcpStream>> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port))?;
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: hostile\r\nX-Stalled: ")?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .collect()
}

/// True once the server closed `s` (EOF or reset); any answer it sent
/// first (a 408) is skipped.
fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

/// Waits until the server closed every stream; how long that took, or how
/// many were still open at `timeout`.
pub fn wait_closed(mut streams: Vec<TcpStream>, timeout: Duration) -> Result<Duration, usize> {
    let start = Instant::now();
    loop {
        streams.retain_mut(|s| !closed(s));
        if streams.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            return Err(streams.len());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Opens `n` connections to `port` stalled inside their request head and,
/// until the server has closed them all, sends a normal request with
/// `request` every 250 ms (it must succeed). How long the closing took and
/// how many requests were served meanwhile; an error when some were still
/// open at `timeout`.
pub async fn stalled_heads_closed_while<F, Fut>(
    port: u16,
    n: usize,
    timeout: Duration,
    mut request: F,
) -> anyhow::Result<(Duration, usize)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let streams = stalled_heads(port, n)?;
    let closing = tokio::task::spawn_blocking(move || wait_closed(streams, timeout));
    let mut served = 0;
    while !closing.is_finished() {
        request().await?;
        served += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    match closing.await? {
        Ok(took) => Ok((took, served)),
        Err(open) => {
            anyhow::bail!("{open} of {n} stalled connections still open after {timeout:?}")
        }
    }
}

/// Sends the head of `POST path` announcing a `len`-byte body (and
/// `extra` header lines) and none of the body; the status line the server
/// answers within `timeout`.
pub fn head_only_post(
    port: u16,
    path: &str,
    extra: &str,
    len: u64,
    timeout: Duration,
) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(timeout))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: hostile\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\n{extra}\r\n"
    )?;
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf)?;
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// Sends `POST path` with a `len`-byte body as fast as the server takes it
/// and returns how many body bytes were written before the server closed
/// the connection (`len` when it took them all).
pub fn push_body(port: u16, path: &str, len: usize) -> anyhow::Result<usize> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: hostile\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\n\r\n"
    )?;
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0;
    while sent < len {
        let n = chunk.len().min(len - sent);
        match s.write(&chunk[..n]) {
            Ok(0) | Err(_) => break,
            Ok(n) => sent += n,
        }
    }
    let _ = s.shutdown(Shutdown::Both);
    Ok(sent)
}

/// The peak resident set (VmHWM) of process `pid`, bytes.
pub fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .ok_or_else(|| anyhow::anyhow!("no VmHWM in /proc/{pid}/status"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("bad line {line:?}"))?
        .parse()?;
    Ok(kib * 1024)
}
