//! Health over HTTP/1.1 on a unix socket, and the `probe` client that
//! Kubernetes exec probes run.
//!
//! Endpoints: `GET /livez` and `GET /readyz` (200 or 503 with a one-line
//! reason), `GET /status` (JSON, never a secret). The socket is created with
//! mode 0660 so that only the pod's group can reach it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};

/// What a component reports about itself.
pub trait HealthSource: Send + Sync + 'static {
    /// The process is making progress (not deadlocked); false makes
    /// Kubernetes restart the container.
    fn live(&self) -> Result<(), String> {
        Ok(())
    }
    /// The component can do its job now; `Err` carries the reason.
    fn ready(&self) -> Result<(), String>;
    /// A JSON document for humans and tests. Never include a secret.
    fn status(&self) -> serde_json::Value;
}

/// Binds the health socket: removes a stale socket file, binds, chmods 0660.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// The health routes for a source.
pub fn router(source: Arc<dyn HealthSource>) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(source)
}

async fn livez(State(s): State<Arc<dyn HealthSource>>) -> Response {
    verdict(s.live())
}

async fn readyz(State(s): State<Arc<dyn HealthSource>>) -> Response {
    verdict(s.ready())
}

async fn status(State(s): State<Arc<dyn HealthSource>>) -> Response {
    Json(s.status()).into_response()
}

fn verdict(r: Result<(), String>) -> Response {
    match r {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

/// Serves the health routes on `listener` until `shutdown` completes, then
/// removes the socket file.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    source: Arc<dyn HealthSource>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let result = axum::serve(listener, router(source))
        .with_graceful_shutdown(shutdown)
        .await;
    let _ = std::fs::remove_file(&path);
    result
}

/// Which probe to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Live,
    Ready,
    Status,
}

impl ProbeKind {
    fn path(self) -> &'static str {
        match self {
            ProbeKind::Live => "/livez",
            ProbeKind::Ready => "/readyz",
            ProbeKind::Status => "/status",
        }
    }
}

impl std::str::FromStr for ProbeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "live" | "livez" => Ok(Self::Live),
            "ready" | "readyz" => Ok(Self::Ready),
            "status" => Ok(Self::Status),
            other => Err(format!(
                "unknown probe {other:?}: expected live, ready or status"
            )),
        }
    }
}

/// A failed probe request (as opposed to an unhealthy answer).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("HTTP error talking to {path}: {source}")]
    Http { path: String, source: hyper::Error },
    #[error("no answer from {path} within {0:?}", timeout)]
    Timeout { path: String, timeout: Duration },
}

/// Sends one GET to the health socket; returns the status code and body.
pub async fn request(
    socket: &Path,
    kind: ProbeKind,
    timeout: Duration,
) -> Result<(u16, String), ProbeError> {
    let shown = socket.display().to_string();
    let fut = async {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| ProbeError::Connect {
                path: shown.clone(),
                source,
            })?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let http = |source| ProbeError::Http {
            path: shown.clone(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(http)?;
        tokio::spawn(conn);
        let req = hyper::Request::get(kind.path())
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .expect("static request is valid");
        let resp = sender.send_request(req).await.map_err(http)?;
        let code = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(http)?.to_bytes();
        Ok((code, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| {
            Err(ProbeError::Timeout {
                path: shown.clone(),
                timeout,
            })
        })
}

/// The `probe` subcommand: prints the answer, returns 0 when healthy, 1
/// otherwise (unreachable socket included).
pub fn probe_command(socket: &Path, kind: ProbeKind) -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("probe: cannot start runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(request(socket, kind, Duration::from_secs(3))) {
        Ok((200, body)) => {
            print!("{body}");
            std::process::ExitCode::SUCCESS
        }
        Ok((code, body)) => {
            eprint!("probe: {code}: {body}");
            std::process::ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("probe: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Flag(AtomicBool);
    impl HealthSource for Flag {
        fn ready(&self) -> Result<(), String> {
            if self.0.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("no credential yet".into())
            }
        }
        fn status(&self) -> serde_json::Value {
            serde_json::json!({"ready": self.0.load(Ordering::SeqCst)})
        }
    }

    #[tokio::test]
    async fn serves_live_ready_status_over_a_0660_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.sock");
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, path.clone(), flag.clone(), async {
            let _ = rx.await;
        }));
        let t = Duration::from_secs(5);
        assert_eq!(request(&path, ProbeKind::Live, t).await.unwrap().0, 200);
        let (code, body) = request(&path, ProbeKind::Ready, t).await.unwrap();
        assert_eq!((code, body.as_str()), (503, "no credential yet\n"));
        flag.0.store(true, Ordering::SeqCst);
        assert_eq!(request(&path, ProbeKind::Ready, t).await.unwrap().0, 200);
        let (_, body) = request(&path, ProbeKind::Status, t).await.unwrap();
        assert_eq!(body, r#"{"ready":true}"#);
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
        assert!(!path.exists(), "socket removed on shutdown");
        assert!(matches!(
            request(&path, ProbeKind::Live, t).await,
            Err(ProbeError::Connect { .. })
        ));
    }
}
