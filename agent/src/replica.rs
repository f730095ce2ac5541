//! The check that a new credential can log in on the replica before it is
//! published: the role is created on the primary and reaches the replica
//! only after replay (vault #19578), so retry with backoff, bounded.

use riskfeat_shared::creds::Endpoint;
use riskfeat_shared::pg_tls::PgTls;
use riskfeat_shared::Secret;
use std::time::Duration;
use tokio::sync::watch;

/// Connects as `user` (over TLS when `ep` asks for it) and runs `SELECT 1`.
pub async fn try_login(
    tls: &PgTls,
    ep: &Endpoint,
    user: &str,
    password: &Secret,
    timeout: Duration,
) -> Result<(), String> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&ep.host)
        .port(ep.port)
        .dbname(&ep.dbname)
        .user(user)
        .password(password.expose())
        .application_name("riskfeat-agent-check")
        .connect_timeout(timeout);
    tls.configure(ep, &mut cfg).map_err(|e| e.to_string())?;
    let fut = async {
        let (client, conn) = cfg
            .connect(tls.connector())
            .await
            .map_err(|e| pg_error(&e))?;
        let task = tokio::spawn(conn);
        let r = client
            .simple_query("SELECT 1")
            .await
            .map(|_| ())
            .map_err(|e| pg_error(&e));
        drop(client);
        let _ = task.await;
        r
    };
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        // TLS failures are in the sources ("invalid peer certificate...").
        None => riskfeat_shared::telemetry::error_chain(e),
    }
}

/// Retries [`try_login`] with backoff until it succeeds, `total` passes, or
/// `shutdown` turns true. Returns the attempts made, or the last error.
pub async fn wait_for_login(
    tls: &PgTls,
    ep: &Endpoint,
    user: &str,
    password: &Secret,
    total: Duration,
    shutdown: &watch::Receiver<bool>,
) -> Result<u32, String> {
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(50);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let left = total.saturating_sub(started.elapsed());
        let per_try = left.clamp(Duration::from_millis(200), Duration::from_secs(5));
        match try_login(tls, ep, user, password, per_try).await {
            Ok(()) => return Ok(attempts),
            Err(e) => {
                if started.elapsed() + delay >= total || *shutdown.borrow() {
                    return Err(format!(
                        "cannot log in on {}:{} as the new user after {attempts} attempts: {e}",
                        ep.host, ep.port
                    ));
                }
                tracing::debug!(attempts, error = %e, "new credential not usable on the replica yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}
