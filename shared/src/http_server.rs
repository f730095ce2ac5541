//! The HTTP/1.1 server both configd and the worker serve their axum routers
//! with, hardened against clients that hold sockets: hyper's connection
//! builder over a plain accept loop, because `axum::serve` sets no timeout.
//!
//! - [`HttpLimits::header_read_timeout_ms`]: a request head (or a TLS
//!   handshake) not complete in time closes the connection; hyper also
//!   counts the wait for the next head of a keep-alive connection.
//! - [`HttpLimits::request_timeout_ms`]: a handler that has not answered in
//!   time gets a 503 in its place; routes named by [`Serve::long_poll`]
//!   get their own bound instead (their hold time plus this margin).
//! - [`HttpLimits::idle_timeout_ms`]: a connection with no request in
//!   flight (nor a response still streaming) for that long is closed.
//! - [`HttpLimits::max_connections`]: connections beyond it wait in the
//!   listen backlog until one closes (a semaphore before `accept`).
//!
//! Accepted sockets get `TCP_NODELAY`. On shutdown the loop stops
//! accepting, asks every connection to finish its request in flight and
//! close, and returns when all have; callers bound that with their own
//! shutdown budget.

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// The route a request matched, as its pattern (`/v1/features/{user_id}`):
/// the `route` label of both servers' request metrics, `unmatched` for a
/// request no route took (so a scan of random paths adds no series).
pub fn route_label<B>(req: &Request<B>) -> String {
    req.extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned())
}

/// The `[http]` table of configd's and the worker's config files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpLimits {
    /// Longest time for a request head (and a TLS handshake), ms.
    pub header_read_timeout_ms: u64,
    /// Longest time a handler may take to answer, ms (long-polls: their
    /// own hold time plus this).
    pub request_timeout_ms: u64,
    /// A connection with nothing in flight this long is closed, ms.
    pub idle_timeout_ms: u64,
    /// Concurrent connections; more wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            max_connections: 10_000,
        }
    }
}

impl HttpLimits {
    /// Range problems, each naming `http.<key>`.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (key, v) in [
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
        ] {
            if !(100..=3_600_000).contains(&v) {
                out.push(format!("http.{key} = {v}: expected 100..=3600000"));
            }
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            out.push(format!(
                "http.max_connections = {}: expected 1..=1000000",
                self.max_connections
            ));
        }
        out
    }

    fn header_read(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }
    fn request(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    fn idle(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

/// The TLS config served, replaced in place when a certificate is renewed
/// (new connections get the new one).
pub type TlsConfig = Arc<RwLock<Arc<rustls::ServerConfig>>>;

/// Which paths are long-polls, and the longest they hold a request.
pub type LongPoll = (fn(&str) -> bool, Duration);

/// What to serve and how.
pub struct Serve {
    pub app: Router,
    pub limits: HttpLimits,
    /// Paths exempt from `request_timeout_ms`, bounded by their hold time
    /// plus `request_timeout_ms` instead.
    pub long_poll: Option<LongPoll>,
    /// HTTPS when set.
    pub tls: Option<TlsConfig>,
}

/// Requests in flight on one connection and when the last one ended.
struct Activity {
    in_flight: AtomicUsize,
    since: Mutex<Instant>,
}

impl Activity {
    fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }
    /// How long the connection has had nothing in flight (None: busy).
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(self.since.lock().map(|t| t.elapsed()).unwrap_or_default())
    }
}

