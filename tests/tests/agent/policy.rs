//! The agent's Vault policy is scoped to riskfeat's own leases (issue 18):
//! a leaked agent token or secret_id cannot renew or revoke anyone else's.

use reqwest::Method;
use riskfeat_tests::bootstrap::{CREATION_SQL, DB_MOUNT, REVOCATION_SQL};
use riskfeat_tests::{Stack, StackOptions};
use serde_json::json;

/// Logged in as the agent's AppRole, with the shipped
/// `k8s/bootstrap/vault/agent-policy.hcl`: renewing and revoking a lease of
/// another database role is denied (403) in both the URL form and the body
/// form, and the other lease survives; the agent's own lease renews and
/// revokes through the URL form the agent uses. Checked to fail: with the
/// policy's old grants on `sys/leases/renew` and `sys/leases/revoke` (body
/// form, any lease) the body-form revoke of the other lease succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_token_renews_and_revokes_only_its_own_leases() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    let bao = &stack.bao;
    let p = &stack.pg.primary;
    // Another team's role on its own connection, issued by root.
    bao.api(
        Method::POST,
        &format!("{DB_MOUNT}/config/other"),
        Some(json!({
            "plugin_name": "postgresql-database-plugin",
            "connection_url": format!(
                "postgresql://{{{{username}}}}:{{{{password}}}}@{}:{}/{}?sslmode=disable",
                p.host, p.port, p.dbname
            ),
            "username": "vault_admin",
            "password": stack.pg.vault_admin_password,
            "allowed_roles": ["other-reader"],
        })),
    )
    .await
    .unwrap();
    bao.api(
        Method::POST,
        &format!("{DB_MOUNT}/roles/other-reader"),
        Some(json!({
            "db_name": "other",
            "creation_statements": [CREATION_SQL],
            "revocation_statements": [REVOCATION_SQL],
            "default_ttl": "1h",
            "max_ttl": "2h",
        })),
    )
    .await
    .unwrap();
    let other = bao
        .api(Method::GET, &format!("{DB_MOUNT}/creds/other-reader"), None)
        .await
        .unwrap();
    let other_lease = other["lease_id"].as_str().unwrap().to_string();
    assert!(other_lease.starts_with("database/creds/other-reader/"));

    let token = stack.approle_login().await.unwrap();
    for (path, body) in [
        (format!("sys/leases/renew/{other_lease}"), None),
        (format!("sys/leases/revoke/{other_lease}"), None),
        (
            "sys/leases/renew".to_string(),
            Some(json!({"lease_id": other_lease})),
        ),
        (
            "sys/leases/revoke".to_string(),
            Some(json!({"lease_id": other_lease})),
        ),
    ] {
        let (status, body) = bao
            .request_raw(Some(&token), Method::PUT, &path, body)
            .await
            .unwrap();
        assert_eq!(
            status, 403,
            "PUT {path} must be denied to the agent: {body}"
        );
    }
    let alive = bao
        .api(
            Method::PUT,
            "sys/leases/lookup",
            Some(json!({"lease_id": other_lease})),
        )
        .await
        .unwrap();
    assert!(alive["data"]["ttl"].as_i64().unwrap() > 0, "{alive}");

    // Its own lease: renewed and revoked through the URL forms.
    let own = stack.issue_creds().await.unwrap();
    let renewed = bao
        .request(
            Some(&token),
            Method::PUT,
            &format!("sys/leases/renew/{}", own.lease_id),
            Some(json!({"increment": 60})),
        )
        .await
        .unwrap();
    assert_eq!(renewed["lease_id"], own.lease_id.as_str(), "{renewed}");
    bao.request(
        Some(&token),
        Method::PUT,
        &format!("sys/leases/revoke/{}", own.lease_id),
        None,
    )
    .await
    .unwrap();
}
