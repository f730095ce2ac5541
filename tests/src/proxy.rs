//! A TCP proxy for fault injection: put it between a client and a server,
//! then [`cut`](TcpProxy::cut) the link (live connections dropped, new ones
//! accepted and closed at once), [`restore`](TcpProxy::restore) it, or slow
//! it down ([`set_delay`](TcpProxy::set_delay)), point it at another
//! upstream ([`set_upstream`](TcpProxy::set_upstream)), count the
//! connections it carries at once ([`peak`](TcpProxy::peak)) and those it
//! was asked to open ([`opened`](TcpProxy::opened)). Runs on the tokio
//! runtime that started it; dropping it closes everything.
//!
//! A connection is carried from its accept until its upstream closes it:
//! so a session the server ended (a PostgreSQL backend terminated with
//! `pg_terminate_backend`) still counts while the server process exits,
//! after its client was told and may already have connected again. The
//! peak therefore includes the server's dying sessions; the number of
//! connections a client opened is [`opened`](TcpProxy::opened), exact.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A loopback TCP proxy to one upstream.
pub struct TcpProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    accept: tokio::task::JoinHandle<()>,
}

struct Inner {
    upstream: std::sync::Mutex<SocketAddr>,
    cut: AtomicBool,
    /// Connections forwarded now, and the most at once.
    active: AtomicU64,
    peak: AtomicU64,
    /// Client connections accepted and forwarded, ever.
    opened: AtomicU64,
    delay_us: AtomicU64,
    /// Bumped to make every live connection close.
    epoch: watch::Sender<u64>,
}

impl TcpProxy {
    /// Listens on an ephemeral loopback port, forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            upstream: std::sync::Mutex::new(upstream),
            cut: AtomicBool::new(false),
            active: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            delay_us: AtomicU64::new(0),
            epoch: watch::channel(0).0,
        });
        let accept = tokio::spawn(accept_loop(listener, inner.clone()));
        Ok(TcpProxy {
            addr,
            inner,
            accept,
        })
    }

    /// Drops live connections and refuses new ones (accepts and closes
    /// them) until [`restore`](TcpProxy::restore).
    pub fn cut(&self) {
        self.inner.cut.store(true, Ordering::SeqCst);
        self.inner.epoch.send_modify(|e| *e += 1);
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.inner.cut.store(false, Ordering::SeqCst);
    }

    /// Delays every chunk forwarded, either way, by `d` (zero: none).
    pub fn set_delay(&self, d: Duration) {
        self.inner
            .delay_us
            .store(d.as_micros().min(u64::MAX as u128) as u64, Ordering::SeqCst);
    }

    /// Sends new connections to `upstream` and drops the live ones (as a
    /// load balancer moving a client to another backend).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.inner.upstream.lock().unwrap() = upstream;
        self.inner.epoch.send_modify(|e| *e += 1);
    }

    /// The most client connections carried at once since the start or the
    /// last [`reset_peak`](TcpProxy::reset_peak).
    pub fn peak(&self) -> u64 {
        self.inner.peak.load(Ordering::SeqCst)
    }

    /// Client connections accepted (and not refused by a cut) since the
    /// start: every connection a client opened through the proxy.
    pub fn opened(&self) -> u64 {
        self.inner.opened.load(Ordering::SeqCst)
    }

    /// Client connections carried now.
    pub fn active(&self) -> u64 {
        self.inner.active.load(Ordering::SeqCst)
    }

    /// Starts counting the peak again from the connections carried now.
    pub fn reset_peak(&self) {
        self.inner.peak.store(self.active(), Ordering::SeqCst);
    }

    /// Whether the link is cut.
    pub fn is_cut(&self) -> bool {
        self.inner.cut.load(Ordering::SeqCst)
    }

    /// `http://ADDR`, for HTTP upstreams.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.inner.cut.store(true, Ordering::SeqCst);
        self.inner.epoch.send_modify(|e| *e += 1);
    }
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if inner.cut.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        inner.opened.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(serve(client, inner.clone()));
    }
}

/// Counts one carried connection until its upstream has closed (a server
/// that ends a session is seen here before the client can open another).
struct Carried(Arc<Inner>);

impl Carried {
    fn new(inner: &Arc<Inner>) -> Carried {
        let now = inner.active.fetch_add(1, Ordering::SeqCst) + 1;
        inner.peak.fetch_max(now, Ordering::SeqCst);
        Carried(inner.clone())
    }
}

impl Drop for Carried {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(client: TcpStream, inner: Arc<Inner>) {
    let carried = Carried::new(&inner);
    let mut epoch = inner.epoch.subscribe();
    epoch.mark_unchanged();
    let upstream_addr = *inner.upstream.lock().unwrap();
    let Ok(upstream) = TcpStream::connect(upstream_addr).await else {
        return;
    };
    if inner.cut.load(Ordering::SeqCst) {
        return;
    }
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let both = async {
        tokio::join!(pump(cr, uw, &inner), async {
            pump(ur, cw, &inner).await;
            drop(carried);
        });
    };
    tokio::select! {
        _ = both => {}
        _ = epoch.changed() => {}
    }
}

/// Copies one direction until EOF or error, then half-closes the writer.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    inner: &Inner,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let delay = inner.delay_us.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_micros(delay)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