/// One request until its response body has been sent (or dropped).
struct InFlight(Arc<Activity>);
impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut t) = self.0.since.lock() {
            *t = Instant::now();
        }
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn timed_out(after: Duration) -> Response<Body> {
    let body = serde_json::json!({"error": {
        "code": "request_timeout",
        "message": format!("the server did not answer within {} ms", after.as_millis()),
        "field": null,
    }});
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Serves `serve` on `listener` until `shutdown` completes and every
/// connection has finished (see the module doc).
pub async fn serve(
    listener: TcpListener,
    serve: Serve,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let serve = Arc::new(serve);
    let permits = Arc::new(Semaphore::new(serve.limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("never closed"),
            _ = &mut shutdown => break,
        };
        let (stream, _peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        while tasks.try_join_next().is_some() {}
        let serve = serve.clone();
        let stop = stop_rx.clone();
        tasks.spawn(async move {
            let _permit = permit;
            // Each connection's future in its own box, sized for its own
            // stream type: inline, every plain connection's task would be
            // as large as a TLS one (rustls' state, the handshake).
            match &serve.tls {
                None => Box::pin(connection(stream, &serve, stop)).await,
                Some(tls) => {
                    let config = match tls.read() {
                        Ok(c) => c.clone(),
                        Err(poisoned) => poisoned.into_inner().clone(),
                    };
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    let hs = Box::pin(tokio::time::timeout(
                        serve.limits.header_read(),
                        acceptor.accept(stream),
                    ));
                    match hs.await {
                        Ok(Ok(tls_stream)) => Box::pin(connection(tls_stream, &serve, stop)).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// One connection: HTTP/1.1 with the head timeout, each request under its
/// time bound, closed when idle or, gracefully, on shutdown.
async fn connection<I>(io: I, serve: &Serve, mut stop: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        since: Mutex::new(Instant::now()),
    });
    let app = serve.app.clone();
    let limits = serve.limits.clone();
    let long_poll = serve.long_poll;
    let seen = activity.clone();
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let guard = seen.start();
        let mut app = app.clone();
        let budget = match long_poll {
            Some((is_long_poll, hold)) if is_long_poll(req.uri().path()) => hold + limits.request(),
            _ => limits.request(),
        };
        async move {
            let req = req.map(Body::new);
            let call = tower_service::Service::call(&mut app, req);
            let resp = match tokio::time::timeout(budget, call).await {
                Ok(Ok(resp)) => resp,
                Ok(Err(never)) => match never {},
                Err(_) => timed_out(budget),
            };
            // The request stays in flight until its body is sent.
            Ok::<_, std::convert::Infallible>(resp.map(|b| {
                Body::new(b.map_frame(move |f| {
                    let _ = &guard;
                    f
                }))
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(serve.limits.header_read())
        .keep_alive(true);

    let conn = builder.serve_connection(TokioIo::new(io), svc);
    let mut conn = std::pin::pin!(conn);
    let idle = serve.limits.idle();
    let tick = (idle / 4).clamp(Duration::from_millis(25), Duration::from_secs(1));
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|s| *s), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep(tick) => {
                if activity.idle_for().is_some_and(|d| d >= idle) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_ranges_are_checked() {
        assert!(HttpLimits::default().problems().is_empty());
        let bad = HttpLimits {
            header_read_timeout_ms: 0,
            request_timeout_ms: 5,
            idle_timeout_ms: 1000,
            max_connections: 0,
        };
        let p = bad.problems().join("\n");
        crate::testing::assert_contains_all(
            &p,
            &[
                "http.header_read_timeout_ms = 0",
                "http.request_timeout_ms = 5",
                "http.max_connections = 0",
            ],
        );
        assert!(!p.contains("idle_timeout_ms"), "{p}");
    }

    #[tokio::test]
    async fn stalled_heads_and_idle_connections_are_closed_while_requests_are_served() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let app = Router::new()
            .route("/ok", axum::routing::get(|| async { "ok" }))
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            );
        let limits = HttpLimits {
            header_read_timeout_ms: 300,
            request_timeout_ms: 300,
            idle_timeout_ms: 400,
            max_connections: 64,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            Serve {
                app,
                limits,
                long_poll: None,
                tls: None,
            },
            async move {
                let _ = rx.await;
            },
        ));
        let mut stalled = Vec::new();
        for _ in 0..20 {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap();
            stalled.push(s);
        }
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/ok").await.starts_with("HTTP/1.1 200"));
        assert!(get("/slow").await.starts_with("HTTP/1.1 503"));
        let started = Instant::now();
        for mut s in stalled {
            let mut buf = [0u8; 512];
            let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
                .await
                .expect("a stalled head was not closed");
            // hyper may answer 408 first; then EOF.
            if let Ok(n) = n {
                if n > 0 {
                    let _ = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
                }
            }
        }
        assert!(started.elapsed() < Duration::from_secs(3));
        // An idle keep-alive connection is closed too.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        let end = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
        assert!(matches!(end, Ok(Ok(0)) | Ok(Err(_))), "{end:?}");
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(3), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
