//! Least privilege: the agent's Vault policy (k8s/bootstrap/vault/agent-policy.hcl,
//! applied by the harness as in production) lets its AppRole token renew
//! and revoke only leases of `database/creds/feature-reader/`. A lease of
//! another database role (named so that a prefix match without the `/`
//! would cover it) is out of reach, by the URL forms the agent uses and by
//! the body forms alike; the agent's own lease still renews.

use reqwest::{Method, StatusCode};
use riskfeat_tests::bootstrap::{CREATION_SQL, DB_MOUNT, REVOCATION_SQL};
use riskfeat_tests::stack::write_db_connection;
use riskfeat_tests::{Stack, StackOptions};
use serde_json::json;

/// Checked to fail: with the policy's former grants on the body forms
/// (`sys/leases/renew`, `sys/leases/revoke`) the body-form revoke of the
/// other role's lease answers 200; without `token_no_default_policy` on the
/// AppRole role, Vault's `default` policy lets the body-form renew through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_token_cannot_renew_or_revoke_a_lease_outside_its_role() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    let bao = &stack.bao;
    // Root: a second connection and role, and a lease of it.
    let other = "feature-reader-other";
    write_db_connection(
        bao,
        &stack.pg,
        &format!("{DB_MOUNT}/config/other"),
        &[other],
    )
    .await
    .unwrap();
    bao.api(
        Method::POST,
        &format!("{DB_MOUNT}/roles/{other}"),
        Some(json!({
            "db_name": "other",
            "creation_statements": [CREATION_SQL],
            "revocation_statements": [REVOCATION_SQL],
            "default_ttl": "10m",
            "max_ttl": "1h",
        })),
    )
    .await
    .unwrap();
    let theirs = bao
        .api(Method::GET, &format!("{DB_MOUNT}/creds/{other}"), None)
        .await
        .unwrap()["lease_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        theirs.starts_with(&format!("{DB_MOUNT}/creds/{other}/")),
        "{theirs}"
    );

    // The agent's AppRole token, and a lease of its own role.
    let token = stack.approle_login().await.unwrap();
    let mine = stack.issue_creds().await.unwrap().lease_id;
    let as_agent = |path: String, body: serde_json::Value| {
        let token = token.clone();
        async move {
            bao.request_raw(Some(&token), Method::PUT, &path, Some(body))
                .await
                .unwrap()
        }
    };
    for (path, body) in [
        (
            format!("sys/leases/renew/{theirs}"),
            json!({"increment": 60}),
        ),
        (format!("sys/leases/revoke/{theirs}"), json!({})),
        (
            "sys/leases/renew".to_string(),
            json!({"lease_id": theirs, "increment": 60}),
        ),
        ("sys/leases/revoke".to_string(), json!({"lease_id": theirs})),
    ] {
        let (status, v) = as_agent(path.clone(), body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "PUT {path}: {v}");
    }
    // Their lease is untouched (root looks it up).
    let looked = bao
        .api(
            Method::PUT,
            "sys/leases/lookup",
            Some(json!({"lease_id": theirs})),
        )
        .await
        .unwrap();
    assert_eq!(looked["data"]["id"], theirs.as_str(), "{looked}");
    // The agent's own lease renews and revokes by the URL forms.
    let (status, v) = as_agent(format!("sys/leases/renew/{mine}"), json!({"increment": 60})).await;
    assert_eq!(status, StatusCode::OK, "renewing its own lease: {v}");
    assert_eq!(v["lease_id"], mine.as_str(), "{v}");
    let (status, v) = as_agent(format!("sys/leases/revoke/{mine}"), json!({})).await;
    assert!(status.is_success(), "revoking its own lease: {status} {v}");
}
