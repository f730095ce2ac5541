//! configd to PostgreSQL over `verify-full` TLS: every connection of the
//! pool and the LISTEN connection is encrypted (pg_stat_ssl), and a CA that
//! did not issue the server's certificate gets no connection at all.

use crate::support::{create, start};
use riskfeat_tests::{wait_until, PgCluster, TestCa};
use std::time::Duration;

/// (TLS, plain) connections of configd, as PostgreSQL sees them.
async fn configd_connections(pg: &riskfeat_tests::PgServer) -> (i64, i64) {
    let db = pg.connect_superuser().await.unwrap();
    let row = db
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name = 'riskfeat-configd'",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configd_reaches_postgres_over_verify_full_tls() {
    let pg = PgCluster::start(false).await.unwrap();
    let ca = TestCa::new("configd-pg").unwrap();
    let cert = ca.issue_server(&["127.0.0.1"]).unwrap();
    pg.primary.enable_tls(&cert, None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("pg-ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let tls = format!(
        "database_sslmode = \"verify-full\"\ndatabase_ca_file = \"{}\"\n",
        ca_file.display()
    );
    let c = start(&pg.primary, &tls).await;
    create(&c, "features").await;
    wait_until(Duration::from_secs(20), "configd connected", || async {
        configd_connections(&pg.primary).await.0 >= 2
    })
    .await
    .unwrap();
    let (tls_conns, plain) = configd_connections(&pg.primary).await;
    assert_eq!(plain, 0, "configd connected without TLS ({tls_conns} with)");

    // A CA that did not issue the server's certificate: configd never gets
    // past its migrations (readyz stays 503 starting), and no connection.
    let other = TestCa::new("not-postgres").unwrap();
    let wrong = dir.path().join("wrong-ca.pem");
    std::fs::write(&wrong, other.cert_pem()).unwrap();
    drop(c);
    let tokens = [riskfeat_tests::ConfigdToken::admin(
        "admin",
        crate::support::ADMIN,
    )];
    let mut bad = riskfeat_tests::Configd::new(&pg.primary.superuser_dsn(), &tokens).unwrap();
    bad.spawn(&format!(
        "database_sslmode = \"verify-full\"\ndatabase_ca_file = \"{}\"\n",
        wrong.display()
    ))
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ready = reqwest::get(bad.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(configd_connections(&pg.primary).await, (0, 0));
}
